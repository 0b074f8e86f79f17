"""The approval endpoint (Lambda Function URL): `/approve?token=<signed, expiring link>`, and
Slack's interactivity requests (button presses; the Slack app's Request URL is this function's).

GET only shows what the link approves, with a button that POSTs the token back: mail link
scanners and chat previews open links by GET and must not approve anything. POST approves.
A Slack request is recognised by its signature header and verified (`patchpilot.chat_approvals`).
Each decision records who made it (`patchpilot.approvals.Approver`): the Slack user, or with IAM
auth on the Function URL the caller's ARN (`requestContext.authorizer.iam.userArn`), else the
channel the link was sent to; and the source address (`requestContext.http.sourceIp`).

The runtime imports each of its parts where it builds it; the parts that every invocation uses
are imported here (the F401 imports), so that Lambda's init phase builds their models rather
than the first request. An approval needs no fleet and no `Service` (`grant_approval`), and one
route needs no router: the event is read through powertools' Function URL data class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent, event_source

from aws_lambda import loaded
from aws_lambda.observability import logger, tracer
from patchpilot.adapters.aws import dynamodb_store, secrets, sqs_queue  # noqa: F401
from patchpilot.app.approvals import answer_slack
from patchpilot.approvals import Approver, approval_page, approval_token
from patchpilot.bootstrap.aws import deps

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext  # for the annotations only


def _page(status: int, text: str, form_token: str | None = None, button: str = "Approve") -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
        "body": approval_page(text, form_token, button),
    }


def caller(event: LambdaFunctionUrlEvent) -> Approver:
    """Who calls, as AWS says it: the IAM ARN when the Function URL's auth type is AWS_IAM (AWS
    sets it; a client cannot), and the source address."""
    context = event.request_context
    try:
        source = context.http.source_ip
    except KeyError:
        source = ""
    authorizer = context.authorizer
    arn = authorizer.iam.user_arn if authorizer is not None and authorizer.iam is not None else ""
    return Approver("aws", arn, source=source) if arn else Approver(source=source)


@tracer.capture_method
def answer(method: str, token: str, who: Approver | None = None) -> dict[str, Any]:
    reply = deps(logger).answer_approval(method, token, who)
    if reply.run_id:
        logger.set_correlation_id(reply.run_id)
    if reply.status == 503:  # the signing key unreadable: the operator fixes it
        logger.error("approval links cannot be checked", extra={"reason": reply.problem})
    elif reply.status == 403:
        logger.warning("approval refused", extra={"reason": reply.text})
    elif reply.decided:
        logger.info(reply.text)
    return _page(reply.status, reply.text, reply.form_token, reply.button)


@tracer.capture_method
def slack(headers: dict[str, str], body: bytes, source: str = "") -> dict[str, Any]:
    """Slack needs a 200 within 3 s; the person who pressed the button is answered in Slack."""
    from patchpilot.chat_approvals import tell_slack  # slack_sdk: only for Slack

    reply = answer_slack(lambda: deps(logger).approve_from_slack(headers, body, source))
    if reply.action is None:  # 401: not from Slack, too old, replayed; 503: not configured, the vault
        if reply.status == 401:
            logger.warning("Slack request refused", extra={"reason": reply.problem})
        else:
            logger.error("Slack approvals cannot be checked", extra={"reason": reply.problem})
        return {"statusCode": reply.status, "body": reply.text}
    logger.info(reply.text, extra={"by": str(reply.action.approver)})
    tell_slack(reply.action, reply.text)
    return {"statusCode": 200, "body": ""}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_source(data_class=LambdaFunctionUrlEvent)
def handler(event: LambdaFunctionUrlEvent, context: LambdaContext) -> dict[str, Any]:
    method = event.request_context.http.method.upper()
    who = caller(event)
    if "x-slack-signature" in {name.lower() for name in event.headers}:
        return slack(dict(event.headers), (event.decoded_body or "").encode("utf-8"), who.source)
    if method not in ("GET", "POST"):
        return _page(405, f"{method} is not allowed here: open the link, then press Approve.")
    body = (event.decoded_body or "").encode("utf-8")
    token = approval_token(event.query_string_parameters or {}, body, event.headers.get("content-type", ""))
    return answer(method, token, who)


loaded()  # the module has loaded: garbage collection resumes (see aws_lambda/__init__.py)
