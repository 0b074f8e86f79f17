"""The local runtime under at-least-once delivery: every message may arrive twice, in another
order, and the worker may die between any two effects. The run must end exactly as a
fault-free run does, and no instance may be snapshotted, patched or rolled back twice.

These tests drive the real shell (`Service`) over the real SQLite store and queue and the
simulated fleet; a crash is an exception raised before the n-th effect, after which the test
throws the runtime away and opens a new one on the same state directory, as a restarted
process would.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchpilot.inventory import Instance, Simulation
from patchpilot.local_runtime import LocalRuntime
from patchpilot.policy import parse_policy

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
"""
)


def _fleet() -> list[Instance]:
    hints = {
        "i-prod-03": Simulation(health="fail"),
        "i-prod-05": Simulation(agent="offline"),
        "i-prod-06": Simulation(install="fail", rollback="fail"),
    }
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
                    simulation=hints.get(iid),
                )
            )
    out.append(
        Instance(id="i-frozen", cloud="aws", region="ap-northeast-1", os="linux", tags={"PatchPolicy": "frozen"})
    )
    return out


FLEET = _fleet()


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


def _open(state_dir: Path, faults: Faults) -> LocalRuntime:
    runtime = LocalRuntime.open(state_dir, start=START)
    service = runtime.service
    service.store = Flaky(runtime.store, faults, ("create", "save", "mark_sent"))
    service.queue = Flaky(runtime.queue, faults, ("publish", "ack", "retry_at"))
    service.fleet = Flaky(
        runtime.fleet, faults, ("probe_agents", "take_snapshots", "install_patches", "check_health", "roll_back")
    )
    service.notifier = Flaky(service.notifier, faults, ("notify",))
    return runtime


def _survive(state_dir: Path, faults: Faults, action: Callable[[LocalRuntime], None], recover: bool) -> LocalRuntime:
    """Do `action`, restarting the process until it goes through. Without `recover` (as on a
    serverless runtime, where nothing runs at start-up) only redelivery repairs the damage."""
    while True:
        runtime = _open(state_dir, faults)
        try:
            if recover:
                runtime.service.recover()
            action(runtime)
            return runtime
        except Crash:
            continue


def chaotic_run(
    state_dir: Path, crash_at: set[int], seed: int, duplicate: float, recover: bool = False
) -> LocalRuntime:
    rng = random.Random(seed)
    faults = Faults(crash_at)

    def start(runtime: LocalRuntime) -> None:  # the trigger is redelivered until it is acked
        runtime.start(POLICY, FLEET, run_id=RUN_ID, at=START)

    runtime = _survive(state_dir, faults, start, recover)
    duplicated: set[str] = set()
    for _ in range(20_000):
        deliveries = runtime.queue.receive(rng.randint(1, 6))
        if not deliveries:
            due = runtime.queue.next_due()
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
            # The process is gone: its unacked deliveries reappear after their visibility timeout.
            runtime = _survive(state_dir, faults, lambda _: None, recover)
    raise AssertionError("the run did not settle")


def reference_run(state_dir: Path) -> LocalRuntime:
    runtime = LocalRuntime.open(state_dir, start=START)
    runtime.start(POLICY, FLEET, run_id=RUN_ID, at=START)
    runtime.drive(RUN_ID)
    return runtime


def outcome(runtime: LocalRuntime) -> dict[str, tuple[str, str]]:
    return {r.id: (r.state, r.reason) for r in runtime.load(RUN_ID).records()}


_REFERENCE: dict[str, tuple[str, str]] = {}


def reference() -> dict[str, tuple[str, str]]:
    if not _REFERENCE:
        with tempfile.TemporaryDirectory() as tmp:
            _REFERENCE.update(outcome(reference_run(Path(tmp))))
    return _REFERENCE


def assert_like_the_fault_free_run(runtime: LocalRuntime) -> None:
    run = runtime.load(RUN_ID)
    assert run.finished, run.state
    assert outcome(runtime) == reference()
    effects = runtime.fleet.effects(RUN_ID)
    assert effects, "the fleet did something"
    twice = {key: n for key, n in effects.items() if n > 1}
    assert not twice, f"done more than once: {twice}"
    assert not runtime.queue.dead_letters()


def test_the_fault_free_run_exercises_every_path() -> None:
    states = {state for state, _ in reference().values()}
    assert states == {"patched", "rolled_back", "failed", "skipped", "excluded"}


def test_every_message_delivered_twice_ends_like_the_fault_free_run(tmp_path: Path) -> None:
    assert_like_the_fault_free_run(chaotic_run(tmp_path, set(), seed=1, duplicate=1.0))


def test_shuffled_delivery_ends_like_the_fault_free_run(tmp_path: Path) -> None:
    assert_like_the_fault_free_run(chaotic_run(tmp_path, set(), seed=2, duplicate=0.0))


def test_a_crash_before_every_single_effect_is_survived(tmp_path: Path) -> None:
    """Crash the worker once before effect n, for every n the run has."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Faults(set())
        runtime = _open(Path(tmp), probe)
        runtime.start(POLICY, FLEET, run_id=RUN_ID, at=START)
        runtime.drive(RUN_ID)
        total = probe.effects
    assert total > 50
    for n in range(1, total + 1):
        assert_like_the_fault_free_run(chaotic_run(tmp_path / str(n), {n}, seed=n, duplicate=0.0))
        assert_like_the_fault_free_run(chaotic_run(tmp_path / f"{n}r", {n}, seed=n, duplicate=0.0, recover=True))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crash_at=st.sets(st.integers(1, 400), max_size=4),
    seed=st.integers(0, 2**16),
    duplicate=st.sampled_from([0.0, 0.25, 1.0]),
    recover=st.booleans(),
)
def test_crashes_duplicates_and_shuffling_together_end_like_the_fault_free_run(
    crash_at: set[int], seed: int, duplicate: float, recover: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert_like_the_fault_free_run(chaotic_run(Path(tmp), crash_at, seed, duplicate, recover))
