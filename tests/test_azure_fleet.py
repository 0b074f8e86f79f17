"""The Azure fleet adapter (Compute, Hybrid Compute, Resource Graph) through the real SDK clients.

Every request goes through the real azure-mgmt clients (serialization, authentication, azure-core's
retry policy) to `fake_arm.FakeArm` over the HTTP transport; `fake_azure_compute` models the
services behind it (VMs, disks, snapshots, installs, Run Commands, Resource Graph tables) on the
test's clock. Each long operation is polled by calling the method again once the clock reaches
the `retry_at` it asked for, as the queue would redeliver the command.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import SUB, FakeAzureCompute, Patch, run_kql

from patchpilot.adapters.azure.access import (
    TAG_COMMAND,
    TAG_DISK,
    TAG_HEALTH,
    TAG_HEALTH_BASE,
    TAG_INSTALL,
    TAG_INSTANCE,
    TAG_REPLACED_BY,
    TAG_RUN,
    TAG_WAVE,
)
from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.fleet import (
    ARC_NO_SNAPSHOT,
    INSTALL_MARGIN,
    START_GRACE,
    AzureFleet,
)
from patchpilot.adapters.azure.fleet import health as fleet_health
from patchpilot.adapters.azure.fleet import install as fleet_install
from patchpilot.adapters.azure.fleet.discovery import discovery_query
from patchpilot.adapters.azure.fleet.health import BASE_PASS, BASE_UNREAD
from patchpilot.adapters.azure.graph import query
from patchpilot.adapters.azure.install_body import install_body, split_patch_names
from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.bootstrap.clouds import azure_fleet
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    InstallTarget,
    Notify,
    Outcome,
    ProbeAgents,
    RestoreTarget,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.engine.run import Run
from patchpilot.errors import InputError
from patchpilot.inventory import Instance, OsFamily, parse_inventory
from patchpilot.planning.planner import plan
from patchpilot.policy import parse_policy
from patchpilot.policy.model import HealthChecks, HealthScript, HostHook, Policy
from patchpilot.ports import InProgress, PoolsUnreadableError, Progress
from patchpilot.service import Service

T0 = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
RUN = "weu-monthly-20261208-2200-ab12"
OPENSSL = Patch("openssl", "Security", version="3.0.13-1")
KERNEL = Patch("kernel", "Critical", version="6.1.90-1")
CURL = Patch("curl", "Security", version="8.5.0-2")  # released later
VIM = Patch("vim", "Other", version="9.1-1")
KB_CU = Patch("2026-12 Cumulative Update", "Security", kb="5034441")
KB_DEF = Patch("Defender definitions", "Definition", kb="2267602")


class World:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.arm = FakeArm(clock)
        self.azure = FakeAzureCompute(self.arm)
        self.urls: list[str] = []
        self.http_status: Callable[[str], int] = lambda url: 200

    def clients(self) -> AzureClients:
        return AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )

    def fleet(self, **kwargs: Any) -> AzureFleet:
        def http_get(url: str, timeout: float) -> int:
            self.urls.append(url)
            return self.http_status(url)

        kwargs.setdefault("http_get", http_get)
        return AzureFleet(self.clients(), self.clock, **kwargs)

    def count(self, method: str, contains: str) -> int:
        return sum(1 for c in self.arm.calls if c.method == method and contains.lower() in c.path and c.status < 400)

    def bodies(self, method: str, contains: str) -> list[Any]:
        return [c.body for c in self.arm.calls if c.method == method and contains.lower() in c.path]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def world(clock: ManualClock) -> World:
    return World(clock)


def instance(world: World, machine_id: str, **fields: Any) -> Instance:
    resource = world.arm.get(machine_id)
    os: OsFamily = "windows" if world.azure.state(machine_id).os == "Windows" else "linux"
    return Instance(
        id=resource["id"],
        cloud="azure",
        region=resource["location"],
        os=os,
        name=resource["name"],
        account=SUB,
        **fields,
    )


def until_done(world: World, call: Callable[[], Progress], limit: int = 200) -> tuple[list[Outcome], int]:
    """Call until it answers outcomes, moving the clock to each retry_at: (outcomes, calls)."""
    for calls in range(1, limit + 1):
        progress = call()
        if not isinstance(progress, InProgress):
            return progress, calls
        assert progress.retry_at > world.clock.now(), progress
        world.clock.set(progress.retry_at)
    raise AssertionError(f"still in progress after {limit} calls")


def by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.id: o for o in outcomes}


def snapshot_command(targets: list[Instance], n: int = 1) -> TakeSnapshots:
    return TakeSnapshots(id=f"{RUN}:w{n}:snapshot", run_id=RUN, wave=n, targets=targets)


def install_command(targets: list[InstallTarget], n: int = 1, **fields: Any) -> InstallPatches:
    fields.setdefault("classifications", ["Critical", "Security"])
    return InstallPatches(id=f"{RUN}:w{n}:install", run_id=RUN, wave=n, targets=targets, **fields)


def health_command(targets: list[Instance], checks: HealthChecks | None = None, n: int = 1) -> CheckHealth:
    return CheckHealth(id=f"{RUN}:w{n}:health", run_id=RUN, wave=n, targets=targets, checks=checks or HealthChecks())


# ---------------------------------------------------------------- discovery

POLICY = """
name: weu-monthly
rings:
  - {name: staging, select: {tags: {Environment: staging, PatchPilot: "*"}}}
  - {name: production, select: {tags: {Environment: [production, "prod'eu"]}, os: [windows, linux]}}
azure:
  subscriptions: [00000000-0000-0000-0000-000000000001]
  resource_groups: [rg-web, rg-sql]
  locations: [westeurope]
"""


def test_discovery_reads_the_rings_scope_zones_sets_and_domains_in_one_query(world: World) -> None:
    azure = world.azure
    staging = azure.add_vm("stg-1", tags={"Environment": "staging", "PatchPilot": "yes"}, zone="2")
    prod = azure.add_vm("prd-1", tags={"Environment": "production"}, zone="3", os="Windows", hotpatch=True)
    quoted = azure.add_vm("prd-2", tags={"Environment": "prod'eu"}, zone="1")
    in_set = azure.add_vm(
        "sql-1", rg="rg-sql", tags={"Environment": "production"}, availability_set="AS-SQL", update_domain=3
    )
    azure.add_vm("stg-untagged", tags={"Environment": "staging"})  # no PatchPilot tag: no ring
    azure.add_vm("dev-1", tags={"Environment": "dev"})
    azure.add_vm("other-rg", rg="rg-batch", tags={"Environment": "production"})
    azure.add_vm("other-region", location="northeurope", tags={"Environment": "production"})
    azure.add_vm("other-sub", sub="00000000-0000-0000-0000-000000000002", tags={"Environment": "production"})

    found = world.fleet().discover(parse_policy(POLICY))

    assert [i.id for i in found.instances] == sorted([prod, quoted, staging, in_set], key=str.lower)
    assert found.unreachable == []
    got = {i.name: i for i in found.instances}
    assert got["stg-1"].zone == "westeurope-2" and got["stg-1"].availability_set is None
    assert got["prd-1"].os == "windows" and got["prd-1"].account == SUB and got["prd-1"].region == "westeurope"
    aset = f"/subscriptions/{SUB}/resourceGroups/rg-sql/providers/Microsoft.Compute/availabilitySets/AS-SQL".lower()
    assert (got["sql-1"].zone, got["sql-1"].availability_set, got["sql-1"].update_domain) == (None, aset, 3)
    assert got["stg-1"].tags == {"Environment": "staging", "PatchPilot": "yes"}
    assert got["prd-1"].hotpatch and not got["stg-1"].hotpatch  # patchSettings.enableHotpatching
    assert world.count("POST", "microsoft.resourcegraph") == 2  # the VMs, the Uniform scale set instances
    # The update domain of the VM in an availability set is in its instance view only; the other VMs
    # run (Resource Graph says so) and their agents are the waves' probes' to read.
    assert world.count("GET", "/instanceview") == 1


def test_unreachable_machines_are_returned_with_their_reason(world: World) -> None:
    azure = world.azure
    tags = {"Environment": "production"}
    fine = azure.add_vm("prd-ok", tags=tags)
    stopped = azure.add_vm("prd-off", tags=tags, power="deallocated")
    lost = azure.add_vm("prd-agent", tags=tags, agent="Not Ready")
    arc_ok = azure.add_arc("onprem-1", tags=tags)
    arc_gone = azure.add_arc("onprem-2", tags=tags, arc_status="Disconnected")
    policy = parse_policy(POLICY.replace("  locations: [westeurope]", "  locations: [westeurope]\n  arc: true"))
    policy = policy.model_copy(update={"azure": policy.azure.model_copy(update={"resource_groups": []})})  # type: ignore[union-attr]

    found = world.fleet().discover(policy)

    assert {i.id for i in found.instances} == {fine, stopped, lost, arc_ok, arc_gone}
    # What the rows say: a VM's power state, an Arc server's status. A running VM's agent is not read
    # here (prd-agent): its wave's agent probe reads it when the wave starts.
    assert {i.name: reason for i, reason in found.unreachable} == {
        "prd-off": "VM deallocated",
        "onprem-2": "Arc agent Disconnected",
    }
    assert world.count("GET", "/instanceview") == 0


def test_a_vm_in_an_availability_set_has_its_instance_view_read_for_its_update_domain(world: World) -> None:
    tags = {"Environment": "production"}
    in_set = world.azure.add_vm("sql-1", rg="rg-sql", tags=tags, availability_set="AS-SQL", update_domain=2)
    lost = world.azure.add_vm("sql-2", rg="rg-sql", tags=tags, availability_set="AS-SQL", agent="Not Ready")
    unknown = world.azure.add_vm("web-1", tags=tags)  # no power state in its row yet
    world.azure.graph_power[unknown.lower()] = ""

    found = world.fleet().discover(parse_policy(POLICY))

    assert {i.id: i.update_domain for i in found.instances} == {in_set: 2, lost: 0, unknown: None}
    # That read shows the agent too, and what it shows is said; a row with no power state is asked too.
    assert [(i.id, reason) for i, reason in found.unreachable] == [(lost, "VM agent Not Ready")]
    assert world.count("GET", "/instanceview") == 3


def test_a_vm_whose_agent_is_down_at_discovery_is_planned_and_skipped_at_its_waves_probe(
    world: World, tmp_path: Path
) -> None:
    tags = {"Environment": "production"}
    fine = world.azure.add_vm("prd-1", tags=tags, available=[OPENSSL], install_minutes=15)
    lost = world.azure.add_vm("prd-2", tags=tags, zone="2", available=[OPENSSL], agent="Not Ready")
    policy = parse_policy(
        RUN_POLICY.replace("  - {name: staging, select: {tags: {Environment: staging}}, soak: 1h}\n", "")
    )
    fleet = world.fleet()
    found = fleet.discover(policy)
    assert found.unreachable == [] and {i.id for i in found.instances} == {fine, lost}
    assert lost in {i.id for w in plan(policy, found.instances).waves for i in w.instances}

    run = _drive(world, fleet, policy, found.instances, tmp_path)

    records = {r.id: r for r in run.records()}
    assert run.status == "succeeded", run.reason
    assert (records[fine].state, records[lost].state) == ("patched", "skipped")
    assert records[lost].reason == "agent did not answer: VM agent Not Ready"
    assert world.azure.state(lost).install_requests == []  # nothing sent to it after its probe
    assert world.count("PUT", "/virtualmachines/prd-2/runcommands") == 0


def test_arc_servers_are_only_discovered_when_the_policy_asks(world: World) -> None:
    world.azure.add_vm("prd-1", tags={"Environment": "production"})
    world.azure.add_arc("onprem-1", rg="rg-web", tags={"Environment": "production"})

    found = world.fleet().discover(parse_policy(POLICY))

    assert [i.name for i in found.instances] == ["prd-1"]


LB = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Network/loadBalancers/lb-web"
AGW = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Network/applicationGateways/agw-shop"
POOLS_POLICY = POLICY + "rollout: {pool_budget: 1, disruption_budget: '100%', canary: 0}\n"


def test_discovery_fills_traffic_pools_from_the_nics_backend_pools_in_one_more_query(world: World) -> None:
    """Fake ARM: NIC rows carry `loadBalancerBackendAddressPools` and
    `applicationGatewayBackendAddressPools` on their IP configurations (the REST specification's
    NetworkInterfaceIPConfiguration); pool ids come back lower-cased, as ARM ids compare."""
    azure = world.azure
    tags = {"Environment": "production"}
    web = [
        azure.add_vm(f"web-{n}", tags=tags, zone=str(n % 3 + 1), pools=[f"{LB}/backendAddressPools/BE-Web"])
        for n in range(3)
    ]
    shop = azure.add_vm(
        "shop-1", tags=tags, pools=[f"{LB}/backendAddressPools/BE-Web", f"{AGW}/backendAddressPools/Shop"]
    )
    lonely = azure.add_vm("batch-1", tags=tags)
    arc = azure.add_arc("onprem-1", rg="rg-web", tags=tags)
    policy = parse_policy(POOLS_POLICY.replace("  locations: [westeurope]", "  locations: [westeurope]\n  arc: true"))

    found = world.fleet().discover(policy)

    pools = {i.id: i.traffic_pools for i in found.instances}
    be_web = f"{LB}/backendAddressPools/BE-Web".lower()
    assert pools == {
        **{vm: (be_web,) for vm in web},
        shop: tuple(sorted([be_web, f"{AGW}/backendAddressPools/Shop".lower()])),
        lonely: (),
        arc: (),  # Arc servers have no pools
    }
    # One query for the machines, one for all their NICs (and one for Uniform instances): never a request per VM.
    assert world.count("POST", "microsoft.resourcegraph") == 3
    nic_queries = [q for q in azure.graph_queries if "networkinterfaces" in q.lower()]
    assert len(nic_queries) == 1 and all(f"{n}-nic".lower() in nic_queries[0].lower() for n in ("web-0", "shop-1"))

    # A plan on the discovered fleet keeps the pool budget: one member of be-web per wave.
    waves = plan(policy, found.instances).waves
    assert all(sum(be_web in i.traffic_pools for i in w.instances) <= 1 for w in waves)
    assert len(waves) == 4


def test_discovery_reads_no_nics_without_a_pool_budget(world: World) -> None:
    world.azure.add_vm("web-0", tags={"Environment": "production"}, pools=[f"{LB}/backendAddressPools/be"])

    found = world.fleet().discover(parse_policy(POLICY))

    assert [i.traffic_pools for i in found.instances] == [()]
    assert world.count("POST", "microsoft.resourcegraph") == 2  # the VMs, the Uniform scale set instances


def test_discovery_reads_the_nics_to_drain_them_without_a_pool_budget(world: World) -> None:
    vm = world.azure.add_vm("web-0", tags={"Environment": "production"}, pools=[f"{LB}/backendAddressPools/be"])

    found = world.fleet().discover(parse_policy(POLICY + "traffic: {drain: true}\n"))

    assert {i.id: i.traffic_pools for i in found.instances} == {vm: (f"{LB}/backendAddressPools/be".lower(),)}


def test_a_nic_resource_graph_does_not_return_is_said_never_taken_for_no_pools(world: World) -> None:
    """Resource Graph leaves out what the identity may not read: a VM's NIC missing from the
    answer names the NIC and the permission."""
    vm = world.azure.add_vm("web-0", tags={"Environment": "production"}, pools=[f"{LB}/backendAddressPools/be"])
    nic = world.arm.get(vm)["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
    del world.arm.resources[nic.lower()]  # as Resource Graph answers an identity that may not read it

    with pytest.raises(PoolsUnreadableError) as raised:
        world.fleet().discover(parse_policy(POOLS_POLICY))

    assert raised.value.missing == "Microsoft.Network/networkInterfaces/read"
    assert f"network interfaces not returned (not readable, or deleted): {nic.lower()}" in str(raised.value)
    assert "rollout.pool_budget (needs Microsoft.Network/networkInterfaces/read)" in str(raised.value)


def test_discovery_lists_uniform_instances_excluded_with_their_scale_set_and_never_in_a_wave(world: World) -> None:
    """Fake ARM: a Flexible scale set member carries `properties.virtualMachineScaleSet.id` (the REST
    specification's VirtualMachineProperties SubResource); a Uniform instance is a resource of type
    microsoft.compute/virtualmachinescalesets/virtualmachines, which Resource Graph keeps in the
    `computeresources` table: one more query for all of them finds those the rings may select, and
    the plan lists them as excluded, with `scaling_groups: standby` too."""
    azure = world.azure
    tags = {"Environment": "production"}
    alone = azure.add_vm("web-0", tags=tags)
    members = [azure.add_vm(f"web-flex-{n}", tags=tags, scale_set="VMSS-Web") for n in range(2)]
    uniform = [azure.add_uniform_instance("VMSS-Batch", n, tags=tags, zone=str(n + 1)) for n in range(2)]
    windows = azure.add_uniform_instance("vmss-win", 0, rg="rg-sql", os="Windows", tags=tags)
    azure.add_uniform_instance("vmss-dev", 0, tags={"Environment": "dev"})  # no ring selects it
    azure.add_uniform_instance("vmss-batch", 0, rg="rg-batch", tags=tags)  # outside the policy's groups
    azure.add_uniform_instance("vmss-neu", 0, location="northeurope", tags=tags)  # outside its locations

    found = world.fleet().discover(parse_policy(POLICY))

    vmss = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachineScaleSets/VMSS-Web"
    batch = f"/subscriptions/{SUB}/resourcegroups/rg-web/providers/microsoft.compute/virtualmachinescalesets/vmss-batch"
    win = f"/subscriptions/{SUB}/resourcegroups/rg-sql/providers/microsoft.compute/virtualmachinescalesets/vmss-win"
    groups = {i.id: (i.scaling_group, i.scale_set_mode) for i in found.instances}
    assert groups == {
        alone: (None, None),
        **{m: (vmss.lower(), None) for m in members},
        **{u: (batch, "uniform") for u in uniform},
        windows: (win, "uniform"),
    }
    got = {i.id: i for i in found.instances}
    assert [(got[u].name, got[u].zone, got[u].os, got[u].tags) for u in uniform] == [
        ("VMSS-Batch_0", "westeurope-1", "linux", tags),
        ("VMSS-Batch_1", "westeurope-2", "linux", tags),
    ]
    assert (got[windows].os, got[windows].zone, got[windows].account) == ("windows", None, SUB)
    assert found.unreachable == []
    # The VMs' query and one query for every Uniform instance: no read per instance.
    assert world.count("POST", "microsoft.resourcegraph") == 2
    assert world.count("GET", "/instanceview") == 0  # all run (Resource Graph says so), none in a set
    uniform_queries = [q for q in azure.graph_queries if q.startswith("computeresources")]
    assert len(uniform_queries) == 1 and "tags['Environment']" in uniform_queries[0]

    for scaling_groups in ("skip", "standby"):
        policy = parse_policy(POLICY + f"scaling_groups: {scaling_groups}\n")
        discovered = plan(policy, found.instances)
        in_waves = {i.id for w in discovered.waves for i in w.instances}
        assert in_waves == ({alone} if scaling_groups == "skip" else {alone, *members})
        reasons = {e.instance.id: e.reason for e in discovered.excluded}
        assert reasons == {
            **(
                {m: f"member of scaling group {vmss.lower()}: patch its image" for m in members}
                if scaling_groups == "skip"
                else {}
            ),
            **{u: f"member of scaling group {batch}: patch its image" for u in uniform},
            windows: f"member of scaling group {win}: patch its image",
        }


def test_the_fake_resource_graph_keeps_uniform_instances_in_computeresources_only(world: World) -> None:
    """As Resource Graph does (its table reference; the ARG GET/LIST guide's `ComputeResources | where
    type =~ 'microsoft.compute/virtualmachinescalesets/virtualmachines'`): not in `resources`."""
    uniform = world.azure.add_uniform_instance("vmss-batch", 0)
    vm = world.azure.add_vm("web-0")
    graph = world.clients().graph()
    wanted = "| where type in~ ('microsoft.compute/virtualmachinescalesets/virtualmachines', "
    wanted += "'microsoft.compute/virtualmachines') | project id"

    assert [r["id"] for r in query(graph, f"resources {wanted}", [SUB])] == [vm]
    assert [r["id"] for r in query(graph, f"ComputeResources {wanted}", [SUB])] == [uniform]


def test_an_inventory_names_a_uniform_instance_with_its_scale_set() -> None:
    entry = {"id": "vmss-0", "cloud": "azure", "region": "westeurope", "os": "linux", "scale_set_mode": "uniform"}
    wanted = r"instances\[0\]: scale_set_mode uniform needs the scale set's id in scaling_group \(entry \"vmss-0\"\)"
    with pytest.raises(InputError, match=wanted):
        parse_inventory({"instances": [entry]}, "fleet.json")
    (instance,) = parse_inventory({"instances": [{**entry, "scaling_group": "vmss"}]}, "fleet.json")
    policy = parse_policy("name: p\nscaling_groups: standby\nrings: [{name: all, select: {clouds: [azure]}}]\n")
    assert [e.reason for e in plan(policy, [instance]).excluded] == ["member of scaling group vmss: patch its image"]


def test_a_flexible_scale_set_outside_a_zone_is_patched_one_fault_domain_per_wave(world: World) -> None:
    """Fake ARM: a Flexible scale set VM carries `properties.platformFaultDomain` (the REST
    specification's VirtualMachineProperties); with `scaling_groups: standby` the set is its
    availability set and its fault domain its update domain, so no wave holds two fault domains."""
    tags = {"Environment": "production"}
    members = [
        world.azure.add_vm(f"web-flex-{n}", tags=tags, zone=None, scale_set="VMSS-Web", fault_domain=n % 2)
        for n in range(4)
    ]
    policy = parse_policy(POLICY + "scaling_groups: standby\nrollout: {disruption_budget: '100%', canary: 0}\n")

    found = world.fleet().discover(policy)

    domains = {i.id: (i.availability_set, i.update_domain) for i in found.instances}
    vmss = f"/subscriptions/{SUB}/resourcegroups/rg-web/providers/microsoft.compute/virtualmachinescalesets/vmss-web"
    assert domains == {m: (vmss, n % 2) for n, m in enumerate(members)}
    waves = plan(policy, found.instances).waves
    assert [sorted({i.update_domain for i in w.instances}) for w in waves] == [[0], [1]]


def test_the_discovery_query_filters_on_what_the_rings_select() -> None:
    kql = discovery_query(parse_policy(POLICY))
    assert kql is not None
    assert "resourceGroup in~ ('rg-web', 'rg-sql')" in kql
    assert "tostring(tags['Environment']) in ('production', 'prod\\'eu')" in kql
    assert "isnotempty(tostring(tags['PatchPilot']))" in kql
    aws_only = parse_policy("name: p\nrings: [{name: a, select: {clouds: [aws], tags: {x: y}}}]")
    assert discovery_query(aws_only) is None
    everything = parse_policy("name: p\nrings: [{name: a, select: {clouds: [azure]}}]")
    assert "tags[" not in (discovery_query(everything) or "")


def test_the_fake_refuses_kql_it_does_not_model() -> None:
    with pytest.raises(Exception, match=r"cannot read"):
        run_kql("resources | mv-expand x = properties.y", [{"id": "a"}])
    with pytest.raises(Exception, match=r"function parse_json\(\) is not modelled"):
        run_kql("resources | where parse_json(id) == 'a'", [{"id": "a"}])
    assert run_kql("resources | where tolower(id) in ('a', 'b') | project id", [{"id": "A", "x": 1}]) == [{"id": "A"}]


# ---------------------------------------------------------------- probe


def test_probe_reads_power_state_from_resource_graph_and_agents_from_instance_views(world: World) -> None:
    azure = world.azure
    ready = azure.add_vm("vm-ok")
    off = azure.add_vm("vm-off", power="deallocated")
    lost = azure.add_vm("vm-lost", agent="Not Ready")
    arc = azure.add_arc("onprem-1", arc_status="Expired")
    targets = [instance(world, i) for i in (ready, off, lost, arc)]
    bad = Instance(id="i-0123456789", cloud="azure", region="westeurope", os="linux")

    outcomes = world.fleet().probe_agents(ProbeAgents(id=f"{RUN}:w1:probe", run_id=RUN, targets=[*targets, bad]))

    assert isinstance(outcomes, list)
    got = {o.id: (o.ok, o.detail) for o in outcomes}
    assert got[ready] == (True, "VM agent Ready (agent 2.11.1.12)")
    assert got[off] == (False, "VM deallocated")
    assert got[lost] == (False, "VM agent Not Ready")
    assert got[arc] == (False, "Arc agent Expired")
    assert got[bad.id][0] is False and "not an Azure VM" in got[bad.id][1]
    assert world.count("GET", "/instanceview") == 2


# ---------------------------------------------------------------- snapshots


def test_snapshots_cover_every_managed_disk_and_a_repeated_command_finds_them(world: World) -> None:
    vm = world.azure.add_vm("web-1", data_disks=2)
    other = world.azure.add_vm("web-2", data_disks=0)
    fleet = world.fleet()
    command = snapshot_command([instance(world, vm), instance(world, other)], n=2)

    first = fleet.take_snapshots(command)
    again = fleet.take_snapshots(command)  # redelivered at once

    assert isinstance(first, InProgress) and isinstance(again, InProgress)
    assert world.count("PUT", "/snapshots/") == 4  # 3 disks + 1, made once
    outcomes, _ = until_done(world, lambda: fleet.take_snapshots(command))
    assert world.count("PUT", "/snapshots/") == 4
    done = by_id(outcomes)
    assert done[vm].ok and done[vm].detail == "incremental snapshots of 3 disks"
    snapshots = {s["id"]: s for s in world.azure.find("Microsoft.Compute/snapshots")}
    taken = [snapshots[s] for s in done[vm].items]
    assert [s["tags"][TAG_DISK] for s in taken] == ["os", "lun0", "lun1"]
    source = world.arm.get(vm)["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
    assert taken[0]["properties"]["creationData"] == {"createOption": "Copy", "sourceResourceId": source}
    assert taken[0]["properties"]["incremental"] is True
    assert {k: taken[0]["tags"][k] for k in (TAG_RUN, TAG_WAVE, TAG_COMMAND, TAG_INSTANCE)} == {
        TAG_RUN: RUN,
        TAG_WAVE: "2",
        TAG_COMMAND: command.id,
        TAG_INSTANCE: vm,
    }
    assert len(done[other].items) == 1
    # The whole command again, later (a late duplicate): the same snapshots, nothing new.
    assert fleet.take_snapshots(command) == [o.model_copy(update={"at": world.clock.now()}) for o in outcomes]
    assert world.count("PUT", "/snapshots/") == 4
    # A resource group's snapshots are listed once per call, not read one by one.
    assert world.count("GET", "/snapshots/") == 0


def test_snapshots_of_a_missing_vm_or_a_foreign_id_fail_with_the_reason(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    gone = Instance(id=vm.replace("web-1", "web-9"), cloud="azure", region="westeurope", os="linux")
    foreign = Instance(id="i-0abc", cloud="aws", region="eu-west-1", os="linux")
    outcomes, _ = until_done(world, lambda: world.fleet().take_snapshots(snapshot_command([gone, foreign])))
    assert [(o.ok, o.detail) for o in outcomes] == [
        (False, "VM not found"),
        (False, "not an Azure VM or Arc server resource id (/subscriptions/.../virtualMachines/<name>)"),
    ]


def test_arc_servers_have_no_snapshot_unless_the_policy_patches_them_without_rollback(world: World) -> None:
    arc = instance(world, world.azure.add_arc("onprem-1"))
    strict = world.fleet().take_snapshots(snapshot_command([arc]))
    assert isinstance(strict, list) and not strict[0].ok and "no managed disks" in strict[0].detail

    policy = parse_policy(POLICY + "  arc: true\n  patch_without_rollback: true\n")
    fleet = azure_fleet(world.clients(), world.clock, policy)
    assert fleet.patch_without_rollback
    lenient = fleet.take_snapshots(snapshot_command([arc]))
    assert isinstance(lenient, list) and lenient[0].ok and lenient[0].items == [ARC_NO_SNAPSHOT]
    assert "patched without rollback" in lenient[0].detail
    # the worker's fleet is built without the policy: the command carries the policy's choice
    from_command = world.fleet().take_snapshots(
        snapshot_command([arc]).model_copy(update={"patch_without_rollback": True})
    )
    assert isinstance(from_command, list) and from_command[0].ok and from_command[0].items == [ARC_NO_SNAPSHOT]
    rolled = fleet.roll_back(
        RollBack(
            id=f"{RUN}:w1:rollback", run_id=RUN, targets=[RestoreTarget(instance=arc, snapshot_ids=[ARC_NO_SNAPSHOT])]
        )
    )
    assert isinstance(rolled, list) and not rolled[0].ok and "no snapshot to restore" in rolled[0].detail


# ---------------------------------------------------------------- install


def test_a_machines_patch_exceptions_are_excluded_from_its_install_only(world: World) -> None:
    """The policy's patch exceptions travel per machine (`InstallTarget.exclude`, docs/governance.md)."""
    excepted = world.azure.add_vm("legacy-1", available=[OPENSSL, KERNEL])
    other = world.azure.add_vm("web-1", available=[OPENSSL, KERNEL])
    command = install_command(
        [
            InstallTarget(instance=instance(world, excepted), exclude=["openssl*"]),
            InstallTarget(instance=instance(world, other)),
        ],
    )

    world.fleet().install_patches(command)

    legacy = world.bodies("POST", "legacy-1/installpatches")[0]["linuxParameters"]
    web = world.bodies("POST", "web-1/installpatches")[0]["linuxParameters"]
    assert legacy["packageNameMasksToExclude"] == ["openssl*"]
    assert "packageNameMasksToExclude" not in web


def test_a_hotpatch_only_target_is_installed_with_reboot_setting_never(world: World) -> None:
    """`InstallTarget.reboot` (patchpilot/hotpatch.py) overrides the command's per machine."""
    hot = world.azure.add_vm("hot-1", os="Windows", hotpatch=True, available=[KB_CU])
    other = world.azure.add_vm("win-1", os="Windows", available=[KB_CU])
    command = install_command(
        [
            InstallTarget(instance=instance(world, hot), reboot="never"),
            InstallTarget(instance=instance(world, other)),
        ],
    )

    world.fleet().install_patches(command)

    assert world.bodies("POST", "hot-1/installpatches")[0]["rebootSetting"] == "Never"
    assert world.bodies("POST", "win-1/installpatches")[0]["rebootSetting"] == "IfRequired"


def test_install_marks_each_vm_starts_once_and_reads_progress_from_resource_graph(world: World) -> None:
    linux = world.azure.add_vm("web-1", available=[OPENSSL, KERNEL, VIM])
    windows = world.azure.add_vm("win-1", os="Windows", available=[KB_CU, KB_DEF])
    fleet = world.fleet()
    command = install_command(
        [InstallTarget(instance=instance(world, linux)), InstallTarget(instance=instance(world, windows))],
        exclude=["kernel*", "KB5099999"],
        reboot="always",
    )

    first = fleet.install_patches(command)
    again = fleet.install_patches(command)

    assert isinstance(first, InProgress) and isinstance(again, InProgress)
    assert world.count("POST", "/installpatches") == 2
    mark = world.arm.get(linux)["tags"][TAG_INSTALL]
    assert mark == f"{command.id}|2026-12-08T22:00:00Z"
    body = {b["rebootSetting"]: b for b in world.bodies("POST", "web-1/installpatches")}["Always"]
    assert body == {
        "maximumDuration": "PT120M",
        "rebootSetting": "Always",
        "linuxParameters": {
            "classificationsToInclude": ["Critical", "Security"],
            "packageNameMasksToExclude": ["kernel*"],
        },
    }
    assert world.bodies("POST", "win-1/installpatches")[0]["windowsParameters"] == {
        "classificationsToInclude": ["Critical", "Security"],
        "kbNumbersToExclude": ["5099999"],
    }
    outcomes, calls = until_done(world, lambda: fleet.install_patches(command))
    assert world.count("POST", "/installpatches") == 2  # never a second install
    done = by_id(outcomes)
    assert (done[linux].ok, done[linux].items) == (True, ["openssl=3.0.13-1"])
    assert done[linux].detail == "1 patch installed, reboot Completed"
    assert (done[windows].ok, done[windows].items) == (True, ["KB5034441"])
    assert world.azure.state(linux).available == [KERNEL, VIM]
    # Progress is read in bulk: one Resource Graph query per poll (and one for the patch list).
    assert world.count("POST", "microsoft.resourcegraph") == 1 + calls + 1
    assert world.count("GET", "/instanceview") == 0


def test_later_rings_install_exactly_what_the_first_ring_installed(world: World) -> None:
    linux = world.azure.add_vm("prd-1", available=[OPENSSL, CURL, KERNEL])
    windows = world.azure.add_vm("prd-win", os="Windows", available=[KB_CU, Patch("later", "Security", kb="5050110")])
    fleet = world.fleet()
    command = install_command(
        [
            InstallTarget(instance=instance(world, linux), only=["openssl=3.0.13-1", "kernel=6.1.90-1"]),
            InstallTarget(instance=instance(world, windows), only=["KB5034441"]),
        ],
        n=3,
    )

    outcomes, _ = until_done(world, lambda: fleet.install_patches(command))

    assert world.bodies("POST", "prd-1/installpatches")[0]["linuxParameters"] == {
        "classificationsToInclude": [],
        "packageNameMasksToInclude": ["openssl=3.0.13-1", "kernel=6.1.90-1"],
    }
    assert world.bodies("POST", "prd-win/installpatches")[0]["windowsParameters"] == {
        "classificationsToInclude": [],
        "kbNumbersToInclude": ["5034441"],
    }
    done = by_id(outcomes)
    assert sorted(done[linux].items) == ["kernel=6.1.90-1", "openssl=3.0.13-1"]
    assert done[windows].items == ["KB5034441"]
    assert world.azure.state(linux).available == [CURL]  # released after staging: not installed


def test_an_empty_promoted_set_installs_nothing(world: World) -> None:
    vm = world.azure.add_vm("prd-1", available=[OPENSSL])
    outcomes = world.fleet().install_patches(install_command([InstallTarget(instance=instance(world, vm), only=[])]))
    assert isinstance(outcomes, list) and outcomes[0].ok and "nothing to install" in outcomes[0].detail
    assert world.count("POST", "/installpatches") == 0


def test_a_failed_installation_is_a_failure_with_azures_detail(world: World) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL], install_fails=True)
    command = install_command([InstallTarget(instance=instance(world, vm))])
    outcomes, _ = until_done(world, lambda: world.fleet().install_patches(command))
    assert not outcomes[0].ok
    assert outcomes[0].detail == "installation Failed: 0 installed, 1 failed (1 patch failed to install)"


def test_an_installation_past_its_maximum_duration_fails(world: World) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL], install_minutes=600)
    command = install_command([InstallTarget(instance=instance(world, vm))], max_duration=timedelta(hours=1))
    outcomes, _ = until_done(world, lambda: world.fleet().install_patches(command))
    assert world.clock.now() >= T0 + timedelta(hours=1) + INSTALL_MARGIN
    assert not outcomes[0].ok and outcomes[0].detail == "installation still InProgress after 90 min"
    assert world.bodies("POST", "/installpatches")[0]["maximumDuration"] == "PT60M"


def test_the_maximum_duration_is_clamped_to_azures_four_hours(world: World) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL])
    command = install_command([InstallTarget(instance=instance(world, vm))], max_duration=timedelta(hours=9))
    outcomes, _ = until_done(world, lambda: world.fleet().install_patches(command))
    assert world.bodies("POST", "/installpatches")[0]["maximumDuration"] == "PT240M"
    assert outcomes[0].ok and outcomes[0].detail.endswith("(maximum duration 9 h clamped to 4 h)")


def test_a_worker_that_died_between_mark_and_send_sends_once_after_checking(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL])
    fleet = world.fleet()
    command = install_command([InstallTarget(instance=instance(world, vm))])
    with monkeypatch.context() as patched:
        patched.setattr(fleet_install, "_send_install", lambda *_: (_ for _ in ()).throw(SystemExit("worker died")))
        with pytest.raises(SystemExit):
            fleet.install_patches(command)
    assert TAG_INSTALL in world.arm.get(vm)["tags"] and world.count("POST", "/installpatches") == 0

    assert isinstance(fleet.install_patches(command), InProgress)  # marked, not yet due for a check
    assert world.count("POST", "/installpatches") == 0
    world.clock.advance(START_GRACE)
    assert isinstance(fleet.install_patches(command), InProgress)  # no run since the mark: sent now
    assert world.count("GET", "/instanceview") == 1 and world.count("POST", "/installpatches") == 1
    outcomes, _ = until_done(world, lambda: fleet.install_patches(command))
    assert outcomes[0].ok and outcomes[0].items == ["openssl=3.0.13-1"]
    assert world.count("POST", "/installpatches") == 1


def test_an_install_resource_graph_has_not_indexed_yet_is_not_sent_again(world: World) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL], install_minutes=60)
    fleet = world.fleet()
    command = install_command([InstallTarget(instance=instance(world, vm))])
    world.azure.installations_indexed = False
    assert isinstance(fleet.install_patches(command), InProgress)
    world.clock.advance(START_GRACE + timedelta(minutes=5))

    assert isinstance(fleet.install_patches(command), InProgress)  # the instance view shows it running

    assert world.count("GET", "/instanceview") == 1 and len(world.bodies("POST", "/installpatches")) == 1
    world.azure.installations_indexed = True
    outcomes, _ = until_done(world, lambda: fleet.install_patches(command))
    assert outcomes[0].ok and len(world.bodies("POST", "/installpatches")) == 1


def test_an_install_marks_the_command_not_each_vm_and_a_crash_mid_send_sends_only_the_unsent_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vms = [world.azure.add_vm(f"web-{n}", available=[OPENSSL]) for n in range(6)]
    fleet = world.fleet()
    command = install_command([InstallTarget(instance=instance(world, vm)) for vm in vms])
    send = fleet_install._send_install
    sent: list[str] = []

    def dies_after_two(access: Any, machine: Any, body: Any) -> None:
        if len(sent) == 2:
            raise SystemExit("worker died")
        sent.append(machine.id)
        send(access, machine, body)

    with monkeypatch.context() as patched:
        patched.setattr(fleet_install, "_send_install", dies_after_two)
        with pytest.raises(SystemExit):
            fleet.install_patches(command)
    # The command's mark on its first three VMs (by id), not a tag write per VM; two of six sent.
    assert world.count("PATCH", "/virtualmachines/") == 3
    assert [vm for vm in vms if TAG_INSTALL in world.arm.get(vm)["tags"]] == vms[:3]
    assert sent == vms[:2] and world.count("POST", "/installpatches") == 2

    assert isinstance(fleet.install_patches(command), InProgress)  # redelivered: unsent or not yet indexed?
    assert world.count("POST", "/installpatches") == 2 and world.count("GET", "/instanceview") == 0
    world.clock.advance(START_GRACE)
    outcomes, _ = until_done(world, lambda: fleet.install_patches(command))

    assert [(o.ok, o.items) for o in outcomes] == [(True, ["openssl=3.0.13-1"])] * 6
    sends = sorted(c.path for c in world.arm.calls if c.method == "POST" and c.path.endswith("/installpatches"))
    assert sends == sorted(f"{vm.lower()}/installpatches" for vm in vms)  # each VM once
    # Only the four that Resource Graph showed no run for were looked at, once each, before sending.
    assert world.count("GET", "/instanceview") == 4
    assert world.count("PATCH", "/virtualmachines/") == 3


def test_an_install_whose_first_vm_loses_its_mark_sends_nothing_again(world: World) -> None:
    vms = [world.azure.add_vm(f"web-{n}", available=[OPENSSL], install_minutes=1) for n in range(4)]
    fleet = world.fleet()
    command = install_command([InstallTarget(instance=instance(world, vm)) for vm in vms])
    assert isinstance(fleet.install_patches(command), InProgress)
    world.clock.advance(timedelta(minutes=2))  # the installs have finished: a second one would be accepted
    world.arm.get(vms[0])["tags"] = {}  # its tags replaced meanwhile (an operator, a tag policy)

    outcomes, _ = until_done(world, lambda: fleet.install_patches(command))

    assert [(o.ok, o.items) for o in outcomes] == [(True, ["openssl=3.0.13-1"])] * 4
    assert world.count("POST", "/installpatches") == 4  # the mark on the next VMs: nothing sent twice
    assert world.count("PATCH", "/virtualmachines/") == 3


def test_a_refused_install_is_reported_without_sending_it_again(world: World) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL])
    command = install_command([InstallTarget(instance=instance(world, vm))], classifications=["UpdateRollup"])
    outcomes = world.fleet().install_patches(command)
    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert outcomes[0].detail.startswith("no Linux classification or package selected")

    from fake_arm import ArmError  # a refusal Azure makes: 400 for the request

    def refuse(_: Any) -> Any:
        raise ArmError(400, "InvalidParameter", "Patch settings are not compatible with this image.")

    world.arm.on("POST", r".*/virtualMachines/web-1/installPatches", refuse)
    command = install_command([InstallTarget(instance=instance(world, vm))])
    first = world.fleet().install_patches(command)
    later = world.fleet().install_patches(command)
    assert first == later
    assert isinstance(first, list) and "InvalidParameter: Patch settings are not compatible" in first[0].detail
    assert len(world.bodies("POST", "/installpatches")) == 1


MAINTENANCE_RUN = (
    f"/subscriptions/{SUB}/resourceGroups/rg-maint/providers/Microsoft.Maintenance/maintenanceConfigurations/"
    "patchpilot-production/providers/Microsoft.Maintenance/applyUpdates/20261208230000"
)


def test_an_update_manager_run_is_reported_not_started(world: World) -> None:
    patched = world.azure.add_vm("web-1", available=[OPENSSL, KERNEL])
    left_out = world.azure.add_vm("web-2", available=[OPENSSL])
    fleet = world.fleet()
    command = install_command(
        [InstallTarget(instance=instance(world, patched)), InstallTarget(instance=instance(world, left_out))],
        max_duration=timedelta(hours=2),
        maintenance_run=MAINTENANCE_RUN,
    )
    assert isinstance(fleet.install_patches(command), InProgress)  # before the window: nothing yet
    world.clock.advance(timedelta(minutes=40))
    world.azure.maintenance_install(
        [patched], MAINTENANCE_RUN.upper(), {"classificationsToInclude": ["Critical", "Security"]}
    )

    outcomes, _ = until_done(world, lambda: fleet.install_patches(command))

    done = by_id(outcomes)
    assert (done[patched].ok, sorted(done[patched].items)) == (True, ["kernel=6.1.90-1", "openssl=3.0.13-1"])
    assert (done[left_out].ok, done[left_out].detail) == (
        False,
        "Update Manager run 20261208230000 reported no installation on it",
    )
    assert world.clock.now() >= T0 + timedelta(hours=2) + INSTALL_MARGIN
    assert world.bodies("POST", "/installpatches") == []  # Update Manager installs, PatchPilot starts nothing
    # One mark for the whole command (when it was first seen), on its first machine only.
    assert world.arm.get(patched)["tags"][TAG_INSTALL] == f"{command.id}|2026-12-08T22:00:00Z"
    assert TAG_INSTALL not in world.arm.get(left_out)["tags"]


def test_snapshots_not_done_by_the_deadline_fail(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    deadline = T0 + timedelta(minutes=1)
    command = snapshot_command([instance(world, vm)]).model_copy(update={"deadline": deadline})
    first = world.fleet().take_snapshots(command)
    assert isinstance(first, InProgress) and first.retry_at == deadline
    world.clock.set(deadline)
    outcomes = world.fleet().take_snapshots(command)
    assert isinstance(outcomes, list)
    assert (outcomes[0].ok, outcomes[0].detail) == (
        False,
        "snapshots not complete by the deadline 2026-12-08T22:01:00Z",
    )


def test_kb_numbers_and_package_masks_are_told_apart() -> None:
    assert split_patch_names(["KB5034441", "5034442", "kb123", "openssl", "kernel*", "libc=1.0.1"]) == (
        ["5034441", "5034442", "123"],
        ["openssl", "kernel*", "libc=1.0.1"],
    )
    body = install_body("linux", ["Critical", "UpdateRollup"], [], [], None, "never", timedelta(minutes=45))
    assert body == {
        "maximumDuration": "PT45M",
        "rebootSetting": "Never",
        "linuxParameters": {"classificationsToInclude": ["Critical", "Security"]},
    }


# ---------------------------------------------------------------- health


CHECKS = HealthChecks(
    script=HealthScript(linux="curl -fsS http://localhost/health", windows="Invoke-WebRequest http://localhost/health"),
    http=["http://{private_ip}:8080/health?host={name}"],
    timeout=timedelta(minutes=10),
)


def test_a_healthy_vm_passes_agent_app_health_script_and_http(world: World) -> None:
    vm = world.azure.add_vm("web-1", app_health="healthy", private_ip="10.1.2.3")
    fleet = world.fleet()
    command = health_command([instance(world, vm)], CHECKS)

    outcomes, _ = until_done(world, lambda: fleet.check_health(command))

    assert outcomes[0].ok
    assert outcomes[0].detail == "VM running, VM agent Ready, application healthy, HTTP 200, script exit 0"
    assert set(world.urls) == {"http://10.1.2.3:8080/health?host=web-1"}
    assert world.count("PUT", "/runcommands/patchpilot-health") == 1
    # Started on the command's first execution without looking for it first; read once it ran.
    assert [c.status for c in world.arm.calls if c.method == "GET" and "/runcommands/" in c.path] == [200]
    run = world.arm.get(vm + "/runCommands/patchpilot-health")
    assert run["tags"][TAG_COMMAND] == command.id
    assert run["properties"]["source"] == {"script": "curl -fsS http://localhost/health"}
    # The check's start is one tag on the command's first machine, written once.
    assert world.arm.get(vm)["tags"][TAG_HEALTH] == f"{command.id}|2026-12-08T22:00:00Z"
    assert world.count("PATCH", "/virtualmachines/web-1") == 1


@pytest.mark.parametrize(
    ("state", "checks", "detail"),
    [
        ({"agent": "Not Ready"}, HealthChecks(), "VM agent Not Ready (still after 5 min)"),
        (
            {"app_health": "healthy", "breaks_when_patched": True},
            HealthChecks(),
            "Application Health extension reports unhealthy (still after 5 min)",
        ),
        (
            {"breaks_when_patched": True},
            HealthChecks(script=HealthScript(linux="systemctl is-active web")),
            "health script failed, exit code 1: curl: (22) 503",
        ),
        ({"power": "deallocated"}, HealthChecks(), "VM is deallocated"),
    ],
)
def test_an_unhealthy_vm_fails_with_why(world: World, state: dict[str, Any], checks: HealthChecks, detail: str) -> None:
    vm = world.azure.add_vm("web-1", available=[OPENSSL], install_minutes=1, **state)
    if state.get("breaks_when_patched"):
        until_done(
            world, lambda: world.fleet().install_patches(install_command([InstallTarget(instance=instance(world, vm))]))
        )
    start = world.clock.now()
    outcomes, _ = until_done(world, lambda: world.fleet().check_health(health_command([instance(world, vm)], checks)))
    assert (outcomes[0].ok, outcomes[0].detail) == (False, detail)
    if "still after" in detail:
        assert world.clock.now() == start + timedelta(minutes=5)


def test_a_failing_http_check_fails_at_the_timeout(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    world.http_status = lambda url: 503
    checks = HealthChecks(http=["https://{name}.internal/health"], timeout=timedelta(minutes=4))
    outcomes, calls = until_done(
        world, lambda: world.fleet().check_health(health_command([instance(world, vm)], checks))
    )
    assert (outcomes[0].ok, outcomes[0].detail) == (
        False,
        "GET https://web-1.internal/health: HTTP 503 (still after 4 min)",
    )
    assert calls == 3  # at 0, 2 and 4 minutes


def test_alarms_are_noted_as_aws_only(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    outcomes = world.fleet().check_health(health_command([instance(world, vm)], HealthChecks(alarms=["web-5xx"])))
    assert isinstance(outcomes, list) and outcomes[0].ok
    assert outcomes[0].detail == "VM running, VM agent Ready, CloudWatch alarms not checked (AWS only)"


def test_health_reads_no_instance_view_of_a_vm_resource_graph_shows_running_without_app_health(
    world: World,
) -> None:
    vms = [world.azure.add_vm(f"web-{n}", rg="rg-web" if n % 2 else "rg-api") for n in range(6)]
    fleet = world.fleet()
    checks = HealthChecks(script=HealthScript(linux="systemctl is-active web"))
    command = health_command([instance(world, vm) for vm in vms], checks)

    outcomes, calls = until_done(world, lambda: fleet.check_health(command))

    assert calls == 2
    assert [(o.ok, o.detail) for o in outcomes] == [(True, "VM running, VM agent Ready, script exit 0")] * 6
    # Resource Graph showed them running with no Application Health extension (their rows and one
    # extension query): the scripts were started without a view, and the VM agent running each to
    # its end with exit 0 stands for it. Then one Resource Graph query says they all still run.
    assert world.count("GET", "/instanceview") == 0
    assert world.count("PUT", "/runcommands/patchpilot-health") == 6
    assert world.count("GET", "/runcommands/patchpilot-health") == 6
    assert world.count("POST", "microsoft.resourcegraph") == 3
    assert sum("virtualmachines/extensions" in q for q in world.azure.graph_queries) == 1
    for vm in vms:
        assert world.arm.get(vm + "/runCommands/patchpilot-health")["tags"][TAG_HEALTH_BASE] == BASE_UNREAD


def test_a_stale_resource_graph_row_only_sends_a_vm_to_its_instance_view(world: World) -> None:
    lagging = world.azure.add_vm("web-1")  # Resource Graph still shows it starting: it runs
    stopped = world.azure.add_vm("web-2")  # deallocated after its script passed; Resource Graph shows it
    unknown = world.azure.add_vm("web-3")  # no power state in its row yet
    fleet = world.fleet()
    checks = HealthChecks(script=HealthScript(linux="systemctl is-active web"))
    command = health_command([instance(world, vm) for vm in (lagging, stopped, unknown)], checks)
    assert isinstance(fleet.check_health(command), InProgress)  # the scripts are started
    world.clock.advance(timedelta(minutes=2))  # they have finished, exit 0
    world.azure.graph_power.update({lagging.lower(): "starting", unknown.lower(): ""})
    world.azure.state(stopped).power = "deallocated"

    outcomes = fleet.check_health(command)

    assert isinstance(outcomes, list)
    assert [(o.ok, o.detail) for o in outcomes] == [
        (True, "VM running, VM agent Ready, script exit 0"),
        (False, "VM is deallocated"),
        (True, "VM running, VM agent Ready, script exit 0"),
    ]
    # None before the scripts (Resource Graph showed all three running, with no Application Health
    # extension); each once Resource Graph no longer shows it running.
    assert world.count("GET", "/instanceview") == 3


def test_a_vm_with_application_health_has_its_instance_view_read_at_every_poll(world: World) -> None:
    vm = world.azure.add_vm("web-1", app_health="healthy")
    world.azure.scripts["systemctl is-active web"] = (0, "active")
    fleet = world.fleet()
    checks = HealthChecks(script=HealthScript(linux="systemctl is-active web"), timeout=timedelta(minutes=4))
    command = health_command([instance(world, vm)], checks)
    assert isinstance(fleet.check_health(command), InProgress)
    world.azure.state(vm).app_health = "unhealthy"  # after the script started: its exit 0 does not hide it

    outcomes, calls = until_done(world, lambda: fleet.check_health(command))

    assert (outcomes[0].ok, outcomes[0].detail) == (
        False,
        "Application Health extension reports unhealthy (still after 4 min)",
    )
    assert world.count("GET", "/instanceview") == 1 + calls
    # Resource Graph shows its extension: its own view was read before its script, as it always was.
    assert world.arm.get(vm + "/runCommands/patchpilot-health")["tags"][TAG_HEALTH_BASE] == (
        "VM running, VM agent Ready, application healthy"
    )


SCRIPT = HealthScript(linux="systemctl is-active web", windows="Get-Service W3SVC")


def test_a_vm_whose_extension_query_fails_has_its_instance_view_read_before_its_script(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    world.azure.graph_throttled.add("microsoft.compute/virtualmachines/extensions")  # 429 until retries run out
    fleet = world.fleet()
    command = health_command([instance(world, vm)], HealthChecks(script=SCRIPT))

    outcomes, calls = until_done(world, lambda: fleet.check_health(command))

    assert (outcomes[0].ok, outcomes[0].detail) == (True, "VM running, VM agent Ready, script exit 0")
    assert world.arm.get(vm + "/runCommands/patchpilot-health")["tags"][TAG_HEALTH_BASE] == BASE_PASS
    assert (calls, world.count("GET", "/instanceview")) == (2, 1)  # before the script only: its exit 0 vouches


def test_a_script_sent_to_a_vm_whose_agent_is_not_ready_waits_and_one_view_at_the_deadline_says_why(
    world: World,
) -> None:
    vm = world.azure.add_vm("web-1", agent="Not Ready")  # Resource Graph shows the VM running, not its agent
    fleet = world.fleet()
    command = health_command([instance(world, vm)], HealthChecks(script=SCRIPT, timeout=timedelta(minutes=6)))

    outcomes, calls = until_done(world, lambda: fleet.check_health(command))

    assert (outcomes[0].ok, outcomes[0].detail) == (False, "VM agent Not Ready (still after 6 min)")
    run = world.arm.get(vm + "/runCommands/patchpilot-health")
    assert run["properties"]["instanceView"]["executionState"] == "Pending"  # the agent never ran it
    assert world.count("PUT", "/runcommands/patchpilot-health") == 1
    assert (calls, world.count("GET", "/instanceview")) == (4, 1)  # at 0, 2, 4, 6 minutes; the view at 6 only


def test_a_script_pending_until_the_agent_is_ready_passes_on_its_own_run(world: World) -> None:
    vm = world.azure.add_vm("web-1", agent="Not Ready")
    fleet = world.fleet()
    command = health_command([instance(world, vm)], HealthChecks(script=SCRIPT))
    first = fleet.check_health(command)
    world.clock.advance(timedelta(minutes=2))
    pending = fleet.check_health(command)
    assert isinstance(first, InProgress) and isinstance(pending, InProgress)
    assert "health script pending: not started by the VM agent yet" in pending.note
    world.azure.state(vm).agent = "Ready"  # the agent runs it now

    outcomes, _ = until_done(world, lambda: fleet.check_health(command))

    assert (outcomes[0].ok, outcomes[0].detail) == (True, "VM running, VM agent Ready, script exit 0")
    assert world.count("GET", "/instanceview") == 0 and world.count("PUT", "/runcommands/") == 1


def test_a_script_refused_while_the_vm_is_busy_is_sent_again_at_the_next_poll(world: World) -> None:
    """An install's result may come while its reboot still runs (rebootStatus Started): the
    script's PUT, sent with no instance view first, may meet a conflict. It is not a failure."""
    vm = world.azure.add_vm("web-1")
    fleet = world.fleet()
    command = health_command([instance(world, vm)], HealthChecks(script=SCRIPT))
    from fake_arm import ArmError  # Azure's answer to a PUT while another operation runs

    real_put = world.azure._put_run_command
    puts: list[int] = []

    def busy_once(request: Any) -> Any:
        puts.append(len(puts) + 1)
        if len(puts) == 1:
            raise ArmError(409, "OperationNotAllowed", "Operation 'PutRunCommand' is not allowed: VM restarting.")
        return real_put(request)

    world.arm.on("PUT", r".*/virtualMachines/web-1/runCommands/[^/]+", busy_once)
    first = fleet.check_health(command)

    assert isinstance(first, InProgress) and "health script not run: " in first.note and "VM restarting" in first.note
    outcomes, _ = until_done(world, lambda: fleet.check_health(command))
    assert (outcomes[0].ok, outcomes[0].detail) == (True, "VM running, VM agent Ready, script exit 0")
    assert puts == [1, 2]  # refused once, sent again once


def test_a_redelivered_health_check_sends_no_script_twice_and_passes_no_vm_before_its_run_ends(
    world: World,
) -> None:
    vms = [world.azure.add_vm(f"web-{n}") for n in range(3)]
    fleet = world.fleet()
    command = health_command([instance(world, vm) for vm in vms], HealthChecks(script=SCRIPT))
    real_start = fleet_health.start_run_command
    started: list[str] = []

    def dies_after_the_second(*args: Any, **kwargs: Any) -> None:
        if len(started) == 2:
            raise RuntimeError("the worker died")
        real_start(*args, **kwargs)
        started.append(args[1].name)

    fleet_health.start_run_command = dies_after_the_second  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError):
            fleet.check_health(command)
    finally:
        fleet_health.start_run_command = real_start  # type: ignore[assignment]
    for _ in range(2):  # redelivered, twice, before any script has run
        again = fleet.check_health(command)
        assert isinstance(again, InProgress) and again.note.startswith("health: 0/3 done")

    outcomes, _ = until_done(world, lambda: fleet.check_health(command))

    assert [o.ok for o in outcomes] == [True] * 3
    assert world.count("PUT", "/runcommands/patchpilot-health") == 3  # one per VM, whatever the deliveries
    assert world.count("GET", "/instanceview") == 0


def test_a_failing_script_started_unread_is_reported_after_one_view_of_the_vm(world: World) -> None:
    broken = world.azure.add_vm("web-1", available=[OPENSSL], install_minutes=1, breaks_when_patched=True)
    gone = world.azure.add_vm("web-2")  # deallocated after Resource Graph's row was read: its script fails
    until_done(
        world, lambda: world.fleet().install_patches(install_command([InstallTarget(instance=instance(world, broken))]))
    )
    fleet = world.fleet()
    command = health_command([instance(world, broken), instance(world, gone)], HealthChecks(script=SCRIPT))
    world.azure.graph_power[gone.lower()] = "running"
    world.azure.state(gone).power = "deallocated"

    outcomes, calls = until_done(world, lambda: fleet.check_health(command))

    assert [(o.ok, o.detail) for o in outcomes] == [
        (False, "health script failed, exit code 1: curl: (22) 503"),
        (False, "VM is deallocated"),
    ]
    assert (calls, world.count("GET", "/instanceview")) == (2, 2)  # one each, once its run had failed


# ---------------------------------------------------------------- host hooks


def hook_command(targets: list[Instance], hook: HostHook, phase: str = "before_install", n: int = 1) -> RunHostHook:
    return RunHostHook(
        id=f"{RUN}:w{n}:{phase}", run_id=RUN, wave=n, targets=targets, phase=phase, hook=hook, issued_at=T0
    )


DRAIN = HostHook(linux="systemctl stop web && echo stopped", windows="Stop-Service W3SVC", timeout=timedelta(minutes=3))


def test_a_host_hook_runs_once_as_a_managed_run_command_per_os_and_reports_the_output(world: World) -> None:
    linux = world.azure.add_vm("web-1")
    windows = world.azure.add_vm("iis-1", os="Windows")
    world.azure.scripts["systemctl stop web && echo stopped"] = (0, "stopped\n")
    fleet = world.fleet()
    command = hook_command([instance(world, linux), instance(world, windows)], DRAIN)

    outcomes, calls = until_done(world, lambda: fleet.run_hook(command))

    assert [(o.ok, o.detail) for o in outcomes] == [
        (True, "before_install hook exit 0: stopped"),
        (True, "before_install hook exit 0: ok"),
    ]
    assert calls == 3  # started, still running at 30 s, done at 60 s
    assert world.count("PUT", "/runcommands/patchpilot-before-install") == 2  # once per machine
    run = world.arm.get(windows + "/runCommands/patchpilot-before-install")
    assert run["properties"]["source"] == {"script": "Stop-Service W3SVC"}  # PowerShell on Windows
    assert run["properties"]["timeoutInSeconds"] == 180 and run["tags"][TAG_COMMAND] == command.id
    # A redelivered command reads what it started: nothing runs again.
    assert fleet.run_hook(command) == outcomes
    assert world.count("PUT", "/runcommands/patchpilot-before-install") == 2


def test_a_failing_hook_fails_with_the_tail_of_its_output(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    world.azure.scripts["systemctl stop web && echo stopped"] = (3, "x" * 800 + "queue not empty")

    outcomes, _ = until_done(world, lambda: world.fleet().run_hook(hook_command([instance(world, vm)], DRAIN)))

    assert not outcomes[0].ok
    assert outcomes[0].detail.startswith("before_install hook failed, exit code 3: xxx")
    assert outcomes[0].detail.endswith("queue not empty") and len(outcomes[0].detail) < 560


def test_a_hook_of_an_earlier_command_is_replaced_and_a_hook_without_a_script_for_the_os_runs_nothing(
    world: World,
) -> None:
    vm = world.azure.add_vm("web-1")
    iis = world.azure.add_vm("iis-1", os="Windows")
    fleet = world.fleet()
    until_done(world, lambda: fleet.run_hook(hook_command([instance(world, vm)], DRAIN, "after_install", n=1)))

    linux_only = HostHook(linux="systemctl start web")
    command = hook_command([instance(world, vm), instance(world, iis)], linux_only, "after_install", n=2)
    outcomes, _ = until_done(world, lambda: fleet.run_hook(command))

    assert [(o.ok, o.detail) for o in outcomes] == [
        (True, "after_install hook exit 0: ok"),
        (True, "the after_install hook has no windows script: nothing run"),
    ]
    run = world.arm.get(vm + "/runCommands/patchpilot-after-install")
    assert run["tags"][TAG_COMMAND] == command.id and run["properties"]["source"] == {"script": "systemctl start web"}
    assert world.count("PUT", "/virtualmachines/iis-1/runcommands/") == 0


def test_a_refused_hook_fails_naming_the_permission(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    world.arm.deny("Microsoft.Compute/virtualMachines/runCommands/read")

    outcomes = world.fleet().run_hook(hook_command([instance(world, vm)], DRAIN))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert outcomes[0].detail.startswith("before_install hook not run: AuthorizationFailed")
    assert outcomes[0].detail.endswith("(needs Microsoft.Compute/virtualMachines/runCommands/read and /write)")


# ---------------------------------------------------------------- rollback


def _patched_and_broken(world: World, fleet: AzureFleet, data_disks: int = 1) -> tuple[str, list[str]]:
    vm = world.azure.add_vm("web-1", data_disks=data_disks, available=[OPENSSL], breaks_when_patched=True)
    taken, _ = until_done(world, lambda: fleet.take_snapshots(snapshot_command([instance(world, vm)])))
    until_done(world, lambda: fleet.install_patches(install_command([InstallTarget(instance=instance(world, vm))])))
    assert world.azure.broken(vm)
    return vm, taken[0].items


def test_rollback_restores_the_os_disk_step_by_step_and_redelivery_repeats_nothing(world: World) -> None:
    fleet = world.fleet()
    vm, snapshots = _patched_and_broken(world, fleet)
    original_os = world.azure.os_disk(vm)
    original_data = world.arm.get(vm)["properties"]["storageProfile"]["dataDisks"][0]["managedDisk"]["id"]
    command = RollBack(
        id=f"{RUN}:w1:rollback",
        run_id=RUN,
        wave=1,
        targets=[RestoreTarget(instance=instance(world, vm), snapshot_ids=snapshots)],
    )
    steps = []
    for _ in range(20):  # bounded: a rollback that never ends fails the test
        progress = fleet.roll_back(command)
        redelivered = fleet.roll_back(command)  # every step delivered twice
        assert redelivered == progress
        steps.append(
            (
                world.count("PUT", "/disks/"),
                world.count("POST", "/deallocate"),
                world.count("PATCH", "/virtualmachines/web-1"),
                world.count("POST", "/start"),
            )
        )
        if not isinstance(progress, InProgress):
            break
        world.clock.set(progress.retry_at)
    assert isinstance(progress, list), progress

    # disk created; (ready) deallocated; (deallocated) swapped; started; running: done
    assert steps[-1] == (1, 1, 2, 1)  # two PATCHes of the VM: the install mark and the swap
    outcome = progress[0]
    assert outcome.ok and outcome.items == snapshots[:1]
    restored = world.azure.os_disk(vm)
    assert restored != original_os and restored.rsplit("/", 1)[1].startswith("pp-web-1-")
    assert not world.azure.broken(vm) and world.azure.state(vm).power == "running"
    old = world.arm.get(original_os)
    assert old["tags"][TAG_REPLACED_BY] == restored.rsplit("/", 1)[1] and old["properties"]["diskState"] == "Unattached"
    new = world.arm.get(restored)
    assert (new["sku"], new["zones"], new["properties"]["osType"], new["properties"]["hyperVGeneration"]) == (
        {"name": "Premium_LRS"},
        ["1"],
        "Linux",
        "V2",
    )
    assert world.arm.get(vm)["properties"]["storageProfile"]["dataDisks"][0]["managedDisk"]["id"] == original_data
    assert "OS disk restored from" in outcome.detail and "original web-1_OsDisk_1 kept" in outcome.detail


def test_rollback_restores_data_disks_by_lun_when_asked(world: World) -> None:
    fleet = world.fleet()
    vm, snapshots = _patched_and_broken(world, fleet, data_disks=2)
    before = [d["managedDisk"]["id"] for d in world.arm.get(vm)["properties"]["storageProfile"]["dataDisks"]]
    command = RollBack(
        id=f"{RUN}:w1:rollback",
        run_id=RUN,
        targets=[RestoreTarget(instance=instance(world, vm), snapshot_ids=snapshots)],
        restore_data_volumes=True,
    )
    outcomes, _ = until_done(world, lambda: fleet.roll_back(command))
    assert outcomes[0].ok and outcomes[0].items == snapshots
    data = world.arm.get(vm)["properties"]["storageProfile"]["dataDisks"]
    assert [d["lun"] for d in data] == [0, 1]
    assert all(d["managedDisk"]["id"] not in before and d["name"].startswith("pp-web-1-") for d in data)
    assert [d["caching"] for d in data] == ["ReadOnly", "ReadOnly"]
    assert world.count("PATCH", "/virtualmachines/web-1") == 2  # install mark, one swap of all three disks


def test_a_data_disk_detached_since_its_snapshot_is_restored_at_its_lun(world: World) -> None:
    fleet = world.fleet()
    vm, snapshots = _patched_and_broken(world, fleet)
    storage = world.arm.get(vm)["properties"]["storageProfile"]
    world.arm.get(storage["dataDisks"][0]["managedDisk"]["id"])["properties"]["diskState"] = "Unattached"
    storage["dataDisks"] = []
    command = RollBack(
        id=f"{RUN}:w1:rollback",
        run_id=RUN,
        targets=[RestoreTarget(instance=instance(world, vm), snapshot_ids=snapshots)],
        restore_data_volumes=True,
    )
    outcomes, _ = until_done(world, lambda: fleet.roll_back(command))
    assert outcomes[0].ok
    data = world.arm.get(vm)["properties"]["storageProfile"]["dataDisks"]
    assert [(d["lun"], d["name"].startswith("pp-web-1-")) for d in data] == [(0, True)]


def test_swapping_the_disks_of_a_running_vm_is_refused(world: World) -> None:
    vm = world.azure.add_vm("web-1")
    other = world.azure.add_vm("web-2", zone="1")
    client = world.arm.client(ComputeManagementClient, SUB)
    swap = {"properties": {"storageProfile": {"osDisk": {"managedDisk": {"id": world.azure.os_disk(other)}}}}}
    with pytest.raises(HttpResponseError) as refused:
        client.virtual_machines.begin_update("rg-web", "web-1", swap).result()
    assert refused.value.status_code == 409 and "deallocated" in str(refused.value)
    assert world.azure.os_disk(vm).endswith("web-1_OsDisk_1")


def test_arc_servers_cannot_be_rolled_back(world: World) -> None:
    arc = instance(world, world.azure.add_arc("onprem-1"))
    outcomes = world.fleet().roll_back(
        RollBack(id=f"{RUN}:w1:rollback", run_id=RUN, targets=[RestoreTarget(instance=arc, snapshot_ids=["snap"])])
    )
    assert isinstance(outcomes, list) and not outcomes[0].ok and "Arc server" in outcomes[0].detail


# ---------------------------------------------------------------- Arc paths


def test_arc_servers_are_patched_and_checked_through_hybrid_compute(world: World) -> None:
    arc = world.azure.add_arc("onprem-1", os="Windows", available=[KB_CU])
    fleet = world.fleet(patch_without_rollback=True)
    target = instance(world, arc)

    installed, _ = until_done(world, lambda: fleet.install_patches(install_command([InstallTarget(instance=target)])))
    assert installed[0].ok and installed[0].items == ["KB5034441"]
    assert world.count("POST", "/microsoft.hybridcompute/machines/onprem-1/installpatches") == 1
    assert world.arm.get(arc)["tags"][TAG_INSTALL].startswith(f"{RUN}:w1:install|")

    checks = HealthChecks(script=HealthScript(windows="Get-Service W3SVC"), http=["http://{private_ip}/"])
    healthy, _ = until_done(world, lambda: fleet.check_health(health_command([target], checks)))
    assert healthy[0].ok and healthy[0].detail == "Arc agent Connected, HTTP 200, script exit 0"
    assert set(world.urls) == {"http://192.168.1.10/"}
    world.azure.state(arc).arc_status = "Disconnected"
    lost, _ = until_done(world, lambda: fleet.check_health(health_command([target], HealthChecks(), n=2)))
    assert lost[0].detail == "Arc agent Disconnected (still after 5 min)"


# ---------------------------------------------------------------- wake-ups

OTHER_SUB = "00000000-0000-0000-0000-000000000002"


def test_with_wake_ups_the_snapshots_of_one_vm_of_the_woken_subscription_are_polled_as_a_fallback_only(
    world: World,
) -> None:
    """The end of a snapshot's write (Succeeded) is an event of the deployment's subscription, which
    wakes a snapshot step of one machine (patchpilot/wakeups.py): there the next poll comes after
    WOKEN_POLLS, never past the command's deadline. A step of several machines is not woken (one
    machine's event is not the step's end) and a VM of another subscription is not heard: both are
    polled as without wake-ups. Arc servers make no snapshot and need no event."""
    from patchpilot.adapters.azure.fleet import WOKEN_POLLS
    from patchpilot.adapters.azure.fleet.snapshots import SNAPSHOT_POLL

    here = instance(world, world.azure.add_vm("web-1"))
    there = instance(world, world.azure.add_vm("web-2", sub=OTHER_SUB))
    arc = instance(world, world.azure.add_arc("onprem-1"))
    woken = world.fleet(woken_subscription=SUB.upper(), patch_without_rollback=True)

    polled = world.fleet().take_snapshots(snapshot_command([here]))
    heard = woken.take_snapshots(snapshot_command([here], n=2))
    several = woken.take_snapshots(snapshot_command([here, arc], n=3))
    elsewhere = woken.take_snapshots(snapshot_command([there], n=4))
    deadline = T0 + timedelta(minutes=5)
    capped = woken.take_snapshots(snapshot_command([here], n=5).model_copy(update={"deadline": deadline}))

    assert isinstance(polled, InProgress) and polled.retry_at == T0 + SNAPSHOT_POLL
    assert isinstance(heard, InProgress) and heard.retry_at == T0 + WOKEN_POLLS["snapshot"]
    assert isinstance(several, InProgress) and several.retry_at == T0 + SNAPSHOT_POLL
    assert isinstance(elsewhere, InProgress) and elsewhere.retry_at == T0 + SNAPSHOT_POLL
    assert isinstance(capped, InProgress) and capped.retry_at == deadline
    # Woken or not, the snapshots are the same ones, done once their writes end.
    world.clock.set(T0 + WOKEN_POLLS["snapshot"])
    done = woken.take_snapshots(snapshot_command([here, arc], n=3))
    assert isinstance(done, list) and all(o.ok for o in done)


def test_a_snapshot_awaiting_its_background_copy_keeps_the_short_poll_with_wake_ups(world: World) -> None:
    """A Premium SSD v2 or Ultra Disk snapshot is usable only once its background copy has ended
    (completionPercent 100), which no ARM operation, so no event, marks: a VM with such a disk is
    polled at SNAPSHOT_POLL from the start; so is any VM whose written snapshot is still copying."""
    from patchpilot.adapters.azure.fleet import WOKEN_POLLS
    from patchpilot.adapters.azure.fleet.snapshots import SNAPSHOT_POLL

    ultra = instance(world, world.azure.add_vm("db-1", sku="UltraSSD_LRS", data_disks=0))
    premium = instance(world, world.azure.add_vm("web-1", data_disks=0))
    fleet = world.fleet(woken_subscription=SUB)

    first = fleet.take_snapshots(snapshot_command([ultra]))
    assert isinstance(first, InProgress) and first.retry_at == T0 + SNAPSHOT_POLL
    assert isinstance(fleet.take_snapshots(snapshot_command([premium], n=2)), InProgress)
    (snapshot,) = [s for s in world.azure.find("Microsoft.Compute/snapshots") if s["tags"][TAG_INSTANCE] == premium.id]
    world.arm.get(snapshot["id"])["properties"].update(provisioningState="Succeeded", completionPercent=40.0)
    copying = fleet.take_snapshots(snapshot_command([premium], n=2))
    assert isinstance(copying, InProgress) and copying.retry_at == T0 + SNAPSHOT_POLL
    world.arm.get(snapshot["id"])["properties"].update(provisioningState="Creating", completionPercent=0.0)
    writing = fleet.take_snapshots(snapshot_command([premium], n=2))
    assert isinstance(writing, InProgress) and writing.retry_at == T0 + WOKEN_POLLS["snapshot"]


def test_installs_health_checks_and_host_hooks_keep_their_polls_with_wake_ups(world: World) -> None:
    """An install's end is read from Resource Graph, which may not show it yet when its event
    comes; a health check also waits for the agent and Application Health, which send none; a host
    hook's Run Command ends with an event, but only the hook of a single machine is woken by it: one
    of several machines keeps the 30-second poll its many machines need (docs/azure-deploy.md,
    "Wake-ups"). No WOKEN_POLLS for them."""
    from patchpilot.adapters.azure.fleet import WOKEN_POLLS
    from patchpilot.adapters.azure.fleet.health import HEALTH_POLL
    from patchpilot.adapters.azure.fleet.hooks import HOOK_POLL
    from patchpilot.adapters.azure.fleet.install import INSTALL_POLL

    vm, other = (instance(world, world.azure.add_vm(f"web-{n}", available=[OPENSSL])) for n in (1, 2))
    fleet = world.fleet(woken_subscription=SUB)

    installing = fleet.install_patches(install_command([InstallTarget(instance=vm)]))
    checking = fleet.check_health(health_command([vm], CHECKS))
    one = fleet.run_hook(hook_command([vm], DRAIN, n=2))
    several = fleet.run_hook(hook_command([vm, other], DRAIN, n=3))

    assert set(WOKEN_POLLS) == {"snapshot"}
    assert isinstance(installing, InProgress) and installing.retry_at == T0 + INSTALL_POLL
    assert isinstance(checking, InProgress) and checking.retry_at == T0 + HEALTH_POLL
    assert isinstance(one, InProgress) and one.retry_at == T0 + HOOK_POLL
    assert isinstance(several, InProgress) and several.retry_at == T0 + HOOK_POLL
    assert world.bodies("PUT", "/runcommands/patchpilot-before-install")[0]["properties"]["asyncExecution"] is False


def test_the_clouds_builder_passes_the_woken_subscription_to_the_fleet(world: World) -> None:
    assert azure_fleet(world.clients(), world.clock).woken_subscription is None
    assert azure_fleet(world.clients(), world.clock, woken_subscription=SUB).woken_subscription == SUB


# ---------------------------------------------------------------- throttling


def test_throttled_requests_are_retried_by_azure_core(world: World) -> None:
    vm = world.azure.add_vm("web-1", tags={"Environment": "production"})
    world.arm.throttle(r"/providers/Microsoft\.ResourceGraph/resources", times=2)
    world.arm.throttle(r".*/snapshots/.*", times=1, method="PUT")

    found = world.fleet().discover(parse_policy(POLICY))
    outcomes, _ = until_done(world, lambda: world.fleet().take_snapshots(snapshot_command([instance(world, vm)])))

    assert [i.id for i in found.instances] == [vm] and outcomes[0].ok
    graph = [c.status for c in world.arm.calls if "resourcegraph" in c.path]
    assert graph == [429, 429, 200, 200]  # the VMs' query retried, then the Uniform instances' query
    puts = [c.status for c in world.arm.calls if c.method == "PUT" and "/snapshots/" in c.path]
    assert puts == [429, 202, 202]


# ---------------------------------------------------------------- a whole run


RUN_POLICY = """
name: weu-monthly
rings:
  - {name: staging, select: {tags: {Environment: staging}}, soak: 1h}
  - {name: production, select: {tags: {Environment: production}}}
rollout: {mode: concurrent_zones, disruption_budget: "50%", canary: 1, max_failures: 1}
patches: {classifications: [Critical, Security]}
health:
  script: {linux: "curl -fsS http://localhost/health"}
  timeout: 10m
azure: {subscriptions: [00000000-0000-0000-0000-000000000001], locations: [westeurope]}
"""


class Notices:
    def __init__(self) -> None:
        self.sent: list[Notify] = []

    def notify(self, command: Notify) -> None:
        self.sent.append(command)


def test_a_whole_run_patches_azure_vms_in_waves_and_rolls_back_the_broken_one(world: World, tmp_path: Path) -> None:
    azure = world.azure
    staging = [
        azure.add_vm(
            f"stg-{n}", zone=str(n), tags={"Environment": "staging"}, available=[OPENSSL, KERNEL], install_minutes=15
        )
        for n in (1, 2)
    ]
    production = [
        azure.add_vm(
            f"prd-{n}",
            zone=str(n % 3 + 1),
            tags={"Environment": "production"},
            available=[OPENSSL, KERNEL],
            breaks_when_patched=n == 2,
            install_minutes=15,
        )
        for n in (1, 2, 3)
    ]
    policy = parse_policy(RUN_POLICY)
    fleet = world.fleet()
    found = fleet.discover(policy)

    def released() -> None:  # while staging soaks: production must not get it
        for vm in production:
            azure.state(vm).available.append(CURL)

    run = _drive(world, fleet, policy, found.instances, tmp_path, after_start=released)
    states = {world.arm.get(r.id)["name"]: r.state for r in run.records()}
    assert run.status == "succeeded", run.reason
    assert states == {
        "stg-1": "patched",
        "stg-2": "patched",
        "prd-1": "patched",
        "prd-2": "rolled_back",
        "prd-3": "patched",
    }
    assert not azure.broken(production[1]) and azure.state(production[1]).power == "running"
    for vm in [*staging, production[0], production[2]]:
        assert azure.content_of(vm).installed == (OPENSSL.patch_id, KERNEL.patch_id)
    assert all(CURL in azure.state(vm).available for vm in production)
    assert len(world.bodies("POST", "/installpatches")) == 5


def _drive(
    world: World,
    fleet: AzureFleet,
    policy: Policy,
    instances: list[Instance],
    tmp_path: Path,
    after_start: Callable[[], None] = lambda: None,
) -> Run:
    """A run of `instances` through the one imperative shell on SQLite, every delivery handled at its
    due time; `after_start` runs 30 minutes in. The run as it ended, with no dead letter."""
    db = tmp_path / "state.db"
    queue = SqliteQueue(db, world.clock)
    service = Service(store=SqliteRunStore(db), queue=queue, fleet=fleet, notifier=Notices(), clock=world.clock)
    service.start("azure-run", policy, instances)
    world.clock.advance(timedelta(minutes=30))
    after_start()
    for _ in range(500):  # bounded: a run that never ends fails the test
        deliveries = queue.receive(10)
        if not deliveries:
            due = queue.next_due()
            if due is None:
                break
            world.clock.set(max(due, world.clock.now()))
            continue
        for delivery in deliveries:
            service.handle(delivery)
    assert queue.dead_letters() == []
    return service.store.load("azure-run")


# ---------------------------------------------------------------- stopped machines


def test_discovery_plans_a_deallocated_vm_with_its_power_when_the_policy_starts_them(world: World) -> None:
    off = world.azure.add_vm("prd-off", tags={"Environment": "production"}, power="deallocated")
    starting = parse_policy(POLICY + "stopped_machines: start\n")
    found = world.fleet().discover(starting)
    assert [(i.id, i.power) for i in found.instances] == [(off, "deallocated")] and found.unreachable == []
    skipping = world.fleet().discover(parse_policy(POLICY))
    assert [r for _, r in skipping.unreachable] == ["VM deallocated"]  # as before


@pytest.mark.parametrize("found_as", ["deallocated", "stopped"])
def test_a_vm_found_stopped_is_started_then_returned_to_that_state_once(world: World, found_as: str) -> None:
    vm = world.azure.add_vm("prd-off", tags={"Environment": "production"}, power=found_as)
    target = instance(world, vm, power=found_as)
    fleet = world.fleet()
    start = StartMachines(id="r:w1:start", run_id="r", wave=1, targets=[target])
    assert isinstance(fleet.start_machines(start), InProgress)
    assert isinstance(fleet.start_machines(start), InProgress)  # a redelivery starts nothing again
    assert world.count("POST", "/start") == 1
    world.clock.advance(timedelta(minutes=10))
    [started] = fleet.start_machines(start)  # type: ignore[misc]
    assert (started.ok, started.detail) == (True, "VM running")
    back = ReturnMachines(id="r:w1:return", run_id="r", wave=1, targets=[target])
    assert isinstance(fleet.return_machines(back), InProgress)
    world.clock.advance(timedelta(minutes=10))
    [returned] = fleet.return_machines(back)  # type: ignore[misc]
    assert (returned.ok, returned.detail) == (True, f"VM {found_as}")
    verb = "/deallocate" if found_as == "deallocated" else "/powerOff"
    assert world.count("POST", verb) == 1
    sweep = ReturnMachines(id="r:return-at-end", run_id="r", targets=[target], at_run_end=True)
    [swept] = fleet.return_machines(sweep)  # type: ignore[misc]
    assert swept.ok and world.count("POST", verb) == 1  # already so: untouched


def test_the_fleet_role_reads_the_extensions_the_health_check_asks_resource_graph_for() -> None:
    """Resource Graph leaves out the rows the identity may not read, without an error: without this
    read every VM would look as if it had no Application Health extension (docs/security.md)."""
    from azure_rbac import fleet_role_actions

    from patchpilot.adapters.azure.access import app_health_query

    query = app_health_query([f"/subscriptions/{SUB}/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm"])
    assert "microsoft.compute/virtualmachines/extensions" in query.lower()
    assert "microsoft.compute/virtualmachines/extensions/read" in fleet_role_actions()
