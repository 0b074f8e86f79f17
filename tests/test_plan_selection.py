"""`select` is `plan` before the waves: the same machines per ring, exclusions and warnings, so
`patchpilot validate` (which skips the packing) warns as `patchpilot plan` does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from patchpilot.cli import ring_warnings
from patchpilot.inventory import load_inventory
from patchpilot.planning import plan, select
from patchpilot.policy import Policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def policies() -> list[Policy]:
    found = [load_policy(str(p)) for p in sorted(EXAMPLES.glob("*policy*.yaml"))]
    found.append(load_policy(str(EXAMPLES / "azure-update-manager.yaml")))
    nothing_first = """
name: nothing-first
rings:
  - {name: canary, select: {tags: {Environment: nowhere}}}
  - {name: production, select: {tags: {Environment: production}}}
rollout: {pool_budget: 1, single_member_pools: refuse}
"""
    found.append(parse_policy(nothing_first, "nothing-first.yaml"))
    return found


@pytest.mark.parametrize("policy", policies(), ids=lambda p: p.name)
@pytest.mark.parametrize("fleet", ["fleet.json", "fleet-pools.json"])
def test_select_chooses_what_plan_chooses_and_warns_alike(policy: Policy, fleet: str) -> None:
    instances = load_inventory(str(EXAMPLES / fleet))
    planned, chosen = plan(policy, instances, NOW), select(policy, instances, NOW)
    assert chosen.excluded == planned.excluded
    assert chosen.warnings == planned.warnings
    assert chosen.instance_count == planned.instance_count
    for ring in planned.rings:
        assert sorted(i.id for w in ring.waves for i in w.instances) == [i.id for i in chosen.members[ring.name]]
    assert ring_warnings("p.yaml", policy, fleet, chosen) == ring_warnings("p.yaml", policy, fleet, planned)


def test_a_ring_that_selects_nothing_is_warned_about_from_the_selection() -> None:
    policy = policies()[-1]
    instances = load_inventory(str(EXAMPLES / "fleet.json"))
    (first, *_) = ring_warnings("p.yaml", policy, "fleet.json", select(policy, instances, NOW))
    assert "ring canary selects no machine of fleet.json" in first
