"""A stateful fake of Azure networking (Microsoft.Network) on top of fake_arm, for traffic pools.

The real azure-mgmt-network client talks to it through `FakeArm`'s transport. It models, in the
shapes of the REST specification (specification/network/resource-manager, 2024-05-01 examples
NetworkInterfaceGet.json, LoadBalancerGet.json, ApplicationGatewayGet.json,
ApplicationGatewayBackendHealthGet.json, LoadBalancerHealth.json):

- network interfaces (GET; PUT answers 200 with the NIC as stored, `provisioningState`
  Succeeded): the NICs `FakeAzureCompute.add_vm` creates, whose IP configurations reference Load
  Balancer and Application Gateway backend pools (`loadBalancerBackendAddressPools`,
  `applicationGatewayBackendAddressPools`: lists of `{id}`); a PUT that references a pool no load
  balancer or gateway holds is refused (400 InvalidResourceReference), as ARM does;
- load balancers (GET) with backend pools, probes (`intervalInSeconds`, `numberOfProbes`,
  `probeThreshold`) and load-balancing rules naming a pool and a probe; a rule's health
  (POST .../loadBalancingRules/{rule}/health, a long-running operation answered through
  Location): each IP configuration in the rule's pool, `Up` unless its VM is not running, its
  disk is broken, or the test marks it down (`lb_down`);
- Application Gateways (GET) with backend pools, backend HTTP settings (connection draining),
  probes (`interval`, `unhealthyThreshold`) and routing rules; backend health (POST
  .../backendhealth, long-running, answered through Location): per pool and settings, each
  server's address, IP configuration and health, `Healthy` unless the VM is down or broken
  (`Unhealthy`), or what the test sets (`agw_health`). The service answers `Healthy` and `Unhealthy`,
  as Microsoft Learn's backend health pages show it; the specification's enum
  (ApplicationGatewayBackendHealthServerHealth: Up, Down, Partial, Draining, Unknown, modelled as a
  string) names them otherwise, and PatchPilot takes `Up` as healthy too.

Every NIC PUT is recorded (`nic_puts`), so tests count updates per NIC. Nothing here waits.
"""

from __future__ import annotations

import copy
from typing import Any

from fake_arm import ArmError, FakeArm, Request, Response
from fake_azure_compute import SUB, FakeAzureCompute

_S = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Network"
NIC = _S + r"/networkInterfaces/(?P<name>[^/]+)"
LB = _S + r"/loadBalancers/(?P<name>[^/]+)"
AGW = _S + r"/applicationGateways/(?P<name>[^/]+)"


class FakeAzureNetwork:
    def __init__(self, fake: FakeArm, compute: FakeAzureCompute) -> None:
        self.fake = fake
        self.compute = compute
        self.nic_puts: list[str] = []  # NIC ids, in the order they were updated
        self.lb_down: set[str] = set()  # IP configuration ids (lower) a load balancer's probe finds down
        self.agw_health: dict[str, str] = {}  # IP configuration id (lower) -> health an App Gateway reports
        self.health_minutes = 0  # how long a health operation takes on the test's clock
        on = fake.on
        on("GET", NIC, self._get)
        on("PUT", NIC, self._put_nic)
        on("GET", LB, self._get)
        on("GET", AGW, self._get)
        on("POST", LB + r"/loadBalancingRules/(?P<rule>[^/]+)/health", self._rule_health)
        on("POST", AGW + r"/backendhealth", self._backend_health)

    # ------------------------------------------------------------ building the world

    def add_load_balancer(
        self,
        name: str,
        pools: list[str],
        *,
        rg: str = "rg-web",
        interval: int = 5,
        probes: int = 2,
        threshold: int | None = None,
        rule_pools: list[str] | None = None,
    ) -> str:
        """A Standard load balancer with backend pools `pools`, one HTTP probe (`interval` s,
        `probes` probes, `threshold` the newer probeThreshold) and a load-balancing rule per pool in
        `rule_pools` (default: every pool); returns its id."""
        lb_id = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/loadBalancers/{name}"
        probe_id = f"{lb_id}/probes/http"
        probe: dict[str, Any] = {
            "protocol": "Http",
            "port": 80,
            "requestPath": "/health",
            "intervalInSeconds": interval,
            "numberOfProbes": probes,
        }
        if threshold is not None:
            probe["probeThreshold"] = threshold
        rules = [
            {
                "id": f"{lb_id}/loadBalancingRules/rule-{pool}",
                "name": f"rule-{pool}",
                "properties": {
                    "protocol": "Tcp",
                    "frontendPort": 80,
                    "backendPort": 80,
                    "backendAddressPool": {"id": f"{lb_id}/backendAddressPools/{pool}"},
                    "probe": {"id": probe_id},
                },
            }
            for pool in (pools if rule_pools is None else rule_pools)
        ]
        self.fake.add(
            {
                "id": lb_id,
                "name": name,
                "type": "Microsoft.Network/loadBalancers",
                "location": "westeurope",
                "sku": {"name": "Standard", "tier": "Regional"},
                "properties": {
                    "provisioningState": "Succeeded",
                    "backendAddressPools": [
                        {"id": f"{lb_id}/backendAddressPools/{p}", "name": p, "properties": {}} for p in pools
                    ],
                    "probes": [{"id": probe_id, "name": "http", "properties": probe}],
                    "loadBalancingRules": rules,
                },
            }
        )
        return lb_id

    def add_app_gateway(
        self,
        name: str,
        pools: list[str],
        *,
        rg: str = "rg-web",
        draining: int | None = None,
        interval: int = 30,
        unhealthy: int = 3,
        probe: bool = True,
    ) -> str:
        """An Application Gateway with backend pools `pools`, one backend HTTP settings (connection
        draining of `draining` s when given), a custom probe (`interval`, `unhealthy` threshold)
        unless `probe` is False, and a basic routing rule per pool; returns its id."""
        agw_id = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/applicationGateways/{name}"
        settings_id = f"{agw_id}/backendHttpSettingsCollection/http"
        settings: dict[str, Any] = {"port": 80, "protocol": "Http", "cookieBasedAffinity": "Disabled"}
        if draining is not None:
            settings["connectionDraining"] = {"enabled": True, "drainTimeoutInSec": draining}
        if probe:
            settings["probe"] = {"id": f"{agw_id}/probes/health"}
        self.fake.add(
            {
                "id": agw_id,
                "name": name,
                "type": "Microsoft.Network/applicationGateways",
                "location": "westeurope",
                "properties": {
                    "provisioningState": "Succeeded",
                    "backendAddressPools": [
                        {"id": f"{agw_id}/backendAddressPools/{p}", "name": p, "properties": {}} for p in pools
                    ],
                    "backendHttpSettingsCollection": [{"id": settings_id, "name": "http", "properties": settings}],
                    "probes": (
                        [
                            {
                                "id": f"{agw_id}/probes/health",
                                "name": "health",
                                "properties": {
                                    "protocol": "Http",
                                    "host": "127.0.0.1",
                                    "path": "/health",
                                    "interval": interval,
                                    "timeout": 30,
                                    "unhealthyThreshold": unhealthy,
                                },
                            }
                        ]
                        if probe
                        else []
                    ),
                    "requestRoutingRules": [
                        {
                            "id": f"{agw_id}/requestRoutingRules/rule-{p}",
                            "name": f"rule-{p}",
                            "properties": {
                                "ruleType": "Basic",
                                "priority": 100 + n,
                                "backendAddressPool": {"id": f"{agw_id}/backendAddressPools/{p}"},
                                "backendHttpSettings": {"id": settings_id},
                            },
                        }
                        for n, p in enumerate(pools)
                    ],
                },
            }
        )
        return agw_id

    # ------------------------------------------------------------ looking (tests)

    def nic_of(self, vm_id: str) -> dict[str, Any]:
        nic_id = self.fake.get(vm_id)["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
        return self.fake.get(nic_id)

    def pools_of(self, vm_id: str) -> list[str]:
        """The backend pools the VM's NIC references, lower-cased and sorted."""
        found = []
        for config in self.nic_of(vm_id)["properties"]["ipConfigurations"]:
            for key in ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools"):
                found += [p["id"].lower() for p in config["properties"].get(key) or []]
        return sorted(found)

    def ip_configuration(self, vm_id: str) -> str:
        return str(self.nic_of(vm_id)["properties"]["ipConfigurations"][0]["id"])

    # ------------------------------------------------------------ answering

    def _get(self, request: Request) -> Response:
        self.compute.tick()
        return Response(200, copy.deepcopy(self.fake.get(request.path)))

    def _put_nic(self, request: Request) -> Response:
        self.compute.tick()
        stored = self.fake.get(request.path)  # the fake creates no NICs: only updates them
        body = copy.deepcopy(request.body or {})
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        if not configs:
            raise ArmError(400, "NetworkInterfaceMustHaveAtLeastOneIpConfiguration", "a NIC needs an IP configuration")
        for config in configs:
            for key in ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools"):
                for ref in (config.get("properties") or {}).get(key) or []:
                    if not self._pool_exists(ref.get("id", "")):
                        raise ArmError(
                            400,
                            "InvalidResourceReference",
                            f"Resource {ref.get('id')} referenced by resource {request.path} was not found.",
                        )
        self._linked_access(stored, configs)
        known = {c["name"]: c for c in stored["properties"]["ipConfigurations"]}
        for config in configs:
            config["id"] = (
                known.get(config.get("name"), {}).get("id") or f"{stored['id']}/ipConfigurations/{config['name']}"
            )
        body.update(id=stored["id"], name=stored["name"], type=stored["type"])
        body.setdefault("properties", {})["provisioningState"] = "Succeeded"
        self.fake.add(body)
        self.nic_puts.append(stored["id"])
        return Response(200, copy.deepcopy(body))

    def _linked_access(self, stored: dict[str, Any], configs: list[dict[str, Any]]) -> None:
        """ARM's linked access check: joining a pool the NIC was not in needs the pool's join action
        (`deny` it on the FakeArm to see the 403 LinkedAuthorizationFailed)."""
        before = {
            ref["id"].lower()
            for config in stored["properties"]["ipConfigurations"]
            for key in ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools")
            for ref in config["properties"].get(key) or []
        }
        for config in configs:
            for key, owner in (
                ("loadBalancerBackendAddressPools", "loadbalancers"),
                ("applicationGatewayBackendAddressPools", "applicationgateways"),
            ):
                for ref in (config.get("properties") or {}).get(key) or []:
                    action = f"microsoft.network/{owner}/backendaddresspools/join/action"
                    if ref["id"].lower() not in before and action in self.fake.denied:
                        raise ArmError(
                            403,
                            "LinkedAuthorizationFailed",
                            f"The client has permission to perform action 'Microsoft.Network/networkInterfaces/write' "
                            f"on scope '{stored['id']}'; however, it does not have permission to perform action(s) "
                            f"'{action}' on the linked scope(s) '{ref['id']}' or the linked scope(s) are invalid.",
                        )

    def _pool_exists(self, pool_id: str) -> bool:
        parent = pool_id.lower().rsplit("/backendaddresspools/", 1)[0]
        owner = self.fake.resources.get(parent)
        return owner is not None and any(
            p["id"].lower() == pool_id.lower() for p in owner["properties"].get("backendAddressPools") or []
        )

    def _members(self, pool_id: str) -> list[tuple[str, str, str]]:
        """(IP configuration id, private IP, VM id) of every IP configuration in the pool."""
        members = []
        for vm_id, machine in self.compute.machines.items():
            if machine.kind != "vm":
                continue
            nic = self.nic_of(vm_id)
            for config in nic["properties"]["ipConfigurations"]:
                properties = config["properties"]
                refs = (properties.get("loadBalancerBackendAddressPools") or []) + (
                    properties.get("applicationGatewayBackendAddressPools") or []
                )
                if any(r["id"].lower() == pool_id.lower() for r in refs):
                    members.append((config["id"], properties.get("privateIPAddress", ""), vm_id))
        return members

    def _serving(self, vm_id: str) -> bool:
        machine = self.compute.state(vm_id)
        return machine.power == "running" and not self.compute.broken(vm_id)

    def _rule_health(self, request: Request) -> Response:
        self.compute.tick()
        found = request.match(LB + r"/loadBalancingRules/(?P<rule>[^/]+)/health")
        lb = self.fake.get(request.path.rsplit("/loadBalancingRules/", 1)[0])
        rule = next(
            (r for r in lb["properties"]["loadBalancingRules"] if r["name"].lower() == found["rule"].lower()), None
        )
        if rule is None:
            raise ArmError(404, "NotFound", f"load-balancing rule {found['rule']} not found")
        addresses = []
        for config_id, ip, vm_id in self._members(rule["properties"]["backendAddressPool"]["id"]):
            up = self._serving(vm_id) and config_id.lower() not in self.lb_down
            addresses.append(
                {
                    "ipAddress": ip,
                    "networkInterfaceIPConfigurationId": config_id,
                    "state": "Up" if up else "Down",
                    "reason": "Up_Probe_Success" if up else "Down_Probe_Failure",
                }
            )
        result = {
            "up": sum(a["state"] == "Up" for a in addresses),
            "down": sum(a["state"] == "Down" for a in addresses),
            "loadBalancerBackendAddresses": addresses,
        }
        return self._later(result)

    def _backend_health(self, request: Request) -> Response:
        self.compute.tick()
        agw = self.fake.get(request.path.rsplit("/backendhealth", 1)[0])
        settings_of: dict[str, list[str]] = {}
        for rule in agw["properties"]["requestRoutingRules"]:
            pool = rule["properties"]["backendAddressPool"]["id"].lower()
            settings_of.setdefault(pool, []).append(rule["properties"]["backendHttpSettings"]["id"])
        pools = []
        for pool in agw["properties"]["backendAddressPools"]:
            servers = []
            for config_id, ip, vm_id in self._members(pool["id"]):
                health = self.agw_health.get(config_id.lower()) or ("Healthy" if self._serving(vm_id) else "Unhealthy")
                servers.append(
                    {
                        "address": ip,
                        "ipConfiguration": {"id": config_id},
                        "health": health,
                        "healthProbeLog": "Success. Received 200 status code"
                        if health in ("Healthy", "Up")
                        else "Received invalid status code: 503 in the backend server's HTTP response",
                    }
                )
            pools.append(
                {
                    "backendAddressPool": {"id": pool["id"]},
                    "backendHttpSettingsCollection": [
                        {"backendHttpSettings": {"id": s}, "servers": servers}
                        for s in settings_of.get(pool["id"].lower(), [])
                    ],
                }
            )
        return self._later({"backendAddressPools": pools})

    def _later(self, result: dict[str, Any]) -> Response:
        """A long-running operation whose result is read from its Location (final-state-via location)."""
        from datetime import timedelta

        return self.fake.accepted("", after=timedelta(minutes=self.health_minutes), result=result)


__all__ = ["FakeAzureNetwork"]
