"""`patchpilot compliance`: which machine lacks which patch, over one or several policies, from the
simulated fleet of the local runtime (`--inventory`) or from the clouds (`--cloud`).

Exit status: 0 when every machine the policies patch is compliant; 1 (`EXIT_NON_COMPLIANT`, as
`git diff --exit-code`) when a machine is non-compliant, needs attention (a run left it failed) or
has no assessment, or when a missing patch is past its SLA deadline (`compliance.sla`) and no
exception covers it, on any machine (an exposed one too); 2 for bad input.
Exposed, excepted and unmanaged machines are shown loudly but do not change the status by
themselves: the policy chose not to patch them. See docs/compliance.md and docs/governance.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import click
from click.core import ParameterSource

from patchpilot.cli_common import EXIT_INVALID_INPUT, print_json, reports_input_errors
from patchpilot.compliance.model import PatchState
from patchpilot.compliance.render import (
    render_csv,
    render_html,
    render_markdown,
    report_name,
    write_compliance_reports,
)
from patchpilot.compliance.report import (
    ComplianceView,
    LastRun,
    LeftFailed,
    build_view,
    last_patched,
    left_failed,
    merge_views,
    recent_runs,
    unexcepted_overdue,
)
from patchpilot.errors import InputError
from patchpilot.inventory import Instance, load_inventory
from patchpilot.policy import Policy, load_policy
from patchpilot.policy.fields import format_duration, parse_duration
from patchpilot.ports import Clock, PatchAssessor, RunStore

EXIT_COMPLIANT = 0
EXIT_NON_COMPLIANT = 1
POLL_INTERVAL = timedelta(seconds=20)
FORMATS = ("markdown", "html", "csv", "json")
DEFAULT_STATE_DIR = ".patchpilot"


class CloudUnavailableError(click.ClickException):
    """A policy names no cloud, or a cloud's extra is missing: bad input, exit status 2."""

    exit_code = EXIT_INVALID_INPUT


@dataclass
class Source:
    """One policy's machines and the assessor that reads them (a cloud fleet, or the simulated one)."""

    policy: Policy
    assessor: PatchAssessor
    instances: list[Instance]


def sleep(seconds: float) -> None:
    """Between two polls of `--wait` (replaced in tests)."""
    time.sleep(seconds)


def wall_clock() -> Clock:
    from patchpilot.adapters.serverless import WallClock

    return WallClock()


class DurationType(click.ParamType[timedelta]):
    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        try:
            return parse_duration(value)
        except ValueError:
            self.fail(f'expected a duration such as "10m", "1h" or "90s", got "{value}"', param, ctx)


@click.command("compliance")
@click.option(
    "--policy", "policy_paths", multiple=True, required=True, metavar="FILE", help="Policy file (YAML); repeatable."
)
@click.option("--inventory", "inventory_path", metavar="FILE", help="Inventory file (JSON): the simulated fleet.")
@click.option("--cloud", is_flag=True, help="Read the real clouds the policies name (AWS, Azure).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PATCHPILOT_STATE_DIR",
    help=f"The local runtime's state (with --inventory): what it patched is compliant [default: {DEFAULT_STATE_DIR}].",
)
@click.option("--scan", is_flag=True, help="Start a fresh assessment first (it installs nothing).")
@click.option("--wait", type=DurationType(), help="With --scan: wait this long at most for the scans to end.")
@click.option("--format", "output_format", type=click.Choice(FORMATS), help="What to print [default: markdown].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the same as --format json).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the Markdown, HTML and CSV report into this directory and print their paths.",
)
@click.pass_context
@reports_input_errors
def compliance(
    ctx: click.Context,
    policy_paths: tuple[str, ...],
    inventory_path: str | None,
    cloud: bool,
    state_dir: Path | None,
    scan: bool,
    wait: timedelta | None,
    output_format: str | None,
    as_json: bool,
    out_dir: Path | None,
) -> None:
    """Show which machine lacks which patch: per machine, per ring and per policy."""
    if cloud == bool(inventory_path):
        raise click.UsageError("give --inventory FILE (the simulated fleet) or --cloud (the real clouds), not both")
    if cloud and ctx.get_parameter_source("state_dir") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--state-dir is the local runtime's: it does not go with --cloud")
    if wait is not None and not scan:
        raise click.UsageError("--wait waits for the scan that --scan starts: give --scan too")
    if as_json and output_format not in (None, "json"):
        raise click.UsageError(f"--json and --format {output_format} ask for two outputs: give one")
    output = "json" if as_json else (output_format or "markdown")
    policies = [load_policy(path) for path in policy_paths]
    _no_repeats(policies, policy_paths)
    store: RunStore | None = None
    if cloud:
        clock = wall_clock()
        sources = _cloud_sources(policies, clock)
    else:
        assert inventory_path is not None
        local = state_dir or Path(DEFAULT_STATE_DIR)
        sources, clock, store = _local_sources(policies, load_inventory(inventory_path), local, scan)
    started = clock.now()
    refused = _start_scans(sources, f"cli-{started:%Y%m%dT%H%M%S}") if scan else set()
    states = _read_states(sources, clock, started if scan and wait else None, wait or timedelta(0), refused)
    now = clock.now()
    views = [_policy_view(policy, sources, states, now, *_run_facts(store, policy)) for policy in policies]
    view = merge_views(views)
    _emit(view, output, out_dir)
    if out_dir is not None and not cloud:
        _record_for_overview(view, out_dir / f"{report_name(view)}.html", state_dir or Path(DEFAULT_STATE_DIR))
    bad = sum(view.totals.machines[s] for s in ("non_compliant", "needs_attention", "unknown"))
    sys.exit(EXIT_NON_COMPLIANT if bad or unexcepted_overdue(view) else EXIT_COMPLIANT)


def _policy_view(
    policy: Policy,
    sources: Sequence[Source],
    states: dict[int, list[PatchState]],
    now: datetime,
    last_runs: dict[str, LastRun] | None,
    broken: dict[str, LeftFailed] | None,
) -> ComplianceView:
    """One policy's view over every cloud it names (AWS and Azure: one source each)."""
    mine = [s for s in sources if s.policy is policy]
    instances = [i for s in mine for i in s.instances]
    return build_view(policy, instances, [st for s in mine for st in states[id(s)]], now, last_runs, broken)


def _run_facts(
    store: RunStore | None, policy: Policy
) -> tuple[dict[str, LastRun] | None, dict[str, LeftFailed] | None]:
    """What the policy's newest runs patched and which machines they left failed (`recent_runs`);
    None without a store, or when it cannot be read (said on stderr: the report comes without the column)."""
    if store is None:
        return None, None
    try:
        runs = recent_runs(store, policy.name)
    except Exception as error:  # a broken state database must not cost the report
        click.echo(f"{policy.name}: last runs not shown, the run store cannot be read: {error}", err=True)
        return None, None
    return last_patched(runs, policy.name), left_failed(runs, policy.name)


def _record_for_overview(view: ComplianceView, html: Path, state_dir: Path) -> None:
    """Keep each policy's totals for the overview page (STATE_DIR/reports/summaries/) and write
    the page again (`record_summaries`)."""
    from patchpilot.cli_steps import record_summaries
    from patchpilot.reports.overview import compliance_summaries

    record_summaries(state_dir, compliance_summaries(view, str(html.absolute())))


def _no_repeats(policies: Sequence[Policy], paths: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for policy, path in zip(policies, paths, strict=True):
        if policy.name in seen:
            raise InputError.single(
                path, f"policy {policy.name} is also in {seen[policy.name]}: give it once", ("name",)
            )
        seen[policy.name] = path


def _local_sources(
    policies: Sequence[Policy], instances: list[Instance], state_dir: Path, scan: bool
) -> tuple[list[Source], Clock, RunStore]:
    """The simulated fleet of `state_dir`: read-only (creating nothing) unless a scan is to be
    recorded there, which writes, under the state directory's lock."""
    from patchpilot.local_runtime import LocalRuntime, open_view, writing

    if not scan:
        view = open_view(state_dir)
        return [Source(p, view.fleet, instances) for p in policies], view.clock, view.store
    click.get_current_context().with_resource(writing(state_dir))
    runtime = LocalRuntime.open(state_dir)
    return [Source(p, runtime.fleet, instances) for p in policies], runtime.clock, runtime.store


def _cloud_sources(policies: Sequence[Policy], clock: Clock) -> list[Source]:
    from patchpilot.bootstrap import clouds

    sources = []
    for policy in policies:
        try:
            fleets = clouds.cloud_fleets(policy, clock)
        except click.ClickException as error:
            raise CloudUnavailableError(error.message) from None
        for fleet in fleets:
            found = fleet.discover(policy)
            count = len(found.instances)
            click.echo(f"{policy.name}: {count} machine{'s' if count != 1 else ''} on {fleet.cloud}", err=True)
            sources.append(Source(policy, fleet, found.instances))
    return sources


def _start_scans(sources: Sequence[Source], token: str) -> set[str]:
    """Start a scan per source; the ids of the machines it could not start on."""
    refused: set[str] = set()
    for source in sources:
        started = source.assessor.start_assessment(source.instances, token)
        click.echo(
            f"{source.policy.name}: scan started on {started.started} of {len(source.instances)} machines", err=True
        )
        for instance_id, reason in started.refused:
            click.echo(f"  not scanned: {instance_id}: {reason}", err=True)
            refused.add(instance_id)
    return refused


def _read_states(
    sources: Sequence[Source], clock: Clock, scanned_after: datetime | None, wait: timedelta, refused: set[str]
) -> dict[int, list[PatchState]]:
    """Every source's patch states; with `scanned_after`, polled until each machine's assessment
    is newer or `wait` has passed (machines the scan was refused on are not waited for; one that
    reports an error is: a machine never assessed before has no state until its first scan ends)."""
    deadline = clock.now() + wait
    while True:
        states = {id(s): s.assessor.patch_states(s.instances) for s in sources}
        if scanned_after is None:
            return states
        waiting = [st for group in states.values() for st in group if st.instance_id not in refused]
        done = sum(1 for st in waiting if st.assessed_at is not None and st.assessed_at >= scanned_after)
        click.echo(f"scan: {done} of {len(waiting)} machines assessed", err=True)
        if done == len(waiting):
            return states
        left = deadline - clock.now()
        if left <= timedelta(0):
            click.echo(
                f"scan: {len(waiting) - done} machines not assessed within {format_duration(wait)}; "
                "their last assessment is shown",
                err=True,
            )
            return states
        sleep(min(left, POLL_INTERVAL).total_seconds())


def _emit(view: ComplianceView, output: str, out_dir: Path | None) -> None:
    paths = write_compliance_reports(view, out_dir) if out_dir is not None else []
    if output == "json":
        document = view.document()
        if paths:
            document["report"] = {path.suffix.lstrip("."): str(path) for path in paths}
        print_json(document)
        return
    if paths:
        for path in paths:
            click.echo(str(path))
        return
    render = {"markdown": render_markdown, "html": render_html, "csv": render_csv}[output]
    click.echo(render(view), nl=False)
