"""Approvals from Slack: the interactivity request a Slack button sends, verified.

Slack signs each request: `v0=` + HMAC-SHA256 of `v0:<timestamp>:<body>` with the app's signing
secret (checked by slack_sdk's SignatureVerifier). A request older than five minutes is refused,
and so is one seen before (`claim` records each signature once: a replayed request carries the
same one). The button's value is a signed approval token (`patchpilot.approvals`), so what a
button decides cannot be changed on the way; the person who pressed it is taken from Slack
(`user.id`, `user.username`): the decision records them, and a ring's `approvers` are checked
against the user id, then against the members of the Slack user groups the ring lists
(`SlackGroups`: `usergroups.users.list` with a bot token, scope `usergroups:read`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.signature import Clock, SignatureVerifier

from patchpilot.approvals import ApprovalLinkError, Approver, GroupUnreadableError
from patchpilot.ports import Claims, Secrets

if TYPE_CHECKING:
    from slack_sdk.web.slack_response import SlackResponse

log = logging.getLogger("patchpilot.approvals")
# slack_sdk's WebClient logs each request and answer at DEBUG, and exception texts at ERROR: its
# logger here is silenced below CRITICAL whatever the root logger's level; the outcome of a
# lookup is said by the approval's own answer and warning.
api_log = logging.getLogger("patchpilot.approvals.slack_api")
api_log.setLevel(logging.CRITICAL)
SLACK_API_URL = "https://slack.com/api/"
GROUP_TTL = timedelta(minutes=5)  # how long a group's members serve, per warm container
API_TIMEOUT_SECONDS = 5
ERROR_CODE = re.compile(r"[a-z][a-z_]{0,63}")  # a Web API error: "missing_scope", "no_such_subteam"
SCOPES = re.compile(r"[a-z:.,_]{1,200}")  # the scopes a call needs: "usergroups:read"
MAX_RATE_LIMIT_WAIT = 5  # seconds: the presser waits for the answer (and the function's timeout)
MAX_AGE_SECONDS = 300
SLACK_RESPONSE_URLS = ("https://hooks.slack.com/",)  # where a verified payload's response_url may point
ACTION_IDS = frozenset({"patchpilot_approve", "patchpilot_reject"})


class SlackRequestError(ApprovalLinkError):
    """The request is not a genuine, fresh Slack button press of PatchPilot's."""


@dataclass(frozen=True)
class SlackAction:
    token: str  # the signed approval token the button carries
    user: str  # who pressed it: "<name> on Slack"
    response_url: str | None  # where Slack accepts a replacement of the message
    approver: Approver  # the Slack user (id, name) and the address the request came from


class _At(Clock):
    """slack_sdk's clock, stopped at the moment the caller gives (the runtime's clock)."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def verify_slack_request(
    headers: Mapping[str, str],
    body: bytes,
    signing_secret: str,
    now: float,
    claim: Callable[[str], bool],
    source: str = "",
) -> SlackAction:
    """The button press in a Slack interactivity request; SlackRequestError saying why when the
    request is unsigned, badly signed, older than five minutes, replayed or not a PatchPilot button.
    `claim(key)` is True the first time it sees `key` (kept at least five minutes); `source` is the
    address the request came from."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp, signature = lowered.get("x-slack-request-timestamp"), lowered.get("x-slack-signature")
    if not timestamp or not signature:
        raise SlackRequestError("not a Slack request: no signature")
    try:
        age = now - int(timestamp)
    except ValueError:
        raise SlackRequestError("not a Slack request: a bad timestamp") from None
    if abs(age) > MAX_AGE_SECONDS:
        raise SlackRequestError(f"the Slack request is {int(abs(age))} s old; at most {MAX_AGE_SECONDS} s are accepted")
    verifier = SignatureVerifier(signing_secret, clock=_At(now))
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise SlackRequestError("the Slack signature does not match")
    if not claim(f"slack:{signature}"):
        raise SlackRequestError("this Slack request was already received (a replay)")
    return slack_action(body, source)


def slack_action(body: bytes, source: str = "") -> SlackAction:
    """The PatchPilot button of a `block_actions` payload (form field `payload`, JSON)."""
    try:
        payload = json.loads(parse_qs(body.decode("utf-8"))["payload"][0])
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        raise SlackRequestError("not a Slack interaction: no JSON payload") from None
    actions = payload.get("actions") if isinstance(payload, dict) else None
    if payload.get("type") != "block_actions" or not isinstance(actions, list):
        raise SlackRequestError(f"not a button press: {payload.get('type') if isinstance(payload, dict) else payload}")
    ours = [a for a in actions if isinstance(a, dict) and a.get("action_id") in ACTION_IDS and a.get("value")]
    if not ours:
        raise SlackRequestError("not a PatchPilot button")
    user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
    user_id, name = str(user.get("id") or ""), str(user.get("username") or user.get("name") or "")
    response_url = payload.get("response_url")
    return SlackAction(
        str(ours[0]["value"]),
        f"{name or user_id or 'someone'} on Slack",
        response_url if isinstance(response_url, str) else None,
        Approver("slack", user_id, name, source),
    )


def slack_decision(
    headers: Mapping[str, str], body: bytes, signing_secret: str, now: datetime, claims: Claims, source: str = ""
) -> SlackAction:
    """`verify_slack_request` with the runtime's clock and claims (each held twice the maximum age)."""
    until = now + timedelta(seconds=2 * MAX_AGE_SECONDS)

    def claim(key: str) -> bool:
        return claims.claim(key, until)

    return verify_slack_request(headers, body, signing_secret, now.timestamp(), claim, source)


def tell_slack(action: SlackAction, text: str) -> None:
    """Answer the person who pressed the button, in the channel, visible to them only (the
    payload's response_url). Not delivered: logged (never the URL), not raised."""
    url = action.response_url
    if not url or not url.startswith(SLACK_RESPONSE_URLS):
        return
    from slack_sdk.webhook import WebhookClient

    try:
        answer = WebhookClient(url, timeout=5).send(text=text, response_type="ephemeral", replace_original=False)
        if answer.status_code >= 400:
            log.warning("Slack did not take the answer to %s: HTTP %s", action.user, answer.status_code)
    except Exception as error:  # a network error: the decision stands, only the reply is lost
        log.warning("could not answer %s on Slack: %s", action.user, type(error).__name__)


class ShortRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's rate-limit handler (429: waits for Retry-After, then tries again), only while
    the wait is short: someone waits for the button's answer. A longer one gives up (refused)."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        assert response is not None
        waits = [v for k, values in response.headers.items() if k.lower() == "retry-after" for v in values]
        try:
            return not waits or int(waits[0]) <= MAX_RATE_LIMIT_WAIT
        except ValueError:
            return False


def api_retry_handlers() -> list[RetryHandler]:
    """A dropped connection is tried once more; a rate limit (Tier 2: 20+ calls a minute) twice."""
    return [ConnectionErrorRetryHandler(max_retry_count=1), ShortRateLimitRetryHandler(max_retry_count=2)]


class SlackGroups:
    """Who is in a Slack user group: the Web API's `usergroups.users.list` (scope
    `usergroups:read`), called with the bot token in the secret `token_secret` (read when a group
    is looked up, and kept out of every log). A group's members serve GROUP_TTL by `now()` in
    this (warm) container; a failed lookup is not kept. GroupUnreadableError saying why (never
    the token) when no token is configured, or the token or the group cannot be read."""

    def __init__(
        self,
        secrets: Callable[[], Secrets | None],
        token_secret: str | None,
        now: Callable[[], datetime],
        base_url: str = SLACK_API_URL,
        ttl: timedelta = GROUP_TTL,
    ) -> None:
        self.secrets = secrets
        self.token_secret = token_secret
        self.now = now
        self.base_url = base_url
        self.ttl = ttl
        self._members: dict[str, tuple[datetime, frozenset[str]]] = {}

    def __call__(self, group: str) -> frozenset[str]:
        now = self.now()
        cached = self._members.get(group)
        if cached is not None and timedelta(0) <= now - cached[0] < self.ttl:
            return cached[1]
        members = self._read(group)
        self._members[group] = (now, members)
        return members

    def _token(self) -> str:
        from patchpilot.redact import PROCESS_SECRETS, install_filter

        store = self.secrets()
        if not self.token_secret or store is None:
            raise GroupUnreadableError("no Slack bot token is configured (PATCHPILOT_SLACK_BOT_TOKEN_SECRET)")
        try:
            token = store.get(self.token_secret)
        except Exception as error:  # missing, no permission, the vault throttling
            log.warning("the Slack bot token (PATCHPILOT_SLACK_BOT_TOKEN_SECRET) is not read: %s", error)
            raise GroupUnreadableError("the Slack bot token could not be read") from None
        install_filter()
        PROCESS_SECRETS.add(token)  # never in a log line
        return token

    def _read(self, group: str) -> frozenset[str]:
        from slack_sdk import WebClient
        from slack_sdk.errors import SlackApiError

        client = WebClient(
            self._token(),
            base_url=self.base_url,
            timeout=API_TIMEOUT_SECONDS,
            logger=api_log,
            retry_handlers=api_retry_handlers(),
        )
        try:
            answer = client.usergroups_users_list(usergroup=group)
        except SlackApiError as error:
            raise GroupUnreadableError(f"the Slack API answered {_api_error(error.response)}") from None
        except Exception as error:  # unreachable, timed out, not JSON
            raise GroupUnreadableError(f"the Slack API did not answer ({type(error).__name__})") from None
        users = answer.get("users")
        if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
            raise GroupUnreadableError("the Slack API answered no list of members")
        return frozenset(users)


def _api_error(response: SlackResponse) -> str:
    """What a failed Web API call says: its error code (and the scope it needs), else its HTTP
    status. Only codes as Slack spells them (`missing_scope`) are repeated: an answer's other text
    is not trusted into an answer or a log."""
    data = response.data if isinstance(response.data, dict) else {}
    code, needed = data.get("error"), data.get("needed")
    if not (isinstance(code, str) and ERROR_CODE.fullmatch(code)):
        return f"HTTP {response.status_code}"
    return code + (f" (needs {needed})" if isinstance(needed, str) and SCOPES.fullmatch(needed) else "")
