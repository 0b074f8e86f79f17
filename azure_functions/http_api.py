"""HTTP endpoints, both behind a function key (auth level FUNCTION):

- `GET|POST /api/approve?token=...`: a signed, expiring approval link. GET only shows what the
  link approves, with a button that POSTs it back: link scanners (Safe Links, chat previews)
  open links by GET and must not approve anything. POST approves.
- `GET /api/runs/{run_id}`: the run's status as JSON, as `patchpilot status --json` prints it.
- `POST /api/slack/interactions?code=...`: the Slack app's interactivity Request URL: button
  presses, verified (signature, at most five minutes old, no replay) and decided like links.

Each decision records who made it (`patchpilot.approvals.Approver`): the Slack user, or, when App
Service authentication (Easy Auth) is on, the principal it signed in (`X-MS-CLIENT-PRINCIPAL-NAME`;
trusted only then: App Service sets it and strips a client's), else the channel the link was sent
to; and the source address (`X-Forwarded-For`'s first hop, port removed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import azure.functions as func

from azure_functions.observability import invocation, log, set_correlation_id
from patchpilot.app.approvals import answer_slack
from patchpilot.approvals import Approver, approval_page, approval_token
from patchpilot.bootstrap.azure import deps
from patchpilot.ports import UnknownRunError

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # its __init__ is not annotated


def _page(status: int, text: str, form_token: str | None = None, button: str = "Approve") -> func.HttpResponse:
    return func.HttpResponse(
        approval_page(text, form_token, button), status_code=status, mimetype="text/html", charset="utf-8"
    )


def source_address(headers: Mapping[str, str]) -> str:
    """The client's address: `X-Forwarded-For`'s first hop without its port ("203.0.113.9:50312",
    "[2001:db8::1]:443"). For the record only: a client can put its own hops first."""
    lowered = {name.lower(): value for name, value in headers.items()}
    hop = lowered.get("x-forwarded-for", "").split(",")[0].strip()
    if hop.startswith("["):
        return hop[1:].split("]")[0]
    return hop.rsplit(":", 1)[0] if hop.count(":") == 1 else hop


def caller(headers: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Approver:
    """Who calls: the Easy Auth principal when App Service authentication is on
    (`WEBSITE_AUTH_ENABLED`, set by the platform), and the source address."""
    environ = os.environ if environ is None else environ
    lowered = {name.lower(): value for name, value in headers.items()}
    name = lowered.get("x-ms-client-principal-name", "").strip()
    source = source_address(headers)
    if name and environ.get("WEBSITE_AUTH_ENABLED", "").lower() == "true":
        return Approver("azure", name, source=source)
    return Approver(source=source)


def approval(method: str, token: str, invocation_id: str = "", who: Approver | None = None) -> func.HttpResponse:
    with invocation("approve", invocation_id, method=method):
        reply = deps(log).answer_approval(method, token, who)
        if reply.run_id:
            set_correlation_id(reply.run_id)
        if reply.status == 503:  # the vault, not the link: the operator fixes it
            log.error("approval links cannot be checked", extra={"reason": reply.problem})
        elif reply.status == 403:
            log.warning("approval refused", extra={"reason": reply.text})
        elif reply.decided:
            log.info(reply.text)
        return _page(reply.status, reply.text, reply.form_token, reply.button)


def run_status(run_id: str, invocation_id: str = "") -> func.HttpResponse:
    with invocation("run_status", invocation_id):
        set_correlation_id(run_id)
        try:
            document = deps(log).status(run_id)
        except UnknownRunError:
            document, status = {"error": f"no run {run_id}"}, 404
        else:
            status = 200
        return func.HttpResponse(json.dumps(document), status_code=status, mimetype="application/json")


def slack_interaction(headers: dict[str, str], body: bytes, invocation_id: str = "") -> func.HttpResponse:
    """A Slack button press; Slack needs a 200 within 3 s, the presser is answered in Slack."""
    from patchpilot.chat_approvals import tell_slack  # slack_sdk: only for Slack

    with invocation("slack_interaction", invocation_id):
        reply = answer_slack(lambda: deps(log).approve_from_slack(headers, body, source_address(headers)))
        if reply.action is None:  # 401: not from Slack, too old, replayed; 503: not configured, the vault
            if reply.status == 401:
                log.warning("Slack request refused", extra={"reason": reply.problem})
            else:
                log.error("Slack approvals cannot be checked", extra={"reason": reply.problem})
            return func.HttpResponse(reply.text, status_code=reply.status)
        log.info(reply.text, extra={"by": str(reply.action.approver)})
        tell_slack(reply.action, reply.text)
        return func.HttpResponse(status_code=200)


@bp.function_name("approve")
@bp.route(route="approve", methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)
def approve(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return approval(
        req.method,
        approval_token(dict(req.params), req.get_body(), req.headers.get("content-type", "")),
        context.invocation_id,
        caller(dict(req.headers)),
    )


@bp.function_name("run_status")
@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return run_status(req.route_params["run_id"], context.invocation_id)


@bp.function_name("slack_interaction")
@bp.route(route="slack/interactions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def slack(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return slack_interaction(dict(req.headers), req.get_body(), context.invocation_id)
