"""Benchmark: the AWS API calls of the compliance report and the maintenance watch, 500 instances.

`Ec2SsmFleet` reads a fleet of 500 managed instances in one region, 10% of them lacking patches:
the compliance Scan is started (`start_assessment`), then, once it has ended, the patch states
are read (`patch_states`) and the maintenance watch runs (`upcoming_maintenance`, RDS and Health
on). The fleet runs Amazon Linux 2, so the missing patches' release dates are looked up in the
SSM patch catalogue (DescribeAvailablePatches). Systems Manager is the stateful fake of
tests/fake_aws.py (Scans, the patch state counts and the patch catalogue included); EC2 and
RDS's DescribeDBInstances/DescribeDBClusters are moto; RDS pending maintenance and AWS Health
answer the payloads recorded in tests/events/aws/ (moto has neither).

Every API call of the fleet's clients is counted by a botocore `before-call` hook. The target:
`patch_states` + `upcoming_maintenance` cost at most 0.2 calls per instance at 10% non-compliant
(one DescribeInstancePatchStates per 50 instances, one DescribeInstancePatches per non-compliant
instance, one DescribeAvailablePatches per 20 distinct missing patches, a handful of calls per
region for the watch). Figures go to bench/results/aws_compliance.json.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import boto3  # noqa: E402
from aws_payloads import recorded  # noqa: E402
from clocks import ManualClock  # noqa: E402
from fake_aws import Clients, FleetServices, Patch, moto_image, serve  # noqa: E402
from moto_support import aws  # noqa: E402
from results_file import write_results  # noqa: E402

from patchpilot.adapters.aws.fleet import Ec2SsmFleet  # noqa: E402
from patchpilot.inventory import Instance  # noqa: E402
from patchpilot.policy import parse_policy  # noqa: E402

INSTANCES = 500
NON_COMPLIANT = 0.10
REGION = "eu-west-1"
TARGET = 0.2  # calls per instance of patch_states + upcoming_maintenance
START = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
POLICY = f"""
name: web
rings: [{{name: all, select: {{tags: {{Team: web}}}}}}]
aws: {{regions: [{REGION}]}}
maintenance_watch: {{rds: true, health: true}}
"""


def setup(clock: ManualClock) -> tuple[Ec2SsmFleet, Clients, FleetServices, list[Instance]]:
    services = FleetServices(clock, REGION)
    released = START - timedelta(days=6)
    patches = [  # DescribeInstancePatches titles of Amazon Linux 2: <name>.<arch>:<epoch>:<version>-<release>
        Patch("kernel.x86_64", "linux", released, "kernel.x86_64:0:5.10.245-241.976.amzn2", severity="Important"),
        Patch(
            "openssl-libs.x86_64", "linux", released, "openssl-libs.x86_64:1:1.0.2k-24.amzn2.0.16", severity="Critical"
        ),
    ]
    services.release(*patches)
    ec2 = boto3.client("ec2", region_name=REGION)
    answer = ec2.run_instances(ImageId=moto_image(REGION, "linux"), MinCount=INSTANCES, MaxCount=INSTANCES)
    fleet_instances = []
    behind = int(INSTANCES * NON_COMPLIANT)
    for n, raw in enumerate(answer["Instances"]):
        instance_id = raw["InstanceId"]
        services.manage(instance_id, "linux")
        if n >= behind:  # up to date: both patches installed last month
            services.machines[instance_id].installed.extend((p.id, released) for p in patches)
        fleet_instances.append(Instance(id=instance_id, cloud="aws", region=REGION, os="linux"))
    clients = Clients(services)
    rds = clients("rds", None, REGION)
    serve(
        rds,
        {
            "DescribePendingMaintenanceActions": lambda _: recorded(
                rds, "DescribePendingMaintenanceActions", "rds_describe_pending_maintenance_actions"
            )
        },
    )
    health = clients("health", None, "us-east-1")
    serve(
        health,
        {
            "DescribeEvents": lambda _: recorded(health, "DescribeEvents", "health_describe_events"),
            "DescribeAffectedEntities": lambda _: recorded(
                health, "DescribeAffectedEntities", "health_describe_affected_entities"
            ),
        },
    )
    return Ec2SsmFleet(clients, clock, default_region=REGION), clients, services, fleet_instances


def counted(clients: Clients) -> Counter[tuple[str, str]]:
    counts = clients.counts()
    clients.calls.clear()
    return counts


def main() -> None:
    clock = ManualClock(START)
    policy = parse_policy(POLICY)
    began = time.perf_counter()
    with aws():
        fleet, clients, _, instances = setup(clock)
        counted(clients)  # the setup's own calls
        started = fleet.start_assessment(instances, "compliance:web:2026-12-02T05:00")
        scan = counted(clients)
        clock.advance(timedelta(minutes=10))
        states = fleet.patch_states(instances)
        compliance = counted(clients)
        result = fleet.upcoming_maintenance(policy, instances, clock.now())
        maintenance = counted(clients)
    seconds = time.perf_counter() - began
    missing = sum(1 for s in states if s.missing)
    undated = sum(1 for s in states for p in s.missing if p.released_at is None)
    unknown = sum(1 for s in states if s.error)
    read = compliance + maintenance
    per_instance = sum(read.values()) / INSTANCES

    print(f"{INSTANCES} instances, {missing} non-compliant, {unknown} unknown; scans started on {started.started}")
    print(f"missing patches without a release date: {undated}")
    print(f"watch: {len(result.items)} items, {len(result.unavailable)} sources unavailable")
    print(f"\n{'step':<22}{'service':<10}{'operation':<38}{'calls':>7}{'per instance':>14}")
    for step, counts in (
        ("start_assessment", scan),
        ("patch_states", compliance),
        ("upcoming_maintenance", maintenance),
    ):
        for (service, operation), n in sorted(counts.items()):
            print(f"{step:<22}{service:<10}{operation:<38}{n:>7}{n / INSTANCES:>14.3f}")
    print(f"\npatch_states + upcoming_maintenance: {sum(read.values())} calls, {per_instance:.3f} per instance")
    print(f"(target <= {TARGET:g}); wall time {seconds:.1f} s")

    def table(counts: Counter[tuple[str, str]]) -> dict[str, int]:
        return {f"{service}:{operation}": n for (service, operation), n in sorted(counts.items())}

    figures: dict[str, Any] = {
        "instances": INSTANCES,
        "non_compliant": missing,
        "unknown": unknown,
        "missing_patches_undated": undated,
        "scans_started": started.started,
        "watch_items": len(result.items),
        "watch_unavailable": len(result.unavailable),
        "calls_start_assessment": table(scan),
        "calls_patch_states": table(compliance),
        "calls_upcoming_maintenance": table(maintenance),
        "calls_per_instance_patch_states_and_watch": round(per_instance, 3),
        "target_calls_per_instance": TARGET,
        "seconds": round(seconds, 1),
    }
    write_results(
        "aws_compliance",
        "AWS API calls of the compliance report and the maintenance watch, 500 instances, 10% non-compliant",
        figures,
    )
    if missing != int(INSTANCES * NON_COMPLIANT) or unknown or undated or result.unavailable or per_instance > TARGET:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
