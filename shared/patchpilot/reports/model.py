"""What a run report says, computed once from a Run; the templates only lay it out.

Large runs stay small: patched instances are summarised per wave and ring (counts and the
installed set), and only the instances that are not plainly patched get rows of their own.
Instances that share a state and reason (not started, skipped by promotion, excluded) are
grouped under the reason.
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from itertools import pairwise

from patchpilot.engine.retry import why_not_retryable
from patchpilot.engine.run import InstanceRecord, Run, Step, WaveState
from patchpilot.hotpatch import reboot_free
from patchpilot.inventory import Instance
from patchpilot.planning import placement, pool_members, pool_text
from patchpilot.policy.fields import format_duration

STATE_ORDER: tuple[str, ...] = ("patched", "rolled_back", "failed", "skipped", "not_started", "excluded")
STATE_LABELS: dict[str, str] = {
    "pending": "pending",
    "patched": "patched",
    "rolled_back": "rolled back",
    "failed": "failed",
    "skipped": "skipped",
    "not_started": "not started",
    "excluded": "excluded",
}
# Patched instances are named in their wave's summary while the wave has at most this many;
# bigger waves give counts only, so a 10,000-instance report stays small.
NAME_PATCHED_UP_TO = 50
# A grouped list (same state and reason) names at most this many instances.
GROUP_LIST_LIMIT = 2000

Outcome = str  # "patched", "rolled_back", "failed", "skipped", "running", "not_started"
OUTCOME_LABELS: dict[str, str] = {
    "patched": "all patched",
    "rolled_back": "some rolled back",
    "failed": "failures",
    "skipped": "some not patched",
    "running": "running",
    "not_started": "not started",
}

OUTCOME_COLOURS: dict[str, str] = {
    "patched": "#2e7d32",
    "rolled_back": "#ef6c00",
    "failed": "#c62828",
    "skipped": "#78909c",
    "running": "#1565c0",
    "not_started": "#cfd8dc",
}


@dataclass(frozen=True)
class InstanceRef:
    id: str
    name: str
    os: str
    where: str  # region/zone

    @property
    def label(self) -> str:
        return self.id if self.name == self.id else f"{self.name} ({self.id})"


@dataclass(frozen=True)
class Excluded:
    instance: InstanceRef
    reason: str


@dataclass(frozen=True)
class Total:
    state: str
    label: str
    count: int


@dataclass(frozen=True)
class PatchSet:
    os: str
    patches: tuple[str, ...]
    count: int


@dataclass(frozen=True)
class RingPatches:
    ring: str
    sets: list[PatchSet]
    patched: int
    instances: int


@dataclass(frozen=True)
class RingView:
    name: str
    position: int
    waves: int
    instances: int
    soak: str
    approval: str


@dataclass(frozen=True)
class PoolCapacity:
    """How much of one traffic pool kept serving while a wave's machines were out of it."""

    pool: str
    members: int
    serving: int  # at the wave's lowest point: the members less the wave's machines drained from it

    @property
    def percent(self) -> int:
        return round(100 * self.serving / self.members) if self.members else 0


@dataclass(frozen=True)
class WaveView:
    index: int
    ring: str
    canary: bool
    size: int
    placement: str
    started: str
    finished: str
    duration: str
    outcome: Outcome
    counts: str
    patched: int
    healthy: int  # patched instances whose health check passed
    patched_sets: list[PatchSet]
    patched_names: list[InstanceRef] | None  # None: too many to name
    capacity: list[PoolCapacity] = field(default_factory=list)  # the pools it drained machines from

    @property
    def outcome_label(self) -> str:
        return OUTCOME_LABELS[self.outcome]


@dataclass(frozen=True)
class LogRow:
    at: str
    level: str
    text: str


@dataclass(frozen=True)
class NoticeRow:
    """A notice that did not reach a channel (never the webhook URL)."""

    at: str
    topic: str
    channel: str
    reason: str


@dataclass(frozen=True)
class StepRow:
    step: str
    at: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class HealthRow:
    instance: InstanceRef
    wave: int | None
    ring: str
    state: str
    steps: list[StepRow]


@dataclass(frozen=True)
class RollbackRow:
    instance: InstanceRef
    wave: int | None
    ring: str
    state: str
    failure: str
    installed: list[str]
    snapshots: list[str]
    rollback: str
    rollback_ok: bool | None  # None: not attempted
    health_after: str
    health_after_ok: bool | None  # None: not checked
    reason: str


@dataclass(frozen=True)
class Group:
    """Instances that share a state and a reason."""

    state: str
    reason: str
    count: int
    instances: list[InstanceRef]  # at most GROUP_LIST_LIMIT
    waves: str  # "7–12, 14" or "" for exclusions

    @property
    def more(self) -> int:
        return self.count - len(self.instances)


@dataclass(frozen=True)
class Bar:
    wave: int
    ring: str
    canary: bool
    outcome: Outcome
    x: float
    width: float
    y: float
    title: str


@dataclass(frozen=True)
class GapBand:
    x: float
    width: float
    label: str
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class RowLabel:
    y: float
    text: str  # the whole label, "(not started)" included: nothing is cut
    started: bool


@dataclass(frozen=True)
class Attention:
    """One thing in a run that needs a person: what happened, what to do, the command to type
    ("" when the step is by hand) and the report section with the details."""

    what: str
    step: str
    command: str
    section: str
    then: str = ""  # a second command, once the first has answered


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    row_height: int
    bar_height: int
    label_x: int  # row labels start here (anchored at their start) and end before plot_left
    bars: list[Bar]
    rows: list[RowLabel]
    gaps: list[GapBand]
    ticks: list[Tick]
    window_x: float | None
    window_label: str
    caption: str


@dataclass(frozen=True)
class Report:
    run_id: str
    policy: str
    status: str
    state: str
    reason: str
    started: str
    ended: str
    duration: str
    window_end: str
    totals: list[Total]
    instance_total: int
    promoted: list[PatchSet]
    ring_patches: list[RingPatches]
    installed_then_removed: int  # rolled back and healthy again: the patches are gone, the machine is fine
    rings: list[RingView]
    waves: list[WaveView]
    log: list[LogRow]
    health: list[HealthRow]
    healthy_patched: int
    rollbacks: list[RollbackRow]
    frozen: list[Excluded]
    exclusions: list[Group]
    skips: list[Group]
    timeline: Timeline
    gantt: str
    classifications: list[str] = field(default_factory=list)
    reboot: str = ""
    undelivered: list[NoticeRow] = field(default_factory=list)
    broken: list[RollbackRow] = field(default_factory=list)  # left `failed`: restore them by hand
    attention: list[Attention] = field(default_factory=list)  # what needs a person, most urgent first
    traffic: str = ""  # the drain in one sentence (`traffic_summary`), "" when nothing was drained
    hotpatch: str = ""  # the hotpatch-enabled machines in one sentence (`hotpatch_summary`)
    stopped: str = ""  # the machines found stopped or deallocated (`stopped_summary`)


# ---------------------------------------------------------------- building


def build(run: Run) -> Report:
    tz = zone_of(run)
    ended_at = _ended_at(run)
    records = run.records()
    counts: Counter[str] = Counter(r.state for r in records)
    order = list(STATE_ORDER) + sorted(set(counts) - set(STATE_ORDER))
    totals = [Total(s, STATE_LABELS.get(s, s), counts.get(s, 0)) for s in order]
    rollbacks = _rollbacks(run)
    frozen = [Excluded(ref(r.instance), r.reason) for r in run.excluded if _is_frozen(r)]
    pools = pool_members(r.instance for r in records)  # the run's inventory: waves and excluded
    return Report(
        run_id=run.run_id,
        policy=run.policy.name,
        status=run.status,
        state=run.state,
        reason=run.reason,
        started=fmt_time(run.created_at, tz),
        ended=fmt_time(ended_at, tz) if run.finished and ended_at else "",
        duration=fmt_duration(ended_at - run.created_at) if ended_at else "",
        window_end=fmt_time(run.window_end, tz) if run.window_end else "",
        totals=totals,
        instance_total=len(records),
        promoted=[PatchSet(os, tuple(p), 0) for os, p in sorted((run.promoted or {}).items())],
        ring_patches=_ring_patches(run),
        installed_then_removed=sum(1 for r in records if r.state == "rolled_back" and r.installed),
        rings=_rings(run),
        waves=[_wave(run, w, pools) for w in run.waves],
        log=[LogRow(fmt_time(e.at, tz), e.level, e.text) for e in run.log],
        undelivered=[NoticeRow(fmt_time(n.at, tz), n.topic, n.channel, n.reason) for n in run.undelivered],
        health=_health(run),
        healthy_patched=sum(1 for r in records if r.state == "patched" and _passed_health(r)),
        rollbacks=rollbacks,
        broken=[b for b in rollbacks if b.state == "failed"],
        frozen=frozen,
        exclusions=_groups(r for r in run.excluded if not _is_frozen(r)),
        skips=_groups(
            (r for w in run.waves for r in w.records.values() if r.state in ("skipped", "not_started")),
        ),
        timeline=timeline(run),
        gantt=gantt(run),
        classifications=list(run.policy.patches.classifications),
        reboot=run.policy.reboot,
        attention=attention(run),
        traffic=traffic_summary(run),
        hotpatch=hotpatch_summary(run),
        stopped=stopped_summary(run),
    )


# ---------------------------------------------------------------- what needs a human


def _n(count: int, noun: str, plural_noun: str = "") -> str:
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


def _names_of(records: Sequence[InstanceRecord], limit: int = 10) -> str:
    shown = ", ".join(ref(r.instance).label for r in records[:limit])
    return shown + (f" and {len(records) - limit} more" if len(records) > limit else "")


def command_line(*words: str) -> str:
    """A `patchpilot` command line to copy, shell-quoted (a run id may hold any character)."""
    return shlex.join(["patchpilot", *words])


def attention(run: Run) -> list[Attention]:
    """What in `run` needs a person, most urgent first, each with its next step and the exact
    command: the same answers as `patchpilot status`, for the reader of the report (which does not
    know the state directory: add `--state-dir` when it is not the default)."""
    rid = run.run_id
    items: list[Attention] = []
    retry = command_line("retry", rid) if run.finished and why_not_retryable(run) is None else ""
    status = command_line("status", rid)
    if run.status == "waiting_approval":
        ring = run.current.ring if run.cursor < len(run.waves) else "the next ring"
        what = f"Ring {ring} waits for approval: nothing more is patched until someone decides."
        items.append(Attention(what, "Approve it", command_line("approve", rid), "rings"))
        items.append(
            Attention(
                f"Or reject ring {ring}: the run ends there.",
                "Reject it (add --reason TEXT to say why)",
                command_line("reject", rid),
                "rings",
            )
        )
    records = run.records()
    broken = [r for r in records if r.state == "failed"]
    if broken:
        what = (
            f"{_n(len(broken), 'machine is', 'machines are')} left broken: {_names_of(broken)}. "
            "The rollback failed or the machine is still unhealthy after it; PatchPilot does not repair it."
        )
        step = "Restore each from its snapshots (table below) and check it" + (", then retry the run" if retry else "")
        items.append(Attention(what, step, retry or status, "broken"))
    if run.state == "halted":
        ring = run.current.ring if run.cursor < len(run.waves) else ""
        waiting = [r for r in records if r.state == "not_started"]
        what = f"The run halted{f' in ring {ring}' if ring else ''}: {run.reason}. Nothing more was patched"
        what += f" ({_n(len(waiting), 'machine')} not started)." if waiting else "."
        if retry:
            step = "Fix the cause, then retry the machines that were not patched"
        else:
            step = (
                "See what happened and fix the cause, then start a new run (no tested set was promoted to retry with)"
            )
        items.append(Attention(what, step, retry or status, "log"))
    elif run.state == "nothing_patched":
        what = f"The run patched nothing: {run.reason}. The fleet is as exposed as before."
        step = "Fix the policy or the inventory (check the rings' select with patchpilot plan), then start a new run"
        items.append(Attention(what, step, status, "patches"))
    elif run.state == "incomplete":
        waiting = [r for r in records if r.state == "not_started"]
        what = f"The run is incomplete: {run.reason}. {_n(len(waiting), 'machine was', 'machines were')} not started."
        step = "Retry them now, or let the next scheduled run patch them" if retry else "The next run patches them"
        items.append(Attention(what, step, retry or status, "skips"))
    held = [r for r in records if r.state == "skipped" and r.reason.startswith("held by run ")]
    if held:
        holders = sorted({r.reason.removeprefix("held by run ") for r in held})
        what = (
            f"{_n(len(held), 'machine was', 'machines were')} skipped because another run held "
            f"{'it' if len(held) == 1 else 'them'} ({', '.join(holders)}): {_names_of(held)}."
        )
        them = "it" if len(held) == 1 else "them"
        step = f"Once {'that run has' if len(holders) == 1 else 'those runs have'} ended, retry {them}"
        if not retry:
            step = (
                f"Once {'that run has' if len(holders) == 1 else 'those runs have'} ended, the next run patches {them}"
            )
        items.append(Attention(what, step, command_line("status", holders[0]), "skips", retry))
    skipped = [r for r in records if r.state == "skipped" and r not in held]
    if skipped:
        reasons = sorted({r.reason for r in skipped})
        what = (
            f"{_n(len(skipped), 'machine was', 'machines were')} skipped and "
            f"{'stays' if len(skipped) == 1 else 'stay'} unpatched ({'; '.join(reasons[:3])}"
            f"{f'; and {len(reasons) - 3} more reasons' if len(reasons) > 3 else ''})."
        )
        step = "Fix the cause" + (", then retry them" if retry else ", then start a new run")
        items.append(Attention(what, step, retry or status, "skips"))
    rolled_back = [r for r in records if r.state == "rolled_back"]
    if rolled_back:
        what = (
            f"{_n(len(rolled_back), 'machine was', 'machines were')} rolled back and "
            f"{'stays' if len(rolled_back) == 1 else 'stay'} unpatched: {_names_of(rolled_back)}."
        )
        step = "Fix what failed (see the rollback record)" + (", then retry" if retry else "")
        items.append(Attention(what, step, retry or status, "rollbacks"))
    frozen = [r for r in run.excluded if _is_frozen(r)]
    if frozen:
        what = (
            f"{_n(len(frozen), 'frozen machine was', 'frozen machines were')} not patched and "
            f"{'stays' if len(frozen) == 1 else 'stay'} exposed: {_names_of(frozen)}."
        )
        step = "Patch them once the freeze ends, or lift the freeze in the policy; a retry never patches them"
        items.append(Attention(what, step, "", "frozen"))
    excluded = [r for r in run.excluded if not _is_frozen(r)]
    if excluded:
        reasons = sorted({r.reason for r in excluded})
        what = (
            f"{_n(len(excluded), 'machine was', 'machines were')} excluded and "
            f"{'stays' if len(excluded) == 1 else 'stay'} unpatched ({'; '.join(reasons[:3])}"
            f"{f'; and {len(reasons) - 3} more reasons' if len(reasons) > 3 else ''})."
        )
        step = "Check that each exclusion is meant; a retry never patches them"
        items.append(Attention(what, step, "", "exclusions"))
    if run.undelivered:
        channels = sorted({n.channel for n in run.undelivered})
        what = (
            f"{_n(len(run.undelivered), 'notice')} did not reach {', '.join(channels)}: "
            "the people it was for have not seen it."
        )
        step = "Read the notices (table below) and fix the channel's webhook or token"
        items.append(Attention(what, step, status, "notifications"))
    return items


def zone_of(run: Run) -> tzinfo | None:
    """Times read in the policy's timezone where it has a schedule, else as the run recorded them."""
    if run.policy.schedule is not None and run.created_at.tzinfo is not None:
        return run.policy.schedule.zone
    return run.created_at.tzinfo


def ref(instance: Instance) -> InstanceRef:
    zone = instance.zone or ""
    if not zone:
        where = instance.region
    elif zone.startswith(instance.region):
        where = zone
    else:
        where = f"{instance.region}/{zone}"
    if instance.availability_set:
        where += f" {instance.availability_set}/UD{instance.update_domain}"
    return InstanceRef(instance.id, instance.short_name, instance.os, where)


def _is_frozen(record: InstanceRecord) -> bool:
    return record.reason.startswith("frozen")


def _ended_at(run: Run) -> datetime | None:
    """When the run last did something: its end once finished."""
    times = [e.at for e in run.log]
    times += [w.finished_at for w in run.waves if w.finished_at]
    times += [w.started_at for w in run.waves if w.started_at]
    return max(times, default=None)


def _passed_health(record: InstanceRecord) -> bool:
    health = [s for s in record.steps if s.step == "health"]
    return bool(health) and health[-1].ok


def _sets(records: Iterable[InstanceRecord]) -> list[PatchSet]:
    groups: Counter[tuple[str, tuple[str, ...]]] = Counter((r.instance.os, tuple(sorted(r.installed))) for r in records)
    ordered = sorted(groups.items(), key=lambda g: (g[0][0], -g[1], g[0][1]))
    return [PatchSet(os, patches, n) for (os, patches), n in ordered]


def _ring_patches(run: Run) -> list[RingPatches]:
    by_ring: dict[str, list[InstanceRecord]] = defaultdict(list)
    for wave in run.waves:
        by_ring[wave.ring].extend(wave.records.values())
    out = []
    for ring in run.policy.rings:
        members = by_ring.get(ring.name, [])
        patched = [r for r in members if r.state == "patched"]
        out.append(RingPatches(ring.name, _sets(patched), len(patched), len(members)))
    return out


def _rings(run: Run) -> list[RingView]:
    out = []
    for position, ring in enumerate(run.policy.rings):
        waves = [w for w in run.waves if w.ring == ring.name]
        out.append(
            RingView(
                name=ring.name,
                position=position,
                waves=len(waves),
                instances=sum(len(w.records) for w in waves),
                soak=fmt_duration(ring.soak) if ring.soak else "none",
                approval=_approval(run, ring.name, ring.approval, bool(waves)),
            )
        )
    return out


def _approval(run: Run, ring: str, setting: str, has_waves: bool) -> str:
    """What the ring's approval gate did in this run: a ring with `approval: required` waits for
    an approval before its first wave (the first ring too); one without machines has nothing to hold."""
    if setting != "required":
        return "auto"
    if not has_waves:
        return "required, but the ring has no machine: nothing waited"
    approved = next((e for e in run.log if e.text.startswith(f"Ring {ring} approved by ")), None)
    if approved is not None:
        return f"required: {approved.text.removeprefix(f'Ring {ring} ')}, {fmt_time(approved.at, zone_of(run))}"
    if run.state == "halted" and run.reason.startswith(f"ring {ring} rejected by "):
        return f"required: {run.reason.removeprefix(f'ring {ring} ')}"
    if run.state == "awaiting_approval" and run.current.ring == ring:
        return f"required: waiting, before the ring starts (patchpilot approve {run.run_id})"
    return "required: waits for approval before it starts (not reached)"


def wave_outcome(wave: WaveState) -> Outcome:
    if wave.started_at is None:
        return "not_started"
    states = {r.state for r in wave.records.values()}
    if wave.finished_at is None:
        return "running"
    if "failed" in states:
        return "failed"
    if "rolled_back" in states:
        return "rolled_back"
    if states - {"patched"}:
        return "skipped"
    return "patched"


def _wave(run: Run, wave: WaveState, pools: dict[str, int]) -> WaveView:
    tz = zone_of(run)
    shares = pool_text((r.instance for r in wave.records.values()), pools)
    records = list(wave.records.values())
    patched = [r for r in records if r.state == "patched"]
    duration = ""
    if wave.started_at and wave.finished_at:
        duration = fmt_duration(wave.finished_at - wave.started_at)
    return WaveView(
        index=wave.index,
        ring=wave.ring,
        canary=wave.canary,
        size=len(records),
        # the traffic pools it took out of service, after where it was (only a fleet with pools has them)
        placement="; ".join(filter(None, [placement(r.instance for r in records), shares])),
        started=fmt_clock(wave.started_at, run.created_at, tz) if wave.started_at else "",
        finished=fmt_clock(wave.finished_at, run.created_at, tz) if wave.finished_at else "",
        duration=duration,
        outcome=wave_outcome(wave),
        counts=state_counts(records),
        patched=len(patched),
        healthy=sum(1 for r in patched if _passed_health(r)),
        patched_sets=_sets(patched),
        patched_names=[ref(r.instance) for r in patched] if len(patched) <= NAME_PATCHED_UP_TO else None,
        capacity=pool_capacity(records, pools),
    )


def hotpatch_summary(run: Run) -> str:
    """One sentence on the run's hotpatch-enabled machines (patchpilot/hotpatch.py): which took
    live patches only, without a reboot, and which installed more; "" for a run without any."""
    hot = [r for w in run.waves for r in w.records.values() if r.instance.hotpatch]
    if not hot:
        return ""
    free = [r for r in hot if reboot_free(r.instance, r.installed)]
    rest = [r for r in hot if r not in free and r.installed]
    parts = [f"{_n(len(hot), 'hotpatch-enabled machine')}"]
    if free:
        parts.append(f"{_n(len(free), 'machine')} took live patches only, no reboot ({_names_of(free)})")
    if rest:
        parts.append(f"{_n(len(rest), 'machine')} installed more and rebooted as needed ({_names_of(rest)})")
    if not free and not rest:
        parts.append("none installed anything")
    return "; ".join(parts)


def stopped_summary(run: Run) -> str:
    """One sentence on the machines found stopped or deallocated (policy `stopped_machines`): which
    were started for their waves and returned to that state, which were left as they were, and
    which are still running (the return failed); "" for a run without any."""
    found = [r for w in run.waves for r in w.records.values() if r.instance.power is not None]
    if not found:
        return ""
    started = [r for r in found if any(s.step == "start" and s.ok for s in r.steps)]
    running = [r for r in found if r.started]
    untouched = [r for r in found if not any(s.step == "start" and s.ok for s in r.steps)]
    parts = [f"{_n(len(found), 'machine')} found stopped or deallocated"]
    if started:
        named = ", ".join(f"{ref(r.instance).label} ({r.instance.power})" for r in started[:10])
        more = f" and {len(started) - 10} more" if len(started) > 10 else ""
        waves = "its wave" if len(started) == 1 else "their waves"
        parts.append(f"{_n(len(started), 'machine')} started for {waves} and returned ({named}{more})")
    if untouched:
        parts.append(f"{_n(len(untouched), 'machine')} left as found ({_names_of(untouched)})")
    if running:
        parts.append(f"STILL RUNNING, return them by hand: {_names_of(running)}")
    return "; ".join(parts)


def traffic_summary(run: Run) -> str:
    """One sentence on the drain of a run: how many machines left their pools (or went into
    Standby) and came back, the lowest capacity any pool kept, and who is still out; "" for a run
    that drained nothing."""
    records = run.records()
    drained = [r for r in records if any(s.step == "drain" for s in r.steps)]
    if not drained:
        return ""
    members = pool_members(r.instance for r in records)
    parts = []
    pooled = [r for r in drained if r.instance.traffic_pools and run.policy.traffic.drain]
    if pooled:
        pools = {p for r in pooled for p in r.instance.traffic_pools}
        parts.append(f"{_n(len(pooled), 'machine')} drained from {_n(len(pools), 'traffic pool')}")
    standby = [r for r in drained if r.instance.scaling_group and run.policy.scaling_groups == "standby"]
    if standby:
        groups = {r.instance.scaling_group for r in standby}
        parts.append(f"{_n(len(standby), 'machine')} put in Standby ({_n(len(groups), 'scaling group')})")
    out = [r for r in drained if r.out_of_pools]
    text = " and ".join(parts) + (", all back" if not out else f", {len(drained) - len(out)} back")
    lowest = min(
        ((c, w.index) for w in run.waves for c in pool_capacity(w.records.values(), members)),
        key=lambda pair: (pair[0].percent, pair[1]),
        default=None,
    )
    if lowest is not None:
        capacity, wave = lowest
        text += f"; lowest capacity: {capacity.pool} {capacity.serving} of {capacity.members} serving (wave {wave})"
    if out:
        text += f"; out of their pools: {', '.join(f'{r.instance.short_name} ({r.state})' for r in out[:10])}"
    return text


def pool_capacity(records: Iterable[InstanceRecord], pools: Mapping[str, int]) -> list[PoolCapacity]:
    """Per pool a wave drained machines from (`traffic.drain`): its members, and how many kept
    serving while the wave's drained machines were out."""
    drained: Counter[str] = Counter()
    for record in records:
        if any(s.step == "drain" for s in record.steps):
            drained.update(dict.fromkeys(record.instance.traffic_pools, 1))
    return [PoolCapacity(p, pools.get(p, n), max(pools.get(p, n) - n, 0)) for p, n in sorted(drained.items())]


def state_counts(records: Iterable[InstanceRecord]) -> str:
    counts: Counter[str] = Counter(r.state for r in records)
    order = [s for s in ("pending", *STATE_ORDER) if s in counts]
    return ", ".join(f"{counts[s]} {STATE_LABELS.get(s, s)}" for s in order) or "none"


def _step_row(step: Step, tz: tzinfo | None, start: datetime) -> StepRow:
    return StepRow(step.step, fmt_clock(step.at, start, tz), step.ok, step.detail)


def _health(run: Run) -> list[HealthRow]:
    """Every instance whose health was checked, except the plainly patched ones."""
    tz = zone_of(run)
    rows = []
    for wave in run.waves:
        for record in wave.records.values():
            steps = [s for s in record.steps if s.step in ("health", "recheck")]
            if not steps or (record.state == "patched" and all(s.ok for s in steps)):
                continue
            rows.append(
                HealthRow(
                    ref(record.instance),
                    record.wave,
                    record.ring,
                    record.state,
                    [_step_row(s, tz, run.created_at) for s in steps],
                )
            )
    return rows


def _last(record: InstanceRecord, step: str) -> Step | None:
    found = [s for s in record.steps if s.step == step]
    return found[-1] if found else None


def _rollbacks(run: Run) -> list[RollbackRow]:
    rows = []
    for wave in run.waves:
        for record in wave.records.values():
            if record.state not in ("rolled_back", "failed"):
                continue
            rollback, recheck = _last(record, "rollback"), _last(record, "recheck")
            if rollback is None:
                rollback_text = "not attempted"
            else:
                rollback_text = "restored" if rollback.ok else "rollback failed"
                if rollback.detail:
                    rollback_text += f": {rollback.detail}"
            if recheck is None:
                after = "not checked"
            else:
                after = "healthy" if recheck.ok else "unhealthy"
                if recheck.detail:
                    after += f": {recheck.detail}"
            rows.append(
                RollbackRow(
                    instance=ref(record.instance),
                    wave=record.wave,
                    ring=record.ring,
                    state=record.state,
                    failure=record.failure or record.reason,
                    installed=list(record.installed),
                    snapshots=list(record.snapshot_ids),
                    rollback=rollback_text,
                    rollback_ok=None if rollback is None else rollback.ok,
                    health_after=after,
                    health_after_ok=None if recheck is None else recheck.ok,
                    reason=record.reason,
                )
            )
    return rows


def _groups(records: Iterable[InstanceRecord]) -> list[Group]:
    grouped: dict[tuple[str, str], list[InstanceRecord]] = defaultdict(list)
    for record in records:
        grouped[(record.state, record.reason)].append(record)
    out = []
    for (state, reason), members in sorted(grouped.items(), key=lambda g: (-len(g[1]), g[0])):
        waves = sorted({r.wave for r in members if r.wave is not None})
        out.append(
            Group(
                state=state,
                reason=reason,
                count=len(members),
                instances=[ref(r.instance) for r in members[:GROUP_LIST_LIMIT]],
                waves=ranges(waves),
            )
        )
    return out


def ranges(numbers: Sequence[int]) -> str:
    """`[1, 2, 3, 5]` -> `1–3, 5`."""
    parts: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}–{prev}")
        start = prev = n
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}–{prev}")
    return ", ".join(parts)


# ---------------------------------------------------------------- time


def _local(when: datetime, tz: tzinfo | None) -> datetime:
    return when.astimezone(tz) if tz is not None and when.tzinfo is not None else when


def fmt_time(when: datetime, tz: tzinfo | None) -> str:
    local = _local(when, tz)
    name = local.tzname() or ""
    return f"{local:%Y-%m-%d %H:%M:%S} {name}".rstrip()


def fmt_clock(when: datetime, start: datetime, tz: tzinfo | None) -> str:
    """`02:14:00`, or `02:14:00 (+1d)` on a later day than the run's start."""
    local = _local(when, tz)
    days = (local.date() - _local(start, tz).date()).days
    return f"{local:%H:%M:%S}" + (f" (+{days}d)" if days else "")


def fmt_duration(delta: timedelta) -> str:
    """`format_duration`'s `1h30m`, in a report: `0s` for none, no seconds past a day."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    if seconds >= 86400:
        seconds -= seconds % 60
    return format_duration(timedelta(seconds=seconds))


# ---------------------------------------------------------------- timeline

_TICK_STEPS = [
    timedelta(seconds=s) for s in (1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
] + [timedelta(days=2), timedelta(days=7)]


def timeline(run: Run) -> Timeline:
    """Geometry of the wave chart: one row per wave, a bar from its start to its finish."""
    tz = zone_of(run)
    row_height, bar_height = 18, 12
    labels = [_row_label(w) for w in run.waves]
    # Row labels start at LABEL_X and end before the plot: the plot moves right (and the chart
    # grows) for a long ring name, so no label is cut at the left edge or runs into the bars.
    left = max(170, LABEL_X + max((text_width(t) for t in labels), default=0) + 12)
    width, top = left + 790, 34
    right = width - 20 - _TICK_OVERHANG
    t0 = run.created_at
    last = _ended_at(run) or t0
    t1 = max(last, t0 + timedelta(minutes=1))
    window_x: float | None = None
    caption = ""
    if run.window_end is not None:
        if run.window_end <= t1 + (t1 - t0) / 4:
            t1 = max(t1, run.window_end)
        else:
            caption = f"The window ends at {fmt_time(run.window_end, tz)}, beyond the right edge."
    span = (t1 - t0).total_seconds()
    plot = right - left

    def x_of(when: datetime) -> float:
        return round(left + (when - t0).total_seconds() / span * plot, 1)

    if run.window_end is not None and run.window_end <= t1:
        window_x = x_of(run.window_end)

    bars, rows = [], []
    for k, wave in enumerate(run.waves):
        y = top + k * row_height
        rows.append(RowLabel(y + row_height / 2, labels[k], wave.started_at is not None))
        if wave.started_at is None:
            continue
        end = wave.finished_at or last
        x = x_of(wave.started_at)
        outcome = wave_outcome(wave)
        title = (
            f"Wave {wave.index} ({wave.ring}): {OUTCOME_LABELS[outcome]}; "
            f"{fmt_time(wave.started_at, tz)} to "
            + (fmt_time(wave.finished_at, tz) if wave.finished_at else "still running")
            + f"; {state_counts(wave.records.values())}"
        )
        bars.append(
            Bar(
                wave=wave.index,
                ring=wave.ring,
                canary=wave.canary,
                outcome=outcome,
                x=x,
                width=max(2.0, round(x_of(end) - x, 1)),
                y=y + (row_height - bar_height) / 2,
                title=title,
            )
        )

    gaps = []
    started = [w for w in run.waves if w.started_at is not None]
    opened = started[0].started_at if started else None
    if opened is not None and opened > t0 and run.cloud_scheduled is None and _gated(run, started[0]):
        gaps.append(  # the first ring waited for its approval
            GapBand(
                x=x_of(t0),
                width=round(x_of(opened) - x_of(t0), 1),
                label="approval",
                title=f"approval: {fmt_time(t0, tz)} to {fmt_time(opened, tz)} ({fmt_duration(opened - t0)})",
            )
        )
    for before, after in pairwise(started):
        if before.finished_at is None or after.started_at is None or after.started_at <= before.finished_at:
            continue
        label = _gap_label(run, before, after)
        gaps.append(
            GapBand(
                x=x_of(before.finished_at),
                width=round(x_of(after.started_at) - x_of(before.finished_at), 1),
                label=label,
                title=f"{label}: {fmt_time(before.finished_at, tz)} to {fmt_time(after.started_at, tz)} "
                f"({fmt_duration(after.started_at - before.finished_at)})",
            )
        )

    step = next((s for s in _TICK_STEPS if span / s.total_seconds() <= 8), _TICK_STEPS[-1])
    ticks = []
    local0 = _local(t0, tz)
    offset = local0.utcoffset() or timedelta(0)
    stamp = local0.timestamp() + offset.total_seconds()
    first = -(-stamp // step.total_seconds()) * step.total_seconds()
    tick = t0 + timedelta(seconds=first - stamp)
    fmt = "%H:%M"
    if step >= timedelta(days=1):
        fmt = "%m-%d %H:%M"
    elif step < timedelta(minutes=1):
        fmt = "%H:%M:%S"
    while tick <= t1:
        ticks.append(Tick(x_of(tick), f"{_local(tick, tz):{fmt}}"))
        tick += step

    bottom = top + len(run.waves) * row_height
    return Timeline(
        width=width,
        height=bottom + 24,
        plot_left=left,
        plot_right=right,
        plot_top=top,
        plot_bottom=bottom,
        row_height=row_height,
        bar_height=bar_height,
        label_x=LABEL_X,
        bars=bars,
        rows=rows,
        gaps=gaps,
        ticks=ticks,
        window_x=window_x,
        window_label="window end",
        caption=caption,
    )


LABEL_X = 8
FONT_SIZE = 11  # the chart's font size (timeline.svg.j2)
_TICK_OVERHANG = 40  # half the widest tick label ("12-31 23:00") past the plot's right edge


def text_width(text: str, font_size: float = FONT_SIZE) -> int:
    """A generous estimate of `text`'s width in a sans-serif font: wide letters (W, M, capitals)
    and digits count more than narrow ones, so the estimate errs on the wide side."""
    narrow, wide = set("iljtfrI.,:;!'()[]| "), set("WMmw@%")
    em = sum(0.35 if c in narrow else 0.95 if c in wide or c.isupper() else 0.62 for c in text)
    return int(em * font_size) + 1


def _row_label(wave: WaveState) -> str:
    return (
        f"W{wave.index} {wave.ring}"
        + (" (canary)" if wave.canary else "")
        + ("" if wave.started_at is not None else " (not started)")
    )


def _gated(run: Run, wave: WaveState) -> bool:
    """Whether the wave's ring waited for an approval before it started."""
    return run.policy.rings[wave.ring_position].approval == "required"


def _gap_label(run: Run, before: WaveState, after: WaveState) -> str:
    if before.ring == after.ring:
        return "pause"
    rings = run.policy.rings
    parts = []
    if rings[before.ring_position].soak > timedelta(0):
        parts.append("soak")
    if _gated(run, after):
        parts.append("approval")
    return " + ".join(parts) or "pause"


def gantt(run: Run) -> str:
    """A mermaid gantt chart of the started waves, one section per ring."""
    tz = zone_of(run)
    last = _ended_at(run) or run.created_at
    lines = ["gantt", "    dateFormat YYYY-MM-DD HH:mm:ss", "    axisFormat %H:%M", "    todayMarker off"]
    ring = None
    for wave in run.waves:
        if wave.started_at is None:
            continue
        if wave.ring != ring:
            ring = wave.ring
            lines.append(f"    section {_mermaid_text(ring)}")
        end = max(wave.finished_at or last, wave.started_at + timedelta(seconds=1))
        outcome = wave_outcome(wave)
        tag = {"patched": "done", "running": "active", "failed": "crit", "rolled_back": "crit, done"}.get(
            outcome, "done"
        )
        name = f"W{wave.index}" + (" canary" if wave.canary else "") + f" {OUTCOME_LABELS[outcome]}"
        lines.append(
            f"    {_mermaid_text(name)} :{tag}, w{wave.index}, {_mermaid_time(wave.started_at, tz)}, "
            f"{_mermaid_time(end, tz)}"
        )
    return "\n".join(lines)


def _mermaid_time(when: datetime, tz: tzinfo | None) -> str:
    return f"{_local(when, tz):%Y-%m-%d %H:%M:%S}"


def _mermaid_text(text: str) -> str:
    """Mermaid ends a task name at ':' and comments start with '%%'; keep names to safe text."""
    cleaned = "".join(c if c.isalnum() or c in " ._-()+/" else " " for c in text)
    return " ".join(cleaned.split()) or "ring"
