"""Security advisories from EventBridge: Inspector findings, AWS Health events and PatchPilot
advisories (template.yaml's AdvisoryFunction rules). Each is answered in the log and to on-call,
and the emergency run it decides on is started (`patchpilot.advisories.intake`).

A malformed event is answered in the log and not raised: EventBridge would only retry it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from aws_lambda import loaded
from aws_lambda.observability import logger, metrics, tracer
from patchpilot.bootstrap.aws import deps
from patchpilot.errors import InputError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext  # for the annotations only


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        answers = deps(logger).advisory(event)
    except InputError as error:
        logger.error("malformed advisory: not retried", extra={"problems": error.render()})
        metrics.add_metric(name="AdvisoriesMalformed", unit=MetricUnit.Count, value=1)
        return {"answers": [], "problems": error.render().splitlines()}
    metrics.add_metric(name="AdvisoriesAnswered", unit=MetricUnit.Count, value=len(answers))
    for answer in answers:
        logger.info(answer)
    return {"answers": answers}


loaded()  # the module has loaded: garbage collection resumes (see aws_lambda/__init__.py)
