"""Reports in Blob Storage: the Markdown and HTML report of a finished run, the compliance
reports (`write`) and the overview page with its summaries (`read`, `names`), in a container of
the app's storage account (`PATCHPILOT_REPORTS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchpilot.engine.run import Run
from patchpilot.reports import render_html, render_markdown, report_stem

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient


class BlobReports:
    """Each report is uploaded whole and replaced: the notice of a run's end may come twice."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    def publish(self, run: Run) -> str:
        """Write `<run id>.md` and `<run id>.html`; the HTML report's URL."""
        stem = report_stem(run.run_id)
        self.write(f"{stem}.md", render_markdown(run), "text/markdown")
        return self.write(f"{stem}.html", render_html(run), "text/html")

    def write(self, name: str, text: str, content_type: str) -> str:
        """Upload one document as `<name>` (replaced whole); its URL."""
        from azure.storage.blob import ContentSettings

        self.container.upload_blob(
            name,
            text.encode("utf-8"),
            overwrite=True,
            content_settings=ContentSettings(content_type=f"{content_type}; charset=utf-8"),
        )
        return f"{self.container.url}/{name}"

    def read(self, name: str) -> str | None:
        """The text of blob `<name>`; None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(name).readall().decode("utf-8")
        except ResourceNotFoundError:
            return None

    def names(self, prefix: str) -> list[str]:
        """The blob names that start with `prefix`, sorted (one listing, paged)."""
        return sorted(blob.name for blob in self.container.list_blobs(name_starts_with=prefix))
