"""The clouds' timer and compliance (patchpilot/app: timer.py, compliance_timer.py): the compliance tick (a scan per
`compliance.scan` slot, the report `report_after` it, each claimed once) and the policy kinds'
scheduled runs. Over in-memory fakes of the ports, then through the real AwsRuntime (moto: S3,
DynamoDB claims) and AzureRuntime (Azurite: blobs, table claims) with a fake fleet, since the
adapters' PatchAssessor comes with the AWS and Azure fleets."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from clocks import ManualClock
from moto_support import REGION, aws

from patchpilot.bootstrap.serverless import ServerlessPorts, ServerlessRuntime
from patchpilot.compliance.model import AssessmentStarted, MissingPatch, PatchState
from patchpilot.engine.messages import Notify
from patchpilot.engine.run import InstanceRecord, Run, WaveState
from patchpilot.inventory import Instance
from patchpilot.notify import RoutedNotifier
from patchpilot.policy import Policy, parse_policy
from patchpilot.ports import DiscoveryResult, UnknownRunError
from patchpilot.triggers import TIMER_PERIOD

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

SCAN_AT = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)  # compliance.scan: 05:00 UTC daily
WINDOW = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)  # the schedule's window
POLICY = """
name: fleet
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", timezone: UTC, duration: 4h}
rings:
  - {name: staging, select: {tags: {Environment: staging}}}
  - {name: production, select: {tags: {Environment: production}}}
exclude: {tags: {PatchPolicy: frozen}}
compliance: {scan: "cron(0 5 * * ? *)", report_after: 1h}
"""


def machine(name: str, env: str | None, **tags: str) -> Instance:
    labels = {"Environment": env, **tags} if env else dict(tags)
    return Instance(id=f"i-{name}", name=name, cloud="aws", region=REGION, os="linux", tags=labels)


FLEET = [
    machine("stg", "staging"),
    machine("prod", "production"),
    machine("ledger", "production", PatchPolicy="frozen"),
]
FLEET.append(machine("bastion", None))


class FakeFleet:
    """Discovers FLEET; `lacking` says what each machine misses."""

    def __init__(self, lacking: dict[str, tuple[str, ...]] | None = None, fail: bool = False) -> None:
        self.lacking = lacking if lacking is not None else {"i-prod": ("openssl",), "i-ledger": ("kernel",)}
        self.fail = fail
        self.scans: list[tuple[tuple[str, ...], str]] = []
        self.reads = 0
        self.discoveries = 0

    def discover(self, policy: Policy) -> DiscoveryResult:
        self.discoveries += 1
        if self.fail:
            raise ConnectionError("EC2 unreachable")
        return DiscoveryResult(list(FLEET))

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        self.scans.append((tuple(i.id for i in instances), token))
        return AssessmentStarted(started=len(instances))

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        self.reads += 1
        return [
            PatchState(
                i.id,
                assessed_at=SCAN_AT,
                missing=tuple(
                    MissingPatch(p, classification="Security", severity="Critical") for p in self.lacking.get(i.id, ())
                ),
            )
            for i in instances
        ]


class InMemoryClaims:
    def __init__(self) -> None:
        self.keys: dict[str, datetime] = {}

    def claim(self, key: str, until: datetime) -> bool:
        if key in self.keys:
            return False
        self.keys[key] = until
        return True


class InMemoryDocuments:
    def __init__(self) -> None:
        self.written: dict[str, tuple[str, str]] = {}

    def write(self, name: str, text: str, content_type: str) -> str:
        self.written[name] = (text, content_type)
        return f"mem://reports/{name}"

    def read(self, name: str) -> str | None:
        return self.written[name][0] if name in self.written else None

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.written if n.startswith(prefix))


class Sent:
    def __init__(self) -> None:
        self.notices: list[Notify] = []

    def notify(self, command: Notify) -> None:
        self.notices.append(command)


class InMemoryRuns:
    """The read side of a run store; `broken` makes every read fail as a store down would."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.broken = False

    def run_ids(self) -> list[str]:
        if self.broken:
            raise ConnectionError("the run table cannot be reached")
        return list(self.runs)

    def load(self, run_id: str) -> Run:
        if run_id not in self.runs:
            raise UnknownRunError(run_id)
        return self.runs[run_id]


def no_run(run_id: str) -> Run:
    raise KeyError(run_id)


def no_port() -> Any:
    raise AssertionError("the timer used a port it should not need here")


class FakeRuntime(ServerlessRuntime):
    """A serverless runtime over in-memory fakes of its ports."""

    def __init__(self, policy_text: str, clock: ManualClock, fleet: FakeFleet) -> None:
        self.clock = clock
        self.log = logging.getLogger("patchpilot.test")
        self._policy = parse_policy(policy_text)
        self._fleet = fleet
        self._claims = InMemoryClaims()
        self.documents: InMemoryDocuments | None = InMemoryDocuments()
        self.runs = InMemoryRuns()
        self.sent = Sent()
        self.routed = RoutedNotifier(None, no_run, self.sent, clock=clock)
        super().__init__(
            ServerlessPorts(
                settings=None,  # no approvals here
                log=self.log,
                clock=clock,
                store=lambda: self.runs,
                queue=no_port,
                secrets=lambda: None,
                claims=lambda: self._claims,
                fleet=lambda: self._fleet,
                documents=lambda: self.documents,
                service=no_port,
                policy=self.policy,
            )
        )

    @property
    def fleet(self) -> FakeFleet:
        return self._fleet

    @property
    def store(self) -> InMemoryRuns:
        return self.runs

    @property
    def claims(self) -> InMemoryClaims:
        return self._claims

    @property
    def report_store(self) -> InMemoryDocuments | None:
        return self.documents

    def policy(self) -> Policy:
        return self._policy


def written(rt: FakeRuntime) -> dict[str, tuple[str, str]]:
    assert rt.documents is not None
    return rt.documents.written


def runtime(at: datetime, fleet: FakeFleet | None = None, policy: str = POLICY) -> FakeRuntime:
    return FakeRuntime(policy, ManualClock(at), fleet or FakeFleet())


# ---------------------------------------------------------------- the compliance tick


def test_a_scan_starts_in_the_timer_period_of_its_slot_once(caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime(SCAN_AT + timedelta(minutes=3))
    assert rt.compliance_tick(rt.policy(), rt.clock.now()) == ["compliance scan of policy fleet started on 3 machines"]
    assert rt.fleet.scans == [
        (("i-stg", "i-prod", "i-ledger"), "compliance-fleet-20261202-0500")
    ]  # bastion is not the policy's
    assert rt.compliance_tick(rt.policy(), rt.clock.now() + timedelta(minutes=5)) == []  # the same slot, claimed
    assert list(rt.claims.keys) == ["compliance-scan:fleet:20261202-0500"]


def test_nothing_happens_between_slots() -> None:
    rt = runtime(SCAN_AT + TIMER_PERIOD + timedelta(minutes=1))
    assert rt.compliance_tick(rt.policy(), rt.clock.now()) == []
    assert rt.fleet.scans == [] and rt.fleet.reads == 0


def test_the_report_comes_report_after_the_scan_written_and_announced_once() -> None:
    rt = runtime(SCAN_AT + timedelta(hours=1, minutes=2))
    (line,) = rt.compliance_tick(rt.policy(), rt.clock.now())
    assert line.startswith("1 of 4 machines compliant (fleet") and line.endswith(
        "Report: mem://reports/compliance-fleet-20261202-0602.html"
    )
    reports = [f"compliance-fleet-20261202-0602.{s}" for s in ("csv", "html", "md")]
    assert sorted(written(rt)) == [*reports, "index.html", "summaries/compliance-fleet.json"]
    assert written(rt)["compliance-fleet-20261202-0602.csv"][1] == "text/csv"
    summary = json.loads(written(rt)["summaries/compliance-fleet.json"][0])
    assert summary["machines"]["compliant"] == 1 and summary["report"] == "compliance-fleet-20261202-0602.html"
    page = written(rt)["index.html"][0]  # the overview: the totals, linked to the report beside it
    assert 'href="compliance-fleet-20261202-0602.html"' in page and "1 of 4" in page
    (notice,) = rt.sent.notices
    assert notice.topic == "compliance_report" and notice.id == "compliance-report:fleet:20261202-0500:notify"
    assert "production: 1 non-compliant, 1 exposed; 2 missing (2 Critical)" in notice.text
    assert rt.compliance_tick(rt.policy(), rt.clock.now() + timedelta(minutes=1)) == []
    assert len(rt.sent.notices) == 1


def patched_run(rt: FakeRuntime, run_id: str, finished: datetime, **states: str) -> None:
    """Store a run of the policy whose production wave ended with machines (by name) in `states`."""
    by_name = {i.name: i for i in FLEET}
    records = {
        by_name[n].id: InstanceRecord(instance=by_name[n], ring="production", wave=1, state=s)  # type: ignore[arg-type]
        for n, s in states.items()
    }
    wave = WaveState(index=1, ring="production", ring_position=1, records=records, finished_at=finished)
    rt.runs.runs[run_id] = Run(run_id=run_id, policy=rt.policy(), created_at=finished, waves=(wave,))


def test_the_report_names_the_last_run_that_patched_each_machine() -> None:
    rt = runtime(SCAN_AT + timedelta(hours=1, minutes=2))
    patched_run(rt, "fleet-20261112-0200", WINDOW - timedelta(days=30), prod="patched")
    patched_run(rt, "fleet-20261201-0200", SCAN_AT - timedelta(days=1), prod="rolled_back", stg="patched")
    rt.compliance_tick(rt.policy(), rt.clock.now())
    text = written(rt)["compliance-fleet-20261202-0602.csv"][0]
    rows = {r["instance_id"]: (r["last_run_id"], r["last_run_at"]) for r in csv.DictReader(io.StringIO(text))}
    assert rows["i-prod"] == ("fleet-20261112-0200", (WINDOW - timedelta(days=30)).isoformat())  # December rolled back
    assert rows["i-stg"] == ("fleet-20261201-0200", (SCAN_AT - timedelta(days=1)).isoformat())
    assert rows["i-ledger"] == ("", "")  # never patched
    assert "Last PatchPilot run" in written(rt)["compliance-fleet-20261202-0602.md"][0]


def test_a_run_store_down_leaves_the_last_runs_out_of_the_report_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime(SCAN_AT + timedelta(hours=1, minutes=2))
    rt.runs.broken = True
    (line,) = rt.compliance_tick(rt.policy(), rt.clock.now())
    assert line.endswith("Report: mem://reports/compliance-fleet-20261202-0602.html") and len(rt.sent.notices) == 1
    assert "Last PatchPilot run" not in written(rt)["compliance-fleet-20261202-0602.md"][0]
    assert "compliance report of policy fleet without last runs: the run table cannot be reached" in caplog.text


def test_without_a_report_store_the_notice_still_goes() -> None:
    rt = runtime(SCAN_AT + timedelta(hours=1))
    rt.documents = None
    (line,) = rt.compliance_tick(rt.policy(), rt.clock.now())
    assert line.endswith("(no report store)") and "Report:" not in rt.sent.notices[0].text


def test_a_policy_without_compliance_section_scans_nothing() -> None:
    rt = runtime(SCAN_AT, policy=POLICY.replace('compliance: {scan: "cron(0 5 * * ? *)", report_after: 1h}', ""))
    assert rt.compliance_tick(rt.policy(), rt.clock.now()) == [] and rt.claims.keys == {}


def test_a_failing_cloud_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime(SCAN_AT, FakeFleet(fail=True))
    assert rt.compliance_tick(rt.policy(), rt.clock.now()) == ["compliance timer failed: EC2 unreachable"]
    assert "compliance timer of policy fleet failed: EC2 unreachable" in caplog.text


# ---------------------------------------------------------------- the policy kinds


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("frozen", "policy fleet is frozen: never patched, no scheduled run"),
        ("emergency", "policy fleet is an emergency policy: only advisories start its runs"),
    ],
)
def test_frozen_and_emergency_policies_start_no_scheduled_run(kind: str, reason: str) -> None:
    extra = "emergency: {}\n" if kind == "emergency" else ""
    rt = runtime(WINDOW + timedelta(minutes=1), policy=POLICY + f"kind: {kind}\n{extra}")
    decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
    assert not decision.start and decision.reason == reason
    assert rt.fleet.reads == 0


@pytest.mark.parametrize("kind", ["frozen", "emergency"])
def test_no_heads_up_announces_a_run_that_will_not_start(kind: str) -> None:
    from patchpilot.triggers import heads_up

    lead = timedelta(hours=24)
    scheduled = parse_policy(POLICY)
    assert heads_up(scheduled, WINDOW - lead, lead) is not None
    extra = "emergency: {}\n" if kind == "emergency" else ""
    assert heads_up(parse_policy(POLICY + f"kind: {kind}\n{extra}"), WINDOW - lead, lead) is None


def test_a_non_periodic_window_with_nothing_pending_is_skipped_with_one_notice() -> None:
    rt = runtime(
        WINDOW + timedelta(minutes=1), FakeFleet(lacking={"i-ledger": ("kernel",)}), POLICY + "kind: non_periodic\n"
    )
    decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
    assert not decision.start and decision.reason == "skipped: nothing pending on 2 machines"
    assert decision.run_id == "fleet-20261212-0200"
    (notice,) = rt.sent.notices
    assert notice.topic == "run_skipped" and notice.id == "fleet-20261212-0200:notify:run_skipped"


def test_a_non_periodic_window_with_patches_pending_starts_its_run() -> None:
    rt = runtime(WINDOW + timedelta(minutes=1), policy=POLICY + "kind: non_periodic\n")
    decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
    assert decision.start and decision.run_id == "fleet-20261212-0200" and rt.sent.notices == []


def test_a_non_periodic_window_whose_patches_cannot_be_read_starts_its_run(caplog: pytest.LogCaptureFixture) -> None:
    # The next tick is past the window's start: skipping on an error would lose the month.
    rt = runtime(WINDOW + timedelta(minutes=1), FakeFleet(fail=True), POLICY + "kind: non_periodic\n")
    decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
    assert decision.start and decision.run_id == "fleet-20261212-0200" and rt.sent.notices == []
    assert "pending patches not read (EC2 unreachable): the run starts" in caplog.text


def test_one_tick_discovers_the_fleet_once_for_all_it_does() -> None:
    rt = runtime(WINDOW + timedelta(minutes=1), policy=POLICY + "kind: non_periodic\n")
    now = rt.clock.now()
    assert rt.scheduled_decision(rt.policy(), now).start
    rt.scheduled_decision(rt.policy(), now)  # the same tick, read again: the discovery is shared
    assert rt.fleet.discoveries == 1 and rt.fleet.reads == 2


def test_a_non_periodic_policy_reads_nothing_before_its_window() -> None:
    rt = runtime(WINDOW - timedelta(hours=1), policy=POLICY + "kind: non_periodic\n")
    assert not rt.scheduled_decision(rt.policy(), rt.clock.now()).start and rt.fleet.reads == 0


def test_a_scheduled_policy_starts_as_before() -> None:
    rt = runtime(WINDOW + timedelta(minutes=1))
    decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
    assert decision.start and rt.fleet.reads == 0


# ---------------------------------------------------------------- freezes (docs/governance.md)

FROZEN_WINDOW = POLICY + 'freeze:\n  - {name: year-end, from: "2026-12-11", to: "2027-01-03", yearly: true}\n'
CUT_SHORT = POLICY + 'freeze:\n  - {name: dc-move, from: "2026-12-12T04:30", to: "2026-12-13T00:00"}\n'


class StartedRuns:
    """`Service.start` as the timer calls it: what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime | None]] = []

    def start(
        self, run_id: str, policy: Policy, instances: Sequence[Instance], *, window_end: datetime | None = None
    ) -> None:
        self.calls.append((run_id, window_end))


def starting(rt: FakeRuntime) -> StartedRuns:
    started = StartedRuns()
    rt.ports = rt.ports._replace(service=lambda: started)  # type: ignore[arg-type,return-value]
    return started


def test_a_window_that_starts_in_a_freeze_does_not_start_and_says_which_freeze() -> None:
    rt = runtime(WINDOW + timedelta(minutes=1), policy=FROZEN_WINDOW)
    started = starting(rt)
    decision = rt.trigger()
    assert not decision.start and decision.run_id == "fleet-20261212-0200"
    assert decision.reason == (
        "window 2026-12-12T02:00+00:00 of fleet falls in freeze year-end (2026-12-11T00:00+00:00 to "
        "2027-01-04T00:00+00:00): it does not start"
    )
    (notice,) = rt.sent.notices
    assert notice.topic == "run_skipped" and notice.id == "fleet-20261212-0200:notify:run_skipped"
    assert "falls in freeze year-end (2026-12-11T00:00+00:00 to 2027-01-04T00:00+00:00)" in notice.text
    assert started.calls == [] and rt.fleet.reads == 0


def test_a_frozen_window_of_a_non_periodic_policy_is_skipped_for_the_freeze_without_reading_patches() -> None:
    rt = runtime(WINDOW + timedelta(minutes=1), policy=FROZEN_WINDOW + "kind: non_periodic\n")
    decision = rt.scheduled_decision(rt.policy(), rt.clock.now())
    assert not decision.start and decision.frozen is not None and decision.frozen.name == "year-end"
    assert [n.topic for n in rt.sent.notices] == ["run_skipped"] and rt.fleet.reads == 0


def test_a_window_a_freeze_cuts_short_starts_and_ends_at_the_freeze() -> None:
    rt = runtime(WINDOW + timedelta(minutes=1), policy=CUT_SHORT)
    started = starting(rt)
    decision = rt.trigger()
    assert decision.start and decision.reason.endswith(
        "; freeze dc-move (2026-12-12T04:30+00:00 to 2026-12-13T00:00+00:00) ends it early"
    )
    assert started.calls == [("fleet-20261212-0200", datetime(2026, 12, 12, 4, 30, tzinfo=UTC))]


def test_the_heads_up_of_a_frozen_window_says_it_will_not_start() -> None:
    from patchpilot.triggers import heads_up

    lead = timedelta(hours=24)
    notice = heads_up(parse_policy(FROZEN_WINDOW), WINDOW - lead, lead)
    assert notice is not None and notice.text.startswith(
        "Run fleet-20261212-0200 of policy fleet will not start: its window 2026-12-12T02:00+00:00 falls in "
        "freeze year-end"
    )
    cut = heads_up(parse_policy(CUT_SHORT), WINDOW - lead, lead)
    assert cut is not None and cut.text.endswith("ends it early: no wave starts after its start")


# ---------------------------------------------------------------- the real runtimes, with a fake fleet


BUCKET = "patchpilot-config"


def test_the_aws_timer_writes_the_compliance_report_to_s3_and_skips_a_frozen_policy() -> None:
    from moto_support import TABLE, dynamodb

    from patchpilot.adapters.aws.sessions import AwsSessions
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime

    with aws():
        dynamodb()
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="policy.yaml", Body=(POLICY + "kind: frozen\n").encode())
        env = AwsEnvironment.from_environ(
            {
                "PATCHPILOT_TABLE": TABLE,
                "PATCHPILOT_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/steps",
                "PATCHPILOT_POLICY": f"s3://{BUCKET}/policy.yaml",
                "PATCHPILOT_OVERRIDE_BUCKET": BUCKET,
                "AWS_REGION": REGION,
            }
        )
        clock = ManualClock(SCAN_AT + timedelta(hours=1, minutes=1))
        rt = AwsRuntime(env, AwsSessions(), logging.getLogger("patchpilot"), clock)
        rt.__dict__["fleet"] = FakeFleet()
        decision = rt.trigger()
        assert not decision.start and "frozen" in decision.reason
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="reports/")["Contents"])
        reports = [f"reports/compliance-fleet-20261202-0601.{s}" for s in ("csv", "html", "md")]
        assert keys == [*reports, "reports/index.html", "reports/summaries/compliance-fleet.json"]
        overview = s3.get_object(Bucket=BUCKET, Key="reports/index.html")["Body"].read().decode()
        assert 'href="compliance-fleet-20261202-0601.html"' in overview and "0 of 4" in overview
        head = s3.head_object(Bucket=BUCKET, Key="reports/compliance-fleet-20261202-0601.csv")
        assert head["ContentType"] == "text/csv; charset=utf-8"
        page = s3.get_object(Bucket=BUCKET, Key="reports/compliance-fleet-20261202-0601.html")["Body"].read().decode()
        assert "4 machines are EXPOSED" in page  # the policy is frozen: every machine it sees
        rt.trigger()  # the next tick of the same period: claimed, nothing written again
        assert len(s3.list_objects_v2(Bucket=BUCKET, Prefix="reports/")["Contents"]) == 5


def test_the_azure_timer_writes_the_compliance_report_to_its_container(azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    from patchpilot.adapters.azure.clients import AzureClients
    from patchpilot.bootstrap.azure import AzureEnvironment, AzureRuntime

    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PATCHPILOT_TABLE": azurite.unique_name("runs"),
        "PATCHPILOT_QUEUE": azurite.unique_name("steps"),
        "PATCHPILOT_POLICY": f"blob://{azurite.unique_name('config')}/policy.yaml",
        "PATCHPILOT_REPORTS": azurite.unique_name("reports"),
    }
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container, _, name = settings["PATCHPILOT_POLICY"].removeprefix("blob://").partition("/")
    blobs.create_container(container)
    blobs.get_blob_client(container, name).upload_blob(POLICY.encode())
    clock = ManualClock(SCAN_AT + timedelta(hours=1, minutes=1))
    rt = AzureRuntime.build(
        AzureEnvironment.from_environ(settings),
        logging.getLogger("patchpilot"),
        clients=AzureClients(),
        clock=clock,
    )
    rt.__dict__["fleet"] = FakeFleet()
    assert not rt.trigger().start
    names = sorted(b.name for b in blobs.get_container_client(settings["PATCHPILOT_REPORTS"]).list_blobs())
    reports = [f"compliance-fleet-20261202-0601.{s}" for s in ("csv", "html", "md")]
    assert names == [*reports, "index.html", "summaries/compliance-fleet.json"]
    overview = blobs.get_blob_client(settings["PATCHPILOT_REPORTS"], "index.html").download_blob().readall().decode()
    assert 'href="compliance-fleet-20261202-0601.html"' in overview and "1 of 4" in overview
    text = blobs.get_blob_client(settings["PATCHPILOT_REPORTS"], names[2]).download_blob().readall().decode()
    assert "**1 of 4 machines compliant**" in text


CALENDAR = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//PatchPilot tests//EN
BEGIN:VEVENT
UID:audit@example.com
SUMMARY:Year-end audit
DTSTART;VALUE=DATE:20261210
DTEND;VALUE=DATE:20261214
RRULE:FREQ=YEARLY
END:VEVENT
END:VCALENDAR
"""
CALENDAR_POLICY = POLICY + "freeze_calendar: freezes.ics\n"
SKIPPED_BY_CALENDAR = (
    "window 2026-12-12T02:00+00:00 of fleet falls in freeze Year-end audit (2026-12-10T00:00+00:00 to "
    "2026-12-14T00:00+00:00): it does not start"
)


def test_the_aws_timer_skips_a_window_frozen_by_the_calendar_beside_the_policy_in_s3() -> None:
    from moto_support import TABLE, dynamodb

    from patchpilot.adapters.aws.sessions import AwsSessions
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime

    with aws():
        dynamodb()
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="fleet/policy.yaml", Body=CALENDAR_POLICY.encode())
        s3.put_object(Bucket=BUCKET, Key="fleet/freezes.ics", Body=CALENDAR.encode())
        env = AwsEnvironment.from_environ(
            {
                "PATCHPILOT_TABLE": TABLE,
                "PATCHPILOT_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/steps",
                "PATCHPILOT_POLICY": f"s3://{BUCKET}/fleet/policy.yaml",
                "PATCHPILOT_OVERRIDE_BUCKET": BUCKET,
                "AWS_REGION": REGION,
            }
        )
        rt = AwsRuntime(env, AwsSessions(), logging.getLogger("patchpilot"), ManualClock(WINDOW + timedelta(minutes=1)))
        rt.__dict__["fleet"] = FakeFleet()
        decision = rt.trigger()
        assert not decision.start and decision.reason == SKIPPED_BY_CALENDAR
        assert decision.frozen is not None and decision.frozen.source == "freezes.ics"


def test_the_azure_timer_skips_a_window_frozen_by_the_calendar_beside_the_policy_blob(azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    from patchpilot.adapters.azure.clients import AzureClients
    from patchpilot.bootstrap.azure import AzureEnvironment, AzureRuntime

    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PATCHPILOT_TABLE": azurite.unique_name("runs"),
        "PATCHPILOT_QUEUE": azurite.unique_name("steps"),
        "PATCHPILOT_POLICY": f"blob://{azurite.unique_name('config')}/fleet/policy.yaml",
        "PATCHPILOT_REPORTS": azurite.unique_name("reports"),
    }
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = settings["PATCHPILOT_POLICY"].removeprefix("blob://").partition("/")[0]
    blobs.create_container(container)
    blobs.get_blob_client(container, "fleet/policy.yaml").upload_blob(CALENDAR_POLICY.encode())
    blobs.get_blob_client(container, "fleet/freezes.ics").upload_blob(CALENDAR.encode())
    rt = AzureRuntime.build(
        AzureEnvironment.from_environ(settings),
        logging.getLogger("patchpilot"),
        clients=AzureClients(),
        clock=ManualClock(WINDOW + timedelta(minutes=1)),
    )
    rt.__dict__["fleet"] = FakeFleet()
    decision = rt.trigger()
    assert not decision.start and decision.reason == SKIPPED_BY_CALENDAR
