"""The wake-ups: a cloud event says that an operation of a run may have finished
(patchpilot/wakeups.py makes them, the worker acts on them). engine/messages.py re-exports them.
"""

from typing import Literal

from patchpilot.engine.message_base import MessageBase


class LookNow(MessageBase):
    """A cloud event says that an operation of run `run_id` may have finished (an SSM command, an
    EBS snapshot set, an ARM write): poll `command_id` once, now, rather than at its next poll. Input,
    never authority: the worker polls only the command the stored run awaits, and only when it is
    `command_id` (service.py); a wake-up for a command that is done changes nothing. The id is
    `<command id>:look:<window>`, one per command and wake-up window (patchpilot/wakeups.py)."""

    type: Literal["LookNow"] = "LookNow"
    command_id: str
    reason: str = ""  # what woke it, for the log: "aws.ssm EC2 Command Status-change Notification Success"
