"""A serverless runtime (`ServerlessRuntime`, what Lambda and Functions compose alike) over the local
adapters (SQLite store, queue and claims), a manual clock and secrets from a mapping, holding one
run that waits for approval of its production ring. What the security tests drive."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clocks import ManualClock

from patchpilot.adapters.local.sqlite_claims import SqliteClaims
from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.bootstrap.serverless import ServerlessPorts, ServerlessRuntime
from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.messages import ApprovalGranted, ApprovalRejected
from patchpilot.engine.run import Run
from patchpilot.inventory import load_inventory
from patchpilot.notify import EnvironmentSecrets
from patchpilot.planning import plan
from patchpilot.policy import Policy, load_policy
from patchpilot.policy.model import Notifications

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = datetime(2026, 12, 12, 3, 0, tzinfo=UTC)
RUN_ID = "run-1"
APPROVAL_KEY = "approval-signing-key-current-0123456789"
PREVIOUS_KEY = "approval-signing-key-previous-9876543210"
SLACK_SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
APPROVE_URL = "https://patchpilot-func.azurewebsites.net/api/approve?code=FUNCTIONKEY-abcdef0123456789"
log = logging.getLogger("patchpilot.tests.security")


def policy(approvers: list[str] | None = None, notifications: dict[str, object] | None = None) -> Policy:
    base = load_policy(str(EXAMPLES / "policy.yaml"))
    rings = [
        r.model_copy(update={"approval": "required", "approvers": approvers or []}) if r.name == "production" else r
        for r in base.rings
    ]
    update: dict[str, object] = {"rings": rings}
    if notifications is not None:
        update["notifications"] = Notifications.model_validate(notifications)
    return base.model_copy(update=update)


def waiting_run(the_policy: Policy) -> Run:
    run = start_run(RUN_ID, the_policy, plan(the_policy, load_inventory(str(EXAMPLES / "fleet.json"))), NOW).run
    production = next(i for i, w in enumerate(run.waves) if w.ring == "production")
    return run.model_copy(update={"state": "awaiting_approval", "cursor": production, "version": 1})


def no_port() -> Any:
    raise AssertionError("approvals use no fleet and no Service")


@dataclass(frozen=True)
class Settings:
    approval_secret: str | None = "patchpilot-approval-key"
    approval_previous_secret: str | None = None
    slack_signing_secret: str | None = "patchpilot-slack-signing-secret"
    slack_bot_token_secret: str | None = None
    approval_url: str | None = APPROVE_URL


class World(ServerlessRuntime):
    clock: ManualClock

    def __init__(self, tmp: Path, the_policy: Policy, secrets: dict[str, str], env: Settings = Settings()) -> None:
        self.env = env
        self.log = log
        self.clock = ManualClock(NOW)
        self.db = tmp / "state.db"
        self._secrets = EnvironmentSecrets(
            {
                "patchpilot-approval-key": APPROVAL_KEY,
                "patchpilot-slack-signing-secret": SLACK_SIGNING_SECRET,
                **secrets,
            }
        )
        super().__init__(
            ServerlessPorts(
                settings=env,
                log=log,
                clock=self.clock,
                store=lambda: self.store,
                queue=lambda: self.queue,
                secrets=lambda: self.secrets,
                claims=lambda: self.claims,
                fleet=no_port,
                documents=lambda: None,
                service=no_port,
                policy=lambda: the_policy,
            )
        )
        self.store.create(waiting_run(the_policy), [])

    @functools.cached_property
    def store(self) -> SqliteRunStore:
        return SqliteRunStore(self.db)

    @functools.cached_property
    def queue(self) -> SqliteQueue:
        return SqliteQueue(self.db, self.clock)

    @functools.cached_property
    def claims(self) -> SqliteClaims:
        return SqliteClaims(self.db, self.clock)

    @property
    def secrets(self) -> EnvironmentSecrets:
        return self._secrets

    def decided(self) -> tuple[list[ApprovalGranted | ApprovalRejected], list[str]]:
        """The decisions published for the worker, and the run's log once they are applied (or
        as the approval itself left it, where the approval writes the run)."""
        run = self.store.load(RUN_ID)
        events = [
            d.message for d in self.queue.receive(limit=10) if isinstance(d.message, ApprovalGranted | ApprovalRejected)
        ]
        for event in events:
            run = decide(run, event, self.clock.now()).run
        return events, [entry.text for entry in run.log]
