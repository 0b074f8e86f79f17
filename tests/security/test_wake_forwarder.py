"""infra/aws/wake-forwarder.yaml, the stack each other account and region deploys (a StackSet) so
that its Run Command and snapshot ends reach the PatchPilot stack's wake bus: its rules are the
waker's own, its role may put events on that one bus and nothing else, EventBridge of that account
alone may assume it, and in the PatchPilot stack's own account and region it creates nothing (the
waker reads those events on the default bus already).

These read the templates only (cfn-lint and checkov run in `make check-templates`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from security.test_aws_template import cfn_template, function_events

ROOT = Path(__file__).resolve().parents[2]
FORWARDER = cfn_template.load(ROOT / "infra" / "aws" / "wake-forwarder.yaml")
RESOURCES: dict[str, Any] = FORWARDER["Resources"]


def test_the_forwarded_events_are_the_ones_the_waker_takes() -> None:
    waker = function_events("WakerFunction")
    for name in ("RunCommandEnds", "SnapshotSetEnds"):
        rule = RESOURCES[name]["Properties"]
        assert rule["EventPattern"] == waker[name]["Properties"]["Pattern"], name
        assert rule["State"] == "ENABLED"
        assert rule["Targets"] == [
            {"Id": "WakeBus", "Arn": {"Ref": "WakeBusArn"}, "RoleArn": {"Fn::GetAtt": ["ForwarderRole", "Arn"]}}
        ]


def test_the_forwarder_role_puts_events_on_the_wake_bus_only_for_this_account_s_eventbridge() -> None:
    role = RESOURCES["ForwarderRole"]["Properties"]
    assert "RoleName" not in role  # one per region of an account: CloudFormation names each
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement == {
        "Sid": "PutOnTheWakeBus",
        "Effect": "Allow",
        "Action": "events:PutEvents",
        "Resource": {"Ref": "WakeBusArn"},
    }
    assert set(RESOURCES) == {"ForwarderRole", "RunCommandEnds", "SnapshotSetEnds"}


def test_nothing_is_created_in_the_patchpilot_stack_s_own_account_and_region() -> None:
    """The bus ARN says where the PatchPilot stack is: arn:<partition>:events:<region>:<account>:event-bus/<name>."""
    assert {r["Condition"] for r in RESOURCES.values()} == {"ElsewhereThanThePatchPilotStack"}
    ((negated,),) = FORWARDER["Conditions"]["ElsewhereThanThePatchPilotStack"].values()
    same_account, same_region = negated["Fn::And"]
    split = {"Fn::Split": [":", {"Ref": "WakeBusArn"}]}
    assert same_account == {"Fn::Equals": [{"Ref": "AWS::AccountId"}, {"Fn::Select": [4, split]}]}
    assert same_region == {"Fn::Equals": [{"Ref": "AWS::Region"}, {"Fn::Select": [3, split]}]}


def test_the_wake_bus_arn_parameter_takes_the_stack_s_output_and_nothing_else() -> None:
    pattern = re.compile(FORWARDER["Parameters"]["WakeBusArn"]["AllowedPattern"])
    assert pattern.match("arn:aws:events:eu-west-1:111122223333:event-bus/patchpilot-wake-prod")
    assert pattern.match("arn:aws-us-gov:events:us-gov-west-1:111122223333:event-bus/patchpilot-wake-x")
    for wrong in (
        "arn:aws:events:eu-west-1:111122223333:event-bus/*",
        "arn:aws:sqs:eu-west-1:111122223333:queue",
        "arn:aws:events:eu-west-1:1111:event-bus/b",
    ):
        assert not pattern.match(wrong), wrong
