"""The EventBridge events that wake runs on AWS (template.yaml's WakerFunction rules), read into
`patchpilot.wakeups.Signal`s:

- `aws.ssm` "EC2 Command Status-change Notification" with a terminal status, for the documents
  the fleet sends (`WAKING_DOCUMENTS`): the instances are the event's `resources` (instance ARNs);
- `aws.ec2` "EBS Multi-Volume Snapshots Completion Status" (`createSnapshots`, succeeded or
  failed): the event names volumes and snapshots, not the instance; the account and region say
  which runs it may concern.

Shapes as AWS documents them (tests/events/aws-published/ssm_command_status_change.json,
ebs_create_snapshots_*.json). The rules already filter; an event that is not one of these reads
as None (never an error: EventBridge would only retry it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple

from patchpilot.adapters.aws.access import PATCH_DOCUMENT, SCRIPT_DOCUMENTS
from patchpilot.wakeups import Signal, event_time

SSM_SOURCE = "aws.ssm"
SSM_COMMAND_STATUS = "EC2 Command Status-change Notification"
EC2_SOURCE = "aws.ec2"
EBS_SNAPSHOTS = "EBS Multi-Volume Snapshots Completion Status"
# A Run Command's statuses once it has ended (ListCommands' CommandStatus, as the events spell it).
TERMINAL_STATUSES = ("Success", "Failed", "TimedOut", "Cancelled", "Delivery Timed Out", "Execution Timed Out")
# The SSM documents the fleet sends: installs, health scripts and host hooks (adapters/aws/fleet/).
WAKING_DOCUMENTS = (PATCH_DOCUMENT, *sorted(set(SCRIPT_DOCUMENTS.values())))
EBS_RESULTS = ("succeeded", "failed")


class WakeScope(NamedTuple):
    """Where the waker hears Run Command and snapshot events from: the stack's own account and
    region (its default bus), and the accounts and regions whose forwarding stacks
    (infra/aws/wake-forwarder.yaml) send theirs to the stack's wake bus. `accounts` "*": every
    account of the organization (WakeForwardOrganizationId)."""

    home_account: str | None
    home_region: str
    accounts: frozenset[str] | Literal["*"] = frozenset()  # other accounts that forward, in any region below
    regions: frozenset[str] = frozenset()  # other regions whose events are forwarded

    def covers(self, account: str | None, region: str) -> bool:
        """Whether a machine's step ends reach the waker (account None: the stack's own)."""
        own = account is None or account == self.home_account
        forwarding = own or self.accounts == "*" or account in self.accounts
        return forwarding and (region == self.home_region or region in self.regions)


def read_event(event: Mapping[str, Any], now: datetime) -> Signal | None:
    """The signal one EventBridge event carries; None when it is not one that wakes a run. `now`
    stands in for an event time that cannot be read."""
    source, kind = event.get("source"), event.get("detail-type")
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        return None
    at = event_time(event.get("time"), now)
    account, region = _text(event.get("account")), _text(event.get("region"))
    if source == SSM_SOURCE and kind == SSM_COMMAND_STATUS:
        status, document = detail.get("status"), detail.get("document-name")
        if status not in TERMINAL_STATUSES or document not in WAKING_DOCUMENTS:
            return None
        machines = frozenset(_instance_id(r) for r in _list(event.get("resources")) if _instance_id(r))
        said = f"{SSM_SOURCE} {SSM_COMMAND_STATUS}: {document} {detail.get('command-id', '?')} {status}"
        return Signal("run_command", at, said, machines, account, region)
    if source == EC2_SOURCE and kind == EBS_SNAPSHOTS:
        result = detail.get("result")
        if detail.get("event") != "createSnapshots" or result not in EBS_RESULTS:
            return None
        snapshots = len(_list(detail.get("snapshots")))
        said = f"{EC2_SOURCE} {EBS_SNAPSHOTS}: {snapshots} snapshots {result}"
        return Signal("snapshots", at, said, frozenset(), account, region)
    return None


def _instance_id(resource: object) -> str:
    """`i-0abc…` from an instance ARN (`arn:aws:ec2:<region>:<account>:instance/i-0abc…`); "" otherwise."""
    if not isinstance(resource, str) or ":instance/" not in resource:
        return ""
    return resource.rsplit("/", 1)[1].lower()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []
