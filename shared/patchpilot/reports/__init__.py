"""Run reports: what an operations team writes by hand for each patch cycle, as Markdown and HTML.

`render_markdown(run)` and `render_html(run)` return the report; `write_reports(run, directory)`
writes both as `<run id>.md` and `<run id>.html`. The HTML page is self-contained (inline CSS
and an inline SVG timeline; no scripts, no external assets). `patchpilot.reports.overview` makes
the overview page (`index.html`) beside the reports.
"""

from patchpilot.reports.render import render_html, render_markdown, report_stem, write_reports

__all__ = ["render_html", "render_markdown", "report_stem", "write_reports"]
