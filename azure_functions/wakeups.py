"""Wake-ups (Event Grid: the Azure Resource Manager events of the fleet's subscription, filtered to
VM and snapshot writes and actions; infra/azure/main.bicep's `wakeTopic`): the runs whose awaited
step the event concerns get a wake-up on the steps queue (`patchpilot.app.waker`), and the worker
polls that step now instead of at its next poll.

An event that wakes nothing is answered in the log, never raised: Event Grid would only retry it.
"""

from __future__ import annotations

import azure.functions as func

from azure_functions.maintenance import as_delivered
from azure_functions.observability import invocation, log
from patchpilot.bootstrap.azure import deps

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # its __init__ is not annotated


def on_resource_event(raw: dict[str, object], invocation_id: str = "") -> list[str]:
    """The plain function behind the trigger: the ids of the wake-ups published."""
    with invocation("wake_up", invocation_id):
        woken = deps(log).wake(raw)
        for wake_up in woken:
            log.info("woken", extra={"run_id": wake_up.look.run_id, "look": wake_up.look.id})
        return [w.look.id for w in woken]


@bp.function_name("wake_up")
@bp.event_grid_trigger(arg_name="event")
def wake_up(event: func.EventGridEvent, context: func.Context) -> None:
    on_resource_event(as_delivered(event), context.invocation_id)
