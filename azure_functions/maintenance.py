"""Azure Update Manager's pre- and post-maintenance events (Event Grid system topic on a
maintenance configuration; infra/azure/modules/maintenance-events.bicep subscribes these).

The pre-event arrives 30-40 minutes before the window: PatchPilot snapshots the scheduled
machines, and cancels the maintenance run if that fails before its cut-off. The post-event
comes when Update Manager is done. Event Grid retries an invocation that raises: a malformed
event is answered in the log and not raised, so it is not delivered again and again.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func

from azure_functions.observability import invocation, log
from patchpilot.bootstrap.azure import deps
from patchpilot.errors import InputError

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # its __init__ is not annotated


def as_delivered(event: func.EventGridEvent) -> dict[str, Any]:
    """The event in the Event Grid schema, as the host received it."""
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }


def on_maintenance_event(raw: object, function: str, invocation_id: str = "") -> list[str]:
    with invocation(function, invocation_id):
        try:
            answers = deps(log).maintenance_event(raw)
        except InputError as error:
            log.error("malformed maintenance event: not retried", extra={"problems": error.render()})
            return [f"malformed: {line}" for line in error.render().splitlines()]
        for answer in answers:
            log.info(answer)
        return answers


@bp.function_name("pre_maintenance")
@bp.event_grid_trigger(arg_name="event")
def pre_maintenance(event: func.EventGridEvent, context: func.Context) -> None:
    on_maintenance_event(as_delivered(event), "pre_maintenance", context.invocation_id)


@bp.function_name("post_maintenance")
@bp.event_grid_trigger(arg_name="event")
def post_maintenance(event: func.EventGridEvent, context: func.Context) -> None:
    on_maintenance_event(as_delivered(event), "post_maintenance", context.invocation_id)
