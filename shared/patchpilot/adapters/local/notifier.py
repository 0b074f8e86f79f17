"""Notifications of the local runtime: a JSON-lines file in the state directory, plus a hook
for the live console. Neither ever shows a link's token, a function key or a webhook URL
(`patchpilot.redact`): approval links go to Slack and Teams only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from patchpilot.engine.messages import Notify
from patchpilot.redact import PROCESS_SECRETS


class FileNotifier:
    """Appends each notification once (by id) to `notifications.jsonl`; calls `on_notice`."""

    def __init__(self, path: Path, on_notice: Callable[[Notify], None] | None = None) -> None:
        self.path = path
        self.on_notice = on_notice
        self._seen: set[str] = set()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    self._seen.add(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: the notice is sent again

    def notify(self, command: Notify) -> None:
        if command.id in self._seen:
            return
        command = command.model_copy(update={"text": PROCESS_SECRETS(command.text)})
        with self.path.open("a", encoding="utf-8") as out:
            out.write(command.model_dump_json() + "\n")
        self._seen.add(command.id)
        if self.on_notice is not None:
            self.on_notice(command)
