"""The step worker: SQS batches of run messages; a failed record is retried alone.

The runtime imports each of its parts where it builds it; the parts that every invocation uses
are imported here (the F401 imports), so that Lambda's init phase builds their models rather
than the first request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from aws_lambda import loaded
from aws_lambda.observability import logger, metrics, tracer
from patchpilot import service  # noqa: F401
from patchpilot.adapters.aws import dynamodb_store, fleet, sqs_queue  # noqa: F401
from patchpilot.bootstrap.aws import deps

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext  # for the annotations only

processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def handle_record(record: SQSRecord) -> None:
    deps(logger).handle_record(record.raw_event, on_run=logger.set_correlation_id)
    metrics.add_metric(name="MessagesHandled", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=handle_record, processor=processor, context=context)


loaded()  # the module has loaded: garbage collection resumes (see aws_lambda/__init__.py)
