"""The `patchpilot` command: exit statuses, problems on stderr, JSON shapes."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from patchpilot.cli import EXIT_INVALID_INPUT, main
from patchpilot.policy.fields import format_duration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY = str(Path(__file__).resolve().parent / "fixtures" / "policy.yaml")
FLEET = str(EXAMPLES / "fleet.json")
# The example fleet's one single-member pool (tg-admin-tyo): every plan of it warns.
ADMIN_POOL = f"warning: {FLEET}: pool tg-admin-tyo has one member: it will be down during its install"

BAD_POLICY = """\
name: bad
schedule:
  monthly: "Second Tuesday"
  at: "25:00"
  duration: 4h
rings:
  - name: r
    select: {tags: {Environment: staging}}
rollout:
  disruption_budget: ten
"""


def run(*args: str) -> Result:
    # A wide terminal so rich does not wrap the lines the tests look for.
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- validate --------------------------------------------------------------------------------------


def test_validate_example_policy_exits_0() -> None:
    result = run("validate", "--policy", POLICY)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{POLICY}: ok (policy monthly-fleet; rings staging, production)\n"
    assert result.stderr == ""


def test_validate_example_policy_and_inventory_exits_0() -> None:
    result = run("validate", "--policy", POLICY, "--inventory", FLEET)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == f"{FLEET}: ok (66 instances)"


def test_validate_with_inventory_warns_when_a_ring_selects_nothing(tmp_path: Path) -> None:
    text = Path(POLICY).read_text(encoding="utf-8")
    typo = write(tmp_path, "typo.yaml", text.replace("{Environment: production}", "{Enviroment: production}"))
    result = run("validate", "--policy", typo, "--inventory", FLEET)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == f"{FLEET}: ok (66 instances)"
    assert result.stderr.splitlines() == [
        f"warning: {typo}: rings[1].select: ring production selects no machine of {FLEET} (66 instances); "
        "check its select"
    ]
    assert run("validate", "--policy", POLICY, "--inventory", FLEET).stderr == ADMIN_POOL + "\n"


def test_validate_bad_policy_exits_2_with_every_problem_on_stderr(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", BAD_POLICY)
    result = run("validate", "--policy", path)
    assert result.exit_code == EXIT_INVALID_INPUT == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'{path}:4:3: schedule.at: expected a 24-hour time such as "02:00", got "25:00"',
        f'{path}:10:3: rollout.disruption_budget: expected a whole number or a percentage, got "ten"',
        "2 problems found.",
    ]


def test_validate_single_problem_count_line_is_singular(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", BAD_POLICY.replace('"25:00"', '"02:00"'))
    result = run("validate", "--policy", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "1 problem found."


def test_validate_missing_policy_file_exits_2(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    result = run("validate", "--policy", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{path}: (top level): file not found", "1 problem found."]


def test_validate_bad_inventory_exits_2_naming_the_entry(tmp_path: Path) -> None:
    inventory = {
        "instances": [
            {"id": "i-1", "cloud": "aws", "region": "us-east-1", "os": "linux", "zon": "a"},
            {"id": "i-1", "cloud": "gcp", "region": "us-east-1", "os": "linux"},
        ]
    }
    path = write(tmp_path, "fleet.json", json.dumps(inventory))
    result = run("validate", "--policy", POLICY, "--inventory", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f'{path}: instances[0].zon: unknown field (did you mean zone?) (entry "i-1")',
        f"{path}: instances[1].cloud: expected 'aws' or 'azure', got \"gcp\" (entry \"i-1\")",
        f'{path}: instances[1].id: duplicate id "i-1" (also instances[0])',
        "3 problems found.",
    ]


def test_validate_inventory_with_invalid_json_exits_2_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.json", '{"instances": [\n  {"id": }\n]}\n')
    result = run("validate", "--policy", POLICY, "--inventory", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}:2:")
    assert "not valid JSON" in result.stderr


def test_validate_without_policy_option_is_a_usage_error() -> None:
    result = run("validate")
    assert result.exit_code == 2
    assert "--policy" in result.stderr


# --- schedule --------------------------------------------------------------------------------------


def test_schedule_json_lists_windows_after_a_date() -> None:
    result = run("schedule", "--policy", POLICY, "--count", "3", "--after", "2026-12-01", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == {
        "policy": "monthly-fleet",
        "timezone": "Asia/Tokyo",
        "duration": "4h",
        "windows": [
            {"start": "2026-12-11T02:00:00+09:00", "end": "2026-12-11T06:00:00+09:00", "freeze": None},
            {"start": "2027-01-15T02:00:00+09:00", "end": "2027-01-15T06:00:00+09:00", "freeze": None},
            {"start": "2027-02-12T02:00:00+09:00", "end": "2027-02-12T06:00:00+09:00", "freeze": None},
        ],
    }  # `freeze`: docs/governance.md


def test_schedule_after_without_offset_is_in_the_policy_time_zone() -> None:
    # 02:00 in Tokyo is exactly the December window's start, so it is included...
    at_start = run("schedule", "--policy", POLICY, "--count", "1", "--after", "2026-12-11T02:00", "--json")
    assert json.loads(at_start.stdout)["windows"][0]["start"] == "2026-12-11T02:00:00+09:00"
    # ...while 02:00 UTC is 11:00 in Tokyo, after that window started.
    later = run("schedule", "--policy", POLICY, "--count", "1", "--after", "2026-12-11T02:00Z", "--json")
    assert json.loads(later.stdout)["windows"][0]["start"] == "2027-01-15T02:00:00+09:00"


def test_schedule_count_sets_the_number_of_windows() -> None:
    result = run("schedule", "--policy", POLICY, "--count", "12", "--after", "2026-01-01", "--json")
    assert len(json.loads(result.stdout)["windows"]) == 12


def test_schedule_table_shows_the_rule_and_the_windows() -> None:
    result = run("schedule", "--policy", POLICY, "--count", "2", "--after", "2026-12-01")
    assert result.exit_code == 0, result.output
    assert "Second Tuesday Offset+3 at 02:00 Asia/Tokyo, 4h" in result.stdout
    assert "2026-12-11T02:00:00+09:00" in result.stdout
    assert "Fri 11 Dec 2026" in result.stdout


def test_schedule_with_bad_after_exits_2() -> None:
    result = run("schedule", "--policy", POLICY, "--after", "next tuesday")
    assert result.exit_code == 2
    assert "--after" in result.stderr
    assert 'got "next tuesday"' in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("count", ["0", "1001", "many"])
def test_schedule_with_bad_count_exits_2(count: str) -> None:
    result = run("schedule", "--policy", POLICY, "--count", count)
    assert result.exit_code == 2
    assert "--count" in result.stderr


def test_schedule_on_a_policy_without_schedule_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nrings:\n  - name: r\n    select: {clouds: [aws]}\n")
    result = run("schedule", "--policy", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{path}: schedule: the policy has no schedule", "1 problem found."]
    as_json = run("schedule", "--policy", path, "--json")  # with --json, the error is JSON too
    assert as_json.exit_code == 2 and as_json.stdout == ""
    assert json.loads(as_json.stderr) == {
        "error": f"{path}: schedule: the policy has no schedule",
        "problems": [
            {"source": path, "path": "schedule", "line": None, "column": None, "message": "the policy has no schedule"}
        ],
    }


def test_schedule_on_a_bad_policy_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", BAD_POLICY)
    result = run("schedule", "--policy", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "2 problems found."


# --- plan ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_plan() -> dict[str, Any]:
    result = run("plan", "--policy", POLICY, "--inventory", FLEET, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_plan_json_has_waves_excluded_and_summary(example_plan: dict[str, Any]) -> None:
    assert set(example_plan) == {"waves", "excluded", "summary", "window", "warnings"}
    # every ring selects machines of the example fleet; only the window is too short (4h for 27 waves)
    assert [w.split(": ")[1] for w in example_plan["warnings"]] == [
        "pool tg-admin-tyo has one member",
        "schedule.duration",
    ]
    waves = example_plan["waves"]
    assert waves
    for wave in waves:
        assert {"index", "ring", "instances"} <= set(wave)
        assert wave["ring"] in {"staging", "production"}
        assert wave["instances"]
        assert all(isinstance(i, str) for i in wave["instances"])
    assert [w["index"] for w in waves] == list(range(1, len(waves) + 1))
    # Staging runs first, then production.
    rings = [w["ring"] for w in waves]
    assert rings == sorted(rings, key=["staging", "production"].index)
    for item in example_plan["excluded"]:
        assert set(item) == {"id", "reason"}


def test_plan_json_places_every_instance_exactly_once(example_plan: dict[str, Any]) -> None:
    fleet = json.loads(Path(FLEET).read_text(encoding="utf-8"))["instances"]
    planned = [i for w in example_plan["waves"] for i in w["instances"]]
    excluded = [e["id"] for e in example_plan["excluded"]]
    assert len(planned) == len(set(planned))
    assert sorted(planned + excluded) == sorted(e["id"] for e in fleet)
    summary = example_plan["summary"]
    assert summary["instances"] == len(planned)
    assert summary["excluded"] == len(excluded)
    assert summary["waves"] == len(example_plan["waves"])
    assert summary["lower_bound"] <= summary["waves"]
    assert [r["name"] for r in summary["rings"]] == ["staging", "production"]
    assert sum(r["waves"] for r in summary["rings"]) == summary["waves"]


def test_plan_excludes_frozen_instances_with_a_frozen_reason(example_plan: dict[str, Any]) -> None:
    fleet = json.loads(Path(FLEET).read_text(encoding="utf-8"))["instances"]
    frozen = {e["id"] for e in fleet if e["tags"].get("PatchPolicy") == "frozen"}
    assert len(frozen) == 2
    reasons = {e["id"]: e["reason"] for e in example_plan["excluded"]}
    for instance_id in frozen:
        assert reasons[instance_id].startswith("frozen")
        assert "PatchPolicy=frozen" in reasons[instance_id]


def test_plan_excludes_untagged_bastion_as_matching_no_ring(example_plan: dict[str, Any]) -> None:
    fleet = json.loads(Path(FLEET).read_text(encoding="utf-8"))["instances"]
    (bastion,) = [e["id"] for e in fleet if e["name"] == "bastion-01"]
    reasons = {e["id"]: e["reason"] for e in example_plan["excluded"]}
    assert "matched no ring" in reasons[bastion]


def test_plan_production_starts_with_a_single_canary_wave(example_plan: dict[str, Any]) -> None:
    production = [w for w in example_plan["waves"] if w["ring"] == "production"]
    assert production[0]["canary"] is True
    assert len(production[0]["instances"]) == 1
    assert not any(w["canary"] for w in example_plan["waves"] if w is not production[0])


def test_plan_warns_when_a_ring_selects_nothing(tmp_path: Path) -> None:
    text = Path(POLICY).read_text(encoding="utf-8")
    text = text.replace("duration: 4h", "duration: 2d")  # every wave fits: no window warning
    typo = write(tmp_path, "typo.yaml", text.replace("{Environment: staging}", "{Environment: stagign}"))
    table = run("plan", "--policy", typo, "--inventory", FLEET)
    assert table.exit_code == 0, table.output
    warning = (
        f"warning: {typo}: rings[0].select: ring staging selects no machine of {FLEET} (66 instances): a run "
        "would patch nothing and promote no tested set, so no later ring is patched either; check its select"
    )
    assert table.stderr.splitlines() == [warning, ADMIN_POOL]
    document = json.loads(run("plan", "--policy", typo, "--inventory", FLEET, "--json").stdout)
    assert document["warnings"] == [warning.removeprefix("warning: "), ADMIN_POOL.removeprefix("warning: ")]
    assert {w["ring"] for w in document["waves"]} == {"production"}


def test_plan_warns_when_the_inventory_is_empty(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.json", '{"instances": []}')
    result = run("plan", "--policy", POLICY, "--inventory", empty, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["warnings"] == [f"{empty}: the inventory is empty: a run would patch nothing"]


def test_plan_table_mentions_waves_lower_bound_and_exclusions() -> None:
    result = run("plan", "--policy", POLICY, "--inventory", FLEET)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "monthly-fleet: zone_by_zone, budget 25% per zone, canary 1" in out
    assert "(canary)" in out
    assert "Excluded" in out
    assert "bastion-01" in out
    assert "waves, lower bound" in out
    assert "9 excluded." in out


def test_plan_says_which_ring_waits_for_approval_before_it_starts_the_first_ring_too(tmp_path: Path) -> None:
    text = Path(POLICY).read_text().replace("    soak: 2h\n", "    soak: 2h\n    approval: required\n")
    policy = write(tmp_path, "policy.yaml", text)
    out = run("plan", "--policy", policy, "--inventory", FLEET).stdout
    assert "Ring staging: waits for approval before it starts (patchpilot approve RUN_ID)." in out
    assert "Ring production:" not in out  # approval: auto
    summary = json.loads(run("plan", "--policy", policy, "--inventory", FLEET, "--json").stdout)["summary"]
    gates = [(r["name"], r["approval"], r["waits_for_approval"]) for r in summary["rings"]]
    assert gates == [("staging", "required", True), ("production", "auto", False)]


def test_plan_says_an_approval_on_a_ring_without_machines_holds_nothing_back(tmp_path: Path) -> None:
    text = Path(POLICY).read_text().replace("    approval: auto", "    approval: required")
    text = text.replace("{Environment: production}", "{Environment: nowhere}")
    out = run("plan", "--policy", write(tmp_path, "policy.yaml", text), "--inventory", FLEET).stdout
    assert "Ring production: approval: required, but the ring selects no machine here: nothing waits." in out


def test_plan_requires_an_inventory() -> None:
    result = run("plan", "--policy", POLICY)
    assert result.exit_code == 2
    assert "--inventory" in result.stderr


def test_plan_with_bad_inventory_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.json", '{"instances": {}}')
    result = run("plan", "--policy", POLICY, "--inventory", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"{path}: instances: expected a list, got {{}}"


# --- the window is a promise ----------------------------------------------------------------------


def test_a_window_longer_than_the_gap_to_the_next_is_refused(tmp_path: Path) -> None:
    # Every weekday at 22:00 Tokyo time: from Friday's window to Monday's, 3 days; from Monday's to
    # Tuesday's, 1 day. A 25h window would still run when the next one starts.
    text = Path(POLICY).read_text(encoding="utf-8")
    text = text.replace('monthly: "Second Tuesday Offset+3"', 'cron: "cron(0 22 ? * MON-FRI *)"')
    path = write(tmp_path, "daily.yaml", text.replace('  at: "02:00"\n', "").replace("duration: 4h", "duration: 25h"))
    result = run("validate", "--policy", path)
    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    problem = (
        f"{path}:7:3: schedule.duration: the window (1d1h) is longer than the time from one window's start to "
        "the next (1d, the shortest in the coming year): windows would overlap; shorten the duration"
    )
    assert result.stderr.splitlines() == [problem, "1 problem found."]
    assert (
        run("validate", "--policy", write(tmp_path, "ok.yaml", Path(path).read_text().replace("25h", "1d"))).exit_code
        == 0
    )


def test_a_cutoff_as_long_as_the_window_is_refused(tmp_path: Path) -> None:
    text = Path(POLICY).read_text(encoding="utf-8").replace("  max_failures: 1", "  max_failures: 1\n  cutoff: 4h")
    result = run("validate", "--policy", write(tmp_path, "cutoff.yaml", text))
    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    assert "rollout.cutoff: a cutoff of 4h in a 4h window lets no wave start" in result.stderr


def test_plan_warns_when_the_waves_do_not_fit_the_window() -> None:
    # The pinned policy's 27 waves of at most 1h2m each (6m snapshot, 50m install, 4m reboot, 2m
    # check) and the 2h soak do not fit its 4h window: waves 1 to 3 fit (3h6m), wave 4 does not.
    table = run("plan", "--policy", POLICY, "--inventory", FLEET)
    assert table.exit_code == 0, table.output
    warning = (
        f"warning: {POLICY}: schedule.duration: the waves are expected to take 1d5h54m (soaks included, approvals "
        "not), the window is 4h: wave 4 (staging, expected 1h2m, from 3h6m into the window) and the 23 after it "
        "would not start by its estimate; lengthen schedule.duration, raise rollout.disruption_budget (fewer, "
        "larger waves) or split the fleet"
    )
    assert table.stderr.splitlines() == [ADMIN_POOL, warning]
    assert "Expected 1d5h54m (soaks included, approvals not): does not fit the 4h window." in table.stdout
    assert "1h2m (does not fit)" in table.stdout
    document = json.loads(run("plan", "--policy", POLICY, "--inventory", FLEET, "--json").stdout)
    assert document["warnings"] == [ADMIN_POOL.removeprefix("warning: "), warning.removeprefix("warning: ")]
    window = document["window"]
    assert (window["window"], window["expected_total"], window["fits"]) == ("4h", "1d5h54m", False)
    assert [w["starts"] for w in window["waves"][:5]] == [True, True, True, False, False]
    assert window["waves"][3] == {
        "index": 4,
        "ring": "staging",
        "expected": "1h2m",
        "starts_after": "3h6m",
        "starts": False,
    }


def test_plan_says_the_waves_fit_a_long_enough_window(tmp_path: Path) -> None:
    text = Path(POLICY).read_text(encoding="utf-8").replace("duration: 4h", "duration: 2d")
    result = run("plan", "--policy", write(tmp_path, "long.yaml", text), "--inventory", FLEET)
    assert result.exit_code == 0 and result.stderr == ADMIN_POOL + "\n", result.output
    assert "Expected 1d5h54m (soaks included, approvals not): fits the 2d window." in result.stdout


def _run_in(tmp_path: Path, policy_text: str, fleet: dict[str, Any]) -> tuple[Result, Any]:
    """`patchpilot run --json` in a fresh state directory; the result and the run it stored."""
    from patchpilot.adapters.local.sqlite_store import SqliteRunStore
    from patchpilot.local_runtime import DB_NAME

    state = tmp_path / "state"
    policy = write(tmp_path, "policy.yaml", policy_text)
    inventory = write(tmp_path, "fleet.json", json.dumps(fleet))
    result = run("run", "--policy", policy, "--inventory", inventory, "--state-dir", str(state), "--json")
    document = json.loads(result.stdout)
    store = SqliteRunStore(state / DB_NAME, read_only=True)
    return result, store.load(document["run_id"])


def test_a_30_minute_window_does_not_overrun(tmp_path: Path) -> None:
    # Installs of 10 minutes: a wave is expected to take at most 22m (6m snapshot, 10m install, 4m
    # reboot, 2m check), so wave 1 starts; wave 2, measured by wave 1, does not fit what is left.
    # The promise: every wave that started ended by the window's end (its machines were healthy).
    fleet = json.loads(Path(FLEET).read_text(encoding="utf-8"))
    for instance in fleet["instances"]:
        instance["simulation"] = {"install_minutes": 10}
    policy = Path(POLICY).read_text(encoding="utf-8").replace("duration: 4h", "duration: 30m")
    result, stored = _run_in(tmp_path, policy, fleet)
    assert result.exit_code == 1, result.output
    assert stored.status == "incomplete"
    assert stored.window_end is not None
    started = [w for w in stored.waves if w.started_at is not None]
    assert [w.index for w in started] == [1]
    assert all(w.finished_at is not None and w.finished_at <= stored.window_end for w in started)
    longest = format_duration(started[0].finished_at - started[0].started_at)
    left = format_duration(stored.window_end - started[0].finished_at)
    assert (
        stored.reason
        == f"wave 2 expected to take {longest} (the longest wave so far), {left} left of the window: not started"
    )
    assert json.loads(result.stdout)["reason"] == stored.reason


def test_a_30_minute_window_starts_no_wave_expected_to_take_longer(tmp_path: Path) -> None:
    policy = Path(POLICY).read_text(encoding="utf-8").replace("duration: 4h", "duration: 30m")
    result, stored = _run_in(tmp_path, policy, json.loads(Path(FLEET).read_text(encoding="utf-8")))
    assert result.exit_code == 1, result.output
    assert (
        stored.reason == "wave 1 expected to take 1h2m (the estimate of its steps), 30m left of the window: not started"
    )
    assert all(w.started_at is None for w in stored.waves)


# --- schema ----------------------------------------------------------------------------------------


def test_schema_prints_a_json_schema_covering_the_example_policy() -> None:
    import yaml

    result = run("schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert isinstance(schema, dict)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = schema["properties"]
    assert "rollout" in properties
    # jsonschema is not a dependency: check the example by hand against the top level.
    example = yaml.safe_load(Path(POLICY).read_text(encoding="utf-8"))
    assert set(example) <= set(properties)
    assert set(schema["required"]) <= set(example)
    assert schema.get("additionalProperties") is False


# --- the installed console script ----------------------------------------------------------------------


def test_installed_console_script_reports_bad_policy_with_exit_2(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "patchpilot"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    path = write(tmp_path, "bad.yaml", BAD_POLICY)
    completed = subprocess.run(
        [str(script), "validate", "--policy", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines()[-1] == "2 problems found."
    assert f'{path}:10:3: rollout.disruption_budget: expected a whole number or a percentage, got "ten"' in (
        completed.stderr
    )


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_the_version_is_shown_with_either_flag(flag: str) -> None:
    result = CliRunner().invoke(main, [flag])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"version {importlib.metadata.version('patchpilot')}")


# --- traffic pools ---------------------------------------------------------------------------------

POOL_POLICY = str(EXAMPLES / "policy-pools.yaml")
POOL_FLEET = str(EXAMPLES / "fleet-pools.json")
ONE_MEMBER = "pool tg-batch-admin has one member: it will be down during its install"


def test_plan_shows_the_pools_each_wave_touches_and_warns_of_a_single_member_pool() -> None:
    result = run("plan", "--policy", POOL_POLICY, "--inventory", POOL_FLEET)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "budget 50% per zone, pool budget 40%, canary 1" in out
    assert "┃ pools " in out  # the column header
    assert "pool tg-api-tyo: 1 of 15" in out  # the canary wave
    assert "pool tg-api-tyo: 6 of 15" in out
    assert f"warning: {POOL_FLEET}: {ONE_MEMBER}" in result.stderr.splitlines()


def test_plan_of_a_fleet_without_pools_has_no_pools_column(tmp_path: Path) -> None:
    fleet = json.loads(Path(FLEET).read_text())
    for entry in fleet["instances"]:
        entry.pop("traffic_pools", None)
        entry.pop("scaling_group", None)
    out = run("plan", "--policy", POLICY, "--inventory", write(tmp_path, "plain.json", json.dumps(fleet))).stdout
    assert "pools" not in out
    assert "pool budget" not in out


def test_plan_json_gives_each_waves_pools_and_the_pool_warnings() -> None:
    document = json.loads(run("plan", "--policy", POOL_POLICY, "--inventory", POOL_FLEET, "--json").stdout)
    canary = document["waves"][2]
    assert canary["canary"] is True
    assert canary["pools"] == [{"id": "tg-api-tyo", "in_wave": 1, "members": 15}]
    assert document["waves"][0]["pools"] == []
    assert f"{POOL_FLEET}: {ONE_MEMBER}" in document["warnings"]
    assert document["summary"]["waves"] == document["summary"]["lower_bound"] == 9


def test_validate_with_inventory_reports_a_single_member_pool_refused(tmp_path: Path) -> None:
    text = (
        Path(POOL_POLICY)
        .read_text()
        .replace('  pool_budget: "40%"', '  pool_budget: "40%"\n  single_member_pools: refuse')
    )
    policy = write(tmp_path, "policy.yaml", text)
    result = run("validate", "--policy", policy, "--inventory", POOL_FLEET)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {POOL_FLEET}: i-000000005ef02446 (worker-osa-01) is excluded: pool tg-batch-admin has one "
        "member: it would be down during its install (rollout.single_member_pools: refuse)"
    ]
    excluded = json.loads(run("plan", "--policy", policy, "--inventory", POOL_FLEET, "--json").stdout)["excluded"]
    reasons = {e["id"]: e["reason"] for e in excluded}
    assert reasons["i-000000005ef02446"].startswith("pool tg-batch-admin has one member")


# --- scaling groups --------------------------------------------------------------------------------


def test_plan_excludes_a_scaling_group_member_of_a_local_inventory_naming_its_group(tmp_path: Path) -> None:
    fleet = json.loads(Path(FLEET).read_text())
    member = next(e for e in fleet["instances"] if e.get("tags", {}).get("Environment") == "production")
    member["scaling_group"] = "asg-web-prod"
    inventory = write(tmp_path, "fleet.json", json.dumps(fleet))
    reason = "member of scaling group asg-web-prod: patch its image"
    text = Path(POLICY).read_text()
    policy = write(tmp_path, "skip.yaml", text)

    document = json.loads(run("plan", "--policy", policy, "--inventory", inventory, "--json").stdout)
    assert {e["id"]: e["reason"] for e in document["excluded"]}[member["id"]] == reason
    assert member["id"] not in {i for w in document["waves"] for i in w["instances"]}

    table = run("plan", "--policy", policy, "--inventory", inventory)
    assert table.exit_code == 0, table.output
    assert reason in table.stdout
    assert "member of scaling group asg-worker-tyo: patch its image" in table.stdout
    assert "10 excluded." in table.stdout  # 2 frozen, 1 in no ring, the 6 workers of the example's group and this one


def test_plan_says_what_each_wave_does_around_its_installs(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        Path(POOL_POLICY).read_text()
        + """traffic: {drain: true, drain_timeout: 5m, pool_health: true}
hooks:
  before_install: {linux: "systemctl stop app"}
  after_wave: {url: "https://change.example.com/wave", secret: wave-key}
"""
    )
    result = run("plan", "--policy", str(policy), "--inventory", POOL_FLEET)
    assert result.exit_code == 0, result.output
    assert (
        "Around each install: drain from the traffic pools (at most 5m), the before_install host hook, install, "
        "health checks, rejoin the pools and pass their health checks, the after_wave hook."
    ) in " ".join(result.output.split())
    plain = run("plan", "--policy", POOL_POLICY, "--inventory", POOL_FLEET)
    assert "Around each install" not in plain.output


def test_run_and_status_say_what_the_drain_took_out_and_that_everything_is_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    policy = str(EXAMPLES / "policy.yaml")  # drains with pool health, its scaling group in Standby
    ran = run("run", "--policy", policy, "--inventory", FLEET, "--state-dir", str(state))
    assert ran.exit_code == 0, ran.output
    assert (
        "machines drained from 3 traffic pools and 6 machines put in Standby (1 scaling group), all back" in ran.stdout
    )
    run_id = next(line.split()[1].rstrip(":") for line in ran.stdout.splitlines() if line.startswith("Run "))
    shown = run("status", run_id, "--state-dir", str(state))
    assert "Traffic pools" in shown.stdout
    assert re.search(r"lb-web-japaneast\s+│\s+9 of 9\s+│\s+none", shown.stdout)
    document = json.loads(run("status", run_id, "--state-dir", str(state), "--json").stdout)
    assert not any(entry["out_of_pools"] for entry in document["instances"].values())
