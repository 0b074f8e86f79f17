"""`print_rows` prints what rich prints for the same table, byte for byte, whichever way it gets there."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytest
from rich.console import Console
from rich.table import Table

from patchpilot import cli_tables
from patchpilot.cli_tables import print_rows

COLUMNS = ("instance", "id", "reason")


def fleet_rows(count: int) -> list[tuple[str, str, str]]:
    reasons = ["frozen: tag PatchPolicy=frozen", "matched no ring's selector", "excluded by tag Role=db"]
    return [(f"eastus-{n * 37}", f"vm-{n:08x}", reasons[n % 3]) for n in range(count)]


def console(width: int, colour: bool) -> Console:
    if colour:
        return Console(file=io.StringIO(), width=width, highlight=False, force_terminal=True, color_system="truecolor")
    return Console(file=io.StringIO(), width=width, highlight=False)


def by_rich(width: int, colour: bool, rows: Sequence[Sequence[str]]) -> str:
    out = console(width, colour)
    table = Table(title="Excluded")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def by_print_rows(width: int, colour: bool, rows: Sequence[Sequence[str]]) -> str:
    out = console(width, colour)
    print_rows(out, "Excluded", COLUMNS, rows)
    return out.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("width", [200, 120, 80, 60, 40])
def test_many_rows_print_as_rich_prints_them(width: int, colour: bool) -> None:
    rows = fleet_rows(300)
    rows[123] = ("a-much-longer-machine-name-than-the-others", "vm-0000007b", "matched no ring's selector")
    assert by_print_rows(width, colour, rows) == by_rich(width, colour, rows)


@pytest.mark.parametrize(
    "odd",
    [
        ("[bold]markup[/bold]", "vm-1", "x"),  # rich reads markup
        ("vm-2", "vm-2", "a :thumbs_up: emoji code"),
        ("ünïcode", "vm-3", "wide 漢字"),
        ("vm-4", "vm-4", "  spaced  "),
        ("vm-5", "vm-5", "a\nnew line"),
        ("vm-6", "vm-6", "a " + "very-long-reason-" * 8),  # wraps at every width
    ],
)
def test_rows_rich_would_show_otherwise_print_as_rich_prints_them(odd: tuple[str, str, str]) -> None:
    rows = [*fleet_rows(100), odd]
    for width, colour in ((120, False), (80, True)):
        assert by_print_rows(width, colour, rows) == by_rich(width, colour, rows)


def test_the_rows_are_written_without_rich_rendering_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: rich renders the title, the header and a few rows, not all 1,000."""
    rows = fleet_rows(1000)
    rendered: list[int] = []
    table = cli_tables._Rows.table

    def counting(self: cli_tables._Rows, chosen: object) -> Table:
        made = table(self, chosen)  # type: ignore[arg-type]
        rendered.append(len(made.rows))
        return made

    monkeypatch.setattr(cli_tables._Rows, "table", counting)
    assert by_print_rows(80, False, rows) == by_rich(80, False, rows)
    assert rendered and max(rendered) <= 2 * len(COLUMNS)
