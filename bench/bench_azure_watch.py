"""Benchmark: the Azure Resource Manager requests of a compliance read and a maintenance watch
over 500 VMs.

The Azure fleet adapter (`AzureFleet`, with the real azure-mgmt clients) reads `patch_states`
and `upcoming_maintenance` for 500 VMs in five resource groups, each assessed (four to six missing
patches per VM, so the per-patch rows take several Resource Graph pages), 30 of them with a
Maintenance RP update and 60 named by a Service Health planned maintenance event. Behind the
clients' HTTP transport is the fake ARM of tests/fake_arm.py with the Compute and Resource Graph
model of tests/fake_azure_compute.py and tests/fake_azure_assessment.py. Every ARM request is
counted, paging included. Target: at most TARGET_PER_VM requests per VM for both reads together
(they are Resource Graph queries, never a request per VM). Figures go to
bench/results/azure_watch.json.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from clocks import ManualClock  # noqa: E402
from fake_arm import FakeArm  # noqa: E402
from fake_azure_assessment import FakeAzureAssessment  # noqa: E402
from fake_azure_compute import SUB, FakeAzureCompute, Patch  # noqa: E402
from results_file import write_results  # noqa: E402

from patchpilot.adapters.azure.clients import AzureClients  # noqa: E402
from patchpilot.adapters.azure.fleet import AzureFleet  # noqa: E402
from patchpilot.inventory import Instance  # noqa: E402
from patchpilot.policy import parse_policy  # noqa: E402

VMS = 500
RESOURCE_GROUPS = ("rg-web", "rg-api", "rg-batch", "rg-data", "rg-edge")
TARGET_PER_VM = 0.1
NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
POLICY = parse_policy(
    """
name: weu-monthly
rings:
  - {name: production, select: {tags: {Environment: production}}}
azure: {subscriptions: [00000000-0000-0000-0000-000000000001]}
"""
)
LINUX = [
    Patch("openssl", "Security", version="3.0.13-1", severity="Important"),
    Patch("kernel", "Critical", version="6.1.90-1"),
    Patch("curl", "Security", version="8.5.0-2"),
    Patch("vim", "Other", version="9.1-1"),
]
WINDOWS = [
    Patch("2026-12 Cumulative Update", "Security", kb="5034441", severity="Critical", published="2026-11-10T18:00:00Z"),
    Patch("2026-12 .NET Update", "Security", kb="5034442", severity="Important", published="2026-11-10T18:00:00Z"),
    Patch("Defender definitions", "Definition", kb="2267602"),
    Patch("Servicing stack update", "Critical", kb="5034440", severity="Critical"),
    Patch("Malicious Software Removal Tool", "UpdateRollup", kb="890830"),
    Patch("Edge update", "Updates", kb="5034443"),
]


def main() -> None:
    clock = ManualClock(NOW)
    arm = FakeArm(clock)
    azure = FakeAzureCompute(arm)
    platform = FakeAzureAssessment(azure)
    instances: list[Instance] = []
    for n in range(VMS):
        windows = n % 10 in (3, 7, 9)
        vm = azure.add_vm(
            f"vm-{n:03d}",
            rg=RESOURCE_GROUPS[n % len(RESOURCE_GROUPS)],
            os="Windows" if windows else "Linux",
            available=WINDOWS if windows else LINUX,
        )
        platform.seed(vm, NOW - timedelta(hours=n % 24))
        if n % 17 == 0:
            platform.add_update(vm, impact="Freeze" if n % 2 else "Restart", not_before=NOW + timedelta(days=n % 9))
        instances.append(
            Instance(id=vm, cloud="azure", region="westeurope", os="windows" if windows else "linux", account=SUB)
        )
    platform.add_planned_event(
        "PYN_-ZL8", NOW + timedelta(days=4), NOW + timedelta(days=4, hours=8), [i.id for i in instances[::8]]
    )
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    fleet = AzureFleet(clients, clock)

    began = time.perf_counter()
    states = fleet.patch_states(instances)
    compliance = len(arm.calls)
    watch = fleet.upcoming_maintenance(POLICY, instances, NOW)
    seconds = time.perf_counter() - began
    maintenance = len(arm.calls) - compliance
    total = len(arm.calls)
    per_vm = total / VMS
    missing = sum(len(s.missing) for s in states)
    unknown = sum(1 for s in states if s.error)
    counts = arm.count()

    print(f"{VMS} VMs: {missing} missing patches read, {unknown} unknown; {len(watch.items)} maintenance items")
    for operation, n in sorted(counts.items()):
        print(f"  {operation:<60}{n:>6}")
    print(f"patch_states: {compliance} ARM requests ({compliance / VMS:.3f} per VM)")
    print(f"upcoming_maintenance: {maintenance} ARM requests ({maintenance / VMS:.3f} per VM)")
    print(f"both: {total} ARM requests, {per_vm:.3f} per VM (target <= {TARGET_PER_VM:g}); wall time {seconds:.1f} s")

    figures = {
        "vms": VMS,
        "missing_patches": missing,
        "unknown": unknown,
        "maintenance_items": len(watch.items),
        "unavailable": len(watch.unavailable),
        "seconds": round(seconds, 1),
        "requests": dict(sorted(counts.items())),
        "patch_states_requests": compliance,
        "upcoming_maintenance_requests": maintenance,
        "all_requests": total,
        "requests_per_vm": round(per_vm, 4),
        "target_requests_per_vm": TARGET_PER_VM,
    }
    write_results("azure_watch", "Azure ARM requests of patch_states + upcoming_maintenance over 500 VMs", figures)
    if unknown or watch.unavailable or per_vm > TARGET_PER_VM:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
