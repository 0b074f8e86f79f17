"""Small pieces of English every part of PatchPilot writes the same way: a counted noun and a
duration spoken in a message. Pure, no I/O."""

from __future__ import annotations

from datetime import timedelta


def plural(count: int, word: str) -> str:
    """`1 machine`, `2 machines`, `3 patches`: the count and the noun, plural unless one."""
    suffix = "es" if word.endswith(("s", "ch", "sh", "x")) else "s"
    return f"{count} {word}{'' if count == 1 else suffix}"


def spoken_duration(delta: timedelta) -> str:
    """A duration as a message says it: `45 s`, `5 min`, `90 min`, `4 h` (whole hours from two on);
    seconds only when the duration is not whole minutes."""
    seconds = int(delta.total_seconds())
    if seconds % 60:
        return f"{seconds} s"
    total = seconds // 60
    return f"{total} min" if total < 120 or total % 60 else f"{total // 60} h"
