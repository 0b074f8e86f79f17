"""One neutral card per notice, rendered for Slack (Block Kit) and Teams (Adaptive Card 1.5)
within each platform's limits: long lists summarised, long texts cut between words, nothing
dropped silently."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, get_args

from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import Notify, Topic
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance
from patchpilot.notify.messages import card_for, shorten, summarise
from patchpilot.notify.slack import slack_message
from patchpilot.notify.teams import MAX_BYTES, teams_message, wire_size
from patchpilot.planning import plan
from patchpilot.policy import Policy
from patchpilot.policy.model import NotificationTopic, TeamsMention

NOW = datetime(2026, 11, 14, 2, 0, tzinfo=UTC)
POLICY = Policy.model_validate({"name": "web", "rings": [{"name": "all", "select": {"clouds": ["aws"]}}]})
ONCALL = TeamsMention(name="Patch on-call", id="oncall@contoso.com")
SLACK_BLOCK_TYPES = {"header", "section", "context", "actions", "divider"}
CARD_ELEMENT_TYPES = {"TextBlock", "FactSet"}


def halted_run(failures: int, reason: str = "install failed: KB5031234 returned 0x80070005") -> Run:
    instances = [
        Instance(id=f"i-{n:017x}", cloud="aws", region="eu-west-1", os="linux", name=f"web-{n:04d}")
        for n in range(failures)
    ]
    run = start_run("web-20261114-0200", POLICY, plan(POLICY, instances), NOW).run
    waves = tuple(
        wave.model_copy(
            update={
                "records": {
                    key: record.model_copy(update={"state": "rolled_back", "failure": reason})
                    for key, record in wave.records.items()
                }
            }
        )
        for wave in run.waves
    )
    return run.model_copy(update={"waves": waves, "state": "halted", "reason": "too many failures"})


def notice(topic: Topic, text: str = "Run web-20261114-0200 halted: too many failures.", **kw: Any) -> Notify:
    return Notify(id=f"web-20261114-0200:notify:{topic}", run_id="web-20261114-0200", topic=topic, text=text, **kw)


def slack_text_lengths(message: dict[str, Any]) -> list[tuple[str, int]]:
    sizes = []
    for block in message["blocks"]:
        if "text" in block:
            sizes.append((block["type"], len(block["text"]["text"])))
        for field in block.get("fields", []):
            sizes.append(("field", len(field["text"])))
    return sizes


def assert_slack_within_limits(message: dict[str, Any]) -> None:
    assert isinstance(message["text"], str) and message["text"]  # the notification's fallback
    assert 0 < len(message["blocks"]) <= 50
    assert {b["type"] for b in message["blocks"]} <= SLACK_BLOCK_TYPES
    for kind, size in slack_text_lengths(message):
        assert size <= {"header": 150, "field": 2000}.get(kind, 3000), kind


def card_content(message: dict[str, Any]) -> dict[str, Any]:
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content: dict[str, Any] = attachment["content"]
    return content


def assert_teams_within_limits(message: dict[str, Any]) -> None:
    content = card_content(message)
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.5"
    assert {element["type"] for element in content["body"]} <= CARD_ELEMENT_TYPES
    assert all(a["type"] == "Action.OpenUrl" and a["url"].startswith("https://") for a in content.get("actions", []))
    assert wire_size(message) <= MAX_BYTES


def test_the_policy_knows_every_topic_the_engine_sends() -> None:
    assert set(get_args(NotificationTopic)) == set(get_args(Topic))


def test_a_2000_instance_failure_list_is_summarised_within_both_limits() -> None:
    card = card_for(notice("run_halted", severity="error"), halted_run(2000))
    assert len(card.items) == 2000 and card.items_label == "Failed instances (2000)"

    slack = slack_message(card, "<!subteam^S0ONCALL>")
    assert_slack_within_limits(slack)
    listing = next(t for b in slack["blocks"] if (t := b.get("text", {}).get("text", "")).startswith("*Failed"))
    shown = listing.count("web-")
    assert 0 < shown < 2000
    assert listing.endswith(f"… and {2000 - shown} more, see the report")

    message = teams_message(card, ONCALL)
    assert_teams_within_limits(message)
    texts = [e["text"] for e in card_content(message)["body"] if e["type"] == "TextBlock"]
    (listing,) = [t for t in texts if t.startswith("- web-")]
    shown = listing.count("web-")
    assert 0 < shown < 2000
    assert listing.endswith(f"- … and {2000 - shown} more, see the report")


def test_non_ascii_lists_still_fit_the_teams_limit_on_the_wire() -> None:
    card = card_for(notice("run_halted"), halted_run(2000, reason="Überprüfung fehlgeschlagen 🚨 " * 8))
    message = teams_message(card, None)
    assert_teams_within_limits(message)
    assert "more, see the report" in json.dumps(message)


def test_a_long_text_is_cut_between_words_and_says_so() -> None:
    words = " ".join(f"word{n}" for n in range(2000))
    cut = shorten(words, 3000)
    assert len(cut) <= 3000 and cut.endswith(" … (more in the report)")
    kept = cut.removesuffix(" … (more in the report)").split(" ")
    assert kept == words.split(" ")[: len(kept)]  # whole words only

    slack = slack_message(card_for(notice("run_started", text=words)))
    assert_slack_within_limits(slack)
    assert "(more in the report)" in slack["blocks"][1]["text"]["text"]
    assert_teams_within_limits(teams_message(card_for(notice("run_started", text=words * 3))))


def test_summarise_never_drops_an_entry_silently() -> None:
    items = tuple(f"host-{n} failed its health check" for n in range(40))
    lines = summarise(items, max_items=10, max_chars=10_000)
    assert lines[:10] == list(items[:10]) and lines[10] == "… and 30 more, see the report"
    assert summarise(items[:3], 10, 10_000) == list(items[:3])


def test_failures_halts_and_maintenance_alerts_mention_on_call_and_other_notices_do_not() -> None:
    for topic in get_args(Topic):
        card = card_for(notice(topic, severity="error" if topic == "instance_failed" else "info"))
        slack = json.dumps(slack_message(card, "<!subteam^S0ONCALL>"))
        teams = card_content(teams_message(card, ONCALL))
        alert = topic in {"instance_failed", "run_halted", "maintenance_alert"}
        assert ("<!subteam^S0ONCALL>" in slack) is alert, topic
        assert ("entities" in teams["msteams"]) is alert, topic
        if alert:
            (entity,) = teams["msteams"]["entities"]
            assert entity == {
                "type": "mention",
                "text": "<at>Patch on-call</at>",
                "mentioned": {"id": "oncall@contoso.com", "name": "Patch on-call"},
            }
            assert any(entity["text"] in e.get("text", "") for e in teams["body"])


def test_a_machine_rolled_back_healthy_is_news_not_a_page() -> None:
    healthy = card_for(notice("instance_failed", text="api-05 in wave 3: rolled back: healthy again", severity="info"))
    broken = card_for(notice("instance_failed", text="api-06 in wave 3: failed: rollback failed", severity="error"))
    assert not healthy.alert and "<!subteam^S0ONCALL>" not in json.dumps(slack_message(healthy, "<!subteam^S0ONCALL>"))
    assert broken.alert


def test_at_here_becomes_a_slack_broadcast() -> None:
    assert "<!here>" in slack_message(card_for(notice("run_halted")), "@here")["text"]


def test_the_report_link_becomes_a_button_and_an_action() -> None:
    url = "https://st.blob.core.windows.net/patchpilot-reports/web-20261114-0200.html"
    card = card_for(notice("run_finished", text=f"Run web-20261114-0200 succeeded. Report: {url}"))
    assert card.text == "Run web-20261114-0200 succeeded."
    slack = slack_message(card)
    (actions,) = [b for b in slack["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == url
    assert card_content(teams_message(card))["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open report", "url": url}
    ]


def test_a_report_that_is_not_a_web_link_is_kept_as_a_fact() -> None:
    card = card_for(notice("run_finished", text="Run r succeeded. Report: s3://reports/r.html"))
    assert ("Report", "s3://reports/r.html") in card.facts and not card.links


def test_slack_control_characters_are_escaped() -> None:
    slack = slack_message(card_for(notice("run_halted", text="<!channel> & <https://evil|click>")))
    assert "<!channel>" not in json.dumps(slack) and "&lt;!channel&gt; &amp;" in slack["blocks"][1]["text"]["text"]


def test_titles_fit_the_slack_header() -> None:
    long_id = "web-" + "x" * 300
    card = card_for(Notify(id=f"{long_id}:n", run_id=long_id, topic="run_started", text="started"))
    header = slack_message(card)["blocks"][0]
    assert header["type"] == "header" and len(header["text"]["text"]) <= 150
    assert re.search(r"…$", header["text"]["text"])
