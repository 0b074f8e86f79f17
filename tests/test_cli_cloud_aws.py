"""`patchpilot compliance --cloud` and `patchpilot maintenance --cloud` on an AWS policy, through
the real `cloud_fleets` construction (`patchpilot.bootstrap.clouds`): `Ec2SsmFleet` over the real
`AwsSessions`, which moto's environment-based mocking answers (EC2 instances and tags, RDS databases).

What moto lacks is answered on the clients AwsSessions builds (its `client` is wrapped, nothing
else): Systems Manager by `fake_aws.FleetServices` (instance information, the Scan command,
DescribeInstancePatchStates and DescribeInstancePatches, on the test's clock), and EC2 scheduled
events (moto's DescribeInstanceStatus has none), RDS DescribePendingMaintenanceActions and AWS
Health DescribeEvents by `fake_aws.serve`; botocore validates each request and answer against the
service model, as a Stubber does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import click
import pytest
from click.testing import CliRunner, Result
from clocks import ManualClock
from fake_aws import FleetServices, Patch, moto_image, serve
from moto_support import aws

from patchpilot import cli_compliance
from patchpilot.adapters.aws.sessions import AwsSessions
from patchpilot.cli import main

REGION = "eu-west-1"
T0 = datetime(2026, 12, 8, 6, 0, tzinfo=UTC)
REBOOT_AT = T0 + timedelta(days=2)
TEAM = {"Key": "Team", "Value": "web"}
POLICY = f"""
name: web
rings:
  - {{name: all, select: {{tags: {{Team: web}}}}}}
aws: {{regions: [{REGION}]}}
maintenance_watch: {{horizon: 14d}}
"""


@dataclass
class Cloud:
    clock: ManualClock
    services: FleetServices
    ids: dict[str, str]
    policy: str
    rds_arn: str = ""


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    with aws():
        clock = ManualClock(T0)
        services = FleetServices(clock, REGION)
        ec2 = boto3.client("ec2", region_name=REGION)
        ids: dict[str, str] = {}
        for name, os_name in [("web-1", "linux"), ("web-2", "windows")]:
            answer = ec2.run_instances(
                ImageId=moto_image(REGION, os_name),
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}, TEAM]}],
            )
            ids[name] = answer["Instances"][0]["InstanceId"]
            services.manage(ids[name], os_name)  # type: ignore[arg-type]
        services.release(Patch("ALAS2023-2025-801", "linux", T0 - timedelta(days=2), classification="Security"))
        path = tmp_path / "policy.yaml"
        path.write_text(POLICY)
        world = Cloud(clock, services, ids, str(path))
        _answer_what_moto_lacks(world, monkeypatch)
        monkeypatch.setattr(cli_compliance, "wall_clock", lambda: clock)
        monkeypatch.setattr(cli_compliance, "sleep", lambda seconds: clock.advance(timedelta(seconds=seconds)))
        yield world


def _answer_what_moto_lacks(world: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    rds = boto3.client("rds", region_name=REGION)
    world.rds_arn = rds.create_db_instance(
        DBInstanceIdentifier="orders",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
        AllocatedStorage=20,
        MultiAZ=False,
    )["DBInstance"]["DBInstanceArn"]

    def events(params: dict[str, Any]) -> dict[str, Any]:
        event = {"InstanceEventId": "instance-event-0d59937288b749b32", "Code": "system-reboot"}
        event |= {"Description": "scheduled reboot", "NotBefore": REBOOT_AT, "NotAfter": REBOOT_AT + timedelta(hours=2)}
        return {"InstanceStatuses": [{"InstanceId": world.ids["web-1"], "Events": [event]}]}

    def pending(params: dict[str, Any]) -> dict[str, Any]:
        action = {"Action": "system-update", "CurrentApplyDate": T0 + timedelta(days=12), "Description": "OS update"}
        return {
            "PendingMaintenanceActions": [
                {"ResourceIdentifier": world.rds_arn, "PendingMaintenanceActionDetails": [action]}
            ]
        }

    served: set[int] = set()
    real = AwsSessions.client

    def client(self: AwsSessions, service: str, account: str | None, region: str) -> Any:
        built = real(self, service, account, region)
        if id(built) not in served:
            served.add(id(built))
            if service == "ssm":
                world.services.serve_ssm(built)
            elif service == "ec2":
                serve(built, {"DescribeInstanceStatus": events})
            elif service == "rds":
                serve(built, {"DescribePendingMaintenanceActions": pending})
            elif service == "health":
                serve(built, {"DescribeEvents": lambda params: {"events": []}})
        return built

    monkeypatch.setattr(AwsSessions, "client", client)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)


def test_compliance_cloud_scans_the_aws_fleet_waits_for_the_scan_and_prints_the_view_as_json(cloud: Cloud) -> None:
    result = run("compliance", "--policy", cloud.policy, "--cloud", "--scan", "--wait", "10m", "--json")

    assert result.exit_code == 1, result.output  # web-1 lacks a patch
    assert "web: 2 machines on aws" in result.stderr and "web: scan started on 2 of 2 machines" in result.stderr
    (scan,) = cloud.services.commands
    assert scan.parameters["Operation"] == ["Scan"] and sorted(scan.instance_ids) == sorted(cloud.ids.values())
    # It waited for the scan to end (12 polls, 20 s apart): the machines had no patch state before.
    assert cloud.clock.now() == scan.done == T0 + timedelta(minutes=4)
    assert "scan: 0 of 2 machines assessed" in result.stderr and "scan: 2 of 2 machines assessed" in result.stderr
    document = json.loads(result.stdout)
    assert document["totals"]["machines"]["non_compliant"] == 1 and document["totals"]["machines"]["compliant"] == 1
    assert document["version"] == 1 and [p["name"] for p in document["policies"]] == ["web"]
    machines = {i["id"]: i for i in document["instances"]}
    assert set(machines) == set(cloud.ids.values())
    web1 = machines[cloud.ids["web-1"]]
    assert web1["name"] == "web-1" and web1["cloud"] == "aws" and web1["ring"] == "all"
    assert web1["status"] == "non_compliant" and [p["id"] for p in web1["missing"]] == ["ALAS2023-2025-801"]
    assert web1["assessed_at"] == scan.done.isoformat()
    assert machines[cloud.ids["web-2"]]["status"] == "compliant"


def test_maintenance_cloud_reads_ec2_events_and_rds_and_prints_them_as_json(cloud: Cloud) -> None:
    result = run("maintenance", "--policy", cloud.policy, "--cloud", "--now", T0.isoformat(), "--json")

    assert result.exit_code == 1, result.output  # the reboot is due within the horizon (no schedule)
    document = json.loads(result.stdout)
    assert document["policy"] == "web" and document["next_window"] is None and document["unavailable"] == []
    items = {item["id"]: item for item in document["items"]}
    reboot = items[f"ec2:instance-event-0d59937288b749b32:{cloud.ids['web-1']}"]
    assert reboot["resource_name"] == "web-1" and reboot["downtime"] is True
    assert reboot["starts_at"] == REBOOT_AT.isoformat()
    database = items[f"rds:system-update:{cloud.rds_arn}"]
    assert database["warning"].startswith("single-AZ database") and database["downtime"] is True
    assert len(items) == 2


# ---------------------------------------------------------------- the fallback region (bootstrap.clouds)


def test_the_aws_fleet_falls_back_to_the_region_the_caller_runs_in_never_to_a_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runtimes and the CLI build the AWS fleet one way: a policy without aws.regions reads the
    region where PatchPilot runs (the Lambda's AWS_REGION, the CLI's AWS configuration); the CLI
    used to read us-east-1 when none was configured, and now says what to set."""
    from patchpilot.bootstrap.clouds import NoRegionError, aws_default_region, cloud_fleets
    from patchpilot.policy import parse_policy

    no_regions = parse_policy(POLICY.replace(f"aws: {{regions: [{REGION}]}}", "aws: {}"))
    with_regions = parse_policy(POLICY)
    assert aws_default_region(no_regions, "ap-south-1") == "ap-south-1"
    assert aws_default_region(with_regions, None) == REGION  # only the policy's regions are read then
    with pytest.raises(NoRegionError, match=r"set aws\.regions in the policy, or AWS_REGION"):
        aws_default_region(no_regions, None)

    clock = ManualClock(T0)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    (fleet,) = cloud_fleets(no_regions, clock)
    assert fleet.cloud == "aws" and fleet.default_region == "ap-south-1"  # type: ignore[attr-defined]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no profile's region either
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with pytest.raises(click.ClickException, match=r"names no aws\.regions and no AWS region is configured"):
        cloud_fleets(no_regions, clock)


def test_the_lambda_fleet_reads_its_own_region() -> None:
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime

    env = AwsEnvironment.from_environ(
        {
            "PATCHPILOT_TABLE": "runs",
            "PATCHPILOT_QUEUE_URL": "https://sqs.eu-north-1.amazonaws.com/123456789012/steps",
            "PATCHPILOT_POLICY": "s3://config/policy.yaml",
            "AWS_REGION": "eu-north-1",
        }
    )
    runtime = AwsRuntime(env, AwsSessions(), None, ManualClock(T0))
    assert runtime.fleet.default_region == "eu-north-1"
