"""`patchpilot advisory FILE`: answer an advisory delivery as it arrived (an EventBridge event, an
Event Grid event or batch, a PatchPilot advisory), and with the local runtime start the emergency
run it decides on. `cli.py` registers the command.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from patchpilot.advisories import AdvisoryAnswer, Delivery, load_payload
from patchpilot.advisories.intake import answer_deliveries
from patchpilot.cli_common import print_json, reports_input_errors
from patchpilot.cli_steps import EXIT_BROKEN, EXIT_HALTED, EXIT_NOTHING_PATCHED, EXIT_SUCCEEDED, EXIT_WAITING_APPROVAL
from patchpilot.engine.messages import FollowUpRequested, Notify
from patchpilot.engine.run import Run, count_states
from patchpilot.inventory import Instance, load_inventory
from patchpilot.local_runtime import LocalRuntime, writing
from patchpilot.policy import Policy, load_policy
from patchpilot.reports import write_reports

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
    started: dict[str, Run] = {}  # each run started, as driven to its end or its approval
    answers = _take(runtime, policy, deliveries, instances, started)
    documents: list[dict[str, Any]] = []
    runs: list[Run] = []
    for answer in answers:
        document = answer.document()
        console.print(Text(answer.text, style=STYLES[answer.severity]))
        if answer.action == "start":
            if runtime is None:
                console.print("Not started: give --state-dir to start it on the local runtime.")
                document["started"] = False
            elif answer.run_id in started:
                run = started[answer.run_id]
                runs.append(run)
                document["started"] = True
                document["run"] = _run_summary(run, runtime, console)
        if answer.follow_up and runtime is not None and runtime.exists(answer.follow_up):
            run = runtime.load(answer.follow_up)
            runs.append(run)
            document["run"] = _run_summary(run, runtime, console)
        documents.append(document)
    if as_json:
        print_json({"answers": documents})
    sys.exit(_exit_status(runs))


def _take(
    runtime: LocalRuntime | None,
    policy: Policy,
    deliveries: list[Delivery],
    instances: list[Instance],
    started: dict[str, Run],
) -> list[AdvisoryAnswer]:
    """The intake the clouds use (`answer_deliveries`), over the local runtime: a run it starts is
    driven until it ends or waits for approval (`started`), a follow-up that can start at once
    likewise, and each answer goes where the runtime sends notices (the notifications file, and
    Slack or Teams as the policy routes them). Without a runtime, the answers only."""
    if runtime is None:
        return answer_deliveries(deliveries, policy, lambda: instances, None, None, lambda n: None, _now(), None)

    def start(
        run_id: str,
        emergency: Policy,
        chosen: list[Instance],
        *,
        window_end: datetime | None = None,
        frozen_by: str | None = None,
    ) -> Run:
        begun = runtime.start(emergency, chosen, run_id, window_end=window_end, frozen_by=frozen_by)
        run = started[run_id] = runtime.drive(begun.run_id)
        return run

    runtime.service.deployed_policy = lambda: policy  # a follow-up checks its freezes against this file's

    def follow_up(event: FollowUpRequested) -> None:
        followed = runtime.service.request_follow_up(event)
        if followed is not None and followed.finished:  # started at once: drive it to its end
            runtime.drive(event.follow_up_id)

    def tell(notice: Notify) -> None:
        runtime.notices.notify(notice)
        runtime.chat.send(notice, policy.notifications)

    now = runtime.clock.now()
    return answer_deliveries(deliveries, policy, lambda: instances, runtime.store, start, tell, now, follow_up)


def _now() -> datetime:
    return datetime.now(UTC)


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


EXIT_NOTHING_TO_DO = 0  # every source read; nothing to start or merge (or, with --start, done)
EXIT_WOULD_ACT = 1  # a dry run: an emergency run would start or a run take more machines
EXIT_NOT_READ = 4  # a source could not be read: what it holds is unknown


@click.command("advisories")
@click.option(
    "--cloud",
    type=click.Choice(["azure"]),
    required=True,
    help="Read the deployed Function App's sources (its app settings in the environment). On AWS, "
    "Inspector's findings arrive as events: `patchpilot advisory FILE` answers one.",
)
@click.option("--start", is_flag=True, help="Act: start and merge as the timer would, instead of only saying so.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@reports_input_errors
def advisories(cloud: str, start: bool, as_json: bool) -> None:
    """What Azure's own advisory sources hold now (Defender for Cloud's findings and, with
    `emergency.sources: [assessment]`, Update Manager's critical updates) and the answer each would
    get: start, merge, or ignore with why. Nothing is started without --start. Exit 0 nothing to
    do, 1 something would start or merge (dry run), 4 a source could not be read, 2 bad input."""
    from azure.core.exceptions import AzureError

    from patchpilot.bootstrap.azure import deps

    try:
        read = deps().azure_advisories(act=start)
    except AzureError as error:  # the run table or the policy's blob out of reach: one line, exit 1
        raise click.ClickException(f"{cloud}: {type(error).__name__}: {error}") from None
    if as_json:
        print_json({"cloud": cloud, "started": start, **read.document()})
    else:
        console = Console(highlight=False)
        for answer in read.answers:
            console.print(Text(answer.text, style=STYLES[answer.severity]), soft_wrap=True)
        for line in read.lines()[len(read.answers) :]:
            console.print(Text(line, style="yellow" if line.startswith("not read") else ""), soft_wrap=True)
        if not read.lines():
            console.print("Nothing found: no finding at or above the policy's emergency.min_severity.")
        elif not start and any(a.action in ("start", "merge") for a in read.answers):
            console.print("Nothing was started: give --start to act as the timer would.")
    if read.not_read:
        sys.exit(EXIT_NOT_READ)
    would_act = not start and any(a.action in ("start", "merge") for a in read.answers)
    sys.exit(EXIT_WOULD_ACT if would_act else EXIT_NOTHING_TO_DO)
