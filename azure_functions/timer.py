"""The timer (every 15 minutes): start the scheduled run when the policy's window begins, and read
Azure's own advisories (Defender for Cloud, Update Manager's critical updates)."""

from __future__ import annotations

import azure.functions as func

from azure_functions.observability import invocation, log, set_correlation_id
from patchpilot.bootstrap.azure import deps
from patchpilot.errors import InputError
from patchpilot.triggers import TriggerDecision

# NCRONTAB with seconds: at second 0 of every 15th minute. The policy's schedule (time zone,
# "Saturday after Patch Tuesday") is applied in code: patchpilot.triggers.TIMER_PERIOD.
SCHEDULE = "0 */15 * * * *"

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # its __init__ is not annotated


def on_timer(past_due: bool, invocation_id: str = "") -> TriggerDecision:
    with invocation("timer", invocation_id):
        if past_due:
            log.warning("the timer is late (the app was stopped or busy); deciding on the current time")
        try:
            decision = deps(log).trigger()
        except InputError as error:  # a broken policy: said clearly, then the invocation fails
            log.error("the deployed policy is invalid", extra={"problems": error.render()})
            raise
        if decision.start:
            set_correlation_id(decision.run_id)
        log.info(decision.reason, extra={"start": decision.start})
        try:  # Defender's findings and critical updates: emergency runs, as Inspector's on AWS
            for line in deps(log).azure_advisories().lines():
                log.info(line)
        except Exception as error:  # a failed read never stops the tick; the next tick reads again
            log.warning("Azure's advisories were not read: %s", error)
        try:
            purged = deps(log).purge_lapsed()
        except Exception as error:  # housekeeping: the next tick tries again
            log.warning("lapsed claims and leases were not purged: %s", error)
        else:
            if purged:
                log.info("purged %d lapsed claims and leases", purged)
        return decision


@bp.function_name("timer")
@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, run_on_startup=False, use_monitor=True)
def timer(timer: func.TimerRequest, context: func.Context) -> None:
    on_timer(timer.past_due, context.invocation_id)
