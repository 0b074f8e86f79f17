"""Render a run report as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable
from functools import cache
from hashlib import sha256
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from markupsafe import escape as _markup_escape

from patchpilot.engine.run import Run
from patchpilot.reports.model import OUTCOME_COLOURS, OUTCOME_LABELS, STATE_LABELS, InstanceRef, build

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_LINE_BREAKS = re.compile(r"[ \t]*[\r\n\v\f\u2028\u2029]+[ \t]*")


def md_escape(value: object) -> str:
    """Text for a Markdown table cell or paragraph: no HTML, no emphasis, links or cell breaks."""
    text = _LINE_BREAKS.sub(" ", str(value))  # a line break would end a table row
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def html_escape(value: object) -> str:
    return str(_markup_escape(value))


def _md_finalize(value: object) -> object:
    """Every `{{ }}` in a Markdown template is escaped unless marked safe."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return str(value)
    return md_escape(value)


def _globals() -> dict[str, Any]:
    return {"state_labels": STATE_LABELS, "outcome_labels": OUTCOME_LABELS, "colours": OUTCOME_COLOURS}


def _names(escape: Callable[[object], str]) -> Callable[[Iterable[InstanceRef], int], Markup]:
    def names(refs: Iterable[InstanceRef], more: int = 0) -> Markup:
        text = ", ".join(escape(i.label) for i in refs)
        if more:
            text += f", … and {more} more"
        return Markup(text)

    return names


def _patchlist(escape: Callable[[object], str]) -> Callable[[Iterable[str]], Markup]:
    def patchlist(items: Iterable[str]) -> Markup:
        return Markup(", ".join(escape(i) for i in items) or "(nothing installed)")

    return patchlist


def _command(escape: Callable[[object], str], html: bool) -> Callable[[str], Markup]:
    """A command to copy: in a code span, whole (a Markdown code span escapes nothing, so a
    command that could end the span or the line, or that holds markup, is shown escaped instead)."""

    def command(text: str) -> Markup:
        if html:
            return Markup(f'<code class="command">{escape(text)}</code>')
        if re.search(r"[`<>]", text) or _LINE_BREAKS.search(text):
            return Markup(escape(text))
        return Markup(f"`{text}`")

    return command


@cache
def environment(kind: str, package: str = "patchpilot.reports") -> Environment:
    """The jinja2 environment of a report's templates (`templates/` of `package`): HTML
    autoescaped, Markdown escaped by `md_escape`; the `names` and `patchlist` filters."""
    loader = PackageLoader(package, "templates")
    if kind == "html":
        env = Environment(
            loader=loader, autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
        )
    else:
        env = Environment(
            loader=loader,
            autoescape=False,
            finalize=_md_finalize,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
    escape = html_escape if kind == "html" else md_escape
    env.filters["names"] = _names(escape)
    env.filters["patchlist"] = _patchlist(escape)
    env.filters["command"] = _command(escape, kind == "html")
    env.globals.update(_globals())
    return env


def render_markdown(run: Run) -> str:
    """The run report as Markdown (GitHub flavoured; the timeline is a mermaid gantt chart)."""
    template = environment("markdown").get_template("report.md.j2")
    return template.render(r=build(run))


def render_html(run: Run) -> str:
    """The run report as one HTML page: inline CSS and SVG, no scripts, no external assets."""
    template = environment("html").get_template("report.html.j2")
    return template.render(r=build(run))


def report_stem(run_id: str) -> str:
    """A file name stem for a run id: letters, digits, `.`, `_` and `-` only; where the id had
    to change, a short hash of it keeps two different ids from sharing a file."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._-")[:100]
    if stem != run_id or not stem:
        stem = f"{stem or 'run'}-{sha256(run_id.encode()).hexdigest()[:8]}"
    return stem


def write_reports(run: Run, directory: Path) -> tuple[Path, Path]:
    """Write `<run id>.md` and `<run id>.html` into `directory` (created if missing); each file
    is replaced whole, so a reader never sees half a report."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = report_stem(run.run_id)
    markdown = directory / f"{stem}.md"
    html = directory / f"{stem}.html"
    write_text(markdown, render_markdown(run))
    write_text(html, render_html(run))
    return markdown, html


def write_text(path: Path, text: str) -> None:
    """Replace `path` whole with `text`: a reader never sees half a file. The file gets the mode
    any new file gets (0666 less the umask): `mkstemp` alone would leave it 0600."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask. Reading it means setting it, so it is set back at once."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
