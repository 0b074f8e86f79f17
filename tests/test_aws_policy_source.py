"""Reading the deployed policy from S3 or an SSM parameter (moto for both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from patchpilot.adapters.aws.policy_source import load_policy_from
from patchpilot.errors import InputError

POLICY = (Path(__file__).resolve().parent.parent / "examples" / "policy.yaml").read_text()


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-northeast-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="ap-northeast-1")
        ssm = boto3.client("ssm", region_name="ap-northeast-1")
        s3.create_bucket(Bucket="ops", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
        yield s3, ssm


def test_a_policy_in_s3_is_read_and_validated(clients: tuple[Any, Any]) -> None:
    s3, ssm = clients
    s3.put_object(Bucket="ops", Key="patchpilot/policy.yaml", Body=POLICY.encode())
    assert load_policy_from("s3://ops/patchpilot/policy.yaml", s3, ssm).name == "monthly-fleet"


def test_a_policy_in_an_ssm_parameter_is_read_and_validated(clients: tuple[Any, Any]) -> None:
    s3, ssm = clients
    ssm.put_parameter(Name="/patchpilot/policy", Value=POLICY, Type="SecureString")
    assert load_policy_from("ssm:/patchpilot/policy", s3, ssm).name == "monthly-fleet"


def test_a_broken_deployed_policy_names_its_problems_and_its_location(clients: tuple[Any, Any]) -> None:
    s3, ssm = clients
    s3.put_object(Bucket="ops", Key="p.yaml", Body=POLICY.replace('"50%"', '"ten"').encode())
    with pytest.raises(InputError) as error:
        load_policy_from("s3://ops/p.yaml", s3, ssm)
    assert "s3://ops/p.yaml:" in error.value.render()
    assert "rollout.disruption_budget: expected a whole number or a percentage" in error.value.render()


@pytest.mark.parametrize("location", ["ftp://x/y", "s3://bucket-only"])
def test_an_unsupported_location_is_refused(clients: tuple[Any, Any], location: str) -> None:
    s3, ssm = clients
    with pytest.raises(InputError, match="expected"):
        load_policy_from(location, s3, ssm)


CALENDAR = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//PatchPilot tests//EN
BEGIN:VEVENT
UID:q4@example.com
SUMMARY:Black Friday
DTSTART;VALUE=DATE:20261127
DTEND;VALUE=DATE:20261130
END:VEVENT
END:VCALENDAR
"""


@pytest.mark.parametrize("location", ["s3://ops/patchpilot/policy.yaml", "ssm:/patchpilot/policy"])
def test_the_freeze_calendar_is_read_from_beside_the_deployed_policy(clients: tuple[Any, Any], location: str) -> None:
    from datetime import UTC, datetime

    s3, ssm = clients
    text = POLICY + "freeze_calendar: freezes.ics\n"
    if location.startswith("s3://"):
        s3.put_object(Bucket="ops", Key="patchpilot/policy.yaml", Body=text.encode())
        s3.put_object(Bucket="ops", Key="patchpilot/freezes.ics", Body=CALENDAR.encode())
    else:
        ssm.put_parameter(Name="/patchpilot/policy", Value=text, Type="String")
        ssm.put_parameter(Name="/patchpilot/freezes.ics", Value=CALENDAR, Type="String")
    freeze = load_policy_from(location, s3, ssm).freezes().at(datetime(2026, 11, 28, tzinfo=UTC))
    assert freeze is not None and freeze.name == "Black Friday" and freeze.source == "freezes.ics"


def test_a_missing_freeze_calendar_names_where_it_was_looked_for(clients: tuple[Any, Any]) -> None:
    s3, ssm = clients
    s3.put_object(Bucket="ops", Key="patchpilot/policy.yaml", Body=(POLICY + "freeze_calendar: freezes.ics\n").encode())
    with pytest.raises(InputError) as error:
        load_policy_from("s3://ops/patchpilot/policy.yaml", s3, ssm)
    assert error.value.render().startswith(
        "s3://ops/patchpilot/freezes.ics: (top level): freeze_calendar freezes.ics not read (NoSuchKey)"
    )
