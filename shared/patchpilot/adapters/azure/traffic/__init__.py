"""Traffic pools on Azure: a VM leaves and rejoins the Load Balancer and Application Gateway backend
pools its NICs' IP configurations reference (`AzureBackendPools`, the `TrafficPools` port;
docs/traffic.md).

Pool ids are the backend pools' ARM ids, as discovery puts them in `Instance.traffic_pools`
(lower-cased: ARM ids compare without case). Only references to the target's own pools are
touched; a NIC's other settings are written back as read.

Leave (LeavePools): the VMs' NICs are found in one Resource Graph query (their rows) and the NICs'
rows in one more (400 ids a query), then each NIC is read from ARM (what is written is never taken
from Resource Graph, which lags) and updated ONCE (one `networkInterfaces` PUT per NIC, If-Match
its ETag) without the references to the target's pools. The same PUT tags
the NIC `PatchPilotPools=<command id>|<UTC removal>|<drain s>|<ip configuration name>:<pool
digest>...` (the pool digest: 8 hex of SHA-256 of the lower-cased pool id), so a redelivered
command, or one whose worker died between the update and the wait, finds what it removed and when
without updating the NIC again; a poll whose Resource Graph row of the NIC already shows this
command's record (and none of the pools) reads nothing more. A NIC already out of the pools is not
updated; references an earlier command removed that are still out are carried into this command's
items, so they are put back too. Drained = removed and, since the removal, the longest wait of the pools removed from:
- Load Balancer: the probe of each load-balancing rule that uses the pool, `intervalInSeconds` ×
  `probeThreshold` (else `numberOfProbes`); 2 × 5 s when no rule or probe names one;
- Application Gateway: the backend settings of each routing rule that uses the pool: their
  connection draining timeout when enabled, else their probe's `interval` × `unhealthyThreshold`
  (the default probe's 30 s × 3 without one).
Before that the answer is InProgress(retry_at = the moment it will be drained, started = the first
NIC update this command made, as its records say): an explicit `drain_timeout` counts from that
update, so a late first delivery of the command does not eat it.

An outcome's `items` (LeavePools): `"<ip configuration id>|<backend pool id>"`, one per reference
removed (or still out), which is exactly what RejoinPools puts back.

Rejoin (RejoinPools): the references in `command.registrations` (for a target without any, the
ones its NICs' PatchPilotPools tag records) are added back to their IP configurations, one PUT per
NIC and none for a NIC that already has them all; the same PUT records on the NIC what this command
put back (`<command id>|<UTC time>|back|...`), so that its later executions (polls for the pool
health, which read the NICs' Resource Graph rows instead of each NIC) still name them. An
outcome's `items` name the pools the target was actually re-added to (backend pool ids; empty
when it was already in). With `pool_health`, the pools must report the IP configuration healthy:
- Load Balancer (Standard): the health of each load-balancing rule using the pool (POST
  `loadBalancers/{lb}/loadBalancingRules/{rule}/health`, LoadBalancerLoadBalancingRules_Health, a
  long-running operation): the IP configuration's `state` must be `Up`. Where that is not readable
  (a Basic load balancer, an older API), the probe's interval × threshold is waited from
  `issued_at` instead and the outcome says "probe status not readable: waited N s";
- Application Gateway: backend health (POST `applicationGateways/{name}/backendhealth`, a
  long-running operation, one per gateway per execution) must report the IP configuration's
  server healthy in every backend setting of the pool: `Healthy`, as the service answers, or `Up`,
  the specification's ApplicationGatewayBackendHealthServerHealth.
Otherwise InProgress with the reason in the note; the service fails it at issued_at + timeout.

A read or write the cloud refuses (403) is a failed outcome naming the permission, never taken for
"drained" or "healthy". A conflict or a server error (409, 412, 5xx) is tried again shortly.
Each health operation is followed to its answer for at most `health_wait` (60 s) per execution.

Requests: leave, per VM, one NIC GET and one PUT (a poll: none), plus two Resource Graph queries
per 400 VMs and one GET per load balancer or gateway; rejoin the same, plus, with `pool_health`,
one health operation per load-balancing rule and per gateway per execution.

The package: `refs` (the references and the NIC's record), `pools` (the load balancers and
gateways: drain waits and health), this module (leave and rejoin).

Scaling groups: a Flexible scale set member has no Standby on Azure (the set does not replace a
member that reboots, and scaling in is the operator's), so `standby` does nothing here: such a
member with no pools is ok with no items. Arc-enabled servers have no backend pools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import models as nm

from patchpilot.batching import chunks, unique
from patchpilot.engine.messages import LeavePools, Outcome, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.ports import Clock, InProgress, Progress

from ..access import NIC_TYPE, AzureAccess, Machine, describe_error, iso, items, resource_group_of, tags_of, text
from ..clients import AzureClients
from ..graph import IDS_PER_QUERY, kql_list, kql_string, query
from .pools import AGW_HEALTH, LB_HEALTH, RETRY, LaterError, PoolHealth, PoolReader, RefusedError, refusal
from .refs import POOL_KEYS, TAG_POOLS, NicRecord, PoolRef, parse_item, pool_digest, refs_of, without

if TYPE_CHECKING:
    from azure.mgmt.network import NetworkManagementClient

VM_READ = "Microsoft.Compute/virtualMachines/read"
GRAPH_READ = "Microsoft.ResourceGraph/resources/read"
NIC_READ = "Microsoft.Network/networkInterfaces/read"
NIC_WRITE = "Microsoft.Network/networkInterfaces/write"
LB_JOIN = "Microsoft.Network/loadBalancers/backendAddressPools/join/action"
AGW_JOIN = "Microsoft.Network/applicationGateways/backendAddressPools/join/action"


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
        try:
            vms, nics = self._nics_of(targets, outcomes, now)
        except LaterError as exc:
            return InProgress(now + RETRY, str(exc)[:300])
        indexed = self._indexed(n for ids in nics.values() for n in ids) if nics else {}
        waits = PoolReader(self)
        drained_at: dict[str, datetime] = {}
        began: list[datetime] = []  # when this command's NIC updates were made: its timeout counts from the first
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
                removed, moment, written = self._leave(instance, command, nics[instance.id], indexed, waits, now)
            except RefusedError as exc:
                outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=str(exc)[:500], at=now)
                continue
            except LaterError as exc:
                notes.append(str(exc))
                drained_at[instance.id] = now + RETRY
                continue
            began += written
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
            started = min(began, default=None)
            return InProgress(due, "; ".join([note, *sorted(set(notes))])[:300], tuple(outcomes.values()), started)
        return [outcomes[i.id] for i in targets]

    def _leave(
        self,
        instance: Instance,
        command: LeavePools,
        nic_ids: Sequence[str],
        indexed: Mapping[str, Any],
        waits: PoolReader,
        now: datetime,
    ) -> tuple[list[PoolRef], datetime, list[datetime]]:
        """The references this command took out of the target's pools, when they are drained, and
        when this command's NIC updates were made (its records' times). A NIC whose Resource Graph
        row (`indexed`) shows this command's record and none of the pools is not read again: the
        record was written by the update that removed them."""
        pools = {p.lower() for p in instance.traffic_pools}
        removed: list[PoolRef] = []
        written: list[datetime] = []
        drained = now
        for nic_id in nic_ids:
            seen = indexed.get(nic_id.lower())  # Resource Graph's row: a poll of this command reads no more
            record = NicRecord.read(seen, pools) if seen is not None else None
            if record is not None and record.wait is not None and record.by(command.id) and not refs_of(seen, pools):
                removed += record.refs
                written.append(record.at)
                drained = max(drained, record.at + timedelta(seconds=record.wait))
                continue
            nic = self._get_nic(nic_id)  # what to write is read from ARM itself, never from the index
            record = NicRecord.read(nic, pools)
            current = refs_of(nic, pools)
            present = {r.key for r in current}
            out = [r for r in record.refs if r.key not in present] if record is not None and not record.back else []
            if current:
                wait = max(waits.drain_seconds(r.pool) for r in current)
                body = without(nic, current)
                value = NicRecord(command.id, now, wait, [*current, *out]).value(nic)
                if len(value) > 256:
                    raise RefusedError(
                        f"NIC {nic_id} is in too many backend pools to record (tag {TAG_POOLS} holds 256 characters)"
                    )
                body["tags"] = {**tags_of(nic), TAG_POOLS: value}
                self._put_nic(nic_id, nic, body, f"NIC {nic_id} update", f"{NIC_WRITE}")
                removed += [*current, *out]
                written.append(record.at if record is not None and record.by(command.id) and not record.back else now)
                drained = max(drained, now + timedelta(seconds=wait))
            elif record is not None and record.wait is not None and out:
                removed += out
                if record.by(command.id):
                    written.append(record.at)
                drained = max(drained, record.at + timedelta(seconds=record.wait))
        return removed, drained, written

    # ------------------------------------------------------------ rejoin

    def rejoin_pools(self, command: RejoinPools) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        outcomes: dict[str, Outcome] = {}
        wanted: dict[str, list[PoolRef]] = {}
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
            try:
                vms, nics = self._nics_of(unrecorded, outcomes, now)
            except LaterError as exc:
                return InProgress(now + RETRY, str(exc)[:300])
            for instance in unrecorded:
                if instance.id in outcomes:
                    continue
                if instance.id not in vms:
                    detail = _no_pools(instance, command.standby)
                    outcomes[instance.id] = Outcome(id=instance.id, ok=True, detail=detail, at=now)
                    continue
                try:
                    wanted[instance.id] = self._recorded(instance, nics[instance.id])
                except RefusedError as exc:
                    outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=str(exc)[:500], at=now)
                except LaterError as exc:
                    return InProgress(now + RETRY, str(exc)[:300])
        readded: dict[str, list[str]] = {}
        later: list[str] = []
        indexed = self._indexed(r.nic for refs in wanted.values() for r in refs) if wanted else {}
        for instance in targets:
            if instance.id not in wanted or instance.id in outcomes:
                continue
            try:
                readded[instance.id] = self._rejoin(command, wanted[instance.id], indexed, now)
            except RefusedError as exc:
                outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=str(exc)[:500], at=now)
            except LaterError as exc:
                later.append(str(exc))
        if later:
            return InProgress(now + RETRY, "; ".join(sorted(set(later)))[:300], tuple(outcomes.values()))
        waiting: list[tuple[datetime, str]] = []
        health = PoolHealth(self, command.issued_at, now)
        for instance in targets:
            if instance.id in outcomes or instance.id not in wanted:
                continue
            pools = readded[instance.id]
            detail = f"back in {_count(pools)}" if pools else "already in its pools"
            if command.pool_health:
                try:
                    verdict = health.of(wanted[instance.id])
                except RefusedError as exc:  # back in its pools, its health unknown: said, with what was re-added
                    failed = f"{detail}; {exc}"[:500]
                    outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=failed, items=pools, at=now)
                    continue
                if isinstance(verdict, tuple):
                    waiting.append(verdict)
                    continue
                detail += f"; {verdict}"
            outcomes[instance.id] = Outcome(id=instance.id, ok=True, detail=detail[:500], items=pools, at=now)
        if waiting:
            due = min(moment for moment, _ in waiting)
            reasons = "; ".join(sorted({reason for _, reason in waiting}))
            note = f"pool health: {len(targets) - len(waiting)}/{len(targets)} done; {reasons}"[:300]
            return InProgress(due, note, tuple(outcomes.values()))
        return [outcomes[i.id] for i in targets]

    def _recorded(self, instance: Instance, nic_ids: Sequence[str]) -> list[PoolRef]:
        """The references the NICs' PatchPilotPools tags record as taken out."""
        pools = {p.lower() for p in instance.traffic_pools}
        found: list[PoolRef] = []
        for nic_id in nic_ids:
            record = NicRecord.read(self._get_nic(nic_id), pools)
            found += record.refs if record is not None and not record.back else []
        return found

    def _rejoin(
        self, command: RejoinPools, refs: Sequence[PoolRef], indexed: Mapping[str, Any], now: datetime
    ) -> list[str]:
        """Put the references back, one PUT per NIC that lacks one, which records on the NIC what
        this command re-added (so that its later executions still name them); the pools re-added.
        A NIC whose Resource Graph row shows this command's record and every reference is not read
        again (a poll while the pools report their health)."""
        readded: list[str] = []
        by_nic: dict[str, list[PoolRef]] = {}
        for ref in refs:
            by_nic.setdefault(ref.nic.lower(), []).append(ref)
        for group in by_nic.values():
            nic_id = group[0].nic
            seen = indexed.get(nic_id.lower())
            if seen is not None:
                pools = {r.pool for r in group}
                done = NicRecord.read(seen, pools)
                back_in = {r.key for r in refs_of(seen, pools)}
                if done is not None and done.back and done.by(command.id) and all(r.key in back_in for r in group):
                    readded += [r.pool for r in done.refs]
                    continue
            nic = self._get_nic(nic_id)
            record = NicRecord.read(nic, {r.pool for r in group})
            earlier = record.refs if record is not None and record.back and record.by(command.id) else []
            body: dict[str, Any] = nic.as_dict(exclude_readonly=True)
            configs = {text(c, "id").lower(): c for c in items(body, "properties", "ipConfigurations")}
            added: list[PoolRef] = []
            for ref in group:
                config = configs.get(ref.config_id.lower())
                if config is None:
                    raise RefusedError(f"IP configuration {ref.config_id} is no longer on NIC {nic_id}: not put back")
                key = POOL_KEYS[1] if "/applicationgateways/" in ref.pool.lower() else POOL_KEYS[0]
                listed = config.setdefault("properties", {}).get(key) or []
                if any(text(p, "id").lower() == ref.pool.lower() for p in listed):
                    continue
                config["properties"][key] = [*listed, {"id": ref.pool}]
                added.append(ref)
            if added:
                value = NicRecord(command.id, now, None, [*earlier, *added]).value(nic)
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
        try:
            rows = self.access.rows(list(vms.values())) if vms else {}
        except HttpResponseError as exc:
            if exc.status_code not in (401, 403):
                raise LaterError(f"Resource Graph: {describe_error(exc)}") from exc
            detail = f"Resource Graph refused (needs {GRAPH_READ}): {describe_error(exc)}"
            outcomes.update({i: Outcome(id=i, ok=False, detail=detail, at=now) for i in vms})
            return {}, {}
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

    def _indexed(self, nic_ids: Iterable[str]) -> dict[str, Any]:
        """The NICs' Resource Graph rows (`id, tags, properties`) by lower-case id, 400 ids a query;
        empty when the query fails (each NIC is then read from ARM)."""
        wanted = sorted({i.lower() for i in nic_ids})
        subscriptions = sorted({found[0] for i in wanted if (found := resource_group_of(i)) is not None})
        rows: dict[str, Any] = {}
        try:
            for chunk in chunks(wanted, IDS_PER_QUERY):
                kql = (
                    f"resources\n| where type =~ {kql_string(NIC_TYPE)}\n| where id in~ {kql_list(chunk)}\n"
                    "| project id, tags, properties"
                )
                rows.update((text(row, "id").lower(), row) for row in query(self.access.graph(), kql, subscriptions))
        except HttpResponseError:
            return {}
        return rows

    def _get_nic(self, nic_id: str) -> Any:
        sub_rg_name = resource_group_of(nic_id)
        if sub_rg_name is None:
            raise RefusedError(f"not a NIC id: {nic_id}")
        try:
            return self.network(nic_id).network_interfaces.get(sub_rg_name[1], sub_rg_name[2])
        except HttpResponseError as exc:
            raise refusal(exc, f"NIC {nic_id} read", NIC_READ) from exc

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
            raise refusal(exc, what, permission) from exc


def _no_pools(instance: Instance, standby: bool) -> str:
    if standby and instance.scaling_group:
        return "no traffic pools; a Flexible scale set has no Standby on Azure: nothing to do"
    return "no traffic pools"


def _count(pools: Sequence[Any]) -> str:
    return f"{len(pools)} pool" + ("" if len(pools) == 1 else "s")


__all__ = ["AGW_HEALTH", "LB_HEALTH", "TAG_POOLS", "AzureBackendPools", "parse_item", "pool_digest"]
