"""The availability-first wave planner.

Within a ring, no wave holds: two zones of one region (unless `concurrent_zones`); two regions
of a geo pair; two update domains of one availability set; more instances of a zone than its
disruption budget. See docs/planner.md for the method and the lower bound it reaches.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from patchpilot.inventory import Instance
from patchpilot.planning.regions import RegionPairs
from patchpilot.policy import Policy, Rollout

RegionKey = tuple[str, str]  # (cloud, region)
ZoneKey = tuple[str, str, str]  # (cloud, region, zone or "")


def zone_of(instance: Instance) -> ZoneKey:
    """Instances without a zone form one zone of their own per region."""
    return (instance.cloud, instance.region, instance.zone or "")


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


@dataclass(frozen=True)
class Exclusion:
    instance: Instance
    reason: str


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

    @property
    def waves(self) -> list[Wave]:
        return [w for r in self.rings for w in r.waves]

    @property
    def lower_bound(self) -> int:
        return sum(r.lower_bound for r in self.rings)

    @property
    def instance_count(self) -> int:
        return sum(len(w.instances) for w in self.waves)


def plan(policy: Policy, instances: Iterable[Instance]) -> Plan:
    """Assign every instance to a ring and a wave, or say why it is excluded. Deterministic."""
    members, excluded = assign(policy, instances)
    pairs = RegionPairs(policy.region_pairs)
    rings, next_index = [], 1
    for position, ring in enumerate(policy.rings):
        canary = policy.rollout.canary if position > 0 else 0
        groups, bound = _plan_ring(members[ring.name], policy.rollout, pairs, canary)
        waves = tuple(
            Wave(next_index + k, ring.name, tuple(group), canary=canary > 0 and k == 0)
            for k, group in enumerate(groups)
        )
        next_index += len(waves)
        rings.append(RingPlan(ring.name, waves, bound, ring.approval))
    return Plan(tuple(rings), tuple(excluded), _without_rollback(policy))


def plan_cloud_scheduled(policy: Policy, instances: Iterable[Instance]) -> Plan:
    """The plan of a run that accompanies a cloud-scheduled run (Azure Update Manager's): the
    cloud patches its whole scope in its own availability-safe order, so every machine that is not
    excluded is in one wave (snapshotted before, checked after). Exclusions are those of `plan`."""
    members, excluded = assign(policy, instances)
    rings = [name for name, group in members.items() if group]
    chosen = tuple(sorted((i for group in members.values() for i in group), key=lambda i: i.id))
    waves = (Wave(1, "+".join(rings), chosen),) if chosen else ()
    return Plan((RingPlan("+".join(rings), waves, len(waves)),), tuple(excluded), _without_rollback(policy))


def _without_rollback(policy: Policy) -> bool:
    """Whether the policy lets machines without a snapshot (Arc servers) be patched all the same."""
    return bool(policy.azure and policy.azure.patch_without_rollback)


NO_RING = "matched no ring's selector"
FROZEN_POLICY = "frozen: the policy is kind frozen (never patched)"


def ring_of(policy: Policy, instance: Instance) -> str | None:
    """The ring whose selector matches first (an excluded instance's too), None when none does."""
    return next((r.name for r in policy.rings if r.select.matches(instance)), None)


def assign(policy: Policy, instances: Iterable[Instance]) -> tuple[dict[str, list[Instance]], list[Exclusion]]:
    """Each instance's ring (the first whose selector matches), or why it is excluded: every
    instance of a frozen policy is (`kind: frozen`). The compliance view uses the same answer."""
    members: dict[str, list[Instance]] = {ring.name: [] for ring in policy.rings}
    excluded: list[Exclusion] = []
    ordered = sorted(instances, key=lambda i: i.id)
    repeated = sorted({a.id for a, b in pairwise(ordered) if a.id == b.id})
    if repeated:  # one machine counted twice would break its zone's budget
        raise ValueError(f"the same instance is listed more than once: {', '.join(repeated[:10])}")
    for instance in ordered:
        frozen = FROZEN_POLICY if policy.kind == "frozen" else None
        if reason := frozen or policy.exclude.reason(instance) or policy.unprotected_reason(instance):
            excluded.append(Exclusion(instance, reason))
            continue
        ring = ring_of(policy, instance)
        if ring is None:
            excluded.append(Exclusion(instance, NO_RING))
        else:
            members[ring].append(instance)
    return members, excluded


def _plan_ring(
    members: Sequence[Instance], rollout: Rollout, pairs: RegionPairs, canary: int
) -> tuple[list[list[Instance]], int]:
    if not members:
        return [], 0
    sizes: dict[ZoneKey, int] = defaultdict(int)
    for instance in members:
        sizes[zone_of(instance)] += 1
    # Percentages count against the zone's size in the whole ring, canary included.
    budgets = {zone: rollout.disruption_budget.ceil_of(size) for zone, size in sizes.items()}
    if canary <= 0:
        return _waves(members, budgets, rollout.mode == "concurrent_zones", pairs)
    first = _canary(members, budgets, canary)
    chosen = {i.id for i in first}
    rest = [i for i in members if i.id not in chosen]
    waves, bound = _waves(rest, budgets, rollout.mode == "concurrent_zones", pairs)
    return [first, *waves], bound + 1


def _canary(members: Sequence[Instance], budgets: dict[ZoneKey, int], size: int) -> list[Instance]:
    """A first wave of at most `size` instances, all from the ring's largest zone (the most
    typical machines) and, where they sit in availability sets, from one update domain."""
    by_zone: dict[ZoneKey, list[Instance]] = defaultdict(list)
    for instance in members:
        by_zone[zone_of(instance)].append(instance)
    zone = min(by_zone, key=lambda z: (-len(by_zone[z]), z))
    limit = min(size, budgets[zone])
    loose = [i for i in by_zone[zone] if i.availability_set is None]
    if loose:
        return loose[:limit]
    groups: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    for instance in by_zone[zone]:
        groups[(str(instance.availability_set), update_domain_of(instance))].append(instance)
    largest = min(groups, key=lambda g: (-len(groups[g]), g))
    return groups[largest][:limit]


def _waves(
    members: Sequence[Instance], budgets: dict[ZoneKey, int], concurrent: bool, pairs: RegionPairs
) -> tuple[list[list[Instance]], int]:
    """Waves for one ring, and the lower bound on their number."""
    zones: dict[RegionKey, dict[str, list[Instance]]] = defaultdict(lambda: defaultdict(list))
    for instance in members:
        zones[(instance.cloud, instance.region)][instance.zone or ""].append(instance)

    local: dict[RegionKey, list[list[Instance]]] = {}
    weight: dict[RegionKey, int] = {}  # lower bound on waves per region
    for region in sorted(zones):
        # Google OS Config's order: the zone with the fewest instances first, ties by name.
        order = sorted(zones[region].items(), key=lambda kv: (len(kv[1]), kv[0]))
        packed = [_pack_zone(group, budgets[(*region, name)]) for name, group in order]
        if concurrent:
            depth = max(len(waves) for waves, _ in packed)
            local[region] = [[i for waves, _ in packed if k < len(waves) for i in waves[k]] for k in range(depth)]
            weight[region] = max(bound for _, bound in packed)
        else:
            local[region] = [wave for waves, _ in packed for wave in waves]
            weight[region] = sum(bound for _, bound in packed)

    slots, bound = _place_regions(local, weight, pairs)
    return [wave for wave in slots if wave], bound


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
    counts: dict[ZoneKey, int] = defaultdict(int)
    for instance in instances:
        counts[zone_of(instance)] += 1

    def where(region: str, zone: str) -> str:
        if not zone:
            return f"{region} (no zone)"
        return zone if zone.startswith(region) else f"{region}/{zone}"

    return ", ".join(f"{where(region, zone)} ×{n}" for (_, region, zone), n in sorted(counts.items()))


def plan_document(result: Plan) -> dict[str, object]:
    """The plan as JSON: `{"waves": [{"index", "ring", "instances"}], "excluded": [{"id", "reason"}]}`."""
    return {
        "waves": [
            {
                "index": w.index,
                "ring": w.ring,
                "canary": w.canary,
                "instances": w.ids,
                "placement": placement(w.instances),
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
