"""Discovery of the policy's VMs and Arc servers (one paged Resource Graph query; an instance
view only for a VM whose row shows no power state, or a running VM in an availability set whose
update domain is not known; with `rollout.pool_budget`, one more query for their NICs' backend
pools) and the probe of their agents, the one read of a VM agent per wave. A VM's Flexible scale
set comes with its row. Uniform scale set instances (type
microsoft.compute/virtualmachinescalesets/virtualmachines, in the `computeresources` table) come
from one more paged query, so that the plan lists them as excluded: PatchPilot never patches them
in place (`scale_set_mode: uniform`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from patchpilot.batching import unique
from patchpilot.engine.messages import (
    Outcome,
    ProbeAgents,
)
from patchpilot.inventory import Instance
from patchpilot.policy.model import Policy, Selector
from patchpilot.ports import DiscoveryResult, PoolsUnreadableError, Progress

from ..access import (
    ARC_TYPE,
    ROW_COLUMNS,
    VM_TYPE,
    AzureAccess,
    Machine,
    agent_problem,
    arc_problem,
    at,
    backend_pools,
    describe_error,
    items,
    parse_machine,
    power_state,
    tags_of,
    text,
)
from ..graph import kql_list, kql_string, query

if TYPE_CHECKING:
    pass

NIC_READ = "Microsoft.Network/networkInterfaces/read"  # the fleet role has it (infra/azure/modules/fleet-access.bicep)
UNIFORM_TYPE = "microsoft.compute/virtualmachinescalesets/virtualmachines"  # in the computeresources table
_OS_TYPE = "tolower(coalesce(tostring(properties.storageProfile.osDisk.osType), tostring(properties.osType)))"
_UNIFORM_OS_TYPE = "tolower(tostring(properties.storageProfile.osDisk.osType))"
_UNIFORM_COLUMNS = f"id, name, location, subscriptionId, tags, zones, osType = {_UNIFORM_OS_TYPE}"


def discovery_query(policy: Policy) -> str | None:
    """Every VM (and Arc server, with azure.arc) in the policy's resource groups and locations that
    some ring may select, by the rings' tags, ids, regions and OS; None when no ring selects Azure."""
    settings = policy.azure
    types = [VM_TYPE, ARC_TYPE] if settings and settings.arc else [VM_TYPE]
    return _query(policy, "resources", types, _OS_TYPE, ROW_COLUMNS)


def uniform_query(policy: Policy) -> str | None:
    """Every Uniform scale set instance that the discovery query's scope and the rings' selectors
    may select (`computeresources`, where Resource Graph keeps them), projected to the columns an
    excluded `Instance` needs; None when no ring selects Azure."""
    return _query(policy, "computeresources", [UNIFORM_TYPE], _UNIFORM_OS_TYPE, _UNIFORM_COLUMNS)


def _query(policy: Policy, table: str, types: list[str], os_type: str, columns: str) -> str | None:
    settings = policy.azure
    lines = [table, f"| where type in~ {kql_list(types)}"]
    if settings and settings.resource_groups:
        lines.append(f"| where resourceGroup in~ {kql_list(settings.resource_groups)}")
    if settings and settings.locations:
        lines.append(f"| where location in~ {kql_list(settings.locations)}")
    rings = [ring.select for ring in policy.rings if not ring.select.clouds or "azure" in ring.select.clouds]
    if not rings:
        return None
    conditions = [_selector_condition(select, os_type) for select in rings]
    if all(conditions):
        lines.append("| where " + " or ".join(f"({c})" for c in dict.fromkeys(conditions)))
    lines += [f"| project {columns}", "| order by id asc"]
    return "\n".join(lines)


def _selector_condition(select: Selector, os_type: str = _OS_TYPE) -> str:
    """A ring selector as KQL ('' when it selects every machine)."""
    parts = []
    for key, values in sorted(select.tags.items()):
        tag = f"tostring(tags[{kql_string(key)}])"
        parts.append(f"isnotempty({tag})" if "*" in values else f"{tag} in {kql_list(values)}")
    if select.ids:
        parts.append(f"id in~ {kql_list(select.ids)}")
    if select.regions:
        parts.append(f"location in~ {kql_list(select.regions)}")
    if select.os:
        parts.append(f"{os_type} in {kql_list(select.os)}")
    return " and ".join(parts)


def to_instance(row: Any) -> Instance:
    """An `Instance` from a Resource Graph row of a VM or an Arc server. A zonal VM's zone is
    "<location>-<zone>" (e.g. "westeurope-2"): Azure's zone numbers only mean something within a
    location (and within a subscription), so the location is part of the name; the planner only
    compares zones within a region. A VM in a Flexible scale set (`properties.virtualMachineScaleSet.id`)
    has the lower-cased scale set id as its `scaling_group`; outside a zone, the set stands as its
    availability set and its fault domain (`properties.platformFaultDomain`) as its update domain,
    so that a wave takes one fault domain of the set at a time (`scaling_groups: standby`). A
    Windows VM with `patchSettings.enableHotpatching` is `hotpatch`."""
    location = text(row, "location").lower()
    zones = [str(z) for z in items(row, "zones")]
    aset = text(row, "properties", "availabilitySet", "id").lower() or None
    scale_set = text(row, "properties", "virtualMachineScaleSet", "id").lower() or None
    fault_domain = at(row, "properties", "platformFaultDomain")
    spread = scale_set is not None and not zones and aset is None and isinstance(fault_domain, int)
    os_type = (
        text(row, "properties", "storageProfile", "osDisk", "osType") or text(row, "properties", "osType")
    ).lower()
    return Instance(
        id=text(row, "id"),
        cloud="azure",
        region=location,
        os="windows" if os_type == "windows" else "linux",
        name=text(row, "name"),
        zone=f"{location}-{zones[0]}" if zones and not aset else None,
        availability_set=scale_set if spread else aset,
        update_domain=fault_domain if spread else None,
        tags=tags_of(row),
        account=text(row, "subscriptionId") or None,
        scaling_group=scale_set,
        hotpatch=at(row, "properties", "osProfile", "windowsConfiguration", "patchSettings", "enableHotpatching")
        is True,
    )


def uniform_instance(row: Any) -> Instance:
    """An `Instance` from a `computeresources` row of a Uniform scale set instance (`uniform_query`):
    its `scaling_group` is the lower-cased scale set id (the instance id up to `/virtualMachines/`),
    its `scale_set_mode` "uniform", its zone named as a VM's is."""
    instance_id = text(row, "id")
    location = text(row, "location").lower()
    zones = [str(z) for z in items(row, "zones")]
    return Instance(
        id=instance_id,
        cloud="azure",
        region=location,
        os="windows" if text(row, "osType").lower() == "windows" else "linux",
        name=text(row, "name"),
        zone=f"{location}-{zones[0]}" if zones else None,
        tags=tags_of(row),
        account=text(row, "subscriptionId") or None,
        scaling_group=instance_id.lower().rsplit("/virtualmachines/", 1)[0],
        scale_set_mode="uniform",
    )


def os_known(row: Any) -> bool:
    os_type = (
        text(row, "properties", "storageProfile", "osDisk", "osType") or text(row, "properties", "osType")
    ).lower()
    return os_type in ("windows", "linux")


def agent_version(view: Any) -> str:
    return text(view, "vmAgent", "vmAgentVersion")


def discover(access: AzureAccess, policy: Policy) -> DiscoveryResult:
    """The policy's VMs (and Arc servers with azure.arc) in its subscriptions (or every
    subscription under its `azure.management_groups`), resource groups and locations that its
    rings may select: one paged Resource Graph query. Stopped VMs and disconnected Arc servers
    are unreachable, by their rows. The VM agent is not read here: a VM Resource Graph shows
    running is planned, and its wave's agent probe (`probe_agents`) skips it, with the agent's
    state, if the agent is not Ready then. An instance view is read only where the row cannot
    tell: a VM with no power state in its row, or a running VM in an availability set whose
    update domain (only in the instance view) the planner needs; that read's agent state is
    reported too (`_discovered_vm`).
    Uniform scale set instances come from one more paged query (`uniform_query`), with no read of
    their own: the planner excludes them whatever the policy says.
    With `rollout.pool_budget` or `traffic.drain` (`Policy.reads_pools`) a VM's `traffic_pools`
    are the backend pools its NICs' IP configurations are in (`with_pools`); Arc servers have none."""
    kql = discovery_query(policy)
    if kql is None:
        return DiscoveryResult([])
    subscriptions = list(policy.azure.subscriptions) if policy.azure else []
    groups = list(policy.azure.management_groups) if policy.azure else []
    found: list[Instance] = []
    unreachable: list[tuple[Instance, str]] = []
    scopes = subscriptions  # both queries' scope (the NICs' may narrow `subscriptions` below)
    rows = query(access.graph(), kql, scopes, management_groups=groups)
    if groups:  # the NICs are read in the subscriptions the machines were found in
        subscriptions = sorted({m.subscription for m in map(parse_machine, (text(r, "id") for r in rows)) if m})
    pools = with_pools(access, rows, subscriptions) if policy.reads_pools else {}
    for row in rows:
        instance = to_instance(row)
        if pools.get(instance.id.lower()):
            instance = dataclasses.replace(instance, traffic_pools=tuple(pools[instance.id.lower()]))
        machine = parse_machine(instance.id)
        if machine is None:
            continue
        problem: str | None
        if machine.arc:
            problem = arc_problem(row)
        else:
            instance, problem = _discovered_vm(access, machine, instance, row)
            found_as = FOUND_POWER.get(problem or "")
            if found_as is not None and policy.stopped_machines == "start":  # started for its wave
                instance, problem = dataclasses.replace(instance, power=found_as), None
        if problem is None and not os_known(row):
            problem = "OS type not reported; assumed linux"
        found.append(instance)
        if problem is not None:
            unreachable.append((instance, problem))
    uniform = uniform_query(policy)
    if uniform is not None:
        found += [uniform_instance(row) for row in query(access.graph(), uniform, scopes, management_groups=groups)]
    return DiscoveryResult(found, unreachable)


def with_pools(access: AzureAccess, rows: list[Any], subscriptions: list[str]) -> dict[str, list[str]]:
    """Each VM's traffic pools by lower-case id: the Load Balancer and Application Gateway backend
    pools its NICs' IP configurations reference (lower-cased, sorted), all NICs read in one Resource
    Graph query. A NIC the VM names that the query does not return (the identity may not read it:
    Resource Graph leaves it out, it never refuses) raises `PoolsUnreadableError`."""
    nic_ids: dict[str, list[str]] = {}
    for row in rows:
        machine = parse_machine(text(row, "id"))
        if machine is None or machine.arc:
            continue
        refs = [text(nic, "id").lower() for nic in items(row, "properties", "networkProfile", "networkInterfaces")]
        nic_ids[machine.key] = [ref for ref in refs if ref]
    wanted = {nic for nics in nic_ids.values() for nic in nics}
    if not wanted:
        return {}
    try:
        nics = access.nics(wanted, subscriptions)
    except HttpResponseError as exc:
        raise PoolsUnreadableError(
            "Resource Graph", NIC_READ, f"the network interfaces' query failed ({describe_error(exc)})"
        ) from exc
    missing = sorted(wanted - set(nics))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise PoolsUnreadableError(
            "Resource Graph", NIC_READ, f"network interfaces not returned (not readable, or deleted): {shown}"
        )
    return {key: sorted({pool for nic in refs for pool in backend_pools(nics[nic])}) for key, refs in nic_ids.items()}


# A VM found so, with `stopped_machines: start`, is planned with its `power` instead of unreachable.
FOUND_POWER: dict[str, Literal["stopped", "deallocated"]] = {"VM stopped": "stopped", "VM deallocated": "deallocated"}


def _discovered_vm(access: AzureAccess, machine: Machine, instance: Instance, row: Any) -> tuple[Instance, str | None]:
    """The VM (with its update domain) and why it cannot be reached, if discovery can tell: from its
    Resource Graph row, or, where the row cannot tell (no power state) or the planner needs the
    update domain of a VM in an availability set, from its instance view."""
    power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
    if power and power.lower() != "running":
        return instance, f"VM {power.lower()}"
    if power and not (instance.availability_set and instance.update_domain is None):
        return instance, None  # running: the agent is the wave's probe's to read
    try:
        view = access.instance_view(machine)
    except HttpResponseError as exc:
        return instance, f"instance view not readable: {describe_error(exc)}"
    domain = at(view, "platformUpdateDomain")
    if instance.availability_set and instance.update_domain is None and isinstance(domain, int):
        instance = dataclasses.replace(instance, update_domain=domain)
    state = power_state(view)
    if state != "running":
        return instance, f"VM {state}"
    return instance, agent_problem(view)


def probe_agents(access: AzureAccess, command: ProbeAgents) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    outcomes: dict[str, Outcome] = {}
    machines = access.parse(targets, outcomes, now)
    rows = access.rows(list(machines.values()))
    for instance in targets:
        machine = machines.get(instance.id)
        if machine is None:
            continue
        row = rows.get(machine.key)
        problem, detail = _agent(access, machine, row)
        outcomes[instance.id] = Outcome(id=instance.id, ok=problem is None, detail=problem or detail, at=now)
    return [outcomes[i.id] for i in targets]


def _agent(access: AzureAccess, machine: Machine, row: Any) -> tuple[str | None, str]:
    """(problem, what is fine) of a machine's agent."""
    if machine.arc:
        if row is None:
            return "Arc server not found", ""
        version = text(row, "properties", "agentVersion")
        return arc_problem(row), "Arc agent Connected" + (f" (agent {version})" if version else "")
    power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
    if power and power.lower() not in ("running", "starting"):
        return f"VM {power.lower()}", ""
    try:
        view = access.instance_view(machine)
    except ResourceNotFoundError:
        return "VM not found", ""
    except HttpResponseError as exc:
        return f"instance view not readable: {describe_error(exc)}", ""
    state = power_state(view)
    if state != "running":
        return f"VM {state}", ""
    version = agent_version(view)
    return agent_problem(view), "VM agent Ready" + (f" (agent {version})" if version else "")
