"""Reports in a local directory (STATE_DIR/reports): the `DocumentStore` of the local runtime,
where the overview page and its summaries are written and read back."""

from __future__ import annotations

from pathlib import Path

from patchpilot.reports.render import write_text


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
