"""The `patchpilot` command: validate policies, list windows, plan waves."""

from __future__ import annotations

from patchpilot import loading  # first: the collector paused while the command loads

# isort: split

import atexit
import functools
import gc
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, time, timedelta
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, get_args

import click
from click.core import ParameterSource

from patchpilot.adapters.local.clock import virtual_start
from patchpilot.cli_common import EXIT_INVALID_INPUT as EXIT_INVALID_INPUT  # re-exported: scripts and tests use it
from patchpilot.cli_common import input_problems, reports_input_errors
from patchpilot.cli_common import print_json as _print_json
from patchpilot.cli_steps import (  # re-exported: scripts and tests use them
    DEFAULT_STATE_DIR as DEFAULT_STATE_DIR,
)
from patchpilot.cli_steps import (
    EXIT_BROKEN as EXIT_BROKEN,
)
from patchpilot.cli_steps import (
    EXIT_HALTED as EXIT_HALTED,
)
from patchpilot.cli_steps import (
    EXIT_NOTHING_PATCHED as EXIT_NOTHING_PATCHED,
)
from patchpilot.cli_steps import (
    EXIT_SUCCEEDED as EXIT_SUCCEEDED,
)
from patchpilot.cli_steps import (
    EXIT_WAITING_APPROVAL as EXIT_WAITING_APPROVAL,
)
from patchpilot.cli_steps import (
    command_line as command_line,
)
from patchpilot.cli_steps import (
    next_steps as next_steps,
)
from patchpilot.cli_steps import (
    refresh_overview_page as refresh_overview_page,
)
from patchpilot.cli_tables import print_rows
from patchpilot.engine.statuses import Status
from patchpilot.errors import InputError, Problem
from patchpilot.inventory import Instance, load_inventory
from patchpilot.planning import (
    Outline,
    Plan,
    Selection,
    WindowFit,
    outline,
    plan,
    plan_document,
    pool_text,
    ring_of,
    window_fit,
    window_warnings,
)
from patchpilot.policy import Policy, load_policy
from patchpilot.policy.fields import format_duration
from patchpilot.wording import plural

# `plan` and `validate` load only what they use (tests/test_cli_imports.py): the local runtime,
# the engine's messages, the reports, rich and the command groups of the clouds load in the
# commands that use them.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID
    from rich.table import Table

    from patchpilot.adapters.local.sqlite_store import SqliteRunStore
    from patchpilot.engine.messages import Notify
    from patchpilot.engine.run import InstanceRecord, Run
    from patchpilot.local_runtime import LocalRuntime
    from patchpilot.policy.freeze import Freeze
    from patchpilot.policy.model import Schedule
    from patchpilot.ports import RunStore
    from patchpilot.reports.overview import history_entry as history_entry  # re-exported: `runs --json` rows

MAX_IDS_SHOWN = 6
HOTPATCH = attrgetter("hotpatch")  # filter(HOTPATCH, machines): 100,000 of them without a Python call each
P = ParamSpec("P")
R = TypeVar("R")


def _console(**options: Any) -> Console:
    from rich.console import Console

    return Console(highlight=False, **options)


def collector_paused(command: Callable[P, R]) -> Callable[P, R]:
    """Run `command` with the cyclic garbage collector paused. Loading and planning a fleet of
    100,000 machines allocates millions of objects that live until the command ends and hold no
    cycle to free: each pass of the collector over them is wasted (a third of the time it takes to
    load the inventory, bench/bench_cli_plan.py), so none runs."""

    @functools.wraps(command)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        if not gc.isenabled():
            return command(*args, **kwargs)
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            gc.enable()

    return paused


def ends_the_process() -> None:
    """End the process here, as click would once the command returns (exit status 0), without
    freeing what the command built: a plan of 100,000 machines takes a tenth of a second to free,
    for nothing, as the process ends (bench/bench_cli_plan.py). The output is flushed and the
    `atexit` functions run first, as at any exit. Only where the process is the command's own:
    click's standalone mode, the process's own stdout and stderr (not `CliRunner`'s, not a test's
    capture), no interactive prompt to return to; elsewhere it returns and the command ends as
    any other. A failure to write the output (a closed pipe) is raised as it would be without this."""
    stdout, stderr = sys.__stdout__, sys.__stderr__
    if stdout is None or stderr is None or sys.stdout is not stdout or sys.stderr is not stderr:
        return
    if not _STANDALONE.get() or sys.flags.inspect:
        return
    stdout.flush()
    stderr.flush()
    atexit._run_exitfuncs()  # what the interpreter runs at exit (coverage's data, logging's handlers)
    stdout.flush()
    stderr.flush()
    os._exit(0)


_STANDALONE: ContextVar[bool] = ContextVar("_STANDALONE", default=False)  # `main` runs in click's standalone mode


policy_option = click.option("--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML).")
inventory_option = click.option("--inventory", "inventory_path", metavar="FILE", help="Inventory file (JSON).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


# The commands of other modules (each module's attribute of the command's name). They reach back
# into this module when a command runs, never at import.
COMMANDS_ELSEWHERE = {
    "advisory": "patchpilot.cli_advisory",
    "advisories": "patchpilot.cli_advisory",
    "aws": "patchpilot.cli_aws",
    "azure": "patchpilot.cli_azure",
    "compliance": "patchpilot.cli_compliance",
    "maintenance": "patchpilot.cli_maintenance",
}


class _Commands(click.Group):
    """`patchpilot`'s commands; those of `COMMANDS_ELSEWHERE` load when they are asked for (a
    command line that names one, `--help`, completion): `plan` and `validate` never import them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS_ELSEWHERE})

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's `main`, remembering whether it runs standalone (`ends_the_process` asks)."""
        standalone = kwargs.get("standalone_mode", args[3] if len(args) > 3 else True)
        token = _STANDALONE.set(bool(standalone))
        try:
            return super().main(*args, **kwargs)
        finally:
            _STANDALONE.reset(token)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS_ELSEWHERE and cmd_name not in self.commands:
            command = getattr(importlib.import_module(COMMANDS_ELSEWHERE[cmd_name]), cmd_name)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
@click.version_option(None, "-V", "--version", package_name="patchpilot")
def main() -> None:
    """PatchPilot: snapshot, patch a staging ring, health-check, promote to production in
    availability-safe waves, roll back on failure."""


@main.command()
@policy_option
@inventory_option
@json_option
@reports_input_errors
@collector_paused
def validate(policy_path: str, inventory_path: str | None, as_json: bool) -> None:
    """Check a policy (and an inventory) and name every problem with its place."""
    if as_json:
        _validate_json(policy_path, inventory_path)
        return
    policy = load_policy(policy_path)
    rings = ", ".join(r.name for r in policy.rings)
    click.echo(f"{policy_path}: ok (policy {policy.name}; rings {rings})")
    if inventory_path:
        instances = load_inventory(inventory_path)
        click.echo(f"{inventory_path}: ok ({len(instances)} instances)")
        _echo_warnings(ring_warnings(policy_path, policy, inventory_path, outline(policy, instances, _now())))
        ends_the_process()


def _validate_json(policy_path: str, inventory_path: str | None) -> None:
    """`validate --json`: `{"valid", "policy", "rings", "inventory": {"path", "instances"} | null,
    "problems", "warnings"}` on stdout, valid or not; each problem as the JSON errors have them
    (`input_problems`). An invalid input also fails as every `--json` command does (the
    `{"error", "problems"}` document on stderr, exit 2)."""
    document: dict[str, Any] = {
        "valid": False,
        "policy": None,
        "rings": [],
        "inventory": None,
        "problems": [],
        "warnings": [],
    }
    try:
        policy = load_policy(policy_path)
        document.update(policy=policy.name, rings=[r.name for r in policy.rings])
        if inventory_path:
            instances = load_inventory(inventory_path)
            document["inventory"] = {"path": inventory_path, "instances": len(instances)}
            document["warnings"] = ring_warnings(
                policy_path, policy, inventory_path, outline(policy, instances, _now())
            )
    except InputError as error:
        document["problems"] = input_problems(error)
        _print_json(document)
        raise
    document["valid"] = True
    _print_json(document)
    ends_the_process()  # before the inventory is freed


@main.command()
@policy_option
@click.option("--count", default=6, show_default=True, type=click.IntRange(1, 1000), help="How many windows.")
@click.option(
    "--after",
    metavar="ISO-DATE",
    help="List windows starting at or after this time (default: now); "
    "a time without an offset is in the policy's time zone.",
)
@json_option
@reports_input_errors
def schedule(policy_path: str, count: int, after: str | None, as_json: bool) -> None:
    """List the next maintenance windows of a policy, and which freezes stop or shorten them."""
    from rich.table import Table

    from patchpilot.triggers import freeze_of

    policy = load_policy(policy_path)
    if policy.schedule is None:
        raise InputError.single(policy_path, "the policy has no schedule", ("schedule",))
    sched = policy.schedule
    # the CLI's clock: PATCHPILOT_VIRTUAL_START when set, as for a new state directory
    start = _parse_after(after, sched) if after else (virtual_start() or datetime.now(UTC))
    windows = sched.windows(start, count)
    freezes = [freeze_of(policy, w) for w in windows]
    if as_json:
        _print_json(
            {
                "policy": policy.name,
                "timezone": sched.timezone,
                "duration": format_duration(sched.duration),
                "windows": [
                    {"start": w.start.isoformat(), "end": w.end.isoformat(), "freeze": _freeze_document(*f, sched)}
                    for w, f in zip(windows, freezes, strict=True)
                ],
            }
        )
        return
    rule = sched.rule.text + (f" +{sched.offset_days}d" if sched.offset_days else "")
    at = f" at {sched.at.strftime('%H:%M')}" if sched.at else ""
    table = Table(title=f"{policy.name}: {rule}{at} {sched.timezone}, {format_duration(sched.duration)}")
    shows_freezes = bool(policy.freezes())
    for column in ("#", "starts", "ends", "day", *(("freeze",) if shows_freezes else ())):
        table.add_column(column)
    for n, (w, (frozen, cut_by)) in enumerate(zip(windows, freezes, strict=True), 1):
        row = [str(n), w.start.isoformat(), w.end.isoformat(), w.start.strftime("%a %d %b %Y")]
        if frozen is not None:
            end = frozen.end.astimezone(sched.zone)
            whole_days = end.time() == time()
            until = f"through {end - timedelta(days=1):%Y-%m-%d}" if whole_days else f"until {end:%Y-%m-%d %H:%M}"
            row.append(f"frozen: {frozen.name} {until}")
        elif cut_by is not None:
            row.append(f"ends {cut_by.start.astimezone(sched.zone):%H:%M}: {cut_by.name} starts")
        elif shows_freezes:
            row.append("")
        table.add_row(*row)
    _console().print(table)


def _freeze_document(frozen: Freeze | None, cut_by: Freeze | None, sched: Schedule) -> dict[str, Any] | None:
    """`schedule --json`'s `freeze` of a window: the freeze it starts in (`effect: frozen`, no run) or
    the one that cuts it short (`effect: cut_short`, no wave starts after its start); null: neither."""
    freeze = frozen or cut_by
    if freeze is None:
        return None
    return {
        "name": freeze.name,
        "start": freeze.start.astimezone(sched.zone).isoformat(),
        "end": freeze.end.astimezone(sched.zone).isoformat(),
        "source": freeze.source,
        "effect": "frozen" if frozen is not None else "cut_short",
    }


def _parse_after(text: str, sched: Schedule) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f'expected an ISO date or time such as "2026-12-01" or "2026-12-01T09:00+09:00", got "{text}"',
            param_hint="--after",
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=sched.zone)


@main.command("plan")
@policy_option
@click.option("--inventory", "inventory_path", required=True, metavar="FILE", help="Inventory file (JSON).")
@json_option
@reports_input_errors
@collector_paused
def plan_command(policy_path: str, inventory_path: str, as_json: bool) -> None:
    """Show the rings and availability-safe waves for a fleet, and what is excluded and why."""
    policy = load_policy(policy_path)
    result = plan(policy, load_inventory(inventory_path), _now())
    warnings = ring_warnings(policy_path, policy, inventory_path, result)
    fit = window_fit(policy, result)
    warnings += [Problem(("schedule", "duration"), w).render(policy_path) for w in window_warnings(policy, result, fit)]
    if as_json:
        _print_json({**plan_document(result), "window": fit.document(), "warnings": warnings})
    else:
        print_plan(_console(), policy, result, fit)
        _echo_warnings(warnings)
    ends_the_process()


def _now() -> datetime:
    """What a command that runs nothing takes as now (which exceptions are in force): the examples'
    virtual start when `PATCHPILOT_VIRTUAL_START` is set, else the real time."""
    return virtual_start() or datetime.now(UTC)


def pool_warnings(inventory_path: str, result: Plan | Selection | Outline) -> list[str]:
    """The plan's warnings about traffic pools: a pool of one member that is patched, or whose
    machine is excluded (`rollout.single_member_pools: refuse`)."""
    return [f"{inventory_path}: {w}" for w in result.warnings]


def ring_warnings(
    policy_path: str, policy: Policy, inventory_path: str, result: Plan | Selection | Outline
) -> list[str]:
    """Each ring that selects no machine of the inventory, and what a run would do then: a ring
    with no machine is patched by no run, and a first ring with none promotes no tested set, so
    no later ring is patched either (the run ends `nothing_patched`); then the plan's warnings
    about traffic pools (`pool_warnings`). Empty for a frozen policy, which patches nothing by design.
    A plan's `Selection` says the same as the plan (a ring with machines has waves), and so does
    its `Outline` (`patchpilot validate`'s: it holds every exclusion when a ring selects nothing)."""
    if policy.kind == "frozen":
        return []
    if isinstance(result, Outline):
        instances, rings = result.fleet_size, list(result.selects.items())
    elif isinstance(result, Selection):
        instances = result.instance_count + len(result.excluded)
        rings = [(name, bool(group)) for name, group in result.members.items()]
    else:
        instances = result.instance_count + len(result.excluded)
        rings = [(ring.name, bool(ring.waves)) for ring in result.rings]
    pools = pool_warnings(inventory_path, result)
    if not instances:
        return [f"{inventory_path}: the inventory is empty: a run would patch nothing"]
    warnings = []
    for position, (name, selects) in enumerate(rings):
        if selects:
            continue
        excluded = result.excluded
        assert excluded is not None, "an outline holds every exclusion when a ring selects nothing"
        matched = sum(1 for e in excluded if ring_of(policy, e.instance) == name)
        text = f"ring {name} selects no machine of {inventory_path} ({instances} instances"
        text += f"; the {matched} it matches are excluded)" if matched else ")"
        if position == 0 and len(rings) > 1:
            text += ": a run would patch nothing and promote no tested set, so no later ring is patched either"
        elif position == 0:
            text += ": a run would patch nothing"
        text += "; check its select"
        warnings.append(Problem(("rings", position, "select"), text).render(policy_path))
    return warnings + pools


def _echo_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def around_the_install(policy: Policy) -> str:
    """What a wave does around its installs beyond the default (docs/traffic.md), "" for nothing."""
    steps = []
    hooks = [policy.hooks_for(r.name) for r in policy.rings]
    if any(h.before_wave for h in hooks):
        steps.append("the before_wave hook")
    traffic = policy.traffic
    if traffic.drain:
        timeout = f" (at most {format_duration(traffic.drain_timeout)})" if traffic.drain_timeout else ""
        steps.append(f"drain from the traffic pools{timeout}")
    if policy.scaling_groups == "standby":
        steps.append("scaling-group members into Standby")
    if any(h.before_install for h in hooks):
        steps.append("the before_install host hook")
    steps.append("install")
    if any(h.after_install for h in hooks):
        steps.append("the after_install host hook")
    steps.append("health checks")
    if traffic.drain:
        steps.append("rejoin the pools" + (" and pass their health checks" if traffic.pool_health else ""))
    if any(h.after_wave for h in hooks):
        steps.append("the after_wave hook")
    return "" if len(steps) == 2 else ", ".join(steps)


def print_plan(console: Console, policy: Policy, result: Plan, fit: WindowFit | None = None) -> None:
    """The plan's waves, what is excluded, and how it fits the window (`fit`: `window_fit`'s, when
    the caller has it already)."""
    from rich.table import Table

    rollout = policy.rollout
    pools = f", pool budget {rollout.pool_budget}" if rollout.pool_budget is not None else ""
    table = Table(
        title=f"{policy.name}: {rollout.mode}, budget {rollout.disruption_budget} per zone{pools}, "
        f"canary {rollout.canary}"
    )
    columns = ["wave", "ring", "size", "expected", "where", "instances"]
    if result.pool_members:  # only for an inventory with traffic pools: other plans look as before
        columns.insert(5, "pools")
    for column in columns:
        table.add_column(column, overflow="fold")
    fit = fit or window_fit(policy, result)
    for wave, wave_fit in zip(result.waves, fit.waves, strict=True):
        size = len(wave.instances)
        more = size - MAX_IDS_SHOWN
        shown = ", ".join(i.short_name for i in wave.instances[:MAX_IDS_SHOWN]) + (f" … +{more}" if more > 0 else "")
        label = f"{wave.index}" + (" (canary)" if wave.canary else "")
        expected = format_duration(wave_fit.expected) + ("" if wave_fit.starts else " (does not fit)")
        row = [label, wave.ring, str(size), expected, wave.placement, shown]
        if result.pool_members:
            row.insert(5, pool_text(wave.instances, result.pool_members))
        table.add_row(*row)
    console.print(table)
    if result.excluded:  # 1,000 rows for a fleet of 100,000: printed as rich would, quicker
        rows = [(e.instance.short_name, e.instance.id, e.reason) for e in result.excluded]
        print_rows(console, "Excluded", ("instance", "id", "reason"), rows)
    rings = "; ".join(f"{r.name} {len(r.waves)} (bound {r.lower_bound})" for r in result.rings)
    console.print(
        f"{result.instance_count} instances in {len(result.waves)} waves, lower bound "
        f"{result.lower_bound} ({rings}); {len(result.excluded)} excluded."
    )
    for ring in result.rings:
        if ring.gate:
            console.print(f"Ring {ring.name}: {ring.gate}.", soft_wrap=True)
    if around := around_the_install(policy):
        console.print(f"Around each install: {around}.", soft_wrap=True)
    if hot := [i.short_name for w in result.waves if w.hotpatch_count for i in filter(HOTPATCH, w.instances)]:
        shown = ", ".join(hot[:MAX_IDS_SHOWN]) + (f" … +{len(hot) - MAX_IDS_SHOWN}" if len(hot) > MAX_IDS_SHOWN else "")
        console.print(
            f"Hotpatch-enabled: {plural(len(hot), 'machine')} ({shown}), not rebooted in a month whose "
            "promoted set is live patches only.",
            soft_wrap=True,
        )
    if fit.window is not None:
        within = "fits" if fit.fits else "does not fit"
        console.print(
            f"Expected {format_duration(fit.total)} (soaks included, approvals not): {within} the "
            f"{format_duration(fit.window)} window.",
            soft_wrap=True,
        )


@main.command()
@click.argument("kind", type=click.Choice(["policy", "messages"]), default="policy")
def schema(kind: str) -> None:
    """Print the JSON Schema of policy files or of the run's messages."""
    _print_json(policy_schema() if kind == "policy" else messages_schema())


def messages_schema() -> dict[str, Any]:
    from patchpilot.engine.messages import MESSAGE

    document = MESSAGE.json_schema(mode="serialization")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "PatchPilot messages (commands and events)"
    return document


def policy_schema() -> dict[str, Any]:
    from pydantic.json_schema import GenerateJsonSchema, NoDefault
    from pydantic_core import core_schema

    class PolicyFileSchema(GenerateJsonSchema):
        """A field's default as a policy file writes it: through the field's own plain serializer
        (`10%`, `cron(0 5 * * ? *)`). pydantic applies it only to a schema of serialized output;
        a schema of input would give a `Quota` or `AwsCron` default as its attributes, which the
        field's own schema refuses."""

        def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
            default = super().get_default_value(schema)
            serializer = schema["schema"].get("serialization")
            if default is NoDefault or not serializer or serializer["type"] != "function-plain":
                return default
            return default if serializer.get("info_arg") else serializer["function"](default)

    document = Policy.model_json_schema(mode="validation", schema_generator=PolicyFileSchema)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "PatchPilot policy"
    return document


# ---------------------------------------------------------------- runs (local runtime)

state_dir_option = click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar="PATCHPILOT_STATE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the local runtime keeps runs, queue and simulated fleet.",
)


def complete_run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a RUN_ID: the runs of the state directory (given before it, or the
    default), newest first, that start with what was typed. Reads only; nothing when there is none."""
    from patchpilot.local_runtime import open_runs

    state_dir = ctx.params.get("state_dir") or os.environ.get("PATCHPILOT_STATE_DIR") or DEFAULT_STATE_DIR
    try:
        with open_runs(Path(state_dir)) as store:
            run_ids = store.run_ids()
    except Exception:  # completion never fails the shell: no state, an unreadable one, no runs
        return []
    return [run_id for run_id in reversed(run_ids) if run_id.startswith(incomplete)]


run_id_argument = click.argument("run_id", shell_complete=complete_run_ids)
report_dir_option = click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the run report (default: STATE_DIR/reports).",
)


@main.command("run")
@click.option("--policy", "policy_path", metavar="FILE", help="Policy file (YAML).")
@click.option("--inventory", "inventory_path", metavar="FILE", help="Inventory file (JSON).")
@click.option(
    "--resume", "resume_id", metavar="RUN_ID", shell_complete=complete_run_ids, help="Continue an interrupted run."
)
@state_dir_option
@report_dir_option
@json_option
@reports_input_errors
def run_command(
    policy_path: str | None,
    inventory_path: str | None,
    resume_id: str | None,
    state_dir: Path,
    report_dir: Path | None,
    as_json: bool,
) -> None:
    """Plan and run a patch run to its end on the local runtime (simulated fleet, virtual clock)."""
    if resume_id and (policy_path or inventory_path):
        raise click.UsageError("--resume takes the policy and inventory saved with the run; give neither")
    if not resume_id and not (policy_path and inventory_path):
        raise click.UsageError("give --policy and --inventory, or --resume RUN_ID")
    from patchpilot.local_runtime import LocalRuntime, writing

    console = _console(stderr=as_json)
    live = LiveProgress(console, quiet=as_json)
    if resume_id:
        directory = _report_dir_of(state_dir, resume_id, report_dir)
        with writing(state_dir, directory):
            runtime = LocalRuntime.open(state_dir, on_notice=live.notice)
            run = _load_run(runtime.store, state_dir, resume_id)
            _remember_report_dir(runtime, run, report_dir)
            console.print(f"Resuming run {run.run_id} ({run.status})", soft_wrap=True)
            _drive_and_report(runtime, run, live, console, directory, as_json)
        return
    assert policy_path and inventory_path
    from patchpilot.triggers import freeze_gate, runs_on_demand

    # Every input is checked before the state directory is touched: a bad run leaves nothing behind.
    policy = load_policy(policy_path)
    instances = load_inventory(inventory_path)
    if policy.kind == "frozen":
        raise InputError.single(
            policy_path,
            f"policy {policy.name} is frozen: it is never patched (`patchpilot compliance` shows its machines "
            "as exposed)",
            ("kind",),
        )
    directory = report_dir or state_dir / "reports"
    with writing(state_dir, directory):
        runtime = LocalRuntime.open(state_dir, on_notice=live.notice)
        if policy.kind == "non_periodic" and (skipped := runtime.skip_if_nothing_pending(policy, instances)):
            if as_json:  # the notice's own line said it otherwise (LiveProgress.notice)
                _print_json({"policy": policy.name, "skipped": True, "reason": skipped})
            sys.exit(EXIT_SUCCEEDED)
        if runs_on_demand(policy):  # now, not at a window: inside a freeze its first ring waits for approval
            now = runtime.clock.now()
            own_end = now + policy.schedule.duration if policy.schedule else None
            gate = freeze_gate(policy, policy.freezes(), now, own_end, emergency=True)
            run = runtime.start(policy, instances, at=now, window_end=gate.window_end, frozen_by=gate.frozen_by)
        else:
            run = runtime.start(policy, instances)
        _remember_report_dir(runtime, run, report_dir)
        console.print(f"Run {run.run_id}: {len(run.waves)} waves, state in {state_dir}", soft_wrap=True)
        _drive_and_report(runtime, run, live, console, directory, as_json)


@main.command()
@run_id_argument
@state_dir_option
@report_dir_option
@json_option
@reports_input_errors
def approve(run_id: str, state_dir: Path, report_dir: Path | None, as_json: bool) -> None:
    """Approve the ring a run waits for (its first ring too), then go on with the run."""
    _decide_gate(run_id, state_dir, report_dir, as_json, lambda runtime: runtime.approve(run_id))


@main.command()
@run_id_argument
@click.option("--reason", default="", help="Why, for the run's log and report.")
@state_dir_option
@report_dir_option
@json_option
@reports_input_errors
def reject(run_id: str, reason: str, state_dir: Path, report_dir: Path | None, as_json: bool) -> None:
    """Refuse the ring a run waits for: the run ends there (halted, with why)."""
    _decide_gate(run_id, state_dir, report_dir, as_json, lambda runtime: runtime.reject(run_id, reason=reason))


def _decide_gate(
    run_id: str, state_dir: Path, report_dir: Path | None, as_json: bool, decide: Callable[[LocalRuntime], str]
) -> None:
    """Approve or reject (`decide`) the gate a run waits at, under the state directory's lock,
    then drive the run on and report as `run` does."""
    from patchpilot.local_runtime import LocalRuntime, writing

    console = _console(stderr=as_json)
    live = LiveProgress(console, quiet=as_json)
    directory = _report_dir_of(state_dir, run_id, report_dir)
    with writing(state_dir, directory):
        runtime = LocalRuntime.open(state_dir, on_notice=live.notice)
        run = _load_run(runtime.store, state_dir, run_id)
        if run.status != "waiting_approval":
            raise click.UsageError(f"run {run_id} is not waiting for approval (it is {run.status})")
        _remember_report_dir(runtime, run, report_dir)
        console.print(decide(runtime), soft_wrap=True)
        _drive_and_report(runtime, run, live, console, directory, as_json)


@main.command()
@run_id_argument
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="ID",
    help="Retry only this machine (by instance id); repeat for more. Default: every one that can be.",
)
@click.option(
    "--inventory",
    "inventory_path",
    metavar="FILE",
    help="The machines as they are now, after the fix (default: as the run recorded them).",
)
@click.option(
    "--policy",
    "policy_path",
    metavar="FILE",
    help="The run's policy file, read again for its freezes (its freeze_calendar is not stored with "
    "the run: without the file, a calendar it names counts as a freeze that cannot be checked). Local only.",
)
@click.option(
    "--cloud",
    type=click.Choice(["aws", "azure"]),
    help="Retry a run of the deployed runtime (its settings from the environment, as the functions "
    "have them); its workers drive the retry.",
)
@state_dir_option
@report_dir_option
@json_option
@reports_input_errors
def retry(
    run_id: str,
    only: tuple[str, ...],
    inventory_path: str | None,
    policy_path: str | None,
    cloud: str | None,
    state_dir: Path,
    report_dir: Path | None,
    as_json: bool,
) -> None:
    """Retry the machines a finished run did not patch (rolled back, failed, skipped, not
    started) with the patch set it promoted, once you have fixed the cause: a new run
    RUN_ID-retry-N, driven like `patchpilot run`."""
    from patchpilot.engine.retry import retry_chain, retry_targets
    from patchpilot.local_runtime import LocalRuntime, writing

    console = _console(stderr=as_json)
    live = LiveProgress(console, quiet=as_json)
    current = load_inventory(inventory_path) if inventory_path else None
    if cloud is not None:
        if report_dir is not None:
            raise click.UsageError("--report-dir is for local runs: on the clouds the reports go to S3 or Blob")
        if policy_path is not None:
            raise click.UsageError("--policy is for local runs: on the clouds the deployed policy is read")
        _retry_in_cloud(console, cloud, run_id, only, current, as_json)
        return
    by_id = {i.id: i for i in current} if current is not None else None
    policy = load_policy(policy_path) if policy_path else None
    # Refused before any effect: a run that cannot be retried leaves nothing behind.
    with _reading(state_dir, run_id) as store:
        retried = _load_run(store, state_dir, run_id)
        if policy is not None and policy.name != retried.policy.name:
            raise InputError.single(
                policy_path or "", f"is policy {policy.name}, not the run's policy {retried.policy.name}", ("name",)
            )
        _, left_out = retry_targets(retried, only, by_id, retry_chain(run_id, store.run_ids(), store.load))
        directory = report_dir or store.report_dir(run_id) or state_dir / "reports"
    with writing(state_dir, directory):
        runtime = LocalRuntime.open(state_dir, on_notice=live.notice)
        if policy is not None:
            runtime.service.deployed_policy = lambda: policy  # its freezes, calendar read
        run = runtime.retry(run_id, only, current)
        runtime.store.set_report_dir(run.run_id, directory)  # approve/resume of the retry write there too
        machines = [r.instance.short_name for r in run.records()]
        shown = ", ".join(machines[:MAX_IDS_SHOWN]) + (", ..." if len(machines) > MAX_IDS_SHOWN else "")
        console.print(
            f"Run {run.run_id} retries {plural(len(machines), 'machine')} of run {run_id} ({shown}) "
            f"with the patch set it promoted: {plural(len(run.waves), 'wave')}, state in {state_dir}"
        )
        for record, why in left_out:
            console.print(f"  not retried: {record.instance.short_name} ({record.id}) {why}", soft_wrap=True)
        _drive_and_report(runtime, run, live, console, directory, as_json)


def _retry_in_cloud(
    console: Console, cloud: str, run_id: str, only: Sequence[str], current: Sequence[Instance] | None, as_json: bool
) -> None:
    """Start the retry on the deployed runtime (`Service.retry`); its workers drive it. Exit 0
    once started, 3 when its first ring waits for approval."""
    from patchpilot.ports import UnknownRunError

    if cloud == "aws":
        from patchpilot.bootstrap.aws import deps as aws_deps

        service = aws_deps().service
    else:
        from patchpilot.bootstrap.azure import deps as azure_deps

        service = azure_deps().service
    by_id = {i.id: i for i in current} if current is not None else None
    try:
        run = service.retry(run_id, only, by_id)
    except UnknownRunError:
        raise InputError.single(f"{cloud} run table", f"no run {run_id} there") from None
    except Exception as error:  # botocore's ClientError, NoCredentialsError; azure.core's AzureError...
        if not _is_cloud_error(error):
            raise
        raise click.ClickException(f"{cloud}: {type(error).__name__}: {error}") from None
    if as_json:
        _print_json(run_document(run))
    else:
        machines = len(run.records())
        console.print(
            f"Run {run.run_id} retries {plural(machines, 'machine')} of run {run_id} on {cloud}: {run.status}"
        )
        if run.status == "waiting_approval":
            console.print(f"Ring {run.current.ring} waits for approval: the request went out with the run's notices")
    sys.exit(EXIT_WAITING_APPROVAL if run.status == "waiting_approval" else EXIT_SUCCEEDED)


def _is_cloud_error(error: Exception) -> bool:
    """An error of a cloud SDK (reported in one line), not a bug."""
    kinds: list[type[Exception]] = []
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        kinds += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from azure.core.exceptions import AzureError

        kinds.append(AzureError)
    except ImportError:
        pass
    return isinstance(error, tuple(kinds))


@main.command()
@run_id_argument
@state_dir_option
@json_option
@reports_input_errors
def status(run_id: str, state_dir: Path, as_json: bool) -> None:
    """Show where a run is, what needs you first (with the command to type), and what happened
    to its instances. Exits as `patchpilot run` would for the run's status (0 while it runs)."""
    from rich.table import Table

    from patchpilot.adapters.local.state_lock import lock_holder

    with _reading(state_dir, run_id) as store:
        run = _load_run(store, state_dir, run_id)
    driven_by = lock_holder(state_dir) if run.status == "running" else None
    steps = next_steps(run, state_dir, driven_by)
    if as_json:
        document = run_document(run)
        document["next"] = [{"what": what, "command": command} for what, command in steps]
        document["driven_by"] = driven_by
        _print_json(document)
        sys.exit(status_exit(run))
    console = _console()
    shown = run.status if run.status == run.state else f"{run.status} ({run.state.replace('_', ' ')})"
    console.print(f"Run {run.run_id} (policy {run.policy.name}): [bold]{shown}[/bold]", soft_wrap=True)
    if driven_by:
        console.print(f"In progress: {driven_by} drives it.", soft_wrap=True)
    _print_next_steps(console, steps)
    if run.reason:
        console.print(f"Reason: {run.reason}")
    table = Table(title="Instances")
    for column in ("state", "count"):
        table.add_column(column)
    for state, count in sorted(run.summary().items()):
        table.add_row(state, str(count))
    console.print(table)
    _print_broken(console, run)
    attention = [r for r in run.records() if r.state in ("rolled_back", "failed", "skipped")]
    if attention:
        detail = Table(title="Needs attention")
        for column in ("instance", "wave", "state", "reason"):
            detail.add_column(column, overflow="fold")
        for record in attention:
            detail.add_row(record.instance.short_name, str(record.wave), record.state, record.reason)
        console.print(detail)
    _print_pools(console, run)
    if run.undelivered:
        notices = Table(title="Notifications not delivered")
        for column in ("notice", "channel", "reason"):
            notices.add_column(column, overflow="fold")
        for notice in run.undelivered:
            notices.add_row(notice.topic, notice.channel, notice.reason)
        console.print(notices)
    sys.exit(status_exit(run))


def _print_pools(console: Console, run: Run) -> None:
    """The traffic pools the run drained machines from: members, serving now, and who is out."""
    from rich.table import Table

    from patchpilot.planning.planner import pool_members

    records = run.records()
    drained = [r for r in records if any(s.step == "drain" for s in r.steps)]
    if not drained:
        return
    members = pool_members(r.instance for r in records)
    table = Table(title="Traffic pools")
    for column in ("pool", "serving", "out of it now"):
        table.add_column(column, overflow="fold")
    out = [r for r in records if r.out_of_pools]
    for pool in sorted({p for r in drained for p in r.instance.traffic_pools}):
        away = [r for r in out if pool in r.instance.traffic_pools]
        names = ", ".join(f"{r.instance.short_name} ({r.state})" for r in away[:10])
        table.add_row(pool, f"{members[pool] - len(away)} of {members[pool]}", names or "none")
    console.print(table)


def status_exit(run: Run) -> int:
    """`patchpilot status`'s exit: `patchpilot run`'s for the same status, 0 for a run still going."""
    return EXIT_SUCCEEDED if run.status == "running" else _exit_status(run)


def _print_next_steps(console: Console, steps: list[tuple[str, str]]) -> None:
    """The steps first, each command on a line of its own, never wrapped (it is there to be copied)."""
    from rich.text import Text

    if not steps:
        return
    console.print("[bold]Needs you:[/bold]")
    for what, command in steps:
        console.print(f"  - {what}" + (":" if command else ""), soft_wrap=True)
        if command:
            console.print(Text(f"      {command}"), soft_wrap=True)


@main.command()
@run_id_argument
@state_dir_option
@report_dir_option
@json_option
@reports_input_errors
def report(run_id: str, state_dir: Path, report_dir: Path | None, as_json: bool) -> None:
    """Write the run report (Markdown and a self-contained HTML page) and print where it is
    (by default where the run's own reports went)."""
    from patchpilot.local_runtime import check_writable_dirs

    with _reading(state_dir, run_id) as store:
        run = _load_run(store, state_dir, run_id)
        directory = report_dir or store.report_dir(run_id) or state_dir / "reports"
    check_writable_dirs(directory)
    markdown, html = _write_reports(run, directory)
    if as_json:
        _print_json(reported_document(run, markdown, html))
    else:
        click.echo(f"{markdown}\n{html}")


CLOUDS = ("aws", "azure")


@main.command("runs")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PATCHPILOT_STATE_DIR",
    help=f"The local runtime's state [default: {DEFAULT_STATE_DIR}].",
)
@click.option("--policy", "policy_name", metavar="NAME", help="Only the runs of this policy (its name).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(get_args(Status)),
    help="Only the runs with this status (repeatable).",
)
@click.option(
    "--cloud",
    type=click.Choice(CLOUDS),
    help="Read the run table of the AWS or Azure deployment instead of a state directory.",
)
@click.option(
    "--table",
    envvar="PATCHPILOT_TABLE",
    metavar="NAME",
    help="With --cloud: the run table (DynamoDB table, Azure table) [default: $PATCHPILOT_TABLE].",
)
@json_option
@click.pass_context
@reports_input_errors
def runs(
    ctx: click.Context,
    state_dir: Path | None,
    policy_name: str | None,
    statuses: tuple[str, ...],
    cloud: str | None,
    table: str | None,
    as_json: bool,
) -> None:
    """The run history, newest first: status, window, instance counts and the report."""
    from rich.table import Table

    from patchpilot.local_runtime import open_runs
    from patchpilot.reports.overview import history_entry

    if cloud is None:
        local = state_dir or Path(DEFAULT_STATE_DIR)
        with open_runs(local) as store:
            found = _history(store, policy_name, statuses, lambda rid: _local_report(store, local, rid))
    else:
        if ctx.get_parameter_source("state_dir") == ParameterSource.COMMANDLINE:
            raise click.UsageError("--state-dir is the local runtime's: it does not go with --cloud")
        if not table:
            raise InputError.single(
                "--table", f"give the run table of the {cloud} deployment (or set PATCHPILOT_TABLE)"
            )
        try:
            found = _history(cloud_run_store(cloud, table), policy_name, statuses, lambda rid: None)
        except (InputError, click.ClickException):
            raise
        except Exception as error:  # the SDK's: no credentials or region, no such table, access denied
            raise InputError.single(f"{cloud} run table {table}", f"cannot be read: {error}") from None
    if as_json:
        _print_json({"runs": [history_entry(run, report) for run, report in found]})
        return
    console = _console()
    if not found:
        console.print("No runs" + (" match" if policy_name or statuses else "") + ".")
        return
    from patchpilot.engine.run import count_states

    history = Table(title="Runs, newest first")
    for column in ("run", "policy", "status", "window", "instances", "report"):
        history.add_column(column, no_wrap=True)
    for run, report in found:
        window = run.created_at.isoformat() + (f" – {run.window_end.isoformat()}" if run.window_end else "")
        history.add_row(run.run_id, run.policy.name, run.status, window, count_states(run.records()), report or "")
    print_unwrapped(console, history)


def _history(
    store: RunStore, policy_name: str | None, statuses: tuple[str, ...], report: Callable[[str], str | None]
) -> list[tuple[Run, str | None]]:
    """The runs of `store` that match the filters, newest first, each with where its report is."""
    found = []
    for run_id in reversed(store.run_ids()):
        run = store.load(run_id)
        if (policy_name and run.policy.name != policy_name) or (statuses and run.status not in statuses):
            continue
        found.append((run, report(run.run_id)))
    return found


def _local_report(store: SqliteRunStore, state_dir: Path, run_id: str) -> str | None:
    """The HTML report of `run_id`, where its reports went, if it is there."""
    from patchpilot.reports import report_stem

    html = (store.report_dir(run_id) or state_dir / "reports") / f"{report_stem(run_id)}.html"
    return str(html) if html.is_file() else None


def cloud_run_store(cloud: str, table: str) -> RunStore:
    """The run table of a cloud deployment, as its functions read it: DynamoDB in the default
    region (AWS_REGION / the profile's), or the Azure table of `AzureWebJobsStorage`."""
    try:
        if cloud == "aws":
            import boto3

            from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore

            return DynamoDbRunStore(table, boto3.client("dynamodb"))
        from azure.data.tables import TableClient

        from patchpilot.adapters.azure.table_store import TableRunStore

        connection = os.environ.get("AzureWebJobsStorage")  # noqa: SIM112 (the Functions host's setting)
        if not connection:
            raise InputError.single("AzureWebJobsStorage", "set it to the connection string of the run table's account")
        return TableRunStore(TableClient.from_connection_string(connection, table))
    except ImportError as error:
        raise InputError.single("--cloud", f"{error}: install PatchPilot with the {cloud} extra") from None


def print_unwrapped(console: Console, renderable: Table) -> None:
    """Print `renderable` at its natural width when the terminal is narrower: what it holds (run
    ids, paths) is copied, so a line is never wrapped or cut (the terminal folds it on screen)."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), renderable).maximum
    if natural <= console.width:
        console.print(renderable)
        return
    _console(file=console.file, width=natural, force_terminal=console.is_terminal).print(renderable)


def _load_run(store: SqliteRunStore, state_dir: Path, run_id: str) -> Run:
    from patchpilot.ports import UnknownRunError

    try:
        return store.load(run_id)
    except UnknownRunError:
        known = ", ".join(store.run_ids()[-5:]) or "none"
        raise InputError.single(str(state_dir), f"no run {run_id} here (latest runs: {known})") from None


def _report_dir_of(state_dir: Path, run_id: str, given: Path | None) -> Path:
    """Where a command on an existing run writes its report: `given`, else where the run's
    reports went (the `--report-dir` it was started with), else STATE_DIR/reports. Read before
    any effect, so that a missing run or state directory is told and nothing is created."""
    with _reading(state_dir, run_id) as store:
        _load_run(store, state_dir, run_id)
        return given or store.report_dir(run_id) or state_dir / "reports"


def _remember_report_dir(runtime: LocalRuntime, run: Run, given: Path | None) -> None:
    """Store a `--report-dir` given on the command line with the run, for the commands after."""
    if given is not None:
        runtime.store.set_report_dir(run.run_id, given)


@contextmanager
def _reading(state_dir: Path, run_id: str) -> Iterator[SqliteRunStore]:
    """The runs of `state_dir`, read-only (no lock: each load reads one consistent snapshot)."""
    from patchpilot.local_runtime import NoRunsError, open_runs

    try:
        store = open_runs(state_dir)
    except NoRunsError as error:
        raise NoRunsError(error.path, f"no run {run_id} here: {error.problem}") from None
    with store:
        yield store


def _write_reports(run: Run, directory: Path) -> tuple[Path, Path]:
    """`write_reports`, with a failure to write (a full disk, a directory changed meanwhile) as
    one line naming the directory."""
    from patchpilot.reports import write_reports

    try:
        return write_reports(run, directory)
    except OSError as error:
        raise InputError.single(str(directory), f"the report cannot be written ({error.strerror or error})") from None


def _drive_and_report(
    runtime: LocalRuntime,
    run: Run,
    live: LiveProgress,
    console: Console,
    report_dir: Path,
    as_json: bool,
) -> None:
    live.start(run)
    try:
        run = runtime.drive(run.run_id, on_change=live.update)
    except KeyboardInterrupt:
        live.stop()
        console.print(
            f"Interrupted. Continue with: patchpilot run --resume {run.run_id} --state-dir {runtime.state_dir}",
            soft_wrap=True,
        )
        sys.exit(130)
    live.update(run)
    live.stop()
    markdown, html = _write_reports(run, report_dir)
    overview = refresh_overview_page(runtime.state_dir, runtime.clock.now(), runtime.store, driven_by=None)
    if as_json:
        document = run_document(run)
        document["report"] = {"markdown": str(markdown), "html": str(html)}
        document["overview"] = str(overview) if overview else None
        _print_json(document)
    else:
        _print_outcome(console, run, runtime)
        console.print(f"Report: {html}\n        {markdown}", soft_wrap=True)
        if overview:
            console.print(f"Overview: {overview}", soft_wrap=True)
    sys.exit(_exit_status(run))


@main.command("overview")
@state_dir_option
@json_option
@reports_input_errors
def overview_command(state_dir: Path, as_json: bool) -> None:
    """Write the overview page again (STATE_DIR/reports/index.html: the runs that need you first,
    the compliance totals, the maintenance due before the next window) and print where it is."""
    from patchpilot.adapters.local.state_lock import lock_holder
    from patchpilot.local_runtime import NoRunsError, check_writable_dirs, refresh_local_overview

    if not state_dir.is_dir():
        raise NoRunsError(state_dir, "no state directory here: give the --state-dir of the runs")
    check_writable_dirs(state_dir / "reports")
    holder = lock_holder(state_dir)
    try:
        path = refresh_local_overview(
            state_dir, lambda run: next_steps(run, state_dir, holder), datetime.now(UTC), driven_by=holder
        )
    except OSError as error:
        raise InputError.single(str(state_dir / "reports"), f"the overview cannot be written ({error})") from None
    if as_json:
        _print_json({"overview": str(path)})
    else:
        click.echo(f"Overview: {path}")


def _exit_status(run: Run) -> int:
    if run.status == "succeeded":
        return EXIT_SUCCEEDED
    if run.status == "succeeded_with_failures":
        return EXIT_BROKEN
    if run.status == "nothing_patched":
        return EXIT_NOTHING_PATCHED
    if run.status == "waiting_approval":
        return EXIT_WAITING_APPROVAL
    return EXIT_HALTED


def _print_outcome(console: Console, run: Run, runtime: LocalRuntime) -> None:
    from patchpilot.engine.run import count_states
    from patchpilot.reports.model import traffic_summary

    console.print(f"Run {run.run_id}: [bold]{run.status}[/bold]. {count_states(run.records())}.", soft_wrap=True)
    if run.reason:
        console.print(f"Reason: {run.reason}")
    if traffic := traffic_summary(run):
        console.print(f"Traffic: {traffic}.", soft_wrap=True)
    _print_broken(console, run)
    if run.status == "waiting_approval":
        console.print(f"Approve with: patchpilot approve {run.run_id} --state-dir {runtime.state_dir}", soft_wrap=True)
    elif run.status == "nothing_patched":
        console.print(
            "Nothing was patched. See what each ring selects with: patchpilot plan --policy FILE --inventory FILE"
        )
    elif run.status == "running":
        console.print("The run stalled: no message left to deliver.")
        for letter in runtime.dead_letters():
            console.print(f"  dead letter {letter.message_id}: {letter.reason}")


def _print_broken(console: Console, run: Run) -> None:
    """The machines the run left `failed`, loudly, with what to do: PatchPilot will not touch them
    again by itself, so a person restores each from its snapshots."""
    from rich.table import Table
    from rich.text import Text

    broken = run.broken()
    if not broken:
        return
    table = Table(title=f"Left broken: {len(broken)} (restore by hand)", title_style="bold red")
    for column in ("instance", "id", "wave", "reason", "restore from snapshots"):
        table.add_column(column, overflow="fold")
    for record in broken:
        table.add_row(record.instance.short_name, record.id, str(record.wave), record.reason, _snapshots(record))
    print_unwrapped(console, table)  # the ids and snapshot ids are copied to restore the machines
    console.print(
        Text(
            "Restore each by hand from its snapshots (the ids above) and check it is healthy: "
            "PatchPilot does not repair it; the policy's next run patches it again.",
            style="bold red",
        )
    )


def _snapshots(record: InstanceRecord) -> str:
    return ", ".join(record.snapshot_ids) or "none taken: rebuild it or restore from a backup"


def run_document(run: Run) -> dict[str, Any]:
    return run.document()


def reported_document(run: Run, markdown: Path, html: Path) -> dict[str, Any]:
    """The run document with where its report was written, `{..., "report": {"markdown", "html"}}`:
    what `report --json` prints, as `run --json` (and `approve`, `reject`, `retry`) print it."""
    return {**run_document(run), "report": {"markdown": str(markdown), "html": str(html)}}


UNDONE = ("pending", "not_started")


class LiveProgress:
    """Rich progress bars per ring and for the current wave, and a line per notable notice."""

    LOUD_TOPICS = ("instance_failed", "ring_finished", "approval_needed", "run_halted", "run_skipped")

    def __init__(self, console: Console, quiet: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
            disable=quiet,
        )
        self.rings: dict[str, TaskID] = {}
        self.wave: tuple[int, TaskID] | None = None

    def start(self, run: Run) -> None:
        for ring in run.policy.rings:
            total = sum(len(w.records) for w in run.waves if w.ring == ring.name)
            self.rings[ring.name] = self.progress.add_task(f"ring {ring.name}", total=total or 1, note="")
        self.progress.start()
        self.update(run)

    def stop(self) -> None:
        self.progress.stop()

    def update(self, run: Run) -> None:
        for ring, task in self.rings.items():
            done = sum(1 for w in run.waves if w.ring == ring for r in w.records.values() if r.state not in UNDONE)
            self.progress.update(task, completed=done)
        if run.finished or run.cursor >= len(run.waves):
            if self.wave is not None:
                self.progress.update(self.wave[1], visible=False)
            return
        wave = run.current
        if self.wave is None or self.wave[0] != wave.index:
            if self.wave is not None:
                self.progress.update(self.wave[1], visible=False)
            label = f"  wave {wave.index}" + (" (canary)" if wave.canary else "")
            self.wave = (wave.index, self.progress.add_task(label, total=len(wave.records), note=""))
        done = sum(1 for r in wave.records.values() if r.state != "pending")
        self.progress.update(self.wave[1], completed=done, note=run.state.replace("_", " "))

    def notice(self, notice: Notify) -> None:
        if notice.topic not in self.LOUD_TOPICS and notice.severity != "error":
            return
        from rich.text import Text

        style = {"error": "red", "warning": "yellow"}.get(notice.severity, "")
        self.console.print(Text(notice.text, style=style))


def __getattr__(name: str) -> Any:
    """`history_entry`, re-exported (the rows of `runs --json`), loads with the reports when asked for."""
    if name == "history_entry":
        from patchpilot.reports.overview import history_entry

        return history_entry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


loading.loaded()  # the module has loaded: garbage collection resumes (see patchpilot/loading.py)
