"""The availability-first wave planner.

Within a ring, no wave holds: two zones of one region (unless `concurrent_zones`); two regions
of a geo pair; two update domains of one availability set; more instances of a zone than its
disruption budget; more of a traffic pool's members than `rollout.pool_budget`. See
docs/planner.md for the method and the lower bound it reaches.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from itertools import islice, pairwise
from operator import attrgetter, eq
from typing import Literal

from patchpilot.inventory import Instance, Simulation
from patchpilot.planning.regions import RegionPairs
from patchpilot.policy import Policy, Rollout
from patchpilot.policy.exceptions import machine_exception_in_force
from patchpilot.policy.model import PolicyException, Selector

RegionKey = tuple[str, str]  # (cloud, region)
ZoneKey = tuple[str, str, str]  # (cloud, region, zone or "")


def zone_of(instance: Instance) -> ZoneKey:
    """Instances without a zone form one zone of their own per region."""
    return (instance.cloud, instance.region, instance.zone or "")


def zone_sizes(instances: Iterable[Instance]) -> Counter[ZoneKey]:
    """How many of `instances` each zone (`zone_of`) holds. Asked for every machine of a ring: the
    places are counted without a Python call per machine, then keyed as `zone_of` keys them."""
    return _by_zone(Counter(map(_PLACE, instances)).items())


def _by_zone(places: Iterable[tuple[tuple[str, str, str | None], int]]) -> Counter[ZoneKey]:
    """Counts of (cloud, region, zone) keyed as `zone_of` keys them (no zone: "")."""
    sizes: Counter[ZoneKey] = Counter()
    for (cloud, region, zone), count in places:
        sizes[(cloud, region, zone or "")] += count
    return sizes


_PLACE = attrgetter("cloud", "region", "zone")
# What the plan's views ask of each machine of a wave: where it is, whether it is hotpatch-enabled
# and its simulation hints (the estimate's install time).
_TRAITS = attrgetter("cloud", "region", "zone", "hotpatch", "simulation")
Traits = tuple[str, str, str | None, bool, Simulation | None]


def update_domain_of(instance: Instance) -> str:
    """An unknown update domain is treated as different from every other."""
    if instance.update_domain is None:
        return f"?{instance.id}"
    return str(instance.update_domain)


@dataclass(frozen=True)
class Wave:
    index: int  # 1-based, in run order across rings
    ring: str
    instances: tuple[Instance, ...]
    canary: bool = False

    @property
    def ids(self) -> list[str]:
        return [i.id for i in self.instances]

    @cached_property
    def traits(self) -> Counter[Traits]:
        """Its machines counted by (cloud, region, zone, hotpatch, simulation): read in one pass for
        its placement, its hotpatch-enabled machines and its estimate. A wave's machines lie apart in
        memory: for a plan of 100,000 each pass over them costs more than the counting it does."""
        return Counter(map(_TRAITS, self.instances))

    @property
    def placement(self) -> str:
        """`placement(self.instances)`, from the wave's `traits`."""
        return _placement_text(_by_zone((trait[:3], n) for trait, n in self.traits.items()))

    @property
    def hotpatch_count(self) -> int:
        """How many of its machines are hotpatch-enabled."""
        return sum(n for trait, n in self.traits.items() if trait[3])

    @property
    def simulations(self) -> set[Simulation | None]:
        """The distinct simulation hints of its machines (None: a machine without)."""
        return {trait[4] for trait in self.traits}


@dataclass(frozen=True)
class Exclusion:
    instance: Instance
    reason: str
    exception: PolicyException | None = None  # a machine exception in force (`excepted: ...`)


@dataclass(frozen=True)
class RingPlan:
    name: str
    waves: tuple[Wave, ...]
    lower_bound: int  # fewest waves the rules allow for this ring (the canary wave counted as 1)
    approval: Literal["auto", "required"] = "auto"  # required: the ring waits for an approval before its first wave

    @property
    def waits_for_approval(self) -> bool:
        """The run stops before this ring's first wave until someone approves (the first ring too)."""
        return self.approval == "required" and bool(self.waves)

    @property
    def gate(self) -> str:
        """What the ring's approval setting does in a run, in words ("" for nothing)."""
        if self.waits_for_approval:
            return "waits for approval before it starts (patchpilot approve RUN_ID)"
        if self.approval == "required":
            return "approval: required, but the ring selects no machine here: nothing waits"
        return ""


@dataclass(frozen=True)
class Plan:
    rings: tuple[RingPlan, ...]
    excluded: tuple[Exclusion, ...]
    # Machines that cannot be snapshotted (Arc servers) are planned, and patched, without a
    # rollback path: the policy allows it (`azure.patch_without_rollback`); otherwise they are
    # excluded with that reason. The run carries it to its snapshot commands.
    patch_without_rollback: bool = False
    # Traffic pools: each pool's number of members in the inventory (excluded machines still serve),
    # and what the plan warns about them (a pool of one member that is patched).
    pool_members: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # each a sentence without the inventory path

    @property
    def waves(self) -> list[Wave]:
        return [w for r in self.rings for w in r.waves]

    @property
    def lower_bound(self) -> int:
        return sum(r.lower_bound for r in self.rings)

    @property
    def instance_count(self) -> int:
        return sum(len(w.instances) for w in self.waves)


@dataclass(frozen=True)
class Selection:
    """Who a plan patches, before it packs them into waves: each ring's machines (in id order),
    the excluded ones with why, the traffic pools' sizes and the plan's warnings about them. A ring
    with machines gets at least one wave, so what needs only this (`patchpilot validate`'s
    warnings) skips the packing."""

    members: Mapping[str, Sequence[Instance]]  # ring name -> its machines
    excluded: tuple[Exclusion, ...]
    pool_members: Mapping[str, int]
    warnings: tuple[str, ...]

    @property
    def instance_count(self) -> int:
        """The machines selected (as `Plan.instance_count`)."""
        return sum(len(group) for group in self.members.values())


def select(policy: Policy, instances: Iterable[Instance], now: datetime | None = None) -> Selection:
    """Each instance's ring, or why it is excluded, as `plan` decides it (`assign`, then the pools of
    one member under `rollout.single_member_pools`)."""
    fleet = list(instances)
    members, excluded = assign(policy, fleet, now)
    pools = pool_members(fleet)
    members, refused, warnings = _single_member_pools(policy.rollout, members, pools)
    if refused:
        excluded = sorted([*excluded, *refused], key=lambda e: e.instance.id)
    return Selection(members, tuple(excluded), pools, tuple(warnings))


@dataclass(frozen=True)
class Outline:
    """What `select` says of a fleet as far as `patchpilot validate`'s warnings need it: the fleet's
    size, whether each ring selects a machine, the plan's warnings about traffic pools, and, when a
    ring selects none, every exclusion (None otherwise: not needed, and not all looked for)."""

    fleet_size: int
    selects: Mapping[str, bool]  # ring name -> it selects at least one machine
    excluded: tuple[Exclusion, ...] | None
    warnings: tuple[str, ...]


OUTLINE_FIRST = 256  # machines assigned before the outline looks whether every ring has one


def outline(policy: Policy, instances: Iterable[Instance], now: datetime | None = None) -> Outline:
    """`select`'s answer to "does each ring select a machine?", without assigning every machine of a
    fleet whose rings all do: the fleet is assigned a slice at a time (256 machines, then four times
    as many as before) until each ring has one. The machines alone in a traffic pool are assigned
    first, for the plan's warnings about them (and, with `single_member_pools: refuse`, a machine
    they exclude selects nothing). Each machine's answer is its own (`assign`), so a slice answers as
    the whole fleet would; the ids are unique (`inventory.parse_inventory` sees to it)."""
    fleet = list(instances)
    pools = pool_members(fleet)
    lone = [i for i in fleet if (i.traffic_pools or i.scaling_group is not None) and _alone(i, pools)] if pools else []
    members, excluded = assign(policy, lone, now)
    members, refused, warnings = _single_member_pools(policy.rollout, members, pools)
    selecting = {ring for ring, group in members.items() if group}
    found = [*excluded, *refused]
    if lone:
        placed = {i.id for i in lone}
        fleet = [i for i in fleet if i.id not in placed]
    start, size = 0, OUTLINE_FIRST
    while len(selecting) < len(policy.rings) and start < len(fleet):
        members, excluded = assign(policy, fleet[start : start + size], now)
        selecting.update(ring for ring, group in members.items() if group)
        found += excluded
        start, size = start + size, size * 4
    return Outline(
        len(fleet) + len(lone),
        {ring.name: ring.name in selecting for ring in policy.rings},
        tuple(found) if start >= len(fleet) else None,
        tuple(warnings),
    )


def _alone(instance: Instance, pools: Mapping[str, int]) -> bool:
    """Whether the machine is the only member of one of its traffic pools."""
    return any(pools[p] == 1 for p in pools_of(instance))


def plan(policy: Policy, instances: Iterable[Instance], now: datetime | None = None) -> Plan:
    """Assign every instance to a ring and a wave, or say why it is excluded. Deterministic.
    `now` decides which of the policy's exceptions are in force (None: none is)."""
    chosen = select(policy, instances, now)
    members, pools = chosen.members, chosen.pool_members
    pairs = RegionPairs(policy.region_pairs)
    rings, next_index = [], 1
    for position, ring in enumerate(policy.rings):
        canary = policy.rollout.canary if position > 0 else 0
        groups, bound = _plan_ring(members[ring.name], policy.rollout, pairs, canary, pools)
        waves = tuple(
            Wave(next_index + k, ring.name, tuple(group), canary=canary > 0 and k == 0)
            for k, group in enumerate(groups)
        )
        next_index += len(waves)
        rings.append(RingPlan(ring.name, waves, bound, ring.approval))
    return Plan(tuple(rings), chosen.excluded, _without_rollback(policy), pools, chosen.warnings)


def pools_of(instance: Instance) -> list[str]:
    """The traffic pools a machine serves from, each once, in the inventory's order, then its
    scaling group: a group's members share its capacity like a pool's (with `scaling_groups:
    standby` they are patched, so `rollout.pool_budget` holds for the group too)."""
    if not instance.traffic_pools and instance.scaling_group is None:
        return []  # most machines: no pool to count (the planner asks for each machine, often)
    pools = dict.fromkeys(instance.traffic_pools)
    if instance.scaling_group is not None:
        pools[instance.scaling_group] = None
    return list(pools)


def pool_members(instances: Iterable[Instance]) -> dict[str, int]:
    """How many machines of the inventory serve from each traffic pool (excluded ones too: they
    keep serving, so they count in the pool's capacity)."""
    counts: Counter[str] = Counter()
    for instance in instances:
        if instance.traffic_pools or instance.scaling_group is not None:
            counts.update(pools_of(instance))
    return dict(sorted(counts.items()))


def single_member_refusal(pool: str) -> str:
    return f"pool {pool} has one member: it would be down during its install (rollout.single_member_pools: refuse)"


def _single_member_pools(
    rollout: Rollout, members: dict[str, list[Instance]], pools: Mapping[str, int]
) -> tuple[dict[str, list[Instance]], list[Exclusion], list[str]]:
    """A pool of one member goes down while its machine installs: the plan warns, or with
    `single_member_pools: refuse` the machine is excluded with that reason."""
    if not pools:  # no machine of the inventory serves from a pool
        return members, [], []
    kept: dict[str, list[Instance]] = {}
    refused: list[Exclusion] = []
    warnings: list[str] = []
    for ring, group in members.items():
        kept[ring] = []
        for instance in group:
            alone = [p for p in pools_of(instance) if pools[p] == 1]
            if alone and rollout.single_member_pools == "refuse":
                refused.append(Exclusion(instance, single_member_refusal(alone[0])))
                warnings.append(f"{instance.label} is excluded: {single_member_refusal(alone[0])}")
                continue
            warnings.extend(f"pool {p} has one member: it will be down during its install" for p in alone)
            kept[ring].append(instance)
    return kept, refused, sorted(warnings)


def plan_cloud_scheduled(policy: Policy, instances: Iterable[Instance], now: datetime | None = None) -> Plan:
    """The plan of a run that accompanies a cloud-scheduled run (Azure Update Manager's): the
    cloud patches its whole scope in its own availability-safe order, so every machine that is not
    excluded is in one wave (snapshotted before, checked after). Exclusions are those of `plan`."""
    members, excluded = assign(policy, instances, now)
    rings = [name for name, group in members.items() if group]
    chosen = tuple(sorted((i for group in members.values() for i in group), key=lambda i: i.id))
    waves = (Wave(1, "+".join(rings), chosen),) if chosen else ()
    return Plan((RingPlan("+".join(rings), waves, len(waves)),), tuple(excluded), _without_rollback(policy))


def _without_rollback(policy: Policy) -> bool:
    """Whether the policy lets machines without a snapshot (Arc servers) be patched all the same."""
    return bool(policy.azure and policy.azure.patch_without_rollback)


NO_RING = "matched no ring's selector"
FROZEN_POLICY = "frozen: the policy is kind frozen (never patched)"


def scaling_group_reason(policy: Policy, instance: Instance) -> str | None:
    """Why a member of an Auto Scaling group or scale set is excluded (`scaling_groups: skip`): the
    group would replace it while it reboots, so its image is what to patch. An Azure Uniform scale
    set instance (`scale_set_mode: uniform`) is excluded whatever the policy says: it cannot be
    patched in place."""
    if instance.scaling_group is None:
        return None
    if policy.scaling_groups != "skip" and instance.scale_set_mode != "uniform":
        return None
    return f"member of scaling group {instance.scaling_group}: patch its image"


def ring_of(policy: Policy, instance: Instance) -> str | None:
    """The ring whose selector matches first (an excluded instance's too), None when none does."""
    for ring in policy.rings:  # a loop, not next(...): asked for every machine of the fleet
        if ring.select.matches(instance):
            return ring.name
    return None


def assign(
    policy: Policy, instances: Iterable[Instance], now: datetime | None = None
) -> tuple[dict[str, list[Instance]], list[Exclusion]]:
    """Each instance's ring (the first whose selector matches), or why it is excluded: every
    instance of a frozen policy is (`kind: frozen`), and each machine exception in force at `now`
    (None: no exception applies) excepts its machines. The compliance view uses the same answer."""
    members: dict[str, list[Instance]] = {ring.name: [] for ring in policy.rings}
    excluded: list[Exclusion] = []
    ordered = sorted(instances, key=attrgetter("id"))
    ids = [i.id for i in ordered]
    if any(map(eq, ids, islice(ids, 1, None))):  # one machine counted twice would break its zone's budget
        repeated = sorted({a for a, b in pairwise(ids) if a == b})
        raise ValueError(f"the same instance is listed more than once: {', '.join(repeated[:10])}")
    frozen = FROZEN_POLICY if policy.kind == "frozen" else None
    # The machine exceptions in force at `now`, found once for the whole fleet.
    excepting = []
    if now is not None and not frozen:
        excepting = [e for e in policy.exceptions if machine_exception_in_force(policy, e, now)]
    excepted: dict[str, PolicyException] = {}  # machine id -> the first exception that excepts it
    for exception in excepting:
        for instance in _selected(exception.select, ordered, ids):
            excepted.setdefault(instance.id, exception)
    # Asked for every machine of the fleet: the selectors made into functions once (`Selector.matcher`).
    rings = [(ring.select.matcher(), members[ring.name]) for ring in policy.rings]
    exclusion, unprotected = policy.exclude.reasoner(), policy.unprotected_reason
    for instance in ordered:
        if excepted and instance.id in excepted:
            exception = excepted[instance.id]
            excluded.append(Exclusion(instance, exception.label(), exception))
            continue
        reason = frozen or exclusion(instance)
        if instance.scaling_group is not None:  # most machines are in none: no call for them
            reason = reason or scaling_group_reason(policy, instance)
        if reason := reason or unprotected(instance):
            excluded.append(Exclusion(instance, reason))
            continue
        for matches, ring_members in rings:  # the first ring whose selector matches (`ring_of`)
            if matches(instance):
                ring_members.append(instance)
                break
        else:
            excluded.append(Exclusion(instance, NO_RING))
    return members, excluded


def _selected(selector: Selector, ordered: Sequence[Instance], ids: Sequence[str]) -> Iterable[Instance]:
    """The machines of `ordered` (sorted by id; `ids`: their ids) that `selector` matches. A selector
    that names ids matches only machines of those ids (every criterion must hold): they are looked up
    in `ids`, and only they are asked; a machine exception names its machines so, as a rule."""
    matches = selector.matcher()
    if not selector.ids:
        return filter(matches, ordered)
    found = []
    for wanted in sorted(set(selector.ids)):
        position = bisect_left(ids, wanted)
        if position < len(ids) and ids[position] == wanted and matches(ordered[position]):
            found.append(ordered[position])
    return found


def _plan_ring(
    members: Sequence[Instance], rollout: Rollout, pairs: RegionPairs, canary: int, pools: Mapping[str, int]
) -> tuple[list[list[Instance]], int]:
    if not members:
        return [], 0
    # The ring's machines by zone, once: the zones' sizes, the canary and the waves come from it.
    zones = _zones(members)
    sizes = {(*region, name): len(group) for region, by_name in zones.items() for name, group in by_name.items()}
    # Percentages count against the zone's size in the whole ring, canary included, and against
    # the pool's members in the whole inventory (rounded down, at least 1).
    budgets = {zone: rollout.disruption_budget.ceil_of(size) for zone, size in sizes.items()}
    limit = rollout.pool_budget
    # No machine of the inventory in a pool: no pool budget to keep (and none to count).
    pool_budgets = {pool: limit.floor_of(size) for pool, size in pools.items()} if limit is not None and pools else None
    rules = _Rules(budgets, pool_budgets, rollout.mode == "concurrent_zones", pairs)
    if canary <= 0:
        return _waves(zones, rules)
    (cloud, region, name), chosen = _canary(zones, sizes, budgets, canary)
    group = zones[(cloud, region)][name]
    if pool_budgets is not None:  # the canary wave keeps to the pool budgets too
        load, kept = _Load(), []
        for position in chosen:
            if load.pools_admit(group[position], rules):
                load.add(group[position])
                kept.append(position)
        chosen = kept
    first = [group[position] for position in chosen]
    # The zone's others: the slices between the canary's few machines (no question asked of each).
    rest: list[Instance] = []
    for start, end in pairwise([-1, *chosen, len(group)]):
        rest.extend(group[start + 1 : end])
    zones[(cloud, region)][name] = rest
    waves, bound = _waves(zones, rules)
    return [first, *waves], bound + 1


def _zones(members: Iterable[Instance]) -> dict[RegionKey, dict[str, list[Instance]]]:
    """The machines of each region (cloud, region) by zone (`zone_of`'s name: "" for none), in order."""
    zones: dict[RegionKey, dict[str, list[Instance]]] = defaultdict(lambda: defaultdict(list))
    for instance in members:
        zones[(instance.cloud, instance.region)][instance.zone or ""].append(instance)
    return zones


def _pool_bound(members: Iterable[Instance], budgets: Mapping[str, int] | None) -> int:
    """A pool with n of these machines and budget b needs ceil(n / b) waves that hold them."""
    if budgets is None:
        return 0
    counts: Counter[str] = Counter()
    for instance in members:
        counts.update(pools_of(instance))
    return max((math.ceil(n / budgets[pool]) for pool, n in counts.items()), default=0)


@dataclass(frozen=True)
class _Rules:
    """What a wave may hold, for moving a machine into it: the zone and pool budgets, one zone per
    region (unless concurrent), no geo pair, one update domain per availability set."""

    zone_budgets: Mapping[ZoneKey, int]
    pool_budgets: Mapping[str, int] | None  # None: no pool budget
    concurrent: bool
    pairs: RegionPairs


@dataclass
class _Load:
    """What one wave holds, counted for `_Rules`."""

    zones: dict[ZoneKey, int] = field(default_factory=lambda: defaultdict(int))
    pools: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    domains: dict[str, str] = field(default_factory=dict)  # availability set -> update domain

    def pools_admit(self, instance: Instance, rules: _Rules) -> bool:
        budgets = rules.pool_budgets
        return budgets is None or all(self.pools[p] < budgets[p] for p in pools_of(instance))

    def admits(self, instance: Instance, rules: _Rules) -> bool:
        zone = zone_of(instance)
        if self.zones.get(zone, 0) >= rules.zone_budgets[zone] or not self.pools_admit(instance, rules):
            return False
        domain, aset = update_domain_of(instance), instance.availability_set
        if aset is not None and self.domains.get(aset, domain) != domain:
            return False
        for cloud, region, name in self.zones:
            if (cloud, region) == zone[:2]:
                if name != zone[2] and not rules.concurrent:
                    return False
            elif rules.pairs.paired(region, instance.region):
                return False
        return True

    def add(self, instance: Instance) -> None:
        self.zones[zone_of(instance)] += 1
        for pool in pools_of(instance):
            self.pools[pool] += 1
        if instance.availability_set is not None:
            self.domains[instance.availability_set] = update_domain_of(instance)


def _respect_pools(waves: list[list[Instance]], rules: _Rules) -> list[list[Instance]]:
    """Keep each wave within every pool's budget: a machine that would exceed one moves to the
    first wave that admits it under every rule, or to a new wave at the end."""
    if rules.pool_budgets is None:
        return waves
    loads: list[_Load] = []
    kept: list[list[Instance]] = []
    moved: list[Instance] = []
    for wave in waves:
        load, stay = _Load(), []
        for instance in wave:  # a part of a valid wave breaks no zone, pair or domain rule
            if load.pools_admit(instance, rules):
                load.add(instance)
                stay.append(instance)
            else:
                moved.append(instance)
        loads.append(load)
        kept.append(stay)
    for instance in moved:
        target = next((k for k in range(len(kept)) if loads[k].admits(instance, rules)), None)
        if target is None:
            target = len(kept)
            loads.append(_Load())
            kept.append([])
        loads[target].add(instance)
        kept[target].append(instance)
    return [wave for wave in kept if wave]


def _canary(
    zones: Mapping[RegionKey, Mapping[str, Sequence[Instance]]],
    sizes: Mapping[ZoneKey, int],
    budgets: dict[ZoneKey, int],
    size: int,
) -> tuple[ZoneKey, list[int]]:
    """A first wave of at most `size` instances, all from the ring's largest zone (the most
    typical machines; `sizes` counts each zone's members) and, where they sit in availability
    sets, from one update domain: the zone, and their positions in its machines (`zones`), in order."""
    zone = min(sizes, key=lambda z: (-sizes[z], z))
    limit = min(size, budgets[zone])
    cloud, region, name = zone
    in_zone = zones[(cloud, region)][name]
    loose = [k for k, i in enumerate(in_zone) if i.availability_set is None]
    if loose:
        return zone, loose[:limit]
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, instance in enumerate(in_zone):
        groups[(str(instance.availability_set), update_domain_of(instance))].append(k)
    largest = min(groups, key=lambda g: (-len(groups[g]), g))
    return zone, groups[largest][:limit]


def _waves(zones: Mapping[RegionKey, Mapping[str, list[Instance]]], rules: _Rules) -> tuple[list[list[Instance]], int]:
    """Waves for one ring (its machines by zone, `_zones`; a zone may be empty), and the lower
    bound on their number."""
    zones = {region: {name: group for name, group in by_name.items() if group} for region, by_name in zones.items()}
    zones = {region: by_name for region, by_name in zones.items() if by_name}
    local: dict[RegionKey, list[list[Instance]]] = {}
    weight: dict[RegionKey, int] = {}  # lower bound on waves per region
    for region in sorted(zones):
        # Google OS Config's order: the zone with the fewest instances first, ties by name.
        order = sorted(zones[region].items(), key=lambda kv: (len(kv[1]), kv[0]))
        packed = [_pack_zone(group, rules.zone_budgets[(*region, name)]) for name, group in order]
        # A pool's machines in a zone (in a region, when its zones run together) need
        # ceil(n / pool budget) of the waves that hold that zone (region).
        bounds = [
            max(bound, _pool_bound(group, rules.pool_budgets))
            for (_, bound), (_, group) in zip(packed, order, strict=True)
        ]
        if rules.concurrent:
            depth = max(len(waves) for waves, _ in packed)
            local[region] = [[i for waves, _ in packed if k < len(waves) for i in waves[k]] for k in range(depth)]
            everyone = (i for _, group in order for i in group)
            weight[region] = max(max(bounds), _pool_bound(everyone, rules.pool_budgets))
        else:
            local[region] = [wave for waves, _ in packed for wave in waves]
            weight[region] = sum(bounds)
        local[region] = _respect_pools(local[region], rules)

    slots, bound = _place_regions(local, weight, rules.pairs)
    # A pool that spans regions which share waves: its budget holds across them too.
    waves = _respect_pools([wave for wave in slots if wave], rules)
    members = (i for by_name in zones.values() for group in by_name.values() for i in group)
    return waves, max(bound, _pool_bound(members, rules.pool_budgets))


@dataclass
class _Bin:
    room: int
    members: list[Instance] = field(default_factory=list)
    domains: dict[str, str] = field(default_factory=dict)  # availability set -> update domain


def _pack_zone(group: list[Instance], budget: int) -> tuple[list[list[Instance]], int]:
    """Split one zone into waves of at most `budget`, one update domain per availability set.

    The zone's lower bound is max(ceil(n / budget), max over its availability sets of the sum
    over their update domains of ceil(size / budget)); that many waves are opened at once.
    Availability-set pieces go first, biggest first, each into the roomiest wave that holds no
    other domain of its set (worst fit keeps room spread for the sets still to come); the
    instances outside availability sets then fill the room left, in order.
    """
    loose: list[Instance] = []
    domains: dict[str, dict[str, list[Instance]]] = defaultdict(lambda: defaultdict(list))
    for instance in group:
        if instance.availability_set is None:
            loose.append(instance)
        else:
            domains[instance.availability_set][update_domain_of(instance)].append(instance)

    bound = math.ceil(len(group) / budget)
    pieces: list[tuple[str, str, list[Instance]]] = []
    for aset, by_domain in domains.items():
        bound = max(bound, sum(math.ceil(len(m) / budget) for m in by_domain.values()))
        for domain, domain_members in by_domain.items():
            for start in range(0, len(domain_members), budget):
                pieces.append((aset, domain, domain_members[start : start + budget]))
    pieces.sort(key=lambda p: (-len(p[2]), p[0], p[1]))

    bins = [_Bin(budget) for _ in range(bound)]
    for aset, domain, piece in pieces:
        fits = [b for b in bins if b.room >= len(piece) and b.domains.get(aset, domain) == domain]
        if fits:
            target = max(fits, key=lambda b: b.room)  # first of the roomiest: deterministic
        else:
            target = _Bin(budget)
            bins.append(target)
        target.members.extend(piece)
        target.room -= len(piece)
        target.domains[aset] = domain

    position = 0
    for target in bins:
        take = loose[position : position + target.room]
        target.members.extend(take)
        position += len(take)
    waves = [b.members for b in bins if b.members]
    waves.extend(loose[start : start + budget] for start in range(position, len(loose), budget))
    return waves, bound


def _place_regions(
    local: dict[RegionKey, list[list[Instance]]], weight: dict[RegionKey, int], pairs: RegionPairs
) -> tuple[list[list[Instance]], int]:
    """Lay each region's waves on shared slots so that paired regions never share one.

    Regions without pairs all start at slot 0. In a pair graph that is bipartite (Azure's
    built-in pairs form trees) one side counts up from slot 0 and the other down from the
    component's bound, which is max(heaviest region, heaviest pair): the optimum. Other graphs
    (odd cycles of policy pairs) are coloured greedily, heaviest region first.
    """
    regions = sorted(local)
    neighbours = {r: [s for s in regions if s != r and pairs.paired(r[1], s[1])] for r in regions}
    placed: dict[RegionKey, list[int]] = {}
    bound = 0
    for component in _components(regions, neighbours):
        sides = _two_colouring(component, neighbours)
        lengths = {r: len(local[r]) for r in component}
        if sides is not None:
            width = max(
                max(lengths.values()),
                max((lengths[r] + lengths[s] for r in component for s in neighbours[r]), default=0),
            )
            for r in component:
                first = 0 if sides[r] == 0 else width - lengths[r]
                placed[r] = list(range(first, first + lengths[r]))
        else:
            for r in sorted(component, key=lambda r: (-lengths[r], r)):
                taken = {slot for s in neighbours[r] if s in placed for slot in placed[s]}
                free = (slot for slot in range(10**9) if slot not in taken)
                placed[r] = [next(free) for _ in range(lengths[r])]
        bound = max(bound, _heaviest_clique(component, neighbours, weight))

    total = max((max(s) + 1 for s in placed.values() if s), default=0)
    slots: list[list[Instance]] = [[] for _ in range(total)]
    for region in regions:
        for slot, wave in zip(placed[region], local[region], strict=True):
            slots[slot].extend(wave)
    return slots, bound


def _components(regions: list[RegionKey], neighbours: dict[RegionKey, list[RegionKey]]) -> list[list[RegionKey]]:
    seen: set[RegionKey] = set()
    out = []
    for start in regions:
        if start in seen:
            continue
        stack, component = [start], []
        seen.add(start)
        while stack:
            region = stack.pop()
            component.append(region)
            for other in neighbours[region]:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        out.append(sorted(component))
    return out


def _two_colouring(
    component: list[RegionKey], neighbours: dict[RegionKey, list[RegionKey]]
) -> dict[RegionKey, int] | None:
    side = {component[0]: 0}
    stack = [component[0]]
    while stack:
        region = stack.pop()
        for other in neighbours[region]:
            if other not in side:
                side[other] = 1 - side[region]
                stack.append(other)
            elif side[other] == side[region]:
                return None
    return side


def _heaviest_clique(
    component: list[RegionKey],
    neighbours: dict[RegionKey, list[RegionKey]],
    weight: dict[RegionKey, int],
) -> int:
    """Regions that are all paired with each other can share no wave: their weights add up."""
    best = 0

    def grow(clique_weight: int, candidates: list[RegionKey]) -> None:
        nonlocal best
        best = max(best, clique_weight)
        for k, region in enumerate(candidates):
            linked = set(neighbours[region])
            grow(clique_weight + weight[region], [c for c in candidates[k + 1 :] if c in linked])

    grow(0, component)
    return best


def placement(instances: Iterable[Instance]) -> str:
    """`us-east-1a ×3, eastus/2 ×1, westus (no zone) ×2`: where a wave's instances are."""
    return _placement_text(zone_sizes(instances))


def _placement_text(counts: Counter[ZoneKey]) -> str:
    def where(region: str, zone: str) -> str:
        if not zone:
            return f"{region} (no zone)"
        return zone if zone.startswith(region) else f"{region}/{zone}"

    return ", ".join(f"{where(region, zone)} ×{n}" for (_, region, zone), n in sorted(counts.items()))


def pool_shares(instances: Iterable[Instance], members: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """The traffic pools a wave's instances touch: (pool, its machines in the wave, its members)."""
    counts: Counter[str] = Counter()
    for instance in instances:
        if instance.traffic_pools or instance.scaling_group is not None:  # most machines: in no pool
            counts.update(pools_of(instance))
    return [(pool, n, members.get(pool, n)) for pool, n in sorted(counts.items())]


def pool_text(instances: Iterable[Instance], members: Mapping[str, int]) -> str:
    """`pool lb-web: 3 of 9, pool tg-api: 2 of 15`: how much of each pool a wave takes out of service."""
    return ", ".join(f"pool {pool}: {n} of {total}" for pool, n, total in pool_shares(instances, members))


def plan_document(result: Plan) -> dict[str, object]:
    """The plan as JSON: `{"waves": [{"index", "ring", "instances", "hotpatch" (the ids of its
    hotpatch-enabled machines), "pools": [{"id", "in_wave", "members"}]}], "excluded": [{"id", "reason"}]}`."""
    return {
        "waves": [
            {
                "index": w.index,
                "ring": w.ring,
                "canary": w.canary,
                "instances": w.ids,
                "placement": w.placement,
                "hotpatch": [i.id for i in w.instances if i.hotpatch] if w.hotpatch_count else [],
                "pools": [
                    {"id": pool, "in_wave": n, "members": total}
                    for pool, n, total in pool_shares(w.instances, result.pool_members)
                ],
            }
            for w in result.waves
        ],
        "excluded": [{"id": e.instance.id, "reason": e.reason} for e in result.excluded],
        "summary": {
            "instances": result.instance_count,
            "excluded": len(result.excluded),
            "waves": len(result.waves),
            "lower_bound": result.lower_bound,
            "rings": [
                {
                    "name": r.name,
                    "waves": len(r.waves),
                    "lower_bound": r.lower_bound,
                    "approval": r.approval,
                    "waits_for_approval": r.waits_for_approval,
                }
                for r in result.rings
            ],
        },
    }
