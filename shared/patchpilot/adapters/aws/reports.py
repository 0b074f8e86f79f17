"""Reports in S3: the Markdown and HTML report of a finished run, the compliance reports
(`write`) and the overview page with its summaries (`read`, `names`), under `reports/` of the
stack's configuration bucket (`PATCHPILOT_OVERRIDE_BUCKET`)."""

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
        self.write(f"{stem}.md", render_markdown(run), "text/markdown")
        return self.write(f"{stem}.html", render_html(run), "text/html")

    def write(self, name: str, text: str, content_type: str) -> str:
        """Write one document as `reports/<name>` (replaced whole); its location (s3://…)."""
        key = f"{PREFIX}{name}"
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=text.encode("utf-8"), ContentType=f"{content_type}; charset=utf-8"
        )
        return f"s3://{self.bucket}/{key}"

    def read(self, name: str) -> str | None:
        """The text of `reports/<name>`; None when there is no such object."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=f"{PREFIX}{name}")
        except self.client.exceptions.NoSuchKey:
            return None
        return answer["Body"].read().decode("utf-8")

    def names(self, prefix: str) -> list[str]:
        """The names under `reports/<prefix>`, sorted (one listing, paginated)."""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=PREFIX + prefix):
            found += [item["Key"].removeprefix(PREFIX) for item in page.get("Contents", [])]
        return sorted(found)
