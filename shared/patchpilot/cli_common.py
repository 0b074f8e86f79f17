"""What every `patchpilot` command group shares (cli.py, cli_aws.py, cli_azure.py): how bad
input ends a command, and how JSON is printed."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from patchpilot.errors import InputError, format_path

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INVALID_INPUT = 2
EXIT_CLOUD_REFUSED = 1  # a cloud refused a read the policy needs (traffic pools): nothing was decided


def reports_input_errors(command: F) -> F:
    """Bad input ends the command with every problem on stderr and exit status 2.

    A command that prints JSON (`--json`, or `--format json`) says its errors in JSON too, on
    stderr: `{"error": "...", "problems": [{"source", "path", "line", "column", "message"}]}`,
    also for a `click.ClickException` raised by the command's body (with its own exit status and
    no `Usage:` lines: the command line parsed, the problem is elsewhere)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json")) or kwargs.get("output_format") == "json"
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            count = len(exc.problems)
            summary = f"{count} problem{'s' if count != 1 else ''} found."
            if as_json:
                print_json_error(exc.render() if count == 1 else f"{exc.source}: {summary}", input_problems(exc))
            else:
                click.echo(exc.render(), err=True)
                click.echo(summary, err=True)
            sys.exit(EXIT_INVALID_INPUT)
        except click.ClickException as exc:
            if not as_json:
                raise
            print_json_error(exc.format_message(), [])
            sys.exit(exc.exit_code)
        except Exception as exc:
            # `patchpilot.ports` (and the engine's messages with it) loads only with a command that
            # reads a cloud: `plan` and `validate` do not import it.
            from patchpilot.ports import DiscoveryReadRefusedError

            if not isinstance(exc, DiscoveryReadRefusedError):
                raise
            # a cloud refused a read the policy needs: one line, exit 1
            if as_json:
                print_json_error(str(exc), [])
            else:
                click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_CLOUD_REFUSED)

    return wrapper  # type: ignore[return-value]


def input_problems(error: InputError) -> list[dict[str, Any]]:
    """Each problem of `error` as JSON: where (file, field path, line, column) and what."""
    return [
        {
            "source": error.source,
            "path": format_path(p.path),
            "line": p.line,
            "column": p.column,
            "message": p.message,
        }
        for p in error.problems
    ]


def print_json_error(error: str, problems: list[dict[str, Any]]) -> None:
    """`{"error": ..., "problems": [...]}` on stderr: how a `--json` command fails."""
    click.echo(json.dumps({"error": error, "problems": problems}, indent=2, ensure_ascii=False), err=True)


def print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
