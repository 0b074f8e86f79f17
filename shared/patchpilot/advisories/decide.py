"""What to do with an advisory: start an emergency run, merge into one, report, or ignore. Pure.

One CVE, one run per merge window: the emergency run's id is derived from the policy, the CVE
and the window the advisory falls in (by the time its source emitted it), so a delivery that
arrives twice, or dozens of findings about one CVE, map to the same run id, and starting a run
id twice starts nothing new (`Service.start` is idempotent per run id). A run for the CVE that
is still going takes the advisory too, whichever window it was started in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from patchpilot.advisories.models import (
    Action,
    Advisory,
    AdvisoryAnswer,
    Delivery,
    HealthNotice,
    OpenRun,
    Unactionable,
)
from patchpilot.advisories.names import is_kb
from patchpilot.engine.messages import FollowUpRequested
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance, OsFamily
from patchpilot.planning import plan
from patchpilot.policy import Policy
from patchpilot.policy.model import ADVISORY_SEVERITIES, Emergency, PatchSelection

RUN_MARK = "emergency"
MAX_NAMED = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# An emergency run takes each machine's lease like any run (one machine, one run at a time).
NOTHING = "Nothing to do."
EXPOSED_STEP = "Nothing is patched: patch the exposed machines by hand if they cannot wait."
RUN_STEP = "Nothing to do: the run's notices say when a ring finishes or someone must act."
WAITS_FOR_LEASES = "machines another run is patching are waited for within the window, then skipped as held by it"


def emergency_run_id(policy: Policy, cve: str, at: datetime) -> str:
    """`<policy>-emergency-<CVE>-<start of the merge window, UTC>`."""
    window = (policy.emergency or Emergency()).merge_window
    start = _EPOCH + ((at.astimezone(UTC) - _EPOCH) // window) * window
    return f"{policy.name}-{RUN_MARK}-{cve}-{start:%Y%m%d-%H%M}"


def follow_up_run_id(run_id: str, instance_ids: Iterable[str]) -> str:
    """`<run>-followup-<8 hex digits of the sorted instance ids' hash>`: the same instances, the same follow-up."""
    digest = hashlib.sha256(",".join(sorted(set(instance_ids))).encode()).hexdigest()[:8]
    return f"{run_id}-followup-{digest}"


def follow_up_request(answer: AdvisoryAnswer, instances: Sequence[Instance], at: datetime) -> FollowUpRequested:
    """The event that records a merge answer's follow-up in the run it merged into (once per id)."""
    wanted = set(answer.not_covered)
    digest = answer.follow_up.rsplit("-", 1)[-1]
    return FollowUpRequested(
        id=f"{answer.run_id}:followup:{digest}",
        run_id=answer.run_id,
        follow_up_id=answer.follow_up,
        instances=[i for i in instances if i.id in wanted],
        reason=f"{answer.cve} ({answer.source} {answer.key})",
        at=at,
    )


def open_run_of(policy: Policy, run: Run) -> OpenRun | None:
    """The run as an emergency run of `policy` (or a follow-up of one), or None when it is another kind of run."""
    prefix = f"{policy.name}-{RUN_MARK}-"
    if not run.run_id.startswith(prefix):
        return None
    match = re.fullmatch(r"(.+)-\d{8}-\d{4}(?:-followup-[0-9a-f]{8})*", run.run_id[len(prefix) :])
    if match is None:
        return None
    instances = frozenset(i for w in run.waves for i in w.records)
    followed_up = frozenset(i.id for f in run.follow_ups for i in f.instances)
    promoted = run.promoted is not None
    return OpenRun(run.run_id, match.group(1), run.status, instances, followed_up, promoted, run.follow_up_running)


def fixes_os(fixes: Iterable[str]) -> set[OsFamily]:
    """The operating systems the fixes are for: KB ids are Windows updates, the rest Linux packages."""
    return {"windows" if is_kb(fix) else "linux" for fix in fixes}


def emergency_freeze(policy: Policy, now: datetime) -> str | None:
    """The freeze an emergency run starting at `now` is inside, named with its dates: its first ring
    then waits for approval (docs/governance.md). None outside a freeze, or with `emergency.freeze:
    pass` (the team lets emergency runs through unattended)."""
    if (policy.emergency or Emergency()).freeze == "pass":
        return None
    freeze = policy.freezes().at(now)
    return freeze.describe(policy.zone_for(None)) if freeze is not None else None


def emergency_policy(policy: Policy, advisory: Advisory) -> Policy:
    """The policy of the advisory's emergency run: only its fixes (no classification adds more),
    the emergency rings in the policy's order (staging stays first) with the emergency soak and
    approval, no schedule (no window: it starts now). Exclusions, rollout, health and rollback
    settings stay as they are."""
    emergency = policy.emergency or Emergency()
    chosen = [r for r in policy.rings if not emergency.rings or r.name in emergency.rings]
    rings = [
        ring.model_copy(update={"soak": emergency.soak, "approval": emergency.approval if k else "auto"})
        for k, ring in enumerate(chosen)
    ]
    patches = PatchSelection(
        classifications=[],
        include=list(advisory.fixes),
        exclude=[e for e in policy.patches.exclude if e not in advisory.fixes],
    )
    description = f"emergency run for {advisory.cve}: {', '.join(advisory.fixes)}"
    return policy.model_copy(update={"rings": rings, "patches": patches, "schedule": None, "description": description})


def decide_advisory(
    policy: Policy,
    delivery: Delivery,
    instances: Sequence[Instance],
    now: datetime,
    open_runs: Iterable[OpenRun] = (),
) -> AdvisoryAnswer:
    """The answer to one delivery, given the policy, its fleet and the policy's emergency runs."""
    match delivery:
        case Unactionable():
            return AdvisoryAnswer("ignore", delivery.source, delivery.key, f"Ignored: {delivery.reason}. {NOTHING}")
        case HealthNotice():
            return _health_answer(delivery, instances)
        case Advisory():
            return _advisory_answer(policy, delivery, instances, now, open_runs)


def _advisory_answer(
    policy: Policy, advisory: Advisory, instances: Sequence[Instance], now: datetime, open_runs: Iterable[OpenRun]
) -> AdvisoryAnswer:
    def answer(action: Action, text: str, **fields: Any) -> AdvisoryAnswer:
        return AdvisoryAnswer(action, advisory.source, advisory.key, text, cve=advisory.cve, **fields)

    head = f"{advisory.cve} ({advisory.severity}, {', '.join(advisory.fixes)})"
    if policy.kind == "frozen":  # every machine of the policy stays as it is: say which ones are exposed
        fleet = {i.id: i for i in instances}
        named, systems = set(advisory.instances), fixes_os(advisory.fixes)
        frozen = tuple(
            (i.id, f"policy {policy.name} is frozen")
            for i in instances
            if i.id in named or (advisory.fleet_wide and i.os in systems)
        )
        unknown = tuple(i for i in advisory.instances if i not in fleet)
        tail = _exposed_text(frozen, fleet) + _unknown_text(unknown)
        step = f" {EXPOSED_STEP}" if frozen else f" {NOTHING}"
        text = f"Ignored {head}: policy {policy.name} is frozen{tail}.{step}"
        return answer("ignore", text, exposed=frozen, unknown=unknown)
    emergency = policy.emergency
    if emergency is None:
        return answer(
            "ignore",
            f"Ignored {head}: policy {policy.name} has no emergency section. Nothing to do, unless its "
            "machines should be patched on advisories: give it one (docs/advisories.md).",
        )
    if ADVISORY_SEVERITIES.index(advisory.severity) < ADVISORY_SEVERITIES.index(emergency.min_severity):
        minimum = emergency.min_severity
        return answer("ignore", f"Ignored {head}: below the policy's minimum severity {minimum}. {NOTHING}")
    refused = [f for f in advisory.fixes if f in policy.patches.exclude]
    if refused:
        listed = ", ".join(refused)
        text = f"Ignored {head}: patches.exclude of policy {policy.name} lists {listed}."
        text += " Nothing to do, unless it should be patched: take it out of patches.exclude."
        return answer("ignore", text)

    fleet = {i.id: i for i in instances}
    unknown = tuple(i for i in advisory.instances if i not in fleet)
    systems = fixes_os(advisory.fixes)
    named = set(advisory.instances)
    concerned = [i for i in instances if i.id in named or (advisory.fleet_wide and i.os in systems)]
    layout = plan(emergency_policy(policy, advisory), concerned, now)
    targets = tuple(i.id for w in layout.waves for i in w.instances)
    exposed = tuple((e.instance.id, e.reason) for e in layout.excluded)
    tail = _exposed_text(exposed, fleet) + _unknown_text(unknown)
    if not targets:
        step = EXPOSED_STEP if exposed else NOTHING
        return answer("ignore", f"Ignored {head}: no instance to patch{tail}. {step}", exposed=exposed, unknown=unknown)

    at = advisory.at or now
    run_id = emergency_run_id(policy, advisory.cve, at)
    same_cve = [r for r in open_runs if r.cve == advisory.cve]
    current = next((r for r in same_cve if r.run_id == run_id), None) or next(
        (r for r in same_cve if not r.finished), None
    )
    if current is None:
        text = f"Emergency run {run_id} started for {head}: {_count(targets)}; {WAITS_FOR_LEASES}{tail}"
        text += f". {_step(exposed)}"
        return answer("start", text, run_id=run_id, instances=targets, exposed=exposed, unknown=unknown)
    covered = tuple(i for i in targets if i in current.instances)
    followed = tuple(i for i in targets if i not in current.instances and i in current.followed_up)
    missing = tuple(i for i in targets if i not in current.instances and i not in current.followed_up)
    text = f"Merged {head} into run {current.run_id} ({current.status}): it covers {_count(covered)}"
    if followed:
        text += f"; {_count(followed)} already in its follow-up runs"
    follow_up = ""
    if missing and current.may_follow_up:
        follow_up = follow_up_run_id(current.run_id, missing)
        if not current.finished:
            when = f"follow-up run {follow_up} starts when run {current.run_id} ends"
        elif current.follow_up_running:
            when = f"follow-up run {follow_up} starts when the follow-up of run {current.run_id} under way ends"
        else:
            when = f"started follow-up run {follow_up}"
        text += f"; {_count(missing)} not covered ({_names(missing, fleet)}): {when}, installing what it promoted"
    elif missing:
        if current.promoted:
            why = current.status
        else:
            why = "halted before promotion" if current.status == "halted" else "ended without a promoted, tested set"
        text += f"; NOT COVERED: run {current.run_id} {why}: {_names(missing, fleet)} are not patched"
    step = "Patch the ones not covered with a new run." if missing and not follow_up else _step(exposed)
    return answer(
        "merge",
        f"{text}{tail}. {step}",
        run_id=current.run_id,
        instances=covered,
        not_covered=missing,
        follow_up=follow_up,
        exposed=exposed,
        unknown=unknown,
    )


def _health_answer(notice: HealthNotice, instances: Sequence[Instance]) -> AdvisoryAnswer:
    what = f"AWS Health {notice.category} {notice.type_code} ({notice.service}, {notice.region or 'global'})"
    security = "SECURITY_NOTIFICATION" in notice.type_code
    if notice.status == "closed":
        return AdvisoryAnswer("ignore", "aws-health", notice.key, f"Ignored {what}: the event is closed. {NOTHING}")
    if notice.category != "scheduledChange" and not security:
        reason = "neither a scheduled change nor a security notification"
        return AdvisoryAnswer("ignore", "aws-health", notice.key, f"Ignored {what}: {reason}. {NOTHING}")
    fleet = {i.id: i for i in instances}
    ours = tuple(i for i in notice.affected if i in fleet)
    when = f" from {notice.start}" + (f" to {notice.end}" if notice.end else "") if notice.start else ""
    text = f"Reported to on-call: {what}{when}"
    if notice.affected:
        text += f"; affects {_names(ours, fleet) if ours else 'no instance of this fleet'}"
        others = len(notice.affected) - len(ours)
        if others:
            text += f" and {others} not in the inventory"
    if notice.affected and not ours:
        text += f". {NOTHING}"
    else:
        text += ". Check what it means for the machines it affects and act before it starts: PatchPilot does not."
    if notice.description:
        text += f" {notice.description.strip().splitlines()[0][:300]}"
    return AdvisoryAnswer("report", "aws-health", notice.key, text, instances=ours)


def _step(exposed: Sequence[tuple[str, str]]) -> str:
    """What to do once a run patches what an advisory concerns: nothing, but for the exposed ones."""
    if exposed:
        return "Patch the exposed ones by hand if they cannot wait; the run's notices tell the rest."
    return RUN_STEP


def _count(ids: Sequence[str]) -> str:
    return "1 instance" if len(ids) == 1 else f"{len(ids)} instances"


def _names(ids: Sequence[str], fleet: dict[str, Instance]) -> str:
    shown = ", ".join(fleet[i].short_name if i in fleet else i for i in ids[:MAX_NAMED])
    more = len(ids) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _exposed_text(exposed: Sequence[tuple[str, str]], fleet: dict[str, Instance]) -> str:
    if not exposed:
        return ""
    shown = "; ".join(f"{fleet[i].short_name if i in fleet else i} ({why})" for i, why in exposed[:MAX_NAMED])
    more = len(exposed) - MAX_NAMED
    return f". EXPOSED, not patched: {shown}" + (f" and {more} more" if more > 0 else "")


def _unknown_text(unknown: Sequence[str]) -> str:
    return f". Not in the inventory: {', '.join(unknown[:MAX_NAMED])}" if unknown else ""
