"""A whole patch run on AWS through the real Lambda handlers, invoked as Lambda invokes them.

- aws_lambda.trigger.handler: an EventBridge Scheduler event, every 15 minutes of virtual time;
- aws_lambda.worker.handler: SQS batch events made from the messages received from the step
  queue (`fake_aws.EventSourceMapping`: Lambda deletes what the handler did not report in
  batchItemFailures and leaves the failed records for redelivery and, after five receives, the
  redrive policy's dead-letter queue);
- aws_lambda.approve.handler: a Function URL event (GET /approve?token=...).

What the handlers reach, all set up as template.yaml does: moto's SQS queue and dead-letter
queue (VisibilityTimeout 720, maxReceiveCount 5), DynamoDB table (`table_definition`), S3
config bucket (the policy, PATCHPILOT_POLICY=s3://bucket/policy.yaml, and the
InstallOverrideList files), Secrets Manager signing key, CloudWatch alarm and EC2 instances,
snapshots, tags and status checks. Systems Manager and EC2's replace-root-volume tasks, which
moto lacks, are `fake_aws.FleetServices`: a stateful fake behind real boto3 clients, answering
from botocore `before-call` hooks after botocore has validated each request against the service
model (a Stubber cannot follow a whole run). The clients reach the runtime through
`AwsSessions`, patched to return the test's client factory.

Time is virtual: one ManualClock is the runtime's clock (WallClock patched; the trigger asks
it too) and moto's SQS clock (`moto_support.sqs_follows`), so SQS itself enforces the
delays, hops and visibility timeouts, and the event source mapping jumps the clock to the next
due message when nothing is visible. The `deps` cache is cleared whenever another function is
invoked: each function has its own (cold) container.

The fleet: eight managed instances in two zones of ap-northeast-1 (staging and production,
Linux and Windows), one of which fails its health script once patched and is rolled back; one
managed instance whose SSM agent has lost its connection; one unmanaged instance. Every API call
each function made is also checked against its role in template.yaml (the IAM actions;
resources and conditions aside).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
import requests
import yaml
from clocks import ManualClock
from fake_aws import Clients, EventSourceMapping, FakeLambdaContext, FleetServices, Patch, moto_image
from moto_support import ACCOUNT, aws, depth, sqs_follows
from slack_sdk.signature import SignatureVerifier
from webhook_server import Reply, webhook_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the Lambda handlers live at the root

import patchpilot.bootstrap.aws as runtime_module
from aws_lambda import advisory, approve, trigger, worker
from aws_lambda.observability import logger
from patchpilot.adapters.aws.dynamodb_store import table_definition
from patchpilot.adapters.aws.fleet import client_token
from patchpilot.approvals import ApprovalRequest, sign_approval
from patchpilot.bootstrap.aws import AwsRuntime, deps
from patchpilot.engine.messages import MESSAGE, Notify
from patchpilot.engine.run import Run
from patchpilot.policy import parse_policy
from patchpilot.service import Service

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]
REGION = "ap-northeast-1"
TABLE = "patchpilot-runs"
QUEUE = "patchpilot-steps"
BUCKET = "patchpilot-config-123456789012"
POLICY_KEY = "policy.yaml"
SECRET = "patchpilot-approval-signing-key"
SLACK_SECRET = "patchpilot-slack-signing-secret"
SLACK_SIGNING = "8f742231b10e8888abcd99yyyzzz85a5"
SIGNING_KEY = "k" * 64
ALARM = "tokyo-web-5xx"

POLICY = f"""
name: tokyo-monthly
schedule:
  monthly: "Second Tuesday Offset+4"
  at: "02:00"
  timezone: Asia/Tokyo
  duration: 10h
rings:
  - name: staging
    select: {{tags: {{Environment: staging, PatchPilot: managed}}}}
    soak: 1h
  - name: production
    select: {{tags: {{Environment: production, PatchPilot: managed}}}}
    approval: required
rollout:
  mode: concurrent_zones
  disruption_budget: "50%"
  canary: 1
  max_failures: 1
patches:
  classifications: [Critical, Security]
reboot: if_required
health:
  script:
    linux: curl -fsS http://localhost/health
    windows: Invoke-WebRequest -UseBasicParsing http://localhost/health
  alarms: [{ALARM}]
  timeout: 10m
aws:
  regions: [{REGION}]
"""
WINDOW = parse_policy(POLICY).schedule.windows(datetime(2026, 12, 1, tzinfo=UTC), 1)[0]  # type: ignore[union-attr]
START = WINDOW.start.astimezone(UTC)  # Saturday 12 December 2026, 02:00 in Tokyo

# name, Environment, zone, OS, breaks when patched
FLEET = [
    ("stg-web-1", "staging", "a", "linux", False),
    ("stg-web-2", "staging", "c", "linux", False),
    ("stg-win-1", "staging", "a", "windows", False),
    ("prd-web-1", "production", "a", "linux", False),
    ("prd-web-2", "production", "a", "linux", False),
    ("prd-web-3", "production", "c", "linux", True),  # its health check fails once patched
    ("prd-web-4", "production", "c", "linux", False),
    ("prd-win-1", "production", "c", "windows", False),
]
TESTED = {
    "linux": ["ALAS2023-2025-801", "ALAS2023-2025-802"],
    "windows": ["KB5048654", "KB5048661"],
}
LATE = {"linux": "ALAS2023-2025-830", "windows": "KB5050110"}  # released while staging soaks


@dataclass
class World:
    clock: ManualClock
    services: FleetServices
    clients: Clients
    steps: EventSourceMapping
    sqs: Any
    queue_url: str
    dlq_url: str
    ids: dict[str, str]  # name -> instance id
    function: str = ""

    # ------------------------------------------------------------ invoking the functions

    def _cold_start_if_another(self, function: str) -> FakeLambdaContext:
        if function != self.function:
            deps.cache_clear()  # another function: another container
            self.function = function
            self.clients.caller = function
        return FakeLambdaContext(function_name=f"patchpilot-{function}", region=REGION)

    def timer(self) -> dict[str, Any]:
        """The trigger, as EventBridge Scheduler invokes it (every 15 minutes)."""
        context = self._cold_start_if_another("trigger")
        now = self.clock.now()
        event = {
            "version": "0",
            "id": "5b8a2f5a-0f5e-4d8e-9c7e-3f0c2c6b1a11",
            "detail-type": "Scheduled Event",
            "source": "aws.scheduler",
            "account": ACCOUNT,
            "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/patchpilot-timer"],
            "detail": {},
        }
        result: dict[str, Any] = trigger.handler(event, context)
        return result

    def work(self, *, past_gates: bool = False) -> None:
        """The worker, invoked by the SQS event source mapping until the queue is empty, or only
        holds later messages while a run waits for approval (the test approves next: time does
        not run on to the gate's reminders unless `past_gates`)."""

        def invoke(event: dict[str, Any]) -> dict[str, Any]:
            context = self._cold_start_if_another("worker")
            result: dict[str, Any] = worker.handler(event, context)
            return result

        def waiting() -> bool:
            store = self.runtime().service.store
            return not past_gates and any(store.load(r).state == "awaiting_approval" for r in store.run_ids())

        self.steps.drain(invoke, idle=waiting)

    def open_link(self, token: str, method: str = "GET") -> dict[str, Any]:
        """The approval function, as its Function URL invokes it for GET /approve?token=...
        (opening the link) or POST (its Approve button, the token in the form's body)."""
        context = self._cold_start_if_another("approve")
        now = self.clock.now()
        headers = {"host": f"abc123.lambda-url.{REGION}.on.aws", "user-agent": "Mozilla/5.0"}
        form: dict[str, Any] = {}
        if method == "POST":
            headers["content-type"] = "application/x-www-form-urlencoded"
            body = base64.b64encode(urlencode({"token": token}).encode()).decode()
            form = {"body": body, "isBase64Encoded": True}  # how Function URLs pass a form
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/approve",
            "rawQueryString": "" if method == "POST" else f"token={token}",
            "headers": headers,
            **({} if method == "POST" else {"queryStringParameters": {"token": token}}),
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "abc123",
                "domainName": f"abc123.lambda-url.{REGION}.on.aws",
                "domainPrefix": "abc123",
                "http": {
                    "method": method,
                    "path": "/approve",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.7",
                    "userAgent": "Mozilla/5.0",
                },
                "requestId": "0a1b2c3d-0000-4000-8000-000000000001",
                "routeKey": "$default",
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "isBase64Encoded": False,
            **form,
        }
        result: dict[str, Any] = approve.handler(event, context)
        return result

    def press_slack_button(self, token: str, signed_at: datetime | None = None) -> dict[str, Any]:
        """Slack's interactivity request for a PatchPilot button, to the same Function URL."""
        payload = {
            "type": "block_actions",
            "user": {"id": "U0A1B2C3D", "username": "alice"},
            "actions": [{"action_id": "patchpilot_approve", "type": "button", "value": token}],
        }
        body = urlencode({"payload": json.dumps(payload)})
        stamp = str(int((signed_at or self.clock.now()).timestamp()))
        signature = SignatureVerifier(SLACK_SIGNING).generate_signature(timestamp=stamp, body=body)
        headers = {
            "host": f"abc123.lambda-url.{REGION}.on.aws",
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": stamp,
            "x-slack-signature": signature or "",
        }
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/approve",
            "rawQueryString": "",
            "headers": headers,
            "body": body,
            "isBase64Encoded": False,
            "requestContext": {"http": {"method": "POST", "path": "/approve", "sourceIp": "54.1.2.3"}},
        }
        result: dict[str, Any] = approve.handler(event, self._cold_start_if_another("approve"))
        return result

    # ------------------------------------------------------------ looking

    def runtime(self) -> AwsRuntime:
        return deps(logger)

    def load(self, run_id: str) -> Run:
        return self.runtime().service.store.load(run_id)

    def states(self, run: Run) -> dict[str, str]:
        """Each instance's state, by name; an instance in the run twice fails the test."""
        names = [self.names[r.id] for r in run.records()]
        assert len(names) == len(set(names)), f"instances in the run twice: {sorted(names)}"
        return {self.names[r.id]: r.state for r in run.records()}

    @property
    def names(self) -> dict[str, str]:
        return {v: k for k, v in self.ids.items()}


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with aws():
        clock = ManualClock(START - timedelta(minutes=10))
        with sqs_follows(clock):
            yield _build_world(clock, monkeypatch)
    deps.cache_clear()


def _build_world(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> World:
    # moto's ids are random and the planner orders by id: seeded, the waves are the same each time.
    requests.post("http://motoapi.amazonaws.com/moto-api/seed?a=7", timeout=5)
    # The stack's resources, as template.yaml declares them.
    boto3.client("dynamodb", region_name=REGION).create_table(**table_definition(TABLE))
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url = sqs.create_queue(QueueName=f"{QUEUE}-dlq", Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=QUEUE,
        Attributes={
            "VisibilityTimeout": "720",
            "MessageRetentionPeriod": "1209600",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}),
        },
    )["QueueUrl"]
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key=POLICY_KEY, Body=POLICY.encode())
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString=SIGNING_KEY)
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SLACK_SECRET, SecretString=SLACK_SIGNING)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    cloudwatch.put_metric_alarm(
        AlarmName=ALARM,
        Namespace="AWS/ApplicationELB",
        MetricName="HTTPCode_Target_5XX_Count",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=3,
        Threshold=10,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="no 5xx")

    services = FleetServices(clock, REGION)
    ids = _launch_fleet(services)
    released = START - timedelta(days=4)
    for os_name, patches in TESTED.items():
        services.release(*(Patch(p, os_name, released) for p in patches))  # type: ignore[arg-type]
    for os_name, patch in LATE.items():
        services.release(Patch(patch, os_name, START + timedelta(hours=1)))  # type: ignore[arg-type]
    clients = Clients(services)

    for name, value in {
        "PATCHPILOT_TABLE": TABLE,
        "PATCHPILOT_QUEUE_URL": queue_url,
        "PATCHPILOT_DLQ_URL": dlq_url,
        "PATCHPILOT_POLICY": f"s3://{BUCKET}/{POLICY_KEY}",
        "PATCHPILOT_OVERRIDE_BUCKET": BUCKET,
        "PATCHPILOT_APPROVAL_SECRET": SECRET,
        "PATCHPILOT_SLACK_SIGNING_SECRET": SLACK_SECRET,
        "AWS_REGION": REGION,
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "PatchPilot",
        "POWERTOOLS_SERVICE_NAME": "patchpilot",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime_module, "AwsSessions", lambda **_: clients)
    monkeypatch.setattr(runtime_module, "WallClock", lambda: clock)

    deps.cache_clear()
    steps = EventSourceMapping(queue_url, REGION, clock)
    return World(clock, services, clients, steps, sqs, queue_url, dlq_url, ids)


def _launch_fleet(services: FleetServices) -> dict[str, str]:
    """The fleet in moto (two zones, a data volume each), each instance's SSM agent in the fake;
    one managed production instance whose agent has lost its connection (prd-app-9), and one
    production instance without the PatchPilot=managed tag (legacy-1), which nothing may touch."""
    ec2 = boto3.client("ec2", region_name=REGION)
    ids: dict[str, str] = {}
    extra = [("prd-app-9", "production", "a", "linux", False), ("legacy-1", "production", "a", "linux", False)]
    for name, environment, zone, os_name, breaks in [*FLEET, *extra]:
        tags = {"Name": name, "Environment": environment}
        if name != "legacy-1":
            tags["PatchPilot"] = "managed"
        answer = ec2.run_instances(
            ImageId=moto_image(REGION, os_name),
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": f"{REGION}{zone}"},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 30}},
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 100}},
            ],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
        ids[name] = answer["Instances"][0]["InstanceId"]
        services.manage(ids[name], os_name, breaks_when_patched=breaks, online=name != "prd-app-9")  # type: ignore[arg-type]
    return ids


def _root_snapshot(world: World, name: str) -> str:
    """The instance's root-volume snapshot PatchPilot took, as EC2 (moto) holds it."""
    ec2 = boto3.client("ec2", region_name=REGION)
    raw = ec2.describe_instances(InstanceIds=[world.ids[name]])["Reservations"][0]["Instances"][0]
    root = next(m["Ebs"]["VolumeId"] for m in raw["BlockDeviceMappings"] if m["DeviceName"] == raw["RootDeviceName"])
    snapshots = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:PatchPilotInstance", "Values": [world.ids[name]]}]
    )["Snapshots"]
    (snapshot,) = [s for s in snapshots if s["VolumeId"] == root]
    return str(snapshot["SnapshotId"])


def records_by_name(world: World, run: Run) -> dict[str, Any]:
    return {world.names[r.id]: r for r in run.records()}


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as plain values."""


_CfnLoader.add_multi_constructor(
    "!",
    lambda loader, _, node: (
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)


def _template_actions() -> dict[str, set[str]]:
    """The IAM actions each function's role allows in template.yaml (by handler module),
    resources and conditions aside."""
    document = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)  # a SafeLoader
    resources = document["Resources"]
    allowed: dict[str, set[str]] = {}
    for resource in resources.values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        actions = allowed.setdefault(resource["Properties"]["Handler"].split(".")[1], set())
        for policy in resource["Properties"].get("Policies", []):
            if isinstance(policy, str):  # !Ref of a managed policy of the stack
                policy = resources[policy]["Properties"]["PolicyDocument"]
            for statement in policy["Statement"]:
                if isinstance(statement, dict) and statement.get("Effect") == "Allow":
                    action = statement["Action"]
                    actions.update([action] if isinstance(action, str) else action)
    return allowed


def _iam(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """The IAM actions an API call needs."""
    if operation == "TransactWriteItems":  # authorised per item action
        return [f"dynamodb:{kind}Item" for item in params["TransactItems"] for kind in item]
    prefix = {"secrets-manager": "secretsmanager", "auto-scaling": "autoscaling"}.get(service, service)
    batches = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage"}
    listings = {"ListObjectsV2": "ListBucket"}  # S3 authorises a listing as ListBucket
    return [f"{prefix}:{listings.get(operation, batches.get(operation, operation))}"]


def _read_yaml(key: str) -> Any:
    return yaml.safe_load(boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=key)["Body"].read())


# ---------------------------------------------------------------- the whole run


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a timer that starts nothing
def test_a_scheduled_run_patches_staging_then_production_after_approval_and_rolls_back_a_failure(
    world: World,
) -> None:
    # Before the window the timer starts nothing; once it has begun, one run (a timer that
    # fires twice, a Scheduler retry, starts the same run).
    early = world.timer()
    assert early["start"] is False and "next window" in early["reason"]
    world.clock.set(START + timedelta(minutes=5))
    started = world.timer()
    assert started["start"] is True and started["run_id"] == "tokyo-monthly-20261212-0200"
    run_id = started["run_id"]
    assert world.timer()["run_id"] == run_id
    assert world.runtime().service.store.run_ids() == [run_id]

    # Staging, its hour of soak (SQS hops), then the production ring waits for approval.
    world.work()
    run = world.load(run_id)
    assert run.status == "waiting_approval", run.log[-1].text
    assert run.promoted == TESTED
    assert world.states(run) == {name: "patched" if env == "staging" else "pending" for name, env, *_ in FLEET} | {
        "prd-app-9": "pending"
    }

    # Someone opens the link half an hour later: a tampered or foreign token is refused.
    world.clock.set(world.clock.now() + timedelta(minutes=30))
    token = sign_approval(ApprovalRequest(run_id, "production"), SIGNING_KEY)
    _, stamp, signature = token.split(".")
    other = sign_approval(ApprovalRequest("another-run", "production"), SIGNING_KEY).split(".")[0]
    tampered = world.open_link(".".join([other, stamp, signature]))
    assert tampered["statusCode"] == 403 and "not valid" in tampered["body"]
    foreign = world.open_link(sign_approval(ApprovalRequest(run_id, "production"), "another-key"))
    assert foreign["statusCode"] == 403
    assert world.load(run_id).status == "waiting_approval"
    stale = world.press_slack_button(token, signed_at=world.clock.now() - timedelta(minutes=6))
    assert stale["statusCode"] == 401 and "at most 300 s" in stale["body"]  # a Slack request too old
    opened = world.open_link(token)  # a link scanner or a person opening it: asks, approves nothing
    assert opened["statusCode"] == 200 and f"Approve ring production of run {run_id}?" in opened["body"]
    assert '<form method="post">' in opened["body"] and world.load(run_id).status == "waiting_approval"
    granted = world.open_link(token, method="POST")  # the Approve button
    assert granted["statusCode"] == 200 and f"approved ring production of run {run_id}" in granted["body"]

    world.work()
    run = world.load(run_id)
    assert run.status == "succeeded", run.reason
    expected = {name: "patched" for name, *_ in FLEET} | {"prd-web-3": "rolled_back", "prd-app-9": "skipped"}
    assert world.states(run) == expected  # legacy-1 (not managed) was never discovered
    lost = records_by_name(world, run)["prd-app-9"]
    assert lost.reason == "agent did not answer: SSM agent ConnectionLost"
    # the run's report, written to the configuration bucket when the run ended, and named in the notice
    s3 = boto3.client("s3", region_name=REGION)
    html = s3.get_object(Bucket=BUCKET, Key=f"reports/{run_id}.html")["Body"].read().decode()
    assert run_id in html and "prd-web-3" in html and "<svg" in html
    assert s3.head_object(Bucket=BUCKET, Key=f"reports/{run_id}.md")["ContentType"].startswith("text/markdown")
    # the overview page beside it, written again when the run ended: the run, linked to its report
    overview = s3.get_object(Bucket=BUCKET, Key="reports/index.html")["Body"].read().decode()
    assert f'href="{run_id}.html"' in overview and "No run needs a person." in overview

    # Production installed exactly what staging installed and passed, pinned through
    # InstallOverrideList files in the config bucket; not the patches released since.
    records = {r.id: r for r in run.records()}
    for name, _, _, os_name, _ in FLEET:
        assert records[world.ids[name]].installed == TESTED[os_name], name
    installs = [p for p in world.clients.params("SendCommand") if p["DocumentName"] == "AWS-RunPatchBaseline"]
    production = {world.ids[n] for n, env, *_ in FLEET if env == "production"}
    pinned = [p for p in installs if set(p["InstanceIds"]) & production]
    assert pinned and all(set(p["InstanceIds"]) <= production for p in pinned)
    assert all("InstallOverrideList" not in p["Parameters"] for p in installs if p not in pinned)
    for params in pinned:
        (url,) = params["Parameters"]["InstallOverrideList"]
        assert url.startswith(f"s3://{BUCKET}/runs/{run_id}/")
        os_name = "windows" if url.endswith("windows.yaml") else "linux"
        assert _read_yaml(url.removeprefix(f"s3://{BUCKET}/")) == {"patches": [{"id": p} for p in TESTED[os_name]]}
        assert all(world.services.machines[i].os == os_name for i in params["InstanceIds"])
    for name, _, _, os_name, _ in FLEET:
        on_instance = world.services.installed(world.ids[name])
        assert LATE[os_name] not in on_instance
        assert on_instance == ([] if name == "prd-web-3" else TESTED[os_name])  # the rollback took them away

    # The failed instance's root volume was replaced from its root snapshot, once, with a
    # ClientToken; it passed its health checks again afterwards.
    bad = records[world.ids["prd-web-3"]]
    root_snapshot = _root_snapshot(world, "prd-web-3")
    assert bad.snapshot_ids[0] == root_snapshot and len(bad.snapshot_ids) == 2  # root first, then data
    (replace,) = world.clients.params("CreateReplaceRootVolumeTask")
    assert replace["InstanceId"] == world.ids["prd-web-3"]
    assert replace["SnapshotId"] == root_snapshot
    assert replace["ClientToken"] == client_token(f"{run_id}:w{bad.wave}:rollback", world.ids["prd-web-3"])
    assert "health script: exit code 1" in bad.reason and "rolled back from" in bad.reason
    assert [s.step for s in bad.steps][-2:] == ["rollback", "recheck"] and bad.steps[-1].ok
    assert not world.services.broken(world.ids["prd-web-3"])

    # Nothing was touched that PatchPilot does not manage; nothing is left in the queues.
    touched = {i for p in world.clients.params("SendCommand") for i in p["InstanceIds"]}
    touched |= {p["InstanceSpecification"]["InstanceId"] for p in world.clients.params("CreateSnapshots")}
    assert world.ids["legacy-1"] not in touched
    assert world.clients.count("CreateSnapshots") == len(FLEET)
    assert depth(world.sqs, world.queue_url) == 0
    assert depth(world.sqs, world.dlq_url) == 0
    assert world.steps.failed_records == 0

    # Each function's role (template.yaml) allows every call it made.
    allowed = _template_actions()
    made = {
        (caller, action) for caller, service, op, params in world.clients.calls for action in _iam(service, op, params)
    }
    assert {(caller, action) for caller, action in made if action not in allowed[caller]} == set()
    assert {caller for caller, _ in made} == {"trigger", "worker", "approve"}

    # The link again, after the run: nothing more to approve.
    again = world.open_link(token)
    assert again["statusCode"] == 200 and "is not waiting for approval" in again["body"]


# ---------------------------------------------------------------- a malformed record


def test_a_malformed_record_is_dead_lettered_and_does_not_fail_the_batch(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two unreadable bodies and a well-formed notice of a run that does not exist (forged: no
    run issued it): all three are dead-lettered, the forged one refused and counted."""
    notice = Notify(id="r1:notify:run_started", run_id="r1", topic="run_started", text="Run r1 started")
    bodies = {
        "ok": MESSAGE.dump_json(notice).decode(),
        "broken": '{"type": "TakeSnapshots", "id": "r1:w1:snapshot"',  # cut short
        "zlib": '{"zlib": "not base64 at all!"}',
    }
    for name, body in bodies.items():
        world.sqs.send_message(
            QueueUrl=world.queue_url,
            MessageBody=body,
            MessageAttributes={
                "message_id": {"DataType": "String", "StringValue": notice.id if name == "ok" else f"m-{name}"}
            },
        )
    responses: list[dict[str, Any]] = []

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        assert len(event["Records"]) == 3  # one batch
        result: dict[str, Any] = worker.handler(event, FakeLambdaContext("patchpilot-worker", REGION))
        responses.append(result)
        return result

    world.steps.drain(invoke)

    assert responses == [{"batchItemFailures": []}]
    assert depth(world.sqs, world.queue_url) == 0
    dead = {d.message_id: d for d in world.runtime().queue.dead_letters()}
    assert set(dead) == {"m-broken", "m-zlib", notice.id}
    assert dead["m-broken"].reason.startswith("unreadable message")
    assert "bad zlib envelope" in dead["m-zlib"].reason
    assert dead[notice.id].reason == f"refused: Notify {notice.id} names run r1, which does not exist"
    assert depth(world.sqs, world.dlq_url) == 3  # peeking left them there
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [m["RefusedMessages"] for m in metrics if "RefusedMessages" in m] == [[1.0]]


def test_a_record_whose_handling_fails_is_reported_alone_and_delivered_again(world: World) -> None:
    """DynamoDB refuses one read: only that record is in batchItemFailures; Lambda deletes the
    other, and the failed one comes back after the visibility timeout (720 s), counted."""
    notice = Notify(id="r1:notify:run_started", run_id="r1", topic="run_started", text="Run r1 started")
    first_notice = Notify(id="r2:notify:run_started", run_id="r2", topic="run_started", text="Run r2 started")
    for message in (first_notice, notice):
        world.sqs.send_message(
            QueueUrl=world.queue_url,
            MessageBody=MESSAGE.dump_json(message).decode(),
            MessageAttributes={"message_id": {"DataType": "String", "StringValue": message.id}},
        )
    world.clients.fail_next("GetItem", "AccessDeniedException")
    batches: list[tuple[datetime, dict[str, Any], dict[str, Any]]] = []

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = worker.handler(event, FakeLambdaContext("patchpilot-worker", REGION))
        batches.append((world.clock.now(), event, result))
        return result

    began = world.clock.now()
    world.steps.drain(invoke)

    (_, first, first_result), (again_at, again, again_result) = batches
    bodies = {r["messageId"]: json.loads(r["body"])["id"] for r in first["Records"]}
    (failed,) = first_result["batchItemFailures"]
    assert bodies[failed["itemIdentifier"]] == first_notice.id
    (record,) = again["Records"]
    assert record["messageId"] == failed["itemIdentifier"]
    assert record["attributes"]["ApproximateReceiveCount"] == "2"
    assert again_at - began >= timedelta(seconds=720)
    assert again_result == {"batchItemFailures": []}  # no run issued it: refused, not retried
    assert depth(world.sqs, world.queue_url) == 0
    assert depth(world.sqs, world.dlq_url) == 2  # both name runs that do not exist


# ---------------------------------------------------------------- the trigger's fleet


def test_the_timer_plans_each_discovered_instance_once_the_unreachable_included(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discovery lists every instance found and, among them, the unreachable ones with why: an
    unreachable instance is planned once (and skipped at the probe), not twice, where it could
    land in two waves and inflate its zone's disruption budget."""
    planned: list[str] = []
    start = Service.start

    def spy(self: Service, run_id: str, policy: Any, instances: Any, **when: Any) -> Run:
        instances = list(instances)
        planned.extend(i.id for i in instances)
        return start(self, run_id, policy, instances, **when)

    monkeypatch.setattr(Service, "start", spy)
    world.clock.set(START + timedelta(minutes=5))
    assert world.timer()["start"] is True
    assert sorted(planned) == sorted([*(world.ids[name] for name, *_ in FLEET), world.ids["prd-app-9"]])


def test_a_slack_button_approves_the_ring_once(world: World) -> None:
    world.clock.set(START + timedelta(minutes=5))
    run_id = world.timer()["run_id"]
    world.work()
    assert world.load(run_id).status == "waiting_approval"
    token = sign_approval(ApprovalRequest(run_id, "production"), SIGNING_KEY)
    pressed = world.press_slack_button(token)
    assert pressed["statusCode"] == 200
    replayed = world.press_slack_button(token)  # the same signed request again (same second)
    assert replayed["statusCode"] == 401 and "replay" in replayed["body"]
    world.work()
    run = world.load(run_id)
    assert run.status == "succeeded", run.reason
    assert any(entry.text == "Ring production approved by Slack U0A1B2C3D (alice) from 54.1.2.3" for entry in run.log)


def test_approval_required_on_staging_holds_the_whole_run_until_the_link_is_used(world: World) -> None:
    gated = POLICY.replace("    soak: 1h\n", "    soak: 1h\n    approval: required\n")
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=POLICY_KEY, Body=gated.encode())
    world.clock.set(START + timedelta(minutes=5))
    run_id = world.timer()["run_id"]
    world.work()
    run = world.load(run_id)
    assert run.status == "waiting_approval" and run.current.ring == "staging", run.log[-1].text
    assert set(world.states(run).values()) == {"pending"}
    ec2 = boto3.client("ec2", region_name=REGION)
    ours = [{"Name": "tag-key", "Values": ["PatchPilotInstance"]}]  # the snapshots PatchPilot takes: none yet
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=ours)["Snapshots"] == []

    granted = world.open_link(sign_approval(ApprovalRequest(run_id, "staging"), SIGNING_KEY), method="POST")
    assert granted["statusCode"] == 200 and f"approved ring staging of run {run_id}" in granted["body"]
    world.work()
    run = world.load(run_id)  # staging patched and soaked; production waits for its own approval
    assert run.status == "waiting_approval" and run.current.ring == "production", run.log[-1].text
    assert {world.states(run)[name] for name, env, *_ in FLEET if env == "staging"} == {"patched"}
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=ours)["Snapshots"]


def test_an_inspector_finding_on_eventbridge_starts_one_emergency_run_and_a_repeat_merges(world: World) -> None:
    emergency = POLICY + "emergency: {min_severity: HIGH, soak: 30m, approval: auto}\n"
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=POLICY_KEY, Body=emergency.encode())
    world.clock.set(START - timedelta(days=3))
    finding = json.loads((ROOT / "tests" / "events" / "advisories" / "inspector_critical_openssl.json").read_text())
    finding["region"] = REGION
    finding["time"] = world.clock.now().isoformat().replace("+00:00", "Z")
    finding["resources"] = [world.ids["prd-web-1"]]
    finding["detail"]["resources"][0]["id"] = world.ids["prd-web-1"]

    def deliver(event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = advisory.handler(event, world._cold_start_if_another("advisory"))
        return result

    first = deliver(finding)
    (answer,) = first["answers"]
    assert answer.startswith("Emergency run tokyo-monthly-emergency-CVE-2025-0001-") and "started" in answer
    (run_id,) = [r for r in world.runtime().store.run_ids() if "-emergency-" in r]
    run = world.load(run_id)
    assert run.policy.patches.include == ["openssl", "openssl-libs"] and run.policy.patches.classifications == []
    assert [r.name for r in run.policy.rings] == ["staging", "production"]  # staging still first
    again = deliver(finding)  # EventBridge delivers it twice
    assert again["answers"][0].startswith("Merged CVE-2025-0001") and f"into run {run_id}" in again["answers"][0]
    assert [r for r in world.runtime().store.run_ids() if "-emergency-" in r] == [run_id]
    # The run installs only the fixes, though more patches are released and the baseline would take them.
    world.services.release(Patch("openssl", "linux", START - timedelta(days=4)))
    world.work()
    run = world.load(run_id)
    assert run.status == "succeeded", run.reason
    installed = {r.instance.name: tuple(r.installed) for r in run.records() if r.state == "patched"}
    assert installed and set(installed.values()) == {("openssl",)}, installed
    ((url, approved),) = world.services.baseline_reads[:1]
    assert url.startswith(f"s3://{BUCKET}/runs/{run_id}/") and url.endswith("/linux-baseline.json")
    assert approved["AMAZON_LINUX_2023"] == ["openssl", "openssl-libs"]
    assert all(u.endswith("linux-baseline.json") for u, _ in world.services.baseline_reads)
    assert world.services.override_reads  # later rings: pinned to what staging installed
    assert {tuple(ids) for _, ids in world.services.override_reads} == {("openssl",)}
    malformed = deliver({**finding, "detail": {**finding["detail"], "packageVulnerabilityDetails": {}}})
    assert malformed["answers"] == [] and "vulnerabilityId" in " ".join(malformed["problems"])
    allowed = _template_actions()["advisory"]
    made = {
        action
        for caller, service, op, params in world.clients.calls
        if caller == "advisory"
        for action in _iam(service, op, params)
    }
    assert made and made <= allowed


def test_each_notice_reaches_slack_once_across_containers_and_a_failed_one_is_recorded_in_the_run(
    world: World,
) -> None:
    """Real HTTP to the local webhook server; claims on the run table (DynamoDB), the undelivered
    record through SQS into the run, every call allowed by the worker's role."""
    slack_path, teams_path = "/slack/T0/B0/secret-slack-token", "/teams/workflows/invoke?sig=secret-teams-sig"
    with webhook_server() as server:
        server.always(teams_path, Reply(404, "no_service"))
        secrets = boto3.client("secretsmanager", region_name=REGION)
        secrets.create_secret(Name="patchpilot-notifications-ops", SecretString=server.url(slack_path))
        secrets.create_secret(Name="patchpilot-notifications-oncall", SecretString=server.url(teams_path))
        routed = POLICY + (
            "notifications:\n"
            "  channels:\n"
            "    - {name: ops, kind: slack, webhook: patchpilot-notifications-ops}\n"
            "    - {name: oncall, kind: teams, webhook: patchpilot-notifications-oncall}\n"
            "  routes:\n"
            '    - {topics: "*", channels: [ops]}\n'
            "    - {topics: [run_started], channels: [oncall]}\n"
        )
        boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=POLICY_KEY, Body=routed.encode())
        world.clock.set(START + timedelta(minutes=5))
        run_id = world.timer()["run_id"]
        world.work()
        posted = [p.raw for p in server.to(slack_path)]
        assert any(f"Run started: {run_id}".encode() in raw for raw in posted) and len(posted) == len(set(posted))

        # The run's first notice delivered again (the very notice the run issued: its text is the
        # run's first log line), to a new worker container: not posted again.
        text = world.load(run_id).log[0].text
        world.runtime().queue.publish(
            [Notify(id=f"{run_id}:notify:run_started", run_id=run_id, topic="run_started", text=text)]
        )
        world.function = ""  # the next invocation is a cold start
        world.work()
        assert [p.raw for p in server.to(slack_path)] == posted
        assert len(server.to(teams_path)) == 2  # the failed channel was given up, so the redelivery tried it again

        run = world.load(run_id)
        assert run.status == "waiting_approval"
        assert [(n.topic, n.channel, n.reason) for n in run.undelivered] == [  # recorded once
            ("run_started", "oncall", "HTTP 404: no_service")
        ]
    allowed = _template_actions()["worker"]
    made = {
        action
        for caller, service, op, params in world.clients.calls
        if caller == "worker"
        for action in _iam(service, op, params)
    }
    assert "dynamodb:PutItem" in made and made <= allowed


def test_a_gate_left_waiting_pages_slack_again_past_its_reminder_and_a_decided_gate_never(world: World) -> None:
    """The reminder is a Wait of the run through SQS (hops of 15 minutes), fired by the worker:
    the approval notice is not a page; 4 hours later the same channel is paged; once approved,
    the next reminder's timer is dropped as done and nothing more is posted."""
    slack_path = "/slack/T0/B0/secret-slack-token"
    with webhook_server() as server:
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name="patchpilot-notifications-ops", SecretString=server.url(slack_path)
        )
        routed = POLICY + (
            "notifications:\n"
            "  channels:\n"
            '    - {name: ops, kind: slack, webhook: patchpilot-notifications-ops, mention: "<!here>"}\n'
            "  routes:\n"
            "    - {topics: [approval_needed], channels: [ops]}\n"
        )
        boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=POLICY_KEY, Body=routed.encode())
        world.clock.set(START + timedelta(minutes=5))
        run_id = world.timer()["run_id"]
        world.work()
        run = world.load(run_id)
        assert run.status == "waiting_approval" and run.awaiting == f"{run_id}:ring2:remind1"
        assert run.runtime == "aws" and run.log[0].text.endswith(  # the run_started notice: the command for AWS
            "Nothing to do: you are told when a ring finishes or someone must act "
            "(`patchpilot runs --cloud aws --policy tokyo-monthly`)."
        )
        (asked,) = [p.json for p in server.to(slack_path)]
        assert "<!here>" not in json.dumps(asked)  # asking is not paging
        gate_opened = next(e.at for e in run.log if e.text.startswith("Ring production needs approval"))

        world.clock.set(gate_opened + timedelta(hours=4, minutes=1))
        world.work()
        _, reminder = [p.json for p in server.to(slack_path)]
        text = json.dumps(reminder)
        assert "<!here>" in reminder["text"] and f"Approval still needed: {run_id}" in text
        assert f"Ring production of run {run_id} still waits for approval, 4h1m since 2026-12-12T04:05+09:00: " in text
        assert "approve it with the Approve button or link of this notice" in text
        assert "patchpilot approve" not in text  # no such command on the clouds
        assert world.load(run_id).awaiting == f"{run_id}:ring2:remind2"

        granted = world.open_link(sign_approval(ApprovalRequest(run_id, "production"), SIGNING_KEY), method="POST")
        assert granted["statusCode"] == 200
        world.work(past_gates=True)  # the second reminder's time comes and goes: its timer is done
        run = world.load(run_id)
        assert run.status == "succeeded", run.reason
        assert len(server.to(slack_path)) == 2 and sum("still waits for approval" in e.text for e in run.log) == 1
