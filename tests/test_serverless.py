"""What both serverless runtimes share: the notice of a run's end names the run's report, and a
report that cannot be written never stops the notice."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from patchpilot.adapters.serverless import ReportingNotifier
from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import Notify
from patchpilot.engine.run import Run
from patchpilot.inventory import load_inventory
from patchpilot.planning import plan
from patchpilot.policy import load_policy
from patchpilot.ports import UnknownRunError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY = load_policy(str(EXAMPLES / "policy.yaml"))
RUNNING = start_run("run-1", POLICY, plan(POLICY, load_inventory(str(EXAMPLES / "fleet.json"))), datetime.now(UTC)).run
FINISHED = RUNNING.model_copy(update={"state": "succeeded"})


class Store:
    def __init__(self, run: Run | None) -> None:
        self.run = run

    def load(self, run_id: str) -> Run:
        if self.run is None:
            raise UnknownRunError(run_id)
        return self.run


class Sent:
    def __init__(self) -> None:
        self.notices: list[Notify] = []

    def notify(self, command: Notify) -> None:
        self.notices.append(command)


def notice(topic: str) -> Notify:
    return Notify(id=f"run-1:notify:{topic}", run_id="run-1", topic=topic, text="Run run-1 succeeded.")  # type: ignore[arg-type]


def test_the_end_of_a_run_names_its_report() -> None:
    sent, published = Sent(), []

    def publish(run: Run) -> str:
        published.append(run.run_id)
        return "https://st.blob.core.windows.net/patchpilot-reports/run-1.html"

    ReportingNotifier(sent, Store(FINISHED), publish).notify(notice("run_finished"))  # type: ignore[arg-type]
    assert published == ["run-1"]
    assert sent.notices[0].text == (
        "Run run-1 succeeded. Report: https://st.blob.core.windows.net/patchpilot-reports/run-1.html"
    )


@pytest.mark.parametrize(("topic", "run"), [("ring_finished", FINISHED), ("run_finished", RUNNING)])
def test_other_notices_and_unfinished_runs_write_no_report(topic: str, run: Run) -> None:
    sent = Sent()

    def publish(run: Run) -> str:
        raise AssertionError("no report expected")

    ReportingNotifier(sent, Store(run), publish).notify(notice(topic))  # type: ignore[arg-type]
    assert sent.notices == [notice(topic)]


def test_a_report_that_cannot_be_written_is_logged_and_the_notice_still_goes(caplog: pytest.LogCaptureFixture) -> None:
    sent = Sent()

    def publish(run: Run) -> str:
        raise OSError("the storage account is unreachable")

    ReportingNotifier(sent, Store(FINISHED), publish).notify(notice("run_halted"))  # type: ignore[arg-type]
    ReportingNotifier(sent, Store(None), publish).notify(notice("run_halted"))  # type: ignore[arg-type]
    assert [n.text for n in sent.notices] == ["Run run-1 succeeded."] * 2
    assert "the report of run run-1 was not written: the storage account is unreachable" in caplog.text
