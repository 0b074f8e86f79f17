"""Pages only when someone must act: each run notice says in its first line what happened and what
to do, and an approval request names the commands that approve or reject the ring."""

from __future__ import annotations

import json
import re
import shlex
from datetime import timedelta
from pathlib import Path

import engine_driver
import pytest
from test_engine import NOW, Recorder, first_ring_approved, fleet, policy
from test_local_runtime import FLEET, cli, policy_variant

from patchpilot.engine.decide import Decision, decide, start_run
from patchpilot.engine.messages import ApprovalRejected, Notify, TimerFired, Wait
from patchpilot.engine.run import Run, Runtime
from patchpilot.inventory import Simulation
from patchpilot.notify.messages import card_for
from patchpilot.planning import plan
from patchpilot.policy import Policy


def notices_of(
    pol: Policy,
    hints: dict[str, Simulation],
    monkeypatch: pytest.MonkeyPatch,
    run_id: str = "run-1",
    production: int = 8,
    runtime: Runtime = "local",
) -> tuple[Run, list[Notify]]:
    """Drive a run to its end and keep every notice it sent, in order."""
    sent: list[Notify] = []
    real = engine_driver.decide

    def spy(*args: object) -> Decision:
        decision = real(*args)  # type: ignore[arg-type]
        sent.extend(c for c in decision.commands if isinstance(c, Notify))
        return decision

    monkeypatch.setattr(engine_driver, "decide", spy)
    started = start_run(run_id, pol, plan(pol, fleet(production=production, hints=hints)), NOW, runtime=runtime)
    sent.extend(c for c in started.commands if isinstance(c, Notify))
    return engine_driver.drive_to_end(started, Recorder()), sent


RUN = "web-20261114-0200"  # the run id of the documented examples


def first_line(notice: Notify) -> str:
    return notice.text.splitlines()[0]


def test_approval_notice_names_the_approve_and_reject_commands(tmp_path: Path) -> None:
    policy_path = policy_variant(tmp_path, **{"approval: auto ": "approval: required "})
    state = tmp_path / "state dir"
    run = cli("run", "--policy", policy_path, "--inventory", FLEET, "--state-dir", state, "--json")
    assert run.exit_code == 3, run.output
    run_id = json.loads(run.stdout)["run_id"]
    sent = [json.loads(line) for line in (state / "notifications.jsonl").read_text().splitlines()]
    (asked,) = [n for n in sent if n["topic"] == "approval_needed"]
    line = asked["text"].splitlines()[0]
    assert line.startswith("Ring production needs approval before it starts: ")
    approve, reject = shlex.join(["patchpilot", "approve", run_id]), shlex.join(["patchpilot", "reject", run_id])
    assert f"`{approve}`" in line and f"`{reject}`" in line and "--reason TEXT" in line
    # the commands are the ones that work (with the state directory added, as `status` shows it)
    approved = cli(*shlex.split(approve)[1:], "--state-dir", state, "--json")
    assert approved.exit_code == 0 and json.loads(approved.stdout)["status"] == "succeeded", approved.output
    # the card keeps them in its text: no "Approve: <link>" is taken for a link or a fact
    card = card_for(Notify.model_validate(asked))
    assert approve in card.text and reject in card.text and card.links == ()


def test_the_first_ring_waiting_for_approval_is_said_when_the_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    started = start_run("run-1", first_ring_approved(), plan(first_ring_approved(), fleet()), NOW)
    (notice,) = [c for c in started.commands if isinstance(c, Notify) and c.topic == "run_started"]
    assert "Ring staging waits for your approval before any machine is touched" in first_line(notice)
    assert "Nothing to do" not in notice.text


@pytest.mark.parametrize(
    ("hints", "max_failures", "status"),
    [
        ({}, "1", "succeeded"),
        ({"i-production-05": Simulation(health="fail")}, "1", "succeeded"),
        ({"i-production-05": Simulation(install="fail", rollback="fail")}, "1", "succeeded_with_failures"),
        ({"i-staging-01": Simulation(health="fail")}, "5", "halted"),
        ({f"i-production-{n:02d}": Simulation(health="fail") for n in (1, 2, 4)}, "1", "halted"),
        ({"i-staging-02": Simulation(snapshot="fail")}, "5", "halted"),
    ],
)
def test_every_run_notice_starts_with_what_happened_and_what_to_do(
    hints: dict[str, Simulation], max_failures: str, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, sent = notices_of(policy(max_failures=max_failures), hints, monkeypatch)
    assert run.status == status
    assert {n.topic for n in sent} >= {"run_started", "run_halted" if status == "halted" else "run_finished"}
    next_steps = ("nothing to do", "nothing more", "restore", "fix the cause", "patchpilot ")
    for notice in sent:
        line = first_line(notice)
        assert line.endswith("."), line  # a complete sentence, with its next step on the same line
        assert any(step in line.lower() for step in next_steps), line
    end = sent[-1]
    assert end.topic in ("run_finished", "run_halted") and first_line(end).startswith(f"Run run-1 {status}: ")


def test_a_halt_says_nothing_more_is_patched_and_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    hints = {f"i-production-{n:02d}": Simulation(health="fail") for n in (1, 2, 4)}
    run, sent = notices_of(policy(max_failures="1"), hints, monkeypatch)
    halted = sent[-1]
    assert halted.topic == "run_halted" and halted.severity == "error"
    assert first_line(halted) == (
        f"Run run-1 halted: {run.reason}. Nothing more is patched; see `patchpilot status run-1`, "
        "then `patchpilot retry run-1` once the cause is fixed."
    )
    assert halted.text.splitlines()[1].startswith("Instances: ")


def test_a_halt_before_promotion_says_to_start_a_new_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _, sent = notices_of(policy(max_failures="5"), {"i-staging-01": Simulation(health="fail")}, monkeypatch)
    assert "then start a new run (`patchpilot run --policy FILE --inventory FILE`)" in first_line(sent[-1])
    assert "retry" not in first_line(sent[-1])  # a run that promoted nothing cannot be retried


def test_a_machine_rolled_back_healthy_is_info_with_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    _, sent = notices_of(policy(), {"i-production-05": Simulation(health="fail")}, monkeypatch)
    (failed,) = [n for n in sent if n.topic == "instance_failed"]
    assert failed.severity == "info" and not card_for(failed).alert
    line = first_line(failed)
    assert line.startswith("i-production-05 (i-production-05) in wave ")
    assert "was rolled back from snap-" in line and line.endswith("Nothing to do: it runs as it did before the run.")


def test_a_machine_left_broken_names_the_snapshots_to_restore_from(monkeypatch: pytest.MonkeyPatch) -> None:
    hints = {"i-production-05": Simulation(install="fail", rollback="fail")}
    run, sent = notices_of(policy(), hints, monkeypatch)
    (failed,) = [n for n in sent if n.topic == "instance_failed"]
    (record,) = run.broken()
    assert failed.severity == "error" and card_for(failed).alert
    assert first_line(failed).endswith(f"Restore it by hand from its snapshots {', '.join(record.snapshot_ids)}.")
    ring = next(n for n in sent if n.topic == "ring_finished" and n.text.startswith("Ring production"))
    assert "1 machine is left broken: restore by hand" in first_line(ring)
    end = sent[-1]
    assert "Restore it from the snapshots listed below" in first_line(end)
    assert f"{record.id}" in end.text.split("Left broken", 1)[1]


def test_a_ring_finished_notice_says_what_comes_next(monkeypatch: pytest.MonkeyPatch) -> None:
    _, sent = notices_of(policy(), {}, monkeypatch)
    staging, production = [first_line(n) for n in sent if n.topic == "ring_finished"]
    assert staging.endswith("Nothing to do: ring production starts after a 1h soak.")
    assert production.endswith("Nothing to do: the run ends here, its last notice follows.")


DOCS = Path(__file__).resolve().parent.parent / "docs" / "notifications.md"


def test_the_documented_first_lines_are_the_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    block = DOCS.read_text().split("<!-- notice-examples -->", 1)[1].split("<!-- /notice-examples -->", 1)[0]
    documented = [m.group(2) for m in re.finditer(r"^\| `(\w+)`[^|]* \| (.+) \|$", block, re.MULTILINE)]
    broken = Simulation(install="fail", rollback="fail")
    scenarios = [
        (policy(approval="required"), {"i-production-05": Simulation(health="fail"), "i-production-06": broken}),
        (policy(max_failures="1"), {f"i-production-{n:02d}": Simulation(health="fail") for n in (1, 2, 4)}),
        (policy(), {}),
    ]
    scenarios.append((policy(), {"i-production-03": Simulation(snapshot="fail")}))
    written = {first_line(n) for pol, hints in scenarios for n in notices_of(pol, hints, monkeypatch, RUN)[1]}
    # a gate's reminder, on a cloud: the first ring waits from the start
    gated = start_run(RUN, first_ring_approved(), plan(first_ring_approved(), fleet()), NOW, runtime="aws")
    (wait,) = [c for c in gated.commands if isinstance(c, Wait)]
    reminded = decide(gated.run, TimerFired(id=wait.result_id, run_id=RUN, command_id=wait.id), wait.until)
    written |= {first_line(n) for n in reminded.commands if isinstance(n, Notify)}
    assert len(documented) == 11 and [line for line in documented if line not in written] == []


def test_a_rejected_ring_says_how_to_patch_it_after_all() -> None:
    pol = policy(approval="required")
    waiting = engine_driver.drive_to_end(start_run("run-1", pol, plan(pol, fleet()), NOW), Recorder(), approve=False)
    rejected = decide(waiting, ApprovalRejected(id="run-1:reject", run_id="run-1", by="ops", reason="freeze"), NOW)
    (halted,) = [c for c in rejected.commands if isinstance(c, Notify)]
    assert first_line(halted) == (
        "Run run-1 halted: ring production rejected by ops: freeze. Nothing more is patched; see "
        "`patchpilot status run-1`, then `patchpilot retry run-1` if the ring is to be patched after all."
    )


@pytest.mark.parametrize(
    ("failure", "severity", "step"),
    [
        (Simulation(health="fail"), "info", "Nothing to do for them."),
        (Simulation(install="fail", rollback="fail"), "error", "Restore the failed ones by hand from their snapshots."),
        (Simulation(snapshot="fail"), "warning", "Fix the cause for the skipped ones."),
    ],
)
def test_the_failures_past_ten_in_a_wave_are_one_notice_that_pages_only_for_broken_machines(
    failure: Simulation, severity: str, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hints = {f"i-production-{n:02d}": failure for n in range(40)}
    _, sent = notices_of(policy(max_failures="100%"), hints, monkeypatch, production=40)
    more = [n for n in sent if n.id.endswith(":more")]
    assert more and {n.severity for n in more} == {severity}
    line = first_line(more[0])
    assert line.startswith("Wave ") and "more machines failed (" in line
    assert line.endswith(f"see each with `patchpilot status run-1`. {step}")


def test_a_machine_skipped_because_its_snapshot_failed_is_a_warning_that_pages_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, sent = notices_of(policy(), {"i-production-05": Simulation(snapshot="fail")}, monkeypatch)
    (failed,) = [n for n in sent if n.topic == "instance_failed"]
    assert run.status == "succeeded" and failed.severity == "warning" and not card_for(failed).alert
    line = first_line(failed)
    assert line.startswith("i-production-05 (i-production-05) in wave ")
    assert "was not patched and is untouched (skipped): snapshot failed" in line and line.endswith(
        "Fix the cause; the run's last notice says how to patch it then."
    )


def test_a_cloud_runs_notices_name_the_commands_that_work_on_that_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    hints = {f"i-production-{n:02d}": Simulation(health="fail") for n in (1, 2, 4)}
    _, sent = notices_of(policy(max_failures="1"), hints, monkeypatch, runtime="aws")
    assert first_line(sent[0]).endswith("(`patchpilot runs --cloud aws --policy engine-test`).")
    assert first_line(sent[-1]).endswith(
        "Nothing more is patched; see `patchpilot runs --cloud aws --policy engine-test`, "
        "then `patchpilot retry --cloud aws run-1` once the cause is fixed."
    )
    _, sent = notices_of(
        policy(max_failures="5"), {"i-staging-01": Simulation(health="fail")}, monkeypatch, runtime="azure"
    )
    assert "then start a new run (the timer starts one at the policy's next window) once" in first_line(sent[-1])
    hints = {f"i-production-{n:02d}": Simulation(health="fail") for n in range(40)}
    _, sent = notices_of(policy(max_failures="100%"), hints, monkeypatch, production=40, runtime="azure")
    (more, *_) = [n for n in sent if n.id.endswith(":more")]
    assert "see each in the run's report (its last notice links it)." in first_line(more)
    assert not any("patchpilot status" in n.text or "patchpilot approve" in n.text for n in sent)


def policy_notice_lines() -> dict[str, str]:
    """The first line of each notice about a policy (not a run), as the code writes it, from the
    inputs of the tests of each (maintenance watch, compliance report, advisories)."""
    import test_advisories as advisories
    import test_compliance_report as compliance
    import test_maintenance_watch as watch

    from patchpilot.advisories import decide_advisory
    from patchpilot.compliance.render import compliance_notice, skipped_notice
    from patchpilot.compliance.report import build_view
    from patchpilot.inventory import load_inventory
    from patchpilot.maintenance.model import WatchResult
    from patchpilot.maintenance.watch import alert_notices, digest_notice, watch_view
    from patchpilot.policy import load_policy

    reboot = watch.item("web", watch.NOW + timedelta(days=1), instance_id="i-0web", downtime=True)
    maintenance = watch_view(WatchResult(items=(reboot,)), watch.POLICY, watch.FLEET, watch.NOW)
    patched = build_view(compliance.policy(), compliance.FLEET, compliance.STATES, compliance.NOW)
    fleet = load_inventory(advisories.FLEET_FILE)
    answer = decide_advisory(load_policy(advisories.POLICY_FILE), advisories.advisory(), fleet, advisories.NOW)
    texts = {
        "maintenance_digest": digest_notice(maintenance, watch.NOW).text,
        "maintenance_alert": alert_notices(maintenance)[0].text,
        "compliance_report": compliance_notice(patched, "reports/compliance-fleet.html").text,
        "advisory": answer.text,
        "run_skipped": skipped_notice("nightly-20261214-0200", "nightly", "nothing pending on 4 machines").text,
    }
    return {topic: text.splitlines()[0] for topic, text in texts.items()}


def test_each_policy_notice_says_what_to_do_in_its_first_line_as_documented() -> None:
    block = DOCS.read_text().split("<!-- policy-notice-examples -->", 1)[1].split("<!-- /policy-notice-examples", 1)[0]
    documented = dict(m.groups() for m in re.finditer(r"^\| `(\w+)` \| (.+) \|$", block, re.MULTILINE))
    written = policy_notice_lines()
    assert documented == written
    steps = ("nothing to do", "act on", "plan for", "see each", "patch the", "fix ")
    for line in written.values():
        assert line.endswith("."), line
        assert any(step in line.lower() for step in steps), line
