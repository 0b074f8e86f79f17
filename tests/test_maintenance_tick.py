"""The maintenance watch on the timer of both clouds (`ServerlessRuntime.maintenance_tick`, called
by `AwsRuntime.trigger` and `AzureRuntime.trigger`): hourly reads, an alert per item due before
the next window and a digest per digest time, each sent once however many containers tick, to a
real local webhook server (tests/webhook_server.py) through the runtime's own routed notifier.

The claims are the real ones: DynamoDB on moto, Table Storage on Azurite. The fleet is an
in-memory fake of the ports (`discover`, `upcoming_maintenance`): the cloud adapters' reads of
EC2, RDS, Health and Resource Graph have their own tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import yaml
from clocks import ManualClock
from moto_support import aws
from webhook_server import WebhookServer, webhook_server

from patchpilot.adapters.aws.dynamodb_store import table_definition
from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime
from patchpilot.bootstrap.azure import AzureEnvironment, AzureRuntime
from patchpilot.inventory import Instance
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.policy import Policy
from patchpilot.ports import DiscoveryResult

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

ROOT = Path(__file__).resolve().parents[1]
REGION = "ap-northeast-1"
BUCKET = "patchpilot-config-123456789012"
SLACK, TEAMS = "/slack/oncall", "/teams/ops"
# Monday 7 December 2026, 08:00 in Tokyo: the digest time; the next window is Saturday 12 December 02:00.
DIGEST = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
WEB = Instance(id="i-0web", cloud="aws", region=REGION, os="linux", name="web-1", tags={"Environment": "production"})


def policy_text() -> str:
    policy = yaml.safe_load((ROOT / "examples" / "policy.yaml").read_text())
    policy["maintenance_watch"] = {"digest": "cron(0 8 ? * MON *)", "timezone": "Asia/Tokyo"}
    policy["notifications"] = {
        "channels": [
            {"name": "oncall", "kind": "slack", "webhook": "slack-oncall", "mention": "<!subteam^S0ONCALL>"},
            {"name": "ops", "kind": "teams", "webhook": "teams-ops"},
        ],
        "routes": [
            {"topics": ["maintenance_alert"], "channels": ["oncall"]},
            {"topics": ["maintenance_digest"], "channels": ["ops"]},
        ],
    }
    return yaml.safe_dump(policy)


def reboot(at: datetime) -> MaintenanceItem:
    return MaintenanceItem(
        id="ec2:instance-event-0a1b2c3d:i-0web",
        source="ec2",
        cloud="aws",
        resource_id="i-0web",
        resource_name="web-1",
        kind="system-reboot",
        description="scheduled host maintenance",
        starts_at=at,
        ends_at=at + timedelta(hours=2),
        downtime=True,
        instance_id="i-0web",
        region=REGION,
    )


class FakeFleet:
    """The ports the watch reads, in memory; `reads` counts the reads (each costs API calls)."""

    def __init__(self, result: WatchResult | Exception) -> None:
        self.result = result
        self.reads = 0

    def discover(self, policy: Policy) -> DiscoveryResult:
        return DiscoveryResult([WEB])

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        self.reads += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with webhook_server() as running:
        yield running


def alerts(server: WebhookServer) -> list[str]:
    return [post.json["blocks"][1]["text"]["text"] for post in server.to(SLACK)]


def digests(server: WebhookServer) -> list[str]:
    return [post.json["attachments"][0]["content"]["body"][1]["text"] for post in server.to(TEAMS)]


# ---------------------------------------------------------------- AWS


@pytest.fixture
def aws_containers(server: WebhookServer) -> Iterator[Any]:
    """Each call a new AwsRuntime (another container) on the same moto table, bucket and secrets."""
    with aws():
        boto3.client("dynamodb", region_name=REGION).create_table(**table_definition("patchpilot-runs"))
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(Bucket=BUCKET, Key="policy.yaml", Body=policy_text().encode())
        secrets = boto3.client("secretsmanager", region_name=REGION)
        secrets.create_secret(Name="slack-oncall", SecretString=server.url(SLACK))
        secrets.create_secret(Name="teams-ops", SecretString=server.url(TEAMS))
        env = AwsEnvironment.from_environ(
            {
                "PATCHPILOT_TABLE": "patchpilot-runs",
                "PATCHPILOT_QUEUE_URL": f"https://sqs.{REGION}.amazonaws.com/123456789012/patchpilot-steps",
                "PATCHPILOT_POLICY": f"s3://{BUCKET}/policy.yaml",
                "AWS_REGION": REGION,
            }
        )

        def container(fleet: FakeFleet, at: datetime) -> AwsRuntime:
            runtime = AwsRuntime(
                env,
                lambda service, account, region: boto3.client(service, region_name=region),
                logging.getLogger("patchpilot"),
                ManualClock(at),
            )
            runtime.fleet = fleet  # type: ignore[assignment]
            return runtime

        yield container


def test_on_aws_each_alert_and_digest_goes_out_once_however_many_containers_tick(
    aws_containers: Any, server: WebhookServer
) -> None:
    fleet = FakeFleet(WatchResult(items=(reboot(DIGEST + timedelta(days=2)),)))
    tick = DIGEST + timedelta(minutes=5)
    decision = aws_containers(fleet, tick).trigger()
    assert not decision.start  # the scheduled run is decided as before
    assert len(alerts(server)) == 1 and len(digests(server)) == 1
    assert alerts(server)[0].startswith(":warning: <!subteam^S0ONCALL> web-1: EC2 scheduled event system-reboot")
    assert digests(server)[0].startswith("1 maintenance item within 14d for policy monthly-fleet: 1 before")

    aws_containers(fleet, tick + timedelta(seconds=30)).trigger()  # another container, the same tick
    assert fleet.reads == 2 and len(server.posts) == 2  # read again, nothing sent again

    aws_containers(fleet, tick + timedelta(minutes=15)).trigger()  # the next tick of the hour: no read
    assert fleet.reads == 2

    aws_containers(fleet, tick + timedelta(hours=1)).trigger()  # the next hour: read, nothing new
    assert fleet.reads == 3 and len(server.posts) == 2

    fleet.result = WatchResult(items=(replace(reboot(DIGEST + timedelta(days=3))),))  # AWS moved the event
    aws_containers(fleet, tick + timedelta(hours=2)).trigger()
    assert len(alerts(server)) == 2 and len(digests(server)) == 1  # alerted again; the digest is weekly
    assert "due 2026-12-10 08:00 JST" in alerts(server)[1]


def test_on_aws_an_alert_that_could_not_be_delivered_goes_out_at_the_next_read(
    aws_containers: Any, server: WebhookServer
) -> None:
    from webhook_server import Reply

    fleet = FakeFleet(WatchResult(items=(reboot(DIGEST + timedelta(days=2)),)))
    tick = DIGEST + timedelta(minutes=5)
    server.then(SLACK, Reply(404, "no_service"))  # the alert's first post fails; Slack does not retry a 404
    aws_containers(fleet, tick).trigger()
    assert len(server.to(SLACK)) == 1 and len(digests(server)) == 1

    aws_containers(fleet, tick + timedelta(hours=1)).trigger()  # the next read: the alert again
    aws_containers(fleet, tick + timedelta(hours=2)).trigger()  # delivered by then: not again
    assert len(server.to(SLACK)) == 2 and len(digests(server)) == 1


def test_on_aws_a_watch_that_fails_is_logged_and_the_timer_goes_on(
    aws_containers: Any, server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = FakeFleet(RuntimeError("ThrottlingException: Rate exceeded"))
    decision = aws_containers(fleet, DIGEST + timedelta(minutes=5)).trigger()
    assert decision.reason.startswith("next window of monthly-fleet starts")
    assert server.posts == []
    assert "the maintenance watch of policy monthly-fleet failed" in caplog.text
    assert "ThrottlingException: Rate exceeded" in caplog.text


def test_on_aws_a_source_that_cannot_be_read_is_in_the_digest_and_the_log(
    aws_containers: Any, server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    unread = (("health", "SubscriptionRequiredException: the Health API needs a Business support plan"),)
    aws_containers(FakeFleet(WatchResult(unavailable=unread)), DIGEST + timedelta(minutes=5)).trigger()
    assert alerts(server) == []
    (digest,) = digests(server)
    assert digest.startswith("No maintenance scheduled in the sources read within 14d")
    assert "Not read: health: SubscriptionRequiredException" in digest
    assert "policy monthly-fleet: not read: health: SubscriptionRequiredException" in caplog.text


# ---------------------------------------------------------------- Azure


class StaticSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, name: str) -> str:
        return self.values[name]


def test_on_azure_each_alert_and_digest_goes_out_once_however_many_workers_tick(
    azurite: Azurite, server: WebhookServer
) -> None:
    from azure.storage.blob import BlobServiceClient

    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PATCHPILOT_TABLE": azurite.unique_name("runs"),
        "PATCHPILOT_QUEUE": azurite.unique_name("steps"),
        "PATCHPILOT_POLICY": f"blob://{azurite.unique_name('config')}/policy.yaml",
    }
    container, _, name = settings["PATCHPILOT_POLICY"].removeprefix("blob://").partition("/")
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs.create_container(container)
    blobs.get_blob_client(container, name).upload_blob(policy_text().encode())
    secrets = StaticSecrets({"slack-oncall": server.url(SLACK), "teams-ops": server.url(TEAMS)})
    fleet = FakeFleet(WatchResult(items=(reboot(DIGEST + timedelta(days=2)),)))

    def worker(at: datetime) -> AzureRuntime:
        runtime = AzureRuntime.build(
            AzureEnvironment.from_environ(settings),
            log=logging.getLogger("patchpilot"),
            clients=AzureClients(),  # never reaches ARM: the fleet is fake
            clock=ManualClock(at),
            secrets=secrets,
        )
        runtime.fleet = fleet  # type: ignore[assignment]
        return runtime

    tick = DIGEST + timedelta(minutes=5)
    worker(tick).trigger()
    worker(tick).trigger()  # another worker, the same tick
    assert fleet.reads == 2
    assert len(alerts(server)) == 1 and len(digests(server)) == 1
    assert "<!subteam^S0ONCALL> web-1: EC2 scheduled event system-reboot due 2026-12-09 08:00 JST" in alerts(server)[0]
