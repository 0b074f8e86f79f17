"""The pure engine: the flow, its safety rules, and its answers to odd deliveries."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine_driver import answer_all_ok, drive_to_end
from hypothesis import given
from hypothesis import strategies as st

from patchpilot.engine.decide import Decision, decide, start_run
from patchpilot.engine.messages import (
    AgentsProbed,
    ApprovalGranted,
    ApprovalRejected,
    CheckHealth,
    FleetCommand,
    FollowUpRequested,
    HealthChecked,
    InstallPatches,
    InstancesLeased,
    LeaseInstances,
    NoticeUndelivered,
    Notify,
    Outcome,
    PatchesInstalled,
    ProbeAgents,
    RollBack,
    SnapshotsTaken,
    StartFollowUp,
    TakeSnapshots,
)
from patchpilot.engine.run import FINAL_STATES, CloudScheduledRun, Run
from patchpilot.inventory import Instance, Simulation, load_inventory
from patchpilot.planning import plan, plan_cloud_scheduled
from patchpilot.policy import Policy, load_policy, parse_policy

NOW = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parent / "fixtures"

POLICY = """
name: engine-test
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", duration: %(duration)s}
rings:
  - {name: staging, select: {tags: {Environment: staging}}, soak: 1h}
  - {name: production, select: {tags: {Environment: production}}, approval: %(approval)s}
rollout: {mode: concurrent_zones, disruption_budget: "50%%", canary: 1, max_failures: %(max_failures)s}
exclude: {tags: {PatchPolicy: frozen}}
"""


def policy_values(duration: str = "24h", approval: str = "auto", max_failures: str = "1") -> dict[str, str]:
    return {"duration": duration, "approval": approval, "max_failures": max_failures}


def policy(duration: str = "24h", approval: str = "auto", max_failures: str = "1") -> Policy:
    return parse_policy(POLICY % policy_values(duration, approval, max_failures))


def first_ring_approved() -> Policy:
    """`approval: required` on staging, the first ring."""
    return parse_policy(POLICY.replace("soak: 1h}", "soak: 1h, approval: required}") % policy_values())


def fleet(
    staging: int = 4, production: int = 8, frozen: int = 1, hints: dict[str, Simulation] | None = None
) -> list[Instance]:
    hints = hints or {}
    out = []
    for ring, count in (("staging", staging), ("production", production), ("frozen", frozen)):
        for n in range(count):
            iid = f"i-{ring}-{n:02d}"
            tags = {"Environment": "production" if ring == "frozen" else ring}
            if ring == "frozen":
                tags["PatchPolicy"] = "frozen"
            out.append(
                Instance(
                    id=iid,
                    cloud="aws",
                    region="ap-northeast-1",
                    zone=f"ap-northeast-1{'acd'[n % 3]}",
                    os="windows" if n % 4 == 3 else "linux",
                    tags=tags,
                    simulation=hints.get(iid),
                )
            )
    return out


class Recorder:
    """Answers fleet commands from each instance's simulation hints and remembers them."""

    def __init__(self) -> None:
        self.commands: list[FleetCommand] = []

    def __call__(self, command: FleetCommand) -> list[Outcome]:
        self.commands.append(command)
        base = {o.id: o for o in answer_all_ok(command)}
        out = []
        for instance in _instances(command):
            hint = instance.simulation or Simulation()
            ok = {
                ProbeAgents: hint.agent == "online",
                TakeSnapshots: hint.snapshot == "ok",
                InstallPatches: hint.install == "ok",
                RollBack: hint.rollback == "ok",
            }.get(type(command), True)
            if isinstance(command, CheckHealth):
                ok = hint.health == "ok" or command.after_rollback
            out.append(base[instance.id].model_copy(update={"ok": ok, "detail": "" if ok else "simulated"}))
        return out

    def touched(self) -> set[str]:
        return {i.id for c in self.commands for i in _instances(c)}

    def touched_by(self, kind: type) -> set[str]:
        return {i.id for c in self.commands if isinstance(c, kind) for i in _instances(c)}


def _instances(command: FleetCommand) -> list[Instance]:
    if isinstance(command, InstallPatches | RollBack):
        return [t.instance for t in command.targets]
    return list(command.targets)


def run_with(pol: Policy, instances: list[Instance], **kwargs: object) -> tuple[Run, Recorder]:
    recorder = Recorder()
    run = drive_to_end(start_run("run-1", pol, plan(pol, instances), NOW), recorder, **kwargs)  # type: ignore[arg-type]
    return run, recorder


def states(run: Run) -> dict[str, str]:
    return {r.id: r.state for r in run.records()}


# ---------------------------------------------------------------- the flow


def test_healthy_fleet_is_patched_staging_first_then_production() -> None:
    run, recorder = run_with(policy(), fleet())
    assert run.status == "succeeded"
    assert run.summary() == {"patched": 12, "excluded": 1}
    installs = [c for c in recorder.commands if isinstance(c, InstallPatches)]
    rings = [{t.instance.tags["Environment"] for t in c.targets} for c in installs]
    first_production = next(k for k, r in enumerate(rings) if "production" in r)
    assert all(r == {"staging"} for r in rings[:first_production])
    assert all(r == {"production"} for r in rings[first_production:])


def test_production_installs_exactly_the_set_staging_installed_and_passed() -> None:
    run, recorder = run_with(policy(), fleet())
    assert run.promoted == {"linux": ["kernel-6.1.90-1", "openssl-3.0.13-1"], "windows": ["KB5036893"]}
    for command in recorder.commands:
        if isinstance(command, InstallPatches):
            for target in command.targets:
                if target.instance.tags["Environment"] == "staging":
                    assert target.only is None
                else:
                    assert target.only == run.promoted[target.instance.os]


def test_production_is_untouched_when_staging_fails() -> None:
    hints = {"i-staging-01": Simulation(health="fail")}
    run, recorder = run_with(policy(max_failures="5"), fleet(hints=hints))
    assert run.status == "halted"
    assert "ring staging had 1 failure" in run.reason
    assert not any(i.startswith("i-production") for i in recorder.touched())
    assert {states(run)[f"i-production-{n:02d}"] for n in range(8)} == {"not_started"}
    assert states(run)["i-staging-01"] == "rolled_back"


def test_a_failed_health_check_is_rolled_back_and_checked_again() -> None:
    hints = {"i-production-05": Simulation(health="fail")}
    run, recorder = run_with(policy(), fleet(hints=hints))
    record = next(r for r in run.records() if r.id == "i-production-05")
    assert run.status == "succeeded"
    assert record.state == "rolled_back"
    assert "health check failed" in record.reason and "healthy again" in record.reason
    assert [s.step for s in record.steps] == ["probe", "snapshot", "install", "health", "rollback", "recheck"]
    assert recorder.touched_by(RollBack) == {"i-production-05"}


def test_a_failed_rollback_leaves_the_instance_failed() -> None:
    hints = {"i-production-05": Simulation(install="fail", rollback="fail")}
    run, _ = run_with(policy(), fleet(hints=hints))
    record = next(r for r in run.records() if r.id == "i-production-05")
    assert record.state == "failed"
    assert "install failed" in record.reason and "rollback failed too" in record.reason
    assert run.status == "succeeded_with_failures" and "1 machine is left broken" in run.reason


def test_exceeding_max_failures_halts_and_no_later_wave_starts() -> None:
    hints = {f"i-production-{n:02d}": Simulation(health="fail") for n in (1, 2, 4)}
    run, recorder = run_with(policy(max_failures="1"), fleet(hints=hints))
    assert run.status == "halted"
    halted_wave = next(w for w in run.waves if w.failures > 1)
    assert "more than max_failures 1" in run.reason
    later = {r.id for w in run.waves if w.index > halted_wave.index for r in w.records.values()}
    assert later and not (later & recorder.touched())
    assert all(states(run)[i] == "not_started" for i in later)


def test_failures_equal_to_max_failures_do_not_halt() -> None:
    wave_mates = _production_wave_mates(policy(), fleet(), 2)
    hints = {i: Simulation(health="fail") for i in wave_mates}
    run, _ = run_with(policy(max_failures="2"), fleet(hints=hints))
    assert run.status == "succeeded"
    assert sum(1 for r in run.records() if r.state == "rolled_back") == 2


def _production_wave_mates(pol: Policy, instances: list[Instance], count: int) -> list[str]:
    wave = next(w for w in plan(pol, instances).waves if w.ring == "production" and len(w.instances) >= count)
    return wave.ids[:count]


def test_no_wave_starts_after_the_window_ends() -> None:
    run, recorder = run_with(policy(duration="90m"), fleet(), step=timedelta(minutes=20))
    assert run.status == "incomplete"
    assert run.reason.endswith("not started")
    window_end = run.window_end
    assert window_end is not None
    for wave in run.waves:
        if wave.started_at is not None:
            assert wave.started_at < window_end
    not_started = [r for r in run.records() if r.state == "not_started"]
    assert not_started and not ({r.id for r in not_started} & recorder.touched())


def test_cutoff_stops_new_waves() -> None:
    # Each step takes 20m here, so a wave 1h20m; with a cutoff of 3h no wave starts in the last 3h of
    # the 5h window: the waves that started all started more than 3h before its end.
    pol = parse_policy((POLICY % policy_values("5h")).replace("max_failures: 1}", "max_failures: 1, cutoff: 3h}"))
    assert pol.rollout.cutoff == timedelta(hours=3)
    run, recorder = run_with(pol, fleet(), step=timedelta(minutes=20))
    assert run.status == "incomplete"
    window_end = run.window_end
    assert window_end is not None
    started = [w for w in run.waves if w.started_at is not None]
    assert started and all(window_end - w.started_at > timedelta(hours=3) for w in started)  # type: ignore[operator]
    first_not_started = run.waves[len(started)]
    assert run.reason.startswith(f"wave {first_not_started.index}: ")
    assert run.reason.endswith("left of the window, within rollout.cutoff 3h: not started")
    assert not ({r.id for r in first_not_started.records.values()} & recorder.touched())


def test_a_wave_that_does_not_fit_the_window_is_not_started_and_says_why() -> None:
    # Without a cutoff, the longest wave so far (1h20m at 20m a step) must fit in what is left.
    run, recorder = run_with(policy(duration="2h30m"), fleet(), step=timedelta(minutes=20))
    assert run.status == "incomplete"
    # wave 1 took 1h20m; 1h10m left: wave 2 would end 10 minutes past the window's end
    assert (
        run.reason == "wave 2 expected to take 1h20m (the longest wave so far), 1h10m left of the window: not started"
    )
    window_end = run.window_end
    assert window_end is not None
    assert all(w.finished_at <= window_end for w in run.waves if w.finished_at is not None)  # type: ignore[operator]
    assert all(r.state == "not_started" for r in run.waves[1].records.values())
    assert not ({r.id for r in run.waves[1].records.values()} & recorder.touched())


def test_the_first_wave_is_not_started_when_the_estimate_of_its_steps_exceeds_the_window() -> None:
    # No wave has taken time yet: the estimate is the longest snapshot, install, reboot and check.
    run, recorder = run_with(policy(duration="30m"), fleet())
    assert run.status == "incomplete"
    assert run.reason == "wave 1 expected to take 1h2m (the estimate of its steps), 30m left of the window: not started"
    assert not recorder.touched()


def test_a_cutoff_of_0_starts_waves_until_the_window_ends() -> None:
    pol = parse_policy((POLICY % policy_values("90m")).replace("max_failures: 1}", "max_failures: 1, cutoff: 0}"))
    run, _ = run_with(pol, fleet(), step=timedelta(minutes=20))
    assert run.status == "incomplete" and "maintenance window ended" in run.reason


def test_an_instance_whose_agent_does_not_answer_is_skipped_with_the_reason() -> None:
    hints = {"i-production-03": Simulation(agent="offline")}
    run, recorder = run_with(policy(), fleet(hints=hints))
    record = next(r for r in run.records() if r.id == "i-production-03")
    assert record.state == "skipped" and record.reason.startswith("agent did not answer")
    assert "i-production-03" not in recorder.touched_by(TakeSnapshots)
    assert run.status == "succeeded"


def test_a_failed_snapshot_means_no_patching_and_counts_as_a_failure() -> None:
    hints = {"i-staging-02": Simulation(snapshot="fail")}
    run, recorder = run_with(policy(), fleet(hints=hints))
    record = next(r for r in run.records() if r.id == "i-staging-02")
    assert record.state == "skipped" and "snapshot failed" in record.reason
    assert "i-staging-02" not in recorder.touched_by(InstallPatches)
    assert run.status == "halted"  # a failure in the first ring


def test_production_os_without_a_tested_patch_set_is_skipped() -> None:
    instances = [i for i in fleet() if not (i.tags["Environment"] == "staging" and i.os == "windows")]
    run, recorder = run_with(policy(), instances)
    windows = [r for r in run.records() if r.instance.os == "windows" and r.ring == "production"]
    assert windows and all(r.state == "skipped" and "no tested patch set" in r.reason for r in windows)
    assert not ({r.id for r in windows} & recorder.touched())


def test_required_approval_waits_then_goes_on_when_granted() -> None:
    run, recorder = run_with(policy(approval="required"), fleet(), approve=False)
    assert run.status == "waiting_approval"
    assert not any(i.startswith("i-production") for i in recorder.touched())
    assert run.current.ring == "production"
    granted = decide(run, ApprovalGranted(id="a1", run_id=run.run_id), NOW + timedelta(hours=5))
    assert granted.run.state == "leasing"
    assert isinstance(granted.commands[0], LeaseInstances)


def test_approval_required_on_the_first_ring_waits_before_anything_is_touched() -> None:
    pol = first_ring_approved()
    started = start_run("run-1", pol, plan(pol, fleet()), NOW)
    assert started.run.status == "waiting_approval" and started.run.current.ring == "staging"
    assert not [c for c in started.commands if not isinstance(c, Notify)]  # no lease, no snapshot: nothing
    (asked,) = [c for c in started.commands if isinstance(c, Notify) and c.topic == "approval_needed"]
    assert asked.text.startswith("Ring staging needs approval before it starts: approve it with `patchpilot approve")
    granted = decide(started.run, ApprovalGranted(id="run-1:approve:staging", run_id="run-1", by="ops"), NOW)
    assert granted.run.state == "leasing" and granted.run.current.ring == "staging"
    run = drive_to_end(granted, Recorder())
    assert run.status == "succeeded" and "Ring staging approved by ops" in [e.text for e in run.log]


def test_a_cloud_scheduled_run_never_waits_for_an_approval() -> None:
    """Update Manager starts at its own time: its run is not gated (the policy refuses the flag)."""
    scheduled = CloudScheduledRun(
        id="mr-1", configuration_id="/sub/x", starts_at=NOW, ends_at=NOW + timedelta(hours=3), cancel_by=NOW
    )
    pol = first_ring_approved()
    started = start_run("run-1", pol, plan_cloud_scheduled(pol, fleet()), NOW, scheduled)
    assert started.run.state == "leasing"


def test_frozen_instances_are_listed_loudly_and_never_touched() -> None:
    decision = start_run("run-1", policy(), plan(policy(), fleet(frozen=2)), NOW)
    assert "2 frozen instances are not patched" in decision.commands[0].text  # type: ignore[union-attr]
    run, recorder = run_with(policy(), fleet(frozen=2))
    assert not any(i.startswith("i-frozen") for i in recorder.touched())
    assert {states(run)["i-frozen-00"], states(run)["i-frozen-01"]} == {"excluded"}


# ---------------------------------------------------------------- odd deliveries


def _started() -> Decision:
    """A run whose first wave has its leases: it probes."""
    started = start_run("run-1", policy(), plan(policy(), fleet()), NOW)
    lease = next(c for c in started.commands if isinstance(c, LeaseInstances))
    leased = [Outcome(id=i, ok=True) for i in lease.targets]
    event = InstancesLeased(id=lease.result_id, run_id="run-1", command_id=lease.id, results=leased)
    return decide(started.run, event, NOW)


def _probe_answer(decision: Decision) -> AgentsProbed:
    probe = next(c for c in decision.commands if isinstance(c, ProbeAgents))
    return AgentsProbed(id=probe.result_id, run_id="run-1", command_id=probe.id, results=answer_all_ok(probe))


def test_a_duplicate_event_changes_nothing() -> None:
    started = _started()
    event = _probe_answer(started)
    once = decide(started.run, event, NOW)
    twice = decide(once.run, event, NOW)
    assert twice.run is once.run and not twice.commands
    assert "duplicate" in twice.ignored


def test_a_stale_result_for_another_command_changes_nothing() -> None:
    started = _started()
    stale = HealthChecked(id="old:done", run_id="run-1", command_id="run-1:w9:health", results=[])
    assert decide(started.run, stale, NOW).ignored
    wrong_state = PatchesInstalled(id="x:done", run_id="run-1", command_id="run-1:w1:probe", results=[])
    assert "not expected while probing" in decide(started.run, wrong_state, NOW).ignored


def test_an_approval_nobody_asked_for_changes_nothing() -> None:
    decision = decide(_started().run, ApprovalGranted(id="a", run_id="run-1"), NOW)
    assert decision.ignored and decision.run.state == "probing"


def test_a_target_missing_from_the_results_is_not_lost() -> None:
    started = _started()
    event = _probe_answer(started)
    missing = event.results[0].id
    event = event.model_copy(update={"results": event.results[1:]})
    after = decide(started.run, event, NOW).run
    record = after.current.records[missing]
    assert record.state == "skipped" and "no result reported" in record.reason
    assert len(after.current.records) == len(started.run.current.records)


# ---------------------------------------------------------------- safety properties

hint_values = st.builds(
    Simulation,
    install=st.sampled_from(["ok", "ok", "ok", "fail"]),
    health=st.sampled_from(["ok", "ok", "ok", "fail"]),
    snapshot=st.sampled_from(["ok", "ok", "ok", "ok", "fail"]),
    rollback=st.sampled_from(["ok", "ok", "fail"]),
    agent=st.sampled_from(["online", "online", "online", "offline"]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Policy, list[Instance]]:
    staging = draw(st.integers(1, 5))
    production = draw(st.integers(1, 10))
    frozen = draw(st.integers(0, 2))
    ids = [f"i-staging-{n:02d}" for n in range(staging)] + [f"i-production-{n:02d}" for n in range(production)]
    ids += [f"i-frozen-{n:02d}" for n in range(frozen)]
    hints = draw(st.dictionaries(st.sampled_from(ids), hint_values, max_size=6))
    pol = policy(
        duration=draw(st.sampled_from(["2h", "6h", "48h"])),
        max_failures=draw(st.sampled_from(["0", "1", "50%"])),
    )
    return pol, fleet(staging, production, frozen, hints)


@given(scenarios())
def test_safety_rules_hold_for_any_fleet_and_faults(scenario: tuple[Policy, list[Instance]]) -> None:
    pol, instances = scenario
    run, recorder = run_with(pol, instances, step=timedelta(minutes=7))
    touched = recorder.touched()
    # a frozen instance is never touched
    assert not any(i.startswith("i-frozen") for i in touched)
    # production is never touched when staging failed
    if any(r.failure for r in run.records() if r.ring == "staging"):
        assert not any(i.startswith("i-production") for i in touched)
        assert run.status == "halted"
    # a halt stops every later wave
    for wave in run.waves:
        if pol.rollout.max_failures.exceeded_by(wave.failures, len(wave.records)):
            assert run.status == "halted"
            later = {r.id for w in run.waves if w.index > wave.index for r in w.records.values()}
            assert not (later & touched)
    # no wave starts past the window
    assert run.window_end is not None
    assert all(w.started_at is None or w.started_at < run.window_end for w in run.waves)
    # a run that leaves a machine broken never ends plainly succeeded
    if any(r.state == "failed" for r in run.records()):
        assert run.status != "succeeded"
    # a run that patched no machine never ends succeeded
    if not any(r.state == "patched" for r in run.records()):
        assert run.status != "succeeded"
    # nothing is lost: every instance ends in a final state with a reason
    assert all(r.state in FINAL_STATES and r.reason for r in run.records())
    assert len(run.records()) == len(instances)
    # nothing is snapshotted, installed or rolled back twice
    for kind in (TakeSnapshots, InstallPatches, RollBack):
        targets = [i.id for c in recorder.commands if isinstance(c, kind) for i in _instances(c)]
        assert len(targets) == len(set(targets))


def test_example_fleet_rolls_back_its_one_bad_instance_and_succeeds() -> None:
    pol = load_policy(str(FIXTURES / "policy.yaml")).model_copy(update={"schedule": None})
    instances = load_inventory(str(FIXTURES.parent.parent / "examples" / "fleet.json"))
    run, _ = run_with(pol, instances)
    assert run.status == "succeeded"
    assert [r.instance.name for r in run.records() if r.state == "rolled_back"] == ["api-tyo-05"]


def test_a_rollback_in_a_single_ring_policy_still_finishes_as_intended() -> None:
    single = parse_policy(
        """
name: one-ring
rings: [{name: all, select: {tags: {Environment: "*"}}}]
rollout: {disruption_budget: 2, canary: 0, max_failures: 1}
"""
    )
    run, _ = run_with(single, fleet(frozen=0, hints={"i-staging-01": Simulation(health="fail")}))
    assert run.status == "succeeded"
    assert run.summary() == {"patched": 11, "rolled_back": 1}


def test_a_snapshot_reported_ok_without_snapshot_ids_is_not_patched() -> None:
    started = _started()
    probed = decide(started.run, _probe_answer(started), NOW)
    snapshot = next(c for c in probed.commands if isinstance(c, TakeSnapshots))
    results = [Outcome(id=i.id, ok=True, items=[] if n == 0 else [f"snap-{n}"]) for n, i in enumerate(snapshot.targets)]
    event = SnapshotsTaken(id=snapshot.result_id, run_id="run-1", command_id=snapshot.id, results=results)
    after = decide(probed.run, event, NOW)
    first = after.run.current.records[snapshot.targets[0].id]
    assert first.state == "skipped" and "no snapshot id reported" in first.reason
    install = next(c for c in after.commands if isinstance(c, InstallPatches))
    assert snapshot.targets[0].id not in {t.instance.id for t in install.targets}


def test_an_undelivered_notice_is_recorded_once_in_any_state_and_changes_nothing_else() -> None:
    started = start_run("r1", policy(), plan(policy(), fleet()), NOW)
    finished = drive_to_end(started, answer_all_ok)
    assert finished.finished
    undelivered = NoticeUndelivered(
        id="r1:notify:run_finished:undelivered:ops",
        run_id="r1",
        notice_id="r1:notify:run_finished",
        topic="run_finished",
        channel="ops",
        reason="HTTP 404: no_service",
        at=NOW + timedelta(days=1),
    )
    for run in (started.run, finished):
        decision = decide(run, undelivered, NOW + timedelta(days=1))
        assert not decision.ignored and decision.commands == ()
        recorded = decision.run
        assert [(n.channel, n.reason) for n in recorded.undelivered] == [("ops", "HTTP 404: no_service")]
        assert (recorded.state, recorded.awaiting, recorded.waves) == (run.state, run.awaiting, run.waves)
        assert recorded.log[-1].level == "warning" and "not delivered to channel ops" in recorded.log[-1].text
        assert recorded.document()["undelivered"][0]["reason"] == "HTTP 404: no_service"
        assert decide(recorded, undelivered, NOW + timedelta(days=2)).ignored  # delivered twice: recorded once


def test_a_follow_up_is_recorded_once_and_started_only_after_a_run_that_ended_with_a_promoted_set() -> None:
    later = Instance(id="i-later", cloud="aws", region="ap-northeast-1", os="linux", tags={"Environment": "production"})
    request = FollowUpRequested(
        id="r1:followup:x", run_id="r1", follow_up_id="r1-followup-x", instances=[later], at=NOW + timedelta(days=1)
    )
    started = start_run("r1", policy(), plan(policy(), fleet()), NOW)
    recorded = decide(started.run, request, NOW)
    assert recorded.commands == () and [f.state for f in recorded.run.follow_ups] == ["requested"]  # not while it goes
    assert decide(recorded.run, request, NOW).ignored  # delivered twice: recorded once

    finished = drive_to_end(started, answer_all_ok)
    assert finished.status == "succeeded" and finished.promoted
    after_end = decide(finished, request, NOW + timedelta(days=1))
    (start,) = after_end.commands
    assert isinstance(start, StartFollowUp) and (start.follow_up_id, start.instances) == ("r1-followup-x", [later])
    assert decide(after_end.run, request, NOW + timedelta(days=1)).ignored

    staging_fails = fleet(hints={"i-staging-00": Simulation(install="fail")})
    halted = drive_to_end(start_run("r2", policy(), plan(policy(), staging_fails), NOW), Recorder())
    assert halted.status == "halted" and halted.promoted is None
    refused = decide(halted, request.model_copy(update={"run_id": "r2"}), NOW + timedelta(days=1))
    assert refused.commands == () and refused.run.follow_ups[0].state == "not_started"
    assert refused.run.log[-1].text.startswith("NOT COVERED: run r2 halted before promotion")


def test_a_follow_up_installs_exactly_what_its_run_promoted_in_every_ring_staging_too() -> None:
    finished = drive_to_end(start_run("r1", policy(), plan(policy(), fleet()), NOW), answer_all_ok)
    assert finished.promoted
    installs: list[InstallPatches] = []

    def record(command: FleetCommand) -> list[Outcome]:
        if isinstance(command, InstallPatches):
            installs.append(command)
        return answer_all_ok(command, patches={"linux": ["openssl", "untested"], "windows": ["KB1", "KB-untested"]})

    instances = fleet(staging=1, production=2, frozen=0)
    follow_up = start_run("r1-followup-x", policy(), plan(policy(), instances), NOW, follow_up_of=finished)
    done = drive_to_end(follow_up, record)
    assert done.status == "succeeded" and done.follow_up_of == "r1" and done.promoted == finished.promoted
    targets = [t for c in installs for t in c.targets]
    assert {t.instance.id for t in targets} == {i.id for i in instances}
    assert all(t.only == finished.promoted.get(t.instance.os) for t in targets)


# ---------------------------------------------------------------- a run that patched nothing


def test_an_up_to_date_fleet_still_succeeds() -> None:
    """Nothing installed because nothing was missing: every first-ring machine is `patched` with an
    empty install list, so the run patched nothing and rightly succeeds."""
    run = drive_to_end(start_run("r1", policy(), plan(policy(), fleet()), NOW), lambda c: answer_all_ok(c, patches={}))
    assert run.status == "succeeded" and run.reason == "every wave finished"
    staging = [r for r in run.records() if r.ring == "staging"]
    assert staging and all(r.state == "patched" and r.installed == [] for r in staging)
    assert run.promoted == {"linux": [], "windows": []}


def test_a_first_ring_that_patched_nothing_ends_nothing_patched_and_starts_no_follow_up() -> None:
    offline = {f"i-staging-{n:02d}": Simulation(agent="offline") for n in range(4)}
    run, recorder = run_with(policy(), fleet(hints=offline))
    assert run.status == "nothing_patched"
    assert run.reason == (
        "ring staging patched nothing (4 skipped), so no tested set was promoted; rings production were not touched"
    )
    assert not any(i.startswith("i-production") for i in recorder.touched())
    assert run.log[-1].level == "warning" and run.log[-1].text.startswith("Run run-1 nothing_patched: ring staging")
    assert not run.may_follow_up


def test_an_empty_inventory_and_an_all_excluded_one_do_not_succeed() -> None:
    empty = drive_to_end(start_run("r1", policy(), plan(policy(), []), NOW), answer_all_ok)
    assert (empty.status, empty.reason) == ("nothing_patched", "the inventory is empty")
    frozen = drive_to_end(start_run("r2", policy(), plan(policy(), fleet(0, 0, frozen=2)), NOW), answer_all_ok)
    assert frozen.status == "nothing_patched"
    assert frozen.reason.startswith("every one of the 2 instances was excluded (frozen")


def test_a_rejection_is_logged_with_the_approver_and_ring_as_written() -> None:
    run, _ = run_with(policy(approval="required"), fleet(), approve=False)
    gate = f"{run.run_id}:approve:{run.current.ring}"
    rejected = decide(run, ApprovalRejected(id=gate, run_id=run.run_id, by="Slack U0A1B2C3D (Alice)"), NOW).run
    assert rejected.log[-2].text == "Ring production rejected by Slack U0A1B2C3D (Alice)"


def test_the_snapshots_pass_machines_without_one_as_the_plan_says() -> None:
    """The engine takes `patch_without_rollback` from the plan (planning/), not from the policy's
    cloud section: the policy here has none."""
    for flag in (False, True):
        the_plan = dataclasses.replace(plan(policy(), fleet()), patch_without_rollback=flag)
        started = start_run("run-1", policy(), the_plan, NOW)
        lease = next(c for c in started.commands if isinstance(c, LeaseInstances))
        leased = [Outcome(id=i, ok=True) for i in lease.targets]
        event = InstancesLeased(id=lease.result_id, run_id="run-1", command_id=lease.id, results=leased)
        leased_run = decide(started.run, event, NOW)
        probed = decide(leased_run.run, _probe_answer(leased_run), NOW)
        snapshot = next(c for c in probed.commands if isinstance(c, TakeSnapshots))
        assert snapshot.patch_without_rollback is flag


def test_a_stored_run_keeps_its_keys_and_one_stored_before_the_plans_flag_reads_its_policy() -> None:
    azure = parse_policy(POLICY % policy_values() + "azure: {arc: true, patch_without_rollback: true}\n")
    scheduled = CloudScheduledRun(
        id="mr-1", configuration_id="/sub/x", starts_at=NOW, ends_at=NOW + timedelta(hours=3), cancel_by=NOW
    )
    run = start_run("run-1", azure, plan_cloud_scheduled(azure, fleet()), NOW, cloud_scheduled=scheduled).run
    stored = json.loads(run.model_dump_json())
    assert stored["maintenance"]["id"] == "mr-1" and "cloud_scheduled" not in stored  # the key runs were stored with
    assert stored["patch_without_rollback"] is True and Run.model_validate(stored) == run
    del stored["patch_without_rollback"]  # a run stored before the plan carried the flag
    assert Run.model_validate(stored).patch_without_rollback is True
    stored["policy"]["azure"]["patch_without_rollback"] = False
    assert Run.model_validate(stored).patch_without_rollback is False
