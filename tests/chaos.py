"""The chaos driver of the fault-tolerance tests: a run under at-least-once delivery, where
every message may arrive twice, in another order, and the worker may die between any two
effects. The run must end exactly as the fault-free local run does, no instance may be
snapshotted, patched or rolled back twice, and none found stopped may be left running.

A crash is an exception raised before the n-th effect (a call to an effectful method of the
store, queue, fleet or notifier), after which the driver throws the runtime away and opens a
new one on the same durable state, as a restarted process (or a new Lambda container) would.

What a runtime is made of differs (tests/test_fault_tolerance.py: the local runtime on SQLite;
tests/test_aws_fault_tolerance.py: DynamoDB and SQS on moto), so the driver takes a `World`:
the durable state of one run, which opens a runtime on itself and says when the next message
is due. Both are held to the same fault-free outcome: the local runtime's, run without faults.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from hypothesis import strategies as st

from patchpilot.adapters.local.clock import VirtualClock
from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.engine.messages import LookNow
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance, Simulation
from patchpilot.local_runtime import LocalRuntime
from patchpilot.policy import parse_policy
from patchpilot.ports import Queue
from patchpilot.service import Service

START = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
RUN_ID = "chaos-run"
POLICY = parse_policy(
    """
name: chaos
rings:
  - {name: staging, select: {tags: {Environment: staging}}, soak: 30m}
  - {name: production, select: {tags: {Environment: production}}}
rollout: {mode: concurrent_zones, disruption_budget: 2, canary: 1, max_failures: 2}
exclude: {tags: {PatchPolicy: frozen}}
traffic: {drain: true, pool_health: true}
hooks: {after_install: {linux: "systemctl start app", windows: "Start-Service app"}}
stopped_machines: start
"""
)
STORE_EFFECTS = ("create", "save", "mark_sent")
QUEUE_EFFECTS = ("publish", "ack", "retry_at")
FLEET_EFFECTS = (
    "probe_agents",
    "take_snapshots",
    "install_patches",
    "check_health",
    "roll_back",
    "run_hook",
    "start_machines",
    "return_machines",
)
TRAFFIC_EFFECTS = ("leave_pools", "rejoin_pools")
NOTIFIER_EFFECTS = ("notify",)
LEASE_EFFECTS = ("acquire", "release")


def _fleet() -> list[Instance]:
    hints = {
        "i-prod-03": Simulation(health="fail"),
        "i-prod-05": Simulation(agent="offline"),
        "i-prod-06": Simulation(install="fail", rollback="fail"),
        "i-prod-07": Simulation(pool_health="fail"),
    }
    # Found stopped (stopped_machines: start): started for their wave and returned (docs/governance.md)
    powers: dict[str, Literal["stopped", "deallocated"]] = {"i-prod-01": "stopped", "i-prod-02": "deallocated"}
    out = []
    for ring, count in (("staging", 3), ("prod", 8)):
        for n in range(count):
            iid = f"i-{ring}-{n:02d}"
            environment = "staging" if ring == "staging" else "production"
            out.append(
                Instance(
                    id=iid,
                    cloud="aws" if n % 2 else "azure",
                    region="ap-northeast-1" if n % 2 else "japaneast",
                    zone=str(n % 3 + 1),
                    os="linux" if n % 3 else "windows",
                    tags={"Environment": environment},
                    # drained before the install, back after it (docs/traffic.md)
                    traffic_pools=("web",) if n % 2 else ("web", "api"),
                    simulation=hints.get(iid),
                    power=powers.get(iid),
                )
            )
    out.append(
        Instance(id="i-frozen", cloud="aws", region="ap-northeast-1", os="linux", tags={"PatchPolicy": "frozen"})
    )
    return out


FLEET = _fleet()

# The arguments of `chaotic_run` for a hypothesis test: `@given(**SCENARIOS)`.
SCENARIOS = {
    "crash_at": st.sets(st.integers(1, 400), max_size=4),
    "seed": st.integers(0, 2**16),
    "duplicate": st.sampled_from([0.0, 0.25, 1.0]),
    "recover": st.booleans(),
}


class Crash(BaseException):
    """The process dies here (BaseException: no `except Exception` in the code may catch it)."""


class Faults:
    def __init__(self, crash_at: set[int]) -> None:
        self.crash_at = crash_at
        self.effects = 0

    def tick(self) -> None:
        self.effects += 1
        if self.effects in self.crash_at:
            raise Crash(f"crash before effect {self.effects}")


class Flaky:
    """A proxy that counts calls to the effectful methods and crashes before the chosen ones."""

    def __init__(self, target: Any, faults: Faults, effects: tuple[str, ...]) -> None:
        self._target = target
        self._faults = faults
        self._effects = effects

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._effects:
            return attribute

        def effect(*args: Any, **kwargs: Any) -> Any:
            self._faults.tick()
            return attribute(*args, **kwargs)

        return effect


class Runtime(Protocol):
    """What the driver uses of a runtime: its service, and the queue, fleet and clock under it
    (without faults), and `load`."""

    @property
    def service(self) -> Service: ...

    @property
    def queue(self) -> Queue: ...

    @property
    def fleet(self) -> SimulatedFleet: ...

    @property
    def clock(self) -> VirtualClock: ...

    def load(self, run_id: str) -> Run: ...


class World(Protocol):
    """The durable state of one run: what survives a crash."""

    def open(self) -> Runtime:
        """A new process on this state: fresh objects over the same storage."""

    def next_due(self, runtime: Runtime) -> datetime | None:
        """When the next message (delayed or in flight) becomes receivable; None: the queue is empty."""


def open_flaky(world: World, faults: Faults) -> Runtime:
    """A runtime on `world` whose service counts its effects and crashes where `faults` says."""
    runtime = world.open()
    service = runtime.service
    service.store = Flaky(service.store, faults, STORE_EFFECTS)
    service.queue = Flaky(service.queue, faults, QUEUE_EFFECTS)
    service.fleet = Flaky(service.fleet, faults, FLEET_EFFECTS)
    if service.traffic is not None:
        service.traffic = Flaky(service.traffic, faults, TRAFFIC_EFFECTS)
    service.notifier = Flaky(service.notifier, faults, NOTIFIER_EFFECTS)
    if service.leases is not None:
        service.leases = Flaky(service.leases, faults, LEASE_EFFECTS)
    return runtime


def start(runtime: Runtime) -> None:
    runtime.clock.advance_to(START)
    runtime.service.start(RUN_ID, POLICY, FLEET)


def survive(world: World, faults: Faults, action: Callable[[Runtime], None], recover: bool) -> Runtime:
    """Do `action`, restarting the process until it goes through. Without `recover` (as on a
    serverless runtime, where nothing runs at start-up) only redelivery repairs the damage."""
    while True:
        runtime = open_flaky(world, faults)
        try:
            if recover:
                runtime.service.recover()
            action(runtime)
            return runtime
        except Crash:
            continue


def chaotic_run(
    world: World,
    crash_at: set[int],
    seed: int,
    duplicate: float,
    recover: bool = False,
    begin: Callable[[Runtime], None] = start,
    wake: float = 0.0,
) -> Runtime:
    """With `wake`, after a delivery a cloud event may wake the run (a `LookNow`): for the command
    it awaits, or for one it issued before (a late or out-of-order event), ids repeating as the
    waker's windows make them."""
    rng = random.Random(seed)
    faults = Faults(crash_at)
    runtime = survive(world, faults, begin, recover)  # the trigger is redelivered until it is acked
    duplicated: set[str] = set()
    for _ in range(20_000):
        deliveries = runtime.queue.receive(rng.randint(1, 6))
        if not deliveries:
            due = world.next_due(runtime)
            if due is None:
                return runtime
            runtime.clock.advance_to(due)
            continue
        rng.shuffle(deliveries)
        try:
            for delivery in deliveries:
                runtime.service.handle(delivery)
                if delivery.message.id not in duplicated and rng.random() < duplicate:
                    duplicated.add(delivery.message.id)  # at-least-once: the same message again, later
                    runtime.queue.publish([delivery.message])
                if rng.random() < wake:
                    runtime.queue.publish([wake_up(runtime.load(RUN_ID), rng)])
        except Crash:
            # The process is gone: its unacked deliveries reappear after their visibility timeout.
            runtime = survive(world, faults, lambda _: None, recover)
    raise AssertionError("the run did not settle")


def wake_up(run: Run, rng: random.Random) -> LookNow:
    """A wake-up of `run`: mostly for the command it awaits, else for any message it issued."""
    issued = sorted(run.issued)
    command_id = run.awaiting if run.awaiting and rng.random() < 0.7 else rng.choice(issued)
    return LookNow(
        id=f"{command_id}:look:{rng.randint(0, 2)}", run_id=run.run_id, command_id=command_id, reason="chaos"
    )


def count_effects(
    world: World,
    begin: Callable[[Runtime], None] = start,
    check: Callable[[Runtime], None] | None = None,
) -> int:
    """Drive the run on `world` without faults, check it ends like the fault-free run (or as
    `check` says), and return how many effects it had: the places a crash can be put."""
    faults = Faults(set())
    runtime = open_flaky(world, faults)
    begin(runtime)
    while True:
        deliveries = runtime.queue.receive(10)
        if not deliveries:
            due = world.next_due(runtime)
            if due is None:
                break
            runtime.clock.advance_to(due)
            continue
        for delivery in deliveries:
            runtime.service.handle(delivery)
    (check or assert_like_the_fault_free_run)(runtime)
    return faults.effects


def reference_run(state_dir: Path) -> LocalRuntime:
    runtime = LocalRuntime.open(state_dir, start=START)
    runtime.start(POLICY, FLEET, run_id=RUN_ID, at=START)
    runtime.drive(RUN_ID)
    return runtime


def outcome(runtime: Runtime) -> dict[str, tuple[str, str]]:
    return {r.id: (r.state, r.reason) for r in runtime.load(RUN_ID).records()}


_REFERENCE: dict[str, tuple[str, str]] = {}


def reference() -> dict[str, tuple[str, str]]:
    """The outcome of the fault-free run: the local runtime, driven as `patchpilot run` does."""
    if not _REFERENCE:
        with tempfile.TemporaryDirectory() as tmp:
            _REFERENCE.update(outcome(reference_run(Path(tmp))))
    return _REFERENCE


def assert_like_the_fault_free_run(runtime: Runtime) -> None:
    run = runtime.load(RUN_ID)
    assert run.finished, run.state
    assert outcome(runtime) == reference()
    effects = runtime.fleet.effects(RUN_ID)
    assert effects, "the fleet did something"
    twice = {key: n for key, n in effects.items() if n > 1}
    assert not twice, f"done more than once: {twice}"
    assert not runtime.queue.dead_letters()
    broken = {r.id for r in run.records() if r.state == "failed"}
    assert runtime.fleet.pools.out_of_service() == broken, "a machine left out of its pools (only broken ones stay out)"
    running = [i.id for i in FLEET if i.power is not None and runtime.fleet.power(i) != i.power]
    assert not running, f"found stopped, left running: {running}"
    leases = getattr(runtime.service.leases, "_target", runtime.service.leases)  # past the faults
    if leases is not None:  # every machine has left the run: none is still held by it
        now = runtime.clock.now()
        assert leases.acquire([i.id for i in FLEET], "after", now, now) == {}
