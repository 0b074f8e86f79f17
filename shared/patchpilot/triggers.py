"""When a scheduled run starts: a frequent timer asks, the policy's schedule answers.

Cloud schedulers cannot say "the Saturday after Patch Tuesday, 02:00 Tokyo time" (EventBridge
Scheduler has no offset, Azure's NCRONTAB no `#`), so both clouds fire a timer every few
minutes and this pure function decides. The run id is derived from the window, so a timer that
fires twice, or two timers, start one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from patchpilot.policy import Policy, Window

TIMER_PERIOD = timedelta(minutes=15)  # how often the clouds' timers fire (template.yaml, function_app)


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
