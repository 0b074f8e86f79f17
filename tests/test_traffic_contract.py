"""The TrafficPools port (leave and rejoin the load-balancer pools around an install) on every
runtime: the simulated fleet, ELBv2 on moto (a Stubber where a target must stay `draining`) and
Azure backend pools on the fake ARM (the `traffic_runtime` fixture of tests/traffic_runtimes.py;
each call a fresh adapter, as the worker that took a redelivered message would have). Every
machine serves in two pools; what the adapters did is read back from each backend.

Where the runtimes differ, and the contract leaves room for it: a LeavePools (a new command id)
for a machine an earlier one took out writes nothing, and its items name at most what the earlier
one removed. The simulation names nothing (its record of each command says what that command
changed); ELBv2 names the machine's default registrations again (AWS keeps no record of which
command deregistered a target, and none is written per command: the first command's polls and a
later command see the same thing); Azure names the references the NIC's PatchPilotPools record
says are still out. Either way the rejoin built from those items as the engine builds it
(decide.py: a machine without items gets no registrations) puts the machine back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from traffic_runtimes import AzureRuntime, Elbv2Runtime, SimulatedRuntime, TrafficRuntime, until_done

from patchpilot.engine.messages import LeavePools, Outcome, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.ports import InProgress

pytestmark = pytest.mark.slow

RUN = "weekly-20261208-2200-c0de"


@pytest.fixture(params=["simulated", "elbv2", "azure"])
def traffic_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrafficRuntime]:
    if request.param == "simulated":
        simulated = SimulatedRuntime(tmp_path / "fleet.db")
        yield simulated
        simulated.close()
    elif request.param == "elbv2":
        with mock_aws():
            elbv2 = Elbv2Runtime()
            yield elbv2
            elbv2.harness.done()  # a Stubber's answers were all asked for
    else:
        yield AzureRuntime()


def leave(runtime: TrafficRuntime, targets: list[Instance], step: str = "w1:drain") -> LeavePools:
    return LeavePools(id=f"{RUN}:{step}", run_id=RUN, wave=1, targets=targets, issued_at=runtime.clock.now())


def rejoin(
    runtime: TrafficRuntime,
    targets: list[Instance],
    registrations: dict[str, list[str]],
    step: str = "w1:rejoin",
    **fields: Any,
) -> RejoinPools:
    return RejoinPools(
        id=f"{RUN}:{step}",
        run_id=RUN,
        wave=1,
        targets=targets,
        registrations=registrations,
        issued_at=runtime.clock.now(),
        **fields,
    )


def as_the_engine_keeps(outcomes: list[Outcome]) -> dict[str, list[str]]:
    """RejoinPools.registrations as decide.py builds them: a machine's leave items, when it has any."""
    return {o.id: o.items for o in outcomes if o.items}


def left(runtime: TrafficRuntime, targets: list[Instance], step: str = "w1:drain") -> list[Outcome]:
    outcomes, _ = until_done(runtime.clock, lambda: runtime.pools().leave_pools(leave(runtime, targets, step)))
    return outcomes


def same(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """What two answers must agree on (`at` is the adapter's clock reading)."""
    return [o.model_dump(exclude={"at"}) for o in outcomes]


def test_leaving_is_polled_until_drained_and_takes_each_machine_out_of_both_pools(
    traffic_runtime: TrafficRuntime,
) -> None:
    machines = traffic_runtime.machines(2)
    assert all(traffic_runtime.pools_in(m) == set(m.traffic_pools) and len(m.traffic_pools) == 2 for m in machines)
    command = leave(traffic_runtime, machines)

    outcomes, polls = until_done(traffic_runtime.clock, lambda: traffic_runtime.pools().leave_pools(command))

    assert polls, "drained at once: the pools were not waited for"
    assert [o.id for o in outcomes] == [m.id for m in machines]
    assert all(o.ok and o.items for o in outcomes), outcomes
    assert all(traffic_runtime.pools_in(m) == set() for m in machines)


def test_a_redelivered_leave_writes_nothing_and_answers_the_same(traffic_runtime: TrafficRuntime) -> None:
    machines = traffic_runtime.machines(2)
    command = leave(traffic_runtime, machines)
    assert isinstance(traffic_runtime.pools().leave_pools(command), InProgress)  # this worker's answer is lost
    written = traffic_runtime.writes()
    assert written
    outcomes, _ = until_done(traffic_runtime.clock, lambda: traffic_runtime.pools().leave_pools(command))
    assert traffic_runtime.writes() == written  # the polls only read

    traffic_runtime.clock.advance(timedelta(minutes=2))  # the queue delivers the message again
    again = traffic_runtime.pools().leave_pools(command)

    assert not isinstance(again, InProgress), again
    assert same(again) == same(outcomes)
    assert traffic_runtime.writes() == written
    assert all(traffic_runtime.pools_in(m) == set() for m in machines)


def test_a_new_leave_for_a_machine_already_out_writes_nothing_and_the_rejoin_built_from_it_puts_it_back(
    traffic_runtime: TrafficRuntime,
) -> None:
    """(The runtimes' items differ here: the module's docstring.)"""
    machines = traffic_runtime.machines(2)
    first = {o.id: o for o in left(traffic_runtime, machines)}
    written = traffic_runtime.writes()

    second = left(traffic_runtime, machines, "w1:redrain")

    assert traffic_runtime.writes() == written
    assert all(o.ok for o in second), second
    assert all(set(o.items) <= set(first[o.id].items) for o in second), second  # claims nothing it did not remove
    assert all(traffic_runtime.pools_in(m) == set() for m in machines)

    command = rejoin(traffic_runtime, machines, as_the_engine_keeps(second))
    back, _ = until_done(traffic_runtime.clock, lambda: traffic_runtime.pools().rejoin_pools(command))

    assert all(o.ok for o in back), back
    assert all(traffic_runtime.pools_in(m) == set(m.traffic_pools) for m in machines)


def test_rejoining_puts_back_what_the_leave_removed_and_a_new_rejoin_finds_it_in(
    traffic_runtime: TrafficRuntime,
) -> None:
    machines = traffic_runtime.machines(2)
    registrations = {o.id: o.items for o in left(traffic_runtime, machines)}
    command = rejoin(traffic_runtime, machines, registrations)

    back, _ = until_done(traffic_runtime.clock, lambda: traffic_runtime.pools().rejoin_pools(command))

    assert [o.id for o in back] == [m.id for m in machines]
    assert all(o.ok for o in back), back
    assert {o.id: traffic_runtime.pools_named(o.items) for o in back} == {m.id: set(m.traffic_pools) for m in machines}
    assert all(traffic_runtime.pools_in(m) == set(m.traffic_pools) for m in machines)
    written = traffic_runtime.writes()

    again, _ = until_done(
        traffic_runtime.clock,
        lambda: traffic_runtime.pools().rejoin_pools(rejoin(traffic_runtime, machines, registrations, "w1:restore")),
    )

    assert all(o.ok and o.items == [] for o in again), again
    assert traffic_runtime.writes() == written
    assert all(traffic_runtime.pools_in(m) == set(m.traffic_pools) for m in machines)


def test_the_run_end_sweep_puts_back_only_the_machine_a_crash_left_out_and_names_it(
    traffic_runtime: TrafficRuntime,
) -> None:
    """The sweep of a run that kept no LeavePools result (no registrations): one machine is in,
    the other's leave was executed once and its worker died (no rejoin ever came)."""
    served, crashed = traffic_runtime.machines(2)
    traffic_runtime.pools().leave_pools(leave(traffic_runtime, [crashed]))
    assert traffic_runtime.pools_in(crashed) == set()
    traffic_runtime.clock.advance(timedelta(minutes=10))
    command = rejoin(traffic_runtime, [served, crashed], {}, "rejoin-at-end", at_run_end=True)

    swept, _ = until_done(traffic_runtime.clock, lambda: traffic_runtime.pools().rejoin_pools(command))

    by_id = {o.id: o for o in swept}
    assert by_id[served.id].ok and by_id[served.id].items == []
    assert by_id[crashed.id].ok and traffic_runtime.pools_named(by_id[crashed.id].items) == set(crashed.traffic_pools)
    assert traffic_runtime.pools_in(served) == set(served.traffic_pools)
    assert traffic_runtime.pools_in(crashed) == set(crashed.traffic_pools)


def test_an_answer_in_progress_carries_the_outcomes_of_the_machines_already_drained(
    traffic_runtime: TrafficRuntime,
) -> None:
    drains, still = traffic_runtime.one_still_draining()
    command = leave(traffic_runtime, [drains, still])

    progress = traffic_runtime.pools().leave_pools(command)
    for _ in range(10):
        if not isinstance(progress, InProgress) or progress.finished:
            break
        assert progress.retry_at > traffic_runtime.clock.now()
        traffic_runtime.clock.set(progress.retry_at)
        progress = traffic_runtime.pools().leave_pools(command)

    assert isinstance(progress, InProgress), progress
    assert progress.retry_at > traffic_runtime.clock.now()
    (done,) = progress.finished
    assert done.id == drains.id and done.ok and done.items
