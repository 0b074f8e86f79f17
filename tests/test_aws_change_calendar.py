"""SSM Change Calendars as freezes (`aws.change_calendars`, adapters/aws/change_calendar.py).

moto does not implement `GetCalendarState`: the SSM client here is a real boto3 client wrapped in
botocore's `Stubber`, which holds every request and answer to the service model. S3 (the policy)
is moto."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from clocks import ManualClock
from moto_support import REGION, TABLE, aws, dynamodb

from patchpilot.adapters.aws.change_calendar import ChangeCalendarError, SsmChangeCalendars
from patchpilot.advisories.decide import emergency_freeze
from patchpilot.policy import parse_policy
from patchpilot.triggers import scheduled_trigger

WINDOW = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
POLICY = """
name: fleet
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", timezone: UTC, duration: 4h}
rings:
  - {name: all, select: {tags: {Environment: production}}}
aws: {regions: [us-east-1], change_calendars: [patch-freeze]}
emergency: {}
"""


@pytest.fixture
def ssm() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("ssm", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def state(stubber: Stubber, at: datetime, answer: str, following: datetime | None) -> None:
    response: dict[str, Any] = {"State": answer, "AtTime": at.isoformat()}
    if following is not None:
        response["NextTransitionTime"] = following.isoformat()
    expected = {"CalendarNames": ["patch-freeze"], "AtTime": at.isoformat(timespec="seconds").replace("+00:00", "Z")}
    stubber.add_response("get_calendar_state", response, expected)


def test_a_closed_calendar_freezes_the_window_and_is_named(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    opens = datetime(2027, 1, 4, tzinfo=UTC)
    state(stubber, WINDOW, "CLOSED", opens)
    policy = parse_policy(POLICY).with_change_calendars(SsmChangeCalendars(client, ["patch-freeze"]))
    decision = scheduled_trigger(policy, WINDOW + timedelta(minutes=1))
    assert not decision.start and decision.frozen is not None
    assert (decision.frozen.name, decision.frozen.end, decision.frozen.source) == (
        "patch-freeze",
        opens,
        "SSM Change Calendar",
    )
    assert "falls in freeze patch-freeze (2026-12-12T02:00+00:00 to 2027-01-04T00:00+00:00)" in decision.reason


def test_a_calendar_that_closes_inside_the_window_cuts_it_short(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    closes = WINDOW + timedelta(hours=1, minutes=30)
    state(stubber, WINDOW, "OPEN", closes)  # at()
    state(stubber, WINDOW, "OPEN", closes)  # first_starting()
    state(stubber, closes, "CLOSED", closes + timedelta(days=2))
    policy = parse_policy(POLICY).with_change_calendars(SsmChangeCalendars(client, ["patch-freeze"]))
    decision = scheduled_trigger(policy, WINDOW + timedelta(minutes=1))
    assert decision.start and decision.window_end == closes


def test_an_emergency_run_inside_a_closed_calendar_waits(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    now = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
    state(stubber, now, "CLOSED", None)
    policy = parse_policy(POLICY).with_change_calendars(SsmChangeCalendars(client, ["patch-freeze"]))
    assert emergency_freeze(policy, now) == "patch-freeze (2026-12-24T09:00+00:00 to 9999-01-01T00:00+00:00)"


def test_a_calendar_that_cannot_be_read_stops_the_window_with_its_name(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    stubber.add_client_error("get_calendar_state", "InvalidDocument", "no such calendar")
    policy = parse_policy(POLICY).with_change_calendars(SsmChangeCalendars(client, ["patch-freeze"]))
    with pytest.raises(
        ChangeCalendarError, match=r"change calendar patch-freeze: GetCalendarState failed \(InvalidDocument\)"
    ):
        scheduled_trigger(policy, WINDOW + timedelta(minutes=1))


def test_the_aws_runtime_asks_the_policy_s_change_calendars() -> None:
    from patchpilot.adapters.aws.sessions import AwsSessions
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime

    with aws(), Stubber(boto3.client("ssm", region_name=REGION)) as stubber:
        client = stubber.client
        state(stubber, WINDOW, "CLOSED", None)
        dynamodb()
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="ops-config")
        s3.put_object(Bucket="ops-config", Key="policy.yaml", Body=POLICY.encode())
        env = AwsEnvironment.from_environ(
            {
                "PATCHPILOT_TABLE": TABLE,
                "PATCHPILOT_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/steps",
                "PATCHPILOT_POLICY": "s3://ops-config/policy.yaml",
                "AWS_REGION": REGION,
            }
        )
        sessions = AwsSessions()

        def clients(service: str, account: str | None, region: str) -> Any:
            return client if service == "ssm" else sessions(service, account, region)

        rt = AwsRuntime(env, clients, logging.getLogger("patchpilot"), ManualClock(WINDOW + timedelta(minutes=1)))
        decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
        assert not decision.start and decision.frozen is not None and decision.frozen.name == "patch-freeze"
