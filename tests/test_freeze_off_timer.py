"""Freezes for runs that start anywhere but at the timer's window start (docs/governance.md,
"Freeze calendars"): retries, follow-ups, advisories' emergency runs and `patchpilot run` of an
emergency policy keep the freeze rules of their kind (`triggers.freeze_gate`), and a run already
under way when a freeze begins starts no wave after its start, whichever path started it (the
cloud timers too)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clocks import ManualClock
from test_compliance_timer import POLICY as TIMER_POLICY
from test_compliance_timer import WINDOW as TIMER_WINDOW
from test_compliance_timer import FakeFleet, FakeRuntime
from test_freeze_runs import EMERGENCY_POLICY, FLEET, cli, variant

from patchpilot.advisories.intake import answer_deliveries
from patchpilot.advisories.models import Advisory
from patchpilot.cli import EXIT_WAITING_APPROVAL
from patchpilot.engine.messages import FollowUpRequested
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance, load_inventory
from patchpilot.local_runtime import LocalRuntime
from patchpilot.policy import Policy, load_policy, parse_policy
from patchpilot.policy.model import Emergency
from patchpilot.triggers import freeze_gate

# 05:00 to 23:00 Tokyo on the example's December window day (its window: 02:00 to 13:00)
DC_MOVE = 'freeze:\n  - {name: dc-move, from: "2026-12-12T05:00", to: "2026-12-12T23:00"}\n'
DC_MOVE_START = datetime(2026, 12, 11, 20, 0, tzinfo=UTC)  # 05:00 Tokyo


# --- the rule, pure ------------------------------------------------------------------------------


GATE_POLICY = """
name: gate
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", timezone: UTC, duration: 4h}
rings: [{name: all, select: {tags: {Environment: production}}}]
freeze:
  - {name: audit, from: "2026-12-12T03:00", to: "2026-12-12T06:00"}
"""
BEFORE, INSIDE = datetime(2026, 12, 12, 2, 0, tzinfo=UTC), datetime(2026, 12, 12, 4, 0, tzinfo=UTC)
AUDIT = "audit (2026-12-12T03:00+00:00 to 2026-12-12T06:00+00:00)"


def test_a_scheduled_run_inside_a_freeze_does_not_start_and_one_before_it_ends_at_it() -> None:
    policy = parse_policy(GATE_POLICY)
    inside = freeze_gate(policy, policy.freezes(), INSIDE, INSIDE + timedelta(hours=4), emergency=False)
    assert inside.frozen is not None and inside.frozen.name == "audit" and inside.window_end is None
    before = freeze_gate(policy, policy.freezes(), BEFORE, BEFORE + timedelta(hours=4), emergency=False)
    assert before.frozen is None and before.frozen_by is None
    assert before.window_end == datetime(2026, 12, 12, 3, 0, tzinfo=UTC)
    after = freeze_gate(policy, policy.freezes(), BEFORE, BEFORE + timedelta(minutes=30), emergency=False)
    assert (after.frozen, after.frozen_by, after.cut_by) == (None, None, None)  # it begins after the window


def test_an_emergency_run_inside_a_freeze_waits_and_one_without_an_end_still_stops_at_the_next() -> None:
    policy = parse_policy(GATE_POLICY)
    inside = freeze_gate(policy, policy.freezes(), INSIDE, None, emergency=True)
    assert inside.frozen is None and inside.frozen_by == AUDIT and inside.window_end is None
    before = freeze_gate(policy, policy.freezes(), BEFORE, None, emergency=True)  # no window: looked ahead
    assert before.frozen_by is None and before.window_end == datetime(2026, 12, 12, 3, 0, tzinfo=UTC)
    passing = policy.model_copy(update={"emergency": Emergency(freeze="pass")})
    for now in (INSIDE, BEFORE):  # `emergency.freeze: pass`: through every freeze, unattended
        gate = freeze_gate(passing, passing.freezes(), now, None, emergency=True)
        assert (gate.frozen, gate.frozen_by, gate.cut_by) == (None, None, None)


# --- a run under way when a freeze begins: the cloud timer's ---------------------------------------


class StartedLocally:
    """The timer's `Service.start`, on a local runtime (SQLite store and queue, the simulated
    fleet) whose virtual clock stands where the timer's does."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime

    def start(self, run_id: str, policy: Policy, instances: list[Instance], **kwargs: Any) -> Run:
        return self.runtime.service.start(run_id, policy, instances, **kwargs)


def test_a_run_the_cloud_timer_started_starts_no_wave_after_a_freeze_begins(tmp_path: Path) -> None:
    """The timer's run (`ServerlessRuntime.trigger`) of a window a freeze begins in: its window
    ends at the freeze, and, driven to its end, no wave starts at or after the freeze's start
    (production, due after staging's hour of soak, is not started). This held before the other
    paths were brought in line: the test keeps it."""
    freeze_start = TIMER_WINDOW + timedelta(minutes=90)
    text = TIMER_POLICY.replace(
        "{name: staging, select: {tags: {Environment: staging}}}",
        "{name: staging, select: {tags: {Environment: staging}}, soak: 1h}",
    )
    text += 'freeze:\n  - {name: dc-move, from: "2026-12-12T03:30", to: "2026-12-12T23:00"}\n'
    tick = TIMER_WINDOW + timedelta(minutes=1)
    rt = FakeRuntime(text, ManualClock(tick), FakeFleet())
    local = LocalRuntime.open(tmp_path / "s", start=tick)
    rt.ports = rt.ports._replace(service=lambda: StartedLocally(local))

    decision = rt.trigger()

    assert decision.start and decision.window_end == freeze_start
    run = local.drive(decision.run_id)
    assert run.window_end == freeze_start
    staging, production = run.waves
    assert staging.started_at is not None and staging.started_at < freeze_start
    assert production.started_at is None and {r.state for r in production.records.values()} == {"not_started"}
    assert run.status == "incomplete" and "window ended at 2026-12-12T03:30" in run.reason


# --- retries ---------------------------------------------------------------------------------------


def _cut_short_run(tmp_path: Path) -> tuple[Path, Path, str]:
    """The example's December run, ended at 05:00 Tokyo by the dc-move freeze (production not
    all patched): the policy file, the state directory and the run id."""
    policy = variant(tmp_path, DC_MOVE)
    state = tmp_path / "s"
    result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", state, "--json")
    run_id = json.loads(result.stdout)["run_id"]
    runtime = LocalRuntime.open(state)
    run = runtime.load(run_id)
    assert run.window_end == DC_MOVE_START and runtime.clock.now() >= DC_MOVE_START
    assert any(r.state == "not_started" for r in run.records()) and run.promoted
    return policy, state, run_id


def notices(state: Path, topic: str) -> list[str]:
    lines = (state / "notifications.jsonl").read_text().splitlines()
    return [n["text"] for n in map(json.loads, lines) if n["topic"] == topic]


def test_a_retry_of_a_scheduled_run_inside_a_freeze_is_refused_naming_it(tmp_path: Path) -> None:
    """The window is still open (until 13:00), but the freeze began at 05:00: the retry does not
    start, the CLI exits 2 naming the freeze, and a run_skipped notice says so."""
    policy, state, run_id = _cut_short_run(tmp_path)

    for extra in ((), ("--policy", policy)):  # the run's stored freezes, and the policy file's
        result = cli("retry", run_id, "--state-dir", state, *extra)
        said = " ".join(result.output.split())

        assert result.exit_code == 2, result.output
        assert "inside freeze dc-move (2026-12-12T05:00+09:00 to 2026-12-12T23:00+09:00)" in said
        assert "a scheduled run does not start in a freeze" in said
    assert LocalRuntime.open(state).store.run_ids() == [run_id]  # nothing started
    skipped = notices(state, "run_skipped")
    assert skipped and skipped[0].startswith(
        f"Retry {run_id}-retry-1 of run {run_id} (policy monthly-fleet) not started"
    )


def test_a_local_retry_outside_the_window_moves_to_the_first_window_no_freeze_stops(tmp_path: Path) -> None:
    """After the window, the next one (16 January) starts inside the example's year-end freeze: the
    retry runs at the one after (13 February), as `patchpilot run` would."""
    policy = variant(tmp_path, DC_MOVE + "  - {name: year-end, from: 2026-12-19, to: 2027-01-17}\n")
    state = tmp_path / "s"
    run_id = json.loads(cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", state, "--json").stdout)[
        "run_id"
    ]
    LocalRuntime.open(state).clock.advance_to(datetime(2026, 12, 12, 5, 0, tzinfo=UTC))  # 14:00 Tokyo: window over

    result = cli("retry", run_id, "--state-dir", state, "--json")

    assert result.exit_code in (0, 4, 5), result.output
    retry = LocalRuntime.open(state).load(f"{run_id}-retry-1")
    assert retry.created_at == datetime(2027, 2, 12, 17, 0, tzinfo=UTC)  # 13 February, 02:00 Tokyo


def _emergency_copy(state: Path, run_id: str, copy_id: str, **policy_update: Any) -> LocalRuntime:
    """A copy of the finished run as a run of an emergency policy (it runs on demand)."""
    runtime = LocalRuntime.open(state)
    finished = runtime.load(run_id)
    update = {"kind": "emergency", "emergency": Emergency(), **policy_update}
    runtime.store.create(
        finished.model_copy(
            update={"run_id": copy_id, "policy": finished.policy.model_copy(update=update), "version": 1}
        ),
        [],
    )
    return runtime


def test_a_retry_of_an_emergency_run_inside_a_freeze_waits_at_its_first_ring_naming_it(tmp_path: Path) -> None:
    _, state, run_id = _cut_short_run(tmp_path)
    runtime = _emergency_copy(state, run_id, "monthly-fleet-emergency-CVE-2026-0001-20261211-1700")

    retry = runtime.retry("monthly-fleet-emergency-CVE-2026-0001-20261211-1700")

    assert retry.frozen_by == "dc-move (2026-12-12T05:00+09:00 to 2026-12-12T23:00+09:00)"
    assert retry.status == "waiting_approval" and retry.cursor == 0
    assert {r.state for r in retry.records()} <= {"pending", "excluded"}  # nothing touched


# --- follow-ups ------------------------------------------------------------------------------------


def _follow_up(runtime: LocalRuntime, run_id: str) -> str:
    """Request a follow-up of finished run `run_id` for one production machine, and drive it."""
    machine = next(r.instance for r in runtime.load(run_id).records() if r.ring == "production")
    follow_up_id = f"{run_id}-followup-0000abcd"
    event = FollowUpRequested(
        id=f"{run_id}:followup:0000abcd",
        run_id=run_id,
        follow_up_id=follow_up_id,
        instances=[machine],
        reason="CVE-2026-0001",
        at=runtime.clock.now(),
    )
    assert runtime.service.request_follow_up(event) is not None
    runtime.drive(run_id)
    return follow_up_id


def test_a_follow_up_of_an_emergency_run_inside_a_freeze_waits_naming_the_deployed_freeze(tmp_path: Path) -> None:
    """The run was stored without the freeze; the policy as deployed now has it: the follow-up
    checks the deployed policy (`Service.deployed_policy`) and waits at its first ring."""
    policy, state, run_id = _cut_short_run(tmp_path)
    copy_id = "monthly-fleet-emergency-CVE-2026-0001-20261211-1700"
    runtime = _emergency_copy(state, run_id, copy_id, freeze=[])
    deployed = load_policy(str(policy))
    runtime.service.deployed_policy = lambda: deployed

    follow_up = runtime.load(_follow_up(runtime, copy_id))

    assert follow_up.follow_up_of == copy_id
    assert follow_up.frozen_by == "dc-move (2026-12-12T05:00+09:00 to 2026-12-12T23:00+09:00)"
    assert follow_up.status == "waiting_approval"


def test_a_follow_up_of_a_scheduled_run_inside_a_freeze_does_not_start_and_says_so(tmp_path: Path) -> None:
    _, state, run_id = _cut_short_run(tmp_path)
    runtime = LocalRuntime.open(state)

    follow_up_id = _follow_up(runtime, run_id)

    assert not runtime.exists(follow_up_id)
    followed = runtime.load(run_id)
    assert [f.state for f in followed.follow_ups] == ["not_started"]
    (entry,) = [e for e in followed.log if e.text.startswith(f"NOT COVERED: follow-up {follow_up_id}")]
    assert "inside freeze dc-move (2026-12-12T05:00+09:00" in entry.text and entry.level == "error"
    (skipped,) = [t for t in notices(state, "run_skipped") if t.startswith("Follow-up run")]
    assert skipped.startswith(f"Follow-up run {follow_up_id} of run {run_id} (policy monthly-fleet) not started")
    assert "inside freeze dc-move" in skipped


def test_a_follow_up_redelivered_after_it_started_is_not_refused_by_a_freeze_that_began_since(
    tmp_path: Path,
) -> None:
    """Starting a follow-up twice is one start: a redelivery inside a freeze that began after the
    first start finishes that start, never records the follow-up as not started."""
    from patchpilot.engine.messages import StartFollowUp

    policy, state, run_id = _cut_short_run(tmp_path)
    copy_id = "monthly-fleet-emergency-CVE-2026-0001-20261211-1700"
    runtime = _emergency_copy(state, run_id, copy_id, freeze=[])
    follow_up_id = _follow_up(runtime, copy_id)  # no freeze known: it started
    assert runtime.exists(follow_up_id)
    deployed = load_policy(str(policy)).model_copy(update={"kind": "emergency"})
    runtime.service.deployed_policy = lambda: deployed
    instances = runtime.load(follow_up_id).records()
    command = StartFollowUp(
        id=f"{copy_id}:followup:{follow_up_id}:start",
        run_id=copy_id,
        follow_up_id=follow_up_id,
        instances=[r.instance for r in instances],
    )
    runtime.service._start_follow_up(command)  # the redelivery, as the worker would handle it
    assert [f.state for f in runtime.load(copy_id).follow_ups] != ["not_started"]


# --- advisories and `patchpilot run` of an emergency policy ---------------------------------------


def test_an_advisory_run_started_before_a_freeze_ends_its_window_at_the_freeze(tmp_path: Path) -> None:
    text = variant(tmp_path, "freeze:\n  - {name: new-year, from: 2025-01-10, to: 2025-01-20}\n", EMERGENCY_POLICY)
    policy, fleet = load_policy(str(text)), load_inventory(str(FLEET))
    started: list[tuple[datetime | None, str | None]] = []

    def start(run_id: str, emergency: Policy, chosen: list[Instance], **kwargs: Any) -> Run:
        started.append((kwargs.get("window_end"), kwargs.get("frozen_by")))
        from patchpilot.engine.decide import start_run
        from patchpilot.planning import plan

        return start_run(run_id, emergency, plan(emergency, chosen), now, **kwargs).run

    now = datetime(2025, 1, 5, 6, 0, tzinfo=UTC)
    linux = [i.id for i in fleet if i.os == "linux" and i.tags.get("PatchPolicy") != "frozen"][:2]
    advisory = Advisory(
        source="patchpilot",
        key="SEC-1",
        cve="CVE-2025-0001",
        severity="CRITICAL",
        fixes=("openssl",),
        instances=tuple(linux),
    )
    (answer,) = answer_deliveries([advisory], policy, lambda: fleet, None, start, lambda n: None, now, None)
    assert answer.action == "start"
    assert started == [(datetime(2025, 1, 9, 15, 0, tzinfo=UTC), None)]  # 10 January, 00:00 Tokyo


def test_running_an_emergency_policy_inside_a_freeze_waits_at_its_first_ring(tmp_path: Path) -> None:
    freeze = "freeze:\n  - {name: new-year, from: 2025-01-10, to: 2025-01-20}\n"
    path = variant(tmp_path, freeze, EMERGENCY_POLICY)
    path.write_text("kind: emergency\n" + path.read_text())
    state = tmp_path / "s"

    result = cli("run", "--policy", path, "--inventory", FLEET, "--state-dir", state, start="2025-01-15T06:00:00+00:00")

    assert result.exit_code == EXIT_WAITING_APPROVAL, result.output
    runtime = LocalRuntime.open(state)
    (run_id,) = runtime.store.run_ids()
    assert runtime.load(run_id).frozen_by == "new-year (2025-01-10T00:00+09:00 to 2025-01-21T00:00+09:00)"


@pytest.mark.parametrize("kind", ["scheduled", "emergency"])
def test_a_calendar_a_stored_run_cannot_read_counts_as_a_freeze(tmp_path: Path, kind: str) -> None:
    """Without the policy file, a freeze_calendar the run's policy names cannot be read: a freeze
    that cannot be checked never lets a run start unattended."""
    text = GATE_POLICY[: GATE_POLICY.index("freeze:")] + "freeze_calendar: freezes.ics\n"
    policy = parse_policy(text)  # parsed from text alone: its calendar is not read
    freezes = LocalRuntime.open(tmp_path / "s").service.freezes_of(policy)  # no deployed policy
    gate = freeze_gate(policy, freezes, INSIDE, None, emergency=kind == "emergency")
    if kind == "scheduled":
        assert gate.frozen is not None and gate.frozen.name.startswith("freeze_calendar freezes.ics (could not be read")
    else:
        assert gate.frozen_by is not None and gate.frozen_by.startswith(
            "freeze_calendar freezes.ics (could not be read"
        )
