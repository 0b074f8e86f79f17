"""Input errors that name every problem and where it is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Problem:
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
    """A user-supplied file (policy, inventory, event) is invalid; carries every problem found."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render(self.source) for p in self.problems)

    @classmethod
    def single(cls, source: str, message: str, path: Path = ()) -> InputError:
        return cls(source, [Problem(path, message)])


def quote(value: object) -> str:
    """Show a user value the way they wrote it: strings in double quotes, the rest as is."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return repr(value)


def join_choices(choices: Iterable[str]) -> str:
    return ", ".join(sorted(choices))
