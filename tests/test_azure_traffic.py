"""Azure traffic pools (`AzureBackendPools`) through the real azure-mgmt-network client.

Every request goes through the real SDK clients (serialization, azure-core's pipeline and its
long-running-operation polling) to `fake_arm.FakeArm` over the HTTP transport;
`fake_azure_network` models NICs, Standard load balancers (probes, load-balancing rules, rule
health) and Application Gateways (backend settings, probes, backend health) in the REST
specification's shapes, on top of `fake_azure_compute`'s VMs. Each poll is a call again once the
clock reaches the `retry_at` asked for, as the queue redelivers the command.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure_rbac import arm_action, fleet_role_actions
from fake_azure_compute import SUB
from traffic_runtimes import World, until_done

from patchpilot.adapters.azure.traffic import TAG_POOLS, AzureBackendPools, parse_item
from patchpilot.engine.messages import LeavePools, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.ports import InProgress

T0 = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
RUN = "weu-monthly-20261208-2200-ab12"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Network"


@pytest.fixture
def world() -> World:
    return World(T0)


def leave(targets: list[Instance], n: int = 1, **fields: Any) -> LeavePools:
    return LeavePools(id=f"{RUN}:w{n}:leave", run_id=RUN, wave=n, targets=targets, issued_at=T0, **fields)


def rejoin(targets: list[Instance], registrations: dict[str, list[str]], n: int = 1, **fields: Any) -> RejoinPools:
    fields.setdefault("issued_at", T0)
    return RejoinPools(
        id=f"{RUN}:w{n}:rejoin", run_id=RUN, wave=n, targets=targets, registrations=registrations, **fields
    )


# ---------------------------------------------------------------- leave


def test_leaving_updates_each_nic_once_and_is_drained_after_the_probe_interval_times_threshold(world: World) -> None:
    web = [world.vm(f"web-{n}", [world.be_web, world.be_api]) for n in range(3)]
    lonely = world.vm("batch-1", [])
    pools = world.pools()

    first = pools.leave_pools(leave([*web, lonely]))

    # Out of both pools at once: one PUT per NIC, none for the VM without pools.
    assert world.network.nic_puts == [world.network.nic_of(vm.id)["id"] for vm in web]
    assert all(world.network.pools_of(vm.id) == [] for vm in web)
    # The probe: 5 s × probeThreshold 3 (the newer field wins over numberOfProbes 2).
    assert isinstance(first, InProgress) and first.retry_at == T0 + timedelta(seconds=15)
    # The VMs' NICs and the NICs' rows come from two Resource Graph queries; each NIC is read from
    # ARM before it is updated; the load balancer is read once.
    assert world.count("POST", "microsoft.resourcegraph") == 2
    assert world.count("GET", "/networkinterfaces/") == 3
    assert world.count("GET", "/loadbalancers/lb-web") == 1

    world.clock.set(first.retry_at)
    outcomes = {o.id: o for o in pools.leave_pools(leave([*web, lonely]))}  # type: ignore[union-attr]

    assert len(world.network.nic_puts) == 3  # the poll reads, it does not update again
    # ... and reads Resource Graph only: the rows show the record the updates wrote.
    assert world.count("GET", "/networkinterfaces/") == 3 and world.count("POST", "microsoft.resourcegraph") == 4
    assert (
        outcomes[lonely.id].ok and outcomes[lonely.id].items == [] and outcomes[lonely.id].detail == "no traffic pools"
    )
    config = world.network.ip_configuration(web[0].id)
    assert outcomes[web[0].id].ok and outcomes[web[0].id].detail == "out of 2 pools"
    assert sorted(outcomes[web[0].id].items) == sorted(
        [f"{config}|{world.be_web.lower()}", f"{config}|{world.be_api.lower()}"]
    )
    assert all(parse_item(item) is not None for item in outcomes[web[0].id].items)


def test_a_vm_with_two_nics_gets_one_update_per_nic_and_back_again(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    second = f"{RG}/networkInterfaces/web-1-nic2"
    world.arm.add(
        {
            "id": second,
            "name": "web-1-nic2",
            "type": "Microsoft.Network/networkInterfaces",
            "location": "westeurope",
            "properties": {
                "ipConfigurations": [
                    {
                        "id": f"{second}/ipConfigurations/backend",
                        "name": "backend",
                        "properties": {
                            "privateIPAddress": "10.9.0.4",
                            "primary": True,
                            "applicationGatewayBackendAddressPools": [{"id": world.shop}],
                        },
                    }
                ]
            },
        }
    )
    world.arm.get(vm.id)["properties"]["networkProfile"]["networkInterfaces"].append({"id": second})
    target = dataclasses.replace(vm, traffic_pools=tuple(sorted([world.be_web.lower(), world.shop.lower()])))

    outcomes, _ = until_done(world.clock, lambda: world.pools().leave_pools(leave([target])))

    assert world.network.nic_puts == [world.network.nic_of(vm.id)["id"], second]
    assert sorted(outcomes[0].items) == sorted(
        [
            f"{world.network.ip_configuration(vm.id)}|{world.be_web.lower()}",
            f"{second}/ipConfigurations/backend|{world.shop.lower()}",
        ]
    )
    assert (
        world.arm.get(second)["properties"]["ipConfigurations"][0]["properties"][
            "applicationGatewayBackendAddressPools"
        ]
        == []
    )

    back, _ = until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin([target], {vm.id: outcomes[0].items})))

    assert back[0].items == sorted([world.be_web.lower(), world.shop.lower()]) and len(world.network.nic_puts) == 4
    assert world.arm.get(second)["properties"]["ipConfigurations"][0]["properties"][
        "applicationGatewayBackendAddressPools"
    ] == [{"id": world.shop.lower()}]


def test_a_redelivered_leave_updates_nothing_again_and_reports_the_same_items(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    pools = world.pools()
    command = leave([vm])

    outcomes, polls = until_done(world.clock, lambda: pools.leave_pools(command))
    again = pools.leave_pools(command)  # the same message, delivered once more after it finished

    assert len(world.network.nic_puts) == 1 and len(polls) == 1
    assert isinstance(again, list) and again == outcomes  # same items, same detail, same time


def test_a_worker_that_died_between_the_update_and_the_wait_finds_its_record_on_the_nic(world: World) -> None:
    """The NIC's PatchPilotPools tag is written by the same PUT that removes the references, so a
    redelivery after a crash knows what was removed and since when, and updates nothing."""
    vm = world.vm("web-1", [world.be_web, world.shop])
    command = leave([vm])
    first = world.pools().leave_pools(command)  # this worker dies here: its answer is lost
    assert isinstance(first, InProgress)
    nic = world.network.nic_of(vm.id)
    assert nic["tags"][TAG_POOLS].startswith(f"{command.id}|2026-12-08T22:00:00Z|60|ipconfig1:")

    world.clock.advance(timedelta(seconds=20))
    redelivered = world.pools().leave_pools(command)  # a new worker: only what Azure holds

    # The gateway's connection draining (60 s) is the longest wait: measured from the removal.
    assert isinstance(redelivered, InProgress) and redelivered.retry_at == T0 + timedelta(seconds=60)
    world.clock.set(redelivered.retry_at)
    outcomes = world.pools().leave_pools(command)
    assert isinstance(outcomes, list) and outcomes[0].ok
    config = world.network.ip_configuration(vm.id)
    assert sorted(outcomes[0].items) == sorted([f"{config}|{world.be_web.lower()}", f"{config}|{world.shop.lower()}"])
    assert len(world.network.nic_puts) == 1


def test_the_drain_started_when_the_nics_were_updated_not_when_the_command_was_issued(world: World) -> None:
    """A first delivery that came late does not eat an explicit drain timeout: the service counts
    it from `InProgress.started`, the time this command's NIC update recorded, and a redelivery on
    a new worker (or a poll reading Resource Graph's rows) finds the same time."""
    vm = world.vm("web-1", [world.be_web, world.shop])
    command = leave([vm])  # issued at T0
    world.clock.set(T0 + timedelta(minutes=7))  # the queue delivered it seven minutes late
    first = world.pools().leave_pools(command)
    assert isinstance(first, InProgress) and first.started == T0 + timedelta(minutes=7)

    world.clock.advance(timedelta(seconds=20))
    again = world.pools().leave_pools(command)
    assert isinstance(again, InProgress) and again.started == T0 + timedelta(minutes=7)
    assert len(world.network.nic_puts) == 1


def test_a_poll_resource_graph_has_not_caught_up_with_reads_the_nic_from_arm_and_updates_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = world.vm("web-1", [world.be_web])
    command = leave([vm])
    first = world.pools().leave_pools(command)
    assert isinstance(first, InProgress)
    monkeypatch.setattr(AzureBackendPools, "_indexed", lambda self, nic_ids: {})  # no row indexed yet

    world.clock.set(first.retry_at)
    outcomes = world.pools().leave_pools(command)

    assert isinstance(outcomes, list) and outcomes[0].ok and len(outcomes[0].items) == 1
    assert len(world.network.nic_puts) == 1 and world.count("GET", "/networkinterfaces/") == 2


def test_a_refused_resource_graph_query_fails_naming_the_permission(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    world.arm.deny("Microsoft.ResourceGraph/resources/read")

    outcomes = world.pools().leave_pools(leave([vm]))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert outcomes[0].detail.startswith("Resource Graph refused (needs Microsoft.ResourceGraph/resources/read)")
    assert world.network.nic_puts == []


def test_the_application_gateway_wait_is_its_probe_without_connection_draining(world: World) -> None:
    agw = world.network.add_app_gateway("agw-plain", ["api"], interval=10, unhealthy=4)
    vm = world.vm("api-1", [f"{agw}/backendAddressPools/api"])

    first = world.pools().leave_pools(leave([vm]))

    assert isinstance(first, InProgress) and first.retry_at == T0 + timedelta(seconds=40)


def test_a_pool_no_rule_uses_drains_in_the_default_probe_time(world: World) -> None:
    lb = world.network.add_load_balancer("lb-spare", ["spare"], rule_pools=[])
    vm = world.vm("spare-1", [f"{lb}/backendAddressPools/spare"])

    first = world.pools().leave_pools(leave([vm]))

    assert isinstance(first, InProgress) and first.retry_at == T0 + timedelta(seconds=10)  # 2 × 5 s


def test_only_the_targets_pools_are_left_and_the_nic_keeps_everything_else(world: World) -> None:
    vm = world.vm("web-1", [world.be_web, world.be_api])
    target = dataclasses.replace(vm, traffic_pools=(world.be_web.lower(),))
    nic_before = world.network.nic_of(vm.id)
    tags_before = dict(nic_before.get("tags") or {})

    until_done(world.clock, lambda: world.pools().leave_pools(leave([target])))

    assert world.network.pools_of(vm.id) == [world.be_api.lower()]
    nic = world.network.nic_of(vm.id)
    assert nic["location"] == "westeurope"
    assert nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"].startswith("10.0.")
    assert {k: v for k, v in nic["tags"].items() if k != TAG_POOLS} == tags_before


def test_a_refused_nic_read_fails_naming_the_permission_never_taken_for_drained(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    world.arm.deny("Microsoft.Network/networkInterfaces/read")

    outcomes = world.pools().leave_pools(leave([vm]))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    nic = world.network.nic_of(vm.id)["id"]
    assert outcomes[0].detail.startswith(
        f"NIC {nic} read refused (needs Microsoft.Network/networkInterfaces/read): AuthorizationFailed: The client"
    )
    assert world.network.nic_puts == [] and world.network.pools_of(vm.id) == [world.be_web.lower()]


def test_a_refused_load_balancer_read_fails_before_anything_is_removed(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    world.arm.deny("Microsoft.Network/loadBalancers/read")

    outcomes = world.pools().leave_pools(leave([vm]))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert "read refused (needs Microsoft.Network/loadBalancers/read): AuthorizationFailed" in outcomes[0].detail
    assert world.network.nic_puts == []


def test_a_refused_nic_update_fails_naming_the_permission(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    world.arm.deny("Microsoft.Network/networkInterfaces/write")

    outcomes = world.pools().leave_pools(leave([vm]))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert "update refused (needs Microsoft.Network/networkInterfaces/write): AuthorizationFailed" in outcomes[0].detail


def test_standby_does_nothing_for_a_flexible_scale_set_member_without_pools(world: World) -> None:
    vm = world.vm("vmss-web-1", [], scale_set="vmss-web")
    member = dataclasses.replace(vm, scaling_group="vmss-web")

    outcomes = world.pools().leave_pools(leave([member], standby=True))

    assert isinstance(outcomes, list) and outcomes[0].ok and outcomes[0].items == []
    assert outcomes[0].detail == "no traffic pools; a Flexible scale set has no Standby on Azure: nothing to do"
    assert world.arm.calls == []


# ---------------------------------------------------------------- rejoin


def _left(world: World, targets: list[Instance]) -> dict[str, list[str]]:
    outcomes, _ = until_done(world.clock, lambda: world.pools().leave_pools(leave(targets)))
    assert all(o.ok for o in outcomes)
    return {o.id: o.items for o in outcomes}


def test_rejoin_puts_back_exactly_what_was_removed_once_per_nic(world: World) -> None:
    web = [world.vm(f"web-{n}", [world.be_web, world.shop]) for n in range(2)]
    registrations = _left(world, web)
    updates = len(world.network.nic_puts)

    outcomes, _ = until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin(web, registrations)))

    assert len(world.network.nic_puts) == updates + 2  # one per NIC
    assert all(world.network.pools_of(vm.id) == sorted([world.be_web.lower(), world.shop.lower()]) for vm in web)
    assert all(o.ok and o.detail == "back in 2 pools" for o in outcomes)
    assert outcomes[0].items == sorted([world.be_web.lower(), world.shop.lower()])
    # The NIC records that this command put them back (its later executions still name them).
    assert all(world.network.nic_of(vm.id)["tags"][TAG_POOLS].startswith(f"{RUN}:w1:rejoin|") for vm in web)


def test_rejoin_of_a_machine_already_in_updates_nothing_and_names_no_pool(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    registrations = _left(world, [vm])
    until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin([vm], registrations)))
    updates = len(world.network.nic_puts)

    again, _ = until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin([vm], registrations, n=2)))

    assert len(world.network.nic_puts) == updates
    assert again[0].ok and again[0].items == [] and again[0].detail == "already in its pools"


def test_the_run_end_sweep_re_adds_only_what_is_out_and_names_it(world: World) -> None:
    """The sweep covers every machine the run drained: one was re-added already, one was left out
    by a crash; only the second is updated, and only its outcome names pools."""
    back, out = world.vm("web-1", [world.be_web]), world.vm("web-2", [world.be_web, world.shop])
    registrations = _left(world, [back, out])
    until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin([back], registrations)))
    updates = len(world.network.nic_puts)

    swept, _ = until_done(
        world, lambda: world.pools().rejoin_pools(rejoin([back, out], registrations, n=99, at_run_end=True))
    )

    assert len(world.network.nic_puts) == updates + 1
    by_id = {o.id: o for o in swept}
    assert by_id[back.id].items == []
    assert by_id[out.id].items == sorted([world.be_web.lower(), world.shop.lower()])
    assert world.network.pools_of(out.id) == sorted([world.be_web.lower(), world.shop.lower()])


def test_without_registrations_the_sweep_reads_what_the_nics_record(world: World) -> None:
    """A run that crashed before it kept the LeavePools result: the NIC's tag says what was removed."""
    vm = world.vm("web-1", [world.be_web, world.be_api])
    world.pools().leave_pools(leave([vm]))  # removed, then the worker died: no result kept

    swept, _ = until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin([vm], {}, at_run_end=True)))

    assert swept[0].ok and swept[0].items == sorted([world.be_api.lower(), world.be_web.lower()])
    assert world.network.pools_of(vm.id) == sorted([world.be_api.lower(), world.be_web.lower()])


def test_a_refused_join_fails_naming_the_permission_and_leaves_the_machine_out(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    registrations = _left(world, [vm])
    world.arm.deny("Microsoft.Network/networkInterfaces/write")

    outcomes = world.pools().rejoin_pools(rejoin([vm], registrations))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert "Microsoft.Network/networkInterfaces/write" in outcomes[0].detail
    assert world.network.pools_of(vm.id) == []


def test_a_pool_the_identity_may_not_join_is_a_failure_naming_the_join_action(world: World) -> None:
    """ARM checks the linked pools of a NIC update: leaving needs no join, rejoining does."""
    vm = world.vm("web-1", [world.be_web])
    world.arm.deny("Microsoft.Network/loadBalancers/backendAddressPools/join/action")
    registrations = _left(world, [vm])

    outcomes = world.pools().rejoin_pools(rejoin([vm], registrations))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert "Microsoft.Network/loadBalancers/backendAddressPools/join/action" in outcomes[0].detail
    assert "LinkedAuthorizationFailed" in outcomes[0].detail


# ---------------------------------------------------------------- pool health


def test_pool_health_waits_for_the_load_balancer_rule_to_report_the_machine_up(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    registrations = _left(world, [vm])
    config = world.network.ip_configuration(vm.id)
    world.network.lb_down.add(config.lower())
    pools = world.pools()
    command = rejoin([vm], registrations, pool_health=True, issued_at=world.clock.now())

    first = pools.rejoin_pools(command)

    assert isinstance(first, InProgress)
    assert "load balancer lb-web rule rule-be-web: Down (Down_Probe_Failure)" in first.note
    world.network.lb_down.clear()
    world.clock.set(first.retry_at)
    outcomes = pools.rejoin_pools(command)
    assert isinstance(outcomes, list) and outcomes[0].ok
    assert outcomes[0].detail == "back in 1 pool; load balancer lb-web probe Up"
    assert outcomes[0].items == [world.be_web.lower()]  # re-added on the first execution, named once it passed
    assert len(world.network.nic_puts) == 2  # one out, one back in: the poll read Resource Graph, not the NIC
    assert world.count("GET", "/networkinterfaces/") == 2
    assert world.count("POST", "/loadbalancingrules/rule-be-web/health") == 2  # one per execution, not per VM


def test_an_unhealthy_application_gateway_backend_is_in_progress_with_the_reason(world: World) -> None:
    vm = world.vm("shop-1", [world.shop])
    registrations = _left(world, [vm])
    config = world.network.ip_configuration(vm.id)
    world.network.agw_health[config.lower()] = "Unhealthy"
    command = rejoin([vm], registrations, pool_health=True, issued_at=world.clock.now())

    first = world.pools().rejoin_pools(command)

    assert isinstance(first, InProgress)
    ip = world.network.nic_of(vm.id)["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    assert f"Application Gateway agw-shop reports {ip} Unhealthy in pool shop: Received invalid status code: 503" in (
        first.note
    )
    world.network.agw_health[config.lower()] = "Up"  # the specification's word for it
    world.clock.set(first.retry_at)
    outcomes = world.pools().rejoin_pools(command)
    assert isinstance(outcomes, list) and outcomes[0].ok
    assert outcomes[0].detail == "back in 1 pool; Application Gateway agw-shop reports it Up"
    assert world.count("POST", "/applicationgateways/agw-shop/backendhealth") == 2


def test_a_broken_machine_never_reports_healthy_to_its_pool(world: World) -> None:
    vm = world.vm("web-1", [world.be_web], power="stopped")
    registrations = {vm.id: [f"{world.network.ip_configuration(vm.id)}|{world.be_web}"]}

    progress = world.pools().rejoin_pools(rejoin([vm], registrations, pool_health=True))

    assert isinstance(progress, InProgress) and "Down" in progress.note


def test_a_refused_backend_health_read_fails_naming_the_permission(world: World) -> None:
    vm = world.vm("shop-1", [world.shop])
    registrations = _left(world, [vm])
    world.arm.deny("Microsoft.Network/applicationGateways/backendhealth/action")

    outcomes = world.pools().rejoin_pools(rejoin([vm], registrations, pool_health=True))

    assert isinstance(outcomes, list) and not outcomes[0].ok
    assert outcomes[0].detail.startswith(
        "back in 1 pool; Application Gateway agw-shop backend health refused "
        "(needs Microsoft.Network/applicationGateways/backendhealth/action): AuthorizationFailed"
    )


def test_where_the_rule_health_is_not_offered_the_probe_time_is_waited_and_said(world: World) -> None:
    vm = world.vm("web-1", [world.be_web])
    registrations = _left(world, [vm])
    world.arm.on(  # as for a Basic load balancer: the operation is not offered
        "POST",
        r".*/loadBalancingRules/[^/]+/health",
        lambda request: (_ for _ in ()).throw(
            __import__("fake_arm").ArmError(400, "OperationNotSupported", "not supported for Basic SKU")
        ),
    )
    command = rejoin([vm], registrations, pool_health=True, issued_at=world.clock.now())

    outcomes, polls = until_done(world.clock, lambda: world.pools().rejoin_pools(command))

    assert [p.note for p in polls] == ["pool health: 0/1 done; probe status not readable: waiting 15 s"]
    assert outcomes[0].ok and outcomes[0].detail == "back in 1 pool; probe status not readable: waited 15 s"


# ---------------------------------------------------------------- the role


def test_the_fleet_role_holds_every_action_leave_rejoin_and_pool_health_use(world: World) -> None:
    web = world.vm("web-1", [world.be_web, world.shop])
    registrations = _left(world, [web])
    until_done(world.clock, lambda: world.pools().rejoin_pools(rejoin([web], registrations, pool_health=True)))

    called = {arm_action(c.method, c.path) for c in world.arm.calls if not c.path.startswith("/fake/")}
    assert {
        "microsoft.network/networkinterfaces/read",
        "microsoft.network/networkinterfaces/write",
        "microsoft.network/loadbalancers/read",
        "microsoft.network/applicationgateways/read",
        "microsoft.network/loadbalancers/loadbalancingrules/health/action",
        "microsoft.network/applicationgateways/backendhealth/action",
    } <= called
    assert called - fleet_role_actions() == set()
    # Held to the REST specification (tests/arm_spec.py): every request and answer of the flow.
    check = world.arm.spec_check
    assert check is not None and check.refused == [] and check.problems == []  # type: ignore[attr-defined]
    assert {
        "NetworkInterfaces_Get",
        "NetworkInterfaces_CreateOrUpdate",
        "LoadBalancers_Get",
        "ApplicationGateways_Get",
        "LoadBalancerLoadBalancingRules_Health",
        "ApplicationGateways_BackendHealth",
    } <= set(check.seen)  # type: ignore[attr-defined]
    # ARM's linked access checks: re-adding a reference needs the pools' join actions too.
    assert {
        "microsoft.network/loadbalancers/backendaddresspools/join/action",
        "microsoft.network/applicationgateways/backendaddresspools/join/action",
    } <= fleet_role_actions()
