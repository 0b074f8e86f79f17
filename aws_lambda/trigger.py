"""The timer (EventBridge Scheduler, every 15 minutes): start the scheduled run when its window begins."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from aws_lambda.observability import logger, metrics, tracer
from patchpilot.adapters.aws.runtime import deps


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
