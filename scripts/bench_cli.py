"""How long finexp-train takes to answer before any run starts: --help, --cfg job and a config error.

    python scripts/bench_cli.py              # 5 repeats of each, median and range in seconds
    python scripts/bench_cli.py --repeats 9
    python scripts/bench_cli.py --quick      # 1 repeat (checks the script, not a timing)

Each command is a fresh interpreter (``python -m finexp.train ...``), so every repeat pays the imports a user pays.
Target (issue 18): each <= 3 s on 2 cores. Run it alone on the machine: other load inflates every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "--help": (["--help"], 0),
    "--cfg job": (["--cfg", "job", "model=tiny_bert"], 0),
    "config error (task.problem=ranking)": (["model=tiny_bert", "task.problem=ranking"], 2),
}


def time_command(argv: list[str], expected_rc: int, root: str) -> float:
    """Seconds for one ``python -m finexp.train argv``; fails loudly when the exit status is not the expected one."""
    env = {**os.environ, "FINEXP_ROOT": root, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "finexp.train", *argv], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    elapsed = time.perf_counter() - started
    if result.returncode != expected_rc:
        raise SystemExit(f"finexp-train {' '.join(argv)}: exit {result.returncode}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat: a correctness check of the script")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    print(f"finexp-train start-up, {repeats} repeat(s), {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.2f}")
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'max s':>7}")
    with tempfile.TemporaryDirectory() as root:
        for name, (argv, rc) in COMMANDS.items():
            times = [time_command(argv, rc, root) for _ in range(repeats)]
            print(f"{name:<40} {statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f}", flush=True)


if __name__ == "__main__":
    main()
