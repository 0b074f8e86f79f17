"""Emergency runs from security advisories: parse deliveries, decide, derive the run's policy
(docs/advisories.md)."""

from patchpilot.advisories.decide import (
    decide_advisory,
    emergency_policy,
    emergency_run_id,
    fixes_os,
    follow_up_request,
    follow_up_run_id,
    open_run_of,
)
from patchpilot.advisories.models import Advisory, AdvisoryAnswer, Delivery, HealthNotice, OpenRun, Unactionable
from patchpilot.advisories.parsing import AdvisoryDocument, load_payload, parse_event, parse_payload

__all__ = [
    "Advisory",
    "AdvisoryAnswer",
    "AdvisoryDocument",
    "Delivery",
    "HealthNotice",
    "OpenRun",
    "Unactionable",
    "decide_advisory",
    "emergency_policy",
    "emergency_run_id",
    "fixes_os",
    "follow_up_request",
    "follow_up_run_id",
    "load_payload",
    "open_run_of",
    "parse_event",
    "parse_payload",
]
