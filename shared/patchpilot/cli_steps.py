"""What the local commands share about a run: their exit codes, the next steps a run asks of a
person (with the exact command lines) and the overview page written again after each of them.
Separate from `cli` so the command groups (`cli_advisory`, `cli_compliance`, `cli_maintenance`)
take them without importing the CLI that registers them."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # `plan` and `validate` import this module: they load no run store
    from patchpilot.adapters.local.sqlite_store import SqliteRunStore
    from patchpilot.engine.run import Run

EXIT_SUCCEEDED = 0
EXIT_HALTED = 1  # halted, incomplete (the window ended) or stalled
EXIT_WAITING_APPROVAL = 3
EXIT_BROKEN = 4  # succeeded_with_failures: machines are left broken (`failed`); restore them by hand
EXIT_NOTHING_PATCHED = 5  # nothing_patched: no machine was patched (empty inventory, a first ring that selected none)
DEFAULT_STATE_DIR = ".patchpilot"


def command_line(*words: str | Path, state_dir: Path) -> str:
    """A `patchpilot` command line to copy, shell-quoted, with `--state-dir` unless it is the default."""
    args = [str(w) for w in words]
    if state_dir != Path(DEFAULT_STATE_DIR):
        args += ["--state-dir", str(state_dir)]
    return shlex.join(["patchpilot", *args])


def next_steps(run: Run, state_dir: Path, driven_by: str | None = None) -> list[tuple[str, str]]:
    """What needs a person in `run`, most urgent first: (what, the command to type, or "").
    `driven_by`: the process that holds the state directory's lock, for a run still `running`
    (None: nobody drives it, it was interrupted)."""
    steps: list[tuple[str, str]] = []
    rid = run.run_id
    if run.status == "waiting_approval":
        ring = run.current.ring if run.cursor < len(run.waves) else "the next ring"
        steps.append(
            (f"ring {ring} waits for your approval; approve it", command_line("approve", rid, state_dir=state_dir))
        )
        steps.append(
            (
                f"or reject ring {ring}: the run ends there (add --reason TEXT to say why)",
                command_line("reject", rid, state_dir=state_dir),
            )
        )
    broken = run.broken()
    if broken:
        count = len(broken)
        steps.append(
            (
                f"{count} machine{'s are' if count != 1 else ' is'} left broken: "
                "restore each by hand from its snapshots (below)",
                "",
            )
        )
    if run.status == "halted":
        steps.append(
            (
                "the run halted: see what happened and why in its report, then deal with the cause",
                command_line("report", rid, state_dir=state_dir),
            )
        )
    elif run.status == "incomplete":
        steps.append(
            (
                "the window ended first: the machines not started are patched by the next run",
                command_line("report", rid, state_dir=state_dir),
            )
        )
    elif run.status == "nothing_patched":
        steps.append(
            ("no machine was patched: check what each ring selects", "patchpilot plan --policy FILE --inventory FILE")
        )
    elif run.status == "running" and not driven_by:
        steps.append(
            (
                "interrupted: no process drives it any more; continue it",
                command_line("run", "--resume", rid, state_dir=state_dir),
            )
        )
    if run.undelivered:
        count = len(run.undelivered)
        steps.append(
            (
                f"{count} notification{'s were' if count != 1 else ' was'} not delivered (below): "
                "tell the people they were for",
                "",
            )
        )
    return steps


def refresh_overview_page(
    state_dir: Path, now: datetime, store: SqliteRunStore | None = None, *, driven_by: str | None
) -> Path | None:
    """Write the overview page (STATE_DIR/reports/index.html) again; its path. `driven_by`: who
    holds the state directory's lock (None: nobody else, so a run still `running` was
    interrupted). A page that cannot be written is said on stderr and never fails the command."""
    from patchpilot.local_runtime import refresh_local_overview

    try:
        return refresh_local_overview(
            state_dir, lambda run: next_steps(run, state_dir, driven_by), now, store, driven_by
        )
    except Exception as error:  # a full disk, an unreadable summary store: the run's answer stands
        click.echo(f"warning: the overview page in {state_dir / 'reports'} was not written: {error}", err=True)
        return None


def record_summaries(state_dir: Path, summaries: Iterable[tuple[str, str]]) -> None:
    """Keep `summaries` ((name, JSON) pairs: a compliance report's totals, a maintenance read)
    below STATE_DIR/reports for the overview page, and write the page again, when the state
    directory exists (a report or a read creates none); said on stderr, never a failure."""
    from patchpilot.adapters.local.reports import DirectoryDocuments
    from patchpilot.adapters.local.state_lock import lock_holder

    if not state_dir.is_dir():
        return
    documents = DirectoryDocuments(state_dir / "reports")
    try:
        for name, text in summaries:
            documents.write(name, text, "application/json")
    except OSError as error:
        click.echo(f"warning: the overview page in {documents.directory} was not updated: {error}", err=True)
        return
    overview = refresh_overview_page(state_dir, datetime.now(UTC), driven_by=lock_holder(state_dir))
    if overview:
        click.echo(f"Overview: {overview}", err=True)
