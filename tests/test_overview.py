"""The overview page (`index.html`, docs/operations.md "The overview page"): its model (the runs
that need a person first, with their next command; bounded; links), the local CLI that writes it
after a run, a compliance report and a maintenance read, the document stores it lives in (a
directory, S3 on moto, Blob Storage on Azurite), the serverless hook that writes it again, and the
page itself in a real browser (Debian's Chromium through playwright, JavaScript off, no network).
The browser test never skips: `make test` installs Chromium when it is missing."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from click.testing import CliRunner, Result
from moto_support import REGION, aws
from test_cli_runs import halted_run, waiting_run
from test_local_runtime import FLEET, POLICY

from patchpilot.adapters.aws.reports import S3Reports
from patchpilot.adapters.azure.reports import BlobReports
from patchpilot.adapters.local.reports import DirectoryDocuments
from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.adapters.serverless import ReportingNotifier
from patchpilot.cli import main
from patchpilot.engine.messages import Notify
from patchpilot.engine.run import Run
from patchpilot.inventory import load_inventory
from patchpilot.local_runtime import LocalRuntime
from patchpilot.policy import load_policy
from patchpilot.ports import DocumentStore
from patchpilot.reports import report_stem
from patchpilot.reports.overview import (
    RUNS_SHOWN,
    ComplianceSummary,
    build_overview,
    local_href,
    refresh_overview,
    render_overview,
    report_steps,
    stored_report,
)

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "200"})


@dataclass(frozen=True)
class Fleet:
    """A state directory as an operator leaves it after a month: a run that succeeded, one that
    halted, one waiting for an approval (newest), a compliance report written elsewhere (--out)
    and a maintenance read."""

    state: Path
    out: Path
    succeeded: str
    halted: str
    waiting: str
    run_output: str
    compliance_output: str
    maintenance_output: str

    @property
    def page(self) -> Path:
        return self.state / "reports" / "index.html"

    def text(self) -> str:
        return self.page.read_text()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    tmp = tmp_path_factory.mktemp("overview")
    state = tmp / "state"
    first = cli("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state)
    assert first.exit_code == 0, first.output
    succeeded = next(line.split()[1].rstrip(":") for line in first.output.splitlines() if line.startswith("Run "))
    halted = halted_run(tmp, state)
    waiting = waiting_run(tmp, state)
    out = tmp / "compliance-out"
    compliance = cli("compliance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state, "--out", out)
    assert compliance.exit_code == 1, compliance.output  # the example fleet has a non-compliant machine
    maintenance = cli("maintenance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state)
    assert maintenance.exit_code == 1, maintenance.output  # maintenance due before the next window
    return Fleet(state, out, succeeded, halted, waiting, first.output, compliance.output, maintenance.output)


def runs_of(state: Path) -> dict[str, Run]:
    with SqliteRunStore(state / "state.db", read_only=True) as store:
        return {run_id: store.load(run_id) for run_id in store.run_ids()}


# ---------------------------------------------------------------- the local CLI


def test_a_run_prints_where_the_overview_is_and_the_page_lists_it_with_its_report(fleet: Fleet) -> None:
    assert f"Overview: {fleet.page}" in fleet.run_output.splitlines()
    page = fleet.text()
    stem = report_stem(fleet.succeeded)
    assert f'href="{stem}.html"' in page and (fleet.state / "reports" / f"{stem}.html").is_file()
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_runs_that_need_a_person_come_first_newest_first_each_with_its_next_command(fleet: Fleet) -> None:
    page = fleet.text()
    order = sorted((page.index(f">{run_id}<"), run_id) for run_id in (fleet.succeeded, fleet.halted, fleet.waiting))
    assert [run_id for _, run_id in order] == [fleet.waiting, fleet.halted, fleet.succeeded]
    approve = f"patchpilot approve {fleet.waiting} --state-dir {fleet.state}"
    assert f'<code class="command">{html.escape(approve)}</code>' in page
    assert html.escape(f"patchpilot report {fleet.halted} --state-dir {fleet.state}") in page
    assert "2 runs need a person" in page and "All 3 runs listed." in page


def test_a_compliance_report_and_a_maintenance_read_add_their_sections_and_links(fleet: Fleet) -> None:
    reports = fleet.state / "reports"
    overview_line = f"Overview: {fleet.page}"
    assert overview_line in fleet.compliance_output and overview_line in fleet.maintenance_output
    summary = json.loads((reports / "summaries" / "compliance-monthly-fleet.json").read_text())
    (html_report,) = fleet.out.glob("*.html")
    assert summary["report"] == str(html_report)
    page = fleet.text()
    assert f"{summary['machines']['compliant']} of {summary['instances']}" in page
    assert f'href="{html_report.as_uri()}"' in page  # written elsewhere (--out): a file:// link
    read = json.loads((reports / "summaries" / "maintenance-monthly-fleet.json").read_text())
    due = [item for item in read["items"] if item["before_window"]]
    assert due and all(html.escape(item["resource_name"] or item["resource_id"]) in page for item in due)
    assert 'href="summaries/maintenance-monthly-fleet.json"' in page


def test_the_overview_command_writes_the_page_again_and_says_where(fleet: Fleet) -> None:
    fleet.page.unlink()
    result = cli("overview", "--state-dir", fleet.state, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"overview": str(fleet.page)}
    assert fleet.waiting in fleet.text()


def test_an_interrupted_run_needs_a_person_and_is_resumed_with_the_command_shown(tmp_path: Path) -> None:
    state = tmp_path / "s"
    runtime = LocalRuntime.open(state)
    run = runtime.start(load_policy(POLICY), load_inventory(FLEET))  # started, then nobody drives it
    runtime.store.close()
    result = cli("overview", "--state-dir", state)
    assert result.exit_code == 0, result.output
    page = (state / "reports" / "index.html").read_text()
    assert "1 run needs a person" in page and f">{run.run_id}<" in page
    assert html.escape(f"patchpilot run --resume {run.run_id} --state-dir {state}") in page


def test_the_overview_command_names_a_missing_state_directory(tmp_path: Path) -> None:
    result = cli("overview", "--state-dir", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "nowhere" in result.output and "no state directory here" in result.output


def test_a_page_that_cannot_be_written_never_fails_the_run(tmp_path: Path) -> None:
    state = tmp_path / "s"
    (state / "reports" / "index.html").mkdir(parents=True)  # in the way: the page cannot replace it
    result = cli("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state)
    assert result.exit_code == 0, result.output
    assert f"warning: the overview page in {state / 'reports'} was not written" in result.output
    assert "Report: " in result.output and "Overview: " not in result.output


def test_a_maintenance_read_creates_no_state_directory(tmp_path: Path) -> None:
    result = cli("maintenance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path / "none")
    assert result.exit_code == 1 and "Overview:" not in result.output
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------- the model


def test_every_run_that_needs_a_person_is_listed_first_besides_the_newest_and_the_page_says_so(fleet: Fleet) -> None:
    runs = runs_of(fleet.state)
    fine, halted = runs[fleet.succeeded], runs[fleet.halted]
    start = fine.created_at
    newest_first = [
        fine.model_copy(update={"run_id": f"fine-{i}", "created_at": start - timedelta(days=i)}) for i in range(70)
    ]
    newest_first.insert(60, halted)  # older than the newest 50
    overview = build_overview(
        datetime(2026, 12, 6, tzinfo=UTC),
        [(run, None) for run in newest_first],
        lambda run: [("fix it", f"patchpilot report {run.run_id}")],
        runs_total=500,
    )
    assert [row.run_id for row in overview.runs[:2]] == [halted.run_id, "fine-0"]
    assert len(overview.runs) == RUNS_SHOWN + 1 and overview.runs_left_out == 500 - RUNS_SHOWN - 1
    assert overview.runs[0].steps == (("fix it", f"patchpilot report {halted.run_id}"),)
    assert overview.runs[1].steps == ()  # a run that needs nobody shows no step
    page = render_overview(overview)
    assert "449 older runs are not listed" in page and "1 run needs a person" in page


def test_an_unreadable_summary_is_named_and_the_rest_of_the_page_stands(tmp_path: Path) -> None:
    documents = DirectoryDocuments(tmp_path)
    documents.write("summaries/compliance-bad.json", '{"policy": "bad"}', "application/json")
    good = ComplianceSummary(
        policy="good", generated_at=datetime(2026, 12, 6, tzinfo=UTC), instances=3, machines={"compliant": 3}, missing=0
    )
    documents.write("summaries/compliance-good.json", good.model_dump_json(), "application/json")
    refresh_overview(documents, None, datetime(2026, 12, 6, tzinfo=UTC), report_steps, stored_report)
    page = (tmp_path / "index.html").read_text()
    assert "summaries/compliance-bad.json: 4 problems (Field required)" in page
    assert "3 of 3" in page and "No runs yet." in page


def test_links_are_relative_below_the_page_and_file_urls_elsewhere(tmp_path: Path) -> None:
    base = tmp_path / "state" / "reports"
    assert local_href(str(base / "run 1.html"), base) == "run%201.html"
    assert local_href(str(tmp_path / "out" / "r.html"), base) == (tmp_path / "out" / "r.html").as_uri()


def test_on_the_clouds_a_finished_run_links_to_its_report_beside_the_page(fleet: Fleet) -> None:
    runs = runs_of(fleet.state)
    assert stored_report(runs[fleet.succeeded]) == f"{report_stem(fleet.succeeded)}.html"
    assert stored_report(runs[fleet.waiting]) is None  # no report until it ends
    (what, command), *_ = report_steps(runs[fleet.waiting])
    assert "waits for approval" in what and command == f"patchpilot approve {fleet.waiting}"


# ---------------------------------------------------------------- the stores


@contextmanager
def directory_store(tmp: Path, azurite: Any) -> Iterator[DocumentStore]:
    yield DirectoryDocuments(tmp / "reports")


@contextmanager
def s3_store(tmp: Path, azurite: Any) -> Iterator[DocumentStore]:
    with aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket="patchpilot-config")
        client.put_object(Bucket="patchpilot-config", Key="policy.yaml", Body=b"not a report")
        yield S3Reports("patchpilot-config", client)


@contextmanager
def blob_store(tmp: Path, azurite: Azurite) -> Iterator[DocumentStore]:
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        azurite.unique_name("reports")
    )
    container.create_container()
    yield BlobReports(container)


@pytest.fixture(params=["directory", "s3", "blob"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    make = {"directory": directory_store, "s3": s3_store, "blob": blob_store}[request.param]
    azurite = request.getfixturevalue("azurite") if request.param == "blob" else None
    with make(tmp_path, azurite) as documents:
        yield documents


def test_a_document_store_reads_back_what_it_wrote_and_lists_by_prefix(store: DocumentStore) -> None:
    assert store.read("summaries/compliance-a.json") is None and store.names("summaries/") == []
    store.write("summaries/maintenance-b.json", '{"b": 1}', "application/json")
    store.write("summaries/compliance-a.json", '{"a": "é"}', "application/json")
    store.write("compliance-a-20261206-0600.html", "<p>report</p>", "text/html")
    store.write("summaries/compliance-a.json", '{"a": "ü"}', "application/json")  # replaced whole
    assert store.read("summaries/compliance-a.json") == '{"a": "ü"}'
    assert store.names("summaries/") == ["summaries/compliance-a.json", "summaries/maintenance-b.json"]
    assert store.names("summaries/compliance-") == ["summaries/compliance-a.json"]


def test_the_overview_is_written_into_the_store_from_its_summaries(store: DocumentStore, fleet: Fleet) -> None:
    reports = fleet.state / "reports" / "summaries"
    for name in ("compliance-monthly-fleet.json", "maintenance-monthly-fleet.json"):
        store.write(f"summaries/{name}", (reports / name).read_text(), "application/json")
    with SqliteRunStore(fleet.state / "state.db", read_only=True) as runs:
        location = refresh_overview(store, runs, datetime(2026, 12, 6, tzinfo=UTC), report_steps, stored_report)
    assert location.endswith("index.html")
    page = store.read("index.html")
    assert page is not None and fleet.waiting in page and "monthly-fleet" in page
    assert f'href="{report_stem(fleet.succeeded)}.html"' in page
    assert 'href="summaries/maintenance-monthly-fleet.json"' in page


# ---------------------------------------------------------------- the serverless hook


class OneRun:
    def __init__(self, run: Run) -> None:
        self.run = run

    def load(self, run_id: str) -> Run:
        return self.run


def test_the_page_is_written_again_as_a_run_starts_ends_a_ring_waits_and_ends(fleet: Fleet) -> None:
    runs = runs_of(fleet.state)
    sent: list[Notify] = []
    refreshed: list[str] = []

    class Sent:
        def notify(self, command: Notify) -> None:
            sent.append(command)

    notifier = ReportingNotifier(
        Sent(),
        OneRun(runs[fleet.succeeded]),  # type: ignore[arg-type]
        lambda run: f"mem://{run.run_id}.html",
        lambda: refreshed.append("index.html"),
    )
    topics = ("run_started", "instance_failed", "ring_finished", "approval_needed", "run_finished", "run_halted")
    for topic in topics:
        notifier.notify(Notify(id=f"n:{topic}", run_id=fleet.succeeded, topic=topic, text="t"))
    assert len(refreshed) == 5 and len(sent) == 6  # every one but a machine's failure
    assert sent[4].text == f"t Report: mem://{fleet.succeeded}.html"


# ---------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.mark.parametrize(("name", "width", "height"), [("desktop", 1280, 800), ("phone", 390, 844)])
def test_the_page_in_chromium_without_javascript_or_network(
    browser: Any, fleet: Fleet, name: str, width: int, height: int
) -> None:
    url = fleet.page.as_uri()
    context = browser.new_context(viewport={"width": width, "height": height}, java_script_enabled=False)
    others: list[str] = []

    def only_the_page(route: Any) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            others.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_page)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(url)
        assert page.title() == "PatchPilot overview"
        for section in ("Runs", "Compliance", "Maintenance before the next window"):
            assert page.get_by_role("heading", name=section, exact=True).is_visible()
        rows = page.locator("table.runs tbody tr")
        assert rows.count() == 3
        assert rows.nth(0).get_attribute("class") == "needs-you" and fleet.waiting in rows.nth(0).inner_text()
        assert rows.nth(2).get_attribute("class") == "fine"
        approve = f"patchpilot approve {fleet.waiting} --state-dir {fleet.state}"
        assert rows.nth(0).locator("code.command").first.inner_text() == approve
        reports = fleet.state / "reports"
        for run_id in (fleet.succeeded, fleet.halted, fleet.waiting):
            href = page.get_by_role("link", name=run_id, exact=True).get_attribute("href")
            assert href == f"{report_stem(run_id)}.html" and (reports / href).is_file()
        compliance = page.get_by_role("link", name="compliance report").get_attribute("href")
        assert compliance is not None and compliance.startswith("file://") and compliance.endswith(".html")
        read = page.get_by_role("link", name="The whole read (JSON)").get_attribute("href")
        assert read is not None and (reports / read).is_file()
        # No page-wide horizontal scrolling: every table fits, stacked as cards on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        if name == "phone":
            cell = page.locator("table.runs tbody tr").first.locator("td").first.bounding_box()
            row = page.locator("table.runs tbody tr").first.bounding_box()
            assert cell is not None and row is not None and cell["width"] > row["width"] * 0.8  # one per line
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"overview-{name}.png"), full_page=True)
    finally:
        context.close()
    assert others == [] and requested == [url]  # no request but the page itself


def test_the_page_holds_commands_never_a_signed_link_or_an_external_resource(fleet: Fleet) -> None:
    text = fleet.text()
    assert "token=" not in text and "?code=" not in text  # approval links live only in chat cards
    assert "<link" not in text and "@import" not in text and "url(" not in text and "src=" not in text
