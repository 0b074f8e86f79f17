"""`patchpilot retry RUN_ID`: a follow-up run of only the machines a finished run did not patch,
with the set it promoted, after the operator fixed the cause; and `Service.retry`, the same for
the cloud runtimes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_reports import with_record

from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.cli import main
from patchpilot.engine.retry import NotRetryableError, next_retry_id, retry_targets, retry_window
from patchpilot.engine.run import InstanceRecord, Run
from patchpilot.local_runtime import LocalRuntime

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "examples" / "policy.yaml"
FLEET = ROOT / "examples" / "fleet.json"
SICK = "i-000000005eedd889"  # api-tyo-05: `health: fail` in the example fleet, rolled back in production
FROZEN = "i-000000005ef08113"  # ledger-01: PatchPolicy=frozen, excluded
STAGING = "i-000000005eed1eef"  # stg-api-tyo-1


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def as_json(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def fixed_fleet(tmp_path: Path) -> Path:
    """The example fleet once the operator fixed api-tyo-05 (its simulated health failure gone)."""
    fleet = json.loads(FLEET.read_text())
    for instance in fleet["instances"]:
        if instance["id"] == SICK:
            instance.pop("simulation")
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps(fleet))
    return path


def policy_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = POLICY.read_text()
    assert old in text, old
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(old, new))
    return path


def start(tmp_path: Path, *args: str | Path, policy: Path = POLICY, inventory: Path = FLEET) -> tuple[int, str]:
    result = cli("run", "--policy", policy, "--inventory", inventory, "--state-dir", tmp_path / "s", *args, "--json")
    return result.exit_code, as_json(result)["run_id"]


def load(tmp_path: Path, run_id: str) -> Run:
    with SqliteRunStore(tmp_path / "s" / "state.db", read_only=True) as store:
        return store.load(run_id)


def run_ids(tmp_path: Path) -> list[str]:
    with SqliteRunStore(tmp_path / "s" / "state.db", read_only=True) as store:
        return store.run_ids()


# ---------------------------------------------------------------- the command


def test_retry_patches_the_rolled_back_machine_with_the_promoted_set_once_it_is_fixed(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    code, run_id = start(tmp_path, "--report-dir", reports)
    assert code == 0
    first = load(tmp_path, run_id)
    assert [r.id for r in first.records() if r.state == "rolled_back"] == [SICK]

    result = cli("retry", run_id, "--state-dir", tmp_path / "s", "--inventory", fixed_fleet(tmp_path), "--json")

    assert result.exit_code == 0, result.output
    document = as_json(result)
    assert document["run_id"] == f"{run_id}-retry-1"
    assert document["status"] == "succeeded"
    assert {i: v["state"] for i, v in document["instances"].items()} == {SICK: "patched"}
    retried = load(tmp_path, document["run_id"])
    assert retried.follow_up_of == run_id and retried.promoted == first.promoted
    (record,) = retried.records()
    assert first.promoted is not None and record.installed == first.promoted["linux"]  # pinned, not re-chosen
    # inside the window the first run left open, and it ends with that window
    assert first.window_end is not None and first.created_at < retried.created_at < first.window_end
    assert retried.window_end == first.window_end
    # the report goes where the retried run's went
    assert Path(document["report"]["html"]).parent == reports.absolute()
    assert "retries 1 machine of run" in result.stderr and "api-tyo-05" in result.stderr


def test_a_retry_that_fails_again_says_so_and_may_itself_be_retried(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)

    again = cli("retry", run_id, "--state-dir", tmp_path / "s", "--json")
    assert again.exit_code == 5, again.output  # nothing_patched: the cause was not fixed
    assert as_json(again)["instances"][SICK]["state"] == "rolled_back"

    fixed = cli("retry", f"{run_id}-retry-1", "--state-dir", tmp_path / "s", "--inventory", fixed_fleet(tmp_path))
    assert fixed.exit_code == 0, fixed.output
    assert f"Run {run_id}-retry-2 retries 1 machine" in fixed.output
    assert load(tmp_path, f"{run_id}-retry-2").records()[0].state == "patched"


def test_retry_after_a_rejected_production_gate_patches_the_machines_not_started(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, "approval: auto ", "approval: required ")
    code, run_id = start(tmp_path, policy=policy, inventory=fixed_fleet(tmp_path))
    assert code == 3
    assert cli("reject", run_id, "--state-dir", tmp_path / "s").exit_code == 1  # halted after promotion
    production = {r.id for r in load(tmp_path, run_id).records() if r.state == "not_started"}
    assert len(production) == 54

    waiting = cli("retry", run_id, "--state-dir", tmp_path / "s", "--json")
    assert waiting.exit_code == 3, waiting.output  # the gate asks again
    retry_id = as_json(waiting)["run_id"]
    assert set(as_json(waiting)["instances"]) == production
    approved = cli("approve", retry_id, "--state-dir", tmp_path / "s", "--json")
    assert approved.exit_code == 0, approved.output
    assert {v["state"] for v in as_json(approved)["instances"].values()} == {"patched"}


def test_retry_only_retries_the_machines_named(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, "approval: auto ", "approval: required ")
    _, run_id = start(tmp_path, policy=policy, inventory=fixed_fleet(tmp_path))
    cli("reject", run_id, "--state-dir", tmp_path / "s")
    two = sorted(r.id for r in load(tmp_path, run_id).records() if r.state == "not_started")[:2]

    result = cli("retry", run_id, "--only", two[0], "--only", two[1], "--state-dir", tmp_path / "s", "--json")

    assert result.exit_code == 3, result.output
    assert sorted(as_json(result)["instances"]) == two


def test_a_run_retried_once_is_never_retried_again_for_what_its_retry_took_on(tmp_path: Path) -> None:
    """Retrying X again retries only what no retry of X took on; a machine its retry took on is
    retried from the latest retry of that chain, which the refusal names."""
    policy = policy_variant(tmp_path, "approval: auto ", "approval: required ")
    _, run_id = start(tmp_path, policy=policy, inventory=fixed_fleet(tmp_path))
    cli("reject", run_id, "--state-dir", tmp_path / "s")
    production = sorted(r.id for r in load(tmp_path, run_id).records() if r.state == "not_started")
    first = production[0]
    assert cli("retry", run_id, "--only", first, "--state-dir", tmp_path / "s").exit_code == 3
    assert cli("approve", f"{run_id}-retry-1", "--state-dir", tmp_path / "s").exit_code == 0
    assert load(tmp_path, f"{run_id}-retry-1").records()[0].state == "patched"

    again = cli("retry", run_id, "--only", first, "--state-dir", tmp_path / "s")
    assert again.exit_code == 2, again.output
    assert (
        f"instances.{first}: was retried by {run_id}-retry-1 already: retry {run_id}-retry-1 instead, "
        "the latest retry of it"
    ) in again.stderr
    assert run_ids(tmp_path) == [run_id, f"{run_id}-retry-1"]  # refused before any effect

    rest = cli("retry", run_id, "--state-dir", tmp_path / "s", "--json")
    assert rest.exit_code == 3, rest.output
    assert as_json(rest)["run_id"] == f"{run_id}-retry-2"
    assert sorted(as_json(rest)["instances"]) == production[1:]  # the machine patched by retry-1 is not patched again
    # one line, never wrapped: the ids are copied
    assert f"  not retried: {first.rsplit('/', 1)[-1]} ({first}) was retried by {run_id}-retry-1 already" in rest.stderr
    assert cli("reject", f"{run_id}-retry-2", "--state-dir", tmp_path / "s").exit_code == 1

    whole = cli("retry", run_id, "--state-dir", tmp_path / "s")
    assert whole.exit_code == 2, whole.output
    assert (
        f"run {run_id}: status: was retried already (by {run_id}-retry-1, {run_id}-retry-2): retry "
        f"{run_id}-retry-1 or {run_id}-retry-2 instead, the latest retry"
    ) in whole.stderr
    # the chain goes on from the latest retry: retry-2's production machines are retried from it
    onward = cli("retry", f"{run_id}-retry-2", "--state-dir", tmp_path / "s", "--json")
    assert onward.exit_code == 3 and sorted(as_json(onward)["instances"]) == production[1:], onward.output


def test_retry_of_a_run_waiting_for_approval_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, "approval: auto ", "approval: required ")
    _, run_id = start(tmp_path, policy=policy)
    before = load(tmp_path, run_id)

    result = cli("retry", run_id, "--state-dir", tmp_path / "s")

    assert result.exit_code == 2, result.output
    assert f"run {run_id}: status: is waiting_approval: only a run that has ended can be retried" in result.stderr
    assert run_ids(tmp_path) == [run_id] and load(tmp_path, run_id) == before


def test_retry_of_a_run_halted_before_promotion_says_start_a_new_run(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, "    soak: 1h ", "    approval: required\n    soak: 1h ")
    _, run_id = start(tmp_path, policy=policy)
    assert cli("reject", run_id, "--state-dir", tmp_path / "s").exit_code == 1

    result = cli("retry", run_id, "--state-dir", tmp_path / "s")

    assert result.exit_code == 2, result.output
    assert "promoted no tested patch set (halted before promotion)" in result.stderr
    assert "start a new run instead" in result.stderr
    assert run_ids(tmp_path) == [run_id]


def test_retry_of_a_run_that_left_nothing_to_retry_is_refused(tmp_path: Path) -> None:
    code, run_id = start(tmp_path, inventory=fixed_fleet(tmp_path))
    assert code == 0

    result = cli("retry", run_id, "--state-dir", tmp_path / "s")

    assert result.exit_code == 2, result.output
    assert "has no failed or skipped machine to retry (3 excluded, 63 patched)" in result.stderr
    assert run_ids(tmp_path) == [run_id]


def test_retry_only_names_every_machine_it_cannot_retry(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)

    result = cli(
        "retry", run_id, "--only", "i-nope", "--only", FROZEN, "--only", STAGING, "--state-dir", tmp_path / "s"
    )

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"run {run_id}: instances.i-nope: is not a machine of this run"
    assert lines[1].startswith(f"run {run_id}: instances.{FROZEN}: was excluded (")
    assert lines[1].endswith("): a retry never patches it")
    assert lines[2] == f"run {run_id}: instances.{STAGING}: is patched: nothing to retry"
    assert lines[3] == "3 problems found."
    assert run_ids(tmp_path) == [run_id]


def test_retry_refuses_a_machine_the_new_inventory_no_longer_has(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)
    fleet = json.loads(FLEET.read_text())
    fleet["instances"] = [i for i in fleet["instances"] if i["id"] != SICK]
    inventory = tmp_path / "without.json"
    inventory.write_text(json.dumps(fleet))

    result = cli("retry", run_id, "--inventory", inventory, "--state-dir", tmp_path / "s")

    assert result.exit_code == 2, result.output
    assert f"run {run_id}: instances.{SICK}: is not in the inventory any more" in result.stderr


def test_retry_of_an_unknown_run_is_refused(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)
    result = cli("retry", "nope", "--state-dir", tmp_path / "s")
    assert result.exit_code == 2 and f"no run nope here (latest runs: {run_id})" in result.stderr


# ---------------------------------------------------------------- which machines (pure)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The example run: succeeded, api-tyo-05 rolled back, four machines excluded."""
    tmp_path = tmp_path_factory.mktemp("finished")
    _, run_id = start(tmp_path)
    return load(tmp_path, run_id)


def record_of(run: Run, instance_id: str) -> InstanceRecord:
    return next(r for r in run.records() if r.id == instance_id)


def test_machines_held_by_another_run_not_started_or_broken_are_retried_excluded_ones_never(finished: Run) -> None:
    staging2 = "i-000000005eed3dde"
    run = with_record(finished, STAGING, state="skipped", reason="held by run other-run")
    run = with_record(run, staging2, state="not_started", reason="the window ended")
    broken = "i-000000005eef2cce"  # stg-api-osa-1, restored by hand from its snapshots since
    run = with_record(run, broken, state="failed", reason="rollback failed")

    instances, left_out = retry_targets(run)

    assert sorted(i.id for i in instances) == sorted([SICK, STAGING, staging2, broken])
    assert FROZEN not in {i.id for i in instances} and left_out == []


def test_a_machine_of_an_os_with_no_promoted_set_is_left_out_with_why(finished: Run) -> None:
    assert finished.promoted is not None
    run = finished.model_copy(update={"promoted": {"linux": finished.promoted["linux"]}})
    windows = next(r for r in run.records() if r.instance.os == "windows" and r.state == "patched")
    run = with_record(run, windows.id, state="rolled_back")

    instances, left_out = retry_targets(run)

    assert [i.id for i in instances] == [SICK]
    ((record, why),) = left_out
    assert record.id == windows.id and "no windows set was promoted: start a new run" in why


def test_a_retry_is_refused_for_a_run_that_has_not_ended(finished: Run) -> None:
    with pytest.raises(NotRetryableError, match="is running: only a run that has ended can be retried"):
        retry_targets(finished.model_copy(update={"state": "installing"}))


def test_a_retry_that_patched_nothing_may_be_retried_a_first_run_that_did_not_may_not(finished: Run) -> None:
    nothing = finished.model_copy(update={"state": "nothing_patched", "reason": "no machine was patched"})
    with pytest.raises(NotRetryableError, match="start a new run instead"):
        retry_targets(nothing)
    instances, _ = retry_targets(nothing.model_copy(update={"follow_up_of": "first"}))
    assert [i.id for i in instances] == [SICK]


def test_retry_ids_count_on_from_the_run_retried() -> None:
    assert next_retry_id("web", []) == "web-retry-1"
    assert next_retry_id("web", ["web-retry-1", "web-retry-2"]) == "web-retry-3"
    assert next_retry_id("web-retry-1", ["web-retry-1"]) == "web-retry-2"


def test_a_retry_runs_in_the_open_window_or_the_next_one(finished: Run) -> None:
    policy = finished.policy
    assert finished.window_end is not None
    inside = retry_window(policy, finished.created_at + timedelta(hours=1))
    assert inside is not None and inside.start == finished.created_at and inside.end == finished.window_end
    after = retry_window(policy, finished.window_end)
    assert after is not None and after.start > finished.window_end
    assert retry_window(policy.model_copy(update={"kind": "emergency"}), finished.window_end) is None


# ---------------------------------------------------------------- Service.retry (the clouds' entry)


def test_service_retry_starts_a_pinned_follow_up_once_per_id(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)
    runtime = LocalRuntime.open(tmp_path / "s")

    first = runtime.service.retry(run_id, retry_id="retry-a")
    again = runtime.service.retry(run_id, retry_id="retry-a")  # a redelivered request

    assert again.run_id == first.run_id == "retry-a" and again.version == first.version
    assert first.follow_up_of == run_id and first.promoted == runtime.load(run_id).promoted
    assert [r.id for r in first.records()] == [SICK]
    assert runtime.drive("retry-a").status == "nothing_patched"  # still sick: rolled back again
    # no explicit id: the next free one (in the next window: too little of this one is left)
    assert runtime.retry("retry-a").run_id == "retry-a-retry-1"


def test_service_retry_outside_the_policys_windows_is_refused(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)
    runtime = LocalRuntime.open(tmp_path / "s")
    window_end = runtime.load(run_id).window_end
    assert window_end is not None
    runtime.clock.advance_to(window_end + timedelta(hours=1))

    with pytest.raises(NotRetryableError, match="outside the policy's windows: the next starts 20"):
        runtime.service.retry(run_id)
    assert runtime.store.run_ids() == [run_id]


# ---------------------------------------------------------------- patchpilot retry --cloud aws


@pytest.fixture
def aws_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, str]]:
    """moto's DynamoDB and SQS, and the settings the functions have (template.yaml)."""
    from moto_support import REGION, TABLE, aws, dynamodb

    from patchpilot.bootstrap.aws import deps

    with aws():
        import boto3

        sqs = boto3.client("sqs", region_name=REGION)
        queue_url = sqs.create_queue(QueueName="patchpilot-steps")["QueueUrl"]
        for name, value in {
            "PATCHPILOT_TABLE": TABLE,
            "PATCHPILOT_QUEUE_URL": queue_url,
            "PATCHPILOT_POLICY": "ssm:/patchpilot/policy",
            "AWS_REGION": REGION,
        }.items():
            monkeypatch.setenv(name, value)
        # The deployed policy (a retry checks its freezes there): the example's, without its
        # year-end freeze, so that the wall clock's date does not matter.
        text = POLICY.read_text()
        start = text.index("\nfreeze:")
        text = text[:start] + text[text.index("\npatches:", start) :]
        boto3.client("ssm", region_name=REGION).put_parameter(Name="/patchpilot/policy", Value=text, Type="String")
        deps.cache_clear()
        yield dynamodb(), sqs, queue_url
        deps.cache_clear()


def test_retry_on_aws_starts_the_follow_up_in_the_run_table_and_queues_its_first_step(
    tmp_path: Path, aws_world: tuple[Any, Any, str]
) -> None:
    from moto_support import TABLE

    from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore

    table, sqs, queue_url = aws_world
    _, run_id = start(tmp_path)
    finished = load(tmp_path, run_id)
    emergency = finished.policy.model_copy(update={"kind": "emergency"})  # on demand: no window to wait for
    store = DynamoDbRunStore(TABLE, table)
    store.create(finished.model_copy(update={"policy": emergency, "version": 1}), [])

    result = cli("retry", run_id, "--cloud", "aws", "--json")

    assert result.exit_code == 0, result.output
    assert as_json(result)["run_id"] == f"{run_id}-retry-1"
    retried = store.load(f"{run_id}-retry-1")
    assert retried.follow_up_of == run_id and [r.id for r in retried.records()] == [SICK]
    assert retried.promoted == finished.promoted
    queued = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert any(f"{run_id}-retry-1" in m["Body"] for m in queued)  # the workers take it from here


def test_retry_on_aws_outside_the_window_or_of_an_unknown_run_is_refused(
    tmp_path: Path, aws_world: tuple[Any, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from clocks import ManualClock
    from moto_support import TABLE

    from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore
    from patchpilot.bootstrap import aws as runtime_module

    table, _, _ = aws_world
    _, run_id = start(tmp_path)
    finished = load(tmp_path, run_id)
    DynamoDbRunStore(TABLE, table).create(finished.model_copy(update={"version": 1}), [])
    assert finished.window_end is not None
    after_the_window = finished.window_end + timedelta(hours=1)
    monkeypatch.setattr(runtime_module, "WallClock", lambda: ManualClock(after_the_window))

    outside = cli("retry", run_id, "--cloud", "aws")
    unknown = cli("retry", "nope", "--cloud", "aws")

    assert outside.exit_code == 2, outside.output
    assert f"run {run_id}: schedule: outside the policy's windows: the next starts 20" in outside.stderr
    assert unknown.exit_code == 2 and "aws run table: (top level): no run nope there" in unknown.stderr
    local_only = cli("retry", run_id, "--cloud", "aws", "--report-dir", tmp_path / "r")
    assert local_only.exit_code == 2 and "--report-dir is for local runs" in local_only.stderr


def test_service_retry_with_too_little_of_the_window_left_is_refused_and_says_why(tmp_path: Path) -> None:
    _, run_id = start(tmp_path)
    runtime = LocalRuntime.open(tmp_path / "s")
    window_end = runtime.load(run_id).window_end
    assert window_end is not None
    runtime.clock.advance_to(window_end - timedelta(minutes=10))  # a wave is expected to take about an hour

    with pytest.raises(NotRetryableError, match="too little of this window is left for a wave: the next starts 20"):
        runtime.service.retry(run_id)
    assert runtime.store.run_ids() == [run_id]
