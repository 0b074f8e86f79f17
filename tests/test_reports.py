"""Run reports, from runs the pure engine really played: the example policy and fleet, one
production instance failing its health check and rolled back."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from engine_driver import answer_all_ok, drive_to_end

from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.messages import (
    ApprovalGranted,
    ApprovalRejected,
    CheckHealth,
    FleetCommand,
    Outcome,
    RollBack,
)
from patchpilot.engine.run import Run, UndeliveredNotice
from patchpilot.inventory import Instance, load_inventory
from patchpilot.planning import plan
from patchpilot.policy import Policy, load_policy, parse_policy
from patchpilot.reports import render_html, render_markdown, report_stem, write_reports
from patchpilot.reports.model import NAME_PATCHED_UP_TO, text_width
from patchpilot.reports.render import md_escape

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2025, 1, 17, 2, 0, tzinfo=UTC)  # 11:00 in Tokyo, the policy's timezone
HOSTILE = "<img src=x onerror=alert(1)>"


def failing_health(*ids: str, detail: str = "http 503 from /healthz") -> Callable[[FleetCommand], list[Outcome]]:
    """All ok, except that `ids` fail the health check after patching (and pass after rollback)."""

    def answer(command: FleetCommand) -> list[Outcome]:
        outcomes = answer_all_ok(command)
        if isinstance(command, CheckHealth) and not command.after_rollback:
            outcomes = [Outcome(id=o.id, ok=False, detail=detail) if o.id in ids else o for o in outcomes]
        return outcomes

    return answer


def example_policy() -> Policy:
    return load_policy(str(ROOT / "tests" / "fixtures" / "policy.yaml"))


def example_fleet() -> list[Instance]:
    return load_inventory(str(ROOT / "examples" / "fleet.json"))


def second_production_wave_member(policy: Policy, fleet: list[Instance]) -> str:
    production = [w for w in plan(policy, fleet).waves if w.ring == "production"]
    return production[1].instances[0].id  # not the canary


def play(
    run_id: str,
    policy: Policy,
    fleet: list[Instance],
    failing: tuple[str, ...],
    step: timedelta = timedelta(minutes=1),
    approve: bool = True,
) -> Run:
    decision = start_run(run_id, policy, plan(policy, fleet), START)
    return drive_to_end(decision, failing_health(*failing), step=step, approve=approve)


@pytest.fixture(scope="module")
def victim() -> str:
    return second_production_wave_member(example_policy(), example_fleet())


@pytest.fixture(scope="module")
def run(victim: str) -> Run:
    """Every wave played; one production instance rolled back."""
    result = play("2025-01-monthly", example_policy(), example_fleet(), (victim,))
    assert result.state == "succeeded"
    assert result.summary() == {"patched": 56, "rolled_back": 1, "excluded": 9}  # 6 workers of a scaling group
    return result


@pytest.fixture(scope="module")
def incomplete_run() -> Run:
    """Slow commands: the four-hour window ends during the production ring."""
    result = play("slow", example_policy(), example_fleet(), (), step=timedelta(minutes=5))
    assert result.state == "incomplete"
    return result


@pytest.fixture(scope="module")
def markdown(run: Run) -> str:
    return render_markdown(run)


@pytest.fixture(scope="module")
def html(run: Run) -> str:
    return render_html(run)


# ---------------------------------------------------------------- HTML helpers

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Collects tags and attributes and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def bars(page: Page) -> list[dict[str, str]]:
    return [a for a in page.find("rect") if "bar" in a.get("class", "").split()]


def started_waves(run: Run) -> list[int]:
    return [w.index for w in run.waves if w.started_at is not None]


# ---------------------------------------------------------------- content


def test_report_header_gives_policy_status_times_and_totals(run: Run, markdown: str, html: str) -> None:
    for report in (markdown, html):
        assert "2025-01-monthly" in report
        assert "monthly-fleet" in report
        assert "succeeded" in report and "every wave finished" in report
        assert "2025-01-17 11:00:00 JST" in report  # start, in the policy's timezone
        assert "2025-01-17 15:00:00 JST" in report  # window end: four hours later
    assert "| patched | rolled back | failed | skipped | not started | excluded | total |" in markdown
    assert "| 56 | 1 | 0 | 0 | 0 | 9 | 66 |" in markdown


def test_rolled_back_instance_is_recorded_with_snapshot_and_health_after(
    run: Run, victim: str, markdown: str, html: str
) -> None:
    record = next(r for r in run.records() if r.id == victim)
    assert record.state == "rolled_back" and record.snapshot_ids
    rollback_md = markdown.split("## Rollback record", 1)[1].split("## Exclusions", 1)[0]
    row = next(line for line in rollback_md.splitlines() if victim in line)
    assert record.snapshot_ids[0] in row
    assert "health check failed after patching: http 503 from /healthz" in row
    assert "restored" in row and "healthy" in row and "rolled back" in row
    rollback_html = html.split('id="rollbacks"', 1)[1].split('id="exclusions"', 1)[0]
    assert victim in rollback_html and record.snapshot_ids[0] in rollback_html


def test_health_failures_are_listed_per_instance_but_patched_ones_only_counted(
    run: Run, victim: str, markdown: str
) -> None:
    health = markdown.split("## Health checks", 1)[1].split("## Rollback record", 1)[0]
    assert "56 patched instances passed the health check" in health
    rows = [line for line in health.splitlines() if line.startswith("| ") and "Instance" not in line]
    assert len(rows) == 2 and all(victim in row for row in rows)  # after patching, after rollback
    assert "**unhealthy**" in rows[0] and "http 503" in rows[0]
    assert "after rollback" in rows[1] and "healthy" in rows[1]


def test_promoted_set_per_os_is_shown(run: Run, markdown: str, html: str) -> None:
    assert run.promoted == {"linux": ["kernel-6.1.90-1", "openssl-3.0.13-1"], "windows": ["KB5036893"]}
    assert "| linux | kernel-6.1.90-1, openssl-3.0.13-1 |" in markdown
    assert "| windows | KB5036893 |" in markdown
    assert "<td>linux</td><td><code>kernel-6.1.90-1, openssl-3.0.13-1</code></td>" in html


def test_identical_installed_lists_are_grouped_per_ring(markdown: str) -> None:
    summary = markdown.split("### Installed per ring", 1)[1].split("## Procedure", 1)[0]
    assert "| staging | linux | kernel-6.1.90-1, openssl-3.0.13-1 | 6 |" in summary
    assert "| production | windows | KB5036893 | 15 |" in summary
    assert "1 more instance had patches installed that a rollback removed" in summary


def test_frozen_instances_are_listed_loudly_as_exposed_with_their_reason(run: Run, markdown: str, html: str) -> None:
    frozen = [r for r in run.excluded if r.reason.startswith("frozen")]
    assert len(frozen) == 2
    assert "**2 frozen machines were not patched and stay exposed: " in markdown
    page = parse(html)
    banner = html.split('<ol class="attention">', 1)[1].split("</ol>", 1)[0]
    assert "2 frozen machines were not patched and stay exposed" in banner
    for record in frozen:
        assert record.id in banner
        line = next(x for x in markdown.splitlines() if x.startswith(f"| **{record.instance.short_name}"))
        assert "frozen: tag PatchPolicy=frozen" in line
    assert page.find("table", **{"class": "frozen"})
    assert "matched no ring's selector" in markdown  # the other exclusion, with its reason


def test_every_wave_is_in_the_procedure_with_placement(run: Run, markdown: str, html: str) -> None:
    waves = markdown.split("### Waves", 1)[1].split("### Timeline", 1)[0]
    rows = [line for line in waves.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in rows] == [w.index for w in run.waves]
    assert "| 6 | production | yes | 1 | japaneast (no zone) ×1 |" in waves  # the canary
    for wave in run.waves:
        assert f'<tr id="wave-{wave.index}">' in html


def test_run_log_is_reproduced(run: Run, markdown: str, html: str) -> None:
    for entry in run.log:
        assert md_escape(entry.text) in markdown  # commands in backticks are shown as typed, not as code
    assert "Soaking 2h after ring staging" in html


def test_patched_instances_are_summarised_per_wave(run: Run, markdown: str) -> None:
    summary = markdown.split("### Patched instances per wave", 1)[1].split("### Run log", 1)[0]
    lines = [line for line in summary.splitlines() if line.startswith("- **Wave")]
    assert len(lines) == len(run.waves)
    assert lines[0].startswith("- **Wave 1** (staging): 2 patched, 2 passed the health check.")


# ---------------------------------------------------------------- HTML


def test_html_is_well_formed_and_self_contained(html: str) -> None:
    page = parse(html)
    assert page.problems == [] and page.stack == []
    assert html.startswith("<!DOCTYPE html>")
    assert not page.find("script") and "<script" not in html.lower()
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = attrs.get(name, "")
            assert not re.match(r"\s*(https?:)?//", value), f"<{tag} {name}={value!r}> loads from outside"
        assert not (tag == "link" and "stylesheet" in attrs.get("rel", ""))
        assert not any(name.startswith("on") for name in attrs), f"<{tag}> has an event handler"
    assert "@import" not in html and "url(" not in html


def test_timeline_has_one_bar_per_started_wave(run: Run, html: str) -> None:
    page = parse(html)
    assert len(page.find("svg")) == 1
    assert sorted(int(b["data-wave"]) for b in bars(page)) == started_waves(run) == [w.index for w in run.waves]


def test_timeline_bars_are_coloured_by_outcome_and_soak_shows_as_a_gap(run: Run, victim: str, html: str) -> None:
    page = parse(html)
    by_wave = {int(b["data-wave"]): b for b in bars(page)}
    wave = next(w.index for w in run.waves if victim in w.records)
    assert by_wave[wave]["class"] == "bar rolled_back"
    assert all(b["class"] == "bar patched" for k, b in by_wave.items() if k != wave)
    last_staging = max(w.index for w in run.waves if w.ring == "staging")
    gap = next(a for a in page.find("rect") if a.get("fill") == "#eceff1")
    staging_end = float(by_wave[last_staging]["x"]) + float(by_wave[last_staging]["width"])
    assert abs(float(gap["x"]) - staging_end) < 1.0
    assert abs(float(gap["x"]) + float(gap["width"]) - float(by_wave[last_staging + 1]["x"])) < 1.0
    assert ">soak</text>" in html


def test_waves_that_never_started_get_no_bar_and_are_reported_with_the_reason(incomplete_run: Run) -> None:
    page = parse(render_html(incomplete_run))
    started = started_waves(incomplete_run)
    assert 0 < len(started) < len(incomplete_run.waves)
    assert sorted(int(b["data-wave"]) for b in bars(page)) == started
    assert page.find("line", **{"class": "window"})  # the window end is drawn
    markdown = render_markdown(incomplete_run)
    not_started = sum(1 for r in incomplete_run.records() if r.state == "not_started")
    assert re.search(
        rf"\| not started \| the maintenance window ended at [^|]+ \| {not_started} \| {started[-1] + 1}–",
        markdown,
    )
    assert "incomplete" in markdown and "not started" in markdown


def test_markdown_timeline_is_a_mermaid_gantt_of_started_waves(run: Run, incomplete_run: Run, markdown: str) -> None:
    block = markdown.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.startswith("gantt\n")
    assert "section staging" in block and "section production" in block
    tasks = re.findall(r":[a-z, ]+, w(\d+), ", block)
    assert [int(t) for t in tasks] == started_waves(run)
    partial = render_markdown(incomplete_run).split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert [int(t) for t in re.findall(r", w(\d+), ", partial)] == started_waves(incomplete_run)


def test_unfinished_run_says_it_has_not_ended() -> None:
    text = (ROOT / "tests" / "fixtures" / "policy.yaml").read_text().replace("approval: auto", "approval: required")
    policy = parse_policy(text)
    waiting = play("waiting", policy, example_fleet(), (), approve=False)
    assert waiting.status == "waiting_approval"
    markdown = render_markdown(waiting)
    assert "| Status | **waiting_approval** |" in markdown
    assert "| Ended | not yet (awaiting_approval) |" in markdown
    page = parse(render_html(waiting))
    assert page.problems == []
    assert sorted(int(b["data-wave"]) for b in bars(page)) == started_waves(waiting)


def ring_row(markdown: str, ring: str) -> str:
    """The ring's row of the Procedure's ring table."""
    table = markdown.split("### Rings", 1)[1].split("###", 1)[0]
    return next(line for line in table.splitlines() if line.startswith(f"| {ring} | "))


def test_the_ring_table_says_what_each_approval_gate_did_the_first_ring_too() -> None:
    text = (ROOT / "tests" / "fixtures" / "policy.yaml").read_text()
    policy = parse_policy(text.replace("    soak: 2h\n", "    soak: 2h\n    approval: required\n"))
    fleet = example_fleet()
    waiting = play("gated", policy, fleet, (), approve=False)
    assert waiting.status == "waiting_approval" and not any(w.started_at for w in waiting.waves)
    markdown = render_markdown(waiting)
    assert ring_row(markdown, "staging").endswith(
        "| required: waiting, before the ring starts (patchpilot approve gated) |"
    )
    assert ring_row(markdown, "production").endswith("| auto |")

    approved_at = START + timedelta(minutes=10)  # the window (4h) still holds every wave
    granted = decide(waiting, ApprovalGranted(id="gated:approve:staging", run_id="gated", by="ops"), approved_at)
    done = drive_to_end(granted, answer_all_ok, start=approved_at)
    assert done.status == "succeeded" and done.waves[0].finished_at > approved_at  # type: ignore[operator]
    assert ring_row(render_markdown(done), "staging").endswith("| required: approved by ops, 2025-01-17 11:10:00 JST |")
    html = render_html(done)
    assert "required: approved by ops, 2025-01-17 11:10:00 JST" in html
    assert "<title>approval: 2025-01-17 11:00:00 JST to 2025-01-17 11:10:00 JST" in html  # the wait, on the timeline

    rejected = decide(waiting, ApprovalRejected(id="gated:approve:staging", run_id="gated", by="ops"), START).run
    assert ring_row(render_markdown(rejected), "staging").endswith("| required: rejected by ops |")


def test_the_ring_table_says_an_approval_on_a_ring_without_machines_held_nothing_back() -> None:
    text = (ROOT / "tests" / "fixtures" / "policy.yaml").read_text().replace("approval: auto", "approval: required")
    policy = parse_policy(text.replace("{Environment: production}", "{Environment: nowhere}"))
    run = play("empty", policy, example_fleet(), ())
    assert run.status == "succeeded"
    expected = "| required, but the ring has no machine: nothing waited |"
    assert ring_row(render_markdown(run), "production").endswith(expected)


# ---------------------------------------------------------------- escaping and files


@pytest.fixture(scope="module")
def hostile_run() -> Run:
    policy = example_policy()
    fleet = example_fleet()
    evil = replace(fleet[2], id="i-0hostile|x", name=HOSTILE)  # a production instance, renamed
    frozen = replace(fleet[2], id="i-0frozen", name=f"*{HOSTILE}*", tags={"PatchPolicy": "frozen"})
    fleet = [*fleet, evil, frozen]
    result = play(f"<b>{HOSTILE}</b>", policy, fleet, ("i-0hostile|x",))
    assert any(r.id == "i-0hostile|x" and r.state == "rolled_back" for r in result.records())
    return result


def test_hostile_names_are_escaped_in_html(hostile_run: Run) -> None:
    html = render_html(hostile_run)
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    page = parse(html)
    assert not page.find("img") and not page.find("b")
    assert page.problems == []
    assert HOSTILE in "".join(page.text)  # shown as text, where it belongs


def test_hostile_names_are_escaped_in_markdown(hostile_run: Run) -> None:
    markdown = render_markdown(hostile_run)
    assert "<img" not in markdown and "<b>" not in markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "i-0hostile\\|x" in markdown  # a pipe would split the table cell
    assert "\\*&lt;img" in markdown  # no emphasis from names
    rollback = markdown.split("## Rollback record", 1)[1].split("## Exclusions", 1)[0]
    row = next(line for line in rollback.splitlines() if "i-0hostile" in line)
    assert len(re.findall(r"(?<!\\)\|", row)) == 9  # 8 cells: no stray separators


def test_write_reports_names_files_by_a_safe_run_id(hostile_run: Run, run: Run, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "nested"
    md_path, html_path = write_reports(run, target)
    assert (md_path.name, html_path.name) == ("2025-01-monthly.md", "2025-01-monthly.html")
    assert md_path.read_text(encoding="utf-8") == render_markdown(run)
    assert html_path.read_text(encoding="utf-8") == render_html(run)

    md_path, html_path = write_reports(hostile_run, target)
    for path in (md_path, html_path):
        assert path.parent == target and path.exists()
        assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name)
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["2025-01-monthly.md", "2025-01-monthly.html", md_path.name, html_path.name]
    )


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [
        ("2025-01-monthly", "2025-01-monthly"),
        ("a b", "a_b-"),
        ("../../etc/passwd", "etc_passwd-"),
        ("..", "run-"),
    ],
)
def test_report_stem_keeps_file_names_safe_and_distinct(run_id: str, expected: str) -> None:
    stem = report_stem(run_id)
    assert stem.startswith(expected) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem)
    assert report_stem("a:b") != report_stem("a/b")


# ---------------------------------------------------------------- scale


def synthetic_fleet(count: int) -> list[Instance]:
    regions = [
        ("aws", "ap-northeast-1", ["ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d"]),
        ("aws", "us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
        ("azure", "japaneast", ["1", "2", "3"]),
    ]
    fleet = []
    for n in range(count):
        cloud, region, zones = regions[n % len(regions)]
        tags = {"Environment": "staging" if n % 20 == 0 else "production"}
        if n % 100 == 7:
            tags["PatchPolicy"] = "frozen"
        fleet.append(
            Instance(
                id=f"i-{n:08x}",
                name=f"{region}-{n}",
                cloud=cloud,  # type: ignore[arg-type]
                region=region,
                zone=zones[(n // 3) % 3],
                os="windows" if n % 3 == 2 else "linux",
                tags=tags,
            )
        )
    return fleet


def test_ten_thousand_instance_report_is_fast_and_small() -> None:
    policy = example_policy()
    policy = policy.model_copy(update={"schedule": None})  # no window: every wave runs
    fleet = synthetic_fleet(10_000)
    production = [w for w in plan(policy, fleet).waves if w.ring == "production"]
    failing = tuple(w.instances[0].id for w in production[1::10])
    big = play("big", policy, fleet, failing)
    assert big.state == "succeeded"
    assert sum(1 for r in big.records() if r.state == "rolled_back") == len(failing)

    began = time.perf_counter()
    html = render_html(big)
    markdown = render_markdown(big)
    elapsed = time.perf_counter() - began
    assert elapsed < 10
    assert len(html.encode()) < 1_000_000 and len(markdown.encode()) < 1_000_000
    page = parse(html)
    assert len(bars(page)) == len(big.waves)
    biggest = max(big.waves, key=lambda w: len(w.records))
    assert len(biggest.records) > NAME_PATCHED_UP_TO
    patched = next(r for r in biggest.records.values() if r.state == "patched")
    assert f"{patched.id})" not in html  # in big waves patched instances are counted, not listed
    for instance_id in failing:
        assert instance_id in html


def test_halted_run_reports_why_and_that_nothing_was_promoted() -> None:
    policy, fleet = example_policy(), example_fleet()
    staging = next(w for w in plan(policy, fleet).waves if w.ring == "staging").instances[0].id
    halted = play("halted", policy, fleet, (staging,))
    assert halted.state == "halted" and halted.promoted is None
    markdown = render_markdown(halted)
    assert f"| Status | **halted**: {halted.reason} |" in markdown
    assert "No set was promoted: the first ring did not finish cleanly." in markdown
    assert "| production | – | nothing patched | 0 of 48 |" in markdown
    assert re.search(r"\| not started \| ring staging had 1 failure: later rings are not touched \| 48 \|", markdown)
    page = parse(render_html(halted))
    assert page.problems == []
    assert sorted(int(b["data-wave"]) for b in bars(page)) == started_waves(halted)


def test_run_without_instances_still_renders() -> None:
    policy = example_policy()
    empty = drive_to_end(start_run("empty", policy, plan(policy, []), START), answer_all_ok)
    assert empty.state == "nothing_patched" and not empty.waves  # an empty inventory is no success
    markdown = render_markdown(empty)
    assert "No wave started." in markdown and "| Status | **nothing_patched**: the inventory is empty |" in markdown
    html = render_html(empty)
    page = parse(html)
    assert page.problems == [] and not page.find("svg")
    assert page.find("span", **{"class": "status nothing_patched"})
    assert ".status.nothing_patched { background: var(--rollback); }" in html  # not the succeeded green


# ---------------------------------------------------------------- what needs a human, first


def section(markdown: str, title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    return markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def with_record(run: Run, instance_id: str, **update: object) -> Run:
    """`run` with one machine's record changed (what another runtime would have recorded)."""
    waves = tuple(
        w.model_copy(
            update={
                "records": {k: r.model_copy(update=update) if k == instance_id else r for k, r in w.records.items()}
            }
        )
        for w in run.waves
    )
    return run.model_copy(update={"waves": waves})


def test_the_report_opens_with_what_needs_a_human(victim: str) -> None:
    """Broken, held by another run, frozen, excluded and undelivered: each named, with its next
    command, before the summaries."""
    policy, fleet = example_policy(), example_fleet()
    staging = [w for w in plan(policy, fleet).waves if w.ring == "staging"]
    broken_id = second_production_wave_member(policy, fleet)
    healthy = failing_health(broken_id)

    def answer(command: FleetCommand) -> list[Outcome]:
        outcomes = healthy(command)
        if isinstance(command, RollBack):  # the broken machine's rollback fails
            return [Outcome(id=o.id, ok=o.id != broken_id, detail="snapshot gone") for o in outcomes]
        return outcomes

    played = drive_to_end(start_run("3am", policy, plan(policy, fleet), START), answer)
    assert played.status == "succeeded_with_failures"
    held_id = staging[-1].instances[-1].id
    played = with_record(played, held_id, state="skipped", reason="held by run other-run")
    notice = UndeliveredNotice(
        notice_id="3am:notify:run_finished", topic="run_finished", channel="ops-slack", reason="invalid_auth", at=START
    )
    played = played.model_copy(update={"undelivered": (notice,)})

    markdown = render_markdown(played)
    first = section(markdown, "Needs a human")
    assert markdown.index("## Needs a human") < markdown.index("## Patch summary") < markdown.index("## Procedure")
    items = [line for line in first.splitlines() if re.match(r"\d+\. ", line)]
    assert "1 machine is left broken" in items[0] and broken_id in items[0]
    assert items[0].endswith("then retry the run: `patchpilot retry 3am`")
    # the broken machines' table follows at once, first in the summary, with their snapshots
    assert section(markdown, "Patch summary").lstrip().startswith("### Left broken: restore by hand")
    held = next(i for i in items if "another run held it" in i)
    assert "(other-run)" in held and held_id in held
    assert held.endswith(
        "Once that run has ended, retry it: `patchpilot status other-run`, then `patchpilot retry 3am`"
    )
    frozen = next(i for i in items if "frozen machines were not patched and stay exposed" in i)
    assert "a retry never patches them." in frozen
    assert any("excluded and stay unpatched (matched no ring's selector; member of scaling group" in i for i in items)
    undelivered = next(i for i in items if "did not reach ops-slack" in i)
    assert undelivered.endswith("`patchpilot status 3am`")
    assert "Nothing needs a human" not in markdown

    html = render_html(played)
    assert html.index('<h2 id="attention">') < html.index('<h2 id="patches">')
    page = parse(html)
    assert page.problems == []
    attention = html.split('<ol class="attention">', 1)[1].split("</ol>", 1)[0]
    assert '<code class="command">patchpilot retry 3am</code>' in attention
    links = re.findall(r'<a href="#([a-z]+)">Details</a>', attention)
    assert links and all(any(page.find(tag, id=target) for tag in ("h2", "h3", "div")) for target in links)


def test_a_halted_report_says_why_and_that_nothing_more_was_patched() -> None:
    policy, fleet = example_policy(), example_fleet()
    staging = next(w for w in plan(policy, fleet).waves if w.ring == "staging").instances[0].id
    halted = play("halted", policy, fleet, (staging,))
    first = section(render_markdown(halted), "Needs a human")
    item = next(line for line in first.splitlines() if "The run halted" in line)
    assert f"The run halted in ring staging: {halted.reason}" in item
    assert "Nothing more was patched (48 machines not started)" in item
    assert item.endswith("start a new run (no tested set was promoted to retry with): `patchpilot status halted`")


def test_a_run_with_nothing_needing_a_human_says_so_in_one_line() -> None:
    policy = example_policy()
    excluded = {r.id for r in play("probe", policy, example_fleet(), ()).excluded}
    fleet = [i for i in example_fleet() if i.id not in excluded]
    clean = play("clean", policy, fleet, ())
    assert clean.status == "succeeded" and not clean.excluded
    first = section(render_markdown(clean), "Needs a human")
    assert first.strip() == (
        "Nothing needs a human: no machine is broken, unpatched, skipped or exposed, and every notice was delivered."
    )
    assert '<p class="good">Nothing needs a human' in render_html(clean)


def test_a_waiting_report_says_how_to_approve() -> None:
    text = (ROOT / "tests" / "fixtures" / "policy.yaml").read_text()
    policy = parse_policy(text.replace("    soak: 2h\n", "    soak: 2h\n    approval: required\n"))
    waiting = play("gated", policy, example_fleet(), (), approve=False)
    assert waiting.status == "waiting_approval"
    first = section(render_markdown(waiting), "Needs a human")
    items = [line for line in first.splitlines() if re.match(r"\d+\. ", line)]
    assert items[0].startswith("1. **Ring staging waits for approval")
    assert items[0].endswith("Approve it: `patchpilot approve gated`")
    assert items[1].startswith("2. **Or reject ring staging: the run ends there.**")
    assert items[1].endswith("(add --reason TEXT to say why): `patchpilot reject gated`")
    assert "add `--state-dir DIR` where the run used another one" in first
    html = render_html(waiting)
    assert '<code class="command">patchpilot approve gated</code>' in html
    assert '<code class="command">patchpilot reject gated</code>' in html


def test_commands_in_the_report_are_shell_quoted_and_never_markup(hostile_run: Run) -> None:
    markdown = render_markdown(hostile_run)
    first = section(markdown, "Needs a human")
    assert "patchpilot retry '&lt;b&gt;&lt;img src=x onerror=alert(1)&gt;&lt;/b&gt;'" in first
    html = render_html(hostile_run)
    assert "patchpilot retry &#39;&lt;b&gt;&lt;img src=x onerror=alert(1)&gt;&lt;/b&gt;&#39;</code>" in html


def test_timeline_labels_are_not_clipped() -> None:
    long_ring = "production-europe-west-and-the-legacy-ledger-cluster-WWWWWWWWWWW"  # 64, the most
    text = (ROOT / "tests" / "fixtures" / "policy.yaml").read_text().replace("production", long_ring)
    policy = parse_policy(text)
    fleet = [
        replace(i, tags={**i.tags, "Environment": long_ring}) if i.tags.get("Environment") == "production" else i
        for i in example_fleet()
    ]
    run = play("long", policy, fleet, (), step=timedelta(minutes=5))  # the window ends first: rows not started
    html = render_html(run)
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    view = re.search(r'viewBox="0 0 (\d+) (\d+)"', svg)
    assert view is not None
    width = int(view.group(1))
    rows = svg.split('<g class="rows"', 1)[1].split("</g>", 1)[0]
    assert 'text-anchor="start"' in rows
    labels = re.findall(r'<text x="([\d.]+)" y="[\d.]+" fill="[^"]+">([^<]+)</text>', rows)
    assert len(labels) == len(run.waves)
    plot_left = min(float(b["x"]) for b in bars(parse(html)))
    for x, label in labels:
        assert float(x) >= 0 and float(x) + text_width(label) < plot_left <= width
    wanted = [f"W{w.index} {long_ring}" for w in run.waves if w.ring == long_ring]
    assert wanted and all(any(label.startswith(w) for _, label in labels) for w in wanted)
    assert any(label.endswith(" (not started)") for _, label in labels)  # the suffix is measured too
    assert text_width("WWWW") > text_width("iiii") and text_width("W" * 10) >= 10 * 11 * 0.9


def test_each_wave_says_how_much_of_each_traffic_pool_it_took_out_of_service() -> None:
    policy = load_policy(str(ROOT / "examples" / "policy-pools.yaml"))
    fleet = load_inventory(str(ROOT / "examples" / "fleet-pools.json"))
    pooled = play("pools", policy, fleet, ())
    waves = render_markdown(pooled).split("### Waves", 1)[1].split("### Timeline", 1)[0]
    assert "| 3 | production | yes | 1 | ap-northeast-1a ×1; pool tg-api-tyo: 1 of 15 |" in waves  # the canary
    assert "pool tg-batch-admin: 1 of 1" in waves
    assert "pool tg-api-tyo: 1 of 15" in render_html(pooled)


# ---------------------------------------------------------------- traffic pools (docs/traffic.md)


def test_pool_capacity_per_wave_shows_how_much_of_each_pool_kept_serving() -> None:
    policy = parse_policy(
        """
name: web
rings:
  - {name: production, select: {tags: {Environment: production}}}
rollout: {mode: concurrent_zones, disruption_budget: "50%", canary: 0, pool_budget: "25%"}
traffic: {drain: true, pool_health: true}
"""
    )
    fleet = [
        Instance(
            id=f"i-web-{n}",
            cloud="aws",
            region="ap-northeast-1",
            zone=f"ap-northeast-1{'acd'[n % 3]}",
            os="linux",
            tags={"Environment": "production"},
            traffic_pools=("tg-web",) if n < 8 else ("tg-web", "tg-admin"),
        )
        for n in range(9)
    ]
    run = drive_to_end(start_run("run-pools", policy, plan(policy, fleet), START), answer_all_ok)
    markdown, html = render_markdown(run), render_html(run)
    assert run.state == "succeeded"
    assert "### Pool capacity per wave" in markdown
    assert "| 1 | production | `tg-web` | 7 of 9 | 78% |" in markdown  # 25% of 9 is 2 out at a time
    assert "| `tg-admin` | 0 of 1 | 0% |" in markdown  # a pool of one is down during its install
    assert 'aria-label="78% serving"' in html and "Pool capacity per wave" in html
    summary = "| Traffic | 9 machines drained from 2 traffic pools, all back; lowest capacity: tg-admin 0 of 1"
    assert summary in markdown


def test_a_run_without_drain_has_no_pool_capacity_section(run: Run, markdown: str) -> None:
    assert "Pool capacity" not in markdown
