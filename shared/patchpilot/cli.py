"""The `patchpilot` command: validate policies, list windows, plan waves."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from patchpilot.errors import InputError
from patchpilot.inventory import load_inventory
from patchpilot.planning import Plan, placement, plan, plan_document
from patchpilot.policy import Policy, load_policy
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import Schedule

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INVALID_INPUT = 2
MAX_IDS_SHOWN = 6


def _console() -> Console:
    return Console(highlight=False)


def reports_input_errors(command: F) -> F:
    """Bad input ends the command with every problem on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            count = len(exc.problems)
            click.echo(exc.render(), err=True)
            click.echo(f"{count} problem{'s' if count != 1 else ''} found.", err=True)
            sys.exit(EXIT_INVALID_INPUT)

    return wrapper  # type: ignore[return-value]


def _print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


policy_option = click.option(
    "--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML)."
)
inventory_option = click.option(
    "--inventory", "inventory_path", metavar="FILE", help="Inventory file (JSON)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


@click.group()
@click.version_option(package_name="patchpilot")
def main() -> None:
    """PatchPilot: snapshot, patch a staging ring, health-check, promote to production in
    availability-safe waves, roll back on failure."""


@main.command()
@policy_option
@inventory_option
@reports_input_errors
def validate(policy_path: str, inventory_path: str | None) -> None:
    """Check a policy (and an inventory) and name every problem with its place."""
    policy = load_policy(policy_path)
    rings = ", ".join(r.name for r in policy.rings)
    click.echo(f"{policy_path}: ok (policy {policy.name}; rings {rings})")
    if inventory_path:
        instances = load_inventory(inventory_path)
        click.echo(f"{inventory_path}: ok ({len(instances)} instances)")


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
    """List the next maintenance windows of a policy."""
    policy = load_policy(policy_path)
    if policy.schedule is None:
        raise InputError.single(policy_path, "the policy has no schedule", ("schedule",))
    sched = policy.schedule
    start = _parse_after(after, sched) if after else datetime.now(UTC)
    windows = sched.windows(start, count)
    if as_json:
        _print_json(
            {
                "policy": policy.name,
                "timezone": sched.timezone,
                "duration": format_duration(sched.duration),
                "windows": [{"start": w.start.isoformat(), "end": w.end.isoformat()} for w in windows],
            }
        )
        return
    rule = sched.rule.text + (f" +{sched.offset_days}d" if sched.offset_days else "")
    at = f" at {sched.at.strftime('%H:%M')}" if sched.at else ""
    table = Table(title=f"{policy.name}: {rule}{at} {sched.timezone}, {format_duration(sched.duration)}")
    for column in ("#", "starts", "ends", "day"):
        table.add_column(column)
    for n, w in enumerate(windows, 1):
        table.add_row(str(n), w.start.isoformat(), w.end.isoformat(), w.start.strftime("%a %d %b %Y"))
    _console().print(table)


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
def plan_command(policy_path: str, inventory_path: str, as_json: bool) -> None:
    """Show the rings and availability-safe waves for a fleet, and what is excluded and why."""
    policy = load_policy(policy_path)
    result = plan(policy, load_inventory(inventory_path))
    if as_json:
        _print_json(plan_document(result))
    else:
        print_plan(_console(), policy, result)


def print_plan(console: Console, policy: Policy, result: Plan) -> None:
    rollout = policy.rollout
    table = Table(
        title=f"{policy.name}: {rollout.mode}, budget {rollout.disruption_budget} per zone, "
        f"canary {rollout.canary}"
    )
    for column in ("wave", "ring", "size", "where", "instances"):
        table.add_column(column, overflow="fold")
    for wave in result.waves:
        names = [i.short_name for i in wave.instances]
        more = len(names) - MAX_IDS_SHOWN
        shown = ", ".join(names[:MAX_IDS_SHOWN]) + (f" … +{more}" if more > 0 else "")
        label = f"{wave.index}" + (" (canary)" if wave.canary else "")
        table.add_row(label, wave.ring, str(len(names)), placement(wave.instances), shown)
    console.print(table)
    if result.excluded:
        excluded = Table(title="Excluded")
        for column in ("instance", "id", "reason"):
            excluded.add_column(column, overflow="fold")
        for e in result.excluded:
            excluded.add_row(e.instance.short_name, e.instance.id, e.reason)
        console.print(excluded)
    rings = "; ".join(f"{r.name} {len(r.waves)} (bound {r.lower_bound})" for r in result.rings)
    console.print(
        f"{result.instance_count} instances in {len(result.waves)} waves, lower bound "
        f"{result.lower_bound} ({rings}); {len(result.excluded)} excluded."
    )


@main.command()
def schema() -> None:
    """Print the policy file's JSON Schema."""
    _print_json(policy_schema())


def policy_schema() -> dict[str, Any]:
    document = Policy.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "PatchPilot policy"
    return document
