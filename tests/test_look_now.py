"""Wake-ups (`LookNow`): a cloud event makes the worker poll the fleet command the stored run
awaits, once, now, instead of at its next poll. The run moves on as soon as the step is done,
exactly as its own delivery would have moved it; a wake-up for anything else changes nothing.

These drive the real shell over the local runtime (SQLite store and queue, simulated fleet on a
virtual clock); tests/security/test_forged_messages.py holds the forged ones, and the
chaos test below mixes wake-ups with crashes, duplicates and shuffling."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from chaos import FLEET, POLICY, RUN_ID, SCENARIOS, START, assert_like_the_fault_free_run, chaotic_run
from hypothesis import HealthCheck, given, settings
from test_fault_tolerance import LocalWorld

from patchpilot.engine.messages import InstallPatches, LookNow, TakeSnapshots
from patchpilot.local_runtime import LocalRuntime
from patchpilot.ports import InProgress


@pytest.fixture
def runtime(tmp_path: Path) -> LocalRuntime:
    runtime = LocalRuntime.open(tmp_path, start=START)
    runtime.start(POLICY, FLEET, run_id=RUN_ID, at=START)
    return runtime


def drive_until(runtime: LocalRuntime, state: str) -> None:
    for _ in range(1_000):
        if runtime.load(RUN_ID).state == state:
            return
        deliveries = runtime.queue.receive(1)
        if not deliveries:
            due = runtime.queue.next_due()
            assert due is not None, f"the run never reached {state}"
            runtime.clock.advance_to(due)
            continue
        runtime.service.handle(deliveries[0])
    raise AssertionError(f"the run never reached {state}")


def under_way(runtime: LocalRuntime, state: str) -> str:
    """Drive the run until it waits in `state` and its awaited command has started; its id."""
    drive_until(runtime, state)
    awaiting = runtime.load(RUN_ID).awaiting
    (delivery,) = runtime.queue.receive(1)
    assert awaiting is not None and delivery.message.id == awaiting
    runtime.service.handle(delivery)  # started; parked until its next poll
    assert runtime.load(RUN_ID).awaiting == awaiting
    return awaiting


def wake(runtime: LocalRuntime, command_id: str, window: int = 0) -> None:
    """Publish a wake-up and let the worker take what is due now (the woken command's own delivery
    is not: it waits for its poll)."""
    runtime.queue.publish([LookNow(id=f"{command_id}:look:{window}", run_id=RUN_ID, command_id=command_id)])
    while deliveries := runtime.queue.receive(10):
        for delivery in deliveries:
            assert delivery.message.id != command_id, f"{command_id} came back before its poll"
            runtime.service.handle(delivery)


def test_the_run_holds_the_fleet_command_it_awaits(runtime: LocalRuntime) -> None:
    drive_until(runtime, "snapshotting")
    run = runtime.load(RUN_ID)
    assert isinstance(run.awaited_command, TakeSnapshots) and run.awaited_command.id == run.awaiting
    drive_until(runtime, "soaking")  # a Wait is awaited: no fleet command is held
    run = runtime.load(RUN_ID)
    assert run.awaiting is not None and run.awaited_command is None


def test_a_wake_up_moves_the_run_on_as_soon_as_the_install_is_done(runtime: LocalRuntime) -> None:
    drive_until(runtime, "installing")
    command = runtime.load(RUN_ID).awaited_command
    assert isinstance(command, InstallPatches)
    (delivery,) = runtime.queue.receive(1)
    assert delivery.message.id == command.id
    runtime.service.handle(delivery)  # the install starts; its delivery is parked until its poll
    fallback = runtime.clock.now() + timedelta(days=1)
    runtime.queue.retry_at(delivery, fallback)  # with wake-ups, the fallback poll can be far away
    moved = False
    for _ in range(240):
        runtime.clock.advance_to(runtime.clock.now() + timedelta(minutes=1))
        done = not isinstance(runtime.fleet.install_patches(command), InProgress)  # a read: started already
        before = runtime.load(RUN_ID)
        wake(runtime, command.id, runtime.clock.now().minute)
        after = runtime.load(RUN_ID)
        moved = after.awaiting != command.id
        assert moved == done, "a wake-up moves the run exactly when the install is done"
        if moved:
            break
        assert after.version == before.version, "a wake-up of a step under way changed the run"
    assert moved and runtime.clock.now() < fallback
    assert not runtime.dead_letters()
    # The install's own delivery comes back at its fallback poll and finds the command done: dropped.
    runtime.drive(RUN_ID)
    assert_like_the_fault_free_run(runtime)


def test_a_wake_up_of_a_step_under_way_changes_nothing(runtime: LocalRuntime) -> None:
    awaiting = under_way(runtime, "installing")
    before = runtime.load(RUN_ID)
    wake(runtime, awaiting)
    after = runtime.load(RUN_ID)
    assert after.version == before.version and after.state == "installing"
    assert not runtime.dead_letters()


def test_a_late_wake_up_for_a_finished_step_changes_nothing(runtime: LocalRuntime) -> None:
    drive_until(runtime, "snapshotting")
    snapshot = runtime.load(RUN_ID).awaiting
    assert snapshot is not None
    under_way(runtime, "installing")
    before = runtime.load(RUN_ID)
    wake(runtime, snapshot)
    after = runtime.load(RUN_ID)
    assert after.version == before.version and after.state == "installing"
    assert not runtime.dead_letters()
    assert not {key: n for key, n in runtime.fleet.effects(RUN_ID).items() if n > 1}, "done twice"


def test_wake_ups_sharing_an_id_poll_once(runtime: LocalRuntime) -> None:
    awaiting = under_way(runtime, "installing")
    polls: list[str] = []
    fleet = runtime.service.fleet
    install = fleet.install_patches

    def counted(command: InstallPatches) -> object:
        polls.append(command.id)
        return install(command)

    fleet.install_patches = counted  # type: ignore[method-assign]
    look = LookNow(id=f"{awaiting}:look:7", run_id=RUN_ID, command_id=awaiting)
    for _ in range(3):  # one window's wake-ups: the same id, delivered together
        runtime.queue.publish([look.model_copy(update={"reason": f"copy {_}"})])
        for delivery in runtime.queue.receive(10):
            runtime.service.handle(delivery)
    assert len(polls) == 1


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**SCENARIOS)
def test_wake_ups_with_crashes_duplicates_and_shuffling_end_like_the_fault_free_run(
    crash_at: set[int], seed: int, duplicate: float, recover: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = LocalWorld(Path(tmp))
        assert_like_the_fault_free_run(chaotic_run(world, crash_at, seed, duplicate, recover, wake=0.5))
