"""The local runtime under at-least-once delivery: every message may arrive twice, in another
order, and the worker may die between any two effects. The run must end exactly as a
fault-free run does, and no instance may be snapshotted, patched or rolled back twice.

These tests drive the real shell (`Service`) over the real SQLite store and queue and the
simulated fleet (the driver is tests/chaos.py); a crash is an exception raised before the n-th
effect, after which the driver throws the runtime away and opens a new one on the same state
directory, as a restarted process would.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from chaos import (
    POLICY,
    SCENARIOS,
    START,
    Runtime,
    assert_like_the_fault_free_run,
    chaotic_run,
    count_effects,
    reference,
)
from hypothesis import HealthCheck, given, settings

from patchpilot.engine.messages import FollowUpRequested
from patchpilot.inventory import Instance
from patchpilot.local_runtime import LocalRuntime

pytestmark = pytest.mark.slow  # fault tolerance: `make test-fast` leaves it out


@dataclass
class LocalWorld:
    """A state directory: the SQLite database of the store, the queue, the fleet and the clock."""

    state_dir: Path

    def open(self) -> LocalRuntime:
        return LocalRuntime.open(self.state_dir, start=START)

    def next_due(self, runtime: Runtime) -> datetime | None:
        assert isinstance(runtime, LocalRuntime)
        return runtime.queue.next_due()


def test_the_fault_free_run_exercises_every_path() -> None:
    states = {state for state, _ in reference().values()}
    assert states == {"patched", "rolled_back", "failed", "skipped", "excluded"}


def test_every_message_delivered_twice_ends_like_the_fault_free_run(tmp_path: Path) -> None:
    assert_like_the_fault_free_run(chaotic_run(LocalWorld(tmp_path), set(), seed=1, duplicate=1.0))


SHARDS = 3


def test_shuffled_delivery_ends_like_the_fault_free_run(tmp_path: Path) -> None:
    assert_like_the_fault_free_run(chaotic_run(LocalWorld(tmp_path), set(), seed=2, duplicate=0.0))


@pytest.mark.parametrize("shard", range(SHARDS))
def test_a_crash_before_every_single_effect_is_survived(tmp_path: Path, shard: int) -> None:
    """Crash the worker once before effect n, for every n the run has (dealt into SHARDS tests,
    which `make test` runs on separate cores)."""
    total = count_effects(LocalWorld(tmp_path / "count"))
    assert total > 50
    for n in range(1 + shard, total + 1, SHARDS):
        for recover in (False, True):
            world = LocalWorld(tmp_path / f"{n}{'r' if recover else ''}")
            assert_like_the_fault_free_run(chaotic_run(world, {n}, seed=n, duplicate=0.0, recover=recover))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**SCENARIOS)
def test_crashes_duplicates_and_shuffling_together_end_like_the_fault_free_run(
    crash_at: set[int], seed: int, duplicate: float, recover: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert_like_the_fault_free_run(chaotic_run(LocalWorld(Path(tmp)), crash_at, seed, duplicate, recover))


# ---------------------------------------------------------------- a follow-up run under the same faults

FOLLOWED = "chaos-followed"
STAGING, PRODUCTION, LATER = (
    Instance(id=f"i-{name}", cloud="aws", region="ap-northeast-1", zone="1", os="linux", tags={"Environment": env})
    for name, env in (("stg", "staging"), ("prd", "production"), ("later", "production"))
)
FOLLOW_UP = f"{FOLLOWED}-followup-1"
REQUEST = FollowUpRequested(
    id=f"{FOLLOWED}:followup:1", run_id=FOLLOWED, follow_up_id=FOLLOW_UP, instances=[LATER], at=START
)


def begin_with_a_follow_up(runtime: Runtime) -> None:
    """The trigger starts the run; a finding about a machine it does not cover arrives while it goes."""
    runtime.clock.advance_to(START)
    runtime.service.start(FOLLOWED, POLICY, [STAGING, PRODUCTION])
    runtime.service.request_follow_up(REQUEST)


def assert_followed_up_once(runtime: Runtime) -> None:
    first, second = runtime.load(FOLLOWED), runtime.load(FOLLOW_UP)
    assert first.status == "succeeded" and first.promoted and [f.run_id for f in first.follow_ups] == [FOLLOW_UP]
    (ended,) = [e.at for e in first.log if e.text.startswith(f"Run {FOLLOWED} succeeded")]
    assert second.status == "succeeded" and second.created_at >= ended  # after the run, never alongside
    assert first.follow_ups[0].state == "finished"
    assert [(r.id, r.state, r.installed) for r in second.records()] == [(LATER.id, "patched", first.promoted[LATER.os])]
    effects = runtime.fleet.effects(FOLLOW_UP)
    assert {i for _, i in effects} == {LATER.id}
    assert all(n == 1 for n in effects.values()), effects
    assert not runtime.queue.dead_letters()


def test_a_follow_up_starts_once_after_its_run_despite_duplicates_and_a_crash_before_every_effect(
    tmp_path: Path,
) -> None:
    assert_followed_up_once(chaotic_run(LocalWorld(tmp_path / "dup"), set(), 3, 1.0, begin=begin_with_a_follow_up))
    total = count_effects(LocalWorld(tmp_path / "count"), begin_with_a_follow_up, assert_followed_up_once)
    assert total > 30
    for n in range(1, total + 1):
        for recover in (False, True):
            world = LocalWorld(tmp_path / f"{n}{'r' if recover else ''}")
            assert_followed_up_once(chaotic_run(world, {n}, n, 0.0, recover, begin=begin_with_a_follow_up))
