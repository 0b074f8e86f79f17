"""The Resource Graph queries the Azure adapters send, recorded with the fake's answers for a small
fleet in tests/fixtures/resource-graph/queries.json.

A small fleet (a Linux VM, a Windows VM, an Arc server, a Uniform scale set instance; an assessment,
a platform update, a planned event; an Update Manager run) is driven through the adapters' public
entry points on the fake ARM: `AzureFleet`, the `azure audit` and `azure sync` commands and
`machines_in_run`. Every query reaches the fake Resource Graph (tests/fake_resource_graph.py), which
keeps it with its answer. The tests fail when an adapter sends a query the table does not hold (a
changed query is noticed: look again at what the fake answers it), when the table holds one that
nothing sends any more, and when the fake answers a recorded query differently. After a deliberate
change, record again and review the diff of the table:

    PATCHPILOT_RECORD=1 pytest tests/test_resource_graph_queries.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from clocks import ManualClock
from fake_arm import FakeArm, GraphQuery
from fake_azure_assessment import FakeAzureAssessment
from fake_azure_compute import SUB, FakeAzureCompute, Patch
from fake_azure_maintenance import FakeMaintenance, vm_document

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.fleet import AzureFleet
from patchpilot.adapters.azure.maintenance_events import machines_in_run
from patchpilot.cli_azure import azure
from patchpilot.engine.messages import CheckHealth, InstallPatches, InstallTarget, ProbeAgents
from patchpilot.policy import parse_policy
from patchpilot.policy.model import HealthChecks, HealthScript
from patchpilot.ports import InProgress, Progress

TABLE = Path(__file__).parent / "fixtures" / "resource-graph" / "queries.json"
RECORD = os.environ.get("PATCHPILOT_RECORD") == "1"
ABOUT = (
    "The Resource Graph queries PatchPilot's Azure adapters send, each with the first answer the fakes gave it "
    "for the small fleet of tests/test_resource_graph_queries.py, which checks and records this file "
    "(PATCHPILOT_RECORD=1). The answers are the fakes' model of the tables (tests/fake_azure_*.py, evaluated by "
    "tests/fake_resource_graph.py), not answers recorded from Azure."
)

T0 = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
RUN = "weu-monthly-20261208-2200-ab12"
UPDATE_MANAGER_RUN = (
    f"/subscriptions/{SUB}/resourceGroups/rg-maint/providers/Microsoft.Maintenance/maintenanceConfigurations/"
    "patchpilot-production/providers/Microsoft.Maintenance/applyUpdates/20261208230000"
)
POLICY = parse_policy(
    f"""
name: weu-monthly
rings:
  - {{name: production, select: {{tags: {{Environment: production}}}}}}
azure:
  subscriptions: [{SUB}]
  resource_groups: [rg-web, rg-onprem]
  locations: [westeurope]
  arc: true
rollout: {{pool_budget: 1}}
"""
)
UPDATE_MANAGER_POLICY = {
    "name": "monthly",
    "schedule": {"monthly": "Second Tuesday Offset+3", "at": "02:00", "timezone": "Asia/Tokyo", "duration": "3h"},
    "rings": [{"name": "production", "select": {"tags": {"Environment": "production"}}}],
    "patches": {"classifications": ["Critical", "Security"]},
    "azure": {"subscriptions": [SUB], "maintenance": {"resource_group": "rg-patch", "location": "japaneast"}},
}

Sent = tuple[str, GraphQuery]  # the entry point that sent it, the query and its answer


# ---------------------------------------------------------------- driving the adapters


def until_done(clock: ManualClock, call: Callable[[], Progress]) -> None:
    for _ in range(100):
        progress = call()
        if not isinstance(progress, InProgress):
            return
        clock.set(progress.retry_at)
    raise AssertionError("still in progress after 100 calls")


def fleet_queries() -> Iterator[Sent]:
    """AzureFleet: discovery, agents, installs (its own and an Update Manager run's), health,
    compliance and the maintenance watch, on the Compute and assessment fakes."""
    clock = ManualClock(T0)
    arm = FakeArm(clock)
    compute = FakeAzureCompute(arm)
    platform = FakeAzureAssessment(compute)
    production = {"Environment": "production"}
    pool = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Network/loadBalancers/lb-web"
    web = compute.add_vm(
        "web-1",
        tags=production,
        pools=[f"{pool}/backendAddressPools/be-web"],
        available=[Patch("openssl", "Security", version="3.0.13-1")],
    )
    win = compute.add_vm(
        "win-1",
        os="Windows",
        tags=production,
        available=[Patch("2026-12 CU", "Security", kb="5034441")],
        app_health="healthy",  # an Application Health extension: a row of the health check's extension query
    )
    compute.add_arc("onprem-1", tags=production)
    compute.add_uniform_instance("vmss-batch", 0, tags=production, zone="1")  # listed, never patched
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    fleet = AzureFleet(clients, clock, http_get=lambda url, timeout: 200)
    seen = 0

    def sent(step: str) -> Iterator[Sent]:
        nonlocal seen
        for answered in arm.graph_answers[seen:]:
            yield step, answered
        seen = len(arm.graph_answers)

    instances = list(fleet.discover(POLICY).instances)
    yield from sent("AzureFleet.discover")
    by_name = {i.name: i for i in instances}
    patched = [i for i in instances if i.scale_set_mode is None]  # the plan excludes Uniform instances
    fleet.probe_agents(ProbeAgents(id=f"{RUN}:w1:probe", run_id=RUN, targets=patched))
    yield from sent("AzureFleet.probe_agents")

    install = InstallPatches(
        id=f"{RUN}:w1:install",
        run_id=RUN,
        wave=1,
        targets=[InstallTarget(instance=by_name["web-1"])],
        classifications=["Critical", "Security"],
    )
    until_done(clock, lambda: fleet.install_patches(install))
    yield from sent("AzureFleet.install_patches")

    scheduled = InstallPatches(
        id=f"{RUN}:w2:install",
        run_id=RUN,
        wave=2,
        targets=[InstallTarget(instance=by_name["win-1"])],
        classifications=["Critical", "Security"],
        max_duration=timedelta(hours=2),
        maintenance_run=UPDATE_MANAGER_RUN,
    )
    compute.maintenance_install([win], UPDATE_MANAGER_RUN.upper(), {"classificationsToInclude": ["Security"]})
    until_done(clock, lambda: fleet.install_patches(scheduled))
    yield from sent("AzureFleet.install_patches (an Update Manager run)")

    checks = HealthChecks(
        http=["http://{private_ip}:8080/health"],
        script=HealthScript(linux="systemctl is-active web", windows="Get-Service W3SVC"),
        timeout=timedelta(minutes=10),
    )
    targets = [by_name["web-1"], by_name["win-1"]]
    health = CheckHealth(id=f"{RUN}:w1:health", run_id=RUN, wave=1, targets=targets, checks=checks)
    until_done(clock, lambda: fleet.check_health(health))
    yield from sent("AzureFleet.check_health")

    platform.seed(web, clock.now() - timedelta(hours=1))
    fleet.patch_states(instances)
    yield from sent("AzureFleet.patch_states")

    platform.add_update(win, not_before=clock.now() + timedelta(days=2))
    platform.add_planned_event("TRK-1", clock.now() + timedelta(days=3), clock.now() + timedelta(days=4), [web])
    fleet.upcoming_maintenance(POLICY, instances, clock.now())
    yield from sent("AzureFleet.upcoming_maintenance")


def update_manager_queries(tmp_path: Path) -> Iterator[Sent]:
    """Update Manager: `patchpilot azure audit` and `azure sync` (dry run), and the machines of a
    run as its maintenance events need them, on the Update Manager fake."""
    arm = FakeArm(ManualClock(T0))
    maintenance = FakeMaintenance(arm)
    stg = maintenance.add(vm_document(SUB, "rg-app", "stg1", tags={"Environment": "staging"}))["id"]
    prd = maintenance.add(vm_document(SUB, "rg-app", "prd1", os="windows", tags={"Environment": "production"}))["id"]
    configuration = (
        f"/subscriptions/{SUB}/resourceGroups/rg-patch/providers/Microsoft.Maintenance/maintenanceConfigurations/"
        "patchpilot-monthly-production"
    )
    maintenance.add(
        {
            "id": f"{prd}/providers/Microsoft.Maintenance/configurationAssignments/patchpilot-monthly-production",
            "name": "patchpilot-monthly-production",
            "type": "Microsoft.Maintenance/configurationAssignments",
            "location": "japaneast",
            "properties": {"maintenanceConfigurationId": configuration, "resourceId": prd},
        }
    )
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(UPDATE_MANAGER_POLICY, sort_keys=False), encoding="utf-8")
    seen = 0
    for command in ("audit", "sync"):
        CliRunner().invoke(azure, [command, "--policy", str(policy)], obj=clients, catch_exceptions=False)
        for answered in arm.graph_answers[seen:]:
            yield f"patchpilot azure {command}", answered
        seen = len(arm.graph_answers)
    run = maintenance.schedule_run(configuration, T0 + timedelta(hours=1), [prd, stg])
    machines_in_run(clients, run, [SUB])
    for answered in arm.graph_answers[seen:]:
        yield "machines_in_run", answered


# ---------------------------------------------------------------- the table


def entry(step: str, sent: GraphQuery) -> dict[str, Any]:
    return {
        "table": sent.text.split(None, 1)[0],
        "sent_by": step,
        "query": sent.text.splitlines(),
        "subscriptions": sent.subscriptions,
        "answer": json.loads(json.dumps(sent.rows)),  # as the wire carries it
    }


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Each distinct query the adapters sent, in order, with the fake's first answer to it."""
    found: dict[str, dict[str, Any]] = {}
    for step, answered in [*fleet_queries(), *update_manager_queries(tmp_path_factory.mktemp("policy"))]:
        found.setdefault(answered.text, entry(step, answered))
    entries = list(found.values())
    if RECORD:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text(json.dumps({"about": ABOUT, "queries": entries}, indent=1) + "\n", encoding="utf-8")
    return entries


@pytest.fixture(scope="module")
def recorded(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(TABLE.read_text(encoding="utf-8"))["queries"]
    return entries


def test_every_query_the_adapters_send_is_in_the_table(
    sent: list[dict[str, Any]], recorded: list[dict[str, Any]]
) -> None:
    known = {"\n".join(e["query"]) for e in recorded}
    new = [f"{e['sent_by']}:\n" + "\n".join(e["query"]) for e in sent if "\n".join(e["query"]) not in known]
    assert not new, "queries not in the table (record again: PATCHPILOT_RECORD=1):\n" + "\n\n".join(new)


def test_every_query_in_the_table_is_still_sent(sent: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> None:
    texts = {"\n".join(e["query"]) for e in sent}
    gone = [f"{e['sent_by']}:\n" + "\n".join(e["query"]) for e in recorded if "\n".join(e["query"]) not in texts]
    assert not gone, "the table holds queries no adapter sends any more:\n" + "\n\n".join(gone)


def test_the_fake_answers_each_recorded_query_as_recorded(
    sent: list[dict[str, Any]], recorded: list[dict[str, Any]]
) -> None:
    answers = {"\n".join(e["query"]): e["answer"] for e in sent}
    for e in recorded:
        query = "\n".join(e["query"])
        if query in answers:
            assert answers[query] == e["answer"], f"{e['sent_by']} answered differently:\n{query}"


def test_the_table_covers_each_resource_graph_table_the_adapters_read(recorded: list[dict[str, Any]]) -> None:
    assert {e["table"] for e in recorded} == {
        "resources",
        "computeresources",
        "patchassessmentresources",
        "patchinstallationresources",
        "maintenanceresources",
        "servicehealthresources",
    }
    assert all(e["answer"] for e in recorded), [e["sent_by"] for e in recorded if not e["answer"]]
