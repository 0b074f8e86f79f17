"""The routed notifier posting to a real local webhook server (tests/webhook_server.py): what
Slack and Teams receive, routing by topic, 429 with Retry-After, server errors, failures that
are recorded and never raised, duplicates, and webhook URLs kept out of the logs."""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clocks import ManualClock
from test_notify_cards import (
    assert_slack_within_limits,
    assert_teams_within_limits,
    card_content,
    halted_run,
    notice,
)
from webhook_server import Reply, WebhookServer, webhook_server

from patchpilot.adapters.local.sqlite_claims import SqliteClaims
from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.cli import main
from patchpilot.engine.messages import NoticeUndelivered, Notify
from patchpilot.engine.run import Run
from patchpilot.inventory import load_inventory
from patchpilot.local_runtime import LocalRuntime
from patchpilot.notify import EnvironmentSecrets, RoutedNotifier
from patchpilot.notify.routing import LEASE
from patchpilot.notify.webhook import Answer, Pacer
from patchpilot.policy import load_policy
from patchpilot.policy.model import Notifications
from patchpilot.ports import UnknownRunError
from patchpilot.reports import write_reports

SLACK, TEAMS = "/slack/T000/B000/secret-slack-token", "/teams/workflows/invoke?sig=secret-teams-sig"
T0 = datetime(2026, 11, 14, 2, 0, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROUTING = {
    "channels": [
        {"name": "ops-slack", "kind": "slack", "webhook": "SLACK_OPS", "mention": "<!subteam^S0ONCALL>"},
        {
            "name": "oncall-teams",
            "kind": "teams",
            "webhook": "TEAMS_ONCALL",
            "mention": {"name": "Patch on-call", "id": "oncall@contoso.com"},
        },
    ],
    "routes": [
        {"topics": "*", "channels": ["ops-slack"]},
        {"topics": ["instance_failed", "run_halted", "approval_needed"], "channels": ["oncall-teams"]},
    ],
}


class Log:
    def __init__(self) -> None:
        self.notices: list[Notify] = []

    def notify(self, command: Notify) -> None:
        self.notices.append(command)


class Sleeps:
    """The pacer's sleep, recorded instead of slept: the tests stay fast and can check pacing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with webhook_server() as running:
        yield running


def run_with(routing: dict[str, Any] | None, failures: int = 3) -> Run:
    run = halted_run(failures)
    policy = run.policy.model_copy(
        update={"notifications": None if routing is None else Notifications.model_validate(routing)}
    )
    return run.model_copy(update={"policy": policy})


def notifier(server: WebhookServer, run: Run | None, fallback: Log | None = None, **options: Any) -> RoutedNotifier:
    """A notifier posting to the local server; `options` as RoutedNotifier takes them (claims, clock, record, post)."""
    secrets = EnvironmentSecrets({"SLACK_OPS": server.url(SLACK), "TEAMS_ONCALL": server.url(TEAMS)})

    def load_run(run_id: str) -> Run:
        if run is None:
            raise UnknownRunError(run_id)
        return run

    options.setdefault("clock", ManualClock(T0))
    return RoutedNotifier(secrets, load_run, fallback or Log(), pacer=Pacer(sleep=Sleeps()), **options)


def test_each_topic_goes_to_the_channels_its_routes_name(server: WebhookServer) -> None:
    routed = notifier(server, run_with(ROUTING))
    routed.notify(notice("run_started", text="Run web-20261114-0200 of policy web started: 1 wave"))
    assert [p.path for p in server.posts] == [SLACK]
    routed.notify(notice("run_halted", severity="error"))
    assert [p.path for p in server.posts] == [SLACK, SLACK, TEAMS]
    assert routed.undelivered == []

    slack = server.to(SLACK)[1]
    assert slack.headers["Content-Type"].startswith("application/json")
    assert_slack_within_limits(slack.json)
    assert "<!subteam^S0ONCALL>" in slack.json["text"]
    assert_teams_within_limits(server.to(TEAMS)[0].json)
    assert card_content(server.to(TEAMS)[0].json)["msteams"]["entities"][0]["mentioned"]["id"] == "oncall@contoso.com"


def test_the_same_notice_is_posted_once_per_channel(server: WebhookServer) -> None:
    routed = notifier(server, run_with(ROUTING))
    routed.notify(notice("run_halted"))
    routed.notify(notice("run_halted"))  # the Notify command delivered again
    assert [p.path for p in server.posts] == [SLACK, TEAMS]


def test_a_2000_instance_halt_reaches_both_platforms_within_their_limits(server: WebhookServer) -> None:
    notifier(server, run_with(ROUTING, failures=2000)).notify(notice("run_halted", severity="error"))
    slack, teams = server.to(SLACK)[0], server.to(TEAMS)[0]
    assert_slack_within_limits(slack.json)
    assert_teams_within_limits(teams.json)
    assert len(teams.raw) <= 28_000
    assert b"more, see the report" in slack.raw and b"more, see the report" in teams.raw


def test_slack_429_waits_for_retry_after_then_delivers(server: WebhookServer) -> None:
    server.then(SLACK, Reply(429, "rate_limited", (("Retry-After", "1"),)))
    routed = notifier(server, run_with(ROUTING))
    routed.notify(notice("run_started"))
    first, second = server.to(SLACK)
    assert first.raw == second.raw
    assert second.at - first.at >= 1.0  # Retry-After honoured (a lower bound: it cannot flake)
    assert routed.undelivered == []


def test_teams_server_error_is_retried_then_delivers(server: WebhookServer) -> None:
    server.then(TEAMS, Reply(502, "Bad Gateway"))
    routed = notifier(server, run_with(ROUTING))
    routed.notify(notice("instance_failed", text="web-0001 (i-1) in wave 1: rolled back: health check"))
    assert len(server.to(TEAMS)) == 2 and routed.undelivered == []


def test_a_channel_that_keeps_failing_is_recorded_and_never_fails_the_run(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.always(SLACK, Reply(500, "internal_error"))
    routed = notifier(server, run_with(ROUTING))
    with caplog.at_level(logging.DEBUG):
        routed.notify(notice("run_halted"))  # does not raise
    assert len(server.to(SLACK)) == 3  # the first attempt and two retries
    assert len(server.to(TEAMS)) == 1  # the other channel is not held up
    (failed,) = routed.undelivered
    assert (failed.notice_id, failed.channel) == ("web-20261114-0200:notify:run_halted", "ops-slack")
    assert failed.reason == "HTTP 500: internal_error"
    assert "ops-slack" in caplog.text
    assert "secret-slack-token" not in caplog.text and "secret-teams-sig" not in caplog.text


def test_an_unreachable_webhook_or_a_missing_secret_is_recorded_without_the_url(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead = "http://127.0.0.1:9/slack/secret-dead-token"  # the discard port: connection refused
    secrets = EnvironmentSecrets({"SLACK_OPS": dead})  # TEAMS_ONCALL is not set
    routed = RoutedNotifier(
        secrets, lambda _: run_with(ROUTING), Log(), pacer=Pacer(sleep=Sleeps()), clock=ManualClock(T0)
    )
    with caplog.at_level(logging.DEBUG):
        routed.notify(notice("run_halted"))
    by_channel = {u.channel: u.reason for u in routed.undelivered}
    assert set(by_channel) == {"ops-slack", "oncall-teams"}
    assert "TEAMS_ONCALL" in by_channel["oncall-teams"]
    assert all("secret-dead-token" not in reason for reason in by_channel.values())
    assert "secret-dead-token" not in caplog.text


def test_without_a_notifications_section_notices_go_to_the_fallback(server: WebhookServer) -> None:
    log = Log()
    notifier(server, run_with(None), log).notify(notice("run_started"))
    notifier(server, None, log).notify(notice("run_finished"))  # a run the store does not know
    assert [n.topic for n in log.notices] == ["run_started", "run_finished"] and server.posts == []


def test_posts_to_one_webhook_are_paced_one_second_apart() -> None:
    now = [100.0]
    sleeps = Sleeps()
    pacer = Pacer(monotonic=lambda: now[0], sleep=sleeps)
    pacer.wait("https://hooks.slack.com/services/a", 1.0)
    now[0] += 0.25
    pacer.wait("https://hooks.slack.com/services/a", 1.0)
    pacer.wait("https://hooks.slack.com/services/b", 1.0)  # another webhook is not held back
    assert sleeps.calls == [0.75]


def test_slack_posts_are_paced_through_the_notifier(server: WebhookServer) -> None:
    sleeps = Sleeps()
    secrets = EnvironmentSecrets({"SLACK_OPS": server.url(SLACK), "TEAMS_ONCALL": server.url(TEAMS)})
    routed = RoutedNotifier(
        secrets, lambda _: run_with(ROUTING), Log(), pacer=Pacer(sleep=sleeps), clock=ManualClock(T0)
    )
    routed.notify(notice("run_started"))
    routed.notify(notice("ring_finished"))
    assert len(server.to(SLACK)) == 2
    assert len(sleeps.calls) == 1 and 0 < sleeps.calls[0] <= 1.0


def test_the_local_runtime_posts_routed_notices_and_still_writes_the_file(
    server: WebhookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_OPS", server.url(SLACK))
    routing = {
        "channels": [{"name": "ops-slack", "kind": "slack", "webhook": "SLACK_OPS"}],
        "routes": [{"topics": ["run_started", "run_finished"], "channels": ["ops-slack"]}],
    }
    policy = load_policy(str(EXAMPLES / "policy.yaml"))
    policy = policy.model_copy(update={"notifications": Notifications.model_validate(routing)})
    runtime = LocalRuntime.open(tmp_path / "state")
    run = runtime.drive(runtime.start(policy, load_inventory(str(EXAMPLES / "fleet.json"))).run_id)
    topics = [
        json.loads(line)["topic"] for line in (tmp_path / "state" / "notifications.jsonl").read_text().splitlines()
    ]
    assert topics[0] == "run_started" and topics[-1] == "run_finished" and len(topics) > 2
    posted = [p.json["blocks"][0]["text"]["text"] for p in server.to(SLACK)]
    assert posted == [f"Run started: {run.run_id}", f"Run finished: {run.run_id}"]


def test_the_timer_announces_a_scheduled_run_once(server: WebhookServer) -> None:
    policy = load_policy(str(EXAMPLES / "policy.yaml"))
    policy = policy.model_copy(update={"notifications": Notifications.model_validate(ROUTING)})
    assert policy.schedule is not None
    window = policy.schedule.windows(datetime(2026, 12, 1, tzinfo=UTC), 1)[0]
    routed = notifier(server, None)
    for minutes in (0, 5):  # two timer ticks in the same period
        routed.announce(policy, window.start - timedelta(hours=24) + timedelta(minutes=minutes))
    (posted,) = server.posts
    assert posted.path == SLACK and posted.json["blocks"][0]["text"]["text"].startswith("Run scheduled: ")


# ---------------------------------------------------------------- durable records


class Crash(BaseException):
    """The worker dies here: nothing after it runs (not an error the notifier could catch)."""


def test_a_worker_that_dies_after_claiming_leaves_the_notice_to_its_redelivery(
    server: WebhookServer, tmp_path: Path
) -> None:
    clock = ManualClock(T0)
    claims = SqliteClaims(tmp_path / "state.db", clock)
    run = run_with(ROUTING)

    def dies(url: str, payload: dict[str, Any]) -> Answer:
        raise Crash

    with pytest.raises(Crash):  # claimed ops-slack, died before posting
        notifier(server, run, claims=lambda: claims, clock=clock, post=dies).notify(notice("run_started"))
    other = notifier(server, run, claims=lambda: claims, clock=clock)
    other.notify(notice("run_started"))  # a duplicate delivered meanwhile: the lease holds, it skips
    assert server.posts == []

    clock.advance(timedelta(seconds=720))  # the dead worker's delivery is back after SQS's visibility timeout
    notifier(server, run, claims=lambda: claims, clock=clock).notify(notice("run_started"))
    assert [p.path for p in server.posts] == [SLACK]
    clock.advance(timedelta(days=3))
    notifier(server, run, claims=lambda: claims, clock=clock).notify(notice("run_started"))  # and again, later
    assert [p.path for p in server.posts] == [SLACK]


def test_the_lease_is_shorter_than_every_queues_visibility_timeout() -> None:
    """What makes a crash between claim and post safe: the redelivery finds the lease lapsed."""
    template = (Path(__file__).resolve().parent.parent / "template.yaml").read_text()
    (sqs,) = re.findall(r"VisibilityTimeout: (\d+)", template)
    assert timedelta(seconds=int(sqs)) > LEASE
    assert timedelta(minutes=10) > LEASE  # the Functions host's message lease on Storage Queues
    assert inspect.signature(SqliteQueue).parameters["visibility_timeout"].default > LEASE


def test_a_notice_that_fails_to_a_channel_is_given_up_so_a_redelivery_may_try_again(
    server: WebhookServer, tmp_path: Path
) -> None:
    clock = ManualClock(T0)
    claims = SqliteClaims(tmp_path / "state.db", clock)
    recorded: list[NoticeUndelivered] = []
    server.then(SLACK, Reply(404, "no_service"))  # not retried by the client: one failed post
    routed = notifier(server, run_with(ROUTING), claims=lambda: claims, clock=clock, record=recorded.append)
    routed.notify(notice("run_started"))
    (failed,) = recorded
    assert (failed.id, failed.channel, failed.reason) == (
        "web-20261114-0200:notify:run_started:undelivered:ops-slack",
        "ops-slack",
        "HTTP 404: no_service",
    )
    again = notifier(server, run_with(ROUTING), claims=lambda: claims, clock=clock)
    again.notify(notice("run_started"))  # redelivered: the failed channel is tried again, and now succeeds
    assert len(server.to(SLACK)) == 2 and again.undelivered == []


def test_an_undelivered_notice_shows_in_status_and_the_report_without_the_url(
    server: WebhookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.always(SLACK, Reply(404, "no_service"))
    monkeypatch.setenv("SLACK_OPS", server.url(SLACK))
    routing = {
        "channels": [{"name": "ops-slack", "kind": "slack", "webhook": "SLACK_OPS"}],
        "routes": [{"topics": ["run_started", "run_finished"], "channels": ["ops-slack"]}],
    }
    policy = load_policy(str(EXAMPLES / "policy.yaml"))
    policy = policy.model_copy(update={"notifications": Notifications.model_validate(routing)})
    state = tmp_path / "state"
    runtime = LocalRuntime.open(state)
    run = runtime.drive(runtime.start(policy, load_inventory(str(EXAMPLES / "fleet.json"))).run_id)

    # The run's last notice failed after the run had ended: recorded all the same.
    assert [(n.topic, n.channel, n.reason) for n in run.undelivered] == [
        ("run_started", "ops-slack", "HTTP 404: no_service"),
        ("run_finished", "ops-slack", "HTTP 404: no_service"),
    ]
    cli = CliRunner()
    text = cli.invoke(main, ["status", run.run_id, "--state-dir", str(state)], env={"COLUMNS": "200"}).output
    assert "Notifications not delivered" in text and "ops-slack" in text and "HTTP 404: no_service" in text
    document = json.loads(cli.invoke(main, ["status", run.run_id, "--state-dir", str(state), "--json"]).output)
    assert document["undelivered"][0] == {
        "notice": f"{run.run_id}:notify:run_started",
        "topic": "run_started",
        "channel": "ops-slack",
        "reason": "HTTP 404: no_service",
    }
    markdown, html = write_reports(run, tmp_path / "reports")
    assert "## Notifications not delivered" in markdown.read_text() and "ops-slack" in html.read_text()
    secret = server.url(SLACK)
    assert all(secret not in out for out in (text, markdown.read_text(), html.read_text(), json.dumps(document)))
