"""Planner benchmark: `make bench` (or `.venv/bin/python bench/bench_planner.py`).

Plans synthetic fleets of 1,000, 10,000 and 100,000 instances (bench/fleet.py) with the example
policy (examples/policy.yaml) and with a variant of it in the other rollout mode, so that both
zone_by_zone and concurrent_zones are measured, and records for each size:

- inventory validation time (`parse_inventory` on the JSON-shaped documents);
- planning time, best of 3 (`time.perf_counter`);
- peak traced memory of one planning call (`tracemalloc`, in a separate run: tracing slows it);
- the process's peak RSS so far (`resource.getrusage(...).ru_maxrss`; sizes run smallest first,
  so the figure at 100k is the whole benchmark's peak);
- waves, the lower bound the planner reports, and their ratio.

Targets: planning 100k instances in under 1 s and under 300 MB. The figures are printed as a
table and written to bench/results/planner.json with the machine they were taken on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))  # `fleet` sits next to this file, whatever the working directory
try:
    import patchpilot  # noqa: F401
except ImportError:  # not installed (no `make setup`): use the source tree
    sys.path.insert(0, str(ROOT / "shared"))

from fleet import synthetic_fleet  # noqa: E402

from patchpilot.inventory import parse_inventory  # noqa: E402
from patchpilot.planning import Plan, plan  # noqa: E402
from patchpilot.policy import Policy, load_policy  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
REPEAT = 3
TARGET_SECONDS = 1.0
TARGET_MB = 300.0
MB = 1024 * 1024


def peak_rss_mb() -> float:
    """The process's peak resident set so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


def best_of(repeat: int, call: Any) -> tuple[float, list[float], Any]:
    """Run `call` `repeat` times; the fastest time, every time, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), times, result


def traced_peak_mb(call: Any) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / MB


def variants(policy: Policy) -> dict[str, Policy]:
    """The policy as written, and the same policy in the other rollout mode (so both
    `zone_by_zone` and `concurrent_zones` are measured whichever the example uses)."""
    other = "zone_by_zone" if policy.rollout.mode == "concurrent_zones" else "concurrent_zones"
    rollout = policy.rollout.model_copy(update={"mode": other})
    return {
        f"example ({policy.rollout.mode})": policy,
        f"variant ({other})": policy.model_copy(update={"rollout": rollout}),
    }


def measure(size: int, policies: dict[str, Policy], repeat: int) -> dict[str, Any]:
    documents = {"instances": synthetic_fleet(size)}
    validation, validation_runs, instances = best_of(
        repeat, lambda d=documents: parse_inventory(d, f"synthetic_fleet({size})")
    )
    del documents  # only the validated instances stay alive for planning
    row: dict[str, Any] = {
        "instances": size,
        "validation_s": validation,
        "validation_runs_s": validation_runs,
        "policies": {},
    }
    for name, policy in policies.items():
        rss_before = current_rss_mb()
        seconds, runs, result = best_of(repeat, lambda p=policy: plan(p, instances))
        assert isinstance(result, Plan)
        traced = traced_peak_mb(lambda p=policy: plan(p, instances))
        waves, bound = len(result.waves), result.lower_bound
        row["policies"][name] = {
            "mode": policy.rollout.mode,
            "disruption_budget": str(policy.rollout.disruption_budget),
            "canary": policy.rollout.canary,
            "plan_s": seconds,
            "plan_runs_s": runs,
            "traced_peak_mb": traced,
            "rss_before_plan_mb": rss_before,
            "peak_rss_mb": peak_rss_mb(),
            "planned": result.instance_count,
            "excluded": len(result.excluded),
            "waves": waves,
            "lower_bound": bound,
            "waves_over_bound": waves / bound if bound else None,
            "rings": [
                {
                    "name": ring.name,
                    "instances": sum(len(w.instances) for w in ring.waves),
                    "waves": len(ring.waves),
                    "lower_bound": ring.lower_bound,
                }
                for ring in result.rings
            ],
        }
        del result
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def machine() -> dict[str, Any]:
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'instances':>9}  {'policy':<27} {'validate':>9} {'plan':>8} {'traced':>9} "
        f"{'peak RSS':>9} {'waves':>6} {'bound':>6} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        for name, fig in row["policies"].items():
            ratio = f"{fig['waves_over_bound']:.3f}" if fig["waves_over_bound"] else "-"
            lines.append(
                f"{row['instances']:>9,}  {name:<27} {row['validation_s']:>8.3f}s {fig['plan_s']:>7.3f}s "
                f"{fig['traced_peak_mb']:>6.1f} MB {fig['peak_rss_mb']:>6.1f} MB "
                f"{fig['waves']:>6} {fig['lower_bound']:>6} {ratio:>6}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--policy", type=Path, default=ROOT / "examples" / "policy.yaml")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "planner.json")
    args = parser.parse_args(argv)

    policies = variants(load_policy(str(args.policy)))
    rows = []
    for size in sorted(args.sizes):
        rows.append(measure(size, policies, args.repeat))
        print(f"  {size:,} instances measured", flush=True)

    largest = rows[-1]
    targets = {
        "instances": largest["instances"],
        "plan_seconds_under": TARGET_SECONDS,
        "memory_mb_under": TARGET_MB,
        "met": {
            name: {
                "time": fig["plan_s"] < TARGET_SECONDS,
                "traced_memory": fig["traced_peak_mb"] < TARGET_MB,
                "peak_rss": fig["peak_rss_mb"] < TARGET_MB,
            }
            for name, fig in largest["policies"].items()
        },
    }
    report = {
        "benchmark": "planner",
        "policy": str(args.policy.relative_to(ROOT) if args.policy.is_relative_to(ROOT) else args.policy),
        "fleet": "bench/fleet.py synthetic_fleet(n, seed=7): six regions (eastus/westus an Azure pair, "
        "ap-northeast-1/-3 a policy pair), 3 zones each, 20% of Azure machines in availability sets",
        "repeat": args.repeat,
        "machine": machine(),
        "targets": targets,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    info = report["machine"]
    print(f"PatchPilot planner benchmark — Python {info['python']}, {info['nproc']} CPUs, {info['date']}")
    print(f"policy {report['policy']} and its other-mode variant; times best of {args.repeat}\n")
    print(table(rows))
    print()
    for name, met in targets["met"].items():
        verdict = "met" if all(met.values()) else "MISSED"
        print(
            f"{largest['instances']:,} instances, {name}: target <{TARGET_SECONDS:g} s and <{TARGET_MB:g} MB "
            f"{verdict} ({', '.join(k for k, ok in met.items() if not ok) or 'all'}"
            f"{' missed' if not all(met.values()) else ' within'})"
        )
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
