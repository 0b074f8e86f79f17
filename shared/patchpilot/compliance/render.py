"""The compliance report as Markdown, one self-contained HTML page (inline CSS and SVG charts, no
scripts) and CSV; and the `compliance_report` notice. The templates share the run reports'
jinja2 environment (`patchpilot.reports.render.environment`)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchpilot.compliance.model import PATCH_SEVERITIES
from patchpilot.compliance.report import (
    DEADLINE_LABELS,
    STATUS_LABELS,
    STATUSES,
    ComplianceView,
    InstanceView,
    PatchGapView,
    RingView,
    Status,
    unexcepted_overdue,
)
from patchpilot.engine.messages import Notify
from patchpilot.reports.render import environment, report_stem, write_text
from patchpilot.wording import plural

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from patchpilot.policy.freeze import Freeze

STATUS_COLOURS: dict[Status, str] = {
    "compliant": "#2e7d32",
    "non_compliant": "#c62828",
    "needs_attention": "#b71c1c",
    "excepted": "#00838f",
    "exposed": "#6a1b9a",
    "unknown": "#78909c",
    "unmanaged": "#cfd8dc",
}
SEVERITY_COLOURS = {
    "Critical": "#b71c1c",
    "Important": "#e65100",
    "Moderate": "#f9a825",
    "Low": "#558b2f",
    "Unspecified": "#90a4ae",
}
CSV_COLUMNS = (
    "policy",
    "instance_id",
    "name",
    "cloud",
    "region",
    "ring",
    "status",
    "reason",
    "reboot_pending",
    "assessed_at",
    "last_install_at",
    "patch_id",
    "title",
    "classification",
    "severity",
    "state",
    "released_at",
    "age_days",
    "in_policy",
    "last_run_id",  # the last PatchPilot run that patched the machine; empty when none, or not read
    "last_run_at",  # when its wave finished
    "left_failed_run_id",  # status needs_attention: the run that left the machine failed; else empty
    "left_failed_snapshot_ids",  # what to restore it from, space-separated
    "sla",  # the patch's SLA (compliance.sla); empty when none applies
    "deadline",  # its release date + SLA; empty without an SLA or a release date
    "deadline_state",  # overdue, due_soon, on_time, no_release_date; empty without an SLA
    "exception_reason",  # the exception in force that covers the machine or the patch (state excepted)
    "exception_owner",
    "exception_expires",
)
DEADLINE_COLUMNS = CSV_COLUMNS[23:26]
DEADLINE_COLOURS = {"overdue": "#b71c1c", "due_soon": "#f9a825", "no_release_date": "#90a4ae"}
PATCH_COLUMNS = CSV_COLUMNS[11:19]
MAX_NOTICE_RINGS = 8
MAX_OVERDUE_LISTED = 20  # overdue patches named in the reports' banner; the machines table has them all

# ---------------------------------------------------------------- charts


@dataclass(frozen=True)
class Segment:
    label: str
    count: int
    x: float
    width: float
    colour: str


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    total: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    label_width: int
    bars: tuple[Bar, ...]
    legend: tuple[tuple[str, str], ...]  # (label, colour)
    legend_x: float = 200  # where the legend starts: left of the bars' start when it would not fit there


BAR_HEIGHT, BAR_GAP, CHART_WIDTH, LABEL_WIDTH, TOP = 22, 10, 760, 200, 34
LEGEND_SPACING, LEGEND_CHAR = 26, 7  # a legend entry's width: its swatch and gap, and per character (chart.svg.j2)


def _chart(title: str, rows: list[tuple[str, list[tuple[str, int, str]]]], legend: list[tuple[str, str]]) -> Chart:
    """Horizontal stacked bars, one per row, scaled to the largest row."""
    scale = (CHART_WIDTH - LABEL_WIDTH - 50) / max([sum(c for _, c, _ in parts) for _, parts in rows] + [1])
    bars = []
    for k, (label, parts) in enumerate(rows):
        x, segments = float(LABEL_WIDTH), []
        for name, count, colour in parts:
            if count:
                segments.append(Segment(name, count, x, count * scale, colour))
                x += count * scale
        bars.append(Bar(label, TOP + k * (BAR_HEIGHT + BAR_GAP), sum(c for _, c, _ in parts), tuple(segments)))
    height = TOP + len(rows) * (BAR_HEIGHT + BAR_GAP) + 10
    legend_width = sum(LEGEND_SPACING + len(label) * LEGEND_CHAR for label, _ in legend)
    legend_x = max(min(LABEL_WIDTH, CHART_WIDTH - legend_width), 0)
    return Chart(title, CHART_WIDTH, height, LABEL_WIDTH, tuple(bars), tuple(legend), legend_x)


def _ring_label(view: ComplianceView, ring: RingView) -> str:
    return f"{ring.policy} / {ring.name}" if len(view.policies) > 1 else ring.name


def status_chart(view: ComplianceView) -> Chart:
    rows = [
        (_ring_label(view, r), [(STATUS_LABELS[s], r.totals.machines[s], STATUS_COLOURS[s]) for s in STATUSES])
        for r in view.rings
    ]
    return _chart("Machines per ring", rows, [(STATUS_LABELS[s], STATUS_COLOURS[s]) for s in STATUSES])


def severity_chart(view: ComplianceView) -> Chart:
    rows: list[tuple[str, list[tuple[str, int, str]]]] = [
        (_ring_label(view, r), [(s, r.totals.by_severity[s], SEVERITY_COLOURS[s]) for s in PATCH_SEVERITIES])
        for r in view.rings
    ]
    return _chart("Missing patches per ring, by severity", rows, [(s, SEVERITY_COLOURS[s]) for s in PATCH_SEVERITIES])


# ---------------------------------------------------------------- documents


def overdue_chart(view: ComplianceView) -> Chart:
    """Per ring: the missing patches past their SLA deadline, those due soon, and those with an
    SLA but no release date to count it from."""
    parts = (("overdue", "overdue"), ("due soon", "due_soon"), ("no release date", "no_deadline"))
    rows: list[tuple[str, list[tuple[str, int, str]]]] = [
        (
            _ring_label(view, r),
            [(label, getattr(r.totals, key), DEADLINE_COLOURS[_state(key)]) for label, key in parts],
        )
        for r in view.rings
    ]
    legend = [(label, DEADLINE_COLOURS[_state(key)]) for label, key in parts]
    return _chart("Patches against their SLA per ring", rows, legend)


def _state(total: str) -> str:
    return "no_release_date" if total == "no_deadline" else total


def _context(view: ComplianceView) -> dict[str, Any]:
    attention = [i for i in view.instances if i.status not in ("compliant", "excepted")]
    return {
        "v": view,
        "statuses": STATUSES,
        "status_labels": STATUS_LABELS,
        "status_colours": STATUS_COLOURS,
        "severities": PATCH_SEVERITIES,
        "severity_colours": SEVERITY_COLOURS,
        "attention": attention,
        "exposed": [i for i in view.instances if i.status == "exposed"],
        "excepted": [i for i in view.instances if i.status == "excepted"],
        "overdue": unexcepted_overdue(view),
        "max_listed": MAX_OVERDUE_LISTED,
        "deadline_labels": DEADLINE_LABELS,
        "broken": [i for i in view.instances if i.status == "needs_attention"],
        "compliant": [i for i in view.instances if i.status == "compliant"],
        "charts": (status_chart(view), severity_chart(view), *([overdue_chart(view)] if view.has_sla else [])),
        "multi": len(view.policies) > 1,
    }


def render_markdown(view: ComplianceView) -> str:
    return environment("markdown", "patchpilot.compliance").get_template("compliance.md.j2").render(_context(view))


def render_html(view: ComplianceView) -> str:
    """One page: inline CSS and SVG, no scripts, no external assets."""
    return environment("html", "patchpilot.compliance").get_template("compliance.html.j2").render(_context(view))


def csv_rows(view: ComplianceView) -> list[dict[str, str]]:
    """One row per (machine, missing patch); a machine lacking nothing has one row with empty
    patch columns."""
    rows: list[dict[str, str]] = []
    for instance in view.instances:
        head = _csv_head(instance)
        if not instance.missing:
            rows.append({**head, **dict.fromkeys(PATCH_COLUMNS + DEADLINE_COLUMNS, "")})
        for gap in instance.missing:
            d = gap.document()
            rows.append(
                {
                    **head,
                    **_deadline_cells(gap),
                    "patch_id": d["id"],
                    "title": d["title"],
                    "classification": d["classification"],
                    "severity": d["severity"],
                    "state": d["state"],
                    "released_at": d["released_at"] or "",
                    "age_days": "" if d["age_days"] is None else str(d["age_days"]),
                    "in_policy": "yes" if gap.in_policy else "no",
                }
            )
    return rows


def _csv_head(instance: InstanceView) -> dict[str, str]:
    d = instance.document()
    return {
        "policy": d["policy"],
        "instance_id": d["id"],
        "name": d["name"],
        "cloud": d["cloud"],
        "region": d["region"],
        "ring": d["ring"] or "",
        "status": d["status"],
        "reason": d["reason"],
        "reboot_pending": "yes" if instance.reboot_pending else "no",
        "assessed_at": d["assessed_at"] or "",
        "last_install_at": d["last_install_at"] or "",
        "last_run_id": d["last_run"]["run_id"] if d["last_run"] else "",
        "last_run_at": d["last_run"]["at"] if d["last_run"] else "",
        "left_failed_run_id": instance.left_failed.run_id if instance.left_failed else "",
        "left_failed_snapshot_ids": " ".join(instance.left_failed.snapshot_ids) if instance.left_failed else "",
        **_exception_cells(d["exception"]),
    }


def _deadline_cells(gap: PatchGapView) -> dict[str, str]:
    d = gap.document()
    cells = {"sla": d["sla"] or "", "deadline": d["deadline"] or "", "deadline_state": d["deadline_state"] or ""}
    return {**cells, **(_exception_cells(d["exception"]) if gap.exception is not None else {})}


def _exception_cells(exception: dict[str, Any] | None) -> dict[str, str]:
    if exception is None:
        return {"exception_reason": "", "exception_owner": "", "exception_expires": ""}
    return {
        "exception_reason": exception["reason"],
        "exception_owner": exception["owner"],
        "exception_expires": exception["expires"],
    }


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may read as a formula (OWASP)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets a leading `'`
    (OWASP "CSV injection"); a number (`-3`, `+1.5`) stays as it is. Machine names, patch
    titles and reasons come from the fleet, which anyone who can name a machine writes."""
    if cell.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def render_csv(view: ComplianceView) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: neutralise(cell) for column, cell in row.items()} for row in csv_rows(view))
    return buffer.getvalue()


RENDERERS = (
    ("md", render_markdown, "text/markdown"),
    ("html", render_html, "text/html"),
    ("csv", render_csv, "text/csv"),
)


def documents(view: ComplianceView) -> list[tuple[str, str, str]]:
    """(suffix, text, content type) of the Markdown, HTML and CSV report."""
    return [(suffix, render(view), kind) for suffix, render, kind in RENDERERS]


def report_name(view: ComplianceView) -> str:
    """`compliance-<policies>-<time, UTC>`: a file name stem (`reports.report_stem`)."""
    policies = "+".join(p.name for p in view.policies)
    return report_stem(f"compliance-{policies}-{view.generated_at:%Y%m%d-%H%M}")


def write_compliance_reports(view: ComplianceView, directory: Path) -> list[Path]:
    """Write `<report_name>.md`, `.html` and `.csv` into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text, _ in documents(view):
        path = directory / f"{report_name(view)}.{suffix}"
        write_text(path, text)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- the notice


def ring_line(view: ComplianceView, ring: RingView) -> str:
    t = ring.totals
    counts = ", ".join(f"{t.machines[s]} {STATUS_LABELS[s]}" for s in STATUSES if t.machines[s])
    line = f"{_ring_label(view, ring)}: {counts or 'no machines'}"
    if t.missing:
        worst = next(s for s in PATCH_SEVERITIES if t.by_severity[s])
        line += f"; {t.missing} missing ({t.by_severity[worst]} {worst})"
        if t.oldest_missing_days is not None:
            line += f", oldest {t.oldest_missing_days} days"
    if t.overdue or t.due_soon:
        line += f"; {t.overdue} overdue, {t.due_soon} due soon"
    if t.excepted_patches:
        line += f"; {plural(t.excepted_patches, 'excepted patch')}"
    if t.reboots_pending:
        line += f"; {t.reboots_pending} reboots pending"
    return line


def compliance_notice(view: ComplianceView, location: str, notice_id: str = "") -> Notify:
    """The `compliance_report` notice: the totals, a line per ring, and where the report is
    (`location`, named `Report:` as run reports are). Its id defaults to the policies and time."""
    t = view.totals
    name = report_name(view)
    head = (
        f"{t.machines['compliant']} of {t.instances} machines compliant ({view.title}, "
        f"as of {view.generated_at.isoformat(timespec='minutes')})."
    )
    loud = []
    if t.machines["needs_attention"]:
        loud.append(f"{t.machines['needs_attention']} NEED ATTENTION (left broken by a run: restore by hand)")
    if t.machines["exposed"]:
        loud.append(f"{t.machines['exposed']} EXPOSED (never patched)")
    if t.machines["unknown"]:
        loud.append(f"{t.machines['unknown']} without an assessment")
    overdue = unexcepted_overdue(view)
    if overdue:
        machines = len({(i.policy, i.id) for i, _ in overdue})
        loud.insert(
            0,
            f"{plural(len(overdue), 'patch')} OVERDUE (past the SLA) on {plural(machines, 'machine')}: on-call, act",
        )
    bad = sum(t.machines[s] for s in ("non_compliant", "needs_attention", "exposed", "unknown"))
    step = "See each machine and what it misses in the report." if bad or overdue else "Nothing to do."
    lines = [head + (f" {'; '.join(loud)}." if loud else "") + f" {step}"]
    if t.due_soon:
        lines.append(f"{plural(t.due_soon, 'missing patch')} due soon (near the SLA deadline).")
    rings = view.rings
    lines += [ring_line(view, r) for r in rings[:MAX_NOTICE_RINGS]]
    if len(rings) > MAX_NOTICE_RINGS:
        lines.append(f"… and {len(rings) - MAX_NOTICE_RINGS} more rings, see the report")
    if location:
        lines.append(f"Report: {location}")
    return Notify(
        id=notice_id or f"{name}:notify:compliance_report",
        run_id=name,
        topic="compliance_report",
        text="\n".join(lines),
        severity="error" if overdue else "warning" if bad else "info",
    )


def frozen_notice(run_id: str, policy: str, window_start: datetime, freeze: Freeze, zone: ZoneInfo) -> Notify:
    """The `run_skipped` notice of a scheduled window that starts inside a freeze (docs/governance.md):
    its id is the window's run id, like the non-periodic one's, so it is said once."""
    return Notify(
        id=f"{run_id}:notify:run_skipped",
        run_id=run_id,
        topic="run_skipped",
        text=f"Run {run_id} of policy {policy} skipped: its window {window_start.isoformat(timespec='minutes')} "
        f"falls in freeze {freeze.describe(zone)}. The first window after the freeze patches.",
    )


def skipped_notice(run_id: str, policy: str, summary: str) -> Notify:
    """The `run_skipped` notice of a non-periodic policy's window with nothing pending: its id is
    the window's run id, so a timer that fires twice skips (and says so) once."""
    return Notify(
        id=f"{run_id}:notify:run_skipped",
        run_id=run_id,
        topic="run_skipped",
        text=f"Run {run_id} of policy {policy} skipped: {summary} (kind: non_periodic). Nothing to do: the next window "
        "looks again.",
    )
