"""Emergency runs from advisories: recorded payloads (tests/events/advisories/) and their expected
answers, merging by CVE and window, the emergency policy, and `patchpilot advisory` end to end on
the local runtime with the example fleet."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from patchpilot.advisories import (
    Advisory,
    AdvisoryAnswer,
    OpenRun,
    decide_advisory,
    emergency_policy,
    emergency_run_id,
    follow_up_request,
    follow_up_run_id,
    load_payload,
    parse_event,
    parse_payload,
)
from patchpilot.advisories.intake import answer_deliveries
from patchpilot.advisories.models import Unactionable
from patchpilot.advisories.names import NameSyntax, fix_problem
from patchpilot.cli import EXIT_INVALID_INPUT, EXIT_WAITING_APPROVAL, main
from patchpilot.engine.messages import Notify, StartFollowUp
from patchpilot.errors import InputError, format_path
from patchpilot.inventory import Instance, load_inventory
from patchpilot.local_runtime import LocalRuntime
from patchpilot.policy import Policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events" / "advisories"
POLICY_FILE = str(ROOT / "examples" / "emergency-policy.yaml")
FLEET_FILE = str(ROOT / "examples" / "fleet.json")
EXPECTED: dict[str, Any] = json.loads((EVENTS / "expected.json").read_text())
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
CVE = "CVE-2025-0001"
FIRST_RUN = "monthly-fleet-emergency-CVE-2025-0001-20250114-1800"
NOW_RUN = "monthly-fleet-emergency-CVE-2025-0001-20250115-1200"  # the window NOW falls in


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


@pytest.fixture(scope="module")
def fleet() -> list[Instance]:
    return load_inventory(FLEET_FILE)


def advisory(**fields: Any) -> Advisory:
    base: dict[str, Any] = {
        "source": "patchpilot",
        "key": "k1",
        "cve": CVE,
        "severity": "CRITICAL",
        "fixes": ("openssl",),
    }
    return Advisory(**{**base, **fields})


def test_every_recorded_payload_has_an_expected_answer() -> None:
    assert sorted(p.name for p in EVENTS.glob("*.json") if p.name != "expected.json") == sorted(
        k for k in EXPECTED if k != "_"
    )


@pytest.mark.parametrize("name", sorted(k for k in EXPECTED if k != "_"))
def test_recorded_payload_gets_its_expected_answer(name: str, policy: Policy, fleet: list[Instance]) -> None:
    expected = EXPECTED[name]
    path = str(EVENTS / name)
    if "error" in expected:
        with pytest.raises(InputError) as caught:
            load_payload(path)
        assert [format_path(p.path) for p in caught.value.problems] == expected["error"]
        assert caught.value.source == path
        return
    (delivery,) = load_payload(path)
    answer = decide_advisory(policy, delivery, fleet, NOW)
    assert answer.action == expected["action"]
    assert answer.run_id == expected.get("run_id", "")
    for needle in expected["text"]:
        assert needle in answer.text


def test_findings_about_one_cve_in_one_window_map_to_one_run(policy: Policy, fleet: list[Instance]) -> None:
    first, second = (
        load_payload(str(EVENTS / n))[0]
        for n in ("inspector_critical_openssl.json", "inspector_critical_openssl_second_instance.json")
    )
    started = decide_advisory(policy, first, fleet, NOW)
    assert started.action == "start" and started.run_id == FIRST_RUN
    assert "waited for within the window" in started.text  # an emergency run waits for leased machines too
    open_run = OpenRun(started.run_id, CVE, "running", frozenset(started.instances))
    merged = decide_advisory(policy, second, fleet, NOW, [open_run])
    assert (merged.action, merged.run_id, merged.not_covered) == ("merge", FIRST_RUN, ())
    assert "Merged CVE-2025-0001" in merged.text and f"into run {FIRST_RUN} (running)" in merged.text
    again = decide_advisory(policy, first, fleet, NOW + timedelta(days=3), [open_run])  # redelivered late
    assert (again.action, again.run_id) == ("merge", FIRST_RUN)


def test_a_running_run_takes_the_cve_from_another_window_and_names_what_it_does_not_cover(
    policy: Policy, fleet: list[Instance]
) -> None:
    staging, production = "i-000000005eed1eef", "i-000000005eed5ccd"
    running = OpenRun(
        "monthly-fleet-emergency-CVE-2025-0001-20250101-0000", CVE, "waiting_approval", frozenset({staging})
    )
    answer = decide_advisory(policy, advisory(instances=(staging, production), fleet_wide=False), fleet, NOW, [running])
    assert (answer.action, answer.run_id) == ("merge", running.run_id)
    assert answer.instances == (staging,) and answer.not_covered == (production,)
    assert answer.follow_up == follow_up_run_id(running.run_id, [production]) == f"{running.run_id}-followup-4f7e3e33"
    assert f"1 instance not covered (api-tyo-01): follow-up run {answer.follow_up} starts when run" in answer.text
    assert answer.severity == "warning"  # patched later, by the follow-up


def test_a_run_that_halted_before_promotion_leaves_the_uncovered_instances_not_covered(
    policy: Policy, fleet: list[Instance]
) -> None:
    staging, production = "i-000000005eed1eef", "i-000000005eed5ccd"
    halted = OpenRun(NOW_RUN, CVE, "halted", frozenset({staging}), promoted=False)
    answer = decide_advisory(policy, advisory(instances=(staging, production), fleet_wide=False), fleet, NOW, [halted])
    assert (answer.action, answer.run_id, answer.not_covered, answer.follow_up) == (
        "merge",
        NOW_RUN,
        (production,),
        "",
    )
    assert f"NOT COVERED: run {NOW_RUN} halted before promotion: api-tyo-01 are not patched" in answer.text
    assert answer.severity == "error"


def test_a_run_that_patched_nothing_starts_no_follow_up_for_the_uncovered_instances(
    policy: Policy, fleet: list[Instance]
) -> None:
    staging, production = "i-000000005eed1eef", "i-000000005eed5ccd"
    nothing = OpenRun(NOW_RUN, CVE, "nothing_patched", frozenset({staging}))  # its staging ring patched nothing
    answer = decide_advisory(policy, advisory(instances=(staging, production), fleet_wide=False), fleet, NOW, [nothing])
    assert (answer.action, answer.not_covered, answer.follow_up) == ("merge", (production,), "")
    assert f"NOT COVERED: run {NOW_RUN} nothing_patched: api-tyo-01 are not patched" in answer.text


def test_instances_already_in_a_follow_up_are_not_requested_again(policy: Policy, fleet: list[Instance]) -> None:
    staging, production = "i-000000005eed1eef", "i-000000005eed5ccd"
    done = OpenRun(NOW_RUN, CVE, "succeeded", frozenset({staging}), followed_up=frozenset({production}))
    answer = decide_advisory(policy, advisory(instances=(staging, production), fleet_wide=False), fleet, NOW, [done])
    assert (answer.not_covered, answer.follow_up) == ((), "")
    assert "1 instance already in its follow-up runs" in answer.text


def test_a_finished_run_of_an_earlier_window_does_not_swallow_a_new_finding(
    policy: Policy, fleet: list[Instance]
) -> None:
    done = OpenRun("monthly-fleet-emergency-CVE-2025-0001-20250101-0000", CVE, "succeeded", frozenset())
    answer = decide_advisory(policy, advisory(), fleet, NOW, [done])
    assert answer.action == "start"
    assert answer.run_id == emergency_run_id(policy, CVE, NOW) == "monthly-fleet-emergency-CVE-2025-0001-20250115-1200"


def test_frozen_instances_are_never_patched_and_listed_as_exposed(policy: Policy, fleet: list[Instance]) -> None:
    ledger = "i-000000005ef08113"  # tagged PatchPolicy=frozen
    answer = decide_advisory(policy, advisory(instances=(ledger,), fleet_wide=False), fleet, NOW)
    assert answer.action == "ignore"
    assert answer.exposed == ((ledger, "frozen: tag PatchPolicy=frozen"),)
    assert "EXPOSED, not patched: ledger-01 (frozen: tag PatchPolicy=frozen)" in answer.text


def test_a_frozen_policy_ignores_advisories_and_names_the_exposed_machines(
    policy: Policy, fleet: list[Instance]
) -> None:
    frozen = policy.model_copy(update={"kind": "frozen"})
    answer = decide_advisory(
        frozen, advisory(instances=("i-000000005eed1eef", "i-unknown"), fleet_wide=False), fleet, NOW
    )
    assert answer.action == "ignore" and answer.run_id == ""
    assert answer.text.startswith("Ignored CVE-2025-0001 (CRITICAL, openssl): policy monthly-fleet is frozen.")
    assert "EXPOSED, not patched: stg-api-tyo-1 (policy monthly-fleet is frozen)" in answer.text
    assert answer.exposed == (("i-000000005eed1eef", "policy monthly-fleet is frozen"),)
    assert answer.unknown == ("i-unknown",)
    linux = [i for i in fleet if i.os == "linux"]
    assert len(decide_advisory(frozen, advisory(), fleet, NOW).exposed) == len(linux)  # fleet-wide: every Linux machine


def test_policy_without_emergency_section_ignores_advisories(fleet: list[Instance]) -> None:
    plain = load_policy(str(ROOT / "examples" / "policy.yaml"))
    answer = decide_advisory(plain, advisory(), fleet, NOW)
    assert answer.action == "ignore" and "has no emergency section" in answer.text


def test_an_excluded_fix_is_refused(policy: Policy, fleet: list[Instance]) -> None:
    strict = policy.model_copy(update={"patches": policy.patches.model_copy(update={"exclude": ["openssl"]})})
    answer = decide_advisory(strict, advisory(), fleet, NOW)
    assert answer.action == "ignore" and "patches.exclude" in answer.text


def test_emergency_policy_installs_only_the_fixes_staging_first(policy: Policy) -> None:
    derived = emergency_policy(policy, advisory(fixes=("openssl", "KB5050009")))
    assert derived.patches.classifications == [] and derived.patches.include == ["openssl", "KB5050009"]
    assert [r.name for r in derived.rings] == ["staging", "production"]
    assert {r.soak for r in derived.rings} == {timedelta(minutes=15)}
    assert derived.schedule is None and derived.exclude == policy.exclude
    assert "CVE-2025-0001" in derived.description


def test_emergency_approval_gates_every_ring_after_the_first() -> None:
    text = Path(POLICY_FILE).read_text().replace("approval: auto                         #", "approval: required #")
    text = text.replace("rings: [staging, production]", "rings: [production, staging]")
    gated = emergency_policy(parse_policy(text), advisory())
    assert [(r.name, r.approval) for r in gated.rings] == [("staging", "auto"), ("production", "required")]


def test_emergency_rings_must_name_rings_of_the_policy() -> None:
    text = Path(POLICY_FILE).read_text().replace("rings: [staging, production]", "rings: [staging, prod]")
    with pytest.raises(InputError) as caught:
        parse_policy(text, "p.yaml")
    (problem,) = caught.value.problems
    assert format_path(problem.path) == "emergency.rings[1]" and 'no ring named "prod"' in problem.message
    assert problem.line is not None


def test_an_event_grid_batch_is_answered_item_by_item() -> None:
    batch = json.loads((EVENTS / "patchpilot_advisory_eventgrid.json").read_text())
    batch.append({**batch[0], "id": "other", "eventType": "Microsoft.Storage.BlobCreated"})
    first, second = (parse_event(item) for item in batch)
    assert isinstance(first, Advisory) and first.fixes == ("KB5050009",)
    assert second.key == "other"


# ---------------------------------------------------------------- fix names (names.py)


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("openssl-libs", "any"),
        ("libstdc++6", "deb"),
        ("python3.11", "deb"),
        ("linux-image-6.8.0-45-generic", "deb"),
        ("perl-Net-SSLeay", "rpm"),
        ("kernel_rt", "rpm"),
        ("java-17-openjdk", "rpm"),
        ("KB5048661", "any"),
        ("kb5048661", "deb"),
    ],
)
def test_package_names_and_kb_numbers_are_fixes(name: str, syntax: NameSyntax) -> None:
    assert fix_problem(name, syntax) is None


@pytest.mark.parametrize(
    ("name", "syntax", "why"),
    [
        ("OpenSSL", "deb", "Debian package names are lowercase"),
        ("lib_x", "deb", "Debian package names are lowercase"),
        ("x", "deb", "two at least"),
        (".hidden", "rpm", "the first a letter or a digit"),
        ("-y", "any", "starts with -"),
        ("openssl*", "rpm", "a glob (*)"),
        ("openssl;id", "deb", '";" is not allowed'),
    ],
)
def test_a_name_outside_its_distributions_syntax_is_refused(name: str, syntax: NameSyntax, why: str) -> None:
    problem = fix_problem(name, syntax)
    assert problem is not None and problem.startswith(f'"{name}" is not a package name: ') and why in problem


def inspector_finding(platform: str, *packages: tuple[str, str]) -> dict[str, Any]:
    """The recorded finding on a machine of `platform`, its packages (name, packageManager)."""
    event = json.loads((EVENTS / "inspector_critical_openssl.json").read_text())
    event["detail"]["resources"][0]["details"]["awsEc2Instance"]["platform"] = platform
    vulnerable = event["detail"]["packageVulnerabilityDetails"]["vulnerablePackages"]
    template = vulnerable[0]
    vulnerable[:] = [{**template, "name": n, "packageManager": m} for n, m in packages]
    return event


def test_an_inspector_finding_holds_its_packages_to_its_platforms_syntax() -> None:
    (ubuntu,) = parse_payload(inspector_finding("UBUNTU_22_04", ("libssl3", "OS"), ("OpenSSL_Libs", "OS")))
    assert isinstance(ubuntu, Unactionable) and "vulnerablePackages[1].name" in ubuntu.reason
    assert "Debian package names are lowercase" in ubuntu.reason
    (amazon,) = parse_payload(inspector_finding("AMAZON_LINUX_2023", ("openssl", "OS"), ("perl-Net-SSLeay", "OS")))
    assert isinstance(amazon, Advisory) and amazon.fixes == ("openssl", "perl-Net-SSLeay")


def test_a_language_package_in_a_finding_is_not_a_fix() -> None:
    # An npm or jar package is not installed by patching the operating system.
    (only,) = parse_payload(inspector_finding("AMAZON_LINUX_2023", ("@scope/lodash", "NPM"), ("log4j-core", "JAR")))
    assert isinstance(only, Unactionable)
    assert (
        only.reason
        == 'no operating system package to install: "@scope/lodash (NPM)", "log4j-core (JAR)" not installed by patching'
    )
    (mixed,) = parse_payload(inspector_finding("AMAZON_LINUX_2023", ("openssl", "OS"), ("lodash", "NPM")))
    assert isinstance(mixed, Advisory) and mixed.fixes == ("openssl",)


# ---------------------------------------------------------------- the CLI on the local runtime


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["advisory", *args], env={"COLUMNS": "200"}, catch_exceptions=False)


def test_advisory_command_starts_the_run_once_and_merges_the_repeat(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    common = ("--policy", POLICY_FILE, "--inventory", FLEET_FILE, "--state-dir", state)
    first = cli(str(EVENTS / "inspector_critical_openssl.json"), *common, "--json")
    assert first.exit_code == 0, first.output
    (answer,) = json.loads(first.stdout)["answers"]
    assert answer["action"] == "start" and answer["run"]["status"] == "succeeded"

    runtime = LocalRuntime.open(tmp_path / "state")
    run = runtime.load(FIRST_RUN)
    installed = {p for r in run.records() for p in r.installed}
    assert installed and installed <= {"openssl", "openssl-libs"}  # only the advisory's fixes
    assert run.waves[0].ring == "staging"
    frozen = [r for r in run.excluded if r.id == "i-000000005ef08113"]
    assert frozen and frozen[0].state == "excluded"

    for name in ("inspector_critical_openssl.json", "inspector_critical_openssl_second_instance.json"):
        again = cli(str(EVENTS / name), *common)
        assert again.exit_code == 0, again.output
        assert f"into run {FIRST_RUN} (succeeded)" in again.stdout
    assert [i for i in runtime.store.run_ids() if "emergency" in i] == [FIRST_RUN]


def test_advisory_command_waits_for_approval_when_the_policy_says_so(tmp_path: Path) -> None:
    text = Path(POLICY_FILE).read_text().replace("approval: auto                         #", "approval: required #")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(text)
    result = cli(
        str(EVENTS / "patchpilot_advisory_eventgrid.json"),
        *("--policy", str(policy_file), "--inventory", FLEET_FILE, "--state-dir", str(tmp_path / "s")),
    )
    assert result.exit_code == EXIT_WAITING_APPROVAL, result.output
    assert "Approve with: patchpilot approve monthly-fleet-emergency-CVE-2025-21333-20250115-0600" in result.stdout


def test_advisory_command_without_state_dir_only_answers(tmp_path: Path) -> None:
    result = cli(str(EVENTS / "health_scheduled_reboot.json"), "--policy", POLICY_FILE, "--inventory", FLEET_FILE)
    assert result.exit_code == 0 and "Reported to on-call" in result.stdout


def test_advisory_command_names_the_bad_fields(tmp_path: Path) -> None:
    path = str(EVENTS / "malformed_inspector_missing_vulnerability_id.json")
    result = cli(path, "--policy", POLICY_FILE, "--inventory", FLEET_FILE)
    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}: detail.packageVulnerabilityDetails.vulnerabilityId: required" in result.stderr


# ---------------------------------------------------------------- follow-ups on the local runtime

STAGING, PRODUCTION, LATER = "i-000000005eed1eef", "i-000000005eed5ccd", "i-000000005eed7bbc"  # api-tyo-02 later


def finding(*instances: str) -> dict[str, Any]:
    return {"id": "SEC-1", "cve": CVE, "severity": "CRITICAL", "fixes": ["openssl"], "instances": list(instances)}


def deliver(runtime: LocalRuntime, policy: Policy, fleet: list[Instance], raw: object) -> AdvisoryAnswer:
    """The intake as the cloud runtimes call it, over the local runtime's store and service."""
    service = runtime.service
    (answer,) = answer_deliveries(
        parse_payload(raw),
        policy,
        lambda: fleet,
        runtime.store,
        service.start,
        runtime.notices.notify,
        runtime.clock.now(),
        service.request_follow_up,
    )
    return answer


def follow_ups(runtime: LocalRuntime) -> list[str]:
    return [i for i in runtime.store.run_ids() if "followup" in i]


def test_an_instance_reported_while_the_run_goes_is_patched_by_its_follow_up_with_the_promoted_set(
    tmp_path: Path, policy: Policy, fleet: list[Instance]
) -> None:
    runtime = LocalRuntime.open(tmp_path, start=NOW)
    started = deliver(runtime, policy, fleet, finding(STAGING, PRODUCTION))
    assert started.action == "start" and runtime.load(started.run_id).status == "running"
    merged = deliver(runtime, policy, fleet, finding(LATER))
    follow_up = follow_up_run_id(started.run_id, [LATER])
    assert (merged.action, merged.run_id, merged.not_covered, merged.follow_up) == (
        "merge",
        started.run_id,
        (LATER,),
        follow_up,
    )
    assert f"follow-up run {follow_up} starts when run {started.run_id} ends" in merged.text
    repeat = deliver(runtime, policy, fleet, finding(LATER))  # redelivered: nothing more to request
    assert (repeat.not_covered, repeat.follow_up) == ((), "") and "1 instance already in its follow-up" in repeat.text
    runtime.queue.publish([follow_up_request(merged, fleet, NOW)])  # the request itself redelivered
    assert follow_ups(runtime) == []  # never while the run goes

    first = runtime.drive(started.run_id)
    assert first.status == "succeeded" and first.promoted and len(first.follow_ups) == 1
    second = runtime.load(follow_up)
    assert second.status == "succeeded" and second.follow_up_of == first.run_id
    assert second.created_at >= max(w.finished_at for w in first.waves if w.finished_at)  # after, not alongside
    assert [r.id for r in second.records()] == [LATER]
    (record,) = second.records()
    assert record.state == "patched" and record.ring == "production"
    assert record.installed == first.promoted["linux"]  # exactly what staging passed
    assert follow_ups(runtime) == [follow_up]
    assert not {i for _, i in runtime.fleet.effects(follow_up)} - {LATER}

    again = deliver(runtime, policy, fleet, finding(LATER))  # the finding once more, after both ended
    assert (again.not_covered, again.follow_up) == ((), "") and "already in its follow-up runs" in again.text
    assert follow_ups(runtime) == [follow_up]


def test_a_finding_after_the_run_ended_starts_its_follow_up_at_once(
    tmp_path: Path, policy: Policy, fleet: list[Instance]
) -> None:
    runtime = LocalRuntime.open(tmp_path, start=NOW)
    started = deliver(runtime, policy, fleet, finding(STAGING, PRODUCTION))
    assert runtime.drive(started.run_id).status == "succeeded"
    merged = deliver(runtime, policy, fleet, finding(LATER))
    assert f"started follow-up run {merged.follow_up}" in merged.text
    assert deliver(runtime, policy, fleet, finding(LATER)).follow_up == ""  # already requested
    (start,) = [d.message for d in runtime.queue.receive(10)]  # the worker's next message: no waiting for a window
    assert isinstance(start, StartFollowUp) and start.follow_up_id == merged.follow_up
    second = runtime.drive(merged.follow_up)  # the start comes round again after its visibility timeout
    assert second.status == "succeeded" and [(r.id, r.state) for r in second.records()] == [(LATER, "patched")]
    assert follow_ups(runtime) == [merged.follow_up]


def test_a_run_halted_in_staging_starts_no_follow_up_and_says_so(tmp_path: Path, policy: Policy) -> None:
    inventory = json.loads(Path(FLEET_FILE).read_text())
    next(i for i in inventory["instances"] if i["id"] == STAGING)["simulation"] = {"install": "fail"}
    (tmp_path / "fleet.json").write_text(json.dumps(inventory))
    fleet = load_inventory(str(tmp_path / "fleet.json"))
    runtime = LocalRuntime.open(tmp_path / "state", start=NOW)
    started = deliver(runtime, policy, fleet, finding(STAGING, PRODUCTION))
    assert deliver(runtime, policy, fleet, finding(LATER)).follow_up  # requested while it goes
    first = runtime.drive(started.run_id)
    assert first.status == "halted" and first.promoted is None and len(first.follow_ups) == 1
    assert follow_ups(runtime) == []
    assert any(e.text.startswith(f"NOT COVERED: run {first.run_id} halted before promotion") for e in first.log)
    notices = [json.loads(line) for line in runtime.notices.path.read_text().splitlines()]
    halted_notice = [n for n in notices if n["topic"] == "run_halted"]
    assert halted_notice and "NOT COVERED: 1 follow-up not started" in halted_notice[0]["text"]

    late = deliver(runtime, policy, fleet, finding("i-000000005eed9aab"))  # another machine, after the halt
    assert late.follow_up == "" and late.severity == "error"
    assert f"NOT COVERED: run {first.run_id} halted before promotion: api-tyo-03 are not patched" in late.text
    assert follow_ups(runtime) == []


def test_follow_ups_of_one_run_go_one_after_the_other(tmp_path: Path, policy: Policy, fleet: list[Instance]) -> None:
    runtime = LocalRuntime.open(tmp_path, start=NOW)
    started = deliver(runtime, policy, fleet, finding(STAGING, PRODUCTION))
    one = deliver(runtime, policy, fleet, finding(LATER)).follow_up
    two = deliver(runtime, policy, fleet, finding(LATER, "i-000000005eed9aab")).follow_up  # only api-tyo-03 is new
    assert one and two and one != two
    runtime.drive(started.run_id)
    first, second = runtime.load(one), runtime.load(two)
    assert [r.id for r in second.records()] == ["i-000000005eed9aab"]
    (first_end,) = [e.at for e in first.log if e.text.startswith(f"Run {one} succeeded")]
    assert second.status == "succeeded" and second.created_at >= first_end
    assert [f.state for f in runtime.load(started.run_id).follow_ups] == ["finished", "finished"]


# ---------------------------------------------------------------- the CLI and the clouds: one intake


def test_the_cli_and_a_cloud_take_the_same_advisory_file_to_the_same_decisions(tmp_path: Path, policy: Policy) -> None:
    """`patchpilot advisory` answers a file with the intake the clouds call (`answer_deliveries`):
    the same runs, merges and follow-up requests, and the same answer told for each delivery. The
    cloud is the serverless composition (`ServerlessRuntime.advisory`) over a local store and
    service; the CLI drives each run it starts to its end, the cloud leaves it to the worker."""
    import logging

    from patchpilot.advisories.decide import open_run_of
    from patchpilot.bootstrap.serverless import ServerlessPorts, ServerlessRuntime
    from patchpilot.notify import RoutedNotifier
    from patchpilot.ports import DiscoveryResult

    batch = [
        {**finding(STAGING, PRODUCTION), "id": "SEC-1"},
        {**finding(LATER), "id": "SEC-2"},  # not covered by the run SEC-1 started: a follow-up
        {**finding(LATER), "id": "SEC-3"},  # already in that follow-up
        {**finding(STAGING), "id": "SEC-4", "cve": "CVE-2025-0002"},  # another CVE: a run of its own
    ]
    payload = tmp_path / "batch.json"
    payload.write_text(json.dumps(batch))
    fleet = load_inventory(FLEET_FILE)

    state = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        ["advisory", str(payload), "--policy", POLICY_FILE, "--inventory", FLEET_FILE, "--state-dir", str(state)],
        env={"COLUMNS": "200", "PATCHPILOT_VIRTUAL_START": NOW.isoformat()},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    on_cli = LocalRuntime.open(state)
    told_cli = [json.loads(line) for line in (state / "notifications.jsonl").read_text().splitlines()]

    local = LocalRuntime.open(tmp_path / "cloud", start=NOW)
    told_cloud: list[Notify] = []

    class Told:
        def notify(self, command: Notify) -> None:
            told_cloud.append(command)

    class Fleet:
        def discover(self, policy: Policy) -> DiscoveryResult:
            return DiscoveryResult(fleet)

    cloud = ServerlessRuntime(
        ServerlessPorts(
            settings=None,  # no approvals
            log=logging.getLogger("patchpilot.test"),
            clock=local.clock,
            store=lambda: local.store,
            queue=lambda: local.queue,
            secrets=lambda: None,
            claims=lambda: None,
            fleet=Fleet,
            documents=lambda: None,
            service=lambda: local.service,
            policy=lambda: policy,
        )
    )
    cloud.routed = RoutedNotifier(None, local.store.load, Told(), clock=local.clock)
    cloud.advisory(batch)

    def decisions(runtime: LocalRuntime) -> dict[str, tuple[list[str], list[tuple[str, list[str]]]]]:
        """Each emergency run started: its machines and the follow-ups requested in it."""
        found = {}
        for run_id in runtime.store.run_ids():
            run = runtime.load(run_id)
            if (opened := open_run_of(policy, run)) is not None and run.follow_up_of is None:
                follow = [(f.run_id, sorted(i.id for i in f.instances)) for f in run.follow_ups]
                found[run_id] = (sorted(opened.instances), follow)
        return found

    assert decisions(on_cli) == decisions(local) and len(decisions(local)) == 2
    advisory_cli = [(n["id"], n["run_id"]) for n in told_cli if n["topic"] == "advisory"]
    advisory_cloud = [(n.id, n.run_id) for n in told_cloud if n.topic == "advisory"]
    assert advisory_cli == advisory_cloud and len(advisory_cloud) == 4
