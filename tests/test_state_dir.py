"""The local runtime's state and report directories, through the CLI: one writer at a time,
nothing created by reading, errors named up front, the report directory kept with the run,
reports that follow the umask."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from test_local_runtime import FLEET, PATCHPILOT, POLICY, ROOT, cli, run_json

from patchpilot import local_runtime

pytestmark = pytest.mark.slow  # 21 s alone (separate processes): `make test-fast` leaves it out


def approval_policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    text = POLICY.read_text()
    assert "approval: auto " in text
    path.write_text(text.replace("approval: auto ", "approval: required "))
    return path


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit 2, no traceback, the problem on one line (then the usual count line)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "1 problem found." and len(lines) == 2, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def big_fleet(tmp_path: Path) -> Path:
    """A fleet whose run takes a few seconds: long enough for a second command to meet it."""
    sys.path.insert(0, str(ROOT / "bench"))
    from fleet import synthetic_fleet  # type: ignore[import-not-found]

    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"instances": synthetic_fleet(1500, seed=3)}))
    return path


@pytest.fixture
def long_policy(tmp_path: Path) -> Path:
    """The example policy without its schedule: a run on demand, with no window to end it early
    (waves that do not fit a window are not started), so a big fleet's run takes a few seconds."""
    text = POLICY.read_text()
    start = text.index("schedule:")
    end = text.index("rings:")
    path = tmp_path / "long.yaml"
    path.write_text(text[:start] + text[end:])
    return path


@pytest.fixture
def first_run(tmp_path: Path, big_fleet: Path, long_policy: Path) -> Iterator[subprocess.Popen[str]]:
    """`patchpilot run` in another process, returned once it has started its run (and so holds
    the state directory), then stopped (SIGSTOP) so that it holds it while the test runs, however
    fast the machine: `resume` or `outcome` lets it go on."""
    errors = tmp_path / "first.stderr"  # files, not pipes: a full pipe would stop the run
    command = [PATCHPILOT, "run", "--policy", long_policy, "--inventory", big_fleet, "--state-dir", tmp_path / "s"]
    with errors.open("w") as stderr, (tmp_path / "first.json").open("w") as stdout:
        process = subprocess.Popen(
            [*command, "--json"],
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    deadline = time.monotonic() + 60
    while not errors.read_text().startswith("Run "):
        assert process.poll() is None and time.monotonic() < deadline, errors.read_text()
        time.sleep(0.02)
    process.send_signal(signal.SIGSTOP)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def resume(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGCONT)


def outcome(process: subprocess.Popen[str], tmp_path: Path) -> dict[str, Any]:
    """What the first run printed, once it has ended."""
    resume(process)
    process.wait(timeout=300)
    document: dict[str, Any] = json.loads((tmp_path / "first.json").read_text())
    return document


# ---------------------------------------------------------------- one writer per state directory


def test_a_second_run_in_a_state_dir_in_use_is_refused_naming_the_holder(
    tmp_path: Path,
    big_fleet: Path,
    long_policy: Path,
    first_run: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_runtime, "LOCK_WAIT_SECONDS", 0.3, raising=False)
    second = cli("run", "--policy", long_policy, "--inventory", big_fleet, "--state-dir", tmp_path / "s")
    assert first_run.poll() is None, "the first run was still going"
    assert_one_line_error(second, str(tmp_path / "s"), f"in use by pid {first_run.pid}", "patchpilot run --policy")
    assert outcome(first_run, tmp_path)["status"] != "running"


def test_two_runs_in_one_state_dir_take_turns_and_neither_is_corrupted(
    tmp_path: Path,
    big_fleet: Path,
    long_policy: Path,
    first_run: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the lock, the two shared one virtual clock: the first ended `incomplete` with a
    wave that "took 34d22h". Now the second waits for the first, and each ends as alone."""
    monkeypatch.setattr(local_runtime, "LOCK_WAIT_SECONDS", 120, raising=False)
    resume(first_run)  # it goes on while the second waits for it
    _, second = run_json("--policy", long_policy, "--inventory", big_fleet, "--state-dir", tmp_path / "s")
    first = outcome(first_run, tmp_path)
    _, alone = run_json("--policy", long_policy, "--inventory", big_fleet, "--state-dir", tmp_path / "alone")
    states = {i: v["state"] for i, v in alone["instances"].items()}
    assert {i: v["state"] for i, v in first["instances"].items()} == states
    assert first["status"] == second["status"] == alone["status"]
    assert {i: v["state"] for i, v in second["instances"].items()} == states


def test_approve_of_a_run_in_a_state_dir_in_use_is_refused(
    tmp_path: Path, first_run: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_runtime, "LOCK_WAIT_SECONDS", 0.3, raising=False)
    run_id = _first_run_id(tmp_path / "s")
    approved = cli("approve", run_id, "--state-dir", tmp_path / "s")
    assert_one_line_error(approved, f"in use by pid {first_run.pid}")


def test_an_advisory_run_in_a_state_dir_in_use_is_refused(
    tmp_path: Path, first_run: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`patchpilot advisory --state-dir` starts an emergency run: a writer like `run`."""
    monkeypatch.setattr(local_runtime, "LOCK_WAIT_SECONDS", 0.3, raising=False)
    advisory = cli(
        "advisory",
        ROOT / "tests" / "events" / "advisories" / "inspector_critical_openssl.json",
        *("--policy", ROOT / "examples" / "emergency-policy.yaml", "--inventory", FLEET),
        *("--state-dir", tmp_path / "s"),
    )
    assert_one_line_error(advisory, f"in use by pid {first_run.pid}")


def test_a_compliance_scan_in_a_state_dir_in_use_is_refused(
    tmp_path: Path, first_run: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compliance --scan` records the scan in the state: a writer; without it, a reader."""
    monkeypatch.setattr(local_runtime, "LOCK_WAIT_SECONDS", 0.3, raising=False)
    common = ("compliance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "s", "--json")
    assert_one_line_error(cli(*common[:-1], "--scan"), f"in use by pid {first_run.pid}")  # as text: no --json
    assert cli(*common).exit_code == 1


def _first_run_id(state: Path) -> str:
    store = local_runtime.open_runs(state)
    with store:
        return store.run_ids()[0]


def test_status_reads_a_state_dir_while_a_run_holds_it(tmp_path: Path, first_run: subprocess.Popen[str]) -> None:
    status = cli("status", _first_run_id(tmp_path / "s"), "--state-dir", tmp_path / "s", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["status"] == "running"


# ---------------------------------------------------------------- reading creates nothing


@pytest.mark.parametrize("command", ["status", "report", "approve", "reject"])
def test_commands_on_a_run_create_no_state_in_a_directory_without_runs(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for state in (tmp_path / "missing", empty):
        result = cli(command, "some-run", "--state-dir", state)
        assert_one_line_error(result, "no run some-run here", f"no runs in {state}")
    assert not (tmp_path / "missing").exists()
    assert list(empty.iterdir()) == []


def test_resume_creates_no_state_in_a_directory_without_runs(tmp_path: Path) -> None:
    result = cli("run", "--resume", "some-run", "--state-dir", tmp_path / "missing")
    assert_one_line_error(result, "no runs in")
    assert not (tmp_path / "missing").exists()


def test_a_run_with_an_invalid_or_frozen_policy_leaves_no_state_behind(tmp_path: Path) -> None:
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text(POLICY.read_text().replace("name: monthly-fleet", "name: monthly-fleet\nkind: frozen", 1))
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(POLICY.read_text().replace("rings:", "ringz:", 1))
    for policy in (frozen, invalid):
        result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "s").exists(), policy.name
    assert "frozen" in cli("run", "--policy", frozen, "--inventory", FLEET, "--state-dir", tmp_path / "s").output


def test_compliance_of_a_directory_without_state_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default state directory, .patchpilot, is here
    for state in ((), ("--state-dir", tmp_path / "none")):
        result = cli("compliance", "--policy", POLICY, "--inventory", FLEET, "--json", *state)
        assert result.exit_code == 1, result.output  # the example fleet has exposed machines
        assert json.loads(result.stdout)["policies"][0]["name"] == "monthly-fleet"
    assert list(tmp_path.iterdir()) == []


def test_compliance_reads_what_a_run_patched_without_writing(tmp_path: Path) -> None:
    _, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path)
    db = tmp_path / "state.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    result = cli("compliance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path, "--json")
    rows = {i["name"]: i for i in json.loads(result.stdout)["instances"]}
    assert rows["api-tyo-01"]["last_run"]["run_id"] == document["run_id"]
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_status_does_not_change_the_state_database(tmp_path: Path) -> None:
    _, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path)
    db = tmp_path / "state.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    assert cli("status", document["run_id"], "--state-dir", tmp_path).exit_code == 0
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


# ---------------------------------------------------------------- unusable directories: one line, before any effect


def test_a_state_dir_under_a_file_is_one_line_before_any_effect(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = cli("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "file" / "state")
    assert_one_line_error(result, str(tmp_path / "file" / "state"), "not a directory")


def test_an_unusable_report_dir_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    """It used to fail with a traceback after the whole run, when the report was written."""
    (tmp_path / "file").write_text("")
    report_dir = tmp_path / "file" / "reports"
    result = cli(
        "run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "s", "--report-dir", report_dir
    )
    assert_one_line_error(result, str(report_dir), "not a directory")
    assert not (tmp_path / "s").exists(), "nothing was started"


def test_an_unusable_report_dir_for_the_report_command_is_one_line(tmp_path: Path) -> None:
    _, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    (tmp_path / "file").write_text("")
    result = cli("report", document["run_id"], "--state-dir", tmp_path / "s", "--report-dir", tmp_path / "file" / "r")
    assert_one_line_error(result, str(tmp_path / "file" / "r"), "not a directory")


needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")


@needs_non_root
def test_a_read_only_state_dir_is_one_line_and_status_still_reads_it(tmp_path: Path) -> None:
    _, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    (tmp_path / "s").chmod(0o555)
    try:
        again = cli("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "s")
        assert_one_line_error(again, str(tmp_path / "s"), "not writable")
        status = cli("status", document["run_id"], "--state-dir", tmp_path / "s", "--json")
        assert status.exit_code == 0 and json.loads(status.stdout)["status"] == "succeeded"
    finally:
        (tmp_path / "s").chmod(0o755)


@needs_non_root
def test_a_read_only_report_dir_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir(mode=0o555)
    result = cli(
        "run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "s", "--report-dir", tmp_path / "out"
    )
    assert_one_line_error(result, str(tmp_path / "out"), "not writable")
    assert not (tmp_path / "s").exists()


def test_writable_dir_problem_names_the_blocking_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert local_runtime.writable_dir_problem(tmp_path / "new" / "deeper") is None
    assert local_runtime.writable_dir_problem(tmp_path / "file") == "is not a directory"
    assert local_runtime.writable_dir_problem(tmp_path / "file" / "x" / "y") == (
        f"cannot be created: {tmp_path / 'file'} is not a directory"
    )


# ---------------------------------------------------------------- the report directory is kept with the run


def test_approve_writes_the_report_where_the_run_was_told(tmp_path: Path) -> None:
    policy = approval_policy(tmp_path)
    out = tmp_path / "out"
    code, waiting = run_json(
        "--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s", "--report-dir", out
    )
    assert code == 3 and Path(waiting["report"]["html"]).parent == out
    approved = cli("approve", waiting["run_id"], "--state-dir", tmp_path / "s", "--json")
    assert approved.exit_code == 0, approved.output
    report = json.loads(approved.stdout)["report"]
    assert Path(report["html"]).parent == out and Path(report["markdown"]).parent == out
    assert "succeeded" in Path(report["markdown"]).read_text()
    # STATE_DIR/reports holds the overview page only, which links to the report where it went.
    assert [p.name for p in (tmp_path / "s" / "reports").iterdir()] == ["index.html"]
    assert f'href="{Path(report["html"]).as_uri()}"' in (tmp_path / "s" / "reports" / "index.html").read_text()


def test_resume_and_report_write_where_the_run_was_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = approval_policy(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative --report-dir is kept as the directory it named
    _, waiting = run_json("--policy", policy, "--inventory", FLEET, "--state-dir", "s", "--report-dir", "out")
    monkeypatch.chdir(tmp_path / "s")
    code, resumed = run_json("--resume", waiting["run_id"], "--state-dir", ".")
    assert code == 3
    assert Path(resumed["report"]["html"]).parent == tmp_path / "out"
    report = cli("report", waiting["run_id"], "--state-dir", ".")
    assert report.exit_code == 0, report.output
    assert {Path(p).parent for p in report.output.split()} == {tmp_path / "out"}
    assert [p.name for p in (tmp_path / "s" / "reports").iterdir()] == ["index.html"]  # the overview page only


def test_a_report_dir_given_to_approve_wins_and_is_kept(tmp_path: Path) -> None:
    policy = approval_policy(tmp_path)
    _, waiting = run_json("--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    approved = cli(
        "approve", waiting["run_id"], "--state-dir", tmp_path / "s", "--report-dir", tmp_path / "b", "--json"
    )
    assert Path(json.loads(approved.stdout)["report"]["html"]).parent == tmp_path / "b"
    report = cli("report", waiting["run_id"], "--state-dir", tmp_path / "s")
    assert {Path(p).parent for p in report.output.split()} == {tmp_path / "b"}


# ---------------------------------------------------------------- report file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_reports_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        _, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path)
        written = cli("report", document["run_id"], "--state-dir", tmp_path, "--report-dir", tmp_path / "again")
    finally:
        os.umask(previous)
    paths = [Path(document["report"]["html"]), Path(document["report"]["markdown"])]
    paths += [Path(p) for p in written.output.split()]
    assert len(paths) == 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {mode}
