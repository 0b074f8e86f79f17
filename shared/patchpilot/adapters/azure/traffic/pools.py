"""The load balancers and Application Gateways behind the pools: how long a pool takes to drain
(its probes, its connection draining) and whether it reports a member healthy (a load-balancing
rule's health, an Application Gateway's backend health); the traffic package's docstring."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from ..access import at, describe_error, items, resource_group_of, text, transient
from .refs import PoolRef

if TYPE_CHECKING:
    from azure.mgmt.network import NetworkManagementClient

LB_DEFAULT_WAIT = 2 * 5  # seconds: Azure's default probe, 5 s interval, 2 probes
AGW_DEFAULT_WAIT = 30 * 3  # seconds: the default probe of an Application Gateway, 30 s interval, threshold 3
RETRY = timedelta(seconds=30)  # a conflict, a server error, a pool not healthy yet
LB_READ = "Microsoft.Network/loadBalancers/read"
AGW_READ = "Microsoft.Network/applicationGateways/read"
LB_HEALTH = "Microsoft.Network/loadBalancers/loadBalancingRules/health/action"
AGW_HEALTH = "Microsoft.Network/applicationGateways/backendhealth/action"
# A backend server's health: the specification's enum says Up (and Down, Partial, Draining, Unknown);
# the service and Microsoft Learn's backend-health pages say Healthy (and Unhealthy): both pass.
HEALTHY = ("up", "healthy")


class Networks(Protocol):
    """Where the network client of a resource comes from (AzureBackendPools)."""

    health_wait: float

    def network(self, resource_id: str) -> NetworkManagementClient: ...


class RefusedError(Exception):
    """A read or write Azure refused: the target fails with this text, which names the permission."""


class LaterError(Exception):
    """Not now (a conflict, a server error): the command is polled again."""


def refusal(exc: HttpResponseError, what: str, permission: str) -> Exception:
    if exc.status_code in (401, 403):
        return RefusedError(f"{what} refused (needs {permission}): {describe_error(exc)}")
    if isinstance(exc, ResourceNotFoundError):
        return RefusedError(f"{what}: not found ({describe_error(exc)})")
    if transient(exc) or exc.status_code == 412:
        return LaterError(f"{what}: {describe_error(exc)}")
    return RefusedError(f"{what} failed: {describe_error(exc)}")


class PoolReader:
    """The load balancers and gateways read in one execution (each once), and the waits they imply."""

    def __init__(self, pools: Networks) -> None:
        self.pools = pools
        self._owners: dict[str, Any] = {}

    def owner(self, pool: str) -> tuple[str, Any]:
        """The pool's load balancer or gateway id and its ARM model."""
        owner_id = pool[: pool.lower().rfind("/backendaddresspools/")]
        if owner_id.lower() not in self._owners:
            found = resource_group_of(owner_id)
            if found is None:
                raise RefusedError(f"not a backend pool id: {pool}")
            network = self.pools.network(owner_id)
            gateway = "/applicationgateways/" in owner_id.lower()
            try:
                if gateway:
                    model = network.application_gateways.get(found[1], found[2])
                else:
                    model = network.load_balancers.get(found[1], found[2])
            except HttpResponseError as exc:
                kind = "Application Gateway" if gateway else "load balancer"
                raise refusal(exc, f"{kind} {owner_id} read", AGW_READ if gateway else LB_READ) from exc
            self._owners[owner_id.lower()] = model
        return owner_id, self._owners[owner_id.lower()]

    def drain_seconds(self, pool: str) -> int:
        _, owner = self.owner(pool)
        if "/applicationgateways/" in pool.lower():
            return max([_gateway_wait(owner, s) for s in _gateway_settings(owner, pool)] or [AGW_DEFAULT_WAIT])
        return max([probe_wait(owner, rule) for rule in rules_of(owner, pool)] or [LB_DEFAULT_WAIT])


def rules_of(lb: Any, pool: str) -> list[Any]:
    """The load balancer's load-balancing rules that send to the pool."""
    found = []
    for rule in items(lb, "properties", "loadBalancingRules"):
        refs = [text(rule, "properties", "backendAddressPool", "id")]
        refs += [text(p, "id") for p in items(rule, "properties", "backendAddressPools")]
        if pool.lower() in (r.lower() for r in refs if r):
            found.append(rule)
    return found


def probe_wait(lb: Any, rule: Any) -> int:
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


class PoolHealth:
    """The pools' own view of a target, read once per rule / gateway in one execution."""

    def __init__(self, pools: Networks, issued_at: datetime, now: datetime) -> None:
        self.pools = pools
        self.waits = PoolReader(pools)
        self.issued_at = issued_at
        self.now = now
        self._rule_cache: dict[str, Any] = {}
        self._gateways: dict[str, Any] = {}

    def of(self, refs: Sequence[PoolRef]) -> str | tuple[datetime, str]:
        """What passed ("healthy in 2 pools"), or (when to look again, why not yet)."""
        said: list[str] = []
        for ref in refs:
            verdict = self._gateway(ref) if "/applicationgateways/" in ref.pool.lower() else self._balancer(ref)
            if isinstance(verdict, tuple):
                return verdict
            said.append(verdict)
        return ", ".join(dict.fromkeys(said))

    def _balancer(self, ref: PoolRef) -> str | tuple[datetime, str]:
        lb_id, lb = self.waits.owner(ref.pool)
        rules = rules_of(lb, ref.pool)
        if not rules:
            return "no load-balancing rule uses its pool"
        name = lb_id.rsplit("/", 1)[-1]
        for rule in rules:
            health = self._rule_health(lb_id, text(rule, "name"))
            if health is None:  # not readable (a Basic load balancer): wait the probe's time instead
                wait = probe_wait(lb, rule)
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
            if text(entry, "state").lower() not in HEALTHY:
                why = f" ({text(entry, 'reason')})" if text(entry, "reason") else ""
                return self.now + RETRY, f"load balancer {name} rule {text(rule, 'name')}: {text(entry, 'state')}{why}"
        return f"load balancer {name} probe Up"

    def _rule_health(self, lb_id: str, rule: str) -> Any:
        """The rule's health (LoadBalancerHealthPerRule); None when Azure does not offer it for
        this load balancer; a string when it is not reported within `health_wait`."""
        key = f"{lb_id}/loadBalancingRules/{rule}".lower()
        if key not in self._rule_cache:
            found = resource_group_of(lb_id)
            assert found is not None
            operations = self.pools.network(lb_id).load_balancer_load_balancing_rules
            try:
                poller = operations.begin_health(found[1], found[2], rule)
                self._rule_cache[key] = self._result(poller, f"load balancer rule {rule} health")
            except HttpResponseError as exc:
                if exc.status_code in (401, 403):
                    raise refusal(exc, f"load balancer {found[2]} rule {rule} health", LB_HEALTH) from exc
                if transient(exc):
                    self._rule_cache[key] = f"load balancer rule {rule} health: {describe_error(exc)}"
                else:
                    self._rule_cache[key] = None  # 400/404: not offered (Basic SKU, older API)
        return self._rule_cache[key]

    def _gateway(self, ref: PoolRef) -> str | tuple[datetime, str]:
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
                if text(server, "health").lower() not in HEALTHY:
                    log = text(server, "healthProbeLog")
                    said = f"{text(server, 'address')} {text(server, 'health')} in pool {pool_name}"
                    return self.now + RETRY, f"Application Gateway {name} reports {said}" + (f": {log}" if log else "")
            return f"Application Gateway {name} reports it {text(servers[0], 'health')}"
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
                    raise refusal(exc, f"Application Gateway {found[2]} backend health", AGW_HEALTH) from exc
                self._gateways[key] = f"Application Gateway {found[2]} backend health: {describe_error(exc)}"
        return self._gateways[key]

    def _result(self, poller: Any, what: str) -> Any:
        """The operation's result, waited for at most `health_wait` (Azure answers in seconds); a
        string saying so when it has not come."""
        poller.wait(self.pools.health_wait)
        if not poller.done():
            return f"{what} not reported within {self.pools.health_wait:g} s"
        return poller.result()
