"""Benchmark: the AWS API calls of a whole scheduled run over 500 instances.

The AWS runtime (`AwsRuntime`, as the Lambda functions build it) runs one scheduled run end to
end on moto (EC2, S3, SQS, DynamoDB, Secrets Manager, CloudWatch) with the stateful fake of
Systems Manager and EC2's replace-root-volume tasks from tests/fake_aws.py, on virtual time:
the timer starts the run, then the step queue is drained as Lambda's event source mapping
drives the worker (batches of 10, partial failures), through soaks, polls and SQS hops. Three
production instances fail their health check once patched and are rolled back.

Every API call of the runtime's clients is counted by a botocore `before-call` hook, per
service and operation (the event source mapping's own ReceiveMessage/DeleteMessageBatch are
Lambda's, not the function's, and are not counted). The target: at most 2 fleet calls (EC2,
SSM, CloudWatch, S3) per instance beyond CreateSnapshots, which is one per instance by design
(per-instance EC2 call for multi-volume crash-consistent snapshots). Figures go to
bench/results/aws_calls.json.

Wake-ups (docs/architecture.md, "Wake-ups"): the stack's waker is on (PATCHPILOT_WAKE_EVENTS, as
template.yaml deploys it), so the worker polls snapshots and installs as a fallback only, and the
cloud's completion events reach the waker `EVENT_DELAY` after the fake finishes: an SSM command's
"EC2 Command Status-change Notification" when the fake's command ends, an "EBS Multi-Volume
Snapshots Completion Status" when moto's snapshots (complete at once) are created; both shaped as
AWS documents them (tests/events/aws-published/). The waker's own calls are counted with the run
state's. Per step of each wave, the time from the last machine finishing (the fake's end of the
SSM commands, snapshots and root-volume tasks of that PatchPilot command) to the engine moving on
(the worker applying its result) is reported with its target (<= 30 s), and the makespan of the
run against the sum of its waves' own work (the makespan less those waits; target <= 1.05). With
`--no-wake`, the same run without the waker (the short polls), for comparison.

With `--drain` the same run drains every instance from its ELBv2 target group before its install
and re-adds it after its health checks with the pool's health as one more check (`traffic.drain`,
`pool_health`; moto's ELBv2), ten target groups of 50: the ELBv2 calls are counted as fleet calls,
with their own target (at most 0.5 per instance: they are batched per target group and wave, never
per instance). Figures go to bench/results/aws_calls_drain.json.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import copy  # noqa: E402
import re  # noqa: E402

import boto3  # noqa: E402
import requests  # noqa: E402
from clocks import ManualClock  # noqa: E402
from due_events import DueEvents, record_applied  # noqa: E402
from fake_aws import Clients, EventSourceMapping, FleetServices, Patch, moto_image  # noqa: E402
from moto_support import aws, depth, next_due, sqs_follows  # noqa: E402
from results_file import write_results  # noqa: E402

import patchpilot.bootstrap.aws as runtime_module  # noqa: E402
from patchpilot.adapters.aws.access import TAG_COMMAND, short_token  # noqa: E402
from patchpilot.adapters.aws.dynamodb_store import table_definition  # noqa: E402
from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime  # noqa: E402
from patchpilot.policy import parse_policy  # noqa: E402

INSTANCES = 500
BROKEN = 3  # production instances whose health check fails once patched
REGION = "ap-northeast-1"
ZONES = ("a", "c", "d")
BUCKET = "patchpilot-config-bench"
# botocore's service ids, as the call hook names them
FLEET_SERVICES = ("ec2", "ssm", "cloudwatch", "s3", "elastic-load-balancing-v2", "auto-scaling")
TARGET_BEYOND_SNAPSHOTS = 2.0  # fleet calls per instance beyond CreateSnapshots
DRAIN = "--drain" in sys.argv
TARGET_GROUPS = 10  # with --drain: the instances spread over this many target groups
TARGET_ELBV2 = 0.5  # with --drain: ELBv2 calls per instance, drain and re-add with pool health
TARGET_BEYOND_SNAPSHOTS_DRAIN = TARGET_BEYOND_SNAPSHOTS + TARGET_ELBV2
WAKE = "--no-wake" not in sys.argv
EVENT_DELAY = timedelta(seconds=5)  # from the fake finishing to the event reaching the waker
TARGET_STEP_WAIT = 30.0  # seconds from the last machine finishing to the engine moving on
TARGET_MAKESPAN_RATIO = 1.05  # the makespan against the sum of the waves' own work
PUBLISHED = HERE.parent / "tests" / "events" / "aws-published"

POLICY = f"""
name: tokyo-monthly
schedule: {{monthly: "Second Tuesday Offset+4", at: "02:00", timezone: Asia/Tokyo, duration: 10h}}
rings:
  - {{name: staging, select: {{tags: {{Environment: staging, PatchPilot: managed}}}}, soak: 1h}}
  - {{name: production, select: {{tags: {{Environment: production, PatchPilot: managed}}}}}}
rollout: {{mode: concurrent_zones, disruption_budget: "50%", canary: 1, max_failures: {BROKEN}}}
reboot: if_required
health:
  script: {{linux: "curl -fsS http://localhost/health", windows: "Invoke-WebRequest http://localhost/health"}}
  alarms: [tokyo-web-5xx]
  timeout: 10m
aws: {{regions: [{REGION}]}}
"""
DRAIN_POLICY = POLICY + "traffic: {drain: true, pool_health: true}\n"


def setup(clock: ManualClock) -> tuple[AwsRuntime, Clients, FleetServices, EventSourceMapping, str]:
    # moto's ids are random, and the waves follow the ids: seed them for the same run each time.
    requests.post("http://motoapi.amazonaws.com/moto-api/seed?a=11", timeout=5)
    boto3.client("dynamodb", region_name=REGION).create_table(**table_definition("runs"))
    sqs = boto3.client("sqs", region_name=REGION)
    dlq = sqs.create_queue(QueueName="steps-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
    url = sqs.create_queue(QueueName="steps", Attributes={"VisibilityTimeout": "720", "RedrivePolicy": redrive})[
        "QueueUrl"
    ]
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="policy.yaml", Body=(DRAIN_POLICY if DRAIN else POLICY).encode())
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    cloudwatch.put_metric_alarm(
        AlarmName="tokyo-web-5xx",
        Namespace="AWS/ApplicationELB",
        MetricName="HTTPCode_Target_5XX_Count",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=3,
        Threshold=10,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.set_alarm_state(AlarmName="tokyo-web-5xx", StateValue="OK", StateReason="quiet")

    services = FleetServices(clock, REGION)
    launch(services)
    if DRAIN:
        target_groups()
    released = clock.now() - timedelta(days=4)
    services.release(
        Patch("ALAS2023-2025-801", "linux", released),
        Patch("ALAS2023-2025-802", "linux", released),
        Patch("KB5048654", "windows", released),
        Patch("KB5048661", "windows", released),
    )
    clients = Clients(services)
    env = AwsEnvironment.from_environ(
        {
            "PATCHPILOT_TABLE": "runs",
            "PATCHPILOT_QUEUE_URL": url,
            "PATCHPILOT_DLQ_URL": dlq,
            "PATCHPILOT_POLICY": f"s3://{BUCKET}/policy.yaml",
            "PATCHPILOT_OVERRIDE_BUCKET": BUCKET,
            "PATCHPILOT_WAKE_EVENTS": "true" if WAKE else "false",
            "PATCHPILOT_ACCOUNT": "123456789012",  # moto's
            "AWS_REGION": REGION,
        }
    )
    wall_clock = runtime_module.WallClock
    runtime_module.WallClock = lambda: clock  # type: ignore[assignment,misc,return-value]
    try:
        runtime = AwsRuntime.build(env, logging.getLogger("bench"), clients)
    finally:
        runtime_module.WallClock = wall_clock  # type: ignore[misc]
    return runtime, clients, services, EventSourceMapping(url, REGION, clock), dlq


def launch(services: FleetServices) -> None:
    """500 instances over three zones, a root and a data volume each; 5% staging, 30% Windows."""
    ec2 = boto3.client("ec2", region_name=REGION)
    groups: Counter[tuple[str, str, str]] = Counter()
    for n in range(INSTANCES):
        groups[
            (
                ZONES[n % 3],
                "staging" if n % 40 in (0, 13) else "production",
                "windows" if n % 10 in (3, 7, 9) else "linux",
            )
        ] += 1
    broken = 0
    for (zone, environment, os_name), count in sorted(groups.items()):
        tags = [
            {"Key": "Environment", "Value": environment},
            {"Key": "PatchPilot", "Value": "managed"},
            {"Key": "Team", "Value": "web"},
        ]
        answer = ec2.run_instances(
            ImageId=moto_image(REGION, os_name),
            MinCount=count,
            MaxCount=count,
            Placement={"AvailabilityZone": f"{REGION}{zone}"},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 30}},
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 100}},
            ],
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        for raw in answer["Instances"]:
            breaks = environment == "production" and os_name == "linux" and broken < BROKEN and zone == ZONES[broken]
            broken += breaks
            services.manage(raw["InstanceId"], os_name, breaks_when_patched=breaks)  # type: ignore[arg-type]


def target_groups() -> None:
    """Every instance registered in one of `TARGET_GROUPS` instance target groups, tagged managed."""
    ec2 = boto3.client("ec2", region_name=REGION)
    elbv2 = boto3.client("elbv2", region_name=REGION)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    ids = sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"])
    for n in range(TARGET_GROUPS):
        arn = elbv2.create_target_group(
            Name=f"web-{n}", Protocol="HTTP", Port=80, VpcId=vpc, Tags=[{"Key": "PatchPilot", "Value": "managed"}]
        )["TargetGroups"][0]["TargetGroupArn"]
        elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i in ids[n::TARGET_GROUPS]])


def lambda_worker(runtime: AwsRuntime) -> Any:
    """What the worker function does with an SQS event, without powertools around it."""

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        failures = []
        for record in event["Records"]:
            try:
                runtime.handle_record(record)
            except Exception:
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    return invoke


class CloudEvents:
    """The completion events of the fakes' operations, as EventBridge would deliver them to the
    waker `EVENT_DELAY` after each ends; and when each operation of each PatchPilot command
    started and ended (by command id), for the figures."""

    def __init__(self, clients: Clients, services: FleetServices, clock: ManualClock) -> None:
        self.clients, self.services, self.clock = clients, services, clock
        self.due = DueEvents()
        self.seen_calls = 0
        self.seen_commands = 0
        self.ops: dict[str, list[tuple[datetime, datetime]]] = {}  # token or command id -> (start, end)
        self.ssm_sample = json.loads((PUBLISHED / "ssm_command_status_change.json").read_text())
        self.ebs_sample = json.loads((PUBLISHED / "ebs_create_snapshots_succeeded.json").read_text())

    def collect(self) -> None:
        """After a worker invocation: the operations it started, and their events."""
        now = self.clock.now()
        for _, service, operation, params in self.clients.calls[self.seen_calls :]:
            if (service, operation) == ("ec2", "CreateSnapshots"):
                tags = {t["Key"]: t["Value"] for spec in params["TagSpecifications"] for t in spec["Tags"]}
                self.ops.setdefault(tags[TAG_COMMAND], []).append((now, now))  # moto: complete at once
                self._schedule(now, self._ebs_event(now))
        self.seen_calls = len(self.clients.calls)
        for command in self.services.commands[self.seen_commands :]:
            token = command.comment.split(" ")[1] if command.comment.startswith("patchpilot ") else ""
            self.ops.setdefault(token, []).append((command.requested, command.done))
            self._schedule(command.done, self._ssm_event(command))
        self.seen_commands = len(self.services.commands)

    def next_due(self) -> datetime | None:
        return self.due.next_due()

    def deliver(self, runtime: AwsRuntime) -> int:
        """Hand the waker every event due now; how many."""
        delivered = 0
        for event in self.due.pop_due(self.clock.now()):
            runtime.wake(event)
            delivered += 1
        return delivered

    def finished(self, command_id: str) -> tuple[datetime, datetime] | None:
        """When the operations of a PatchPilot command started (first) and ended (last)."""
        ops = self.ops.get(command_id, []) + self.ops.get(short_token(command_id), [])
        ops += [
            (t.created, t.completed) for t in self.services.tasks if {"Key": TAG_COMMAND, "Value": command_id} in t.tags
        ]
        if not ops:
            return None
        return min(start for start, _ in ops), max(end for _, end in ops)

    def _schedule(self, ended: datetime, event: dict[str, Any]) -> None:
        self.due.add(ended + EVENT_DELAY, event)

    def _ssm_event(self, command: Any) -> dict[str, Any]:
        event = copy.deepcopy(self.ssm_sample)
        event["region"], event["time"] = REGION, _iso(command.done + EVENT_DELAY)
        event["resources"] = [f"arn:aws:ec2:{REGION}:123456789012:instance/{i}" for i in command.instance_ids]
        event["detail"].update(
            {
                "command-id": command.command_id,
                "document-name": command.document,
                "status": command.status(command.done),
            }
        )
        return event

    def _ebs_event(self, now: datetime) -> dict[str, Any]:
        event = copy.deepcopy(self.ebs_sample)
        event["region"], event["account"], event["time"] = REGION, "123456789012", _iso(now + EVENT_DELAY)
        return event


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def drive(runtime: AwsRuntime, steps: EventSourceMapping, events: CloudEvents, clock: ManualClock) -> int:
    """Drain the step queue as Lambda does, handing the waker each completion event when it is due;
    the clock moves to the next message or event. Returns the events delivered."""
    worker, delivered = lambda_worker(runtime), 0
    for _ in range(20_000):
        if steps.poll(worker):
            events.collect()
            continue
        due_message, due_event = next_due(steps.name, REGION), events.next_due() if WAKE else None
        if due_message is None and due_event is None:
            return delivered
        if due_event is not None and (due_message is None or due_event <= due_message):
            clock.set(max(due_event, clock.now()))
            delivered += events.deliver(runtime)
            continue
        assert due_message is not None
        clock.set(max(due_message, clock.now() + timedelta(milliseconds=1)))
    raise AssertionError("the queue did not drain")


def step_waits(run: Any, events: CloudEvents, applied: dict[str, datetime]) -> list[dict[str, Any]]:
    """Per PatchPilot fleet command of the run: its operations' span and the engine's wait after them."""
    rows = []
    for command_id in sorted(run.issued, key=lambda c: applied.get(c, datetime.max.replace(tzinfo=UTC))):
        span, moved = events.finished(command_id), applied.get(command_id)
        found = re.search(r":w(\d+):([a-z_-]+)$", command_id)
        if span is None or moved is None or found is None:
            continue
        started, ended = span
        wait = max(0.0, (moved - ended).total_seconds())
        rows.append(
            {"wave": int(found[1]), "step": found[2], "work_s": (ended - started).total_seconds(), "wait_s": wait}
        )
    return rows


def main() -> None:
    policy = parse_policy(DRAIN_POLICY if DRAIN else POLICY)
    assert policy.schedule is not None
    window = policy.schedule.windows(datetime(2026, 12, 1, tzinfo=UTC), 1)[0].start.astimezone(UTC)
    clock = ManualClock(window + timedelta(minutes=5))
    began = time.perf_counter()
    with aws(), sqs_follows(clock):
        runtime, clients, services, steps, dlq = setup(clock)
        ready = time.perf_counter()
        clients.calls.clear()  # the setup's own reads are not the run's
        service = runtime.service
        applied = record_applied(service, clock)
        began_at = clock.now()
        decision = runtime.trigger()
        assert decision.start, decision.reason
        events = CloudEvents(clients, services, clock)
        events.collect()
        woken = drive(runtime, steps, events, clock)
        run = runtime.service.store.load(decision.run_id)
        dead = depth(steps.sqs, dlq)
        makespan = (max(applied.values()) - began_at).total_seconds()
        waits = step_waits(run, events, applied)
    seconds = time.perf_counter() - began
    counts = clients.counts()
    size = sum(1 for r in run.records() if r.state != "excluded")
    rows = sorted(counts.items(), key=lambda item: (item[0][0] not in FLEET_SERVICES, item[0][0], item[0][1]))
    fleet = sum(n for (service, _), n in counts.items() if service in FLEET_SERVICES)
    state = sum(counts.values()) - fleet
    snapshots = counts[("ec2", "CreateSnapshots")]
    fleet_beyond = (fleet - snapshots) / size
    all_beyond = (sum(counts.values()) - snapshots) / size

    print(f"a scheduled run of {size} instances: {run.status} ({run.reason}); {run.summary()}")
    print(
        f"{len(run.waves)} waves, {steps.invocations} worker invocations, {steps.records} records, "
        f"{steps.failed_records} failed records, {dead} dead letters"
    )
    print(f"\n{'service':<26}{'operation':<34}{'calls':>7}{'per instance':>14}")
    for (service, operation), n in rows:
        print(f"{service:<26}{operation:<34}{n:>7}{n / size:>14.3f}")
    print(f"{'fleet (EC2, SSM, CloudWatch, S3, ELBv2, Auto Scaling)':<60}{fleet:>7}{fleet / size:>14.3f}")
    print(f"{'run state (SQS, DynamoDB)':<60}{state:>7}{state / size:>14.3f}")
    print(f"{'all':<60}{fleet + state:>7}{(fleet + state) / size:>14.3f}")
    target = TARGET_BEYOND_SNAPSHOTS_DRAIN if DRAIN else TARGET_BEYOND_SNAPSHOTS
    elbv2 = sum(n for (service, _), n in counts.items() if service == "elastic-load-balancing-v2")
    print(f"\nfleet calls per instance beyond CreateSnapshots: {fleet_beyond:.3f} (target <= {target:g})")
    if DRAIN:
        print(f"ELBv2 calls per instance (drain and re-add): {elbv2 / size:.3f} (target <= {TARGET_ELBV2:g})")
    print(f"all calls per instance beyond CreateSnapshots: {all_beyond:.3f}")
    print(f"wall time {seconds:.1f} s (setup {ready - began:.1f} s)")
    by_step: dict[str, list[float]] = {}
    for row in waits:
        by_step.setdefault(row["step"], []).append(row["wait_s"])
    waited = sum(row["wait_s"] for row in waits)
    own_work = makespan - waited
    ratio = makespan / own_work
    wake_said = f"{woken} completion events to the waker" if WAKE else "no waker (--no-wake): short polls"
    print(f"\nwake-ups: {wake_said}; from the last machine finishing to the engine moving on, per step:")
    for step, seconds_waited in by_step.items():
        print(
            f"  {step:<14} max {max(seconds_waited):6.0f} s  mean {sum(seconds_waited) / len(seconds_waited):6.0f} s"
            f"  over {len(seconds_waited)} waves"
        )
    worst = max((row["wait_s"] for row in waits), default=0.0)
    print(f"worst step wait {worst:.0f} s (target <= {TARGET_STEP_WAIT:g} s)")
    print(
        f"makespan {makespan / 60:.1f} min against the waves' own work {own_work / 60:.1f} min: {ratio:.3f}x"
        f" (target <= {TARGET_MAKESPAN_RATIO:g}x)"
    )

    figures = {
        "instances": size,
        "status": run.status,
        "summary": run.summary(),
        "waves": len(run.waves),
        "worker_invocations": steps.invocations,
        "records": steps.records,
        "dead_letters": dead,
        "seconds": round(seconds, 1),
        "calls": {f"{service}:{operation}": n for (service, operation), n in rows},
        "calls_per_instance": {f"{service}:{operation}": round(n / size, 3) for (service, operation), n in rows},
        "fleet_calls": fleet,
        "run_state_calls": state,
        "fleet_calls_per_instance_beyond_create_snapshots": round(fleet_beyond, 3),
        "all_calls_per_instance_beyond_create_snapshots": round(all_beyond, 3),
        "target_fleet_calls_per_instance_beyond_create_snapshots": target,
        "wake_ups": WAKE,
        "completion_events": woken,
        "event_delay_s": EVENT_DELAY.total_seconds(),
        "step_wait_s": {
            step: {"max": max(v), "mean": round(sum(v) / len(v), 1), "waves": len(v)} for step, v in by_step.items()
        },
        "step_waits": waits,
        "worst_step_wait_s": worst,
        "target_step_wait_s": TARGET_STEP_WAIT,
        "makespan_min": round(makespan / 60, 1),
        "own_work_min": round(own_work / 60, 1),
        "makespan_ratio": round(ratio, 3),
        "target_makespan_ratio": TARGET_MAKESPAN_RATIO,
    }
    if DRAIN:
        figures["elbv2_calls_per_instance"] = round(elbv2 / size, 3)
        figures["target_elbv2_calls_per_instance"] = TARGET_ELBV2
        figures["target_groups"] = TARGET_GROUPS
        figures["drained"] = sum(1 for r in run.records() if any(s.step == "drain" for s in r.steps))
        write_results(
            "aws_calls_drain",
            "AWS API calls of one scheduled run that drains every instance from its target group (moto ELBv2)",
            figures,
        )
    else:
        write_results(
            "aws_calls" if WAKE else "aws_calls_polled",
            "AWS API calls of one scheduled run (moto + fake SSM), counted per operation; the engine's waits per step",
            figures,
        )
    if run.status != "succeeded" or dead or fleet_beyond > target or (DRAIN and elbv2 / size > TARGET_ELBV2):
        raise SystemExit(1)
    if WAKE and (worst > TARGET_STEP_WAIT or ratio > TARGET_MAKESPAN_RATIO):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
