"""Drain and re-add, pool health, host hooks and wave hooks in the pure engine (docs/traffic.md).

The pools are played by `Pools`: a load balancer that records who is in, which machine was
disrupted (installed or rolled back) and not yet found healthy, and fails what each machine's
drawn faults say. The invariants hold on every drawn fleet and fault: a machine is out of its
pools during its install and its rollback; none rejoins before its health checks passed; at the
run's end (after its sweep) every machine is back in its pools except those left broken.
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
    LeavePools,
    Notify,
    Outcome,
    PoolsSwept,
    RejoinPools,
    RollBack,
    RunHostHook,
)
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy import Policy, parse_policy

NOW = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
FAULTS = ("drain", "before_install", "install", "after_install", "health", "pool", "rollback", "recheck")

POLICY = """
name: traffic-test
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", duration: 24h}
rings:
  - {name: staging, select: {tags: {Environment: staging}}}
  - {name: production, select: {tags: {Environment: production}}}
rollout: {mode: concurrent_zones, disruption_budget: "50%%", canary: 0, max_failures: "100%%", pool_budget: "50%%"}
traffic: {drain: %(drain)s, pool_health: %(pool_health)s}
scaling_groups: %(scaling)s
%(hooks)s
"""
HOOKS = """hooks:
  before_install: {linux: "systemctl stop app", windows: "Stop-Service app"}
  after_install: {linux: "systemctl start app"}
  before_wave: {url: "https://change.example.com/hooks/wave", secret: wave-hook-key}
  after_wave: {url: "https://change.example.com/hooks/wave", secret: wave-hook-key}
"""


def policy(drain: bool = True, pool_health: bool = True, hooks: bool = False, standby: bool = False) -> Policy:
    values = {
        "drain": str(drain).lower(),
        "pool_health": str(pool_health and drain).lower(),
        "hooks": HOOKS if hooks else "",
        "scaling": "standby" if standby else "skip",
    }
    return parse_policy(POLICY % values)


def fleet(size: int, *, grouped: int = 0) -> list[Instance]:
    out = []
    for n in range(size):
        ring = "staging" if n < 2 else "production"
        pools = ("tg-web",) if n % 3 else ("tg-web", "tg-api")
        out.append(
            Instance(
                id=f"i-{n:02d}",
                cloud="aws",
                region="eu-west-1",
                zone=f"eu-west-1{'abc'[n % 3]}",
                os="windows" if n % 4 == 3 else "linux",
                tags={"Environment": ring},
                traffic_pools=pools,
                scaling_group="asg-web" if n < grouped else None,
            )
        )
    return out


class Pools:
    """The load balancer and the machines, as the engine's commands change them."""

    def __init__(self, faults: dict[str, set[str]]) -> None:
        self.faults = faults
        self.out: set[str] = set()  # out of their pools (or in Standby)
        self.disrupted: set[str] = set()  # installed or rolled back, not yet found healthy
        self.installed: list[str] = []
        self.pool_failed: set[str] = set()
        self.violations: list[str] = []
        self.commands: list[AnsweredCommand] = []

    def fails(self, instance_id: str, fault: str) -> bool:
        return fault in self.faults.get(instance_id, set())

    def __call__(self, command: AnsweredCommand) -> list[Outcome]:
        self.commands.append(command)
        outcomes = {o.id: o for o in answer_all_ok(command)}
        failed: set[str] = set()
        match command:
            case LeavePools():
                for i in command.targets:
                    self.out.add(i.id)  # deregistered, even when it did not finish draining in time
                failed = {i.id for i in command.targets if self.fails(i.id, "drain")}
            case RejoinPools():
                for i in command.targets:
                    if i.id in self.disrupted:
                        self.violations.append(f"{i.id} rejoined its pools before its health checks passed")
                    self.out.discard(i.id)
                if command.pool_health:  # "pool": unhealthy in its pools once (patched), fine after its rollback
                    failed = {
                        i.id for i in command.targets if self.fails(i.id, "pool") and i.id not in self.pool_failed
                    }
                    self.pool_failed |= failed
            case RunHostHook():
                failed = {i.id for i in command.targets if self.fails(i.id, command.phase)}
            case InstallPatches():
                for t in command.targets:
                    if t.instance.traffic_pools and t.instance.id not in self.out:
                        self.violations.append(f"{t.instance.id} installed while serving from its pools")
                    self.installed.append(t.instance.id)
                    self.disrupted.add(t.instance.id)
                failed = {t.instance.id for t in command.targets if self.fails(t.instance.id, "install")}
            case RollBack():
                for t in command.targets:
                    if t.instance.traffic_pools and t.instance.id not in self.out:
                        self.violations.append(f"{t.instance.id} rolled back while serving from its pools")
                    self.disrupted.add(t.instance.id)
                failed = {t.instance.id for t in command.targets if self.fails(t.instance.id, "rollback")}
            case CheckHealth():
                fault = "recheck" if command.after_rollback else "health"
                failed = {i.id for i in command.targets if self.fails(i.id, fault)}
                self.disrupted -= {i.id for i in command.targets} - failed
            case _:
                pass
        return [
            o.model_copy(update={"ok": False, "detail": "simulated"}) if o.id in failed else o
            for o in outcomes.values()
        ]


def run_through(pol: Policy, instances: list[Instance], pools: Pools) -> Run:
    """Drive the run to its end, then deliver its sweep (as the worker does) and apply the result."""
    leftover: list[Command] = []
    run = drive_to_end(start_run("run-1", pol, plan(pol, instances), NOW), pools, leftover=leftover)
    for command in leftover:
        if isinstance(command, RejoinPools) and command.at_run_end:
            outcomes = []
            for i in command.targets:
                was_out = i.id in pools.out
                pools.out.discard(i.id)
                outcomes.append(Outcome(id=i.id, ok=True, items=list(i.traffic_pools) if was_out else []))
            event = PoolsSwept(id=command.result_id, run_id=run.run_id, command_id=command.id, results=outcomes)
            run = decide(run, event, NOW).run
    return run


faults = st.dictionaries(
    st.sampled_from([f"i-{n:02d}" for n in range(8)]), st.sets(st.sampled_from(FAULTS), max_size=3), max_size=5
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 8),
    drawn=faults,
    pool_health=st.booleans(),
    hooks=st.booleans(),
)
def test_no_machine_serves_while_disrupted_and_none_is_left_out_of_its_pools(
    size: int, drawn: dict[str, set[str]], pool_health: bool, hooks: bool
) -> None:
    pools = Pools(drawn)
    run = run_through(policy(pool_health=pool_health, hooks=hooks), fleet(size), pools)
    assert pools.violations == []
    assert len(pools.installed) == len(set(pools.installed)), "a machine was installed twice"
    for record in run.records():
        if record.state == "failed" and any(s.step == "drain" for s in record.steps):
            assert record.id in pools.out, f"{record.id} is broken but back in its pools"
            assert "left out of its pools" in record.reason
        else:
            assert record.id not in pools.out, f"{record.id} ({record.state}) left out of its pools"
            assert not record.out_of_pools


def test_a_healthy_wave_drains_installs_and_rejoins_in_order() -> None:
    pools = Pools({})
    run = run_through(policy(hooks=True), fleet(4), pools)
    kinds = [(type(c).__name__, getattr(c, "phase", "")) for c in pools.commands if c.wave == 1]
    assert kinds[kinds.index(("CallWaveHook", "before_wave")) :] == [
        ("CallWaveHook", "before_wave"),
        ("LeavePools", ""),
        ("RunHostHook", "before_install"),
        ("InstallPatches", ""),
        ("RunHostHook", "after_install"),
        ("CheckHealth", ""),
        ("RejoinPools", ""),
        ("CallWaveHook", "after_wave"),
    ]
    assert run.state == "succeeded"
    assert all(r.reason.endswith("healthy, back in its pools") for r in run.records() if r.state == "patched")
    assert {r.state for r in run.records()} == {"patched", "skipped"}  # no Windows machine in staging to promote from


def test_the_pools_own_health_check_failing_rolls_the_machine_back_after_it_leaves_again() -> None:
    pools = Pools({"i-00": {"pool"}})
    run = run_through(policy(), fleet(2), pools)
    record = next(r for r in run.records() if r.id == "i-00")
    assert record.state == "rolled_back"
    assert record.failure.startswith("pool health check failed")
    steps = [s.step for s in record.steps]
    assert steps[steps.index("install") :] == [
        "install",
        "health",
        "rejoin",
        "redrain",
        "rollback",
        "recheck",
        "rejoin",
    ]
    assert record.reason.endswith("back in its pools")


def test_a_machine_that_stays_broken_stays_out_of_its_pools_and_the_notice_says_so() -> None:
    pools = Pools({"i-00": {"health", "recheck"}})
    run = run_through(policy(), fleet(2), pools)
    record = next(r for r in run.records() if r.id == "i-00")
    assert record.state == "failed" and record.out_of_pools
    assert "left out of its pools (tg-web, tg-api) until it is restored" in record.reason
    assert "i-00" in pools.out
    assert "left out of its pools" in run.log[-1].text or any("left out of its pools" in e.text for e in run.log)


def test_a_failing_before_install_hook_skips_the_install_and_the_machine_rejoins() -> None:
    pools = Pools({"i-00": {"before_install"}})
    run = run_through(policy(hooks=True), fleet(2), pools)
    record = next(r for r in run.records() if r.id == "i-00")
    assert record.state == "skipped"
    assert record.reason.startswith("before_install hook failed: simulated; not patched")
    assert "i-00" not in pools.installed and "i-00" not in pools.out


def test_a_failing_after_install_hook_is_a_failed_health_check() -> None:
    pools = Pools({"i-01": {"after_install"}})
    run = run_through(policy(hooks=True), fleet(2), pools)
    record = next(r for r in run.records() if r.id == "i-01")
    assert record.state == "rolled_back"
    assert record.failure == "after_install hook failed: simulated"


def test_a_machine_not_drained_in_time_is_not_installed() -> None:
    pools = Pools({"i-00": {"drain"}})
    run = run_through(policy(), fleet(2), pools)
    record = next(r for r in run.records() if r.id == "i-00")
    assert record.state == "skipped" and "not drained from its pools" in record.reason
    assert "i-00" not in pools.installed


def test_a_refusing_before_wave_hook_halts_before_any_machine_of_the_wave_is_touched() -> None:
    def refuse(command: AnsweredCommand) -> list[Outcome]:
        if isinstance(command, CallWaveHook) and command.phase == "before_wave":
            return [Outcome(id=command.phase, ok=False, detail="HTTP 409: change freeze in effect")]
        return answer_all_ok(command)

    pol = policy(hooks=True)
    run = drive_to_end(start_run("run-1", pol, plan(pol, fleet(2)), NOW), refuse)
    assert run.state == "halted"
    assert run.reason == "the before_wave hook refused wave 1 (staging): HTTP 409: change freeze in effect"
    assert {r.state for r in run.records()} == {"not_started"}


def test_without_traffic_settings_nothing_is_drained_and_the_flow_is_as_before() -> None:
    pools = Pools({})
    run = run_through(policy(drain=False), fleet(3), pools)
    assert not any(isinstance(c, LeavePools | RejoinPools) for c in pools.commands)
    assert all(r.reason.endswith("installed, healthy") for r in run.records())


def test_standby_takes_scaling_group_members_only_and_keeps_drain_off_pools() -> None:
    pools = Pools({})
    pol = policy(drain=False, standby=True)
    run_through(pol, fleet(3, grouped=3), pools)
    leave = [c for c in pools.commands if isinstance(c, LeavePools)]
    assert leave and all(c.standby for c in leave)
    assert all(i.traffic_pools == () and i.scaling_group == "asg-web" for c in leave for i in c.targets)


def test_the_run_end_sweep_says_what_it_put_back() -> None:
    pools = Pools({})
    leftover: list[Command] = []
    pol = policy()
    run = drive_to_end(start_run("run-1", pol, plan(pol, fleet(2)), NOW), pools, leftover=leftover)
    sweep = next(c for c in leftover if isinstance(c, RejoinPools))
    assert sweep.at_run_end and {i.id for i in sweep.targets} == {"i-00", "i-01"}
    outcomes = [Outcome(id="i-00", ok=True, items=["tg-web"]), Outcome(id="i-01", ok=True)]
    decision = decide(run, PoolsSwept(id=sweep.result_id, run_id="run-1", command_id=sweep.id, results=outcomes), NOW)
    assert decision.run.state == run.state
    assert "put back (i-00 into tg-web)" in decision.run.log[-1].text
    [notice] = [c for c in decision.commands if isinstance(c, Notify)]
    assert notice.severity == "warning"
    again = decide(
        decision.run, PoolsSwept(id=sweep.result_id, run_id="run-1", command_id=sweep.id, results=outcomes), NOW
    )
    assert again.ignored
