"""`make bench`: every benchmark, each printing its figures and writing bench/results/*.json.

Each runs in a fresh interpreter, exactly as its own command line runs it: in one process, a
benchmark would start from the state the ones before it left (moto's backends, module caches,
random generators), and its figures would depend on what ran first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

failed = []
for script in (
    "bench_planner.py",
    "bench_cli_plan.py --rounds 9",  # whole processes: medians of 9 ride out a busy moment
    "bench_run.py",
    "bench_aws_calls.py",
    "bench_aws_calls.py --drain",
    "bench_aws_compliance.py",
    "bench_azure_calls.py",
    "bench_azure_watch.py",
    "bench_cold_start.py --rounds 15",  # medians of 15: the ratios move by a tenth between runs of 9
    "bench_function_app.py",
):
    print(f"== {script}", flush=True)
    name, *arguments = script.split()
    if subprocess.run([sys.executable, str(HERE / name), *arguments], check=False).returncode:
        failed.append(script)
    print(flush=True)
if failed:
    raise SystemExit(f"benchmarks that missed their targets: {', '.join(failed)}")
