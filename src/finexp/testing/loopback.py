"""Processes serving on this machine's loopback interface: ``finexp-serve``, ``finexp-federate serve|node``.

A test or benchmark picks free ports (:func:`free_ports`), starts the processes on them (a Flower process in its own
session, ``start_new_session=True``, so its app children share its process group), waits until each answers
(:func:`wait_for_port`, :func:`wait_for_health`) and stops every group it started (:func:`stop_process_group`).
Standard library only (:func:`wait_for_health` imports httpx, which ``finexp[serve]`` brings).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
_TAIL = 2000  # characters of a process's output an error shows


def free_ports(n: int = 1, host: str = HOST) -> list[int]:
    """``n`` distinct ports nothing listens on now (bound together, so they differ, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _output(process: subprocess.Popen | None, log: Path | None) -> str:
    """The end of what the process wrote: its log file, else its pipes (read once it has exited)."""
    if log is not None:
        return log.read_text()[-_TAIL:]
    if process is None:
        return ""
    pipes = [p for p in (process.stdout, process.stderr) if p is not None]
    return "".join(str(p.read()) for p in pipes)[-_TAIL:]


def _check_running(process: subprocess.Popen | None, log: Path | None) -> None:
    if process is not None and process.poll() is not None:
        raise RuntimeError(f"the process exited with {process.returncode}: {_output(process, log)}")


def wait_for_port(
    port: int,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    seconds: float = 60,
    host: str = HOST,
) -> None:
    """Return once ``host:port`` accepts a connection.

    Args:
        port: the port the process listens on.
        process: the process that should listen; its exit stops the wait.
        log: the file its output goes to, shown when it fails.
        seconds: how long to wait.
        host: the interface.

    Raises:
        RuntimeError: ``process`` exited first (with the end of its output).
        TimeoutError: nothing accepted within ``seconds``.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _check_running(process, log)
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    output = f": {_output(None, log)}" if log is not None else ""
    raise TimeoutError(f"nothing listens on {host}:{port} after {seconds} s{output}")


def wait_for_health(url: str, process: subprocess.Popen | None = None, seconds: float = 120) -> None:
    """Return once ``GET <url>/health`` answers 200 (``finexp-serve`` has loaded its model and listens).

    Raises:
        RuntimeError: ``process`` exited first (with the end of its output).
        TimeoutError: no 200 within ``seconds``.
    """
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        _check_running(process, None)
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer /health within {seconds} s")
        time.sleep(0.3)


def stop_process_group(process: subprocess.Popen, seconds: float = 10) -> None:
    """Stop the process group ``process`` leads (started with ``start_new_session=True``): SIGTERM, SIGKILL after
    ``seconds``; when the leader has already exited, SIGKILL what is left of its group (a Flower process's app
    children outlive it)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=seconds)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
