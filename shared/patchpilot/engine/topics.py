"""What a notice is about, and how bad it is: shared by the engine's `Notify` and the policy's
notification routes (which cannot import the messages: those import the policy)."""

from typing import Literal

Topic = Literal[
    "run_scheduled",  # a heads-up before a window (triggers.heads_up), not from the engine
    "run_started",
    "ring_finished",
    "approval_needed",
    "instance_failed",
    "run_halted",
    "run_finished",
    "advisory",  # the answer to a security advisory (patchpilot.advisories), not from the engine
    "run_skipped",  # a non-periodic window with nothing pending, or a frozen one (the timer), not from the engine
    "compliance_report",  # the compliance view after a scheduled scan (patchpilot.compliance)
    "maintenance_digest",  # the weekly maintenance watch digest (patchpilot.maintenance)
    "maintenance_alert",  # cloud maintenance due before the next patch window
]
Severity = Literal["info", "warning", "error"]
