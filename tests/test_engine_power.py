"""Stopped and deallocated machines in the pure engine (policy `stopped_machines`,
docs/governance.md "Hotpatch and stopped machines").

The machines' power is played by `Power`: each command starts or returns machines (each command
applied twice, as a redelivery would), and fails what each machine's drawn faults say. The
invariant holds on every drawn fleet and fault, halts included: once the run's end sweep has
run, every machine found stopped or deallocated is back in that state, and none was patched
while not running.
"""

from __future__ import annotations

from datetime import UTC, datetime

from engine_driver import AnsweredCommand, answer_all_ok, drive_to_end
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.messages import (
    CallWaveHook,
    CheckHealth,
    Command,
    InstallPatches,
    MachinesSwept,
    Notify,
    Outcome,
    ReturnMachines,
    RollBack,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy import Policy, parse_policy

NOW = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
FAULTS = ("start", "return", "install", "health", "rollback", "before_wave")

POLICY = """
name: power-test
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", duration: 24h}
rings:
  - {name: staging, select: {tags: {Environment: staging}}}
  - {name: production, select: {tags: {Environment: production}}}
rollout: {mode: concurrent_zones, disruption_budget: "50%%", canary: 0, max_failures: "%(max_failures)s"}
stopped_machines: %(stopped)s
%(hooks)s
"""
WAVE_HOOK = """hooks:
  before_wave: {url: "https://change.example.com/hooks/wave", secret: wave-hook-key}
"""


def policy(stopped: str = "start", max_failures: str = "100%", hooks: bool = False) -> Policy:
    values = {"stopped": stopped, "max_failures": max_failures, "hooks": WAVE_HOOK if hooks else ""}
    return parse_policy(POLICY % values)


def fleet(size: int, powers: dict[int, str]) -> list[Instance]:
    return [
        Instance(
            id=f"i-{n:02d}",
            cloud="aws" if n % 2 else "azure",
            region="eu-west-1",
            zone=f"eu-west-1{'abc'[n % 3]}",
            os="linux",
            tags={"Environment": "staging" if n < 2 else "production"},
            power=powers.get(n),  # type: ignore[arg-type]
        )
        for n in range(size)
    ]


class Power:
    """The machines' power states, as the engine's commands change them."""

    def __init__(self, instances: list[Instance], faults: dict[str, set[str]]) -> None:
        self.state = {i.id: i.power or "running" for i in instances}
        self.found = {i.id: i.power for i in instances}
        self.faults = faults
        self.returned_once: set[str] = set()  # a "return" fault fails the first return only
        self.violations: list[str] = []
        self.commands: list[AnsweredCommand] = []

    def fails(self, instance_id: str, fault: str) -> bool:
        return fault in self.faults.get(instance_id, set())

    def __call__(self, command: AnsweredCommand) -> list[Outcome]:
        self.commands.append(command)
        outcomes = {o.id: o for o in answer_all_ok(command)}
        failed: set[str] = set()
        match command:
            case StartMachines():
                for _ in range(2):  # a redelivery executes it again: nothing changes twice
                    for i in command.targets:
                        if not self.fails(i.id, "start"):
                            self.state[i.id] = "running"
                failed = {i.id for i in command.targets if self.fails(i.id, "start")}
            case ReturnMachines():
                failed = self._return(command)
            case TakeSnapshots() | InstallPatches() | RollBack() | CheckHealth():
                targets = command.targets if isinstance(command, TakeSnapshots | CheckHealth) else None
                ids = [i.id for i in targets] if targets is not None else [t.instance.id for t in command.targets]  # type: ignore[union-attr]
                for i in ids:
                    if self.state[i] != "running" and isinstance(command, InstallPatches):
                        self.violations.append(f"{i} patched while {self.state[i]}")
                fault = {InstallPatches: "install", CheckHealth: "health", RollBack: "rollback"}.get(type(command))
                if fault and not (isinstance(command, CheckHealth) and command.after_rollback):
                    failed = {i for i in ids if self.fails(i, fault)}
            case CallWaveHook():
                if any(self.fails(m, "before_wave") for m in command.machines):
                    return [Outcome(id=command.phase, ok=False, detail="HTTP 409 change frozen")]
        return [
            o.model_copy(update={"ok": False, "detail": "simulated"}) if k in failed else o for k, o in outcomes.items()
        ]

    def _return(self, command: ReturnMachines) -> set[str]:
        failed = set()
        for _ in range(2):
            for i in command.targets:
                if self.fails(i.id, "return") and i.id not in self.returned_once and not command.at_run_end:
                    failed.add(i.id)
                    continue
                self.state[i.id] = self.found[i.id] or "running"
        self.returned_once |= {i.id for i in command.targets}
        return failed


def run_through(pol: Policy, instances: list[Instance], power: Power) -> Run:
    """Drive the run to its end, then execute its end sweep (as the worker does) and apply it."""
    leftover: list[Command] = []
    run = drive_to_end(start_run("run-1", pol, plan(pol, instances), NOW), power, leftover=leftover)
    for command in leftover:
        if isinstance(command, ReturnMachines):
            assert command.at_run_end
            swept = MachinesSwept(
                id=command.result_id, run_id=run.run_id, command_id=command.id, results=power(command)
            )
            decision = decide(run, swept, NOW)
            assert not decision.ignored
            run = decision.run
            assert decide(run, swept, NOW).ignored  # a duplicate changes nothing
    return run


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, dict[int, str], dict[str, set[str]], str, bool]:
    size = draw(st.integers(min_value=2, max_value=9))
    powers = draw(st.dictionaries(st.integers(0, size - 1), st.sampled_from(["stopped", "deallocated"])))
    faults = draw(
        st.dictionaries(st.sampled_from([f"i-{n:02d}" for n in range(size)]), st.sets(st.sampled_from(FAULTS)))
    )
    return size, powers, faults, draw(st.sampled_from(["100%", "0"])), draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_machine_found_stopped_is_left_running_after_halts_duplicates_and_failures(
    scenario: tuple[int, dict[int, str], dict[str, set[str]], str, bool],
) -> None:
    size, powers, faults, max_failures, hooks = scenario
    instances = fleet(size, powers)
    power = Power(instances, faults)
    run = run_through(policy(max_failures=max_failures, hooks=hooks), instances, power)
    assert power.violations == []
    for instance in instances:
        assert power.state[instance.id] == (instance.power or "running"), f"{instance.id}: {run.state} {run.log[-3:]}"
    assert not any(r.started for r in run.records())


def test_skip_leaves_stopped_machines_untouched_and_says_why() -> None:
    instances = fleet(4, {2: "deallocated"})
    power = Power(instances, {})
    run = run_through(policy(stopped="skip"), instances, power)
    assert not any(isinstance(c, StartMachines | ReturnMachines) for c in power.commands)
    record = next(r for r in run.records() if r.id == "i-02")
    assert (record.state, record.reason) == ("skipped", "machine deallocated: not started (stopped_machines: skip)")


def test_start_patches_the_machine_and_returns_it_at_the_wave_end_and_the_log_lists_it() -> None:
    instances = fleet(4, {2: "deallocated", 3: "stopped"})
    power = Power(instances, {})
    run = run_through(policy(), instances, power)
    kinds = [type(c).__name__ for c in power.commands if not isinstance(c, Notify)]
    assert kinds[kinds.index("StartMachines") + 1] == "ProbeAgents"  # started before the probe
    assert {r.id: r.state for r in run.records()}["i-02"] == "patched"
    said = " ".join(e.text for e in run.log if "returned as found" in e.text)
    assert "i-02 (deallocated)" in said and "i-03 (stopped)" in said
    assert power.state == {"i-00": "running", "i-01": "running", "i-02": "deallocated", "i-03": "stopped"}


def test_a_machine_that_does_not_start_is_skipped_and_still_returned() -> None:
    instances = fleet(4, {2: "stopped"})
    power = Power(instances, {"i-02": {"start"}})
    run = run_through(policy(), instances, power)
    record = next(r for r in run.records() if r.id == "i-02")
    assert record.state == "skipped" and record.reason == "could not be started: simulated"
    assert [s.step for s in record.steps] == ["start", "return"]
