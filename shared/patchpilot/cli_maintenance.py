"""`patchpilot maintenance`: the maintenance the clouds have scheduled on a policy's fleet and
databases, what falls before its next patch window, and what could not be read
(docs/maintenance-watch.md). `cli.py` registers the command."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from patchpilot.bootstrap.clouds import cloud_fleets
from patchpilot.cli_common import EXIT_INVALID_INPUT, print_json, reports_input_errors
from patchpilot.inventory import Instance, load_inventory
from patchpilot.maintenance.model import SOURCE_NAMES, MaintenanceItem, WatchResult
from patchpilot.maintenance.watch import WatchView, watch_view
from patchpilot.policy import Policy, load_policy
from patchpilot.policy.fields import format_duration, parse_duration

EXIT_NOTHING_DUE = 0  # every source read, nothing due before the next window
EXIT_DUE = 1  # maintenance due before the next patch window
EXIT_UNREAD = 4  # a source (or account, region) could not be read: the view is incomplete


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@click.command("maintenance")
@click.option("--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML).")
@click.option("--inventory", "inventory_path", metavar="FILE", help="Inventory file (JSON) with simulation hints.")
@click.option("--cloud", is_flag=True, help="Read the clouds the policy names (AWS, Azure).")
@click.option("--horizon", metavar="DURATION", help="How far ahead to list (default: maintenance_watch.horizon, 14d).")
@click.option("--now", "now_text", metavar="ISO-TIME", help="Look as of this time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".patchpilot",
    show_default=True,
    envvar="PATCHPILOT_STATE_DIR",
    help="Where the overview page is (STATE_DIR/reports/index.html): the read is kept there, if it exists.",
)
@reports_input_errors
def maintenance(
    policy_path: str,
    inventory_path: str | None,
    cloud: bool,
    horizon: str | None,
    now_text: str | None,
    as_json: bool,
    state_dir: Path,
) -> None:
    """What the cloud providers will do to the fleet: EC2 scheduled events, RDS pending
    maintenance, AWS Health scheduled changes, Azure platform maintenance. Items due before the
    next patch window come first. Exit status: 0 nothing due before the next window, 1
    something is, 4 a source could not be read (the rest is still shown), 2 bad input."""
    if cloud == (inventory_path is not None):
        raise click.UsageError("give exactly one of --inventory FILE (simulated) or --cloud")
    span = _horizon(horizon)
    now = _now(now_text)
    policy = load_policy(policy_path)
    if inventory_path is not None:
        from patchpilot.adapters.local.simulated_maintenance import SimulatedMaintenance

        instances = load_inventory(inventory_path)
        result = SimulatedMaintenance().upcoming_maintenance(policy, instances, now)
    else:
        try:
            instances, result = read_clouds(policy, now)
        except click.ClickException as error:  # no cloud section, or a cloud's extra not installed
            click.echo(f"{policy_path}: {error.message}", err=True)
            sys.exit(EXIT_INVALID_INPUT)
    view = watch_view(result, policy, instances, now, span)
    if as_json:
        print_json(view.document())
    else:
        print_view(Console(highlight=False), view)
    record_for_overview(view, state_dir)
    sys.exit(exit_status(view))


def record_for_overview(view: WatchView, state_dir: Path) -> None:
    """Keep the read for the overview page (STATE_DIR/reports/summaries/maintenance-<policy>.json)
    and write the page again (`record_summaries`)."""
    from patchpilot.cli_steps import record_summaries
    from patchpilot.reports.overview import maintenance_summary

    record_summaries(state_dir, [maintenance_summary(view)])


def read_clouds(policy: Policy, now: datetime) -> tuple[list[Instance], WatchResult]:
    """Discover each cloud's fleet, then read its maintenance; a cloud that fails is reported as
    not read, never as nothing scheduled."""
    instances: list[Instance] = []
    items: list[MaintenanceItem] = []
    unavailable: list[tuple[str, str]] = []
    for fleet in cloud_fleets(policy, _Clock(now)):
        try:
            found = fleet.discover(policy).instances
            result = fleet.upcoming_maintenance(policy, found, now)
        except Exception as error:  # credentials, throttling, a region down: said, and the others still read
            unavailable.append((f"{fleet.cloud} fleet", f"{type(error).__name__}: {error}"))
            continue
        instances.extend(found)
        items.extend(result.items)
        unavailable.extend(result.unavailable)
    return instances, WatchResult(tuple(items), tuple(unavailable))


def exit_status(view: WatchView) -> int:
    if view.unavailable:
        return EXIT_UNREAD
    return EXIT_DUE if view.due else EXIT_NOTHING_DUE


def print_view(console: Console, view: WatchView) -> None:
    zone = view.zone
    if view.next_window:
        console.print(f"Next patch window of {view.policy}: {_when(view.next_window.start, view)}")
    else:
        console.print(f"Policy {view.policy} has no patch window ahead: alerts cover {format_duration(view.horizon)}")
    for what, reason in view.unavailable:
        console.print(Text(f"Not read: {what}: {reason}", style="bold red"))
    listed = view.listed
    if not listed:
        scope = "in the sources read" if view.unavailable else ""
        console.print(f"No maintenance scheduled {scope} within {format_duration(view.horizon)}.".replace("  ", " "))
        return
    table = Table(title=f"{view.policy}: cloud maintenance within {format_duration(view.horizon)} ({zone.key})")
    for column in ("due", "resource", "what", "source", "downtime", "notes"):
        table.add_column(column, overflow="fold")
    for watched in sorted(listed, key=lambda w: not w.before_window):  # stable: by due time within each group
        item = watched.item
        due = "under way" if watched.in_progress else _when(watched.due_at, view)
        notes = Text()
        if watched.before_window:
            notes.append("before the next window", style="bold")
        if watched.note:
            notes.append(("; " if notes else "") + watched.note, style="yellow" if watched.concern == "frozen" else "")
        if item.warning:
            notes.append(("; " if notes else "") + item.warning, style="bold red")
        table.add_row(
            Text(due, style="bold" if watched.before_window else ""),
            item.resource_name or item.resource_id,
            f"{item.kind}: {item.description}" if item.description else item.kind,
            SOURCE_NAMES[item.source],
            Text("yes", style="yellow") if item.downtime else "no",
            notes,
        )
    console.print(table)
    later = len(view.items) - len(listed)
    count = len(view.due)
    summary = f"{count} due before the next window" if view.next_window else f"{count} due within the horizon"
    console.print(summary + (f"; {later} more beyond the horizon (--horizon)" if later else ""))


def _when(at: datetime | None, view: WatchView) -> str:
    return at.astimezone(view.zone).strftime("%Y-%m-%d %H:%M %a") if at else "no date yet"


def _horizon(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError:
        expected = f'expected a duration such as "14d", "36h" or "1d12h", got "{text}"'
        raise click.BadParameter(expected, param_hint="--horizon") from None
    if value <= timedelta(0):
        raise click.BadParameter("expected a horizon longer than 0", param_hint="--horizon")
    return value


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f'expected an ISO time such as "2026-12-10T09:00+09:00", got "{text}"', param_hint="--now"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
