"""Whole tenants on Azure: `azure.management_groups` scopes discovery's Resource Graph queries to
management groups (`QueryRequest.management_groups`) instead of subscriptions.

Fake ARM: Resource Graph answers a managementGroups scope with the subscriptions the test puts
under each group (`FakeArm.management_groups`); the requests and answers are held to the REST
specification (tests/arm_spec.py, on for every fake ARM by tests/conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import SUB, FakeAzureCompute

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.fleet import AzureFleet
from patchpilot.adapters.azure.graph import query
from patchpilot.errors import InputError
from patchpilot.policy import parse_policy

T0 = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
SUB_EU = "00000000-0000-0000-0000-0000000000e1"
SUB_SANDBOX = "00000000-0000-0000-0000-0000000000ff"
LB = f"/subscriptions/{SUB_EU}/resourceGroups/rg-web/providers/Microsoft.Network/loadBalancers/lb-web"
POLICY = """
name: tenant
rings:
  - {name: production, select: {tags: {Environment: production}}}
azure:
  management_groups: [mg-retail]
"""


class World:
    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.arm = FakeArm(self.clock)
        self.azure = FakeAzureCompute(self.arm)
        # mg-retail holds the shop's subscription and (through a child group) the EU one.
        self.arm.management_groups = {"mg-retail": [SUB, SUB_EU], "mg-retail-eu": [SUB_EU], "mg-sandbox": [SUB_SANDBOX]}

    def clients(self) -> AzureClients:
        return AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )

    def fleet(self) -> AzureFleet:
        return AzureFleet(self.clients(), self.clock, http_get=lambda url, timeout: 200)

    def graph_bodies(self) -> list[dict[str, object]]:
        return [c.body for c in self.arm.calls if c.method == "POST" and "microsoft.resourcegraph" in c.path]


@pytest.fixture
def world() -> World:
    return World()


def test_discovery_reads_every_subscription_under_the_management_groups_and_no_other(world: World) -> None:
    tags = {"Environment": "production"}
    shop = world.azure.add_vm("shop-1", tags=tags)
    eu = world.azure.add_vm("eu-1", sub=SUB_EU, tags=tags)
    world.azure.add_vm("sandbox-1", sub=SUB_SANDBOX, tags=tags)  # outside the group

    found = world.fleet().discover(parse_policy(POLICY))

    assert sorted(i.id for i in found.instances) == sorted([shop, eu])
    assert {i.account for i in found.instances} == {SUB, SUB_EU}
    bodies = world.graph_bodies()  # the VMs' query, the Uniform scale set instances' query
    assert [body.get("managementGroups") for body in bodies] == [["mg-retail"], ["mg-retail"]]
    assert not any(body.get("subscriptions") for body in bodies)  # one scope per request


def test_the_nics_are_read_in_the_subscriptions_the_machines_were_found_in(world: World) -> None:
    vm = world.azure.add_vm(
        "web-1", sub=SUB_EU, tags={"Environment": "production"}, pools=[f"{LB}/backendAddressPools/be"]
    )

    found = world.fleet().discover(parse_policy(POLICY + "traffic: {drain: true}\n"))

    assert {i.id: i.traffic_pools for i in found.instances} == {vm: (f"{LB}/backendAddressPools/be".lower(),)}
    machines, nics, uniform = world.graph_bodies()
    assert machines.get("managementGroups") == uniform.get("managementGroups") == ["mg-retail"]
    assert nics.get("subscriptions") == [SUB_EU] and not nics.get("managementGroups")


def test_a_query_names_management_groups_in_batches_and_never_with_subscriptions(world: World) -> None:
    eu = world.azure.add_vm("eu-1", sub=SUB_EU, tags={})
    world.azure.add_vm("sandbox-1", sub=SUB_SANDBOX, tags={})
    graph = world.clients().graph()
    empty = [f"mg-{n:02}" for n in range(12)]
    world.arm.management_groups.update({g: [] for g in empty})

    kql = "resources | where type =~ 'microsoft.compute/virtualmachines' | project id"
    rows = query(graph, kql, management_groups=[*empty, "mg-retail-eu"])

    assert [r["id"] for r in rows] == [eu]
    assert [len(b["managementGroups"]) for b in world.graph_bodies()] == [10, 3]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subscriptions or management groups, not both"):
        query(graph, "resources | project id", [SUB], management_groups=["mg-retail"])


def test_a_policy_names_subscriptions_or_management_groups_not_both() -> None:
    with pytest.raises(InputError) as caught:
        parse_policy(POLICY.replace("azure:\n", f"azure:\n  subscriptions: [{SUB}]\n"))
    (problem,) = caught.value.problems
    assert problem.path == ("azure", "management_groups")
    assert "either azure.subscriptions or azure.management_groups, not both" in problem.message


def test_update_manager_schedules_need_subscriptions_not_management_groups() -> None:
    maintenance = "  maintenance: {resource_group: rg-patching, location: westeurope}\n"
    with pytest.raises(InputError) as caught:
        parse_policy(POLICY + maintenance)
    (problem,) = caught.value.problems
    assert problem.path == ("azure", "maintenance")
    assert "not available with azure.management_groups" in problem.message
