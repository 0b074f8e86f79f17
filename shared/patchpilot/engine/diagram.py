"""Generate docs/state-machine.md from the transition table: `python -m patchpilot.engine.diagram`."""

from __future__ import annotations

from patchpilot.engine.decide import ANY_STATE, RUN_STARTED, START_TARGETS, TRANSITIONS, WAVE_DONE_TARGETS
from patchpilot.engine.run import TERMINAL_STATES, RunState

HEADER = """# The run state machine

Generated from `TRANSITIONS` in `shared/patchpilot/engine/decide.py` by
`python -m patchpilot.engine.diagram` (`make docs`); a test fails when it is out of date.
Each arrow is an event the state accepts; any other event in that state is ignored and said so.
`decide` refuses a handler that leaves the run in a state its row does not declare.
A run starts with its first wave (`leasing`), or in `awaiting_approval` when its first ring has
`approval: required` (nothing is touched before someone approves); a run with no machine to
patch ends at once (`nothing_patched`), one with no time left in its window too (`incomplete`),
and a first wave with nothing left to do (a follow-up's machines that have no promoted set) is
done at once (`WaveDone`).
`WaveDone` is not a state: it is the end of a wave (every instance settled), which starts the
next wave (`leasing`), soaks, waits for approval, or ends the run (`succeeded`;
`succeeded_with_failures` when every wave finished within `max_failures` but a machine is left
`failed`, its rollback failed or it is still unhealthy after it; `nothing_patched` when no
machine was patched: an empty inventory, or a first ring that selected or patched nothing, so no
tested set was promoted; `halted` when the wave exceeded
`max_failures` or the first ring had a failure; `incomplete` when the window ended).

Three events are applied in every state, finished runs included, once per id, and leave the
state as it is; they are not drawn, and the table lists them in `any state`:
`NoticeUndelivered` (recorded in the run), `FollowUpRequested` (instances the run does not cover:
recorded, and once the run has ended without halting and with a promoted set, a `StartFollowUp`
command starts the follow-up run, which installs that set pinned in every ring; after a halt it
is logged as NOT COVERED and nothing starts) and `FollowUpFinished` (a follow-up ended, from its
outbox: the next requested one starts, one at a time, none after a halt).
"""


def mermaid() -> str:
    # A run starts with its first wave's leases, or, when its first ring requires approval, waits for it.
    lines = ["stateDiagram-v2", *(f"    [*] --> {target}: {RUN_STARTED}" for target in START_TARGETS)]
    for (state, event), transition in TRANSITIONS.items():
        if state == ANY_STATE:  # leaves the state as it is: a loop on every state would hide the flow
            continue
        for target in transition.targets:
            lines.append(f"    {state} --> {target}: {event.__name__}")
    lines.append("    state WaveDone <<choice>>")
    for wave_done in WAVE_DONE_TARGETS:
        lines.append(f"    WaveDone --> {wave_done}")
    for terminal in _in_order(TERMINAL_STATES):
        lines.append(f"    {terminal} --> [*]")
    return "\n".join(lines)


def _in_order(states: frozenset[RunState]) -> list[RunState]:
    """`states` in the order `WAVE_DONE_TARGETS` names them (a set has none)."""
    return [s for s in WAVE_DONE_TARGETS if s in states]


def document() -> str:
    table = ["| state | event | handler | may lead to |", "| --- | --- | --- | --- |"]
    for (state, event), transition in TRANSITIONS.items():
        targets = ", ".join(transition.targets) or "the same state"
        row = "any state" if state == ANY_STATE else state
        table.append(f"| {row} | {event.__name__} | `{transition.handler.__name__}` | {targets} |")
    return f"{HEADER}\n```mermaid\n{mermaid()}\n```\n\n" + "\n".join(table) + "\n"


if __name__ == "__main__":
    print(document(), end="")
