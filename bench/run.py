"""`make bench`: every benchmark, each printing its figures and writing bench/results/*.json."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

failed = []
for script in (
    "bench_planner.py",
    "bench_cli_plan.py",
    "bench_run.py",
    "bench_aws_calls.py",
    "bench_aws_calls.py --drain",
    "bench_aws_compliance.py",
    "bench_azure_calls.py",
    "bench_azure_watch.py",
    "bench_cold_start.py",
    "bench_function_app.py",
):
    print(f"== {script}", flush=True)
    name, *arguments = script.split()
    sys.argv = [name, *arguments]
    try:
        runpy.run_path(str(HERE / name), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code:
            failed.append(script)
    print()
if failed:
    raise SystemExit(f"benchmarks that missed their targets: {', '.join(failed)}")
