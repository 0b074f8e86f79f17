"""Freezes at work (docs/governance.md): `patchpilot schedule` names frozen and shortened windows,
`patchpilot run` skips a frozen window (one `run_skipped` notice) and ends a shortened one at the
freeze, and an emergency run inside a freeze waits at its first ring, the freeze named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from patchpilot.advisories.intake import answer_deliveries
from patchpilot.advisories.models import Advisory
from patchpilot.cli import EXIT_WAITING_APPROVAL, main
from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import Notify
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance, load_inventory
from patchpilot.local_runtime import LocalRuntime
from patchpilot.planning import plan
from patchpilot.policy import Policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "examples" / "policy.yaml"
EMERGENCY_POLICY = ROOT / "examples" / "emergency-policy.yaml"
FLEET = ROOT / "examples" / "fleet.json"
EVENTS = Path(__file__).resolve().parent / "events" / "advisories"
DECEMBER = "2026-12-01T00:00:00+00:00"  # the example's virtual start: its window is 2026-12-12 02:00 Tokyo


def cli(*args: str | Path, start: str = DECEMBER) -> Result:
    env = {"PATCHPILOT_VIRTUAL_START": start, "COLUMNS": "200"}
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def variant(tmp_path: Path, freeze: str, source: Path = POLICY) -> Path:
    """The example policy with `freeze` in place of its own."""
    text = source.read_text()
    if "\nfreeze:" in text:  # the example's year-end freeze: replaced
        start = text.index("\nfreeze:")
        text = text[:start] + text[text.index("\npatches:", start) :]
    path = tmp_path / "policy.yaml"
    path.write_text(text + freeze)
    return path


# --- schedule ------------------------------------------------------------------------------------


def test_schedule_shows_the_example_s_january_window_frozen_and_the_december_one_free() -> None:
    result = cli("schedule", "--policy", POLICY, "--count", "3", "--json")
    assert result.exit_code == 0, result.output
    windows = json.loads(result.stdout)["windows"]
    assert [w["freeze"] for w in windows] == [
        None,
        {
            "name": "year-end",
            "start": "2026-12-19T00:00:00+09:00",
            "end": "2027-01-18T00:00:00+09:00",
            "source": "policy",
            "effect": "frozen",
        },
        None,
    ]
    text = cli("schedule", "--policy", POLICY, "--count", "3")
    assert "frozen: year-end through 2027-01-17" in text.stdout
    assert text.stdout.count("frozen:") == 1


def test_schedule_shows_a_window_a_freeze_cuts_short(tmp_path: Path) -> None:
    policy = variant(tmp_path, 'freeze:\n  - {name: dc-move, from: "2026-12-12T05:00", to: "2026-12-12T23:00"}\n')
    result = cli("schedule", "--policy", policy, "--count", "2", "--json")
    first, second = json.loads(result.stdout)["windows"]
    assert first["freeze"]["effect"] == "cut_short" and first["freeze"]["start"] == "2026-12-12T05:00:00+09:00"
    assert second["freeze"] is None
    assert "ends 05:00: dc-move starts" in cli("schedule", "--policy", policy, "--count", "2").stdout


def test_schedule_without_freezes_keeps_its_table_and_json() -> None:
    text = POLICY.read_text()
    start = text.index("\nfreeze:")
    policy = parse_policy(text[:start] + text[text.index("\npatches:") :])
    assert not policy.freezes()


# --- the local run ---------------------------------------------------------------------------------


def test_a_run_skips_a_window_that_starts_in_a_freeze_with_one_notice_and_runs_at_the_next(tmp_path: Path) -> None:
    policy = variant(tmp_path, "freeze:\n  - {name: audit, from: 2026-12-11, to: 2026-12-13}\n")
    state = tmp_path / "state"
    result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", state, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_id"].startswith("monthly-fleet-20270115-170000-")  # 16 Jan, 02:00 Tokyo
    notices = [json.loads(line) for line in (state / "notifications.jsonl").read_text().splitlines()]
    skipped = [n for n in notices if n["topic"] == "run_skipped"]
    assert [n["text"] for n in skipped] == [
        "Run monthly-fleet-20261212-0200 of policy monthly-fleet skipped: its window 2026-12-12T02:00+09:00 falls in "
        "freeze audit (2026-12-11T00:00+09:00 to 2026-12-14T00:00+09:00). The first window after the freeze patches."
    ]
    assert notices[0]["topic"] == "run_skipped"  # before the run that follows starts


def test_a_policy_whose_every_window_is_frozen_starts_nothing_and_says_why(tmp_path: Path) -> None:
    policy = variant(tmp_path, "freeze:\n  - {name: forever, from: 2026-01-01, to: 2036-01-01}\n")
    result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    assert result.exit_code == 2
    assert "freeze: the next 60 windows all start inside a freeze: no run to start" in result.output


def test_a_window_a_freeze_cuts_short_ends_at_the_freeze(tmp_path: Path) -> None:
    # 03:00 Tokyo: an hour into the window, before production (staging soaks an hour first)
    policy = variant(tmp_path, 'freeze:\n  - {name: dc-move, from: "2026-12-12T03:00", to: "2026-12-12T23:00"}\n')
    state = tmp_path / "state"
    result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", state, "--json")
    document = json.loads(result.stdout)
    runtime = LocalRuntime.open(state)
    (run_id,) = runtime.store.run_ids()
    run = runtime.load(run_id)
    assert run.window_end == datetime(2026, 12, 11, 18, 0, tzinfo=UTC)  # 03:00 Tokyo
    production = [r for r in run.records() if r.ring == "production"]
    assert production and {r.state for r in production} == {"not_started"}
    assert document["status"] != "succeeded"


# --- emergency runs ----------------------------------------------------------------------------------


def test_an_emergency_run_inside_a_freeze_waits_at_its_first_ring_naming_the_freeze(tmp_path: Path) -> None:
    policy = variant(tmp_path, "freeze:\n  - {name: new-year, from: 2025-01-10, to: 2025-01-20}\n", EMERGENCY_POLICY)
    result = cli(
        "advisory",
        EVENTS / "patchpilot_advisory_eventgrid.json",
        *("--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s"),
        start="2025-01-15T06:00:00+00:00",
    )
    assert result.exit_code == EXIT_WAITING_APPROVAL, result.output
    runtime = LocalRuntime.open(tmp_path / "s")
    (run_id,) = runtime.store.run_ids()
    run = runtime.load(run_id)
    assert run.frozen_by == "new-year (2025-01-10T00:00+09:00 to 2025-01-21T00:00+09:00)"
    assert run.status == "waiting_approval" and run.cursor == 0 and run.waves[0].ring == "staging"
    assert {r.state for r in run.records()} <= {"pending", "excluded"}  # nothing touched before approval
    notices = [json.loads(line) for line in (tmp_path / "s" / "notifications.jsonl").read_text().splitlines()]
    (request,) = [n for n in notices if n["topic"] == "approval_needed"]
    assert request["text"].startswith(
        "Ring staging needs approval before it starts (the run started inside freeze new-year (2025-01-10T00:00+09:00"
    )


def _emergency(tmp_path: Path, setting: str) -> tuple[Policy, list[Instance]]:
    freeze = "freeze:\n  - {name: new-year, from: 2025-01-10, to: 2025-01-20}\n"
    text = variant(tmp_path, freeze, EMERGENCY_POLICY).read_text().replace("emergency:", f"emergency:\n  {setting}", 1)
    path = tmp_path / "emergency.yaml"
    path.write_text(text)
    return load_policy(str(path)), load_inventory(str(FLEET))


@pytest.mark.parametrize(("setting", "frozen_by"), [("freeze: approve", "new-year"), ("freeze: pass", None)])
def test_the_intake_passes_the_freeze_to_the_run_unless_emergency_freeze_is_pass(
    tmp_path: Path, setting: str, frozen_by: str | None
) -> None:
    policy, fleet = _emergency(tmp_path, setting)
    started: list[str | None] = []

    def start(
        run_id: str,
        emergency: Policy,
        chosen: list[Instance],
        *,
        window_end: datetime | None = None,
        frozen_by: str | None = None,
    ) -> Run:
        started.append(frozen_by)
        decision = start_run(run_id, emergency, plan(emergency, chosen), NOW, frozen_by=frozen_by)
        return decision.run

    linux = [i.id for i in fleet if i.os == "linux" and i.tags.get("PatchPolicy") != "frozen"][:2]
    advisory = Advisory(
        source="patchpilot",
        key="SEC-1",
        cve="CVE-2025-0001",
        severity="CRITICAL",
        fixes=("openssl",),
        instances=tuple(linux),
    )
    told: list[Notify] = []
    (answer,) = answer_deliveries([advisory], policy, lambda: fleet, None, start, told.append, NOW, None)
    assert answer.action == "start"
    assert [f and f.split(" ")[0] for f in started] == [frozen_by]


NOW = datetime(2025, 1, 15, 6, 0, tzinfo=UTC)


def test_outside_a_freeze_an_emergency_run_starts_its_first_ring_at_once(tmp_path: Path) -> None:
    policy, fleet = _emergency(tmp_path, "freeze: approve")
    chosen = [i for i in fleet if i.os == "linux"][:3]
    after = datetime(2025, 1, 25, tzinfo=UTC)
    from patchpilot.advisories.decide import emergency_freeze

    assert emergency_freeze(policy, after) is None
    run = start_run("r", policy, plan(policy, chosen), after, frozen_by=None).run
    assert run.state != "awaiting_approval"


def test_the_run_command_prints_the_skipped_window_s_notice(tmp_path: Path) -> None:
    policy = variant(tmp_path, "freeze:\n  - {name: audit, from: 2026-12-11, to: 2026-12-13}\n")
    result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Run monthly-fleet-20261212-0200 of policy monthly-fleet skipped: its window")


def test_only_the_first_ring_of_a_frozen_emergency_run_waits_then_the_run_goes_on() -> None:
    """The pure engine: `frozen_by` gates the first ring once; later rings keep their own setting."""
    from engine_driver import answer_all_ok, drive_to_end

    policy = load_policy(str(POLICY))
    fleet = load_inventory(str(FLEET))
    decision = start_run("r", policy, plan(policy, fleet), NOW, frozen_by="year-end (…)")
    assert {w.ring for w in decision.run.waves} == {"staging", "production"}
    assert decision.run.state == "awaiting_approval" and decision.run.cursor == 0
    run = drive_to_end(decision, answer_all_ok)
    gates = [e.text for e in run.log if "needs approval before it starts" in e.text]
    assert len(gates) == 1 and gates[0].startswith("Ring staging needs approval before it starts (the run started")
    assert run.status == "succeeded"
