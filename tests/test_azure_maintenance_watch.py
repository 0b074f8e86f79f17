"""Azure platform maintenance (`AzureFleet.upcoming_maintenance`) through the real
azure-mgmt-resourcegraph client to the fake ARM at the HTTP transport: tests/fake_azure_assessment.py
models Resource Graph's `maintenanceresources` (Maintenance RP updates) and
`servicehealthresources` (planned maintenance events and their impacted resources)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure_rbac import arm_action, fleet_role_actions
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_assessment import FakeAzureAssessment
from fake_azure_compute import SUB, FakeAzureCompute

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.fleet import AzureFleet
from patchpilot.adapters.azure.maintenance_watch import EVENTS_SOURCE, UPDATES_SOURCE
from patchpilot.inventory import Instance
from patchpilot.policy import parse_policy

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
POLICY = parse_policy(
    """
name: weu-monthly
rings:
  - {name: production, select: {tags: {Environment: production}}}
azure:
  subscriptions: [00000000-0000-0000-0000-000000000001]
"""
)


class World:
    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        self.arm = FakeArm(self.clock)
        self.azure = FakeAzureCompute(self.arm)
        self.platform = FakeAzureAssessment(self.azure)
        clients = AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )
        self.fleet = AzureFleet(clients, self.clock)

    def instance(self, machine_id: str) -> Instance:
        resource = self.arm.get(machine_id)
        return Instance(
            id=resource["id"],
            cloud="azure",
            region=resource["location"],
            os="linux",
            name=resource["name"],
            account=SUB,
        )

    def graph_queries(self) -> int:
        return sum(1 for c in self.arm.calls if "microsoft.resourcegraph" in c.path)


@pytest.fixture
def world() -> World:
    return World()


def test_maintenance_rp_updates_are_mapped_to_the_fleets_vms_with_their_impact(world: World) -> None:
    restart, freeze, redeploy, done, clear = (world.azure.add_vm(f"vm-{n}") for n in range(5))
    outside = world.azure.add_vm("not-in-fleet")
    host = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/hostGroups/hg/hosts/h1"
    platform = world.platform
    platform.add_update(restart, impact="Restart", not_before=NOW + timedelta(days=3), seconds=900)
    platform.add_update(freeze, impact="Freeze", status="InProgress", seconds=9)
    platform.add_update(redeploy, impact="Redeploy", status="RetryLater", not_before=NOW + timedelta(days=1))
    platform.add_update(done, impact="Restart", status="Completed")
    platform.add_update(clear, impact="Restart", status="NoUpdatesPending")
    platform.add_update(outside, impact="Restart")
    platform.add_update(host, impact="Restart")
    fleet = [world.instance(m) for m in (restart, freeze, redeploy, done, clear)]

    result = world.fleet.upcoming_maintenance(POLICY, fleet, NOW)

    assert result.unavailable == ()
    got = {item.instance_id: item for item in result.items}
    assert set(got) == {restart, freeze, redeploy}
    assert [(got[m].kind, got[m].downtime) for m in (restart, freeze, redeploy)] == [
        ("Restart", True),
        ("Freeze", False),
        ("Redeploy", True),
    ]
    assert got[restart].deadline == NOW + timedelta(days=3) and got[restart].due_at == NOW + timedelta(days=3)
    assert got[restart].description.startswith("Host maintenance: restart of about 15 min, Pending")
    assert got[freeze].description == "Host maintenance: freeze of about 9 s, InProgress"
    assert "temporary disk" in got[redeploy].warning
    assert all(i.source == "azure" and i.cloud == "azure" and i.account == SUB for i in result.items)
    assert [i.instance_id for i in result.items] == [freeze, redeploy, restart]  # by due date, undated as now
    assert world.graph_queries() == 2  # the updates; the events (none: no impacted-resources query)
    assert world.fleet.upcoming_maintenance(POLICY, fleet, NOW).items == result.items  # stable ids
    assert {arm_action(c.method, c.path) for c in world.arm.calls} <= fleet_role_actions()


def test_planned_maintenance_events_name_their_impacted_vms_and_their_window(world: World) -> None:
    first, second, outside = (world.azure.add_vm(f"vm-{n}") for n in range(3))
    start, end = NOW + timedelta(days=5), NOW + timedelta(days=5, hours=8)
    world.platform.add_planned_event("PYN_-ZL8", start, end, [first, second, outside])
    world.platform.add_planned_event("OLD-0001", NOW - timedelta(days=2), NOW - timedelta(days=1), [first])
    world.platform.add_planned_event("DONE-002", start, end, [first], status="Resolved")

    result = world.fleet.upcoming_maintenance(POLICY, [world.instance(first), world.instance(second)], NOW)

    assert [(i.instance_id, i.kind, i.starts_at, i.ends_at, i.downtime) for i in result.items] == [
        (first, "PlannedMaintenance", start, end, True),
        (second, "PlannedMaintenance", start, end, True),
    ]
    assert result.items[0].id == f"azure:event:PYN_-ZL8:{first.lower()}"
    assert result.items[0].description == (
        "Planned maintenance: Virtual Machines - West Europe: Azure will reboot the impacted virtual machines."
    )
    assert world.graph_queries() == 3


def test_a_vm_both_tables_name_is_reported_once_with_its_impact_and_the_events_window(world: World) -> None:
    vm = world.azure.add_vm("vm-1")
    start, end = NOW + timedelta(days=2), NOW + timedelta(days=2, hours=4)
    world.platform.add_update(vm, impact="Restart", notification="PYN_-ZL8", not_before=NOW + timedelta(days=9))
    world.platform.add_planned_event("PYN_-ZL8", start, end, [vm])

    (item,) = world.fleet.upcoming_maintenance(POLICY, [world.instance(vm)], NOW).items

    assert (item.kind, item.downtime, item.starts_at, item.ends_at) == ("Restart", True, start, end)
    assert item.deadline == NOW + timedelta(days=9)
    assert item.description.startswith("Planned maintenance: Virtual Machines - West Europe")
    assert "(Service Health PYN_-ZL8)" in item.description


@pytest.mark.parametrize(
    ("failing", "source"), [("servicehealthresources", EVENTS_SOURCE), ("maintenanceresources", UPDATES_SOURCE)]
)
def test_a_table_that_cannot_be_read_is_unavailable_and_the_other_is_still_read(
    world: World, failing: str, source: str
) -> None:
    updated, planned = world.azure.add_vm("vm-1"), world.azure.add_vm("vm-2")
    world.platform.add_update(updated, impact="Restart")
    world.platform.add_planned_event("PYN_-ZL8", NOW + timedelta(days=1), NOW + timedelta(days=2), [planned])
    world.platform.fail_table(failing)

    result = world.fleet.upcoming_maintenance(POLICY, [world.instance(updated), world.instance(planned)], NOW)

    assert result.unavailable == ((source, f"AuthorizationFailed: The client may not read {failing}."),)
    still_read = planned if failing == "maintenanceresources" else updated
    assert [i.instance_id for i in result.items] == [still_read]


def test_the_watch_reads_the_same_few_queries_for_a_larger_fleet(world: World) -> None:
    small = [world.azure.add_vm(f"vm-{n}") for n in range(3)]
    large = small + [world.azure.add_vm(f"vm-{n}", rg="rg-api") for n in range(3, 80)]
    world.platform.add_update(large[-1], impact="Restart")
    world.platform.add_planned_event("PYN_-ZL8", NOW + timedelta(days=1), NOW + timedelta(days=2), large[:40])

    world.fleet.upcoming_maintenance(POLICY, [world.instance(m) for m in small], NOW)
    for_three = world.graph_queries()
    result = world.fleet.upcoming_maintenance(POLICY, [world.instance(m) for m in large], NOW)

    assert for_three == world.graph_queries() - for_three == 3
    assert len(world.arm.calls) == 6  # nothing but Resource Graph
    assert len(result.items) == 41


def test_no_azure_machines_means_nothing_is_read(world: World) -> None:
    aws = Instance(id="i-0abc", cloud="aws", region="eu-west-1", os="linux")

    assert world.fleet.upcoming_maintenance(POLICY, [aws], NOW).items == ()
    assert world.arm.calls == []
