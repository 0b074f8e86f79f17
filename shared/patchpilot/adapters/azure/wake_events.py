"""The Event Grid events that wake runs on Azure (infra/azure/main.bicep's `wakeTopic`: the
subscription's Azure Resource Manager events), read into `patchpilot.wakeups.Signal`s:

- `Microsoft.Resources.ResourceActionSuccess` / `ResourceActionFailure` / `ResourceWriteSuccess` /
  `ResourceWriteFailure` whose subject (the resource id) is a virtual machine, or something of one
  (a Run Command: `.../virtualMachines/<vm>/runCommands/<name>`): an install, a health script, a
  host hook, a start or deallocation of that VM has ended (`machine`, the VM's id, and the event's
  `data.operationName`, which says which: `patchpilot.wakeups.ENDED_BY` wakes only the step of that
  one VM the operation ends);
- the same on a snapshot (`.../providers/Microsoft.Compute/snapshots/<name>`): a snapshot write has
  ended in that subscription (`snapshot`).

A write of the VM itself (`Microsoft.Compute/virtualMachines/write`, the subject being the VM)
wakes nothing: it ends no step PatchPilot waits for, and PatchPilot makes such writes itself (the
marks of an install or a health check are tag writes on the VM; a rollback's disk swap is followed
by the start, whose action event comes), so each would wake, seconds later, the very step that
wrote it, to a poll of every machine that finds it under way.

Shape as Microsoft documents it (tests/events/azure-published/resource_action_success.json), as
the Functions host hands it over (`azure_functions.maintenance.as_delivered`). Anything else reads
as None: never an error, Event Grid would only retry it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from patchpilot.wakeups import Signal, event_time

WAKING_EVENT_TYPES = (
    "Microsoft.Resources.ResourceActionSuccess",
    "Microsoft.Resources.ResourceActionFailure",
    "Microsoft.Resources.ResourceWriteSuccess",
    "Microsoft.Resources.ResourceWriteFailure",
)
# The subject prefixes the subscription's filter passes (main.bicep) and this reader reads.
VM_PATH = "/providers/Microsoft.Compute/virtualMachines/"
SNAPSHOT_PATH = "/providers/Microsoft.Compute/snapshots/"
_VM = re.compile(r"^(/subscriptions/([^/]+)/resourcegroups/[^/]+/providers/microsoft\.compute/virtualmachines/[^/]+)")
_SNAPSHOT = re.compile(r"^/subscriptions/([^/]+)/resourcegroups/[^/]+/providers/microsoft\.compute/snapshots/[^/]+")


def read_event(event: Mapping[str, Any], now: datetime) -> Signal | None:
    """The signal one Event Grid event (Event Grid schema) carries; None when it wakes nothing.
    `now` stands in for an event time that cannot be read."""
    event_type, subject = event.get("eventType"), event.get("subject")
    if event_type not in WAKING_EVENT_TYPES or not isinstance(subject, str):
        return None
    data = event.get("data")
    operation = data.get("operationName", "?") if isinstance(data, Mapping) else "?"
    said = f"{event_type}: {operation} on {subject}"
    at = event_time(event.get("eventTime"), now)
    lowered = subject.lower()
    if machine := _VM.match(lowered):
        if "Write" in event_type and machine[1] == lowered.rstrip("/"):
            return None  # the VM's own write: PatchPilot's tag marks, a disk swap (see the module's docstring)
        ended = operation.lower() if isinstance(operation, str) else ""
        return Signal("machine", at, said, frozenset({machine[1]}), machine[2], operation=ended)
    if snapshot := _SNAPSHOT.match(lowered):
        return Signal("snapshot", at, said, frozenset(), snapshot[1])
    return None
