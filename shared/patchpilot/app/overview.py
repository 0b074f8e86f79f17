"""The overview page (`index.html` beside the reports): written again from the run table and the
summaries kept beside it, whenever a run starts or ends, a compliance report is written or the
maintenance watch reads the clouds. Never raises: a page not written is logged."""

from __future__ import annotations

import logging
from collections.abc import Callable

from patchpilot.ports import Clock, DocumentStore, RunStore

log = logging.getLogger("patchpilot.notify")


class Overview:
    """Over the report store (`documents()`: None when the runtime keeps no reports) and the run
    table (`store()`), each built on first use."""

    def __init__(
        self, documents: Callable[[], DocumentStore | None], store: Callable[[], RunStore], clock: Clock
    ) -> None:
        self.documents = documents
        self.store = store
        self.clock = clock

    def keep(self, summaries: Callable[[], list[tuple[str, str]]]) -> None:
        """Write the `summaries` (name, JSON) beside the reports, then the overview page again.
        Logged, never raised: the report or the read it follows stands."""
        documents = self.documents()
        if documents is None:
            return
        try:
            for name, text in summaries():
                documents.write(name, text, "application/json")
        except Exception as error:  # storage down: the page keeps the last summary
            log.warning("the overview's summaries were not written: %s", error)
            return
        self.refresh()

    def refresh(self) -> str | None:
        """Write the overview page again from the run table (its newest runs) and the summaries
        kept beside it; where it is. Logged, never raised."""
        documents = self.documents()
        if documents is None:
            return None
        from patchpilot.reports.overview import refresh_overview, report_steps, stored_report

        try:
            return refresh_overview(documents, self.store(), self.clock.now(), report_steps, stored_report)
        except Exception as error:  # the run table or the store down, a summary that does not render
            log.warning("the overview page was not written: %s", error)
            return None
