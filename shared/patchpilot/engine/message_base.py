"""The base of every message of a run (engine/messages.py): a stable id and the run it concerns.

The messages live in three modules, so that a process loads the ones it builds: the commands
(engine/commands.py), the events (engine/events.py) and the wake-ups (engine/wakeup_messages.py);
engine/messages.py gathers them (the `Message` union) and `MESSAGE` reads and writes them all
(engine/message_adapter.py).
"""

from pydantic import BaseModel, ConfigDict


class MessageBase(BaseModel):
    # Each message's own validator is built when a message of its type is first built or validated
    # on its own (`defer_build`): a cold start uses a few of them; `MESSAGE` reads and writes them all.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    id: str
    run_id: str


class CommandBase(MessageBase):
    """The base of every command: the wave it concerns, and the id of its result."""

    wave: int | None = None  # 1-based wave index, where the command concerns a wave

    @property
    def result_id(self) -> str:
        return f"{self.id}:done"
