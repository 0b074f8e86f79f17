"""When a scheduled run starts: a frequent timer asks, the policy's schedule answers.

Cloud schedulers cannot say "the Saturday after Patch Tuesday, 02:00 Tokyo time" (EventBridge
Scheduler has no offset, Azure's NCRONTAB no `#`), so both clouds fire a timer every few
minutes and this pure function decides. The run id is derived from the window, so a timer that
fires twice, or two timers, start one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from patchpilot.engine.messages import Notify
from patchpilot.policy import Policy, Schedule, Window
from patchpilot.policy.exceptions import describe, expired_between
from patchpilot.policy.fields import format_duration
from patchpilot.policy.schedule import AwsCron, window_starts

TIMER_PERIOD = timedelta(minutes=15)  # how often the clouds' timers fire (template.yaml, function_app)
LOOK_BACK = (timedelta(days=40), timedelta(days=400))  # where `previous_window_start` looks, nearest first


@dataclass(frozen=True)
class TriggerDecision:
    start: bool
    reason: str
    run_id: str = ""
    window: Window | None = None


def scheduled_run_id(policy: Policy, window: Window) -> str:
    return f"{policy.name}-{window.start:%Y%m%d-%H%M}"  # local time of the window


def scheduled_trigger(policy: Policy, now: datetime, period: timedelta = TIMER_PERIOD) -> TriggerDecision:
    """Start a run when a window of the policy began within the last timer period."""
    if policy.schedule is None:
        return TriggerDecision(False, f"policy {policy.name} has no schedule")
    (window,) = policy.schedule.windows(now - period, 1)
    if window.start > now:
        when = window.start.isoformat(timespec="minutes")
        return TriggerDecision(False, f"next window of {policy.name} starts {when}", window=window)
    return TriggerDecision(
        True,
        f"window {window.start.isoformat(timespec='minutes')} of {policy.name} has begun",
        scheduled_run_id(policy, window),
        window,
    )


def heads_up(policy: Policy, now: datetime, lead: timedelta, period: timedelta = TIMER_PERIOD) -> Notify | None:
    """The "run scheduled" notice, when `lead` before a window of the policy fell within the last
    timer period (else None). Its id is derived from the window, like the run's: a timer that
    fires twice announces one run (the notifier skips a notice id it has sent). A frozen or an
    emergency policy's schedule starts no run: nothing to announce."""
    if policy.schedule is None or policy.kind in ("frozen", "emergency"):
        return None
    (window,) = policy.schedule.windows(now + lead - period, 1)
    announce_at = window.start - lead
    if not now - period < announce_at <= now:
        return None
    run_id = scheduled_run_id(policy, window)
    text = (
        f"Run {run_id} of policy {policy.name} starts {window.start.isoformat(timespec='minutes')}"
        f" ({format_duration(window.end - window.start)} window)"
    )  # the same text from every tick of the period, like the id
    previous = previous_window_start(policy.schedule, window.start)
    ended = expired_between(policy, previous or window.start - LOOK_BACK[-1], window.start)
    if ended:
        text += ". Exceptions that ended since the last window, their machines and patches are patched again: "
        text += "; ".join(describe(e) for e in ended)
    return Notify(id=f"{run_id}:notify:run_scheduled", run_id=run_id, topic="run_scheduled", text=text)


def previous_window_start(schedule: Schedule, before: datetime) -> datetime | None:
    """The start of the last window before `before`, within `LOOK_BACK`; None when there is none."""
    for back in LOOK_BACK:
        last = None
        for start in window_starts(schedule.rule, schedule.at, schedule.offset_days, schedule.zone, before - back):
            if start >= before:
                break
            last = start
        if last is not None:
            return last
    return None


def fired_within(rule: AwsCron, zone: ZoneInfo, now: datetime, period: timedelta = TIMER_PERIOD) -> datetime | None:
    """The time `rule` fired within the last timer period (now - period, now], if it did: what a
    frequent timer uses to run something on a cron of the policy's (compliance scans, digests)."""
    (fire,) = islice(window_starts(rule, None, 0, zone, now - period + timedelta(microseconds=1)), 1)
    return fire if fire <= now else None
