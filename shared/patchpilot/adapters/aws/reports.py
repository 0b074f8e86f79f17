"""Run reports in S3: the Markdown and HTML report of a finished run, written under `reports/` of
the stack's configuration bucket (`PATCHPILOT_OVERRIDE_BUCKET`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchpilot.engine.run import Run
from patchpilot.reports import render_html, render_markdown, report_stem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "reports/"


class S3Reports:
    """Each report is written whole and replaced: the notice of a run's end may come twice."""

    def __init__(self, bucket: str, client: S3Client) -> None:
        self.bucket = bucket
        self.client = client

    def publish(self, run: Run) -> str:
        """Write `reports/<run id>.md` and `.html`; the HTML report's location (s3://…)."""
        stem = report_stem(run.run_id)
        documents = (("md", render_markdown(run), "text/markdown"), ("html", render_html(run), "text/html"))
        for suffix, text, kind in documents:
            self.client.put_object(
                Bucket=self.bucket,
                Key=f"{PREFIX}{stem}.{suffix}",
                Body=text.encode("utf-8"),
                ContentType=f"{kind}; charset=utf-8",
            )
        return f"s3://{self.bucket}/{PREFIX}{stem}.html"
