"""finexp-serve under concurrent load: N clients on loopback, bounded in requests and time; requests/s, latency
percentiles and the number of errors (target: none).

    python scripts/bench_serve.py                                  # trains a tiny_bert credit-scoring checkpoint first
    python scripts/bench_serve.py --model minilm                   # a MiniLM one (600 applicants, one epoch)
    python scripts/bench_serve.py --ckpt outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    python scripts/bench_serve.py --clients 8 --requests 40 --rows 8 --seconds 60 --rules credit_policy

The server is the real ``finexp-serve`` entry point, started as its own process on a free loopback port (so the
clients' threads do not share its interpreter). Each client posts batches of ``--rows`` raw credit-scoring
applicants (rows of modeldata/credit_data, shuffled, label column removed) until it has sent ``--requests``
requests or ``--seconds`` have passed. An error is any answer other than 200 or any row answered with an error.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from finexp.config import config_dir
from finexp.data.sources import read_rdataset


def _train(root: Path, model: str) -> str:
    """A quick credit-scoring checkpoint: tiny_bert on every applicant, or minilm on 600 (one epoch either way)."""
    overrides = [
        f"model={model}",
        *(["data.max_rows=600"] if model != "tiny_bert" else []),
        "logger=csv",
        "analysis=none",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "optimizer.lr=3e-3",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.log_dir, cfg.paths.output_dir = str(root / "outputs"), str(root / "run")
        cfg.paths.cache_dir = "outputs/.cache"
    from finexp.train import train

    return train(cfg)["best_checkpoint"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a finexp checkpoint (default: train a credit-scoring one with --model)")
    parser.add_argument("--model", default="tiny_bert", help="model of the checkpoint trained without --ckpt")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40, help="requests per client (upper bound)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound for the whole load phase")
    parser.add_argument("--rows", type=int, default=8, help="rows per request")
    parser.add_argument("--rules", default="none", help="a conf/rules option, e.g. credit_policy")
    parser.add_argument("--threads", type=int, default=0, help="serve.threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=5, help="requests sent (and not timed) before the load")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    ckpt = args.ckpt or _train(workdir, args.model)
    frame = read_rdataset("modeldata/credit_data").drop(columns=["Status", "rownames"]).sample(frac=1, random_state=0)
    frame = frame.astype(object).where(frame.notna(), None)
    records = frame.to_dict("records")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "finexp.serve",
        f"ckpt={ckpt}",
        f"serve.port={port}",
        f"rules={args.rules}",
        f"serve.threads={args.threads}",
        "serve.log_level=warning",
        f"hydra.run.dir={workdir / 'serve'}",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"finexp-serve exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("finexp-serve did not start within 180 s") from None
                time.sleep(0.3)
        meta = httpx.get(f"{url}/metadata").json()
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(args.warmup):
                client.post("/predict", json={"rows": records[i * args.rows : (i + 1) * args.rows]})

        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client_loop(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                for i in range(args.requests):
                    if time.monotonic() > stop_at:
                        return
                    start = (k * args.requests + i) * args.rows % (len(records) - args.rows)
                    started = time.perf_counter()
                    try:
                        response = client.post("/predict", json={"rows": records[start : start + args.rows]})
                        ok = response.status_code == 200 and all(
                            p["error"] is None for p in response.json()["predictions"]
                        )
                        problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                    except httpx.HTTPError as err:
                        problem = f"{type(err).__name__}: {err}"
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        if problem:
                            failures.append(problem)

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(args.clients)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        alive = server.poll() is None and httpx.get(f"{url}/health").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)

    n = len(latencies)
    print(
        f"finexp-serve bench: model={meta['model']} task={meta['task']} rules={args.rules} "
        f"clients={args.clients} rows/request={args.rows} threads={args.threads or 'default'} "
        f"cpu_cores={os.cpu_count()}"
    )
    print(
        f"requests={n} errors={len(failures)} wall_s={wall:.1f} requests_per_s={n / wall:.1f} "
        f"rows_per_s={n * args.rows / wall:.1f}"
    )
    print(
        f"latency_ms p50={1000 * statistics.median(latencies):.1f} p95={1000 * _percentile(latencies, 0.95):.1f} "
        f"p99={1000 * _percentile(latencies, 0.99):.1f} max={1000 * max(latencies):.1f}"
    )
    print(f"server alive after load: {alive}")
    if failures:
        print("first errors:", *failures[:3], sep="\n  ")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
