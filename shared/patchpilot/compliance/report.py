"""The compliance view: which machine lacks which patch, per instance, per ring and per policy.

`build_view(policy, instances, states, now)` turns the clouds' assessments (`PatchState`, one per
instance) into a `ComplianceView`; `merge_views` puts several policies' views into one report;
`nothing_pending` answers a non-periodic policy's question; `last_patched` says which PatchPilot run
last patched each machine, `left_failed` which machines a run left broken. The policy's exceptions
in force at `now` make machines and patches `excepted`; its SLAs (`compliance.sla`) give each
missing patch a deadline (docs/governance.md). Pure: no I/O, no clock
(`now` is given), but for `recent_runs`, which reads the few newest runs of a policy from the run
store it is given. `ComplianceView.document()` is the
`--json` shape (docs/compliance.md): a contract.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from patchpilot.compliance.model import PATCH_SEVERITIES, MissingPatch, PatchState
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance
from patchpilot.planning import NO_RING, assign, ring_of
from patchpilot.policy import Policy
from patchpilot.policy.exceptions import names_patch, patch_exception
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import Classification, ComplianceSettings, PatchSelection, PolicyException, PolicyKind
from patchpilot.ports import RunStore, UnknownRunError
from patchpilot.wording import plural

Status = Literal["compliant", "non_compliant", "needs_attention", "excepted", "exposed", "unknown", "unmanaged"]
STATUSES: tuple[Status, ...] = (
    "compliant",
    "non_compliant",
    "needs_attention",
    "excepted",
    "exposed",
    "unknown",
    "unmanaged",
)
STATUS_LABELS: dict[Status, str] = {
    "compliant": "compliant",
    "non_compliant": "non-compliant",
    "needs_attention": "needs attention",
    "excepted": "excepted",
    "exposed": "exposed",
    "unknown": "unknown",
    "unmanaged": "unmanaged",
}
NO_RING_LABEL = "(no ring)"
DOCUMENT_VERSION = 1
RECENT_RUNS = 12  # runs of a policy `recent_runs` reads at most: a year of monthly windows

# Where a missing patch stands against its SLA (`compliance.sla`): past its deadline, within
# `compliance.due_soon` of it, further, or with no release date to count from. None: no SLA applies.
DeadlineState = Literal["overdue", "due_soon", "on_time", "no_release_date"]
DEADLINE_LABELS: dict[DeadlineState, str] = {
    "overdue": "overdue",
    "due_soon": "due soon",
    "on_time": "on time",
    "no_release_date": "no release date: no deadline",
}

# How the clouds name classifications, onto the policy's names (`patches.classifications`).
_CLASSIFICATION_ALIASES = {
    "securityupdates": "security",
    "criticalupdates": "critical",
    "updaterollups": "updaterollup",
    "featurepacks": "featurepack",
    "servicepacks": "servicepack",
    "definitionupdates": "definition",
    "bugfix": "other",
    "enhancement": "other",
    "recommended": "other",
    "newpackage": "other",
    "drivers": "other",
    "upgrades": "other",
}
_KNOWN_CLASSIFICATIONS = frozenset(c.casefold() for c in get_args(Classification))


def _classification_key(name: str) -> str:
    key = name.replace(" ", "").casefold()
    return _CLASSIFICATION_ALIASES.get(key, key)


def in_policy(selection: PatchSelection, patch: MissingPatch) -> bool:
    """Whether the policy would install this patch: it is not excluded, and its classification is
    selected or its id included (ids and masks without case; a Linux package also by its name). A
    classification the policy cannot name (an Ubuntu section, none at all) counts as selected: the
    cloud's baseline called the patch missing, and the report never hides one it cannot place."""
    if names_patch(selection.exclude, patch.id):
        return False
    key = _classification_key(patch.classification)
    wanted = {_classification_key(c) for c in selection.classifications}
    return names_patch(selection.include, patch.id) or key in wanted or key not in _KNOWN_CLASSIFICATIONS


_POLICY_CLASSIFICATIONS = {c.casefold(): c for c in get_args(Classification)}


@dataclass(frozen=True, slots=True)
class Deadline:
    """A missing patch against its SLA: the SLA, the deadline (release date + SLA; None without a
    release date) and where it stands at the view's time."""

    sla: timedelta
    at: datetime | None
    state: DeadlineState


def deadline_of(settings: ComplianceSettings | None, patch: MissingPatch, now: datetime) -> Deadline | None:
    """The patch's deadline under `compliance.sla` (its severity's SLA, else its classification's,
    the clouds' names mapped onto the policy's), or None when no SLA applies."""
    if settings is None or not settings.sla:
        return None
    classification = _POLICY_CLASSIFICATIONS.get(_classification_key(patch.classification), patch.classification)
    sla = settings.sla_for(patch.severity, classification)
    if sla is None:
        return None
    if patch.released_at is None:
        return Deadline(sla, None, "no_release_date")
    at = patch.released_at + sla
    state: DeadlineState = "overdue" if now > at else "due_soon" if at - now <= settings.due_soon else "on_time"
    return Deadline(sla, at, state)


def exception_document(exception: PolicyException | None) -> dict[str, Any] | None:
    """`{"reason", "owner", "expires", "patches"}` of an exception in force, else None."""
    if exception is None:
        return None
    return {
        "reason": exception.reason,
        "owner": exception.owner,
        "expires": exception.expires.isoformat(),
        "patches": list(exception.patches),
    }


@dataclass(frozen=True, slots=True)
class LastRun:
    """The PatchPilot run that last patched a machine, and when its wave finished."""

    run_id: str
    at: datetime

    def document(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "at": self.at.isoformat()}


def last_patched(runs: Iterable[Run], policy: str) -> dict[str, LastRun]:
    """Instance id -> the latest run of `policy` that patched it (state "patched" in a finished
    wave; rolled back, failed or skipped never count). Runs of other policies are ignored; of two
    runs, the later wave end wins, whatever order the runs come in."""
    found: dict[str, LastRun] = {}
    for run in runs:
        if run.policy.name != policy:
            continue
        for wave in run.waves:
            if wave.finished_at is None:
                continue  # still under way: its machines may yet be rolled back
            for record in wave.records.values():
                known = found.get(record.id)
                if record.state == "patched" and (known is None or wave.finished_at > known.at):
                    found[record.id] = LastRun(run.run_id, wave.finished_at)
    return found


@dataclass(frozen=True, slots=True)
class LeftFailed:
    """A PatchPilot run left the machine `failed` (its rollback failed, or it is still unhealthy
    after it) and no later run of the policy patched or restored it: a person must restore it."""

    run_id: str
    at: datetime  # when that run's wave finished
    reason: str  # the run's reason for the machine
    snapshot_ids: tuple[str, ...] = ()  # what to restore it from

    def document(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "at": self.at.isoformat(),
            "reason": self.reason,
            "snapshot_ids": list(self.snapshot_ids),
        }


def left_failed(runs: Iterable[Run], policy: str) -> dict[str, LeftFailed]:
    """Instance id -> the run of `policy` that left it `failed`, when that is the latest run (by its
    finished wave) that did something to the machine: patched, rolled back or failed. A later run
    that patched it or rolled it back healthy clears it; skipped, not started or excluded never do."""
    latest: dict[str, tuple[datetime, LeftFailed | None]] = {}
    for run in runs:
        if run.policy.name != policy:
            continue
        for wave in run.waves:
            if wave.finished_at is None:
                continue
            for record in wave.records.values():
                if record.state not in ("patched", "rolled_back", "failed"):
                    continue
                known = latest.get(record.id)
                if known is not None and known[0] >= wave.finished_at:
                    continue
                failed = None
                if record.state == "failed":
                    failed = LeftFailed(run.run_id, wave.finished_at, record.reason, tuple(record.snapshot_ids))
                latest[record.id] = (wave.finished_at, failed)
    return {key: failed for key, (_, failed) in latest.items() if failed is not None}


def recent_runs(store: RunStore, policy: str, limit: int = RECENT_RUNS) -> list[Run]:
    """The `limit` newest runs whose id starts with `<policy>-` (as every run id PatchPilot makes
    does), newest first: a long-lived store costs `limit` reads, never one per run it ever held.
    A run listed but gone (an eventually consistent listing) is skipped; other errors raise."""
    prefix = f"{policy}-"
    runs = []
    for run_id in [i for i in reversed(store.run_ids()) if i.startswith(prefix)][:limit]:
        try:
            runs.append(store.load(run_id))
        except UnknownRunError:
            continue
    return runs


@dataclass(frozen=True, slots=True)
class PatchGapView:
    """A patch one machine lacks, with its age in whole days (None when the release date is unknown)."""

    patch: MissingPatch
    age_days: int | None
    in_policy: bool  # the policy would install it: only these make a machine non-compliant
    exception: PolicyException | None = None  # an exception in force leaves it out: state "excepted"
    deadline: Deadline | None = None  # under the policy's SLA; None: no SLA applies, or not in the policy

    @property
    def state(self) -> str:
        """The patch's gap (missing, failed, pending_reboot), or `excepted`."""
        return "excepted" if self.exception is not None else self.patch.gap

    @property
    def counts(self) -> bool:
        """Missing in the policy's sense: the policy installs it and no exception covers it."""
        return self.in_policy and self.exception is None

    @property
    def overdue(self) -> bool:
        return self.counts and self.deadline is not None and self.deadline.state == "overdue"

    @property
    def due_soon(self) -> bool:
        return self.counts and self.deadline is not None and self.deadline.state == "due_soon"

    def document(self) -> dict[str, Any]:
        p, deadline = self.patch, self.deadline
        return {
            "id": p.id,
            "title": p.title,
            "classification": p.classification,
            "severity": p.severity,
            "state": self.state,
            "released_at": _iso(p.released_at),
            "age_days": self.age_days,
            "version": p.version,
            "in_policy": self.in_policy,
            "sla": format_duration(deadline.sla) if deadline else None,
            "deadline": _iso(deadline.at) if deadline else None,
            "deadline_state": deadline.state if deadline else None,
            "exception": exception_document(self.exception),
        }


@dataclass(frozen=True, slots=True)
class InstanceView:
    policy: str
    id: str
    name: str
    cloud: str
    region: str
    ring: str | None  # the ring the planner puts it in (an exposed one: the ring it would be in)
    status: Status
    reason: str  # why exposed, unmanaged or unknown; what is wrong when non-compliant
    missing: tuple[PatchGapView, ...]
    reboot_pending: bool
    assessed_at: datetime | None
    last_install_at: datetime | None
    notes: tuple[str, ...] = ()
    last_run: LastRun | None = None  # None also when the runs were not read (`PolicyView.runs_read`)
    left_failed: LeftFailed | None = None  # status needs_attention: a run left it broken
    exception: PolicyException | None = None  # status excepted: the machine exception in force

    @property
    def last_installed(self) -> datetime | None:
        """The later of the cloud's last install and the last PatchPilot run that patched it (AWS
        keeps only the last operation: after a scan, the cloud no longer knows the install)."""
        times = [t for t in (self.last_install_at, self.last_run.at if self.last_run else None) if t is not None]
        return max(times, default=None)

    @property
    def gaps(self) -> tuple[PatchGapView, ...]:
        """The missing patches the policy would install, that no exception covers."""
        return tuple(g for g in self.missing if g.counts)

    @property
    def overdue(self) -> tuple[PatchGapView, ...]:
        """The gaps past their SLA deadline."""
        return tuple(g for g in self.missing if g.overdue)

    def document(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "id": self.id,
            "name": self.name,
            "cloud": self.cloud,
            "region": self.region,
            "ring": self.ring,
            "status": self.status,
            "reason": self.reason,
            "reboot_pending": self.reboot_pending,
            "assessed_at": _iso(self.assessed_at),
            "last_install_at": _iso(self.last_install_at),
            "last_run": self.last_run.document() if self.last_run else None,
            "left_failed": self.left_failed.document() if self.left_failed else None,
            "exception": exception_document(self.exception),
            "notes": list(self.notes),
            "missing": [g.document() for g in self.missing],
        }


@dataclass(frozen=True, slots=True)
class Totals:
    machines: dict[Status, int]  # every status, zeros included
    missing: int  # (machine, patch) pairs the policy would install
    by_severity: dict[str, int]  # every severity of the scale, zeros included
    by_classification: dict[str, int]  # as the clouds name them
    oldest_missing_days: int | None
    reboots_pending: int
    overdue: int = 0  # gaps past their SLA deadline
    due_soon: int = 0  # gaps within compliance.due_soon of it
    no_deadline: int = 0  # gaps with an SLA but no release date to count it from
    excepted_patches: int = 0  # (machine, patch) pairs an exception in force covers

    @property
    def instances(self) -> int:
        return sum(self.machines.values())

    def document(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "machines": dict(self.machines),
            "missing": self.missing,
            "missing_by_severity": dict(self.by_severity),
            "missing_by_classification": dict(self.by_classification),
            "oldest_missing_days": self.oldest_missing_days,
            "reboots_pending": self.reboots_pending,
            "overdue": self.overdue,
            "due_soon": self.due_soon,
            "no_deadline": self.no_deadline,
            "excepted_patches": self.excepted_patches,
        }


def totals_of(instances: Iterable[InstanceView]) -> Totals:
    machines: Counter[Status] = Counter()
    severities: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    ages: list[int] = []
    reboots = 0
    deadlines: Counter[str] = Counter()
    excepted = 0
    for view in instances:
        machines[view.status] += 1
        reboots += view.reboot_pending
        excepted += sum(1 for g in view.missing if g.in_policy and g.exception is not None)
        for gap in view.gaps:
            if gap.deadline is not None:
                deadlines[gap.deadline.state] += 1
            severities[gap.patch.severity] += 1
            classes[gap.patch.classification or "Unclassified"] += 1
            if gap.age_days is not None:
                ages.append(gap.age_days)
    return Totals(
        machines={s: machines[s] for s in STATUSES},
        missing=sum(severities.values()),
        by_severity={s: severities[s] for s in PATCH_SEVERITIES},
        by_classification=dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
        oldest_missing_days=max(ages, default=None),
        reboots_pending=reboots,
        overdue=deadlines["overdue"],
        due_soon=deadlines["due_soon"],
        no_deadline=deadlines["no_release_date"],
        excepted_patches=excepted,
    )


@dataclass(frozen=True, slots=True)
class RingView:
    policy: str
    name: str  # a ring of the policy, or NO_RING_LABEL
    totals: Totals

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "totals": self.totals.document()}


@dataclass(frozen=True, slots=True)
class PolicyView:
    name: str
    kind: PolicyKind
    rings: tuple[RingView, ...]
    totals: Totals
    runs_read: bool = False  # PatchPilot's runs were read: a null `last_run` means none patched it
    sla: dict[str, str] = field(default_factory=dict)  # compliance.sla, durations as the policy writes them

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "runs_read": self.runs_read,
            "sla": dict(self.sla),
            "rings": [r.document() for r in self.rings],
            "totals": self.totals.document(),
        }


@dataclass(frozen=True, slots=True)
class ComplianceView:
    generated_at: datetime
    policies: tuple[PolicyView, ...]
    instances: tuple[InstanceView, ...]  # by policy, then ring order, then id
    totals: Totals

    @property
    def rings(self) -> tuple[RingView, ...]:
        return tuple(r for p in self.policies for r in p.rings)

    @property
    def runs_read(self) -> bool:
        """Some policy's runs were read: the reports show the last PatchPilot run."""
        return any(p.runs_read for p in self.policies)

    @property
    def has_sla(self) -> bool:
        """Some policy sets SLAs: the reports show deadlines."""
        return any(p.sla for p in self.policies)

    @property
    def title(self) -> str:
        return ", ".join(p.name for p in self.policies)

    def document(self) -> dict[str, Any]:
        """The `patchpilot compliance --json` shape (docs/compliance.md)."""
        return {
            "version": DOCUMENT_VERSION,
            "generated_at": _iso(self.generated_at),
            "totals": self.totals.document(),
            "policies": [p.document() for p in self.policies],
            "instances": [i.document() for i in self.instances],
        }


def build_view(
    policy: Policy,
    instances: Sequence[Instance],
    states: Iterable[PatchState],
    now: datetime,
    last_runs: Mapping[str, LastRun] | None = None,
    broken: Mapping[str, LeftFailed] | None = None,
) -> ComplianceView:
    """The view of one policy's fleet. Rings and exclusions are the planner's (`planning.assign`);
    an instance without a PatchState counts as unknown, never compliant. `last_runs` is
    `last_patched`'s answer; None when the runs could not be read (the reports then leave it out).
    `broken` is `left_failed`'s answer: those machines need attention, whatever their assessment.
    The exceptions in force at `now` make machines (and patches) excepted; an expired one counts
    for nothing."""
    by_id = {s.instance_id: s for s in states}
    members, excluded = assign(policy, instances, now)
    placed: list[tuple[Instance, str | None, Status | None, str, PolicyException | None]] = [
        (i, ring, None, "", None) for ring, group in members.items() for i in group
    ]
    for exclusion in excluded:
        ring = ring_of(policy, exclusion.instance)
        if exclusion.exception is not None:
            placed.append((exclusion.instance, ring, "excepted", exclusion.reason, exclusion.exception))
        elif exclusion.reason == NO_RING:
            placed.append((exclusion.instance, None, "unmanaged", "matched no ring of the policy: never patched", None))
        else:
            placed.append((exclusion.instance, ring, "exposed", f"{exclusion.reason}: never patched", None))
    views = [
        _with_left_failed(
            _instance_view(policy, i, ring, status, reason, by_id.get(i.id), now, (last_runs or {}).get(i.id), ex),
            (broken or {}).get(i.id),
        )
        for i, ring, status, reason, ex in placed
    ]
    rings = [r.name for r in policy.rings]
    sla = {key: format_duration(value) for key, value in (policy.compliance.sla if policy.compliance else {}).items()}
    return _assemble(now, [_policy_view(policy.name, policy.kind, rings, views, last_runs is not None, sla)], views)


def _instance_view(
    policy: Policy,
    instance: Instance,
    ring: str | None,
    placed: Status | None,
    reason: str,
    state: PatchState | None,
    now: datetime,
    last_run: LastRun | None,
    exception: PolicyException | None = None,
) -> InstanceView:
    state = state or PatchState(instance.id, error="no assessment returned for this machine")
    sla = placed != "unmanaged"  # a machine in no ring is not the policy's: its patches have no deadline
    missing = tuple(
        _gap_view(policy, instance, p, now, exception, sla) for p in sorted(state.missing, key=_patch_order)
    )
    status: Status
    if placed is not None:
        status = placed
        if state.error:
            reason = f"{reason}; no assessment: {state.error}"
    elif state.error:
        status, reason = "unknown", f"no assessment: {state.error}"
    else:
        lacking = sum(g.counts for g in missing)
        if lacking or state.reboot_pending:
            status = "non_compliant"
            parts = [plural(lacking, "missing patch")] if lacking else []
            if overdue := sum(g.overdue for g in missing):
                parts.append(f"{overdue} overdue")
            reason = ", ".join([*parts, *(["reboot pending"] if state.reboot_pending else [])])
        else:
            status = "compliant"
    return InstanceView(
        policy=policy.name,
        id=instance.id,
        name=instance.short_name,
        cloud=instance.cloud,
        region=instance.region,
        ring=ring,
        status=status,
        reason=reason,
        missing=missing,
        reboot_pending=state.reboot_pending,
        assessed_at=state.assessed_at,
        last_install_at=state.last_install_at,
        notes=state.notes,
        last_run=last_run,
        exception=exception,
    )


def _gap_view(
    policy: Policy, instance: Instance, patch: MissingPatch, now: datetime, machine: PolicyException | None, sla: bool
) -> PatchGapView:
    """A missing patch: excepted by the machine's exception or a patch exception in force; else,
    when the policy installs it (and `sla`), with its deadline under the policy's SLA."""
    wanted = in_policy(policy.patches, patch)
    exception = machine or patch_exception(policy, instance, patch.id, now)
    deadline = deadline_of(policy.compliance, patch, now) if sla and wanted and exception is None else None
    return PatchGapView(patch, _age(patch.released_at, now), wanted, exception, deadline)


def _with_left_failed(view: InstanceView, failed: LeftFailed | None) -> InstanceView:
    """A machine a run left broken needs attention: never compliant, whatever its assessment says
    (it may well have every patch: the ones that broke it)."""
    if failed is None:
        return view
    snapshots = ", ".join(failed.snapshot_ids) or "no snapshot"
    reason = f"run {failed.run_id} left it failed: {failed.reason}; restore it by hand from {snapshots}"
    if view.status != "compliant":
        reason += f" (and {STATUS_LABELS[view.status]}: {view.reason})" if view.reason else ""
    return replace(view, status="needs_attention", reason=reason, left_failed=failed)


def _patch_order(patch: MissingPatch) -> tuple[int, str]:
    return (PATCH_SEVERITIES.index(patch.severity), patch.id)


def _age(released: datetime | None, now: datetime) -> int | None:
    return None if released is None else max((now - released).days, 0)


def _policy_view(
    name: str,
    kind: PolicyKind,
    rings: Sequence[str],
    views: Sequence[InstanceView],
    runs_read: bool,
    sla: Mapping[str, str] | None = None,
) -> PolicyView:
    names = list(rings) + ([NO_RING_LABEL] if any(v.ring is None for v in views) else [])
    ring_views = tuple(
        RingView(name, ring, totals_of(v for v in views if (v.ring or NO_RING_LABEL) == ring)) for ring in names
    )
    return PolicyView(name, kind, ring_views, totals_of(views), runs_read, dict(sla or {}))


def _assemble(now: datetime, policies: Sequence[PolicyView], views: Sequence[InstanceView]) -> ComplianceView:
    order = {(r.policy, r.name): k for k, r in enumerate(r for p in policies for r in p.rings)}
    ordered = sorted(views, key=lambda v: (order[(v.policy, v.ring or NO_RING_LABEL)], v.name, v.id))
    return ComplianceView(now, tuple(policies), tuple(ordered), totals_of(ordered))


def merge_views(views: Sequence[ComplianceView]) -> ComplianceView:
    """One report over several policies (a machine two policies cover is listed under each); the
    totals are over every row. ValueError for no view, or a policy given twice."""
    if not views:
        raise ValueError("no compliance view to merge")
    policies = [p for v in views for p in v.policies]
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"a policy is given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    instances = [i for v in views for i in v.instances]
    return _assemble(max(v.generated_at for v in views), policies, instances)


def _managed(view: ComplianceView) -> list[InstanceView]:
    return [i for i in view.instances if i.status not in ("excepted", "exposed", "unmanaged")]


def unexcepted_overdue(view: ComplianceView) -> list[tuple[InstanceView, PatchGapView]]:
    """Every (machine, patch) past its SLA deadline that no exception covers, exposed machines'
    too (excluding a machine does not except it from the SLA): `patchpilot compliance` exits 1."""
    return [(i, g) for i in view.instances for g in i.overdue]


def nothing_pending(view: ComplianceView) -> bool:
    """True when every machine the policy patches is compliant: a non-periodic policy's window
    then has nothing to do. A machine without an assessment counts as pending (it may lack patches)."""
    managed = _managed(view)
    return bool(managed) and all(i.status == "compliant" for i in managed)


def pending_summary(view: ComplianceView) -> str:
    """One line saying why `nothing_pending` answers as it does."""
    managed = _managed(view)
    if not managed:
        return "no machine to patch"
    if nothing_pending(view):
        return f"nothing pending on {_machines(len(managed))}"
    lacking = [i for i in managed if i.status == "non_compliant"]
    unknown = [i for i in managed if i.status == "unknown"]
    broken = [i for i in managed if i.status == "needs_attention"]
    parts = []
    if broken:
        parts.append(f"{_machines(len(broken))} left broken by a run (restore by hand)")
    if lacking:
        count = sum(len(i.gaps) for i in lacking)
        parts.append(f"{_machines(len(lacking))} lack {plural(count, 'patch')} or a reboot")
    if unknown:
        parts.append(f"{_machines(len(unknown))} without an assessment")
    return f"{'; '.join(parts)} (of {_machines(len(managed))})"


def _machines(count: int) -> str:
    return plural(count, "machine")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
