"""The Resource Graph columns PatchPilot reads, held to what Microsoft publishes (issue 18).

tests/fixtures/resource-graph/sources.json records, per table, every column the adapters read and
what shows it (a documented property, a published sample query, the SDK model of the resource a
`resources` row carries) or that it is assumed. Here: every column the recorded queries name and the
code reads is in that file; and every assumed column, fed absent and of a wrong type through the
fakes (their rows changed before the KQL evaluator reads them), gives "unknown" in the view,
never a crash and never a wrong verdict.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fake_azure_assessment
import fake_azure_compute
import fake_azure_maintenance
import pytest
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_assessment import FakeAzureAssessment
from fake_azure_compute import SUB, FakeAzureCompute, Patch
from fake_azure_maintenance import FakeMaintenance, vm_document

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.fleet import AzureFleet
from patchpilot.adapters.azure.maintenance_events import machines_in_run
from patchpilot.adapters.azure.update_manager.assignments import read_assignments
from patchpilot.engine.messages import CheckHealth, ProbeAgents
from patchpilot.inventory import Instance
from patchpilot.planning.planner import plan
from patchpilot.policy import parse_policy
from patchpilot.policy.model import HealthChecks
from patchpilot.ports import InProgress

FIXTURES = Path(__file__).parent / "fixtures" / "resource-graph"
T0 = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
RUN = "weu-monthly-20261208-2200-ab12"
ABSENT = object()

# What the adapters take from a row beyond what their queries name (they project `properties`).
CODE_READS = {
    "patchassessmentresources": [
        "properties.rebootPending",
        "properties.startDateTime",
        "properties.lastModifiedDateTime",
        "properties.errorDetails",
        "properties.availablePatchCountByClassification",
        "properties.status",
        "properties.patchName",
        "properties.kbId",
        "properties.version",
        "properties.classifications",
        "properties.publishedDateTime",
        "properties.msrcSeverity",
    ],
    "patchinstallationresources": [
        "properties.status",
        "properties.startDateTime",
        "properties.lastModifiedDateTime",
        "properties.installedPatchCount",
        "properties.failedPatchCount",
        "properties.rebootStatus",
        "properties.errorDetails",
        "properties.maintenanceWindowExceeded",
        "properties.patchName",
        "properties.kbId",
        "properties.version",
    ],
    "maintenanceresources": [
        "properties.filter",
        "properties.value",
        "properties.value[].impactType",
        "properties.value[].status",
        "properties.value[].notBefore",
        "properties.value[].endTimeUtc",
        "properties.value[].notificationId",
    ],
    "servicehealthresources": [
        "properties.Title",
        "properties.Summary",
        "properties.TrackingId",
        "properties.ImpactStartTime",
        "properties.ImpactMitigationTime",
        "properties.targetResourceId",
        "properties.resourceName",
    ],
    "resources": [
        "properties.extended.instanceView.powerState.code",
        "properties.availabilitySet.id",
        "properties.virtualMachineScaleSet.id",
        "properties.status (Arc)",
        "properties.agentVersion",
        "properties.ipConfigurations[].properties.privateIPAddress",
        "properties.ipConfigurations[].properties.loadBalancerBackendAddressPools[].id",
        "properties.ipConfigurations[].properties.applicationGatewayBackendAddressPools[].id",
    ],
}


def sources() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "sources.json").read_text())
    return loaded


def recorded_queries() -> list[tuple[str, str]]:
    queries = json.loads((FIXTURES / "queries.json").read_text())["queries"]
    return [(q["table"], "\n".join(q["query"])) for q in queries]


def _recorded(table: str, column: str) -> bool:
    entries = sources()["tables"][table]
    wanted = column.replace("[]", "")
    return any(wanted in key.replace("[]", "") for key in entries)


def test_every_column_the_queries_and_the_adapters_read_is_recorded_with_what_shows_it() -> None:
    missing = []
    for table, text in recorded_queries():
        assert table in sources()["tables"], table
        for path in re.findall(r"properties(?:\.[A-Za-z_]+)+", text):
            if not _recorded(table, path):
                missing.append(f"{table}: {path}")
    for table, paths in CODE_READS.items():
        missing += [f"{table}: {p}" for p in paths if not _recorded(table, p)]
    assert missing == []


def test_every_recorded_column_is_shown_by_a_named_source_or_assumed_with_its_fallback() -> None:
    recorded = sources()
    kinds = {"official example", "documented property", "published sample", "SDK model", "assumed"}
    for table, entries in recorded["tables"].items():
        for column, entry in entries.items():
            assert entry["verified_by"] in kinds, (table, column)
            if entry["verified_by"] == "assumed":
                assert entry["if_wrong"].strip(), (table, column)
            else:
                assert entry["source"] in recorded["sources"], (table, column)
    for source in recorded["sources"].values():
        assert source.get("url") or source.get("file") or source["title"].startswith("azure-mgmt-")
        if "commit" in source:
            assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])


def test_the_assumed_columns_are_the_short_list_docs_fidelity_names() -> None:
    assumed = sorted(
        f"{table}: {column}"
        for table, entries in sources()["tables"].items()
        for column, entry in entries.items()
        if entry["verified_by"] == "assumed"
    )
    fidelity = (Path(__file__).parents[1] / "docs" / "fidelity.md").read_text()
    for line in assumed:
        path = next(token for token in line.split() if token.startswith("properties"))
        assert path.split(".")[-1] in fidelity, line  # each named in the short list of docs/fidelity.md


# ---------------------------------------------------------------- feeding the assumed columns absent or wrong


def _change(row: Any, path: list[str], value: Any) -> None:
    key, rest = path[0], path[1:]
    each = key.endswith("[]")
    key = key.removesuffix("[]")
    if not isinstance(row, dict) or key not in row:
        return
    if not rest:
        if value is ABSENT:
            del row[key]
        else:
            row[key] = value
        return
    for item in row[key] if each and isinstance(row[key], list) else [row[key]]:
        _change(item, rest, value)


@pytest.fixture
def alter(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str, Any], None]:
    """alter(row type suffix, dotted path, value): the fakes' Resource Graph rows of that type get
    the column removed (value ABSENT) or replaced, before any query reads them."""

    def install(row_type: str, path: str, value: Any) -> None:
        def changed(rows: list[Any]) -> list[Any]:
            out = []
            for row in rows:
                if str(row.get("type", "")).lower().endswith(row_type):
                    row = copy.deepcopy(row)
                    _change(row, path.split("."), value)
                out.append(row)
            return out

        for module in (fake_azure_compute, fake_azure_assessment, fake_azure_maintenance):
            real = module.run_kql
            monkeypatch.setattr(module, "run_kql", lambda text, rows, real=real: real(text, changed(rows)))

    return install


class World:
    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.arm = FakeArm(self.clock)
        self.azure = FakeAzureCompute(self.arm)
        self.platform = FakeAzureAssessment(self.azure)
        self.clients = AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )
        self.fleet = AzureFleet(self.clients, self.clock, http_get=lambda url, timeout: 200)

    def instance(self, machine_id: str) -> Instance:
        return self.azure.instance(machine_id)


@pytest.fixture
def world() -> World:
    return World()


WRONG = [ABSENT, {"unexpected": 1}, 7]
OPENSSL = Patch("openssl", "Security", version="3.0.13-1")
KB_CU = Patch("2026-12 Cumulative Update", "Security", kb="5034441")


@pytest.mark.parametrize("value", WRONG, ids=["absent", "object", "number"])
def test_an_assessment_without_a_usable_status_is_read_not_taken_for_failed(
    world: World, alter: Any, value: Any
) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL])
    world.platform.seed(vm, T0 - timedelta(hours=1))
    alter("/patchassessmentresults", "properties.status", value)

    (state,) = world.fleet.patch_states([world.instance(vm)])

    assert not state.error and [p.id for p in state.missing] == ["openssl"]


@pytest.mark.parametrize("value", [ABSENT, ["Critical"], 3], ids=["absent", "list", "number"])
def test_a_patch_without_a_usable_msrc_severity_is_unspecified(world: World, alter: Any, value: Any) -> None:
    vm = world.azure.add_vm("sql-1", os="Windows", available=[KB_CU])
    world.platform.seed(vm, T0 - timedelta(hours=1))
    alter("/softwarepatches", "properties.msrcSeverity", value)

    (state,) = world.fleet.patch_states([world.instance(vm)])

    assert [(p.id, p.severity) for p in state.missing] == [("KB5034441", "Unspecified")]


@pytest.mark.parametrize("value", [ABSENT, 7], ids=["absent", "number"])
def test_a_maintenance_run_whose_machine_rows_lack_a_status_still_lists_its_machines(alter: Any, value: Any) -> None:
    arm = FakeArm(ManualClock(T0))
    fake = FakeMaintenance(arm)
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    configuration = (
        f"/subscriptions/{SUB}/resourceGroups/rg-patch/providers/Microsoft.Maintenance/maintenanceConfigurations/mc"
    )
    machines = [str(vm_document(SUB, "rg-app", name)["id"]) for name in ("vm1", "vm2")]
    run = fake.schedule_run(configuration, T0 + timedelta(hours=2), machines)
    alter("microsoft.maintenance/applyupdates", "properties.status", value)

    found = machines_in_run(clients, run, [SUB])

    assert [m.resource_id for m in found] == sorted(machines, key=str.lower)


def _assignment_world() -> tuple[FakeArm, AzureClients]:
    arm = FakeArm(ManualClock(T0))
    FakeMaintenance(arm, graph_lists_dynamic_scopes=True)
    arm.add(
        {
            "id": f"/subscriptions/{SUB}/providers/Microsoft.Maintenance/configurationAssignments/weekly-staging",
            "name": "weekly-staging",
            "type": "Microsoft.Maintenance/configurationAssignments",
            "properties": {
                "maintenanceConfigurationId": f"/subscriptions/{SUB}/resourceGroups/rg/providers/"
                "Microsoft.Maintenance/maintenanceConfigurations/weekly",
                "filter": {"resourceTypes": ["Microsoft.Compute/virtualMachines"], "locations": ["westeurope"]},
            },
        }
    )
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    return arm, clients


def test_a_dynamic_scope_resource_graph_lists_with_its_filter_is_read_with_it() -> None:
    _, clients = _assignment_world()

    (assignment,) = read_assignments(clients.graph(), [SUB])

    assert assignment.kind == "dynamic" and assignment.filter is not None
    assert assignment.filter.part("locations") == "westeurope"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("properties.filter", ABSENT),
        ("properties.filter", "Microsoft.Compute/virtualMachines"),
        ("properties.filter.resourceTypes", "Microsoft.Compute/virtualMachines"),
        ("properties.filter.locations", [1, 2]),
        ("properties.filter", {"tagSettings": {"tags": {"Environment": 5}, "filterOperator": "Any"}}),
    ],
    ids=["absent", "a string", "a part not a list", "a list of numbers", "tag values not a list"],
)
def test_a_dynamic_scope_whose_filter_is_missing_or_malformed_is_unknown_never_an_empty_filter(
    alter: Any, path: str, value: Any
) -> None:
    _, clients = _assignment_world()
    alter("microsoft.maintenance/configurationassignments", path, value)

    (assignment,) = read_assignments(clients.graph(), [SUB])

    assert assignment.kind == "dynamic" and assignment.filter is None  # unknown: no filter that matches everything


POLICY = parse_policy(
    """
name: weu-monthly
schedule: {monthly: Second Tuesday, at: "22:00", timezone: Europe/Amsterdam, duration: 4h}
rings:
  - {name: production, select: {tags: {Environment: production}}}
azure:
  subscriptions: [00000000-0000-0000-0000-000000000001]
""",
    "policy.yaml",
)


@pytest.mark.parametrize("value", [ABSENT, 3, "Thunderstorm"], ids=["absent", "number", "unknown word"])
def test_an_update_without_a_known_impact_is_reported_with_downtime_assumed(
    world: World, alter: Any, value: Any
) -> None:
    vm = world.azure.add_vm("vm-1")
    world.platform.add_update(vm, impact="Freeze", seconds=9)
    alter("microsoft.maintenance/updates", "properties.value[].impactType", value)

    (item,) = world.fleet.upcoming_maintenance(POLICY, [world.instance(vm)], T0).items

    assert item.downtime is True
    assert "downtime assumed" in item.warning


@pytest.mark.parametrize("value", [ABSENT, 5], ids=["absent", "number"])
def test_an_update_without_a_status_is_reported_not_taken_for_done(world: World, alter: Any, value: Any) -> None:
    vm = world.azure.add_vm("vm-1")
    world.platform.add_update(vm, impact="Restart")
    alter("microsoft.maintenance/updates", "properties.value[].status", value)

    (item,) = world.fleet.upcoming_maintenance(POLICY, [world.instance(vm)], T0).items

    assert "status not reported" in item.description and item.downtime


@pytest.mark.parametrize("value", [ABSENT, 5], ids=["absent", "number"])
def test_an_impacted_resource_without_its_target_id_is_found_by_the_published_columns(
    world: World, alter: Any, value: Any
) -> None:
    vm = world.azure.add_vm("vm-1")
    world.platform.add_planned_event("PYN_-ZL8", T0 + timedelta(days=5), T0 + timedelta(days=5, hours=8), [vm])
    alter("events/impactedresources", "properties.targetResourceId", value)

    (item,) = world.fleet.upcoming_maintenance(POLICY, [world.instance(vm)], T0).items

    assert (item.instance_id, item.kind, item.downtime) == (vm, "PlannedMaintenance", True)


def test_an_impacted_resource_naming_nothing_usable_is_left_unmatched_without_a_crash(world: World, alter: Any) -> None:
    vm = world.azure.add_vm("vm-1")
    world.platform.add_planned_event("PYN_-ZL8", T0 + timedelta(days=5), T0 + timedelta(days=5, hours=8), [vm])
    alter("events/impactedresources", "properties", {"targetResourceId": 5})

    result = world.fleet.upcoming_maintenance(POLICY, [world.instance(vm)], T0)

    assert result.items == () and result.unavailable == ()


@pytest.mark.parametrize(
    ("path", "value"),
    [("properties.extended", ABSENT), ("properties.extended.instanceView.powerState.code", 5)],
    ids=["absent", "number"],
)
def test_a_vm_row_without_a_power_state_is_asked_its_instance_view(
    world: World, alter: Any, path: str, value: Any
) -> None:
    vm = world.azure.add_vm("web-1")
    alter("microsoft.compute/virtualmachines", path, value)

    (outcome,) = world.fleet.probe_agents(ProbeAgents(id=f"{RUN}:probe", run_id=RUN, targets=[world.instance(vm)]))

    assert outcome.ok and outcome.detail.startswith("VM agent Ready")


@pytest.mark.parametrize("value", WRONG, ids=["absent", "object", "number"])
def test_a_uniform_instance_row_without_a_usable_os_or_zones_is_still_listed_and_excluded(
    world: World, alter: Any, value: Any
) -> None:
    uniform = world.azure.add_uniform_instance("vmss-batch", 0, os="Windows", zone="2", tags={"Env": "prod"})
    alter("/virtualmachinescalesets/virtualmachines", "properties.storageProfile.osDisk.osType", value)
    alter("/virtualmachinescalesets/virtualmachines", "zones", value)
    policy = parse_policy(
        f"name: p\nrings: [{{name: all, select: {{tags: {{Env: prod}}}}}}]\nazure: {{subscriptions: [{SUB}]}}\n"
    )

    (found,) = world.fleet.discover(policy).instances

    assert (found.id, found.os, found.zone, found.scale_set_mode) == (uniform, "linux", None, "uniform")
    assert [e.reason for e in plan(policy, [found]).excluded] == [
        f"member of scaling group {uniform.lower().rsplit('/virtualmachines/', 1)[0]}: patch its image"
    ]


def _until_done(world: World, call: Callable[[], Any]) -> Iterator[Any]:
    for _ in range(100):
        progress = call()
        yield progress
        if not isinstance(progress, InProgress):
            return
        world.clock.set(progress.retry_at)


@pytest.mark.parametrize("value", [ABSENT, 10], ids=["absent", "number"])
def test_an_http_check_without_a_reported_private_ip_waits_and_fails_at_its_deadline_saying_why(
    world: World, alter: Any, value: Any
) -> None:
    vm = world.azure.add_vm("web-1", private_ip="10.1.2.3")
    alter("microsoft.network/networkinterfaces", "properties.ipConfigurations[].properties.privateIPAddress", value)
    checks = HealthChecks(http=["http://{private_ip}:8080/health"], timeout=timedelta(minutes=10))
    command = CheckHealth(id=f"{RUN}:w1:health", run_id=RUN, wave=1, targets=[world.instance(vm)], checks=checks)

    steps = list(_until_done(world, lambda: world.fleet.check_health(command)))

    assert isinstance(steps[0], InProgress) and "private IP not reported" in steps[0].note
    (outcome,) = steps[-1]
    assert not outcome.ok and "private IP not reported" in outcome.detail
