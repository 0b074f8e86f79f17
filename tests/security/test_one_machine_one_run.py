"""One machine, one run at a time: a monthly run and an emergency run over the same machines
never snapshot, patch, reboot or roll back one machine at the same time (the local runtime, with
its SQLite leases and virtual clock)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from chaos import FLEET, START

from patchpilot.adapters.local.sqlite_leases import SqliteLeases
from patchpilot.engine.run import InstanceRecord, Run
from patchpilot.local_runtime import DB_NAME, LocalRuntime
from patchpilot.policy import Policy, parse_policy


def policy(name: str, duration: str = "10h", cutoff: str = "") -> Policy:
    return parse_policy(
        f"""
name: {name}
schedule: {{monthly: "Second Tuesday Offset+4", at: "02:00", timezone: UTC, duration: {duration}}}
rings:
  - {{name: staging, select: {{tags: {{Environment: staging}}}}, soak: 30m}}
  - {{name: production, select: {{tags: {{Environment: production}}}}}}
rollout: {{mode: concurrent_zones, disruption_budget: 2, canary: 1, max_failures: 3{cutoff}}}
"""
    )


def busy(record: InstanceRecord) -> tuple[datetime, datetime] | None:
    """From the first to the last step done to the machine in a run."""
    done = [s.at for s in record.steps if s.step != "lease"]
    return (min(done), max(done)) if done else None


def overlaps(a: Run, b: Run) -> list[str]:
    mine = {r.id: busy(r) for r in a.records()}
    clashes = []
    for record in b.records():
        theirs, ours = busy(record), mine.get(record.id)
        if theirs and ours and theirs[0] <= ours[1] and ours[0] <= theirs[1]:
            clashes.append(record.id)
    return clashes


def both_started(tmp_path: Path, emergency: Policy) -> tuple[LocalRuntime, Run, Run]:
    """The monthly run starts and takes its first wave's machines; the emergency run starts over
    the same fleet a minute later; then every message is delivered."""
    runtime = LocalRuntime.open(tmp_path, start=START)
    monthly = runtime.start(policy("monthly"), FLEET, run_id="monthly", at=START)
    while runtime.load("monthly").state in ("leasing",):
        (delivery,) = runtime.queue.receive(1)
        runtime.service.handle(delivery)
    runtime.clock.advance_to(START + timedelta(minutes=1))
    urgent = runtime.start(emergency, FLEET, run_id="emergency", at=START + timedelta(minutes=1))
    runtime.drive(monthly.run_id)
    return runtime, runtime.load(monthly.run_id), runtime.load(urgent.run_id)


def test_a_second_run_waits_for_the_machines_the_first_holds(tmp_path: Path) -> None:
    _, monthly, emergency = both_started(tmp_path, policy("emergency"))
    assert monthly.finished and emergency.finished
    assert overlaps(monthly, emergency) == []
    first_wave = {r.id for r in monthly.waves[0].records.values()}
    waited = [r for r in emergency.records() if r.id in first_wave]
    assert waited and all(r.state == "patched" for r in waited), [(r.id, r.state, r.reason) for r in waited]
    assert SqliteLeases(tmp_path / DB_NAME).acquire([i.id for i in FLEET], "after", START, START) == {}


def test_past_its_window_a_run_reports_the_held_machines_skipped(tmp_path: Path) -> None:
    # cutoff 0: a wave may start until the window's end (else none fits a 5-minute window)
    _, monthly, emergency = both_started(tmp_path, policy("emergency", duration="5m", cutoff=", cutoff: 0m"))
    assert overlaps(monthly, emergency) == []
    held = [r for r in emergency.records() if r.state == "skipped" and r.reason == "held by run monthly"]
    assert held, [(r.id, r.state, r.reason) for r in emergency.records()]
    assert all(not [s for s in r.steps if s.step != "lease"] for r in held)  # never touched


def test_the_lease_of_a_run_that_died_lapses(tmp_path: Path) -> None:
    runtime = LocalRuntime.open(tmp_path, start=START)
    ghost = [i.id for i in FLEET]
    assert SqliteLeases(tmp_path / DB_NAME).acquire(ghost, "dead-run", START + timedelta(minutes=20), START) == {}
    run = runtime.start(policy("monthly"), FLEET, run_id="monthly", at=START)
    run = runtime.drive(run.run_id)
    assert run.finished
    assert not [r for r in run.records() if "dead-run" in r.reason]
    first = min(s.at for r in run.records() for s in r.steps if s.step != "lease")
    assert first > START + timedelta(minutes=20)  # it waited for the lease to lapse, no longer
