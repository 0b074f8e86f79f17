"""The maintenance watch (docs/maintenance-watch.md): what the sources found, sorted by when it is
due and flagged against the policy's next patch window, and the notices it makes: a digest at the
policy's digest times and an alert for each item due before the next window.

Pure: the caller reads the sources (`ports.MaintenanceSource`) and passes `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from patchpilot.engine.messages import Notify
from patchpilot.inventory import Instance
from patchpilot.maintenance.model import SOURCE_NAMES, MaintenanceItem, WatchResult
from patchpilot.policy import Policy, Window
from patchpilot.policy.exceptions import describe as describe_exception
from patchpilot.policy.exceptions import expiring_within
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import MaintenanceWatchSettings, PolicyException
from patchpilot.wording import plural

Concern = Literal["fleet", "frozen", "other"]
# A policy of these kinds patches in its schedule's windows; the others never start a scheduled run.
PATCHING_KINDS = frozenset({"scheduled", "non_periodic"})
DIGEST_LINES = 200  # items listed in a digest's text (the cards summarise further); the rest are counted


@dataclass(frozen=True, slots=True)
class WatchedItem:
    """One item as the watch sees it: what it concerns (a managed fleet machine, a frozen one, or
    another resource such as an RDS database) and when it falls."""

    item: MaintenanceItem
    concern: Concern
    note: str  # why it is frozen or outside the fleet; "" for a managed machine
    before_window: bool  # due before the next patch window (or within the horizon without one)
    within_horizon: bool  # listed in the digest
    in_progress: bool  # started, not ended

    @property
    def due_at(self) -> datetime | None:
        return self.item.due_at


@dataclass(frozen=True, slots=True)
class WatchView:
    policy: str
    now: datetime
    zone: ZoneInfo  # the watch's time zone: texts show times in it
    next_window: Window | None  # None: no schedule, or a kind that never patches on schedule
    alert_before: datetime  # the next window's start, else now + horizon
    horizon: timedelta
    items: tuple[WatchedItem, ...]  # not ended, by due time (undated last)
    unavailable: tuple[tuple[str, str], ...]  # (what, why): never "nothing scheduled"
    # The policy's exceptions in force that end within 14 days (docs/governance.md): the digest
    # lists them so their owners renew or let them lapse on purpose.
    expiring: tuple[PolicyException, ...] = ()

    @property
    def due(self) -> tuple[WatchedItem, ...]:
        """The items due before the next window: each one an alert."""
        return tuple(w for w in self.items if w.before_window)

    @property
    def listed(self) -> tuple[WatchedItem, ...]:
        """What the digest and the table show: everything within the horizon."""
        return tuple(w for w in self.items if w.within_horizon)

    @property
    def complete(self) -> bool:
        return not self.unavailable

    def document(self) -> dict[str, Any]:
        """The view as JSON (`patchpilot maintenance --json`), a contract: docs/maintenance-watch.md."""
        window = self.next_window
        return {
            "policy": self.policy,
            "now": _iso(self.now),
            "next_window": {"start": _iso(window.start), "end": _iso(window.end)} if window else None,
            "alert_before": _iso(self.alert_before),
            "horizon": format_duration(self.horizon),
            "complete": self.complete,
            "unavailable": [{"what": what, "reason": reason} for what, reason in self.unavailable],
            "summary": {
                "items": len(self.items),
                "within_horizon": len(self.listed),
                "before_window": len(self.due),
                "downtime": sum(1 for w in self.listed if w.item.downtime),
                "warnings": sum(1 for w in self.listed if w.item.warning),
            },
            "items": [_item_document(w) for w in self.items],
            "exceptions_expiring": [
                {"reason": e.reason, "owner": e.owner, "expires": e.expires.isoformat(), "patches": list(e.patches)}
                for e in self.expiring
            ],
        }


def watch_view(
    result: WatchResult,
    policy: Policy,
    instances: Sequence[Instance],
    now: datetime,
    horizon: timedelta | None = None,
) -> WatchView:
    """The items of `result` that have not ended by `now`, by when they are due, each flagged."""
    settings = policy.maintenance_watch or MaintenanceWatchSettings()
    horizon = settings.horizon if horizon is None else horizon
    next_window = None
    if policy.schedule is not None and policy.kind in PATCHING_KINDS:
        (next_window,) = policy.schedule.windows(now, 1)
    alert_before = next_window.start if next_window else now + horizon
    by_id = {i.id.lower(): i for i in instances}
    watched = []
    for item in result.items:
        if item.ends_at is not None and item.ends_at <= now:
            continue
        due = item.due_at
        concern, note = _concern(policy, by_id.get((item.instance_id or "").lower()))
        before = due is not None and due < alert_before
        watched.append(
            WatchedItem(
                item=item,
                concern=concern,
                note=note,
                before_window=before,
                within_horizon=due is None or before or due <= now + horizon,
                in_progress=item.starts_at is not None and item.starts_at <= now,
            )
        )
    watched.sort(key=lambda w: (w.due_at is None, w.due_at or now, w.item.id))
    return WatchView(
        policy=policy.name,
        now=now,
        zone=policy.zone_for(settings.timezone),
        next_window=next_window,
        alert_before=alert_before,
        horizon=horizon,
        items=tuple(watched),
        unavailable=result.unavailable,
        expiring=tuple(expiring_within(policy, now)),
    )


def _concern(policy: Policy, instance: Instance | None) -> tuple[Concern, str]:
    if instance is None:
        return "other", ""
    if policy.kind == "frozen":
        return "frozen", f"frozen: policy {policy.name} never patches it"
    if (frozen := policy.exclude.reason(instance)) is not None:  # the policy's exclusions: the frozen machines
        return "frozen", frozen
    if (unprotected := policy.unprotected_reason(instance)) is not None:
        return "other", unprotected
    if not any(ring.select.matches(instance) for ring in policy.rings):
        return "other", "in no ring of the policy"
    return "fleet", ""


# ---------------------------------------------------------------- notices


def digest_id(policy: str, slot: datetime) -> str:
    return f"{policy}:maintenance-digest:{slot.astimezone(UTC):%Y%m%dT%H%MZ}"


def alert_id(policy: str, item: MaintenanceItem) -> str:
    """The item and its due time: a rescheduled event is a new alert, a repeated read is not."""
    due = item.due_at
    return f"{policy}:maintenance-alert:{item.id}:{due.astimezone(UTC):%Y%m%dT%H%MZ}" if due else ""


def digest_notice(view: WatchView, slot: datetime) -> Notify:
    """The digest of the digest time `slot` (when the policy's digest cron fired,
    `triggers.fired_within`): its id is the slot's, so a timer firing twice sends one. Everything
    within the horizon, one line each, and the sources that could not be read."""
    listed = view.listed
    downtime = sum(1 for w in listed if w.item.downtime)
    warnings = sum(1 for w in listed if w.item.warning)
    horizon = format_duration(view.horizon)
    if listed:
        parts = [f"{len(view.due)} before the next window" if view.next_window else "no patch window ahead"]
        parts += [f"{downtime} with downtime"] if downtime else []
        parts += [plural(warnings, "warning")] if warnings else []
        head = f"{plural(len(listed), 'maintenance item')} within {horizon} for policy {view.policy}"
        head += f": {', '.join(parts)}."
    else:
        scope = "in the sources read" if view.unavailable else "by the clouds"
        head = f"No maintenance scheduled {scope} within {horizon} for policy {view.policy}."
    if view.due:
        when = "before the next window" if view.next_window else f"within {horizon}"
        head += f" Act on each one due {when}: it has an alert of its own."
    else:
        head += " Nothing to do now."
    if view.unavailable:
        unread = len(view.unavailable)
        holds = "it holds" if unread == 1 else "they hold"
        fix = "its access" if unread == 1 else "their access"
        head += f" {plural(unread, 'source')} could not be read: what {holds} is unknown; fix {fix} (Not read, below)."
    lines = [head, *_unavailable_lines(view)]
    if view.next_window is not None:
        lines.append(f"Next window: {_when(view.next_window.start, view.zone)}")
    lines += [f"- {describe(w, view.zone)}" for w in listed[:DIGEST_LINES]]
    if len(listed) > DIGEST_LINES:
        lines.append(f"{len(listed) - DIGEST_LINES} more are not listed here: patchpilot maintenance lists them all.")
    if view.expiring:
        lines.append(
            f"Exceptions ending within 14 days ({len(view.expiring)}): renew each in the policy, or let it end "
            "and its machines and patches are patched again."
        )
        lines += [f"- exception: {describe_exception(e)}" for e in view.expiring]
    return Notify(
        id=digest_id(view.policy, slot),
        run_id=view.policy,
        topic="maintenance_digest",
        text="\n".join(lines),
        severity="warning" if view.due or view.unavailable else "info",
    )


def alert_notices(view: WatchView) -> list[Notify]:
    """One alert per item due before the next window, its id from the item and its due time (the
    runtime claims each id before sending it, so a repeated read alerts once)."""
    notices = []
    for watched in view.due:
        item = watched.item
        before = (
            f"before the next patch window ({_when(view.next_window.start, view.zone)})"
            if view.next_window
            else f"within {format_duration(view.horizon)}"
        )
        state = "under way" if watched.in_progress else f"due {_when(watched.due_at, view.zone)}"
        text = f"{_subject(watched)}: {SOURCE_NAMES[item.source]} {item.kind} {state}, {before}."
        if item.downtime:
            text += " Plan for its downtime, or move it into a patch window where the cloud allows."
        else:
            text += " Nothing to do unless the machine cannot take it: no downtime is expected."
        lines = [text]
        if item.warning:
            lines.append(f"WARNING {item.warning}")
        if item.description:
            lines.append(_one_line(item.description))
        lines.append(f"Resource: {item.resource_id}")
        if item.deadline is not None and item.deadline != watched.due_at:
            lines.append(f"Deadline: {_when(item.deadline, view.zone)}")
        lines.append(f"Downtime: {'expected' if item.downtime else 'not expected'}")
        notices.append(
            Notify(
                id=alert_id(view.policy, item),
                run_id=view.policy,
                topic="maintenance_alert",
                text="\n".join(lines),
                severity="warning",
            )
        )
    return notices


def describe(watched: WatchedItem, zone: ZoneInfo) -> str:
    """One line: when, what, on which resource, and what it means."""
    item = watched.item
    when = "under way" if watched.in_progress else (_when(watched.due_at, zone) if watched.due_at else "no date yet")
    parts = [when, _subject(watched), f"{SOURCE_NAMES[item.source]} {item.kind}"]
    if item.description:
        parts.append(_one_line(item.description))
    if item.downtime:
        parts.append("downtime")
    if item.warning:
        parts.append(f"WARNING {item.warning}")
    if watched.before_window:
        parts.append("before the next window")
    return " · ".join(parts)


def _one_line(text: str) -> str:
    """A cloud's text on one line: a notice's lines are its card's parts (`notify.messages`)."""
    return " ".join(text.split())


def _subject(watched: WatchedItem) -> str:
    name = watched.item.resource_name or watched.item.resource_id
    return f"{name} ({watched.note})" if watched.note else name


def _unavailable_lines(view: WatchView) -> list[str]:
    return [f"Not read: {what}: {reason}" for what, reason in view.unavailable]


def _when(at: datetime | None, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if at else "no date yet"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _item_document(watched: WatchedItem) -> dict[str, Any]:
    item = watched.item
    return {
        "id": item.id,
        "source": item.source,
        "source_name": SOURCE_NAMES[item.source],
        "cloud": item.cloud,
        "resource_id": item.resource_id,
        "resource_name": item.resource_name,
        "instance_id": item.instance_id,
        "region": item.region,
        "account": item.account,
        "kind": item.kind,
        "description": item.description,
        "starts_at": _iso(item.starts_at),
        "ends_at": _iso(item.ends_at),
        "deadline": _iso(item.deadline),
        "due_at": _iso(item.due_at),
        "downtime": item.downtime,
        "warning": item.warning,
        "concern": watched.concern,
        "note": watched.note,
        "before_window": watched.before_window,
        "within_horizon": watched.within_horizon,
        "in_progress": watched.in_progress,
    }
