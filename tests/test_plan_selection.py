"""`select` is `plan` before the waves: the same machines per ring, exclusions and warnings, so
`patchpilot validate` (which skips the packing) warns as `patchpilot plan` does. And `outline` is
`select` as far as those warnings go, assigning only what it needs of a large fleet."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from patchpilot.cli import ring_warnings
from patchpilot.inventory import Instance, load_inventory
from patchpilot.planning import outline, plan, select
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


@pytest.mark.parametrize("policy", policies(), ids=lambda p: p.name)
@pytest.mark.parametrize("fleet", ["fleet.json", "fleet-pools.json"])
def test_the_outline_warns_as_the_selection_does(policy: Policy, fleet: str) -> None:
    instances = load_inventory(str(EXAMPLES / fleet))
    chosen, outlined = select(policy, instances, NOW), outline(policy, instances, NOW)
    assert outlined.selects == {name: bool(group) for name, group in chosen.members.items()}
    assert outlined.warnings == chosen.warnings
    assert outlined.fleet_size == len(instances)
    assert ring_warnings("p.yaml", policy, fleet, outlined) == ring_warnings("p.yaml", policy, fleet, chosen)


def large_fleet(copies: int) -> list[Instance]:
    """examples/fleet-pools.json `copies` times over, each copy's ids and pools its own (so that
    every pool has as many members as in the example)."""
    base = load_inventory(str(EXAMPLES / "fleet-pools.json"))
    return [
        replace(i, id=f"{i.id}-{n}", traffic_pools=tuple(f"{p}-{n}" for p in i.traffic_pools))
        for n in range(copies)
        for i in base
    ]


def test_the_outline_of_a_large_fleet_stops_once_every_ring_selects_a_machine() -> None:
    policy, instances = load_policy(str(EXAMPLES / "policy-pools.yaml")), large_fleet(100)
    outlined = outline(policy, instances, NOW)
    assert all(outlined.selects.values())
    assert outlined.excluded is None  # not every machine was assigned
    assert outlined.warnings == select(policy, instances, NOW).warnings
    assert ring_warnings("p.yaml", policy, "f.json", outlined) == ring_warnings(
        "p.yaml", policy, "f.json", select(policy, instances, NOW)
    )


@pytest.mark.parametrize("pools", [None, "warn", "refuse"])
def test_a_ring_whose_only_machine_comes_last_is_outlined_as_select_sees_it(pools: str | None) -> None:
    """The outline goes on past its first slices for a ring whose one machine is the last of a large
    fleet. Alone in its pool, the machine is assigned first; with `single_member_pools: refuse`
    it selects nothing, and the ring's warning counts it among the excluded machines it matches."""
    policy = parse_policy(
        f"""
name: last-one
rings:
  - {{name: staging, select: {{tags: {{Environment: staging}}}}}}
  - {{name: production, select: {{tags: {{Environment: production}}}}}}
  - {{name: last, select: {{tags: {{Environment: last}}}}}}
rollout: {{pool_budget: 1, single_member_pools: {pools or "warn"}}}
""",
        "last-one.yaml",
    )
    instances = large_fleet(40)
    lone = ("tg-last",) if pools else ()
    instances.append(replace(instances[-1], id="i-zzzz-last", tags={"Environment": "last"}, traffic_pools=lone))
    chosen, outlined = select(policy, instances, NOW), outline(policy, instances, NOW)
    assert outlined.selects == {"staging": True, "production": True, "last": pools != "refuse"}
    assert outlined.warnings == chosen.warnings
    assert ring_warnings("p.yaml", policy, "f.json", outlined) == ring_warnings("p.yaml", policy, "f.json", chosen)
    if pools == "refuse":
        assert "the 1 it matches are excluded" in ring_warnings("p.yaml", policy, "f.json", outlined)[0]
