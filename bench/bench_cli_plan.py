"""`patchpilot plan` and `patchpilot validate` on large fleets, as an operator runs them: whole process.

Generates two held-out fleets with bench/fleet.py (10,000 and 100,000 instances, a seed the planner
benchmark does not use) into build/bench_cli_plan/, then runs each command on each fleet with the
example policy (examples/policy.yaml) in a fresh interpreter, `--rounds` times after one warm-up
run (which also writes the bytecode, as an installed package has it). For each it records the wall
time and the CPU time (medians; on a shared machine the CPU time is the steadier) and the child's
peak RSS (`os.wait4`'s ru_maxrss: what `/usr/bin/time -v` calls "Maximum resident set size"; the
largest of the rounds). The time targets are checked on the wall time.

Targets (issue 17): `plan` of 100,000 instances ≤ 1.0 s and ≤ 200 MB; `validate` of the same fleet
≤ 0.6 s; growth from 10k to 100k linear (the 100k time at most 10× the 10k time, start-up
included). Figures go to bench/results/cli_plan.json with the targets beside them.

    python bench/bench_cli_plan.py [--rounds 3] [--source DIR] [--before DIR]

--source runs another checkout's code (its shared/ first on the path), say main's, for a
before-and-after on the same fleets and the same machine. --before DIR measures that checkout too,
round by round in turn with the source (each round runs one, then the other), so that on a shared
machine, whose load changes from one minute to the next, both see the same load; its figures go
beside the source's (`before` in the results file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from fleet import synthetic_fleet  # noqa: E402
from results_file import write_results  # noqa: E402

SIZES = (10_000, 100_000)
SEED = 2017  # held out: bench_planner.py plans seed 7
COMMANDS = ("plan", "validate")
TARGETS = {"plan_s": 1.0, "plan_mb": 200.0, "validate_s": 0.6, "growth": 10.0}
POLICY = "examples/policy.yaml"
CLI = "import sys; from patchpilot.cli import main; sys.argv[0] = 'patchpilot'; main()"


def fleet_file(size: int) -> Path:
    path = ROOT / "build" / "bench_cli_plan" / f"fleet-{size}-seed{SEED}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"instances": synthetic_fleet(size, seed=SEED)}))
    return path


def run_once(command: str, inventory: Path, source: Path) -> tuple[float, float, float]:
    """One whole `patchpilot COMMAND` process: its wall time (s), CPU time (s, user + system) and
    peak RSS (MB). On a busy machine the CPU time is the steadier of the two times."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source / "shared"), os.environ.get("PYTHONPATH")]))
    arguments = [sys.executable, "-c", CLI, command, "--policy", POLICY, "--inventory", str(inventory)]
    with tempfile.TemporaryFile() as errors:  # the plan's warnings; shown if the command fails
        started = time.perf_counter()
        child = subprocess.Popen(arguments, cwd=source, env=environment, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(
                f"patchpilot {command} --inventory {inventory} exited {child.returncode}: {errors.read()!r}"
            )
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def measure(rounds: int, sources: list[Path]) -> list[dict[str, dict[str, Any]]]:
    """Each source's figures. With several sources, each round runs every source in turn."""
    figures: list[dict[str, dict[str, Any]]] = [{} for _ in sources]
    for size in SIZES:
        inventory = fleet_file(size)
        for command in COMMANDS:
            for source in sources:
                run_once(command, inventory, source)  # warm-up: bytecode written, file in the page cache
            runs: list[list[tuple[float, float, float]]] = [[] for _ in sources]
            for _ in range(rounds):
                for own, source in zip(runs, sources, strict=True):
                    own.append(run_once(command, inventory, source))
            for own_figures, own, source in zip(figures, runs, sources, strict=True):
                row = own_figures[f"{command}_{size}"] = {
                    "command": f"patchpilot {command} --policy {POLICY} --inventory {inventory.relative_to(ROOT)}",
                    "seconds_median": round(statistics.median(s for s, _, _ in own), 3),
                    "seconds_runs": [round(s, 3) for s, _, _ in own],
                    "cpu_seconds_median": round(statistics.median(cpu for _, cpu, _ in own), 3),
                    "max_rss_mb": round(max(mb for _, _, mb in own), 1),
                }
                which = f" ({source})" if len(sources) > 1 else ""
                print(
                    f"{command:>8} {size:>7,}: {row['seconds_median']:.3f} s (CPU {row['cpu_seconds_median']:.3f} s; "
                    f"medians of {rounds}), {row['max_rss_mb']:.1f} MB{which}",
                    flush=True,
                )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")
    parser.add_argument("--before", type=Path, help="another checkout, measured in turn with the source")
    parser.add_argument("--name", default="cli_plan", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args(argv)

    sources = [args.source.resolve(), *([args.before.resolve()] if args.before else [])]
    figures, *before = measure(args.rounds, sources)
    large, small = SIZES[-1], SIZES[0]
    plan_s = figures[f"plan_{large}"]["seconds_median"]
    seconds = {key: value["seconds_median"] for key, value in figures.items()}
    growth = {command: round(seconds[f"{command}_{large}"] / seconds[f"{command}_{small}"], 2) for command in COMMANDS}
    met = {
        "plan_s": plan_s <= TARGETS["plan_s"],
        "plan_mb": figures[f"plan_{large}"]["max_rss_mb"] <= TARGETS["plan_mb"],
        "validate_s": figures[f"validate_{large}"]["seconds_median"] <= TARGETS["validate_s"],
        "growth": all(g <= TARGETS["growth"] for g in growth.values()),
    }
    print(f"growth 10k -> 100k: {growth} (target ≤ {TARGETS['growth']:g}×)")
    missed = [key for key, ok in met.items() if not ok]
    print(f"targets {TARGETS}: {'MISSED ' + ', '.join(missed) if missed else 'met'}")
    write_results(
        args.name,
        "Whole-process `patchpilot plan` / `validate` of held-out 10k and 100k fleets: median wall time and peak RSS",
        {
            "source": str(args.source),
            "rounds": args.rounds,
            "fleet": f"bench/fleet.py synthetic_fleet(n, seed={SEED})",
            "targets": TARGETS,
            "met": met,
            "growth_100k_over_10k": growth,
            "figures": figures,
            **({"before": {"source": str(args.before), "figures": before[0]}} if before else {}),
        },
    )
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
