"""Hotpatch and live patching in the engine (patchpilot/hotpatch.py): a hotpatch-enabled machine
whose promoted set is live patches only installs it without a reboot, and the run's log says so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from engine_driver import AnsweredCommand, answer_all_ok, drive_to_end
from test_engine import NOW, fleet, policy

from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import InstallPatches, Outcome
from patchpilot.hotpatch import live_patch, reboot_free
from patchpilot.inventory import Instance
from patchpilot.planning import plan

LIVE = ["kernel-livepatch-6.1.90-1.0-0"]


def _run(staging_installs: dict[str, list[str]], hot: set[str]) -> tuple[list[InstallPatches], list[str]]:
    instances = [dataclasses.replace(i, hotpatch=i.id in hot) for i in fleet()]
    commands: list[InstallPatches] = []

    def answer(command: AnsweredCommand) -> list[Outcome]:
        if isinstance(command, InstallPatches):
            commands.append(command)
        return answer_all_ok(command, patches=staging_installs)

    pol = policy()
    run = drive_to_end(start_run("run-1", pol, plan(pol, instances), NOW), answer)
    assert run.status == "succeeded"
    return commands, [entry.text for entry in run.log]


def test_a_hotpatch_machine_whose_promoted_set_is_live_patches_only_skips_its_reboot_and_says_so() -> None:
    hot = {"i-production-00", "i-production-01", "i-staging-00"}
    commands, log = _run({"linux": LIVE, "windows": ["KB5036893"]}, hot)
    targets = {t.instance.id: t for c in commands for t in c.targets}
    assert targets["i-production-00"].reboot == "never" and targets["i-production-01"].reboot == "never"
    assert targets["i-production-02"].reboot is None  # not hotpatch-enabled: reboots as the policy says
    assert targets["i-staging-00"].reboot is None  # staging installs what the policy selects: anything
    assert all(c.reboot == "if_required" for c in commands)
    said = [line for line in log if "hotpatch only: no reboot for" in line]
    wave_of = {t.instance.id: c.wave for c in commands for t in c.targets if t.reboot == "never"}
    for machine, wave in wave_of.items():  # each line names the wave that installed it
        assert any(line.startswith(f"Wave {wave}: ") and machine in line for line in said)
    assert {"i-production-00", "i-production-01"} <= {name for line in said for name in hot if name in line}
    assert not any("i-staging-00" in line or "i-production-02" in line for line in said)


def test_a_promoted_set_with_a_kernel_needs_the_reboot_even_on_a_hotpatch_machine() -> None:
    commands, log = _run({"linux": [*LIVE, "kernel-6.1.91-1"], "windows": []}, {"i-production-00"})
    assert all(t.reboot is None for c in commands for t in c.targets)
    assert not any("hotpatch only" in line for line in log)


@pytest.mark.parametrize(
    ("item", "live"),
    [
        ("kernel-livepatch-5.10.210-201.852-1.0-0.amzn2.x86_64", True),
        ("kernel-livepatch-6.1.90-1.0-0=1.0-0", True),
        ("2025-02 Security Hotpatch Update for Windows Server 2025 (KB5052034)", True),
        ("kernel-6.1.90-1", False),
        ("KB5036893", False),  # a KB number alone says nothing: Azure's IfRequired decides
    ],
)
def test_live_patches_are_known_by_name(item: str, live: bool) -> None:
    assert live_patch(item) is live


def test_only_a_hotpatch_machine_with_a_known_live_set_is_reboot_free() -> None:
    machine = Instance(id="i-1", cloud="aws", region="r", os="linux", hotpatch=True)
    assert reboot_free(machine, LIVE)
    assert not reboot_free(machine, None)  # the policy's selection: unknown until installed
    assert not reboot_free(machine, [])
    assert not reboot_free(dataclasses.replace(machine, hotpatch=False), LIVE)


def test_the_report_says_which_machines_took_live_patches_without_a_reboot() -> None:
    from patchpilot.reports import render_markdown
    from patchpilot.reports.model import build

    instances = [dataclasses.replace(i, hotpatch=i.id in {"i-production-00", "i-production-03"}) for i in fleet()]
    pol = policy()
    run = drive_to_end(
        start_run("run-1", pol, plan(pol, instances), NOW),
        lambda c: answer_all_ok(c, patches={"linux": LIVE, "windows": ["KB5036893"]}),
    )
    summary = build(run).hotpatch
    assert summary.startswith(
        "2 hotpatch-enabled machines; 1 machine took live patches only, no reboot (i-production-00)"
    )
    assert "1 machine installed more and rebooted as needed (i-production-03)" in summary  # a Windows KB
    assert f"| Hotpatch | {summary} |" in render_markdown(run).replace("\\", "")
    assert build(drive_to_end(start_run("run-2", pol, plan(pol, fleet()), NOW), answer_all_ok)).hotpatch == ""


def test_the_plan_names_the_hotpatch_machines(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from test_cli import POLICY

    from patchpilot.cli import main

    fleet_path = tmp_path / "fleet.json"
    machines = [
        {"id": "i-1", "cloud": "aws", "region": "ap-northeast-1", "os": "linux", "tags": {"Environment": "staging"}},
        {
            "id": "i-2",
            "cloud": "aws",
            "region": "ap-northeast-1",
            "os": "linux",
            "tags": {"Environment": "staging"},
            "hotpatch": True,
        },
    ]
    fleet_path.write_text(json.dumps({"instances": machines}), encoding="utf-8")
    document = json.loads(
        CliRunner().invoke(main, ["plan", "--policy", POLICY, "--inventory", str(fleet_path), "--json"]).stdout
    )
    assert [i for w in document["waves"] for i in w["hotpatch"]] == ["i-2"]
    table = CliRunner().invoke(
        main, ["plan", "--policy", POLICY, "--inventory", str(fleet_path)], env={"COLUMNS": "200"}
    )
    assert (
        "Hotpatch-enabled: 1 machine (i-2), not rebooted in a month whose promoted set is live patches only."
        in table.stdout
    )
