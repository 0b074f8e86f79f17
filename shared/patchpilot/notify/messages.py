"""The cloud-neutral card: what one `Notify` says, before Slack or Teams shapes it.

A card has a title, a severity, the notice's text, facts, links and, for the notices that end a
ring or a run, the list of failed instances taken from the run; the maintenance watch's notices
carry their list and facts in their text's lines (`POLICY_TOPICS`). Renderers fit it into their
platform's limits with `shorten` and `summarise`: long texts are cut at a word boundary and say
so, long lists end with "… and N more, see the report": nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchpilot.engine.topics import Severity, Topic

if TYPE_CHECKING:
    from patchpilot.engine.messages import Notify
    from patchpilot.engine.run import Run

TITLES: dict[Topic, str] = {
    "run_scheduled": "Run scheduled",
    "run_started": "Run started",
    "ring_finished": "Ring finished",
    "approval_needed": "Approval needed",
    "instance_failed": "Instance failed",
    "run_halted": "Run halted",
    "run_finished": "Run finished",
    "advisory": "Security advisory",
    "run_skipped": "Run skipped",
    "compliance_report": "Patch compliance",
    "maintenance_digest": "Cloud maintenance this week",
    "maintenance_alert": "Cloud maintenance before the next window",
}
BROKEN_TITLE = "Run finished, machines left broken"
REMINDER_TITLE = "Approval still needed"
# these mention on-call (an instance_failed notice only when someone must act, an error: not for a
# machine rolled back healthy, info, nor one skipped untouched because its snapshot failed, a
# warning); so do a run_finished notice of error severity (machines left broken) and an
# approval_needed one of error severity (a gate waiting past its reminder)
ALERT_TOPICS: frozenset[Topic] = frozenset({"instance_failed", "run_halted", "maintenance_alert"})
LIST_TOPICS: frozenset[Topic] = frozenset({"ring_finished", "run_halted", "run_finished"})
# Notices about a policy, not a run (patchpilot.maintenance.watch): their text's "- " lines are the
# card's list and its FACT_LINE lines its facts.
POLICY_TOPICS: frozenset[Topic] = frozenset({"maintenance_digest", "maintenance_alert"})
FACT_LINE = re.compile(r"^(Next window|Resource|Deadline|Downtime): (.+)$")
# "Report: <location>" (serverless.ReportingNotifier), "Approve: <url>" and the like, in a notice's text.
LINK = re.compile(r"\s*\b(Report|Approve|Reject|Details): (\S+)")
MAX_LINKS = 5
CUT = " … (more in the report)"
ITEM_LIMIT = 300  # one list entry


@dataclass(frozen=True)
class Card:
    notice_id: str
    run_id: str
    topic: Topic
    severity: Severity
    title: str
    text: str
    alert: bool  # failures and halts: the channel's on-call mention goes first
    facts: tuple[tuple[str, str], ...] = ()
    items_label: str = ""
    items: tuple[str, ...] = ()  # the whole list; renderers summarise it
    links: tuple[tuple[str, str], ...] = ()  # (label, https URL)


def card_for(notice: Notify, run: Run | None = None) -> Card:
    """The card of a notice; `run` (when the store has it) adds the policy, the counts and the
    failed instances."""
    broken = notice.topic == "run_finished" and notice.severity == "error"  # succeeded_with_failures
    reminder = notice.topic == "approval_needed" and notice.severity == "error"  # a gate past its reminder
    overdue = notice.topic == "compliance_report" and notice.severity == "error"  # a patch past its SLA
    text = notice.text
    links: list[tuple[str, str]] = []
    facts = [("Policy" if notice.topic in POLICY_TOPICS else "Run", notice.run_id)]
    for label, location in LINK.findall(text):
        if location.startswith("https://") and len(links) < MAX_LINKS:
            links.append((f"Open {label.lower()}" if label == "Report" else label, location))
        else:  # a local path, s3://, or one link too many: shown as a fact, never lost
            facts.append((label, location))
    text = LINK.sub("", text).strip()
    items: tuple[str, ...] = ()
    items_label = ""
    if notice.topic in POLICY_TOPICS:
        text, listed, found = _split_lines(text)
        facts.extend(found)
        items, items_label = listed, f"Maintenance ({len(listed)})" if listed else ""
    if run is not None:
        facts.append(("Policy", run.policy.name))
        if notice.topic in LIST_TOPICS:
            facts.append(("Status", run.status.replace("_", " ")))
            items = tuple(
                f"{r.instance.short_name} ({r.id}): {r.state.replace('_', ' ')}: {r.failure or r.reason}"
                for r in run.records()
                if r.failure
            )
    return Card(
        notice_id=notice.id,
        run_id=notice.run_id,
        topic=notice.topic,
        severity=notice.severity,
        title=f"{BROKEN_TITLE if broken else REMINDER_TITLE if reminder else TITLES[notice.topic]}: {notice.run_id}",
        text=text,
        alert=(notice.topic in ALERT_TOPICS and not (notice.topic == "instance_failed" and notice.severity != "error"))
        or broken
        or reminder
        or overdue,
        facts=tuple(facts),
        items_label=items_label or (f"Failed instances ({len(items)})" if items else ""),
        items=items,
        links=tuple(links),
    )


def _split_lines(text: str) -> tuple[str, tuple[str, ...], list[tuple[str, str]]]:
    """A policy notice's text, its "- " lines (the list) and its fact lines, taken apart."""
    kept, items, facts = [], [], []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line[2:])
        elif match := FACT_LINE.match(line):
            facts.append((match.group(1), match.group(2)))
        else:
            kept.append(line)
    return "\n".join(kept).strip(), tuple(items), facts


def shorten(text: str, limit: int, marker: str = CUT) -> str:
    """`text` if it fits in `limit` characters, else cut at the last word boundary with `marker`
    (a single word longer than the room left is cut where it must be)."""
    if len(text) <= limit:
        return text
    room = max(limit - len(marker), 0)
    head = text[: room + 1]
    boundary = max(head.rfind(" "), head.rfind("\n"))
    head = head[:boundary] if boundary > 0 else head[:room]
    return head.rstrip() + marker


def summarise(items: tuple[str, ...], max_items: int, max_chars: int) -> list[str]:
    """As many entries as fit `max_items` and `max_chars` (counting one separator each), then one
    line saying how many more there are."""
    shown: list[str] = []
    used = 0
    for item in items:
        entry = shorten(item, ITEM_LIMIT, " …")
        rest = len(items) - len(shown) - 1
        tail = len(more_line(rest)) + 1 if rest else 0
        if len(shown) >= max_items or used + len(entry) + 1 + tail > max_chars:
            break
        shown.append(entry)
        used += len(entry) + 1
    if len(shown) < len(items):
        shown.append(more_line(len(items) - len(shown)))
    return shown


def more_line(count: int) -> str:
    return f"… and {count} more, see the report"
