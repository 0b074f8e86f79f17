"""Cold import of the Azure Function App: what the Python worker does before the first
invocation (import `function_app`, index its functions), against a bare `import azure.functions`.

Each round runs every scenario in a fresh interpreter, in rotating order, with no app settings
(as the worker indexes the app); figures are medians of the wall time minus the interpreter's
own start-up. `make bench` runs it; figures in bench/results/function_app.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 9
SCENARIOS = {
    "interpreter": "pass",
    "azure.functions": "import azure.functions",
    "function_app": "import function_app; function_app.app.get_functions()",
}


def seconds(code: str) -> float:
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, check=True)
    return time.perf_counter() - started


def main() -> None:
    names = list(SCENARIOS)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            runs[name].append(seconds(SCENARIOS[name]))
    startup = statistics.median(runs["interpreter"])
    ms = {name: round((statistics.median(values) - startup) * 1000) for name, values in runs.items()}
    ratio = round(ms["function_app"] / ms["azure.functions"], 2)
    print(
        f"azure.functions {ms['azure.functions']} ms; function_app (import + index) {ms['function_app']} ms ({ratio}×)"
    )
    write_results(
        "function_app",
        "Cold import of function_app.py (import and index, no app settings) against import azure.functions",
        {"rounds": ROUNDS, "startup_ms": round(startup * 1000), "import_ms": ms, "ratio": ratio},
    )


if __name__ == "__main__":
    main()
