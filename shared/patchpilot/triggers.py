"""When a scheduled run starts: a frequent timer asks, the policy's schedule answers.

Cloud schedulers cannot say "the Saturday after Patch Tuesday, 02:00 Tokyo time" (EventBridge
Scheduler has no offset, Azure's NCRONTAB no `#`), so both clouds fire a timer every few
minutes and this pure function decides. The run id is derived from the window, so a timer that
fires twice, or two timers, start one run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, NamedTuple
from zoneinfo import ZoneInfo

from patchpilot.policy import Policy, Schedule, Window
from patchpilot.policy.exceptions import describe, expired_between
from patchpilot.policy.fields import format_duration
from patchpilot.policy.freeze import Freeze, Freezes
from patchpilot.policy.model import Emergency
from patchpilot.policy.schedule import AwsCron, window_starts

if TYPE_CHECKING:
    from patchpilot.engine.messages import Notify

TIMER_PERIOD = timedelta(minutes=15)  # how often the clouds' timers fire (template.yaml, function_app)
LOOK_BACK = (timedelta(days=40), timedelta(days=400))  # where `previous_window_start` looks, nearest first
# How far ahead a run without a window end (an emergency run) looks for a freeze that ends it.
RUN_LOOKAHEAD = timedelta(days=31)
UTC_ZONE = ZoneInfo("UTC")


class TriggerDecision(NamedTuple):
    start: bool
    reason: str
    run_id: str = ""
    window: Window | None = None
    frozen: Freeze | None = None  # the freeze the window starts in: it does not start (docs/governance.md)
    cut_by: Freeze | None = None  # the freeze that starts inside the window: the run's window ends there

    @property
    def window_end(self) -> datetime | None:
        """Where the run's window ends when a freeze cuts it short; None: the window's own end."""
        return self.cut_by.start if self.cut_by is not None else None


def freeze_of(policy: Policy, window: Window) -> tuple[Freeze | None, Freeze | None]:
    """The freeze `window` starts in (it does not start), else the first freeze that starts inside
    it (it ends there): (frozen, cut_by), at most one of them set."""
    freezes = policy.freezes()
    if not freezes:
        return None, None
    if (frozen := freezes.at(window.start)) is not None:
        return frozen, None
    return None, freezes.first_starting(window.start, window.end)


class FreezeGate(NamedTuple):
    """What the freezes say about a run that starts at `now` anywhere but at the timer's window
    start (a retry, a follow-up, an emergency run): `freeze_gate`."""

    frozen: Freeze | None = None  # a scheduled run's freeze at `now`: it does not start
    frozen_by: str | None = None  # an emergency run's freeze at `now`, described: its first ring waits for approval
    cut_by: Freeze | None = None  # the first freeze that begins before the run's window ends: no wave after its start
    zone: ZoneInfo | None = None  # the freezes' time zone (the policy's), to describe them in

    @property
    def window_end(self) -> datetime | None:
        """Where the run's window ends because of a freeze; None: its own end."""
        return self.cut_by.start if self.cut_by is not None else None

    def local(self, moment: datetime) -> str:
        """`moment` to the minute in the freezes' time zone, as a refusal names it."""
        return moment.astimezone(self.zone or UTC_ZONE).isoformat(timespec="minutes")

    def describe_frozen(self) -> str:
        """The freeze that stops the run, with its dates in the policy's time zone."""
        assert self.frozen is not None, "only a frozen gate has a freeze to describe"
        return self.frozen.describe(self.zone or UTC_ZONE)


def freeze_gate(
    policy: Policy, freezes: Freezes, now: datetime, window_end: datetime | None, *, emergency: bool
) -> FreezeGate:
    """The freeze rules of a scheduled window (docs/governance.md), for a run that starts at `now`
    and whose window ends at `window_end` (None: it has none; `RUN_LOOKAHEAD` is looked at):

    - a scheduled run (`emergency` False) inside a freeze does not start (`frozen`);
    - an emergency run (an advisory's, a follow-up or retry of one, an emergency policy run by hand)
      inside a freeze starts, its first ring waiting for approval with the freeze named
      (`frozen_by`), unless `emergency.freeze: pass` lets it through, freezes and all;
    - either way, a freeze that begins before the window ends ends it there (`cut_by`): a run
      already under way starts no wave after the freeze has begun.

    `freezes` are the policy's as deployed now (its calendar and Change Calendars read again)."""
    if not freezes:
        return FreezeGate()
    end, zone = window_end or now + RUN_LOOKAHEAD, freezes.zone
    if emergency:
        if (policy.emergency or Emergency()).freeze == "pass":
            return FreezeGate()
        current = freezes.at(now)
        frozen_by = current.describe(zone) if current is not None else None
        return FreezeGate(frozen_by=frozen_by, cut_by=freezes.first_starting(now, end), zone=zone)
    if (frozen := freezes.at(now)) is not None:
        return FreezeGate(frozen=frozen, zone=zone)
    return FreezeGate(cut_by=freezes.first_starting(now, end), zone=zone)


def runs_on_demand(policy: Policy) -> bool:
    """Whether the policy's runs start when asked, not in its schedule's windows: an emergency
    policy, and a policy without a schedule (an advisory's emergency run has none)."""
    return policy.kind == "emergency" or policy.schedule is None


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
    started = f"window {window.start.isoformat(timespec='minutes')} of {policy.name}"
    zone = policy.schedule.zone
    frozen, cut_by = freeze_of(policy, window)
    if frozen is not None:
        reason = f"{started} falls in freeze {frozen.describe(zone)}: it does not start"
        return TriggerDecision(False, reason, scheduled_run_id(policy, window), window, frozen=frozen)
    reason = f"{started} has begun"
    if cut_by is not None:
        reason += f"; freeze {cut_by.describe(zone)} ends it early"
    return TriggerDecision(True, reason, scheduled_run_id(policy, window), window, cut_by=cut_by)


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
    frozen, cut_by = freeze_of(policy, window)
    if frozen is not None:
        text = (
            f"Run {run_id} of policy {policy.name} will not start: its window "
            f"{window.start.isoformat(timespec='minutes')} falls in freeze {frozen.describe(policy.schedule.zone)}"
        )
    elif cut_by is not None:
        text += f"; freeze {cut_by.describe(policy.schedule.zone)} ends it early: no wave starts after its start"
    previous = previous_window_start(policy.schedule, window.start)
    ended = expired_between(policy, previous or window.start - LOOK_BACK[-1], window.start)
    if ended and frozen is None:
        text += ". Exceptions that ended since the last window, their machines and patches are patched again: "
        text += "; ".join(describe(e) for e in ended)
    from patchpilot.engine.messages import Notify  # the timer's ticks load the engine's messages only here

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
