"""The step worker: one message of the steps queue per invocation.

The host deletes the message when the function returns and makes it visible again when it
raises; after `maxDequeueCount` (host.json) failed deliveries it moves it to `<queue>-poison`.
"""

from __future__ import annotations

import azure.functions as func

from azure_functions.observability import invocation, log, set_correlation_id
from patchpilot.bootstrap.azure import deps

# The queue's name is the app setting, resolved by the host (%...%) and read by the runtime.
QUEUE_SETTING = "PATCHPILOT_QUEUE"
CONNECTION = "AzureWebJobsStorage"

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # its __init__ is not annotated


def handle_step(message_id: str, body: str, dequeue_count: int, invocation_id: str = "") -> None:
    """Raises only when the message must be delivered again."""
    with invocation("step_worker", invocation_id, message_id=message_id, dequeue_count=dequeue_count):
        deps(log).handle_message(message_id, body, dequeue_count, on_run=set_correlation_id)
        log.info("message handled")


@bp.function_name("step_worker")
@bp.queue_trigger(arg_name="message", queue_name=f"%{QUEUE_SETTING}%", connection=CONNECTION)
def step_worker(message: func.QueueMessage, context: func.Context) -> None:
    handle_step(
        message.id or "",
        message.get_body().decode("utf-8", errors="replace"),
        message.dequeue_count or 1,
        context.invocation_id,
    )
