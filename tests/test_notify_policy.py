"""The policy's `notifications` section (channels, routes, mentions) and the "run scheduled"
heads-up the timer sends before a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from patchpilot.errors import InputError, Problem
from patchpilot.policy import parse_policy
from patchpilot.triggers import TIMER_PERIOD, heads_up, scheduled_run_id

BASE = """\
name: web
schedule:
  monthly: "Second Tuesday"
  at: "02:00"
  timezone: UTC
  duration: 4h
rings:
  - name: staging
    select: {tags: {Environment: staging}}
"""
NOTIFICATIONS = """\
notifications:
  heads_up: 24h
  channels:
    - {name: ops, kind: slack, webhook: patchpilot/slack-ops, mention: "<!subteam^S0ONCALL>"}
    - name: oncall
      kind: teams
      webhook: patchpilot/teams-oncall
      mention: {name: Patch on-call, id: oncall@contoso.com}
  routes:
    - {topics: "*", channels: [ops]}
    - {topics: [instance_failed, run_halted], channels: [oncall]}
"""


def problems_of(text: str) -> tuple[Problem, ...]:
    with pytest.raises(InputError) as caught:
        parse_policy(text, "policy.yaml")
    return caught.value.problems


def test_a_notifications_section_is_read() -> None:
    notifications = parse_policy(BASE + NOTIFICATIONS).notifications
    assert notifications is not None
    assert [c.name for c in notifications.channels] == ["ops", "oncall"]
    assert notifications.routes[1].topics == ["instance_failed", "run_halted"]
    assert notifications.heads_up == timedelta(hours=24)


def test_a_route_to_an_unknown_channel_is_named_with_its_line() -> None:
    (problem,) = problems_of(BASE + NOTIFICATIONS.replace("channels: [oncall]", "channels: [on-call]"))
    assert problem.path == ("notifications", "routes", 1, "channels", 0)
    assert 'no channel named "on-call"' in problem.message and problem.line == 20


def test_a_webhook_url_in_the_policy_is_refused() -> None:
    text = NOTIFICATIONS.replace("webhook: patchpilot/slack-ops", "webhook: https://hooks.slack.com/services/T/B/x")
    (problem,) = problems_of(BASE + text)
    assert problem.path == ("notifications", "channels", 0, "webhook")
    assert "name of a secret" in problem.message


def test_mentions_must_suit_the_channel_kind() -> None:
    text = NOTIFICATIONS.replace('"<!subteam^S0ONCALL>"', "oncall-team").replace(
        "mention: {name: Patch on-call, id: oncall@contoso.com}", "mention: Patch on-call"
    )
    problems = problems_of(BASE + text)
    assert [p.path[-1] for p in problems] == ["mention", "mention"]


def test_an_unknown_topic_is_refused() -> None:
    problems = problems_of(BASE + NOTIFICATIONS.replace("[instance_failed, run_halted]", "[instance_fail]"))
    assert problems and problems[0].path[:2] == ("notifications", "routes")


# Second Tuesday of December 2026 is the 8th: the window starts 2026-12-08 02:00 UTC.
WINDOW = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)


def test_the_heads_up_is_sent_once_lead_before_the_window() -> None:
    policy = parse_policy(BASE + NOTIFICATIONS)
    lead = timedelta(hours=24)
    ticks = [WINDOW - lead - TIMER_PERIOD * 2 + TIMER_PERIOD * n for n in range(5)]
    notices = [heads_up(policy, tick, lead) for tick in ticks]
    sent = [n for n in notices if n is not None]
    assert len(sent) == 1 and notices[2] is sent[0]  # the tick exactly `lead` before the window
    (notice,) = sent
    run_id = scheduled_run_id(policy, policy.schedule.windows(WINDOW, 1)[0])  # type: ignore[union-attr]
    assert notice.run_id == run_id and notice.id == f"{run_id}:notify:run_scheduled"
    assert notice.topic == "run_scheduled" and "2026-12-08T02:00" in notice.text
    # a timer that fires twice in the same period announces the same notice (same id)
    assert heads_up(policy, ticks[2] + timedelta(minutes=5), lead) == notice


def test_no_heads_up_without_a_schedule() -> None:
    policy = parse_policy(BASE + NOTIFICATIONS).model_copy(update={"schedule": None})
    assert heads_up(policy, WINDOW - timedelta(hours=24), timedelta(hours=24)) is None


def test_a_webhook_secret_is_read_locally_from_its_name_or_its_shell_form() -> None:
    from patchpilot.notify.secrets import EnvironmentSecrets, environment_name
    from patchpilot.ports import SecretUnavailableError

    assert environment_name("patchpilot-notifications-ops") == "PATCHPILOT_NOTIFICATIONS_OPS"
    url = "https://hooks.slack.com/services/T0/B0/x"
    assert EnvironmentSecrets({"PATCHPILOT_NOTIFICATIONS_OPS": url}).get("patchpilot-notifications-ops") == url
    assert EnvironmentSecrets({"SLACK_ONCALL_URL": url}).get("SLACK_ONCALL_URL") == url
    with pytest.raises(SecretUnavailableError, match="'PATCHPILOT_NOTIFICATIONS_OPS' is not set"):
        EnvironmentSecrets({}).get("patchpilot-notifications-ops")
