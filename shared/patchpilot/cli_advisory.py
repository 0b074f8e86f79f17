"""`patchpilot advisory FILE`: answer an advisory delivery as it arrived (an EventBridge event, an
Event Grid event or batch, a PatchPilot advisory), and with the local runtime start the emergency
run it decides on. `cli.py` registers the command.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from patchpilot.advisories import (
    Advisory,
    AdvisoryAnswer,
    OpenRun,
    decide_advisory,
    emergency_policy,
    follow_up_request,
    load_payload,
    open_run_of,
)
from patchpilot.advisories.intake import noted
from patchpilot.cli_common import print_json, reports_input_errors
from patchpilot.cli_steps import EXIT_BROKEN, EXIT_HALTED, EXIT_NOTHING_PATCHED, EXIT_SUCCEEDED, EXIT_WAITING_APPROVAL
from patchpilot.engine.run import Run, count_states
from patchpilot.inventory import Instance, load_inventory
from patchpilot.local_runtime import LocalRuntime, writing
from patchpilot.policy import Policy, load_policy
from patchpilot.reports import write_reports

log = logging.getLogger("patchpilot.advisories")

STYLES = {"info": "", "warning": "yellow", "error": "bold red"}


@click.command("advisory")
@click.argument("payload", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML) with an emergency section."
)
@click.option("--inventory", "inventory_path", required=True, metavar="FILE", help="Inventory file (JSON).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local runtime state: start (and drive) the emergency run there. Without it, only the answer is given.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@reports_input_errors
def advisory(payload: str, policy_path: str, inventory_path: str, state_dir: Path | None, as_json: bool) -> None:
    """Answer an advisory: emergency run started, merged into run X, reported to on-call, or
    ignored because (reason). FILE is the payload as delivered: an EventBridge event (Inspector
    finding, AWS Health event, PatchPilot advisory), an Event Grid event or batch, or a bare
    PatchPilot advisory (docs/advisories.md)."""
    deliveries = load_payload(payload)
    policy = load_policy(policy_path)
    instances = load_inventory(inventory_path)
    console = Console(stderr=as_json, highlight=False)
    if state_dir is not None:  # it starts runs: the state directory's lock, held to the command's end
        click.get_current_context().with_resource(writing(state_dir, state_dir / "reports"))
    runtime = LocalRuntime.open(state_dir) if state_dir is not None else None
    open_runs = _open_runs(runtime, policy) if runtime else []
    documents: list[dict[str, Any]] = []
    runs: list[Run] = []
    for delivery in deliveries:
        now = runtime.clock.now() if runtime else datetime.now(UTC)
        answer = decide_advisory(policy, delivery, instances, now, open_runs)
        log.info("advisory %s: %s", answer.key, answer.text)
        document = answer.document()
        console.print(Text(answer.text, style=STYLES[answer.severity]))
        if answer.action == "start" and isinstance(delivery, Advisory):
            if runtime is None:
                console.print("Not started: give --state-dir to start it on the local runtime.")
                document["started"] = False
            else:
                run = _start(runtime, policy, delivery, instances, answer)
                open_runs.append(OpenRun(run.run_id, delivery.cve, run.status, _run_instances(run)))
                runs.append(run)
                document["started"] = True
                document["run"] = _run_summary(run, runtime, console)
        if answer.follow_up and runtime is not None:
            followed = runtime.service.request_follow_up(follow_up_request(answer, instances, now))
            open_runs = [noted(r, answer) for r in open_runs]
            if followed is not None and followed.finished:  # started at once: drive it to its end
                runtime.drive(answer.follow_up)
            if runtime.exists(answer.follow_up):
                run = runtime.load(answer.follow_up)
                runs.append(run)
                document["run"] = _run_summary(run, runtime, console)
        documents.append(document)
    if as_json:
        print_json({"answers": documents})
    sys.exit(_exit_status(runs))


def _open_runs(runtime: LocalRuntime, policy: Policy) -> list[OpenRun]:
    found = []
    for run_id in runtime.store.run_ids():
        if run_id.startswith(f"{policy.name}-") and (run := open_run_of(policy, runtime.load(run_id))):
            found.append(run)
    return found


def _run_instances(run: Run) -> frozenset[str]:
    return frozenset(i for w in run.waves for i in w.records)


def _start(
    runtime: LocalRuntime, policy: Policy, delivery: Advisory, instances: list[Instance], answer: AdvisoryAnswer
) -> Run:
    """Start the run on the instances it patches plus the exposed ones (listed in its report as
    excluded, with why), and drive it until it ends or waits for approval."""
    wanted = set(answer.instances) | {i for i, _ in answer.exposed}
    run = runtime.start(emergency_policy(policy, delivery), [i for i in instances if i.id in wanted], answer.run_id)
    return runtime.drive(run.run_id)


def _run_summary(run: Run, runtime: LocalRuntime, console: Console) -> dict[str, Any]:
    markdown, html = write_reports(run, runtime.state_dir / "reports")
    console.print(f"Run {run.run_id}: [bold]{run.status}[/bold]. {count_states(run.records())}.")
    if run.reason:
        console.print(f"Reason: {run.reason}")
    if run.status == "waiting_approval":
        console.print(f"Approve with: patchpilot approve {run.run_id} --state-dir {runtime.state_dir}", soft_wrap=True)
    console.print(f"Report: {html}")
    return {
        "run_id": run.run_id,
        "status": run.status,
        "reason": run.reason,
        "summary": run.summary(),
        "report": {"markdown": str(markdown), "html": str(html)},
    }


def _exit_status(runs: list[Run]) -> int:
    """0 when every answer was given and every run started succeeded; 1 when one halted or did
    not finish; 4 when one left machines broken; 5 when one patched nothing; 3 when one waits for
    approval (as `patchpilot run`)."""
    if any(r.status in ("halted", "incomplete", "running") for r in runs):
        return EXIT_HALTED
    if any(r.status == "succeeded_with_failures" for r in runs):
        return EXIT_BROKEN
    if any(r.status == "nothing_patched" for r in runs):
        return EXIT_NOTHING_PATCHED
    if any(r.status == "waiting_approval" for r in runs):
        return EXIT_WAITING_APPROVAL
    return EXIT_SUCCEEDED
