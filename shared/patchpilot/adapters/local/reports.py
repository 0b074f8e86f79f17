"""Reports in a local directory (STATE_DIR/reports): the `DocumentStore` of the local runtime,
where the overview page and its summaries are written and read back."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.engine.run import Run
from patchpilot.reports.overview import Steps, local_href, needs_you, refresh_overview
from patchpilot.reports.render import report_stem, write_text


class DirectoryDocuments:
    """Each document is a file below `directory`, replaced whole (`write_text`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def write(self, name: str, text: str, content_type: str) -> str:
        """Write `<directory>/<name>` (its folders created if missing); its path."""
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        return str(path)

    def read(self, name: str) -> str | None:
        """The text of `<directory>/<name>`; None when there is no such file."""
        try:
            return (self.directory / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def names(self, prefix: str) -> list[str]:
        """The files below the directory whose name (relative, with `/`) starts with `prefix`,
        sorted; none when the directory does not exist. Temporary files (`.name.tmp`) are left out."""
        folder = self.directory / prefix.rpartition("/")[0]  # only the folder the prefix names is walked
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            name = path.relative_to(self.directory).as_posix()
            if name.startswith(prefix) and path.is_file() and not path.name.startswith("."):
                found.append(name)
        return sorted(found)


def refresh_local_overview(
    state_dir: Path, steps: Steps, now: datetime, store: SqliteRunStore | None = None, driven_by: str | None = None
) -> Path:
    """Write STATE_DIR/reports/index.html (`refresh_overview`) from the runs of `state_dir`
    (`store`, else its database opened read-only; none when it has none) and the summaries kept
    there; its path. A run still `running` that no process drives (`driven_by`: the holder of
    the state directory's lock, None when nobody else holds it) was interrupted: it needs a
    person too. Links are relative below STATE_DIR/reports, `file://` URLs elsewhere (a run's
    own `--report-dir`, a compliance report written with `--out`)."""
    from patchpilot.local_runtime import DB_NAME, open_runs

    reports = state_dir / "reports"
    if store is None and (state_dir / DB_NAME).is_file():
        with open_runs(state_dir) as opened:
            return refresh_local_overview(state_dir, steps, now, opened, driven_by)
    runs = store

    def run_report(run: Run) -> str | None:
        directory = (runs.report_dir(run.run_id) if runs is not None else None) or reports
        html = directory / f"{report_stem(run.run_id)}.html"
        return local_href(str(html), reports) if html.is_file() else None

    def needs(run: Run) -> bool:
        return needs_you(run) or (run.status == "running" and driven_by is None)

    def href(path: str) -> str:
        return local_href(path, reports)

    location = refresh_overview(DirectoryDocuments(reports), runs, now, steps, run_report, href, needs)
    return Path(location)
