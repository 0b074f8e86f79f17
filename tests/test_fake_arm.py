"""The fake Azure Resource Manager (tests/fake_arm.py) behaves as the real SDK clients expect:
long-running operations polled to completion on the test's clock (install and assess patches,
with Azure-AsyncOperation or Location only), failures raised as the SDK raises them, throttling
answered with 429 and Retry-After and retried by azure-core, every request counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from clocks import ManualClock
from fake_arm import FakeArm, Request, Response

SUB = "00000000-0000-0000-0000-000000000001"
VM = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
ACTION = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/virtualMachines/[^/]+/{}"


def world() -> tuple[FakeArm, ManualClock, ComputeManagementClient]:
    clock = ManualClock(datetime(2026, 12, 8, 22, 0, tzinfo=UTC))
    arm = FakeArm(clock)
    arm.add({"id": VM, "name": "vm1", "type": "Microsoft.Compute/virtualMachines", "location": "westeurope"})
    client = arm.client(ComputeManagementClient, SUB, retry_backoff_factor=0)
    return arm, clock, client


def test_an_install_is_polled_to_completion_once_its_time_has_come() -> None:
    arm, clock, _ = world()
    result = {"status": "Succeeded", "installedPatchCount": 2, "failedPatchCount": 0}

    def install(request: Request) -> Response:
        assert request.body == {"maximumDuration": "PT2H", "rebootSetting": "IfRequired"}
        return arm.accepted("westeurope", timedelta(minutes=30), result=result)

    arm.on("POST", ACTION.format("installPatches"), install)
    slow = arm.client(ComputeManagementClient, SUB, polling_interval=0.01)  # polls in its own thread
    poller = slow.virtual_machines.begin_install_patches(
        "rg", "vm1", {"maximumDuration": "PT2H", "rebootSetting": "IfRequired"}
    )
    poller.wait(0.2)
    assert not poller.done() and poller.status() == "InProgress"
    (operation,) = arm.operations.values()
    assert operation.polls > 1
    clock.advance(timedelta(minutes=30))
    done = poller.result(timeout=10)
    assert (done.status, done.installed_patch_count) == ("Succeeded", 2)
    assert (
        arm.count()[
            "POST /subscriptions/{}/resourcegroups/{}/providers/microsoft.compute/virtualmachines/{}/installpatches"
        ]
        == 1
    )


def test_an_assessment_with_a_location_header_only_is_polled_there() -> None:
    arm, clock, client = world()
    result = {"status": "Succeeded", "rebootPending": True, "criticalAndSecurityPatchCount": 3, "otherPatchCount": 1}
    arm.on(
        "POST",
        ACTION.format("assessPatches"),
        lambda request: arm.accepted("westeurope", timedelta(minutes=5), result=result, location_only=True),
    )
    poller = client.virtual_machines.begin_assess_patches("rg", "vm1")
    clock.advance(timedelta(minutes=5))
    assessed = poller.result()
    assert (assessed.reboot_pending, assessed.critical_and_security_patch_count) == (True, 3)
    polled = [c.path for c in arm.calls if c.method == "GET"]
    assert polled and all(path.startswith("/fake/results/") for path in polled)  # Location, not an operation


def test_a_failed_operation_raises_with_its_error_code() -> None:
    arm, _, client = world()
    arm.on(
        "POST",
        ACTION.format("installPatches"),
        lambda request: arm.accepted("westeurope", error=("PatchInstallFailed", "the VM agent is not ready")),
    )
    with pytest.raises(HttpResponseError, match="PatchInstallFailed"):
        client.virtual_machines.begin_install_patches("rg", "vm1", {"rebootSetting": "Never"}).result()


def test_throttling_is_answered_with_retry_after_and_retried_by_the_sdk() -> None:
    arm, _, client = world()
    arm.throttle(r".*/virtualMachines/vm1", times=2)
    assert client.virtual_machines.get("rg", "vm1").name == "vm1"
    assert [c.status for c in arm.calls] == [429, 429, 200]


def test_an_unknown_resource_is_a_404_in_arms_error_shape() -> None:
    _, _, client = world()
    with pytest.raises(ResourceNotFoundError, match="ResourceNotFound"):
        client.virtual_machines.get("rg", "nope")
