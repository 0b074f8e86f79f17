"""One machine's health so far, as both clouds' health checks build it (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from patchpilot.wording import spoken_duration


@dataclass(frozen=True)
class Verdict:
    """Pass (with what passed), wait (why, and until when), or fail (why)."""

    state: Literal["pass", "wait", "fail"]
    detail: str
    deadline: datetime | None = None  # a wait's deadline, once `timed` has set it

    def plus(self, passed: str) -> Verdict:
        """The verdict with one more check passed."""
        return Verdict(self.state, f"{self.detail}, {passed}" if self.detail else passed, self.deadline)

    def timed(self, now: datetime, deadline: datetime, timeout: timedelta) -> Verdict:
        """A wait past the deadline is a failure; a wait before it remembers the deadline."""
        if self.state != "wait":
            return self
        if now >= deadline:
            return Verdict("fail", f"{self.detail} (still after {spoken_duration(timeout)})")
        return Verdict("wait", self.detail, deadline)
