"""The docs' example sessions are the commands' real outputs, kept true by one command.

In README.md and docs/*.md, a fenced `console` block right after an `<!-- example -->` comment
is a session: each `$ patchpilot ...` line is a command, the lines up to the next `$` its output
(stdout and stderr interleaved, as a pipe gets them: not a terminal), and a command that exits non-zero is followed by
`$ echo $?` and its code. `<!-- example after: CMD && CMD -->` runs those commands first,
unshown (a run for a `status` to look at).

Each block runs on its own, in a new temporary directory that holds the repository's
`examples`, `docs` and `tests` (so the block names its inputs as the docs do:
`examples/policy.yaml`), with the embedded local runtime and reproducible runs:
`PATCHPILOT_VIRTUAL_START` starts every new state directory's virtual clock at `START` and
makes run ids end in a suffix derived from the run instead of a random one. The terminal is
`COLUMNS` wide. Compared as they are, but for trailing spaces and the temporary directory's
path (shown as `.`).

    python -m patchpilot.tools.doc_examples          # check every block: exit 1 and a diff when one differs
    python -m patchpilot.tools.doc_examples --write  # rewrite the blocks from the real outputs (`make docs`)

Examples that need a cloud (`--cloud`) are not written this way: they stay plain `sh` blocks.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from patchpilot.wording import plural

START = "2026-12-01T00:00:00+00:00"  # the virtual clock of every example: the policies' December windows
COLUMNS = 120
INPUTS = ("examples", "docs", "tests")  # what the examples may read, linked into their directory
PROMPT = "$ "
EXIT_LINE = "$ echo $?"

_MARKER = re.compile(r"^<!-- example(?: after: (?P<after>.+?))? -->\n```console\n", re.MULTILINE)
_FENCE_END = re.compile(r"^```$", re.MULTILINE)


@dataclass(frozen=True)
class Example:
    """One example block: where it is, the commands run first unshown, and the block's text."""

    path: Path
    line: int  # of the ```console line, 1-based
    start: int  # offsets of the block's body in the file
    end: int
    setup: tuple[str, ...]
    text: str

    @property
    def commands(self) -> list[str]:
        """The session's commands, `echo $?` aside."""
        return [line[len(PROMPT) :] for line in self.text.splitlines() if line.startswith(PROMPT) and line != EXIT_LINE]

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def find_examples(path: Path) -> list[Example]:
    """The example blocks of `path`. Raises `ValueError` for a marker that marks no block (it
    would be left unchecked)."""
    text = path.read_text(encoding="utf-8")
    markers = list(_MARKER.finditer(text))
    marked = {m.start() for m in markers}
    for comment in re.finditer(r"^<!-- example\b", text, re.MULTILINE):
        if comment.start() not in marked:
            line = text.count("\n", 0, comment.start()) + 1
            raise ValueError(f"{path}:{line}: an example marker must be followed by a ```console block")
    found = []
    for marker in markers:
        end = _FENCE_END.search(text, marker.end())
        if end is None:
            raise ValueError(f"{path}:{text.count(chr(10), 0, marker.start()) + 1}: the example block is not closed")
        setup = tuple(c.strip() for c in (marker["after"] or "").split(" && ") if c.strip())
        line = text.count("\n", 0, marker.end())  # the ```console line
        found.append(Example(path, line, marker.end(), end.start(), setup, text[marker.end() : end.start()]))
    return found


@contextlib.contextmanager
def example_directory(root: Path) -> Iterator[Path]:
    """A new temporary working directory holding (links to) the inputs of the examples."""
    with tempfile.TemporaryDirectory(prefix="patchpilot-example-") as name:
        directory = Path(name)
        for entry in INPUTS:
            (directory / entry).symlink_to(root / entry, target_is_directory=True)
        with contextlib.chdir(directory):
            yield directory


def run_command(command: str) -> tuple[str, int]:
    """Run one `patchpilot ...` command line in this process; its terminal output and exit code."""
    from click.testing import CliRunner

    from patchpilot.cli import main

    words = shlex.split(command)
    if not words or words[0] != "patchpilot":
        raise ValueError(f"an example runs patchpilot commands only, not: {command}")
    env: dict[str, str | None] = {
        "PATCHPILOT_VIRTUAL_START": START,
        "COLUMNS": str(COLUMNS),
        "PATCHPILOT_STATE_DIR": None,  # the command's own --state-dir, or the default, as documented
        "NO_COLOR": "1",
        # what would make rich write colours or a terminal's output to a pipe
        "FORCE_COLOR": None,
        "TTY_COMPATIBLE": None,
        "TTY_INTERACTIVE": None,
    }
    result = CliRunner().invoke(main, words[1:], env=env, prog_name="patchpilot")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise RuntimeError(f"{command} raised {result.exception!r}") from result.exception
    return result.output, result.exit_code


def session(commands: Sequence[str], setup: Sequence[str], root: Path) -> str:
    """The console session of `commands` (after `setup`), as an example block shows it."""
    lines: list[str] = []
    with example_directory(root) as directory:
        for command in setup:
            run_command(command)
        for command in commands:
            output, code = run_command(command)
            lines.append(PROMPT + command)
            lines += _normalised(output, directory)
            if code != 0:
                lines += [EXIT_LINE, str(code)]
    return "".join(f"{line}\n" for line in lines)


def _normalised(output: str, directory: Path) -> list[str]:
    for path in {str(directory.resolve()), str(directory)}:
        output = output.replace(path + "/", "").replace(path, ".")
    return [line.rstrip() for line in output.splitlines()]


def real_text(example: Example, root: Path) -> str:
    """What `example`'s block says when its commands are run now."""
    if not example.commands:
        raise ValueError(f"{example.where}: an example block names no command (a line starting with {PROMPT!r})")
    return session(example.commands, example.setup, root)


def difference(example: Example, real: str) -> str:
    return "".join(
        difflib.unified_diff(
            example.text.splitlines(keepends=True),
            real.splitlines(keepends=True),
            f"{example.where} (the docs)",
            f"{example.where} (the real output)",
        )
    )


def write(path: Path, root: Path) -> bool:
    """Rewrite `path`'s example blocks from the real outputs; whether anything changed."""
    text = path.read_text(encoding="utf-8")
    out, at = [], 0
    for example in find_examples(path):
        out += [text[at : example.start], real_text(example, root)]
        at = example.end
    new = "".join(out) + text[at:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    rewrite = "--write" in args
    root = Path.cwd()
    if not (root / "docs").is_dir():
        print(f"{root}: run this from the repository root (no docs/ here)", file=sys.stderr)
        return 2
    failed = 0
    for path in doc_files(root):
        if rewrite:
            if write(path, root):
                print(f"{path.relative_to(root)}: examples rewritten")
            continue
        for example in find_examples(path):
            real = real_text(example, root)
            if real != example.text:
                failed += 1
                print(difference(example, real), end="")
    if failed:
        differ = "differs" if failed == 1 else "differ"
        print(f"{plural(failed, 'example')} {differ} from the real output: `make docs` rewrites them")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
