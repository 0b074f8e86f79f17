"""The AWS runtime under at-least-once delivery: the chaos of test_fault_tolerance.py (every
message twice, shuffled delivery, a crash before an effect) on DynamoDbRunStore + SqsQueue
(moto) with the local SimulatedFleet and VirtualClock. The run must end exactly as the
fault-free local run does, with no instance snapshotted, patched or rolled back twice.

Time: moto's SQS is put on the VirtualClock (`sqs_follows`), so SQS itself enforces the
delays (hops beyond 15 minutes included), the 15-minute visibility timeout and the
maxReceiveCount of 5; the driver moves the clock to the next due message when nothing is
visible (`next_due`), as the local driver does. A crashed worker's unacknowledged deliveries
come back when their visibility timeout ends, like on AWS, without shortening it.

A crash throws away the store (its identity map), the queue and the service and builds new
ones over the same moto backend and SQLite file (the simulated fleet and the clock), as a new
Lambda container would.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto_support import TABLE, Queues, aws, dynamodb, next_due, queues, sqs_follows
from test_fault_tolerance import (
    FLEET,
    POLICY,
    RUN_ID,
    START,
    Crash,
    Faults,
    Flaky,
    assert_like_the_fault_free_run,
)

from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore
from patchpilot.adapters.aws.sqs_queue import SqsQueue
from patchpilot.adapters.local.clock import VirtualClock
from patchpilot.adapters.local.notifier import FileNotifier
from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.engine.run import Run
from patchpilot.service import Service

DB = "sim.db"
EXAMPLES = itertools.count()  # names the worlds of the hypothesis examples (one tmp_path for all)


@dataclass
class AwsRuntime:
    """What `assert_like_the_fault_free_run` reads: `load`, `fleet.effects`, `queue.dead_letters`."""

    service: Service
    store: DynamoDbRunStore
    queue: SqsQueue
    fleet: SimulatedFleet
    clock: VirtualClock

    def load(self, run_id: str) -> Run:
        return self.store.load(run_id)


@dataclass
class World:
    """The durable part: moto's table and queues, the fleet and clock's SQLite file."""

    state_dir: Path
    sqs: Queues


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Callable[[str], World]]:
    """Makes a world per name, all in one moto account, with SQS on virtual time."""
    with aws():
        clocks: list[Any] = []

        def make(name: str) -> World:
            state_dir = tmp_path / name
            state_dir.mkdir()
            clock = VirtualClock(state_dir / DB, START)
            clocks.append(sqs_follows(clock))
            clocks[-1].__enter__()
            dynamodb(f"{TABLE}-{name}")
            return World(state_dir, queues(name=f"q-{name}", visibility_timeout=900, max_receive_count=5))

        try:
            yield make
        finally:
            for patch in reversed(clocks):
                patch.__exit__(None, None, None)


def open_runtime(world: World, faults: Faults) -> AwsRuntime:
    db = world.state_dir / DB
    clock = VirtualClock(db, START)
    store = DynamoDbRunStore(f"{TABLE}-{world.state_dir.name}", dynamodb(f"{TABLE}-{world.state_dir.name}"))
    queue = SqsQueue(world.sqs.url, world.sqs.client, clock, world.sqs.dead_letter_url, wait_seconds=0)
    fleet = SimulatedFleet(db, clock)
    notifier = FileNotifier(world.state_dir / "notifications.jsonl")
    service = Service(
        store=Flaky(store, faults, ("create", "save", "mark_sent")),
        queue=Flaky(queue, faults, ("publish", "ack", "retry_at")),
        fleet=Flaky(fleet, faults, ("probe_agents", "take_snapshots", "install_patches", "check_health", "roll_back")),
        notifier=Flaky(notifier, faults, ("notify",)),
        clock=clock,
    )
    return AwsRuntime(service, store, queue, fleet, clock)


def survive(world: World, faults: Faults, action: Callable[[AwsRuntime], None], recover: bool) -> AwsRuntime:
    """Do `action`, starting a new container until it goes through."""
    while True:
        runtime = open_runtime(world, faults)
        try:
            if recover:
                runtime.service.recover()
            action(runtime)
            return runtime
        except Crash:
            continue


def chaotic_run(world: World, crash_at: set[int], seed: int, duplicate: float, recover: bool = False) -> AwsRuntime:
    rng = random.Random(seed)
    faults = Faults(crash_at)

    def start(runtime: AwsRuntime) -> None:  # the trigger is redelivered until it is acked
        runtime.clock.advance_to(START)
        runtime.service.start(RUN_ID, POLICY, FLEET)

    runtime = survive(world, faults, start, recover)
    duplicated: set[str] = set()
    for _ in range(20_000):
        deliveries = runtime.queue.receive(rng.randint(1, 6))
        if not deliveries:
            due = next_due(world.sqs.name)
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
        except Crash:
            # The container is gone: its unacked deliveries reappear after the visibility timeout.
            runtime = survive(world, faults, lambda _: None, recover)
    raise AssertionError("the run did not settle")


def test_every_message_delivered_twice_ends_like_the_fault_free_run(world: Callable[[str], World]) -> None:
    assert_like_the_fault_free_run(chaotic_run(world("twice"), set(), seed=1, duplicate=1.0))  # type: ignore[arg-type]


def test_shuffled_delivery_ends_like_the_fault_free_run(world: Callable[[str], World]) -> None:
    assert_like_the_fault_free_run(chaotic_run(world("shuffled"), set(), seed=2, duplicate=0.0))  # type: ignore[arg-type]


def count_effects(world: World) -> int:
    faults = Faults(set())
    runtime = open_runtime(world, faults)
    runtime.clock.advance_to(START)
    runtime.service.start(RUN_ID, POLICY, FLEET)
    while True:
        deliveries = runtime.queue.receive(10)
        if not deliveries:
            due = next_due(world.sqs.name)
            if due is None:
                break
            runtime.clock.advance_to(due)
            continue
        for delivery in deliveries:
            runtime.service.handle(delivery)
    assert_like_the_fault_free_run(runtime)  # type: ignore[arg-type]
    return faults.effects


# A sample of the effects to crash before: the first ones (creating the run, the first
# publishes), then every SAMPLE_STEP-th, with and without a recovery pass at start-up.
SAMPLE_FIRST = 6
SAMPLE_STEP = 7


def test_a_crash_before_a_sample_of_the_effects_is_survived(world: Callable[[str], World]) -> None:
    total = count_effects(world("count"))
    assert total > 50
    sample = sorted({*range(1, SAMPLE_FIRST + 1), *range(SAMPLE_FIRST + 1, total + 1, SAMPLE_STEP), total})
    for n in sample:
        recover = n % 2 == 0
        runtime = chaotic_run(world(f"crash{n}"), {n}, seed=n, duplicate=0.0, recover=recover)
        assert_like_the_fault_free_run(runtime)  # type: ignore[arg-type]


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    crash_at=st.sets(st.integers(1, 400), max_size=4),
    seed=st.integers(0, 2**16),
    duplicate=st.sampled_from([0.0, 0.25, 1.0]),
    recover=st.booleans(),
)
def test_crashes_duplicates_and_shuffling_together_end_like_the_fault_free_run(
    world: Callable[[str], World], crash_at: set[int], seed: int, duplicate: float, recover: bool
) -> None:
    runtime = chaotic_run(world(f"h{next(EXAMPLES)}"), crash_at, seed, duplicate, recover)
    assert_like_the_fault_free_run(runtime)  # type: ignore[arg-type]
