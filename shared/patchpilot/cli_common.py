"""What every `patchpilot` command group shares (cli.py, cli_aws.py, cli_azure.py): how bad
input ends a command, and how JSON is printed."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from patchpilot.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INVALID_INPUT = 2


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


def print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
