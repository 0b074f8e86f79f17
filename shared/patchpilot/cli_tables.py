"""Tables of many rows, printed as rich prints them but without rich's cost per cell.

`patchpilot plan` of a fleet of 100,000 lists some 1,000 excluded machines: rich lays out and
renders every cell of a `Table` (0.4 s for 1,000 rows of three cells). When every cell is plain
text on one line that fits its column, which is what such a list holds, each row is one line of
the cells padded to the column widths: `print_rows` has rich lay out and render the title, the
header and the few rows that decide the column widths (the widest cell and the longest word of
each column), checks its own rows against rich's lines for those, and writes the other rows the
same way. Anything else (markup, a cell that wraps, a box other than the default) is printed by
rich as before. The output is the same, byte for byte (tests/test_cli_tables.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.segment import Segment
    from rich.table import Table

Overflow = Literal["fold", "crop", "ellipsis", "ignore"]

QUICK_FROM = 50  # rows; a shorter table is rich's alone


def print_rows(
    console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], overflow: Overflow = "fold"
) -> None:
    """`console.print` of a rich `Table(title=title)` with `columns` (each `overflow`) and `rows`."""
    console.print(_Rows(title, tuple(columns), rows, overflow))


class _Rows:
    def __init__(self, title: str, columns: tuple[str, ...], rows: Sequence[Sequence[str]], overflow: Overflow) -> None:
        self.title = title
        self.columns = columns
        self.rows = rows
        self.overflow: Overflow = overflow

    def table(self, rows: Iterable[Sequence[str]]) -> Table:
        from rich.table import Table

        table = Table(title=self.title)
        for column in self.columns:
            table.add_column(column, overflow=self.overflow)
        for row in rows:
            table.add_row(*row)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.segment import Segment

        lines = self.quick_lines(console, options) if len(self.rows) >= QUICK_FROM else None
        if lines is None:
            yield self.table(self.rows)
            return
        for line in lines:
            yield from line
            yield Segment.line()

    def quick_lines(self, console: Console, options: ConsoleOptions) -> list[list[Segment]] | None:
        """The table's lines: rich's for all but the rows, which are written here; None when a
        cell is not plain one-line text (rich renders it then)."""
        from rich.segment import Segment

        plain: dict[str, bool] = {}
        for row in self.rows:
            if len(row) != len(self.columns) or not all(_is_plain(console, options, cell, plain) for cell in row):
                return None
        # Rich sizes a column by its widest cell and its longest word (and its header): a table of
        # the rows that hold those has the same column widths as the whole table.
        deciding: set[int] = set()
        for k in range(len(self.columns)):
            deciding.add(max(range(len(self.rows)), key=lambda n: len(self.rows[n][k])))
            deciding.add(max(range(len(self.rows)), key=lambda n: _longest_word(self.rows[n][k])))
        shown = sorted(deciding)
        lines = list(Segment.split_lines(console.render(self.table(self.rows[n] for n in shown), options)))
        if len(lines) < len(shown) + 1:
            return None
        head, body, foot = lines[: -len(shown) - 1], lines[-len(shown) - 1 : -1], lines[-1:]
        if any(segment.style or segment.control for line in body for segment in line):
            return None  # styled rows: rich's alone
        texts = ["".join(segment.text for segment in line) for line in body]
        edge = texts[0][:1]
        parts = texts[0].split(edge) if edge and not edge.isascii() else []
        if len(parts) != len(self.columns) + 2 or parts[0] or parts[-1]:
            return None
        widths = [len(part) - 2 for part in parts[1:-1]]  # one space of padding on each side

        def line(row: Sequence[str]) -> str:
            return edge + edge.join(f" {cell:<{width}} " for cell, width in zip(row, widths, strict=True)) + edge

        if any(line(self.rows[n]) != text for n, text in zip(shown, texts, strict=True)):
            return None  # not laid out as expected: rich's alone
        if any(len(cell) > width for row in self.rows for cell, width in zip(row, widths, strict=True)):
            return None  # a cell that wraps
        return [*head, *([Segment(line(row))] for row in self.rows), *foot]


def _is_plain(console: Console, options: ConsoleOptions, cell: str, seen: dict[str, bool]) -> bool:
    """Whether rich shows `cell` as it is, on one line: printable ASCII (one column a character),
    no space at either end, that markup and emoji codes leave alone."""
    if not (cell.isascii() and cell.isprintable()) or cell.strip() != cell:
        return False
    if "[" not in cell and ":" not in cell:
        return True
    if cell not in seen:  # a few distinct texts repeat (the reasons): each rendered once
        text = console.render_str(cell, markup=options.markup, highlight=False)
        seen[cell] = text.plain == cell and not text.spans and not text.style
    return seen[cell]


def _longest_word(cell: str) -> int:
    return max((len(word) for word in cell.split()), default=len(cell))
