"""What the two serverless runtimes (Lambda, Azure Functions) share: the wall clock and the
notifier that writes to the structured log until Slack and Teams are routed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchpilot.engine.messages import Notify


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class LogNotifier:
    """Until Slack and Teams are routed, notifications go to the structured log."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def notify(self, command: Notify) -> None:
        self.log.info(command.text, extra={"topic": command.topic, "severity": command.severity})
