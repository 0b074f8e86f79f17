"""Synthetic fleets for benchmarks and examples: regions, zones, availability sets, rings."""

from __future__ import annotations

import random
from typing import Any

REGIONS = [
    ("aws", "us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    ("aws", "ap-northeast-1", ["ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d"]),
    ("aws", "ap-northeast-3", ["ap-northeast-3a", "ap-northeast-3b", "ap-northeast-3c"]),
    ("azure", "eastus", ["1", "2", "3"]),
    ("azure", "westus", ["1", "2", "3"]),  # Azure's built-in pair of eastus
    ("azure", "japaneast", ["1", "2", "3"]),
]


def synthetic_fleet(count: int, seed: int = 7, aset_share: float = 0.2) -> list[dict[str, Any]]:
    """`count` instances over six regions (two geo pairs), three zones each; on Azure a share
    of the machines sit in availability sets (no zone, five update domains)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        cloud, region, zones = REGIONS[n % len(REGIONS)]
        zone: str | None = rng.choice(zones)
        aset = domain = None
        if cloud == "azure" and rng.random() < aset_share:
            zone, aset, domain = None, f"as-{region}-{rng.randrange(20)}", rng.randrange(5)
        environment = "staging" if rng.random() < 0.05 else "production"
        tags = {"Environment": environment, "App": f"app{rng.randrange(50)}"}
        if rng.random() < 0.01:
            tags["PatchPolicy"] = "frozen"
        prefix = "i-" if cloud == "aws" else "vm-"
        out.append(
            {
                "id": f"{prefix}{n:08x}",
                "name": f"{region}-{n}",
                "cloud": cloud,
                "region": region,
                "zone": zone,
                "availability_set": aset,
                "update_domain": domain,
                "os": "windows" if rng.random() < 0.3 else "linux",
                "tags": tags,
            }
        )
    return out
