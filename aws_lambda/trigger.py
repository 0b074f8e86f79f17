"""The timer (EventBridge Scheduler, every 15 minutes): start the scheduled run when its window begins.

The runtime imports each of its parts where it builds it: the run store, the queue and the fleet
only when a run starts. What every invocation uses is imported here (the F401 import) and the
policy's validator built (each tick reads the policy), so that Lambda's init phase pays for them
rather than the first request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from aws_lambda import loaded
from aws_lambda.observability import logger, metrics, tracer
from patchpilot import triggers  # noqa: F401
from patchpilot.bootstrap.aws import deps
from patchpilot.policy import Policy

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext  # for the annotations only

Policy.model_rebuild()  # deferred where a run builds it into its own (policy/model.py)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    decision = deps(logger).trigger()
    if decision.start:
        logger.set_correlation_id(decision.run_id)
        metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=1)
    logger.info(decision.reason, extra={"start": decision.start})
    return {"start": decision.start, "run_id": decision.run_id, "reason": decision.reason}


loaded()  # the module has loaded: garbage collection resumes (see aws_lambda/__init__.py)
