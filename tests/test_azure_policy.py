"""The policy's azure section as the planner and the engine read it: Arc servers (no managed
disks, so no snapshot) and data disk restores."""

from __future__ import annotations

from typing import Any

from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy.model import Policy, is_arc_server

ARC = "/subscriptions/s1/resourceGroups/edge/providers/Microsoft.HybridCompute/machines/shop-7"
VM = "/subscriptions/s1/resourceGroups/app/providers/Microsoft.Compute/virtualMachines/web-1"


def policy(**azure: Any) -> Policy:
    document: dict[str, Any] = {"name": "p", "rings": [{"name": "all", "select": {"clouds": ["azure", "aws"]}}]}
    if azure:
        document["azure"] = azure
    return Policy.model_validate(document)


def machine(resource_id: str) -> Instance:
    return Instance(id=resource_id, cloud="azure", region="westeurope", os="linux")


def test_arc_servers_are_planned_only_when_the_policy_patches_them_without_rollback() -> None:
    fleet = [machine(ARC), machine(VM)]
    cautious = plan(policy(), fleet)
    assert [w.ids for w in cautious.waves] == [[VM]]
    (excluded,) = cautious.excluded
    assert excluded.instance.id == ARC and "no snapshot, so no rollback" in excluded.reason
    assert "azure.patch_without_rollback" in excluded.reason
    bold = plan(policy(patch_without_rollback=True), fleet)
    assert sorted(i for w in bold.waves for i in w.ids) == sorted([ARC, VM]) and not bold.excluded


def test_only_hybrid_compute_machines_are_arc_servers() -> None:
    assert is_arc_server(machine(ARC.lower()))
    assert not is_arc_server(machine(VM))
    assert not is_arc_server(Instance(id="i-0abc", cloud="aws", region="us-east-1", os="linux"))


def test_data_volumes_are_restored_per_cloud_setting() -> None:
    azure_only = policy(restore_data_disks=True)
    assert azure_only.restores_data_volumes({"azure"})
    assert not azure_only.restores_data_volumes({"aws"})
    assert not policy().restores_data_volumes({"azure", "aws"})
    both = Policy.model_validate({**azure_only.model_dump(), "aws": {"restore_data_volumes": True}})
    assert both.restores_data_volumes({"aws"})
