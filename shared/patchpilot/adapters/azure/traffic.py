"""Traffic pools on Azure: a VM leaves and rejoins the Load Balancer and Application Gateway backend
pools its NICs' IP configurations reference (`AzureBackendPools`, the `TrafficPools` port;
docs/traffic.md).

Pool ids are the backend pools' ARM ids, as discovery puts them in `Instance.traffic_pools`
(lower-cased: ARM ids compare without case). Only references to the target's own pools are
touched; a NIC's other settings are written back as read.

Leave (LeavePools): the VMs' NICs are found in one Resource Graph query (their rows), then each
NIC is read from ARM (never from Resource Graph, which lags) and updated ONCE (one
`networkInterfaces` PUT per NIC) without the references to the target's pools. The same PUT tags
the NIC `PatchPilotPools=<command id>|<UTC removal>|<drain s>|<ip configuration name>:<pool
digest>...` (the pool digest: 8 hex of SHA-256 of the lower-cased pool id), so a redelivered
command, or one whose worker died between the update and the wait, finds what it removed and when
without updating the NIC again. A NIC already out of the pools is not updated; references an
earlier command removed that are still out are carried into this command's items, so they are put
back too. Drained = removed and, since the removal, the longest wait of the pools removed from:
- Load Balancer: the probe of each load-balancing rule that uses the pool, `intervalInSeconds` ×
  `probeThreshold` (else `numberOfProbes`); 2 × 5 s when no rule or probe names one;
- Application Gateway: the backend settings of each routing rule that uses the pool: their
  connection draining timeout when enabled, else their probe's `interval` × `unhealthyThreshold`
  (the default probe's 30 s × 3 without one).
Before that the answer is InProgress(retry_at = the moment it will be drained).

An outcome's `items` (LeavePools): `"<ip configuration id>|<backend pool id>"`, one per reference
removed (or still out), which is exactly what RejoinPools puts back.

Rejoin (RejoinPools): the references in `command.registrations` (for a target without any, the
ones its NICs' PatchPilotPools tag records) are added back to their IP configurations, one PUT per
NIC and none for a NIC that already has them all; the tag is removed in the same PUT. An
outcome's `items` name the pools the target was actually re-added to (backend pool ids; empty
when it was already in). With `pool_health`, the pools must report the IP configuration healthy:
- Load Balancer (Standard): the health of each load-balancing rule using the pool (POST
  `loadBalancers/{lb}/loadBalancingRules/{rule}/health`, LoadBalancerLoadBalancingRules_Health, a
  long-running operation): the IP configuration's `state` must be `Up`. Where that is not readable
  (a Basic load balancer, an older API), the probe's interval × threshold is waited from
  `issued_at` instead and the outcome says "probe status not readable: waited N s";
- Application Gateway: backend health (POST `applicationGateways/{name}/backendhealth`, a
  long-running operation, one per gateway per execution) must report the IP configuration's
  server `Up` (the specification's ApplicationGatewayBackendHealthServerHealth; "Healthy" in the
  portal's words) in every backend setting of the pool.
Otherwise InProgress with the reason in the note; the service fails it at issued_at + timeout.

A read or write the cloud refuses (403) is a failed outcome naming the permission, never taken for
"drained" or "healthy". A conflict or a server error (409, 412, 5xx) is tried again shortly.

Scaling groups: a Flexible scale set member has no Standby on Azure (the set does not replace a
member that reboots, and scaling in is the operator's), so `standby` does nothing here: such a
member with no pools is ok with no items. Arc-enabled servers have no backend pools.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.network import models as nm

from patchpilot.batching import unique
from patchpilot.engine.messages import LeavePools, Outcome, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.ports import Clock, InProgress, Progress

from .access import (
    AzureAccess,
    Machine,
    at,
    describe_error,
    digest,
    iso,
    items,
    mark,
    parse_time,
    resource_group_of,
    tags_of,
    text,
    transient,
)
from .clients import AzureClients

if TYPE_CHECKING:
    from azure.mgmt.network import NetworkManagementClient

TAG_POOLS = "PatchPilotPools"
POOL_KEYS = ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools")
LB_DEFAULT_WAIT = 2 * 5  # seconds: Azure's default probe, 5 s interval, 2 probes
AGW_DEFAULT_WAIT = 30 * 3  # seconds: the default probe of an Application Gateway, 30 s interval, threshold 3
RETRY = timedelta(seconds=30)  # a conflict, a server error, a pool not healthy yet
VM_READ = "Microsoft.Compute/virtualMachines/read"
NIC_READ = "Microsoft.Network/networkInterfaces/read"
NIC_WRITE = "Microsoft.Network/networkInterfaces/write"
LB_READ = "Microsoft.Network/loadBalancers/read"
AGW_READ = "Microsoft.Network/applicationGateways/read"
LB_JOIN = "Microsoft.Network/loadBalancers/backendAddressPools/join/action"
AGW_JOIN = "Microsoft.Network/applicationGateways/backendAddressPools/join/action"
LB_HEALTH = "Microsoft.Network/loadBalancers/loadBalancingRules/health/action"
AGW_HEALTH = "Microsoft.Network/applicationGateways/backendhealth/action"
_HEALTHY = ("up", "healthy")


class _RefusedError(Exception):
    """A read or write Azure refused: the target fails with this text, which names the permission."""


class _LaterError(Exception):
    """Not now (a conflict, a server error): the command is polled again."""


@dataclasses.dataclass(frozen=True)
class _Ref:
    """One IP configuration's reference to one backend pool (ids compare without case)."""

    config_id: str
    pool: str

    @property
    def key(self) -> tuple[str, str]:
        return self.config_id.lower(), self.pool.lower()

    @property
    def item(self) -> str:
        return f"{self.config_id}|{self.pool}"

    @property
    def nic(self) -> str:
        return nic_of_config(self.config_id)


def nic_of_config(config_id: str) -> str:
    """`.../networkInterfaces/{nic}/ipConfigurations/{name}` -> the NIC's id."""
    lower = config_id.lower()
    cut = lower.rfind("/ipconfigurations/")
    return config_id[:cut] if cut >= 0 else config_id


def parse_item(item: str) -> _Ref | None:
    """A LeavePools item (`<ip configuration id>|<backend pool id>`); None when it is not one."""
    config_id, sep, pool = item.partition("|")
    if not sep or "/ipconfigurations/" not in config_id.lower() or "/backendaddresspools/" not in pool.lower():
        return None
    return _Ref(config_id, pool.lower())


def pool_digest(pool: str) -> str:
    return digest(pool.lower())[:8]


def _refused(exc: HttpResponseError, what: str, permission: str) -> Exception:
    if exc.status_code in (401, 403):
        return _RefusedError(f"{what} refused (needs {permission}): {describe_error(exc)}")
    if isinstance(exc, ResourceNotFoundError):
        return _RefusedError(f"{what}: not found ({describe_error(exc)})")
    if transient(exc) or exc.status_code == 412:
        return _LaterError(f"{what}: {describe_error(exc)}")
    return _RefusedError(f"{what} failed: {describe_error(exc)}")


class AzureBackendPools:
    """The `TrafficPools` port over Azure NICs, Load Balancers and Application Gateways (module
    docstring). `health_wait`: how long one execution waits for a health operation (a
    long-running POST that Azure answers in seconds) before answering InProgress."""

    def __init__(self, clients: AzureClients, clock: Clock, *, health_wait: float = 60.0) -> None:
        self.access = AzureAccess(clients, clock)
        self.health_wait = health_wait

    @property
    def clock(self) -> Clock:
        return self.access.clock

    def network(self, resource_id: str) -> NetworkManagementClient:
        found = resource_group_of(resource_id)
        assert found is not None, resource_id
        return self.access.clients.network(found[0])

    # ------------------------------------------------------------ leave

    def leave_pools(self, command: LeavePools) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        outcomes: dict[str, Outcome] = {}
        vms, nics = self._nics_of(targets, outcomes, now)
        waits = _Waits(self)
        drained_at: dict[str, datetime] = {}
        notes: list[str] = []
        for instance in targets:
            if instance.id in outcomes:
                continue
            if instance.id not in vms:
                outcomes[instance.id] = Outcome(
                    id=instance.id, ok=True, detail=_no_pools(instance, command.standby), at=now
                )
                continue
            try:
                removed, moment = self._leave(instance, command, nics[instance.id], waits, now)
            except _RefusedError as exc:
                outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=str(exc)[:500], at=now)
                continue
            except _LaterError as exc:
                notes.append(str(exc))
                drained_at[instance.id] = now + RETRY
                continue
            if moment > now:
                drained_at[instance.id] = moment
                continue
            detail = f"out of {_count(removed)}" if removed else "already out of its pools"
            outcomes[instance.id] = Outcome(
                id=instance.id, ok=True, detail=detail, items=[r.item for r in removed], at=now
            )
        if drained_at:
            due = min(drained_at.values())
            note = f"draining: {len(targets) - len(drained_at)}/{len(targets)} done, next at {iso(due)}"
            return InProgress(due, "; ".join([note, *sorted(set(notes))])[:300])
        return [outcomes[i.id] for i in targets]

    def _leave(
        self, instance: Instance, command: LeavePools, nic_ids: Sequence[str], waits: _Waits, now: datetime
    ) -> tuple[list[_Ref], datetime]:
        """The references this command took out of the target's pools, and when they are drained."""
        pools = {p.lower() for p in instance.traffic_pools}
        removed: list[_Ref] = []
        drained = now
        for nic_id in nic_ids:
            nic = self._get_nic(nic_id)
            record = _Record.read(nic, pools)
            current = _refs(nic, pools)
            present = {r.key for r in current}
            out = [r for r in record.refs if r.key not in present] if record is not None and not record.back else []
            if current:
                wait = max(waits.drain_seconds(r.pool) for r in current)
                body = _without(nic, current)
                value = _Record(command.id, now, wait, [*current, *out]).value(nic)
                if len(value) > 256:
                    raise _RefusedError(
                        f"NIC {nic_id} is in too many backend pools to record (tag {TAG_POOLS} holds 256 characters)"
                    )
                body["tags"] = {**tags_of(nic), TAG_POOLS: value}
                self._put_nic(nic_id, nic, body, f"NIC {nic_id} update", f"{NIC_WRITE}")
                removed += [*current, *out]
                drained = max(drained, now + timedelta(seconds=wait))
            elif record is not None and record.wait is not None and out:
                removed += out
                drained = max(drained, record.at + timedelta(seconds=record.wait))
        return removed, drained

    # ------------------------------------------------------------ rejoin

    def rejoin_pools(self, command: RejoinPools) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        outcomes: dict[str, Outcome] = {}
        wanted: dict[str, list[_Ref]] = {}
        unrecorded = []
        for instance in targets:
            refs = [r for r in map(parse_item, command.registrations.get(instance.id, [])) if r is not None]
            if refs:
                wanted[instance.id] = refs
            elif instance.traffic_pools:
                unrecorded.append(instance)
            else:
                outcomes[instance.id] = Outcome(
                    id=instance.id, ok=True, detail=_no_pools(instance, command.standby), at=now
                )
        if unrecorded:  # no registrations (a crash before the result was kept): what the NICs' tags say
            vms, nics = self._nics_of(unrecorded, outcomes, now)
            for instance in unrecorded:
                if instance.id in outcomes:
                    continue
                if instance.id not in vms:
                    detail = _no_pools(instance, command.standby)
                    outcomes[instance.id] = Outcome(id=instance.id, ok=True, detail=detail, at=now)
                    continue
                try:
                    wanted[instance.id] = self._recorded(instance, nics[instance.id])
                except _RefusedError as exc:
                    outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=str(exc)[:500], at=now)
                except _LaterError as exc:
                    return InProgress(now + RETRY, str(exc)[:300])
        readded: dict[str, list[str]] = {}
        later: list[str] = []
        for instance in targets:
            if instance.id not in wanted or instance.id in outcomes:
                continue
            try:
                readded[instance.id] = self._rejoin(command, wanted[instance.id], now)
            except _RefusedError as exc:
                outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=str(exc)[:500], at=now)
            except _LaterError as exc:
                later.append(str(exc))
        if later:
            return InProgress(now + RETRY, "; ".join(sorted(set(later)))[:300])
        waiting: list[tuple[datetime, str]] = []
        health = _Health(self, command.issued_at, now)
        for instance in targets:
            if instance.id in outcomes or instance.id not in wanted:
                continue
            pools = readded[instance.id]
            detail = f"back in {_count(pools)}" if pools else "already in its pools"
            if command.pool_health:
                try:
                    verdict = health.of(wanted[instance.id])
                except _RefusedError as exc:
                    outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=f"{detail}; {exc}"[:500], at=now)
                    continue
                if isinstance(verdict, tuple):
                    waiting.append(verdict)
                    continue
                detail += f"; {verdict}"
            outcomes[instance.id] = Outcome(id=instance.id, ok=True, detail=detail[:500], items=pools, at=now)
        if waiting:
            due = min(moment for moment, _ in waiting)
            reasons = "; ".join(sorted({reason for _, reason in waiting}))
            return InProgress(due, f"pool health: {len(targets) - len(waiting)}/{len(targets)} done; {reasons}"[:300])
        return [outcomes[i.id] for i in targets]

    def _recorded(self, instance: Instance, nic_ids: Sequence[str]) -> list[_Ref]:
        """The references the NICs' PatchPilotPools tags record as taken out."""
        pools = {p.lower() for p in instance.traffic_pools}
        found: list[_Ref] = []
        for nic_id in nic_ids:
            record = _Record.read(self._get_nic(nic_id), pools)
            found += record.refs if record is not None and not record.back else []
        return found

    def _rejoin(self, command: RejoinPools, refs: Sequence[_Ref], now: datetime) -> list[str]:
        """Put the references back, one PUT per NIC that lacks one, which records on the NIC what
        this command re-added (so that its later executions still name them); the pools re-added."""
        readded: list[str] = []
        by_nic: dict[str, list[_Ref]] = {}
        for ref in refs:
            by_nic.setdefault(ref.nic.lower(), []).append(ref)
        for group in by_nic.values():
            nic_id = group[0].nic
            nic = self._get_nic(nic_id)
            record = _Record.read(nic, {r.pool for r in group})
            earlier = record.refs if record is not None and record.back and record.command_id == command.id else []
            body: dict[str, Any] = nic.as_dict(exclude_readonly=True)
            configs = {text(c, "id").lower(): c for c in items(body, "properties", "ipConfigurations")}
            added: list[_Ref] = []
            for ref in group:
                config = configs.get(ref.config_id.lower())
                if config is None:
                    raise _RefusedError(f"IP configuration {ref.config_id} is no longer on NIC {nic_id}: not put back")
                key = POOL_KEYS[1] if "/applicationgateways/" in ref.pool.lower() else POOL_KEYS[0]
                present = config.setdefault("properties", {}).get(key) or []
                if any(text(p, "id").lower() == ref.pool.lower() for p in present):
                    continue
                config["properties"][key] = [*present, {"id": ref.pool}]
                added.append(ref)
            if added:
                value = _Record(command.id, now, None, [*earlier, *added]).value(nic)
                body["tags"] = {**tags_of(nic), TAG_POOLS: value[:256]}
                self._put_nic(nic_id, nic, body, f"NIC {nic_id} update", f"{NIC_WRITE}, {LB_JOIN} and {AGW_JOIN}")
            readded += [r.pool for r in [*earlier, *added]]
        return sorted(set(readded))

    # ------------------------------------------------------------ reads and writes

    def _nics_of(
        self, targets: Sequence[Instance], outcomes: dict[str, Outcome], now: datetime
    ) -> tuple[dict[str, Machine], dict[str, list[str]]]:
        """The VMs among the targets that have pools, and their NIC ids (one Resource Graph query per
        400 VMs); a VM Resource Graph does not return fails naming the permission."""
        pooled = [i for i in targets if i.traffic_pools]
        machines = self.access.parse(pooled, outcomes, now)
        vms = {i: m for i, m in machines.items() if not m.arc}
        rows = self.access.rows(list(vms.values())) if vms else {}
        nics: dict[str, list[str]] = {}
        for instance_id, machine in vms.items():
            row = rows.get(machine.key)
            if row is None:
                detail = f"VM not returned by Resource Graph (not readable, or deleted; needs {VM_READ})"
                outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
                continue
            nics[instance_id] = [
                text(n, "id") for n in items(row, "properties", "networkProfile", "networkInterfaces") if text(n, "id")
            ]
        return {i: m for i, m in vms.items() if i in nics}, nics

    def _get_nic(self, nic_id: str) -> Any:
        sub_rg_name = resource_group_of(nic_id)
        if sub_rg_name is None:
            raise _RefusedError(f"not a NIC id: {nic_id}")
        try:
            return self.network(nic_id).network_interfaces.get(sub_rg_name[1], sub_rg_name[2])
        except HttpResponseError as exc:
            raise _refused(exc, f"NIC {nic_id} read", NIC_READ) from exc

    def _put_nic(self, nic_id: str, nic: Any, body: dict[str, Any], what: str, permission: str) -> None:
        """One NIC update, started and not polled; If-Match its ETag, so a NIC changed since it was
        read is read again on the next execution (412)."""
        found = resource_group_of(nic_id)
        assert found is not None
        headers = {"If-Match": text(nic, "etag")} if text(nic, "etag") else {}
        try:
            self.network(nic_id).network_interfaces.begin_create_or_update(
                found[1], found[2], nm.NetworkInterface(body), polling=False, headers=headers
            )
        except HttpResponseError as exc:
            raise _refused(exc, what, permission) from exc


# ---------------------------------------------------------------- the NIC's record


@dataclasses.dataclass(frozen=True)
class _Record:
    """What a NIC's PatchPilotPools tag says: which command took which references out, when, and
    how long they take to drain (`wait`, seconds); or (`wait` None, written "back") which command
    put them back in, and when."""

    command_id: str
    at: datetime
    wait: int | None
    refs: list[_Ref]

    @property
    def back(self) -> bool:
        return self.wait is None

    def value(self, nic: Any) -> str:
        names = {text(c, "id").lower(): text(c, "name") for c in items(nic, "properties", "ipConfigurations")}
        entries = [
            f"{names.get(r.config_id.lower()) or r.config_id.rsplit('/', 1)[-1]}:{pool_digest(r.pool)}"
            for r in self.refs
        ]
        return mark(self.command_id, self.at, "back" if self.wait is None else str(self.wait), *entries)

    @classmethod
    def read(cls, nic: Any, pools: Iterable[str]) -> _Record | None:
        """The NIC's record, its entries resolved against `pools` (the target's, lower-cased: an
        entry whose pool is not one of them is left out); None without a readable one."""
        value = tags_of(nic).get(TAG_POOLS, "")
        parts = value.split("|")
        moment = parse_time(parts[1]) if len(parts) >= 3 else None
        if moment is None or not (parts[2].isdigit() or parts[2] == "back"):
            return None
        by_digest = {pool_digest(p): p.lower() for p in pools}
        configs = {text(c, "name"): text(c, "id") for c in items(nic, "properties", "ipConfigurations")}
        refs = []
        for entry in parts[3:]:
            name, _, short = entry.rpartition(":")
            if short in by_digest and configs.get(name):
                refs.append(_Ref(configs[name], by_digest[short]))
        return cls(parts[0], moment, int(parts[2]) if parts[2].isdigit() else None, refs)


def _refs(nic: Any, pools: set[str]) -> list[_Ref]:
    """The NIC's references to any of `pools`."""
    found = []
    for config in items(nic, "properties", "ipConfigurations"):
        for key in POOL_KEYS:
            for ref in items(config, "properties", key):
                if text(ref, "id").lower() in pools:
                    found.append(_Ref(text(config, "id"), text(ref, "id").lower()))
    return found


def _without(nic: Any, refs: Sequence[_Ref]) -> dict[str, Any]:
    """The NIC's PUT body (its writable properties as read) without these references."""
    body: dict[str, Any] = nic.as_dict(exclude_readonly=True)
    gone = {(r.config_id.lower(), r.pool.lower()) for r in refs}
    for config in items(body, "properties", "ipConfigurations"):
        properties = config.get("properties") or {}
        for key in POOL_KEYS:
            if key in properties:
                properties[key] = [
                    p for p in properties[key] or [] if (text(config, "id").lower(), text(p, "id").lower()) not in gone
                ]
    return body


def _no_pools(instance: Instance, standby: bool) -> str:
    if standby and instance.scaling_group:
        return "no traffic pools; a Flexible scale set has no Standby on Azure: nothing to do"
    return "no traffic pools"


def _count(pools: Sequence[Any]) -> str:
    return f"{len(pools)} pool" + ("" if len(pools) == 1 else "s")


# ---------------------------------------------------------------- pools: drain and health


class _Waits:
    """The load balancers and gateways read in one execution (each once), and the waits they imply."""

    def __init__(self, pools: AzureBackendPools) -> None:
        self.pools = pools
        self._owners: dict[str, Any] = {}

    def owner(self, pool: str) -> tuple[str, Any]:
        """The pool's load balancer or gateway id and its ARM model."""
        owner_id = pool[: pool.lower().rfind("/backendaddresspools/")]
        if owner_id.lower() not in self._owners:
            found = resource_group_of(owner_id)
            if found is None:
                raise _RefusedError(f"not a backend pool id: {pool}")
            network = self.pools.network(owner_id)
            gateway = "/applicationgateways/" in owner_id.lower()
            try:
                if gateway:
                    model = network.application_gateways.get(found[1], found[2])
                else:
                    model = network.load_balancers.get(found[1], found[2])
            except HttpResponseError as exc:
                kind = "Application Gateway" if gateway else "load balancer"
                raise _refused(exc, f"{kind} {owner_id} read", AGW_READ if gateway else LB_READ) from exc
            self._owners[owner_id.lower()] = model
        return owner_id, self._owners[owner_id.lower()]

    def drain_seconds(self, pool: str) -> int:
        _, owner = self.owner(pool)
        if "/applicationgateways/" in pool.lower():
            return max([_gateway_wait(owner, s) for s in _gateway_settings(owner, pool)] or [AGW_DEFAULT_WAIT])
        return max([_probe_wait(owner, rule) for rule in _rules(owner, pool)] or [LB_DEFAULT_WAIT])


def _rules(lb: Any, pool: str) -> list[Any]:
    """The load balancer's load-balancing rules that send to the pool."""
    found = []
    for rule in items(lb, "properties", "loadBalancingRules"):
        refs = [text(rule, "properties", "backendAddressPool", "id")]
        refs += [text(p, "id") for p in items(rule, "properties", "backendAddressPools")]
        if pool.lower() in (r.lower() for r in refs if r):
            found.append(rule)
    return found


def _probe_wait(lb: Any, rule: Any) -> int:
    probe_id = text(rule, "properties", "probe", "id").lower()
    for probe in items(lb, "properties", "probes"):
        if text(probe, "id").lower() == probe_id:
            interval = at(probe, "properties", "intervalInSeconds")
            count = at(probe, "properties", "probeThreshold") or at(probe, "properties", "numberOfProbes")
            if isinstance(interval, int) and isinstance(count, int):
                return interval * count
    return LB_DEFAULT_WAIT


def _gateway_settings(gateway: Any, pool: str) -> list[Any]:
    """The backend HTTP settings the gateway's routing rules pair with the pool."""
    wanted = {
        text(rule, "properties", "backendHttpSettings", "id").lower()
        for rule in items(gateway, "properties", "requestRoutingRules")
        if text(rule, "properties", "backendAddressPool", "id").lower() == pool.lower()
    }
    return [s for s in items(gateway, "properties", "backendHttpSettingsCollection") if text(s, "id").lower() in wanted]


def _gateway_wait(gateway: Any, settings: Any) -> int:
    draining = at(settings, "properties", "connectionDraining")
    seconds = at(draining, "drainTimeoutInSec")
    if at(draining, "enabled") is True and isinstance(seconds, int):
        return seconds
    probe_id = text(settings, "properties", "probe", "id").lower()
    for probe in items(gateway, "properties", "probes"):
        if probe_id and text(probe, "id").lower() == probe_id:
            interval, threshold = at(probe, "properties", "interval"), at(probe, "properties", "unhealthyThreshold")
            if isinstance(interval, int) and isinstance(threshold, int):
                return interval * threshold
    return AGW_DEFAULT_WAIT


class _Health:
    """The pools' own view of a target, read once per rule / gateway in one execution."""

    def __init__(self, pools: AzureBackendPools, issued_at: datetime, now: datetime) -> None:
        self.pools = pools
        self.waits = _Waits(pools)
        self.issued_at = issued_at
        self.now = now
        self._rules: dict[str, Any] = {}
        self._gateways: dict[str, Any] = {}

    def of(self, refs: Sequence[_Ref]) -> str | tuple[datetime, str]:
        """What passed ("healthy in 2 pools"), or (when to look again, why not yet)."""
        said: list[str] = []
        for ref in refs:
            verdict = self._gateway(ref) if "/applicationgateways/" in ref.pool.lower() else self._balancer(ref)
            if isinstance(verdict, tuple):
                return verdict
            said.append(verdict)
        return ", ".join(dict.fromkeys(said))

    def _balancer(self, ref: _Ref) -> str | tuple[datetime, str]:
        lb_id, lb = self.waits.owner(ref.pool)
        rules = _rules(lb, ref.pool)
        if not rules:
            return "no load-balancing rule uses its pool"
        name = lb_id.rsplit("/", 1)[-1]
        for rule in rules:
            health = self._rule_health(lb_id, text(rule, "name"))
            if health is None:  # not readable (a Basic load balancer): wait the probe's time instead
                wait = _probe_wait(lb, rule)
                ready = self.issued_at + timedelta(seconds=wait)
                if self.now < ready:
                    return ready, f"probe status not readable: waiting {wait} s"
                return f"probe status not readable: waited {wait} s"
            if isinstance(health, str):
                return self.now + RETRY, health
            entry = next(
                (
                    a
                    for a in items(health, "loadBalancerBackendAddresses")
                    if text(a, "networkInterfaceIPConfigurationId").lower() == ref.config_id.lower()
                ),
                None,
            )
            if entry is None:
                return self.now + RETRY, f"load balancer {name} rule {text(rule, 'name')} does not list it yet"
            if text(entry, "state").lower() not in _HEALTHY:
                why = f" ({text(entry, 'reason')})" if text(entry, "reason") else ""
                return self.now + RETRY, f"load balancer {name} rule {text(rule, 'name')}: {text(entry, 'state')}{why}"
        return f"load balancer {name} probe Up"

    def _rule_health(self, lb_id: str, rule: str) -> Any:
        """The rule's health (LoadBalancerHealthPerRule); None when Azure does not offer it for
        this load balancer; a string when it is not reported within `health_wait`."""
        key = f"{lb_id}/loadBalancingRules/{rule}".lower()
        if key not in self._rules:
            found = resource_group_of(lb_id)
            assert found is not None
            operations = self.pools.network(lb_id).load_balancer_load_balancing_rules
            try:
                poller = operations.begin_health(found[1], found[2], rule)
                self._rules[key] = self._result(poller, f"load balancer rule {rule} health")
            except HttpResponseError as exc:
                if exc.status_code in (401, 403):
                    raise _refused(exc, f"load balancer {found[2]} rule {rule} health", LB_HEALTH) from exc
                if transient(exc):
                    self._rules[key] = f"load balancer rule {rule} health: {describe_error(exc)}"
                else:
                    self._rules[key] = None  # 400/404: not offered (Basic SKU, older API)
        return self._rules[key]

    def _gateway(self, ref: _Ref) -> str | tuple[datetime, str]:
        gateway_id = ref.pool[: ref.pool.lower().rfind("/backendaddresspools/")]
        name = gateway_id.rsplit("/", 1)[-1]
        pool_name = ref.pool.rsplit("/", 1)[-1]
        report = self._backend_health(gateway_id)
        if isinstance(report, str):
            return self.now + RETRY, report
        for pool in items(report, "backendAddressPools"):
            if text(pool, "backendAddressPool", "id").lower() != ref.pool.lower():
                continue
            servers = [
                s
                for settings in items(pool, "backendHttpSettingsCollection")
                for s in items(settings, "servers")
                if text(s, "ipConfiguration", "id").lower() == ref.config_id.lower()
            ]
            if not servers:
                break
            for server in servers:
                if text(server, "health").lower() not in _HEALTHY:
                    log = text(server, "healthProbeLog")
                    said = f"{text(server, 'address')} {text(server, 'health')} in pool {pool_name}"
                    return self.now + RETRY, f"Application Gateway {name} reports {said}" + (f": {log}" if log else "")
            return f"Application Gateway {name} reports it Up"
        return self.now + RETRY, f"Application Gateway {name} does not list it in pool {pool_name} yet"

    def _backend_health(self, gateway_id: str) -> Any:
        key = gateway_id.lower()
        if key not in self._gateways:
            found = resource_group_of(gateway_id)
            assert found is not None
            try:
                poller = self.pools.network(gateway_id).application_gateways.begin_backend_health(found[1], found[2])
                self._gateways[key] = self._result(poller, f"Application Gateway {found[2]} backend health")
            except HttpResponseError as exc:
                if exc.status_code in (401, 403):
                    raise _refused(exc, f"Application Gateway {found[2]} backend health", AGW_HEALTH) from exc
                self._gateways[key] = f"Application Gateway {found[2]} backend health: {describe_error(exc)}"
        return self._gateways[key]

    def _result(self, poller: Any, what: str) -> Any:
        """The operation's result, waited for at most `health_wait` (Azure answers in seconds); a
        string saying so when it has not come."""
        poller.wait(self.pools.health_wait)
        if not poller.done():
            return f"{what} not reported within {self.pools.health_wait:g} s"
        return poller.result()


__all__ = ["TAG_POOLS", "AzureBackendPools", "parse_item", "pool_digest"]
