"""The TrafficPools port on each runtime with its backend, for the contract test
(tests/test_traffic_contract.py, whose `traffic_runtime` fixture makes one per test):

- `simulated`: `SimulatedFleet` on one SQLite file, its membership read back from the file;
- `elbv2`: `Elbv2Traffic` on moto (EC2, ELBv2), target health read from moto; a botocore Stubber on
  ELBv2 where a target must stay `draining` (moto has none);
- `azure`: `AzureBackendPools` through the real azure-mgmt-network client on the fake ARM
  (`World`), the pools read from the fake's NICs.

Each `pools()` call makes a fresh adapter on the same backend, as another process (a worker that
took the redelivered message) would have. Also the setup helpers tests/test_aws_traffic.py and
tests/test_azure_traffic.py share with the contract test.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.stub import Stubber
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import SUB, FakeAzureCompute
from fake_azure_network import FakeAzureNetwork
from test_aws_fleet import REGION, Harness, fake, launch, register, target_group

from patchpilot.adapters.aws.traffic import Elbv2Traffic
from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.traffic import AzureBackendPools
from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.engine.messages import Outcome
from patchpilot.inventory import Instance, Simulation
from patchpilot.ports import InProgress, Progress, TrafficPools

# ---------------------------------------------------------------- polling


def until_done(
    clock: ManualClock, call: Callable[[], Progress], limit: int = 50
) -> tuple[list[Outcome], list[InProgress]]:
    """Call until it answers outcomes, moving the clock to each retry_at, as the queue redelivers
    the command: (outcomes, the polls)."""
    polls: list[InProgress] = []
    for _ in range(limit):
        progress = call()
        if not isinstance(progress, InProgress):
            return progress, polls
        assert progress.retry_at > clock.now(), progress
        polls.append(progress)
        clock.set(progress.retry_at)
    raise AssertionError(f"still in progress after {limit} calls")


# ---------------------------------------------------------------- AWS (moto, Stubber)


def pooled(instances: list[Instance], *arns: str) -> list[Instance]:
    """The machines as discovery gives them, in these target groups."""
    return [Instance(**{**aws_fields(i), "traffic_pools": tuple(sorted(arns))}) for i in instances]


def aws_fields(instance: Instance) -> dict[str, Any]:
    """An AWS machine's own fields (no pools, no scaling group), to build a variant of it."""
    return {"id": instance.id, "cloud": "aws", "region": instance.region, "os": instance.os, "zone": instance.zone}


def registered(arn: str) -> dict[str, int]:
    """The target group's registrations as moto lists them: target id -> port."""
    answer = boto3.client("elbv2", region_name=REGION).describe_target_health(TargetGroupArn=arn)
    return {d["Target"]["Id"]: d["Target"]["Port"] for d in answer["TargetHealthDescriptions"]}


def stubbed_arn(name: str) -> str:
    """A target group ARN for a Stubber's answers (no such group in moto)."""
    return f"arn:aws:elasticloadbalancing:{REGION}:123456789012:targetgroup/{name}/0123456789abcdef"


def stubbed_elbv2(harness: Harness) -> Stubber:
    """The harness's ELBv2 client behind an active Stubber: every call must be expected."""
    stubber = Stubber(harness("elbv2", None, REGION))
    stubber.activate()
    return stubber


def health(instance_id: str, state: str, port: int = 80, reason: str = "", description: str = "") -> dict[str, Any]:
    """One TargetHealthDescription as DescribeTargetHealth answers it."""
    target_health: dict[str, Any] = {"State": state}
    if reason:
        target_health["Reason"] = reason
    if description:
        target_health["Description"] = description
    return {"Target": {"Id": instance_id, "Port": port}, "HealthCheckPort": str(port), "TargetHealth": target_health}


def expect_groups(stub: Stubber, *arns: str) -> None:
    """One DescribeTargetGroups for these ARNs (in the order asked): instance target groups on port 80."""
    groups = [
        {
            "TargetGroupArn": arn,
            "TargetGroupName": arn.split(":targetgroup/", 1)[1].split("/", 1)[0],
            "TargetType": "instance",
            "Port": 80,
            "VpcId": "vpc-1",
        }
        for arn in arns
    ]
    stub.add_response("describe_target_groups", {"TargetGroups": groups}, {"TargetGroupArns": list(arns)})


def expect_health(stub: Stubber, described: list[dict[str, Any]], arn: str) -> None:
    stub.add_response("describe_target_health", {"TargetHealthDescriptions": described}, {"TargetGroupArn": arn})


# ---------------------------------------------------------------- Azure (the fake ARM)

AZURE_T0 = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)


class World:
    """The fake ARM with compute and networking: load balancer lb-web (pools be-web and be-api,
    probe 5 s × threshold 3) and Application Gateway agw-shop (pool shop, connection draining 60 s)."""

    def __init__(self, start: datetime = AZURE_T0) -> None:
        self.clock = ManualClock(start)
        self.arm = FakeArm(self.clock)
        self.azure = FakeAzureCompute(self.arm)
        self.network = FakeAzureNetwork(self.arm, self.azure)
        self.lb = self.network.add_load_balancer("lb-web", ["be-web", "be-api"], interval=5, probes=2, threshold=3)
        self.agw = self.network.add_app_gateway("agw-shop", ["shop"], draining=60)
        self.be_web = f"{self.lb}/backendAddressPools/be-web"
        self.be_api = f"{self.lb}/backendAddressPools/be-api"
        self.shop = f"{self.agw}/backendAddressPools/shop"

    def pools(self) -> AzureBackendPools:
        """A fresh adapter with its own clients."""
        clients = AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )
        return AzureBackendPools(clients, self.clock)

    def vm(self, name: str, pools: list[str], **state: Any) -> Instance:
        """A VM whose NIC is in these backend pools, as discovery gives it."""
        vm_id = self.azure.add_vm(name, pools=pools, **state)
        resource = self.arm.get(vm_id)
        return Instance(
            id=vm_id,
            cloud="azure",
            region=resource["location"],
            os="linux",
            name=name,
            account=SUB,
            traffic_pools=tuple(sorted(p.lower() for p in pools)),
        )

    def count(self, method: str, contains: str) -> int:
        return sum(1 for c in self.arm.calls if c.method == method and contains.lower() in c.path and c.status < 400)


# ---------------------------------------------------------------- the runtimes


class TrafficRuntime(Protocol):
    """One implementation of TrafficPools with its backend, as the contract test sees it."""

    name: str
    clock: ManualClock

    def pools(self) -> TrafficPools:
        """A fresh adapter on the runtime's backend."""

    def machines(self, count: int) -> list[Instance]:
        """`count` machines, each serving in two pools."""

    def pools_in(self, machine: Instance) -> set[str]:
        """Which of the machine's `traffic_pools` it is in, as the backend says."""

    def writes(self) -> list[str]:
        """Every change the adapters made to the pools so far (write calls, or stored rows)."""

    def pools_named(self, items: list[str]) -> set[str]:
        """The pools a RejoinPools outcome's items name."""

    def one_still_draining(self) -> tuple[Instance, Instance]:
        """Two machines in two pools each, and the backend set so that when they leave, the first
        drains and the second is still draining afterwards."""


class SimulatedRuntime:
    name = "simulated"

    def __init__(self, db: Path) -> None:
        self.clock = ManualClock(datetime(2026, 12, 1, 22, 0, tzinfo=UTC))
        self.db = db
        self.made: list[SimulatedFleet] = []
        self.named = 0

    def pools(self) -> SimulatedFleet:
        self.made.append(SimulatedFleet(self.db, self.clock))
        return self.made[-1]

    def machines(self, count: int, **hints: Any) -> list[Instance]:
        self.named += count
        return [
            Instance(
                id=f"i-{self.named - count + n + 1:04d}",
                cloud="aws",
                region="r",
                os="linux",
                traffic_pools=("pool/api", "pool/web"),
                simulation=Simulation(**hints) if hints else None,
            )
            for n in range(count)
        ]

    def _rows(self, sql: str, *args: str) -> list[tuple[Any, ...]]:
        self.pools()  # makes the schema
        with sqlite3.connect(self.db) as db:
            return db.execute(sql, args).fetchall()

    def pools_in(self, machine: Instance) -> set[str]:
        out = self._rows(
            "SELECT name FROM sim_pool_members WHERE kind = 'pool' AND instance_id = ? AND serving = 0", machine.id
        )
        left = {str(name) for (name,) in out}
        assert (machine.id in self.pools().pools.out_of_service()) == bool(left)  # the simulation's own view
        return set(machine.traffic_pools) - left

    def writes(self) -> list[str]:
        """The membership rows (and the outages they record); not the record each command id
        keeps of its first execution (`sim_pool_ops`), which a redelivery cannot add to."""
        tables = ("sim_pool_members", "sim_pool_outages")
        return [f"{table}: {row}" for table in tables for row in self._rows(f"SELECT * FROM {table} ORDER BY 1, 2, 3")]

    def pools_named(self, items: list[str]) -> set[str]:
        return {name for kind, _, name in (i.partition("|") for i in items) if kind == "pool"}

    def one_still_draining(self) -> tuple[Instance, Instance]:
        """The second machine's `drain: timeout` hint: its pools never report it drained."""
        (drains,) = self.machines(1)
        (never,) = self.machines(1, drain="timeout")
        return drains, never

    def close(self) -> None:
        for fleet in self.made:
            fleet.close()


class Elbv2Runtime:
    name = "elbv2"
    READS = ("Describe", "List", "Get")

    def __init__(self) -> None:
        self.clock = ManualClock(datetime(2025, 1, 14, 22, 0, tzinfo=UTC))
        self.harness = Harness()
        self.groups: tuple[str, str] | None = None

    def pools(self) -> TrafficPools:
        return Elbv2Traffic(self.harness, self.clock, default_region=REGION)

    def machines(self, count: int) -> list[Instance]:
        if self.groups is None:
            self.groups = (target_group("tg-web"), target_group("tg-api"))
        launched = launch(count)
        for arn in self.groups:
            register(arn, *(m.id for m in launched))
        return pooled(launched, *self.groups)

    def pools_in(self, machine: Instance) -> set[str]:
        return {arn for arn in machine.traffic_pools if machine.id in registered(arn)}

    def writes(self) -> list[str]:
        return [f"{op} {params}" for _, op, params in self.harness.calls if not op.startswith(self.READS)]

    def pools_named(self, items: list[str]) -> set[str]:
        return {i for i in items if i.startswith("arn:")}

    def one_still_draining(self) -> tuple[Instance, Instance]:
        """moto has no `draining`: a Stubber on ELBv2 answers two executions of the leave. The
        first finds both registered in both groups and deregisters them (one call per group); the
        poll 30 s later finds the first no longer listed (drained) and the second `draining`."""
        web, api = sorted([stubbed_arn("tg-web"), stubbed_arn("tg-api")])
        drains, still = pooled(fake(2), web, api)
        stub = stubbed_elbv2(self.harness)
        self.harness.stubbers[("elbv2", REGION)] = stub  # `harness.done()` checks it was answered in full
        expect_groups(stub, web, api)
        for arn in (web, api):
            expect_health(stub, [health(drains.id, "healthy"), health(still.id, "healthy")], arn)
        for arn in (web, api):
            targets = [{"Id": drains.id, "Port": 80}, {"Id": still.id, "Port": 80}]
            stub.add_response("deregister_targets", {}, {"TargetGroupArn": arn, "Targets": targets})
        expect_groups(stub, web, api)
        for arn in (web, api):
            expect_health(stub, [health(still.id, "draining", reason="Target.DeregistrationInProgress")], arn)
        return drains, still


class AzureRuntime:
    name = "azure"

    def __init__(self) -> None:
        self.world = World()
        self.clock = self.world.clock
        self.named = 0

    def pools(self) -> TrafficPools:
        return self.world.pools()

    def machines(self, count: int) -> list[Instance]:
        """In a Load Balancer pool and an Application Gateway pool."""
        self.named += count
        world = self.world
        return [world.vm(f"web-{self.named - count + n + 1}", [world.be_web, world.shop]) for n in range(count)]

    def pools_in(self, machine: Instance) -> set[str]:
        return set(machine.traffic_pools) & set(self.world.network.pools_of(machine.id))

    def writes(self) -> list[str]:
        return [
            f"{c.method} {c.path}"
            for c in self.world.arm.calls
            if c.method in ("PUT", "PATCH", "DELETE") and c.status < 400
        ]

    def pools_named(self, items: list[str]) -> set[str]:
        return set(items)

    def one_still_draining(self) -> tuple[Instance, Instance]:
        """The probe waits: lb-web's pools drain in 15 s (5 s × threshold 3), agw-shop's in its
        60 s of connection draining."""
        world = self.world
        return world.vm("api-1", [world.be_web, world.be_api]), world.vm("shop-1", [world.be_web, world.shop])
