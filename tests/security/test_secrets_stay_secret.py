"""Secrets and tokens stay secret: approval links (their token, and an Azure function key in the
endpoint's URL) reach the Slack and Teams cards only; webhook URLs and pieces of known secrets are
scrubbed from every reason, log line, run record and notice, however they are written."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from clocks import ManualClock

from patchpilot.adapters.local.notifier import FileNotifier
from patchpilot.approvals import ApprovalRequest, verify_approval
from patchpilot.engine.messages import Notify
from patchpilot.notify import EnvironmentSecrets, RoutedNotifier
from patchpilot.notify.webhook import Answer, Pacer
from patchpilot.redact import redact
from security.world import APPROVAL_KEY, NOW, RUN_ID, World, policy, waiting_run

SLACK_URL = "https://hooks.slack.com/services/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"
SLACK_SECRET_PART = "q7Zr2mXc9LpV4kTn8WsY1bHd"
TEAMS_URL = (
    "https://prod-12.westeurope.logic.azure.com:443/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=Vb3kQ9xLm2Pz7Rt4Wn8Yc1Hd6Jf0Gs5A"
)
TEAMS_SECRET_PART = "Vb3kQ9xLm2Pz7Rt4Wn8Yc1Hd6Jf0Gs5A"
CHANNELS = {
    "channels": [
        {"name": "ops", "kind": "slack", "webhook": "patchpilot-notifications-ops"},
        {"name": "oncall", "kind": "teams", "webhook": "patchpilot-notifications-oncall"},
    ],
    "routes": [{"topics": "*", "channels": ["ops", "oncall"]}],
}
TOKEN_SHAPE = re.compile(r"[\w-]{20,}\.[\w-]{4,}\.[\w-]{20,}")  # an itsdangerous token
WEBHOOKS = {"patchpilot-notifications-ops": SLACK_URL, "patchpilot-notifications-oncall": TEAMS_URL}
APPROVAL_NEEDED = Notify(
    id=f"{RUN_ID}:notify:approval_needed",
    run_id=RUN_ID,
    topic="approval_needed",
    text="Ring production needs approval.",
)


def no_pacing() -> Pacer:
    return Pacer(sleep=lambda _: None)


def test_log_notifier_never_prints_approval_links(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, policy(), {})  # no notifications: notices go to the log
    with caplog.at_level(logging.INFO):
        world.notifier.notify(APPROVAL_NEEDED)
    assert "Ring production needs approval." in caplog.text
    assert "token=" not in caplog.text and "FUNCTIONKEY" not in caplog.text
    assert "approval links go only to the Slack and Teams channels" in caplog.text


def test_approval_links_reach_only_the_chat_cards_each_naming_its_channel(tmp_path: Path) -> None:
    world = World(tmp_path, policy(notifications=CHANNELS), WEBHOOKS)
    posted: dict[str, dict[str, object]] = {}

    def post(url: str, payload: dict[str, object]) -> Answer:
        posted["ops" if "slack" in url else "oncall"] = payload
        return Answer(200, "ok")

    world.routed.post, world.routed.pacer = post, no_pacing()
    world.notifier.notify(APPROVAL_NEEDED)
    slack_text = json.dumps(posted["ops"])
    (approve,) = [e for b in posted["ops"]["blocks"] if b["type"] == "actions" for e in b["elements"]][:1]  # type: ignore[index, attr-defined]
    assert verify_approval(approve["value"], APPROVAL_KEY) == ApprovalRequest(RUN_ID, "production", "approve", "ops")
    assert "FUNCTIONKEY" not in slack_text  # Slack buttons carry the token, not the endpoint's URL
    teams_actions = posted["oncall"]["attachments"][0]["content"]["actions"]  # type: ignore[index]
    token = parse_qs(urlsplit(teams_actions[0]["url"]).query)["token"][0]
    assert verify_approval(token, APPROVAL_KEY).to == "oncall"
    # the notice as the engine stored it (the run's outbox) never carried a link
    assert all("token=" not in getattr(m, "text", "") for m in world.store.outbox(RUN_ID))


def test_undelivered_reason_never_carries_an_approval_link(tmp_path: Path) -> None:
    world = World(tmp_path, policy(notifications=CHANNELS), WEBHOOKS)

    def echoing(url: str, payload: dict[str, object]) -> Answer:  # a flow that echoes what it refused
        text = json.dumps(payload)  # Teams: the action's URL; Slack: the button's value (the token)
        at = text.index("https://patchpilot-func" if "logic.azure.com" in url else '"value"')
        return Answer(400, f"Bad request: unknown action {text[at : at + 150]}")

    world.routed.post, world.routed.pacer = echoing, no_pacing()
    world.notifier.notify(APPROVAL_NEEDED)
    recorded = list(world.store.load(RUN_ID).undelivered)  # applied to the run, never queued
    reasons = [r.reason for r in world.routed.undelivered] + [r.reason for r in recorded]
    assert len(recorded) == 2 and reasons
    for reason in reasons:
        assert "unknown action" in reason and "FUNCTIONKEY" not in reason, reason
        assert not TOKEN_SHAPE.search(reason), reason  # payload.timestamp.signature


FORMS = [
    pytest.param(SLACK_URL, id="slack"),
    pytest.param(SLACK_URL.removeprefix("https://"), id="slack-without-scheme"),
    pytest.param(SLACK_URL.replace("/B0456", "/ B0456").replace("/q7Zr", " /q7Zr"), id="slack-whitespace"),
    pytest.param(SLACK_URL[:-6], id="slack-partial"),
    pytest.param(quote(SLACK_URL, safe=""), id="slack-url-encoded"),
    pytest.param(quote(quote(SLACK_URL, safe=""), safe=""), id="slack-encoded-twice"),
    pytest.param(SLACK_URL.replace("/", "\\/"), id="slack-json-escaped"),
    pytest.param(SLACK_URL.replace("services", "workflows"), id="slack-workflow"),
    pytest.param(TEAMS_URL, id="teams"),
    pytest.param(TEAMS_URL.removeprefix("https://"), id="teams-without-scheme"),
    pytest.param(TEAMS_URL.replace("&sig=", "&\n sig="), id="teams-wrapped"),
    pytest.param(quote(TEAMS_URL, safe=""), id="teams-url-encoded"),
    pytest.param(TEAMS_URL[TEAMS_URL.index("?") :], id="teams-query-only"),
    pytest.param(
        "https://contoso.webhook.office.com/webhookb2/1a2b@3c4d/IncomingWebhook/Vb3kQ9xLm2Pz7Rt4Wn8Yc1Hd6Jf0Gs5A/5e6f",
        id="office-connector",
    ),
    pytest.param(
        "default1a2b.3c.environment.api.powerplatform.com:443/powerautomate/automations/direct/workflows/"
        "0a1b/triggers/manual/paths/invoke?api-version=1&sp=%2Ftriggers&sv=1.0&sig=Vb3kQ9xLm2Pz7Rt4Wn8Yc1Hd6Jf0Gs5A",
        id="power-platform",
    ),
]


@pytest.mark.parametrize("form", FORMS)
def test_webhook_url_is_scrubbed_however_it_appears(form: str) -> None:
    for secret in (SLACK_SECRET_PART, TEAMS_SECRET_PART):
        # the shape alone: a URL this process never read (another channel's, a user's paste)
        assert secret not in redact(f"URLError: <urlopen error posting to {form}> (retried)")
    routed = RoutedNotifier(
        EnvironmentSecrets(WEBHOOKS), lambda _: waiting_run(policy()), None, pacer=no_pacing(), clock=ManualClock(NOW)
    )

    def refused(url: str, payload: dict[str, object]) -> Answer:
        raise OSError(f"cannot reach {form}: connection reset")

    routed.post = refused
    routed.send(APPROVAL_NEEDED, policy(notifications=CHANNELS).notifications)
    assert len(routed.undelivered) == 2
    for undelivered in routed.undelivered:
        for piece in (SLACK_SECRET_PART[:8], TEAMS_SECRET_PART[:8], "hooks.slack", "logic.azure", "sig="):
            assert piece not in undelivered.reason.replace("sig=<redacted>", ""), undelivered.reason
        assert undelivered.reason.startswith("OSError: cannot reach ") and "connection reset" in undelivered.reason


def test_secret_substring_is_scrubbed_from_undelivered_reason(caplog: pytest.LogCaptureFixture) -> None:
    relay = "https://relay.contoso.net/chat/Zq8vN3xT7pLm2Kw9Rb4YeHs6"  # no known webhook shape: only its value
    secrets = EnvironmentSecrets({"patchpilot-notifications-ops": relay})
    routed = RoutedNotifier(secrets, lambda _: waiting_run(policy()), None, pacer=no_pacing(), clock=ManualClock(NOW))
    piece = "xT7pLm2Kw9Rb4Y"  # 14 characters from the middle
    routed.post = lambda url, payload: Answer(502, f"upstream {piece[:7]} {piece[7:]}... gave up")
    ops_only = dict(CHANNELS, routes=[{"topics": "*", "channels": ["ops"]}])
    with caplog.at_level(logging.INFO):
        routed.send(APPROVAL_NEEDED, policy(notifications=ops_only).notifications)
        logging.getLogger("patchpilot.notify").warning("a stray message naming %s", relay[8:])
    (undelivered,) = routed.undelivered
    assert undelivered.reason == "HTTP 502: upstream <secret>... gave up"
    assert piece[:7] not in caplog.text and "relay.contoso.net/chat/Zq8" not in caplog.text


def test_local_notifications_file_never_holds_an_approval_link(tmp_path: Path) -> None:
    shown: list[str] = []
    notifier = FileNotifier(tmp_path / "notifications.jsonl", lambda notice: shown.append(notice.text))
    link = "https://patchpilot-func.azurewebsites.net/api/approve?code=FUNCTIONKEY-abc123&token=eyJydW4iOi.Zx.abc"
    notifier.notify(APPROVAL_NEEDED.model_copy(update={"text": f"Ring production needs approval. Approve: {link}"}))
    written = (tmp_path / "notifications.jsonl").read_text()
    assert "FUNCTIONKEY" not in written and "eyJydW4iOi" not in written
    assert "FUNCTIONKEY" not in shown[0] and "Ring production needs approval." in shown[0]
