"""Where every benchmark writes its figures: bench/results/<name>.json, with the machine."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, benchmark: str, figures: dict[str, Any]) -> Path:
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    document = {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **figures,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"figures written to {out.relative_to(RESULTS.parent.parent)}")
    return out
