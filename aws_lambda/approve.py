"""The approval endpoint (Lambda Function URL): GET /approve?token=<signed, expiring link>.

The runtime imports each of its parts where it builds it; the parts that every invocation uses
are imported here (the F401 imports; the fleet only because the service is built over it), so
that Lambda's init phase builds their models rather than the first request."""

from __future__ import annotations

from html import escape
from typing import Any

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response, content_types
from aws_lambda_powertools.utilities.typing import LambdaContext

from aws_lambda import loaded
from aws_lambda.observability import logger, tracer
from patchpilot import service  # noqa: F401
from patchpilot.adapters.aws import dynamodb_store, fleet, secrets, sqs_queue  # noqa: F401
from patchpilot.adapters.aws.runtime import deps
from patchpilot.approvals import ApprovalLinkError

app = LambdaFunctionUrlResolver()


def _page(status: int, text: str) -> Response[str]:
    body = f"<!DOCTYPE html><title>PatchPilot</title><p>{escape(text)}</p>"
    return Response(status_code=status, content_type=content_types.TEXT_HTML, body=body)


@app.get("/approve")
@tracer.capture_method
def approve() -> Response[str]:
    token = app.current_event.get_query_string_value("token", "") or ""
    try:
        text = deps(logger).approve(token)
    except ApprovalLinkError as exc:
        logger.warning("approval refused", extra={"reason": str(exc)})
        return _page(403, str(exc))
    logger.info(text)
    return _page(200, text)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)


loaded()  # the module has loaded: garbage collection resumes (see aws_lambda/__init__.py)
