"""The timer (every 15 minutes): the maintenance watch and the compliance scans, the "run
scheduled" heads-up, then the scheduled run when its window has begun (at most once), decided by
the policy's kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from patchpilot.app.compliance_timer import ComplianceTimer
from patchpilot.app.discovery import managed
from patchpilot.app.watch import CLAIM_MARGIN, MaintenanceWatch
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.ports import Announcer, Clock, PatchAssessor
from patchpilot.triggers import TriggerDecision


class StartRun(Protocol):
    """`Service.start`: `window_end` ends the run's window early (a freeze that cuts it short)."""

    def __call__(
        self, run_id: str, policy: Policy, instances: Sequence[Instance], /, *, window_end: datetime | None = None
    ) -> object: ...


def never_elsewhere(policy: Policy) -> TriggerDecision | None:
    """The timer runs every policy's windows (the AWS runtime, the tests)."""
    return None


class Timer:
    """One tick over the ports a runtime gives: the deployed `policy()`, the clock, the watch and
    the compliance timer, the (cached) discovery, the fleet's assessor, the announcer and the
    start of a run (`start()`: `Service.start`, built only when a run starts).
    `scheduled_elsewhere(policy)` is a decision when something else runs the policy's windows
    (Azure Update Manager schedules), None when the timer does."""

    def __init__(
        self,
        *,
        policy: Callable[[], Policy],
        clock: Clock,
        watch: MaintenanceWatch,
        compliance: ComplianceTimer,
        discovered: Callable[[Policy, datetime], list[Instance]],
        assessor: Callable[[], PatchAssessor],
        announcer: Callable[[], Announcer],
        start: Callable[[], StartRun],
        log: Any,
        scheduled_elsewhere: Callable[[Policy], TriggerDecision | None] = never_elsewhere,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.watch = watch
        self.compliance = compliance
        self.discovered = discovered
        self.assessor = assessor
        self.announcer = announcer
        self.start = start
        self.log = log
        self.scheduled_elsewhere = scheduled_elsewhere

    def trigger(self) -> TriggerDecision:
        policy, now = self.policy(), self.clock.now()
        self.watch.tick(policy, now)  # hourly reads, alerts and digests (never raises)
        self.compliance.tick(policy, now)  # never raises
        held = self.scheduled_elsewhere(policy)
        if held is not None:
            return held
        decision = self.scheduled_decision(policy, now)  # by the policy's kind
        self.announcer().announce(policy, now)  # "run scheduled", a while before a window
        if decision.start:
            # every instance found, the unreachable ones included: planned once, skipped at the probe
            instances = self.discovered(policy, now)
            self.start()(decision.run_id, policy, instances, window_end=decision.window_end)
        return decision

    def scheduled_decision(self, policy: Policy, now: datetime) -> TriggerDecision:
        """Whether the timer starts the scheduled run, by the policy's kind: a frozen or an
        emergency policy never does; a non-periodic one skips a window in which none of its
        machines lacks anything (and says so, once per window: the notice id is the window's, claimed)."""
        from patchpilot.triggers import scheduled_trigger

        if policy.kind == "frozen":
            return TriggerDecision(False, f"policy {policy.name} is frozen: never patched, no scheduled run")
        if policy.kind == "emergency":
            return TriggerDecision(
                False, f"policy {policy.name} is an emergency policy: only advisories start its runs"
            )
        decision = scheduled_trigger(policy, now)
        if decision.frozen is not None and decision.window is not None:
            self._say_frozen(policy, decision, now)
            return decision
        if not decision.start or policy.kind != "non_periodic":
            return decision
        from patchpilot.compliance.render import skipped_notice
        from patchpilot.compliance.report import build_view, nothing_pending, pending_summary

        try:
            instances = managed(policy, self.discovered(policy, now))
            view = build_view(policy, instances, self.assessor().patch_states(instances), now)
        except Exception as error:  # the window would be lost (the next tick is past it): patch
            self.log.warning("policy %s: pending patches not read (%s): the run starts", policy.name, error)
            return decision
        if not nothing_pending(view):
            return decision
        notice = skipped_notice(decision.run_id, policy.name, pending_summary(view))
        # Sent once per channel across containers: a retried tick in another one says it once.
        until = (decision.window.end if decision.window else now) + CLAIM_MARGIN
        self.announcer().send(notice, policy.notifications, keep_until=until)
        return TriggerDecision(False, f"skipped: {pending_summary(view)}", decision.run_id, decision.window)

    def _say_frozen(self, policy: Policy, decision: TriggerDecision, now: datetime) -> None:
        """The one `run_skipped` notice of a window that starts inside a freeze, naming the freeze."""
        from patchpilot.compliance.render import frozen_notice

        assert decision.frozen is not None and decision.window is not None and policy.schedule is not None
        zone = policy.schedule.zone
        notice = frozen_notice(decision.run_id, policy.name, decision.window.start, decision.frozen, zone)
        self.log.info("policy %s: %s", policy.name, decision.reason)
        self.announcer().send(notice, policy.notifications, keep_until=decision.window.end + CLAIM_MARGIN)
