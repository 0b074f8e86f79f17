"""Security advisories on Event Grid (`PatchPilot.Advisory` events on a custom topic, either
schema): each is answered in the log and to on-call, and the emergency run it decides on is
started (`patchpilot.advisories.intake`). A malformed event is answered in the log and not
raised: Event Grid would only deliver it again."""

from __future__ import annotations

import azure.functions as func

from azure_functions.maintenance import as_delivered
from azure_functions.observability import invocation, log
from patchpilot.bootstrap.azure import deps
from patchpilot.errors import InputError

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # its __init__ is not annotated


def on_advisory(raw: object, invocation_id: str = "") -> list[str]:
    with invocation("advisory", invocation_id):
        try:
            answers = deps(log).advisory(raw)
        except InputError as error:
            log.error("malformed advisory: not retried", extra={"problems": error.render()})
            return [f"malformed: {line}" for line in error.render().splitlines()]
        for answer in answers:
            log.info(answer)
        return answers


@bp.function_name("advisory")
@bp.event_grid_trigger(arg_name="event")
def advisory(event: func.EventGridEvent, context: func.Context) -> None:
    on_advisory(as_delivered(event), context.invocation_id)
