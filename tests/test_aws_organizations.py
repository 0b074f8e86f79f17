"""Whole organisations on AWS: `aws.organization` lists the member accounts of OUs on each run
(adapters/aws/accounts.py), discovery reads each through its member role, and a refused
Organizations read fails discovery in one line naming the permission.

moto: Organizations (nested OUs, CloseAccount leaves an account SUSPENDED, pages of 20), STS
AssumeRole (moto keeps each assumed account's resources apart), EC2. Stubber: one AccessDenied
from Organizations, worded as IAM answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from clocks import ManualClock
from moto import mock_aws

from patchpilot.adapters.aws.accounts import fleet_accounts, member_role
from patchpilot.adapters.aws.fleet import Ec2SsmFleet
from patchpilot.adapters.aws.sessions import AwsSessions
from patchpilot.policy import parse_policy
from patchpilot.policy.model import AwsSettings
from patchpilot.ports import DiscoveryReadRefusedError

REGION = "eu-west-1"
T0 = datetime(2026, 12, 8, 2, tzinfo=UTC)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


class Organization:
    """A moto organization: the root, OUs under it and accounts placed in them."""

    def __init__(self) -> None:
        self.client = boto3.client("organizations", region_name=REGION)
        self.client.create_organization(FeatureSet="ALL")
        self.root = self.client.list_roots()["Roots"][0]["Id"]

    def unit(self, name: str, parent: str | None = None) -> str:
        answer = self.client.create_organizational_unit(ParentId=parent or self.root, Name=name)
        return str(answer["OrganizationalUnit"]["Id"])

    def account(self, name: str, unit: str) -> str:
        status = self.client.create_account(Email=f"{name}@example.com", AccountName=name)["CreateAccountStatus"]
        account = str(status["AccountId"])
        self.client.move_account(AccountId=account, SourceParentId=self.root, DestinationParentId=unit)
        return account


def settings(text: str) -> AwsSettings:
    aws = parse_policy(f"name: orgs\nrings: [{{name: all, select: {{clouds: [aws]}}}}]\naws: {text}\n").aws
    assert aws is not None
    return aws


class Recorder:
    """A client factory over `AwsSessions`, recording the Organizations calls and the accounts asked for."""

    def __init__(self, sessions: AwsSessions) -> None:
        self.sessions = sessions
        self.operations: list[str] = []
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, service: str, account: str | None, region: str) -> Any:
        self.asked.append((service, account))
        client = self.sessions(service, account, region)
        if service == "organizations" and not getattr(client, "_recorded", False):
            client.meta.events.register("before-call.organizations.*", self._record)
            client._recorded = True
        return client

    def _record(self, event_name: str, **_: Any) -> None:
        self.operations.append(event_name.rsplit(".", 1)[-1])


def test_the_accounts_are_the_active_members_of_the_ous_and_their_child_ous_listed_page_by_page(aws: None) -> None:
    org = Organization()
    prod = org.unit("Production")
    eu = org.unit("EU", prod)
    eu_shops = org.unit("Shops", eu)
    elsewhere = org.unit("Sandbox")
    crowd = [org.account(f"prod-{n:02}", prod) for n in range(23)]  # more than a page of 20
    nested = org.account("eu-shop", eu_shops)
    suspended = org.account("closed", eu)
    org.client.close_account(AccountId=suspended)
    org.account("sandbox", elsewhere)
    recorder = Recorder(AwsSessions())

    accounts = fleet_accounts(
        recorder,
        settings(f"{{regions: [{REGION}], accounts: [{{id: '444455556666'}}], organization: {{ou: [{prod}]}}}}"),
        REGION,
    )

    assert accounts == ["444455556666", *sorted([*crowd, nested])]  # listed first, then the members
    assert suspended not in accounts
    assert recorder.operations.count("ListAccountsForParent") == 2 + 1 + 1  # prod: two pages; EU; Shops
    assert recorder.operations.count("ListOrganizationalUnitsForParent") == 3


def test_without_accounts_or_an_organization_the_current_account_is_read(aws: None) -> None:
    recorder = Recorder(AwsSessions())
    assert fleet_accounts(recorder, settings(f"{{regions: [{REGION}]}}"), REGION) == [None]
    assert fleet_accounts(recorder, None, REGION) == [None]
    assert recorder.asked == []  # Organizations is never asked


def test_the_member_role_is_the_role_name_in_each_account_and_a_listed_account_keeps_its_own() -> None:
    aws = settings(
        "{accounts: [{id: '111111111111', role: 'arn:aws:iam::111111111111:role/Legacy'}, {id: '222222222222'}], "
        "organization: {ou: [ou-ab12-cdef3456], role_name: PatchPilotMember}}"
    )
    assert member_role(aws, "333333333333") == "arn:aws:iam::333333333333:role/PatchPilotMember"
    assert member_role(aws, "111111111111") == "arn:aws:iam::111111111111:role/Legacy"
    assert member_role(aws, "222222222222") is None  # listed without a role: the ambient credentials
    assert member_role(settings("{regions: [eu-west-1]}"), "333333333333") is None


def test_discovery_reads_each_member_account_through_its_member_role(aws: None) -> None:
    org = Organization()
    unit = org.unit("Workloads")
    first, second = org.account("shop", unit), org.account("billing", unit)
    policy = parse_policy(
        f"""
name: orgs
rings: [{{name: all, select: {{tags: {{Ring: prod}}}}}}]
aws: {{regions: [{REGION}], organization: {{ou: [{unit}], role_name: PatchPilotMember}}}}
"""
    )
    roles: list[str] = []

    def role_of(account: str) -> str | None:
        role = member_role(policy.aws, account)
        roles.append(f"{account}={role}")
        return role

    sessions = AwsSessions(role_of=role_of, base=boto3.Session(region_name=REGION))
    # moto keeps what each assumed account launches apart: one instance in each member account.
    launched = {}
    for account in (first, second):
        image = sessions("ec2", account, REGION).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        answer = sessions("ec2", account, REGION).run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Ring", "Value": "prod"}]}],
        )
        launched[account] = answer["Instances"][0]["InstanceId"]
    caller = sessions("sts", first, REGION).get_caller_identity()["Arn"]
    assert caller == f"arn:aws:sts::{first}:assumed-role/PatchPilotMember/patchpilot"

    agents: list[Stubber] = []

    def clients(service: str, account: str | None, region: str) -> Any:
        client = sessions(service, account, region)
        if service == "ssm":  # moto has no DescribeInstanceInformation: no agent registered
            stubber = Stubber(client)
            stubber.add_response("describe_instance_information", {"InstanceInformationList": []})
            stubber.activate()
            agents.append(stubber)
        return client

    result = Ec2SsmFleet(clients, ManualClock(T0), default_region=REGION).discover(policy)

    assert {(i.account, i.id) for i in result.instances} == {(a, i) for a, i in launched.items()}
    assert sorted(roles) == sorted(f"{a}=arn:aws:iam::{a}:role/PatchPilotMember" for a in (first, second))
    for stubber in agents:
        stubber.assert_no_pending_responses()


def test_a_refused_organizations_read_fails_discovery_in_one_line_naming_the_permission(aws: None) -> None:
    recorder = Recorder(AwsSessions())
    organizations = recorder("organizations", None, REGION)
    stubber = Stubber(organizations)
    message = (
        "User: arn:aws:sts::123456789012:assumed-role/patchpilot-TimerFunctionRole/x is not authorized to perform: "
        "organizations:ListAccountsForParent"
    )
    stubber.add_client_error("list_accounts_for_parent", "AccessDeniedException", message, 400)
    stubber.activate()
    policy = parse_policy(
        f"""
name: orgs
rings: [{{name: all, select: {{clouds: [aws]}}}}]
aws: {{regions: [{REGION}], organization: {{ou: [ou-ab12-cdef3456]}}}}
"""
    )

    with pytest.raises(DiscoveryReadRefusedError) as raised:
        Ec2SsmFleet(recorder, ManualClock(T0), default_region=REGION).discover(policy)

    assert raised.value.missing == "organizations:ListAccountsForParent"
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith("the accounts of aws.organization are not readable: ListAccountsForParent on ou-ab12-")
    assert "(AccessDeniedException: User: " in text
    assert text.endswith("(needs organizations:ListAccountsForParent)")
    assert not any(service == "ec2" for service, _ in recorder.asked)  # no placement read on a partial list
    stubber.assert_no_pending_responses()


def test_the_baselines_sync_targets_the_organizations_accounts_too(aws: None) -> None:
    from patchpilot.cli_aws import Target, _targets

    org = Organization()
    unit = org.unit("Workloads")
    member = org.account("shop", unit)
    policy = parse_policy(
        f"""
name: orgs
rings: [{{name: all, select: {{clouds: [aws]}}}}]
aws: {{accounts: [{{id: '111111111111'}}], organization: {{ou: [{unit}]}}}}
"""
    )

    targets = _targets(policy, [REGION], "policy.yaml", Recorder(AwsSessions()))

    assert targets == [Target("111111111111", REGION), Target(member, REGION)]


def test_the_maintenance_watch_says_when_the_organization_is_unreadable_and_reads_the_listed_accounts(
    aws: None,
) -> None:
    """Stubber: Organizations refuses; moto: EC2 (DescribeInstanceStatus) in the listed account."""
    recorder = Recorder(AwsSessions())
    stubber = Stubber(recorder("organizations", None, REGION))
    stubber.add_client_error("list_accounts_for_parent", "AccessDeniedException", "not authorized", 400)
    stubber.activate()
    policy = parse_policy(
        f"""
name: orgs
rings: [{{name: all, select: {{clouds: [aws]}}}}]
aws: {{regions: [{REGION}], accounts: [{{id: '111111111111'}}], organization: {{ou: [ou-ab12-cdef3456]}}}}
maintenance_watch: {{rds: false, health: false}}
"""
    )

    result = Ec2SsmFleet(recorder, ManualClock(T0), default_region=REGION).upcoming_maintenance(policy, [], T0)

    assert result.unavailable == (
        (
            "the accounts of aws.organization",
            "the accounts of aws.organization are not readable: ListAccountsForParent on ou-ab12-cdef3456 failed "
            "(AccessDeniedException: not authorized) (needs organizations:ListAccountsForParent)",
        ),
    )
    stubber.assert_no_pending_responses()


def test_the_lambda_assumes_the_member_role_the_deployed_policy_names(aws: None) -> None:
    """moto: S3 (the deployed policy), STS AssumeRole; the runtime's own clients (AwsSessions)."""
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime

    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="patchpilot-config", CreateBucketConfiguration={"LocationConstraint": REGION})
    policy = f"""
name: orgs
rings: [{{name: all, select: {{clouds: [aws]}}}}]
aws: {{regions: [{REGION}], accounts: [{{id: '222222222222'}}], organization: {{ou: [ou-ab12-cdef3456]}}}}
"""
    s3.put_object(Bucket="patchpilot-config", Key="policy.yaml", Body=policy.encode())
    env = AwsEnvironment.from_environ(
        {
            "PATCHPILOT_TABLE": "runs",
            "PATCHPILOT_QUEUE_URL": f"https://sqs.{REGION}.amazonaws.com/123456789012/steps",
            "PATCHPILOT_POLICY": "s3://patchpilot-config/policy.yaml",
            "AWS_REGION": REGION,
        }
    )

    runtime = AwsRuntime.build(env, None)

    member = runtime.clients("sts", "111111111111", REGION).get_caller_identity()["Arn"]
    assert member == "arn:aws:sts::111111111111:assumed-role/PatchPilotMember/patchpilot"
    listed = runtime.clients("sts", "222222222222", REGION).get_caller_identity()["Arn"]
    assert ":assumed-role/" not in listed  # listed without a role: the function's own credentials
