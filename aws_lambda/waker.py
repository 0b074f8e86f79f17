"""The waker (EventBridge: Run Command and EBS snapshot completions; template.yaml's WakerFunction
rules): the runs whose awaited step the event concerns get a wake-up on the step queue
(`patchpilot.app.waker`), and the worker polls that step now instead of at its next poll.

It reads the run table and sends to the step queue; no fleet, no policy, no secret. What every
invocation uses is imported here (the F401 imports), so that Lambda's init phase pays for it.
An event that wakes nothing is answered in the log, never raised: EventBridge would only retry it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from aws_lambda import loaded
from aws_lambda.observability import logger, metrics, tracer
from patchpilot import wakeups  # noqa: F401
from patchpilot.adapters.aws import dynamodb_store, sqs_queue, wake_events  # noqa: F401
from patchpilot.bootstrap.aws import deps

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext  # for the annotations only


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    woken = deps(logger).wake(event)
    metrics.add_metric(name="RunsWoken", unit=MetricUnit.Count, value=len(woken))
    for wake_up in woken:
        logger.info("woken", extra={"run_id": wake_up.look.run_id, "look": wake_up.look.id, "at": str(wake_up.at)})
    return {"woken": [w.look.id for w in woken]}


loaded()  # the module has loaded: garbage collection resumes (see aws_lambda/__init__.py)
