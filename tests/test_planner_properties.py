"""Property-based and example tests of the wave planner's contract.

Within a ring a wave never holds (a) two zones of one region under `zone_by_zone`, (b) two
regions of a geo pair, (c) two update domains of one availability set, (d) more instances of a
zone than its disruption budget; the first wave of every ring after the first holds at most
`canary` instances; every instance is in exactly one wave or excluded with a reason; the plan
does not depend on input order; and it never beats, and (without availability sets, on a
bipartite pair graph) always reaches, the lower bound it reports. With traffic pools and a
`pool_budget`, no wave holds more of a pool's members than its budget, on top of every rule above.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from patchpilot.inventory import Cloud, Instance, Simulation
from patchpilot.planning import Plan, RingPlan, placement, plan, wave_estimate
from patchpilot.planning.estimate import simulations_estimate
from patchpilot.planning.regions import RegionPairs
from patchpilot.policy import Policy, Rollout, parse_policy

pytestmark = pytest.mark.slow  # 31 s alone (hypothesis): `make test-fast` leaves it out

# ---------------------------------------------------------------------------------------------
# Fleets
# ---------------------------------------------------------------------------------------------

AWS_REGIONS: dict[str, list[str]] = {
    "us-east-1": ["us-east-1a", "us-east-1b", "us-east-1c"],
    "us-west-2": ["us-west-2a", "us-west-2b", "us-west-2c"],
    "ap-northeast-1": ["ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d"],
    "ap-northeast-3": ["ap-northeast-3a", "ap-northeast-3b", "ap-northeast-3c"],
}
AZURE_REGIONS: dict[str, list[str]] = {
    "eastus": ["1", "2", "3"],
    "westus": ["1", "2", "3"],  # built-in pair of eastus
    "westus3": ["1", "2", "3"],  # built-in pair of eastus as well
    "japaneast": ["1", "2", "3"],
    "japanwest": ["1", "2", "3"],  # built-in pair of japaneast
    "uksouth": ["1", "2", "3"],
    "ukwest": ["1", "2", "3"],  # built-in pair of uksouth
}
# Pairs a policy may declare. The first two keep every component a tree; the others join
# components, and together with the built-in pairs some make odd cycles (westus–westus3 closes
# the triangle eastus–westus–westus3), which the planner colours greedily.
POLICY_PAIRS: list[tuple[str, str]] = [
    ("us-east-1", "us-west-2"),
    ("ap-northeast-1", "ap-northeast-3"),
    ("ap-northeast-1", "japanwest"),
    ("us-east-1", "eastus"),
    ("westus", "westus3"),
    ("westus", "uksouth"),
    ("ukwest", "westus3"),
]
ENVIRONMENTS = ["staging", "production", "other"]


@st.composite
def instances(
    draw: st.DrawFn, *, max_size: int = 40, availability_sets: bool = True, dense_sets: bool = False
) -> list[Instance]:
    """A fleet of up to `max_size` machines with unique ids.

    Availability sets are modelled as Azure has them: a set lives in one region and its VMs
    carry no zone; its update domain is 0-4 or unknown (None). `dense_sets` crowds the fleet
    into one or two Azure regions, mostly in sets, where packing domains is hardest.
    """
    count = draw(st.integers(min_value=0, max_value=max_size))
    # A few regions per fleet, so that zones and pairs actually collide.
    aws = draw(st.lists(st.sampled_from(sorted(AWS_REGIONS)), min_size=1, max_size=3, unique=True))
    azure = draw(
        st.lists(st.sampled_from(sorted(AZURE_REGIONS)), min_size=1, max_size=2 if dense_sets else 4, unique=True)
    )
    zones_per_region = draw(st.integers(min_value=1, max_value=3))
    # How many Azure machines, out of 4, sit in availability sets: some fleets have none, some
    # are mostly sets, so that sets with several busy update domains share a region.
    aset_share = draw(st.integers(min_value=3 if dense_sets else 0, max_value=4)) if availability_sets else 0
    fleet = []
    for n in range(count):
        cloud: Cloud = "azure" if dense_sets else draw(st.sampled_from(["aws", "azure"]))
        region = draw(st.sampled_from(aws if cloud == "aws" else azure))
        zones = (AWS_REGIONS if cloud == "aws" else AZURE_REGIONS)[region][:zones_per_region]
        zone = draw(st.none() | st.sampled_from(zones))
        aset = domain = None
        if cloud == "azure" and draw(st.integers(0, 3)) < aset_share:
            zone = None
            aset = f"as-{region}-{draw(st.integers(0, 1))}"
            domain = draw(st.none() | st.integers(min_value=0, max_value=4))
        tags = {"Environment": draw(st.sampled_from(ENVIRONMENTS))}
        if draw(st.integers(0, 9)) == 0:
            tags["PatchPolicy"] = "frozen"
        prefix = "i-" if cloud == "aws" else "vm-"
        fleet.append(
            Instance(
                # Ids do not follow generation order, so sorting by id really reorders.
                id=f"{prefix}{(n * 7919) % 1000:03d}-{n}",
                cloud=cloud,
                region=region,
                os=draw(st.sampled_from(["linux", "windows"])),
                zone=zone,
                availability_set=aset,
                update_domain=domain,
                tags=tags,
            )
        )
    return fleet


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------

RING_CHOICES: list[dict[str, Any]] = [
    {"name": "staging", "select": {"tags": {"Environment": "staging"}}},
    {"name": "production", "select": {"tags": {"Environment": "production"}}},
    {"name": "azure", "select": {"clouds": ["azure"]}},
    {"name": "everything-tagged", "select": {"tags": {"Environment": "*"}}},
    {"name": "east", "select": {"regions": ["us-east-1", "eastus", "japaneast"]}},
    {"name": "windows", "select": {"os": ["windows"]}},
]
BUDGETS: list[int | str] = [1, 2, 3, 5, "10%", "25%", "33.3%", "50%", "100%"]


@st.composite
def policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    rings = draw(st.lists(st.sampled_from(RING_CHOICES), min_size=1, max_size=3, unique_by=lambda r: r["name"]))
    document: dict[str, Any] = {
        "name": "property-policy",
        "rings": rings,
        "rollout": {
            "mode": draw(st.sampled_from(["zone_by_zone", "concurrent_zones"])),
            "disruption_budget": draw(st.sampled_from(BUDGETS)),
            "canary": draw(st.integers(min_value=0, max_value=3)),
        },
        "region_pairs": [list(p) for p in draw(st.lists(st.sampled_from(POLICY_PAIRS), max_size=3, unique=True))],
    }
    if draw(st.booleans()):
        document["exclude"] = {"tags": {"PatchPolicy": "frozen"}}
    return document


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """A validated policy, built either from YAML text (the CLI's path) or from a dict."""
    document = draw(policy_documents())
    if draw(st.booleans()):
        return parse_policy(yaml.safe_dump(document, sort_keys=False), "<hypothesis>")
    return Policy.model_validate(document)


@st.composite
def scenarios(
    draw: st.DrawFn, *, availability_sets: bool = True, dense_sets: bool = False
) -> tuple[Policy, list[Instance]]:
    policy = draw(policies())
    fleet = draw(instances(availability_sets=availability_sets, dense_sets=dense_sets))
    exclude_ids: bool = draw(st.booleans())
    if fleet and exclude_ids:  # sometimes exclude a few machines by id too
        ids = draw(st.lists(st.sampled_from([i.id for i in fleet]), max_size=3, unique=True))
        exclude = policy.exclude.model_copy(update={"ids": ids})
        policy = policy.model_copy(update={"exclude": exclude})
    if fleet and draw(st.booleans()):  # sometimes a few machines belong to a scaling group
        members = draw(st.lists(st.sampled_from([i.id for i in fleet]), max_size=4, unique=True))
        groups = draw(st.lists(st.sampled_from(["asg-web", "vmss-api"]), min_size=len(members), max_size=len(members)))
        group_of = dict(zip(members, groups, strict=True))
        fleet = [replace(i, scaling_group=group_of[i.id]) if i.id in group_of else i for i in fleet]
    return policy, fleet


# Most fleets mix clouds and regions; some crowd availability sets into one or two regions.
SCENARIOS = scenarios() | scenarios(dense_sets=True)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

Region = tuple[str, str]
Zone = tuple[str, str, str]


def zone_of(instance: Instance) -> Zone:
    return (instance.cloud, instance.region, instance.zone or "")


def region_of(instance: Instance) -> Region:
    return (instance.cloud, instance.region)


def domain_of(instance: Instance) -> object:
    return ("unknown", instance.id) if instance.update_domain is None else instance.update_domain


def ring_members(ring: RingPlan) -> list[Instance]:
    return [i for wave in ring.waves for i in wave.instances]


def is_frozen(policy: Policy, instance: Instance) -> bool:
    return any(
        key in instance.tags and ("*" in values or instance.tags[key] in values)
        for key, values in policy.exclude.tags.items()
    )


def expected_ring(policy: Policy, instance: Instance) -> str | None:
    """The ring the contract puts an instance in, or None when it is excluded."""
    if instance.id in policy.exclude.ids or is_frozen(policy, instance) or instance.scaling_group is not None:
        return None
    return next((r.name for r in policy.rings if r.select.matches(instance)), None)


def bipartite(regions: Iterable[Region], pairs: RegionPairs) -> bool:
    nodes = sorted(set(regions))
    side: dict[Region, int] = {}
    for start in nodes:
        if start in side:
            continue
        side[start] = 0
        stack = [start]
        while stack:
            here = stack.pop()
            for other in nodes:
                if other == here or not pairs.paired(here[1], other[1]):
                    continue
                if other not in side:
                    side[other] = 1 - side[here]
                    stack.append(other)
                elif side[other] == side[here]:
                    return False
    return True


def summary(result: Plan) -> list[tuple[str, bool, list[str]]]:
    return [(w.ring, w.canary, w.ids) for w in result.waves]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@given(SCENARIOS)
def test_zone_by_zone_never_mixes_zones_of_a_region(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    if policy.rollout.mode != "zone_by_zone":
        return
    for wave in plan(policy, fleet).waves:
        zones: dict[Region, set[str]] = defaultdict(set)
        for instance in wave.instances:
            zones[region_of(instance)].add(instance.zone or "")
        assert all(len(z) == 1 for z in zones.values()), (wave.index, dict(zones))


@given(SCENARIOS)
def test_no_wave_holds_both_regions_of_a_geo_pair(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    pairs = RegionPairs(policy.region_pairs)
    for wave in plan(policy, fleet).waves:
        regions = sorted({region_of(i) for i in wave.instances})
        clashes = [(a, b) for a in regions for b in regions if a < b and pairs.paired(a[1], b[1])]
        assert not clashes, (wave.index, clashes)


@given(SCENARIOS)
def test_no_wave_holds_two_update_domains_of_an_availability_set(
    scenario: tuple[Policy, list[Instance]],
) -> None:
    policy, fleet = scenario
    for wave in plan(policy, fleet).waves:
        domains: dict[str, set[object]] = defaultdict(set)
        for instance in wave.instances:
            if instance.availability_set is not None:
                domains[instance.availability_set].add(domain_of(instance))
        assert all(len(d) == 1 for d in domains.values()), (wave.index, dict(domains))


@given(SCENARIOS)
def test_no_wave_exceeds_a_zones_disruption_budget(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    budget = policy.rollout.disruption_budget
    for ring in plan(policy, fleet).rings:
        sizes = Counter(zone_of(i) for i in ring_members(ring))
        for wave in ring.waves:
            for zone, count in Counter(zone_of(i) for i in wave.instances).items():
                assert count <= budget.ceil_of(sizes[zone]), (wave.index, zone, count, sizes[zone])


@given(SCENARIOS)
def test_canary_wave_opens_every_ring_after_the_first(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    canary = policy.rollout.canary
    for position, ring in enumerate(plan(policy, fleet).rings):
        if not ring.waves:
            continue
        first, *rest = ring.waves
        if position > 0 and canary > 0:
            assert first.canary
            assert 1 <= len(first.instances) <= canary
        else:
            assert not first.canary
        assert not any(w.canary for w in rest)


@given(SCENARIOS)
def test_every_instance_is_in_one_wave_of_its_ring_or_excluded(
    scenario: tuple[Policy, list[Instance]],
) -> None:
    policy, fleet = scenario
    result = plan(policy, fleet)
    placed = Counter(i.id for w in result.waves for i in w.instances)
    excluded = Counter(e.instance.id for e in result.excluded)
    assert max(placed.values(), default=1) == 1
    assert max(excluded.values(), default=1) == 1
    assert not placed.keys() & excluded.keys()
    assert placed.keys() | excluded.keys() == {i.id for i in fleet}

    ring_of = {i.id: w.ring for w in result.waves for i in w.instances}
    for instance in fleet:
        assert ring_of.get(instance.id) == expected_ring(policy, instance), instance.id
    for exclusion in result.excluded:
        assert exclusion.reason
        if is_frozen(policy, exclusion.instance) and exclusion.instance.id not in policy.exclude.ids:
            assert exclusion.reason.startswith("frozen")
    # Waves are numbered 1, 2, ... in run order, and rings follow the policy.
    assert [w.index for w in result.waves] == list(range(1, len(result.waves) + 1))
    assert [r.name for r in result.rings] == [r.name for r in policy.rings]
    assert all(w.instances for w in result.waves)


@given(SCENARIOS)
def test_frozen_instances_are_never_in_a_wave(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    policy = policy.model_copy(
        update={"exclude": policy.exclude.model_copy(update={"tags": {"PatchPolicy": ["frozen"]}})}
    )
    result = plan(policy, fleet)
    waved = {i.id for w in result.waves for i in w.instances}
    frozen = {i.id for i in fleet if i.tags.get("PatchPolicy") == "frozen"}
    assert not waved & frozen
    assert frozen <= {e.instance.id for e in result.excluded}


@given(SCENARIOS)
def test_scaling_group_members_are_never_in_a_wave(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    assert policy.scaling_groups == "skip"  # the default
    result = plan(policy, fleet)
    waved = {i.id for w in result.waves for i in w.instances}
    reasons = {e.instance.id: e.reason for e in result.excluded}
    for instance in fleet:
        if instance.scaling_group is None:
            continue
        assert instance.id not in waved
        if instance.id not in policy.exclude.ids and not is_frozen(policy, instance) and policy.kind != "frozen":
            assert reasons[instance.id] == f"member of scaling group {instance.scaling_group}: patch its image"


@given(SCENARIOS, st.data())
def test_plan_does_not_depend_on_input_order(scenario: tuple[Policy, list[Instance]], data: st.DataObject) -> None:
    policy, fleet = scenario
    shuffled = data.draw(st.permutations(fleet))
    first, second = plan(policy, fleet), plan(policy, shuffled)
    assert first == second
    assert summary(first) == summary(second)


REBOOTS: tuple[Literal["if_required", "never"], ...] = ("if_required", "never")


@given(SCENARIOS, st.data())
def test_a_waves_traits_say_what_its_machines_do(scenario: tuple[Policy, list[Instance]], data: st.DataObject) -> None:
    """`Wave.placement`, `hotpatch_count` and `simulations` (one pass over the wave's machines,
    `Wave.traits`) answer as `placement`, the machines' own flags and `wave_estimate` do."""
    policy, fleet = scenario
    hints = [None, Simulation(), Simulation(install_minutes=90), Simulation(install_minutes=5, health="fail")]
    fleet = [replace(i, hotpatch=data.draw(st.booleans()), simulation=data.draw(st.sampled_from(hints))) for i in fleet]
    for wave in plan(policy, fleet).waves:
        assert wave.placement == placement(wave.instances)
        assert wave.hotpatch_count == sum(1 for i in wave.instances if i.hotpatch)
        assert wave.simulations == {i.simulation for i in wave.instances}
        for reboot in REBOOTS:
            assert simulations_estimate(wave.simulations, reboot) == wave_estimate(wave.instances, reboot)


@given(SCENARIOS)
def test_waves_never_beat_the_lower_bound(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    for ring in plan(policy, fleet).rings:
        assert len(ring.waves) >= ring.lower_bound
        assert (ring.lower_bound == 0) == (not ring.waves)


@given(scenarios(availability_sets=False))
def test_waves_reach_the_lower_bound_without_availability_sets(
    scenario: tuple[Policy, list[Instance]],
) -> None:
    policy, fleet = scenario
    pairs = RegionPairs(policy.region_pairs)
    for ring in plan(policy, fleet).rings:
        if bipartite((region_of(i) for i in ring_members(ring)), pairs):
            assert len(ring.waves) == ring.lower_bound, ring.name
        else:  # an odd cycle of pairs: greedy colouring, still never below the bound
            assert len(ring.waves) >= ring.lower_bound


# ---------------------------------------------------------------------------------------------
# Traffic pools
# ---------------------------------------------------------------------------------------------

POOLS = ["tg-web", "tg-api", "lb-sql", "lb-tiny"]


@st.composite
def pool_scenarios(draw: st.DrawFn, *, availability_sets: bool = True) -> tuple[Policy, list[Instance]]:
    """A scenario whose machines serve from 0-3 of a few pools (a pool may span zones, regions and
    clouds, or have a single member), under a pool budget and a single-member-pool rule."""
    mixes = scenarios(availability_sets=availability_sets)
    policy, fleet = draw(mixes | scenarios(dense_sets=True) if availability_sets else mixes)
    pools = POOLS[: draw(st.integers(min_value=1, max_value=len(POOLS)))]
    fleet = [replace(i, traffic_pools=tuple(draw(st.lists(st.sampled_from(pools), max_size=3)))) for i in fleet]
    rollout = Rollout.model_validate(
        {
            **policy.rollout.model_dump(),
            "pool_budget": draw(st.sampled_from(BUDGETS)),
            "single_member_pools": draw(st.sampled_from(["warn", "refuse"])),
        }
    )
    return policy.model_copy(update={"rollout": rollout}), fleet


def pool_sizes(fleet: Iterable[Instance]) -> Counter[str]:
    return Counter(pool for i in fleet for pool in set(i.traffic_pools))


def alone_in_a_pool(fleet: Sequence[Instance], instance: Instance) -> bool:
    return any(pool_sizes(fleet)[p] == 1 for p in instance.traffic_pools)


@given(pool_scenarios())
def test_no_wave_exceeds_a_pools_budget(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    budget = policy.rollout.pool_budget
    assert budget is not None
    sizes = pool_sizes(fleet)
    for wave in plan(policy, fleet).waves:
        taken = Counter(pool for i in wave.instances for pool in set(i.traffic_pools))
        for pool, count in taken.items():
            limit = max(int(budget.amount * sizes[pool] / 100 + 1e-9), 1) if budget.percent else int(budget.amount)
            assert count <= limit, (wave.index, pool, count, sizes[pool], str(budget))


@given(pool_scenarios())
def test_pools_break_no_zone_pair_domain_or_canary_rule(scenario: tuple[Policy, list[Instance]]) -> None:
    policy, fleet = scenario
    result = plan(policy, fleet)
    pairs = RegionPairs(policy.region_pairs)
    for position, ring in enumerate(result.rings):
        sizes = Counter(zone_of(i) for i in ring_members(ring))
        for wave in ring.waves:
            zones: dict[Region, set[str]] = defaultdict(set)
            domains: dict[str, set[object]] = defaultdict(set)
            for instance in wave.instances:
                zones[region_of(instance)].add(instance.zone or "")
                if instance.availability_set is not None:
                    domains[instance.availability_set].add(domain_of(instance))
            if policy.rollout.mode == "zone_by_zone":
                assert all(len(z) == 1 for z in zones.values()), (wave.index, dict(zones))
            assert not [(a, b) for a in zones for b in zones if a < b and pairs.paired(a[1], b[1])], wave.index
            assert all(len(d) == 1 for d in domains.values()), (wave.index, dict(domains))
            for zone, count in Counter(zone_of(i) for i in wave.instances).items():
                assert count <= policy.rollout.disruption_budget.ceil_of(sizes[zone]), (wave.index, zone)
        if position > 0 and policy.rollout.canary > 0 and ring.waves:
            assert ring.waves[0].canary and 1 <= len(ring.waves[0].instances) <= policy.rollout.canary
    assert len(result.waves) >= result.lower_bound
    for ring in result.rings:
        assert len(ring.waves) >= ring.lower_bound
        assert (ring.lower_bound == 0) == (not ring.waves)


@given(pool_scenarios())
def test_with_pools_every_machine_is_in_one_wave_or_excluded_with_its_reason(
    scenario: tuple[Policy, list[Instance]],
) -> None:
    policy, fleet = scenario
    result = plan(policy, fleet)
    placed = Counter(i.id for w in result.waves for i in w.instances)
    excluded = {e.instance.id: e.reason for e in result.excluded}
    assert max(placed.values(), default=1) == 1
    assert placed.keys() | excluded.keys() == {i.id for i in fleet}
    assert not placed.keys() & excluded.keys()
    refuse = policy.rollout.single_member_pools == "refuse"
    ring_of = {i.id: w.ring for w in result.waves for i in w.instances}
    for instance in fleet:
        expected = expected_ring(policy, instance)
        if expected is not None and refuse and alone_in_a_pool(fleet, instance):
            assert "has one member" in excluded[instance.id], instance.id
            assert any(instance.label in w for w in result.warnings)
        else:
            assert ring_of.get(instance.id) == expected, instance.id
    for instance in (i for w in result.waves for i in w.instances):
        for pool in instance.traffic_pools:
            if pool_sizes(fleet)[pool] == 1:
                assert f"pool {pool} has one member: it will be down during its install" in result.warnings


@given(pool_scenarios(availability_sets=False), st.data())
def test_a_plan_with_pools_does_not_depend_on_input_order(
    scenario: tuple[Policy, list[Instance]], data: st.DataObject
) -> None:
    policy, fleet = scenario
    assert plan(policy, fleet) == plan(policy, data.draw(st.permutations(fleet)))


# ---------------------------------------------------------------------------------------------
# Examples with exact waves
# ---------------------------------------------------------------------------------------------


def machine(
    id: str,
    region: str,
    zone: str | None = "1",
    *,
    cloud: Cloud = "azure",
    env: str = "production",
    aset: str | None = None,
    domain: int | None = None,
    **tags: str,
) -> Instance:
    return Instance(
        id=id,
        cloud=cloud,
        region=region,
        os="linux",
        zone=zone,
        availability_set=aset,
        update_domain=domain,
        tags={"Environment": env, **tags},
    )


def one_ring(
    budget: int | str,
    mode: str = "zone_by_zone",
    canary: int = 0,
    rollout_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> Policy:
    return Policy.model_validate(
        {
            "name": "example",
            "rings": [{"name": "production", "select": {"tags": {"Environment": "production"}}}],
            "rollout": {"mode": mode, "disruption_budget": budget, "canary": canary, **(rollout_extra or {})},
            **extra,
        }
    )


def wave_ids(result: Plan) -> list[list[str]]:
    return [w.ids for w in result.waves]


def test_paired_regions_never_share_a_wave() -> None:
    fleet = [machine(f"e{k}", "eastus") for k in range(3)] + [machine(f"w{k}", "westus") for k in range(3)]
    result = plan(one_ring(1), fleet[::-1])
    # eastus counts up from the first wave, its partner down from the bound: 3 + 3 waves.
    assert wave_ids(result) == [["e0"], ["e1"], ["e2"], ["w0"], ["w1"], ["w2"]]
    assert result.rings[0].lower_bound == 6


def test_unpaired_regions_share_waves() -> None:
    fleet = [machine(f"e{k}", "eastus") for k in range(3)] + [machine(f"j{k}", "japaneast") for k in range(3)]
    result = plan(one_ring(1), fleet)
    assert wave_ids(result) == [["e0", "j0"], ["e1", "j1"], ["e2", "j2"]]
    assert result.rings[0].lower_bound == 3


def test_policy_pairs_are_honoured_like_built_in_ones() -> None:
    fleet = [machine("a", "ap-northeast-1", "ap-northeast-1a", cloud="aws")]
    fleet.append(machine("b", "ap-northeast-3", "ap-northeast-3a", cloud="aws"))
    assert wave_ids(plan(one_ring(1), fleet)) == [["a", "b"]]
    paired = one_ring(1, region_pairs=[["ap-northeast-1", "ap-northeast-3"]])
    assert wave_ids(plan(paired, fleet)) == [["a"], ["b"]]


def test_zone_by_zone_versus_concurrent_zones() -> None:
    fleet = [machine(f"{zone}{k}", "japaneast", zone) for zone in "123" for k in range(2)]
    fleet.append(machine("n0", "japaneast", None))  # no zone: a zone of its own ("")
    # One zone at a time, the smallest first (the zoneless one), then by name.
    assert wave_ids(plan(one_ring(1), fleet)) == [["n0"], ["10"], ["11"], ["20"], ["21"], ["30"], ["31"]]
    # Zones side by side: as many waves as the largest zone needs.
    concurrent = plan(one_ring(1, mode="concurrent_zones"), fleet)
    assert wave_ids(concurrent) == [["n0", "10", "20", "30"], ["11", "21", "31"]]
    assert concurrent.rings[0].lower_bound == 2


def test_percentage_budget_rounds_up_against_the_zone_size_in_the_ring() -> None:
    fleet = [machine(f"m{k:02d}", "eastus") for k in range(11)]
    # 25% of 11 is 2.75: 3 per wave, so 4 waves.
    assert [len(w) for w in wave_ids(plan(one_ring("25%"), fleet))] == [3, 3, 3, 2]
    # 10% of 11 rounds up to 2 (Google OS Config's rule).
    assert [len(w) for w in wave_ids(plan(one_ring("10%"), fleet))] == [2, 2, 2, 2, 2, 1]


def test_tiny_percentage_budget_still_lets_one_machine_through() -> None:
    # A positive percentage never rounds down to a budget of 0 (it used to divide by zero).
    fleet = [machine(f"m{k}", "eastus") for k in range(3)]
    assert wave_ids(plan(one_ring("0.0000001%"), fleet)) == [["m0"], ["m1"], ["m2"]]


def test_canary_wave_opens_the_second_ring() -> None:
    policy = Policy.model_validate(
        {
            "name": "example",
            "rings": [
                {"name": "staging", "select": {"tags": {"Environment": "staging"}}},
                {"name": "production", "select": {"tags": {"Environment": "production"}}},
            ],
            "rollout": {"disruption_budget": "50%", "canary": 2},
        }
    )
    fleet = [machine(f"s{k}", "eastus", env="staging") for k in range(2)]
    fleet += [machine(f"p1{k}", "eastus", "1") for k in range(6)]
    fleet += [machine(f"p2{k}", "eastus", "2") for k in range(2)]
    result = plan(policy, fleet)
    assert summary(result) == [
        ("staging", False, ["s0"]),  # the first ring has no canary wave
        ("staging", False, ["s1"]),
        ("production", True, ["p10", "p11"]),  # from the largest zone, at most 2
        ("production", False, ["p20"]),  # smallest zone first; 50% of 2 is 1
        ("production", False, ["p21"]),
        ("production", False, ["p12", "p13", "p14"]),  # 50% of the zone's 6 in the ring is 3
        ("production", False, ["p15"]),
    ]
    assert [r.lower_bound for r in result.rings] == [2, 5]  # canary wave + 2 + 2


def test_availability_set_domains_never_share_a_wave() -> None:
    fleet = [
        machine("d0a", "eastus", None, aset="as-sql", domain=0),
        machine("d0b", "eastus", None, aset="as-sql", domain=0),
        machine("d1a", "eastus", None, aset="as-sql", domain=1),
        machine("d1b", "eastus", None, aset="as-sql", domain=1),
        machine("d2a", "eastus", None, aset="as-sql", domain=2),
        machine("u1", "eastus", None, aset="as-sql", domain=None),
        machine("u2", "eastus", None, aset="as-sql", domain=None),
        machine("loose", "eastus", None),
    ]
    result = plan(one_ring(2), fleet)
    # Set bound: ceil(2/2) + ceil(2/2) + ceil(1/2) + 1 + 1 = 5 waves; the loose VM fills a gap.
    assert result.rings[0].lower_bound == 5
    assert wave_ids(result) == [["d0a", "d0b"], ["d1a", "d1b"], ["d2a", "loose"], ["u1"], ["u2"]]


def test_exclusions_say_why() -> None:
    policy = Policy.model_validate(
        {
            "name": "example",
            "rings": [{"name": "production", "select": {"tags": {"Environment": "production"}}}],
            "exclude": {"tags": {"PatchPolicy": "frozen"}, "ids": ["by-id"]},
        }
    )
    fleet = [
        machine("ok", "eastus"),
        machine("cold", "eastus", PatchPolicy="frozen"),
        machine("by-id", "eastus"),
        machine("elsewhere", "eastus", env="other"),
    ]
    result = plan(policy, fleet)
    assert wave_ids(result) == [["ok"]]
    assert [(e.instance.id, e.reason) for e in result.excluded] == [
        ("by-id", "excluded by id in the policy"),
        ("cold", "frozen: tag PatchPolicy=frozen"),
        ("elsewhere", "matched no ring's selector"),
    ]


def test_odd_cycle_of_pairs_can_need_more_than_the_bound() -> None:
    # Built-in pairs plus at most one policy pair per region can still close an odd cycle:
    # westus3–eastus–westus (built in), westus–uksouth (policy), uksouth–ukwest (built in),
    # ukwest–westus3 (policy). Five regions in a ring need 3 waves; the pair bound is 2.
    regions: Sequence[str] = ["westus3", "eastus", "westus", "uksouth", "ukwest"]
    fleet = [machine(f"m-{r}", r) for r in regions]
    policy = one_ring(1, region_pairs=[["westus", "uksouth"], ["ukwest", "westus3"]])
    result = plan(policy, fleet)
    assert result.rings[0].lower_bound == 2
    assert len(result.waves) == 3
    pairs = RegionPairs(policy.region_pairs)
    assert not bipartite((region_of(i) for i in fleet), pairs)
    for wave in result.waves:
        assert not any(pairs.paired(a.region, b.region) for a in wave.instances for b in wave.instances)


@pytest.mark.parametrize("mode", ["zone_by_zone", "concurrent_zones"])
def test_example_policy_and_fleet_reach_the_bound(mode: str) -> None:
    from pathlib import Path

    from patchpilot.inventory import load_inventory
    from patchpilot.policy import load_policy

    root = Path(__file__).resolve().parent.parent / "examples"
    policy = load_policy(str(root / "policy.yaml"))
    policy = policy.model_copy(update={"rollout": policy.rollout.model_copy(update={"mode": mode})})
    result = plan(policy, load_inventory(str(root / "fleet.json")))
    assert result.waves
    for ring in result.rings:
        assert len(ring.waves) >= ring.lower_bound


def test_an_instance_listed_twice_is_refused_rather_than_planned_twice() -> None:
    policy = parse_policy("name: p\nrings: [{name: all, select: {clouds: [aws]}}]\n")
    one = Instance(id="i-1", cloud="aws", region="us-east-1", zone="us-east-1a", os="linux")
    with pytest.raises(ValueError, match="more than once: i-1"):
        plan(policy, [one, one])


def pooled(instance: Instance, *pools: str) -> Instance:
    return replace(instance, traffic_pools=pools)


def test_a_pool_across_zones_is_taken_a_quarter_at_a_time() -> None:
    # 8 web machines over 2 zones, budget 100% per zone with concurrent zones: one wave without
    # the pool; a pool budget of 25% of 8 is 2 per wave, so 4 waves (its bound).
    fleet = [pooled(machine(f"web-{n}", "eastus", str(1 + n % 2)), "tg-web") for n in range(8)]
    policy = one_ring("100%", mode="concurrent_zones")
    assert len(plan(policy, fleet).waves) == 1
    policy = one_ring("100%", mode="concurrent_zones", rollout_extra={"pool_budget": "25%"})
    result = plan(policy, fleet)
    assert [len(w.instances) for w in result.waves] == [2, 2, 2, 2]
    assert result.lower_bound == 4


def test_a_pool_budget_counts_the_pools_excluded_members_too() -> None:
    # 4 members, one frozen: 50% of 4 is 2 per wave, so the 3 patched ones take 2 waves.
    fleet = [pooled(machine(f"api-{n}", "eastus", "1"), "tg-api") for n in range(4)]
    fleet[0] = replace(fleet[0], tags={**fleet[0].tags, "PatchPolicy": "frozen"})
    policy = one_ring(10, rollout_extra={"pool_budget": "50%"}, exclude={"tags": {"PatchPolicy": "frozen"}})
    result = plan(policy, fleet)
    assert [len(w.instances) for w in result.waves] == [2, 1]
    assert result.pool_members == {"tg-api": 4}


def test_a_single_member_pool_is_patched_with_a_warning_or_refused() -> None:
    fleet = [pooled(machine("admin-1", "eastus"), "tg-admin"), machine("other-1", "eastus")]
    warned = plan(one_ring(1), fleet)
    assert warned.instance_count == 2
    assert warned.warnings == ("pool tg-admin has one member: it will be down during its install",)
    refused = plan(one_ring(1, rollout_extra={"single_member_pools": "refuse"}), fleet)
    assert [w.ids for w in refused.waves] == [["other-1"]]
    (exclusion,) = refused.excluded
    assert exclusion.instance.id == "admin-1"
    assert exclusion.reason == (
        "pool tg-admin has one member: it would be down during its install (rollout.single_member_pools: refuse)"
    )


def test_without_a_pool_budget_pools_change_no_wave() -> None:
    fleet = [machine(f"web-{n}", "eastus", str(1 + n % 3)) for n in range(9)]
    policy = one_ring("50%", mode="concurrent_zones", canary=0)
    pooled_fleet = [pooled(i, "tg-web") for i in fleet]
    assert wave_ids(plan(policy, fleet)) == wave_ids(plan(policy, pooled_fleet))


@pytest.mark.parametrize("mode", ["zone_by_zone", "concurrent_zones"])
def test_example_fleet_with_pools_reaches_the_bound(mode: str) -> None:
    from pathlib import Path

    from patchpilot.inventory import load_inventory
    from patchpilot.policy import load_policy

    root = Path(__file__).resolve().parent.parent / "examples"
    policy = load_policy(str(root / "policy-pools.yaml"))
    policy = policy.model_copy(update={"rollout": policy.rollout.model_copy(update={"mode": mode})})
    fleet = load_inventory(str(root / "fleet-pools.json"))
    result = plan(policy, fleet)
    without = plan(
        policy.model_copy(update={"rollout": policy.rollout.model_copy(update={"pool_budget": None})}), fleet
    )
    if mode == "concurrent_zones":  # the pool budget is what bounds this plan (zone by zone, the zones do)
        assert result.lower_bound > without.lower_bound
    for ring in result.rings:
        assert len(ring.waves) == ring.lower_bound, ring.name


def test_a_scaling_group_member_is_excluded_with_its_group_named() -> None:
    fleet = [machine("a", "eastus"), replace(machine("b", "eastus"), scaling_group="asg-web")]
    result = plan(one_ring(1), fleet)
    assert wave_ids(result) == [["a"]]
    assert [(e.instance.id, e.reason) for e in result.excluded] == [
        ("b", "member of scaling group asg-web: patch its image")
    ]


def test_scaling_groups_are_skip_by_default_and_refuse_other_words() -> None:
    assert one_ring(1).scaling_groups == "skip"
    with pytest.raises(ValueError, match="scaling_groups"):
        one_ring(1, scaling_groups="replace")


def test_with_standby_a_scaling_group_is_patched_within_the_pool_budget_as_a_pool() -> None:
    fleet = [replace(machine(f"m{n}", "eastus", str(1 + n % 3)), scaling_group="asg-web") for n in range(6)]
    policy = one_ring(6, "concurrent_zones", scaling_groups="standby", rollout_extra={"pool_budget": "50%"})
    result = plan(policy, fleet)
    assert not result.excluded
    assert [len(w.instances) for w in result.waves] == [3, 3]  # half the group at a time, not all six
    assert result.pool_members == {"asg-web": 6}
