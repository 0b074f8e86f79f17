"""The AWS runtime under at-least-once delivery: the chaos of test_fault_tolerance.py (every
message twice, shuffled delivery, a crash before an effect; the driver is tests/chaos.py) on
DynamoDbRunStore + SqsQueue (moto) with the local SimulatedFleet and VirtualClock. The run must
end exactly as the fault-free local run does, with no instance snapshotted, patched or rolled
back twice.

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from chaos import SCENARIOS, START, Runtime, assert_like_the_fault_free_run, chaotic_run, count_effects
from hypothesis import HealthCheck, given, settings
from moto_support import TABLE, Queues, aws, dynamodb, next_due, queues, sqs_follows

from patchpilot.adapters.aws.claims import DynamoDbClaims
from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore
from patchpilot.adapters.aws.leases import DynamoDbLeases
from patchpilot.adapters.aws.sqs_queue import SqsQueue
from patchpilot.adapters.local.clock import VirtualClock
from patchpilot.adapters.local.notifier import FileNotifier
from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.engine.run import Run
from patchpilot.service import Service

pytestmark = pytest.mark.slow  # fault tolerance: `make test-fast` leaves it out

DB = "sim.db"
EXAMPLES = itertools.count()  # names the worlds of the hypothesis examples (one tmp_path for all)


@dataclass
class AwsRuntime:
    """What the chaos driver reads: `service`, `queue`, `fleet`, `clock` and `load`."""

    service: Service
    store: DynamoDbRunStore
    queue: SqsQueue
    fleet: SimulatedFleet
    clock: VirtualClock

    def load(self, run_id: str) -> Run:
        return self.store.load(run_id)


@dataclass
class AwsWorld:
    """The durable part: moto's table and queues, the fleet and clock's SQLite file."""

    state_dir: Path
    sqs: Queues

    @property
    def table(self) -> str:
        return f"{TABLE}-{self.state_dir.name}"

    def open(self) -> AwsRuntime:
        """A new Lambda container."""
        db = self.state_dir / DB
        clock = VirtualClock(db, START)
        store = DynamoDbRunStore(self.table, dynamodb(self.table))
        queue = SqsQueue(self.sqs.url, self.sqs.client, clock, self.sqs.dead_letter_url, wait_seconds=0)
        fleet = SimulatedFleet(db, clock)
        notifier = FileNotifier(self.state_dir / "notifications.jsonl")
        leases = DynamoDbLeases(self.table, dynamodb(self.table))
        claims = DynamoDbClaims(self.table, dynamodb(self.table), clock)  # wake-ups sharing an id poll once
        service = Service(
            store=store,
            queue=queue,
            fleet=fleet,
            notifier=notifier,
            clock=clock,
            leases=leases,
            traffic=fleet,
            claims=claims,
        )
        return AwsRuntime(service, store, queue, fleet, clock)

    def next_due(self, runtime: Runtime) -> datetime | None:
        return next_due(self.sqs.name)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Callable[[str], AwsWorld]]:
    """Makes a world per name, all in one moto account, with SQS on virtual time."""
    with aws(), ExitStack() as clocks:

        def make(name: str) -> AwsWorld:
            state_dir = tmp_path / name
            state_dir.mkdir()
            clocks.enter_context(sqs_follows(VirtualClock(state_dir / DB, START)))
            made = AwsWorld(state_dir, queues(name=f"q-{name}", visibility_timeout=900, max_receive_count=5))
            dynamodb(made.table)
            return made

        yield make


def test_every_message_delivered_twice_ends_like_the_fault_free_run(world: Callable[[str], AwsWorld]) -> None:
    assert_like_the_fault_free_run(chaotic_run(world("twice"), set(), seed=1, duplicate=1.0))


def test_shuffled_delivery_ends_like_the_fault_free_run(world: Callable[[str], AwsWorld]) -> None:
    assert_like_the_fault_free_run(chaotic_run(world("shuffled"), set(), seed=2, duplicate=0.0))


# A sample of the effects to crash before: the first ones (creating the run, the first
# publishes), then every SAMPLE_STEP-th, with and without a recovery pass at start-up. (The local
# runtime's test_fault_tolerance.py crashes before every single effect; this one samples them so
# that `make test` stays under ten minutes as runs grow more steps.) The sample is dealt into
# SHARDS tests, which `make test` runs on separate cores.
SAMPLE_FIRST = 6
SAMPLE_STEP = 7
SHARDS = 3


@pytest.mark.parametrize("shard", range(SHARDS))
def test_a_crash_before_a_sample_of_the_effects_is_survived(world: Callable[[str], AwsWorld], shard: int) -> None:
    total = count_effects(world("count"))
    assert total > 50
    sample = sorted({*range(1, SAMPLE_FIRST + 1), *range(SAMPLE_FIRST + 1, total + 1, SAMPLE_STEP), total})
    for n in sample[shard::SHARDS]:
        recover = n % 2 == 0
        runtime = chaotic_run(world(f"crash{n}"), {n}, seed=n, duplicate=0.0, recover=recover)
        assert_like_the_fault_free_run(runtime)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(**SCENARIOS)
def test_crashes_duplicates_and_shuffling_together_end_like_the_fault_free_run(
    world: Callable[[str], AwsWorld], crash_at: set[int], seed: int, duplicate: float, recover: bool
) -> None:
    runtime = chaotic_run(world(f"h{next(EXAMPLES)}"), crash_at, seed, duplicate, recover)
    assert_like_the_fault_free_run(runtime)


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(**SCENARIOS)
def test_wake_ups_amid_crashes_duplicates_and_shuffling_end_like_the_fault_free_run(
    world: Callable[[str], AwsWorld], crash_at: set[int], seed: int, duplicate: float, recover: bool
) -> None:
    """The waker's LookNow messages (for the awaited command, for finished ones, ids repeating)
    on SQS and DynamoDB, with the claims that let one id poll once."""
    runtime = chaotic_run(world(f"w{next(EXAMPLES)}"), crash_at, seed, duplicate, recover, wake=0.5)
    assert_like_the_fault_free_run(runtime)
