"""Input errors that name every problem and where it is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`("rings", 1, "select")` -> `rings[1].select`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


class Problem(NamedTuple):
    """One thing wrong with an input, at `path`, optionally at a line and column of its file."""

    path: Path
    message: str
    line: int | None = None
    column: int | None = None

    def render(self, source: str | None = None) -> str:
        where = ""
        if source:
            where = source
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return f"{where}{format_path(self.path)}: {self.message}"


class InputError(Exception):
    """A user-supplied file (policy, inventory, event) is invalid; carries every problem found,
    in file order (by line and column; problems without a position last, as they came)."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(sorted(problems, key=_file_order))
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render(self.source) for p in self.problems)

    @classmethod
    def single(cls, source: str, message: str, path: Path = ()) -> InputError:
        return cls(source, [Problem(path, message)])


def _file_order(problem: Problem) -> tuple[bool, int, int]:
    return problem.line is None, problem.line or 0, problem.column or 0


def quote(value: object) -> str:
    """Show a user value the way they wrote it: strings in double quotes, the rest as is."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return repr(value)


def nearest(value: object, choices: Iterable[str]) -> str | None:
    """The choice closest to a mistyped `value` (case aside), or None when none is close."""
    if not isinstance(value, str) or not value.strip():
        return None
    import difflib  # imported when used: only for errors

    by_folded: dict[str, str] = {}
    for choice in choices:
        by_folded.setdefault(choice.casefold(), choice)
    found = difflib.get_close_matches(value.strip().casefold(), list(by_folded), n=1, cutoff=0.7)
    return by_folded[found[0]] if found else None


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """` (did you mean "X"?)` for the choice closest to `value`, or "" when none is close."""
    hint = nearest(value, choices)
    return f" (did you mean {quote(hint)}?)" if hint is not None and hint != value else ""
