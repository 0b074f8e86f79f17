"""infra/aws/member-role.yaml, the role the StackSet deploys in each account of the policy's OUs
(`aws.organization`), against template.yaml: it holds what the PatchPilot functions do in a member
account (the worker's fleet changes, the discovery reads, the timer's compliance and maintenance
reads), scoped exactly as the stack scopes them, nothing of the PatchPilot account's own (run table,
queues, config bucket, secrets, role assumptions, Organizations), and it trusts only the function
roles named in its parameter. template.yaml lets the discovering functions list the OUs' accounts
and assume the member role only in accounts of their own organization.

These read the templates only (cfn-lint and checkov run in `make check-templates`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from security.test_aws_template import (  # and cfn_template, which it puts on the path
    FUNCTIONS,
    TEMPLATE,
    _calls_of,
    _statements,
    actions,
    cfn_template,
    grants,
    resources,
)

ROOT = Path(__file__).resolve().parents[2]
MEMBER = cfn_template.load(ROOT / "infra" / "aws" / "member-role.yaml")
MEMBER_RESOURCES: dict[str, Any] = MEMBER["Resources"]
# The services PatchPilot calls in the fleet's accounts (the rest are the PatchPilot account's own).
FLEET_SERVICES = ("ec2", "ssm", "elasticloadbalancing", "autoscaling", "cloudwatch", "rds", "health")
# The functions that reach member accounts: they hold FleetDiscoveryPolicy.
REACHING = ("WorkerFunction", "TriggerFunction", "AdvisoryFunction")


def member_grants() -> list[dict[str, Any]]:
    role = MEMBER_RESOURCES["MemberRole"]["Properties"]
    found: list[dict[str, Any]] = []
    for ref in role["ManagedPolicyArns"]:
        found.extend(_statements(MEMBER_RESOURCES[ref["Ref"]]["Properties"]["PolicyDocument"]))
    assert "Policies" not in role  # everything it may do is in the three managed policies
    return found


def scoped(statements: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Each (action, resource, condition) the statements allow, for the fleet's services; the
    stack's managed tag key written as the member role writes it."""
    found = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        condition = json.dumps(statement.get("Condition"), sort_keys=True).replace("${ManagedTagKey}", "PatchPilot")
        for action in actions(statement):
            if action.split(":", 1)[0] in FLEET_SERVICES:
                for resource in resources(statement):
                    found.add((action, resource, condition))
    return found


# Read in PatchPilot's own account only, never through a member role.
OWN_ACCOUNT_ONLY = {"ReadChangeCalendars"}


def test_the_member_role_holds_what_the_functions_do_in_a_member_account_scoped_the_same_way() -> None:
    stack = scoped([s for function in REACHING for s in grants(function) if s.get("Sid") not in OWN_ACCOUNT_ONLY])
    member = scoped(member_grants())
    # The timer's scan grant (AWS-RunPatchBaseline on managed instances) is within the worker's.
    assert member == stack
    assert {a.split(":", 1)[0] for a, _, _ in member} == set(FLEET_SERVICES)


def test_the_member_role_holds_nothing_of_the_patchpilot_accounts_own() -> None:
    held = {a for s in member_grants() for a in actions(s)}
    assert all(a.split(":", 1)[0] in FLEET_SERVICES for a in held), sorted(held)
    assert not any("*" in a for a in held)


def test_the_member_role_holds_every_call_the_code_makes_on_pools_and_scaling_groups() -> None:
    held = {a for s in member_grants() for a in actions(s)}
    made = r"\.elbv2\(|[\"']elbv2[\"']|ElasticLoadBalancingv2Client\b"
    assert _calls_of("elbv2", "elasticloadbalancing", made) <= held
    assert _calls_of("autoscaling", "autoscaling", r"[\"']autoscaling[\"']") <= held


def test_the_member_role_trusts_only_the_named_function_roles_of_the_patchpilot_account() -> None:
    trust = MEMBER_RESOURCES["MemberRole"]["Properties"]["AssumeRolePolicyDocument"]
    (statement,) = trust["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${PatchPilotAccountId}:root"}}
    assert statement["Condition"] == {"ArnEquals": {"aws:PrincipalArn": {"Ref": "PatchPilotRoleArns"}}}
    assert MEMBER["Parameters"]["PatchPilotAccountId"]["AllowedPattern"] == "^[0-9]{12}$"
    assert "Default" not in MEMBER["Parameters"]["PatchPilotRoleArns"]  # never trusts nobody-in-particular
    # The stack names those roles: the three functions that reach member accounts.
    named = TEMPLATE["Outputs"]["MemberTrustRoleArns"]["Value"]["Fn::Join"][1]
    assert named == [{"Fn::GetAtt": [f"{function}Role", "Arn"]} for function in REACHING]


def test_the_discovering_functions_list_the_ous_and_assume_the_member_role_only_in_their_organization() -> None:
    listing = {"organizations:ListAccountsForParent", "organizations:ListOrganizationalUnitsForParent"}
    assert _calls_of("organizations", "organizations", r"[\"']organizations[\"']") == listing
    for function in FUNCTIONS:
        held = {a for s in grants(function) for a in actions(s) if a.startswith("organizations:")}
        assert held == (listing if function in REACHING else set()), function
        for statement in grants(function):
            if set(actions(statement)) & listing:
                assert resources(statement) == ["*"]  # list actions: no resource-level permission
            if "sts:AssumeRole" in actions(statement) and statement.get("Sid") == "ReachOrganizationAccounts":
                assert resources(statement) == ["arn:${AWS::Partition}:iam::*:role/${MemberRoleName}"]
                assert statement["Condition"] == {"StringEquals": {"aws:ResourceOrgID": "${aws:PrincipalOrgID}"}}
    assert any(s.get("Sid") == "ReachOrganizationAccounts" for s in grants("WorkerFunction")), (
        "the worker assumes the member role"
    )
