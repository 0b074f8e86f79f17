"""Azure's own advisories (issue 19): Defender for Cloud findings and Update Manager's critical
updates start emergency runs as Inspector findings do on AWS.

- the pure core (advisories/azure_sources.py) over the recorded rows of
  tests/fixtures/defender/subassessments.json (their sources: fixtures/defender/sources.json);
- the Defender reader (adapters/azure/defender.py) through the real azure-mgmt-resourcegraph
  client to the fake ARM (tests/fake_azure_security.py answers `securityresources` with the
  recorded rows, the fake Resource Graph evaluating the query);
- `read_azure_advisories` (app/azure_advisories.py) over the fake ARM for both sources, the local
  runtime's run store and service (runs really start) and its SQLite claims.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure_rbac import fleet_role_actions
from fake_arm import FakeArm
from fake_azure_assessment import FakeAzureAssessment
from fake_azure_compute import SUB, FakeAzureCompute, Patch
from fake_azure_security import FakeAzureSecurity, recorded_rows

from patchpilot.adapters.azure.access import AzureAccess
from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.defender import AzureDefenderFindings
from patchpilot.adapters.azure.fleet import AzureFleet
from patchpilot.adapters.local.sqlite_claims import SqliteClaims
from patchpilot.advisories import Advisory, Unactionable, decide_advisory
from patchpilot.advisories.azure_sources import (
    SourceNotReadError,
    assessment_deliveries,
    defender_deliveries,
    defender_finding,
)
from patchpilot.app.azure_advisories import AzureAdvisoriesRead, read_azure_advisories
from patchpilot.compliance.model import MissingPatch, PatchState
from patchpilot.errors import InputError
from patchpilot.inventory import Instance
from patchpilot.local_runtime import DB_NAME, LocalRuntime
from patchpilot.policy import Policy, parse_policy

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CRITICAL_CVE, NO_FIX_CVE, CLOSED_CVE, LINUX_CVE, LOW_CVE = (f"CVE-2026-2100{n}" for n in range(1, 6))
POLICY = """
name: weu-web
rings:
  - name: staging
    select: {tags: {Environment: staging}}
  - name: production
    select: {tags: {Environment: production}}
patches: {classifications: [Critical, Security]}
emergency:
  min_severity: HIGH
  soak: 15m
"""


def policy(**emergency: Any) -> Policy:
    text = POLICY + "".join(f"  {k}: {v}\n" for k, v in emergency.items())
    return parse_policy(text)


def machine(name: str, os: str = "windows", environment: str = "production") -> Instance:
    return Instance(
        id=f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/{name}",
        cloud="azure",
        region="westeurope",
        os=os,  # type: ignore[arg-type]
        name=name,
        zone="1",
        tags={"Environment": environment},
        account=SUB,
    )


WIN1, WIN2, LINUX1 = machine("web-win-1", environment="staging"), machine("web-win-2"), machine("web-linux-1", "linux")
FLEET = [WIN1, WIN2, LINUX1]


def rows_on(*placed: tuple[str, Instance]) -> list[dict[str, Any]]:
    """The recorded row of each CVE on each machine, as the fake answers it."""
    arm = FakeArm(_Clock())
    security = FakeAzureSecurity(arm)
    return [security.add(cve, m.id) for cve, m in placed]


class _Clock:
    def now(self) -> datetime:
        return NOW


# ---------------------------------------------------------------- the pure core: Defender rows


def test_a_critical_finding_becomes_an_advisory_of_its_kb_for_exactly_its_machines() -> None:
    (delivery,) = defender_deliveries(rows_on((CRITICAL_CVE, WIN1)), FLEET)
    assert isinstance(delivery, Advisory)
    assert (delivery.source, delivery.cve, delivery.severity, delivery.fixes) == (
        "defender",
        CRITICAL_CVE,
        "CRITICAL",  # High with a CVSS 3 base of 9.8
        ("KB5048661",),
    )
    assert (delivery.instances, delivery.fleet_wide) == ((WIN1.id,), False)
    assert delivery.at == datetime(2026, 12, 1, 5, 10, 8, 764480, tzinfo=UTC)
    answer = decide_advisory(policy(), delivery, FLEET, NOW)
    assert (answer.action, answer.instances) == ("start", (WIN1.id,))
    assert answer.run_id == f"weu-web-emergency-{CRITICAL_CVE}-20261201-0000"


def test_a_linux_finding_names_its_package_as_the_fix() -> None:
    (delivery,) = defender_deliveries(rows_on((LINUX_CVE, LINUX1)), FLEET)
    assert isinstance(delivery, Advisory)
    assert (delivery.severity, delivery.fixes, delivery.instances) == ("HIGH", ("openssl",), (LINUX1.id,))


def test_one_cve_on_two_machines_is_one_advisory_for_both() -> None:
    (delivery,) = defender_deliveries(rows_on((CRITICAL_CVE, WIN1), (CRITICAL_CVE, WIN2)), FLEET)
    assert isinstance(delivery, Advisory) and delivery.instances == (WIN1.id, WIN2.id)
    assert delivery.at == datetime(2026, 12, 1, 5, 10, 8, 764480, tzinfo=UTC)  # the earliest evidence


@pytest.mark.parametrize(
    ("cve", "why"),
    [
        (NO_FIX_CVE, "patchable is false: no fix to install"),
        (CLOSED_CVE, "the finding is Healthy, not Unhealthy"),
    ],
)
def test_a_finding_without_a_fix_or_closed_is_unactionable_with_why(cve: str, why: str) -> None:
    (delivery,) = defender_deliveries(rows_on((cve, WIN1)), FLEET)
    assert isinstance(delivery, Unactionable)
    assert (delivery.source, delivery.reason) == ("defender", f"Defender finding {cve}: {why}")
    assert decide_advisory(policy(), delivery, FLEET, NOW).action == "ignore"


def test_a_finding_naming_no_kb_or_package_is_not_patched_with_a_guess() -> None:
    (row,) = rows_on((CRITICAL_CVE, WIN1))
    row["properties"]["remediation"] = "Install the latest cumulative update."
    row["properties"]["additionalData"]["vendorReferences"] = []
    assert defender_finding(row).problem == "no KB or package named as its fix"


def test_a_rows_text_cannot_forge_a_log_line() -> None:
    (row,) = rows_on((CRITICAL_CVE, WIN1))
    properties = row["properties"]
    properties.update(id="x\nERROR forged", displayName="", status={"code": "Unhealthy\nERROR", "severity": "High"})
    properties["additionalData"]["cve"] = []
    (delivery,) = defender_deliveries([row], FLEET)
    assert isinstance(delivery, Unactionable) and "\n" not in delivery.reason
    assert delivery.reason == 'Defender finding "x\\nERROR forged": the finding is "Unhealthy\\nERROR", not Unhealthy'


def test_a_low_finding_is_ignored_below_the_minimum_severity() -> None:
    (delivery,) = defender_deliveries(rows_on((LOW_CVE, WIN1)), FLEET)
    assert isinstance(delivery, Advisory) and delivery.severity == "LOW"
    answer = decide_advisory(policy(), delivery, FLEET, NOW)
    assert answer.action == "ignore" and "below the policy's minimum severity HIGH" in answer.text


def test_rows_of_machines_outside_the_fleet_are_another_policys() -> None:
    stranger = machine("db-1")
    assert defender_deliveries(rows_on((CRITICAL_CVE, stranger)), FLEET) == []


def test_the_same_findings_read_twice_have_the_same_key_and_a_rescan_or_a_new_machine_a_new_one() -> None:
    rows = rows_on((CRITICAL_CVE, WIN1))
    (first,) = defender_deliveries(rows, FLEET)
    (again,) = defender_deliveries([dict(r) for r in rows], FLEET)
    assert first.key == again.key and first.key.startswith(f"{CRITICAL_CVE}:")
    rescanned = rows_on((CRITICAL_CVE, WIN1))
    rescanned[0]["properties"]["timeGenerated"] = "2026-12-02T05:10:00Z"
    assert defender_deliveries(rescanned, FLEET)[0].key != first.key
    (wider,) = defender_deliveries(rows_on((CRITICAL_CVE, WIN1), (CRITICAL_CVE, WIN2)), FLEET)
    assert wider.key != first.key


def test_the_recorded_rows_have_the_published_shape() -> None:
    """Every recorded row carries the fields azure_sources.py reads (fixtures/defender/sources.json)."""
    for row in recorded_rows():
        properties = row["properties"]
        assert {"id", "displayName", "status", "resourceDetails", "timeGenerated", "additionalData"} <= set(properties)
        assert properties["additionalData"]["assessedResourceType"] in ("ServerVulnerability", "ServerVulnerabilityTvm")
        assert properties["status"]["code"] in ("Healthy", "Unhealthy", "NotApplicable")
        assert properties["status"]["severity"] in ("Low", "Medium", "High")


# ---------------------------------------------------------------- the pure core: the assessment


def missing(name: str, severity: str, classification: str, released: datetime | None) -> MissingPatch:
    return MissingPatch(id=name, title=name, classification=classification, severity=severity, released_at=released)  # type: ignore[arg-type]


def test_an_out_of_band_critical_kb_starts_a_run_of_exactly_it_on_the_machines_missing_it() -> None:
    oob = missing("KB5049999", "Critical", "Security", NOW - timedelta(days=2))
    states = [
        PatchState(WIN1.id, assessed_at=NOW - timedelta(hours=1), missing=(oob,)),
        PatchState(WIN2.id, assessed_at=NOW - timedelta(hours=1)),
        PatchState(LINUX1.id, error="no assessment in the last 7 days"),
    ]
    (delivery,) = assessment_deliveries(states, FLEET, NOW, timedelta(days=7))
    assert isinstance(delivery, Advisory)
    assert (delivery.source, delivery.cve, delivery.fixes, delivery.instances, delivery.severity) == (
        "assessment",
        "KB5049999",
        ("KB5049999",),
        (WIN1.id,),
        "CRITICAL",
    )
    answer = decide_advisory(policy(), delivery, FLEET, NOW)
    assert (answer.action, answer.instances) == ("start", (WIN1.id,))


@pytest.mark.parametrize(
    ("patch", "on"),
    [
        (missing("KB5049998", "Important", "Security", NOW - timedelta(days=1)), WIN1),  # not Critical
        (missing("KB5049997", "Critical", "Security", NOW - timedelta(days=8)), WIN1),  # released before the window
        (missing("KB5049996", "Critical", "Security", None), WIN1),  # release time unknown
        (missing("openssl", "Unspecified", "Security", NOW - timedelta(days=1)), LINUX1),  # no severity given
        (missing("vim", "Critical", "Other", NOW - timedelta(days=1)), LINUX1),  # not a security update
    ],
)
def test_other_missing_updates_start_nothing(patch: MissingPatch, on: Instance) -> None:
    states = [PatchState(on.id, assessed_at=NOW, missing=(patch,))]
    assert assessment_deliveries(states, FLEET, NOW, timedelta(days=7)) == []


def test_a_critical_linux_security_update_is_one_advisory_of_its_package() -> None:
    patch = missing("openssl", "Critical", "Security", NOW - timedelta(days=1))
    (delivery,) = assessment_deliveries(
        [PatchState(LINUX1.id, assessed_at=NOW, missing=(patch,))], FLEET, NOW, timedelta(days=7)
    )
    assert isinstance(delivery, Advisory) and (delivery.fixes, delivery.instances) == (("openssl",), (LINUX1.id,))


# ---------------------------------------------------------------- the policy


def test_azure_sources_default_to_defender_and_the_assessment_window_to_seven_days() -> None:
    emergency = policy().emergency
    assert emergency is not None
    assert (emergency.sources, emergency.assessment_window) == (["defender"], timedelta(days=7))
    opted = policy(sources="[defender, assessment]", assessment_window="3d").emergency
    assert opted is not None and (opted.sources, opted.assessment_window) == (
        ["defender", "assessment"],
        timedelta(days=3),
    )


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"sources": "[defender, defender]"}, "sources", "a source is named twice"),
        ({"sources": "[inspector]"}, "sources", "defender"),
        ({"assessment_window": "0"}, "assessment_window", "expected a window longer than 0"),
    ],
)
def test_bad_azure_source_settings_are_named(fields: dict[str, str], where: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        policy(**fields)
    assert any(where in str(p.path) and message in p.message for p in caught.value.problems), caught.value.problems


# ---------------------------------------------------------------- over the fake ARM


class World:
    """The fake ARM (machines, Defender's table, the assessment tables) and the local runtime."""

    def __init__(self, tmp_path: Path) -> None:
        self.runtime = LocalRuntime.open(tmp_path / "state", start=NOW)
        self.clock = self.runtime.clock
        self.arm = FakeArm(self.clock)
        self.compute = FakeAzureCompute(self.arm)
        self.security = FakeAzureSecurity(self.arm)
        self.assessment = FakeAzureAssessment(self.compute)
        for vm in FLEET:
            self.compute.add_vm(vm.name, os="Windows" if vm.os == "windows" else "Linux", tags=vm.tags)
        clients = AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )
        self.defender = AzureDefenderFindings(AzureAccess(clients, self.clock))
        self.fleet = AzureFleet(clients, self.clock)
        self.claims = SqliteClaims(tmp_path / "state" / DB_NAME, self.clock)
        self.told: list[str] = []
        self.discoveries = 0

    def instances(self) -> list[Instance]:
        self.discoveries += 1
        return FLEET

    def read(self, chosen: Policy, act: bool = True) -> AzureAdvisoriesRead:
        service = self.runtime.service
        return read_azure_advisories(
            chosen,
            defender=self.defender,
            assessor=self.fleet,
            fleet=self.instances,
            store=self.runtime.store,
            claims=self.claims,
            clock=self.clock,
            start=service.start,
            tell=lambda notice: self.told.append(notice.text),
            follow_up=service.request_follow_up,
            act=act,
        )

    def graph_queries(self) -> int:
        return sum(1 for c in self.arm.calls if "microsoft.resourcegraph" in c.path.lower())

    def runs(self) -> list[str]:
        return sorted(self.runtime.store.run_ids())


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_defender_is_read_in_one_query_of_open_findings_whatever_the_fleet_size(world: World) -> None:
    many = [machine(f"web-{n}") for n in range(60)]
    for vm in many:
        world.security.add(CRITICAL_CVE, vm.id)
    world.security.add(CLOSED_CVE, many[0].id)
    rows = world.defender.findings([SUB, SUB.upper()], "HIGH")
    assert world.graph_queries() == 1 and len(world.security.queries) == 1
    assert len(rows) == 60 and {r["properties"]["id"] for r in rows} == {CRITICAL_CVE}  # the closed one is not read
    (delivery,) = defender_deliveries(rows, many)
    assert isinstance(delivery, Advisory) and len(delivery.instances) == 60


def test_a_refused_defender_read_is_not_read_never_nothing_found(world: World) -> None:
    world.security.deny()
    with pytest.raises(SourceNotReadError, match=r"securityresources.*AuthorizationFailed"):
        world.defender.findings([SUB], "HIGH")


def test_one_read_starts_one_run_per_cve_and_a_second_read_starts_nothing_new(world: World) -> None:
    for cve, vm in [(CRITICAL_CVE, WIN1), (CRITICAL_CVE, WIN2), (NO_FIX_CVE, WIN1), (LINUX_CVE, LINUX1)]:
        world.security.add(cve, vm.id)
    first = world.read(policy())
    actions = {a.key.split(":")[0]: a.action for a in first.answers}  # the key starts with the CVE
    assert actions == {CRITICAL_CVE: "start", NO_FIX_CVE: "ignore", LINUX_CVE: "start"}
    started = {a.cve: a for a in first.answers if a.action == "start"}
    assert set(started[CRITICAL_CVE].instances) == {WIN1.id, WIN2.id}
    assert world.runs() == sorted(a.run_id for a in started.values())
    assert world.runtime.load(started[CRITICAL_CVE].run_id).status == "running"
    assert world.discoveries == 1 and world.graph_queries() == 1
    assert len(world.told) == 3  # every answer goes to on-call

    second = world.read(policy())
    assert (second.answers, second.not_read, second.answered_before) == ([], [], 3)
    assert world.runs() == sorted(a.run_id for a in started.values())
    assert len(world.told) == 3


def test_a_machine_found_later_merges_into_the_cves_run_with_a_follow_up(world: World) -> None:
    world.security.add(CRITICAL_CVE, WIN1.id)
    (started,) = world.read(policy()).answers
    world.clock.advance(timedelta(hours=2))
    world.security.add(CRITICAL_CVE, WIN2.id, timeGenerated="2026-12-01T10:55:00Z")
    (merged,) = world.read(policy()).answers
    assert (merged.action, merged.run_id, merged.instances, merged.not_covered) == (
        "merge",
        started.run_id,
        (WIN1.id,),
        (WIN2.id,),
    )
    assert merged.follow_up and f"follow-up run {merged.follow_up} starts when run {started.run_id} ends" in merged.text
    assert [f.run_id for f in world.runtime.load(started.run_id).follow_ups] == [merged.follow_up]


def test_a_source_that_cannot_be_read_is_said_and_the_other_is_still_answered(world: World) -> None:
    world.security.deny()
    released = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    oob = Patch(
        "2026-12 Out-of-band Update for Windows Server 2022",
        "Security",
        kb="5049999",
        severity="Critical",
        published=released,
    )
    world.assessment.seed(WIN2.id, NOW - timedelta(hours=1), patches=[oob])
    read = world.read(policy(sources="[defender, assessment]"))
    ((source, why),) = read.not_read
    assert source == "defender" and "AuthorizationFailed" in why
    assert any(line.startswith("not read: defender: ") for line in read.lines())
    assert not any("nothing" in line.lower() and "found" in line.lower() for line in read.lines())
    (answer,) = read.answers
    assert (answer.source, answer.action, answer.cve, answer.instances) == (
        "assessment",
        "start",
        "KB5049999",
        (WIN2.id,),
    )
    assert world.runtime.load(answer.run_id).policy.patches.include == ["KB5049999"]  # exactly that update
    assert any("not read: defender" in text for text in world.told)


def test_the_assessment_source_is_opt_in(world: World) -> None:
    released = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.assessment.seed(
        WIN2.id, NOW, patches=[Patch("OOB", "Security", kb="5049999", severity="Critical", published=released)]
    )
    assert world.read(policy()).answers == []
    assert world.runs() == []


def test_a_dry_run_lists_each_answer_and_starts_claims_and_tells_nothing(world: World) -> None:
    world.security.add(CRITICAL_CVE, WIN1.id)
    world.security.add(NO_FIX_CVE, WIN1.id)
    dry = world.read(policy(), act=False)
    assert sorted((a.key.split(":")[0], a.action) for a in dry.answers) == [
        (CRITICAL_CVE, "start"),
        (NO_FIX_CVE, "ignore"),
    ]
    assert dry.document()["answers"][0]["action"] in ("start", "ignore")
    assert (world.runs(), world.told) == ([], [])
    acted = world.read(policy())  # nothing was claimed: the real read answers them all
    assert len(acted.answers) == 2 and len(world.runs()) == 1


def test_a_policy_without_an_emergency_section_reads_nothing(world: World) -> None:
    world.security.add(CRITICAL_CVE, WIN1.id)
    plain = parse_policy(POLICY.split("emergency:")[0])
    assert world.read(plain) == AzureAdvisoriesRead()
    assert world.graph_queries() == 0 and world.discoveries == 0


def test_the_fleet_role_holds_the_read_actions_the_defender_query_needs() -> None:
    actions = fleet_role_actions()
    assert {"microsoft.security/assessments/read", "microsoft.security/assessments/subassessments/read"} <= actions
