"""One writer per state directory: an advisory lock (`flock`) on `STATE_DIR/lock`.

The local runtime's virtual clock, queue and simulated fleet are shared by everything in the
state directory, so two commands driving runs in one directory at once corrupt each other (the
clock jumps to the other run's times). A command that writes takes this lock first and holds it
to its end; a second one waits a few seconds, then is told who holds it. The holder writes its
pid and command line into the lock file, for that message; the kernel releases the lock when the
holder's process ends, however it ends, so a stale file never blocks anyone.

Reading needs no lock: SQLite gives every read transaction a consistent snapshot.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = "lock"
POLL_SECONDS = 0.1


class StateDirLockedError(Exception):
    """Another process holds the state directory's lock; `holder` says which (pid and command)."""

    def __init__(self, path: Path, holder: str, waited: float) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"in use by {holder} (waited {waited:g}s)")


@contextmanager
def state_lock(state_dir: Path, command: str, wait: float) -> Iterator[None]:
    """Hold the lock of `state_dir` (an existing directory) for the block, waiting up to `wait`
    seconds for another holder to finish; raises `StateDirLockedError` naming that holder."""
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateDirLockedError(path, _holder(fd), wait) from None
                time.sleep(POLL_SECONDS)
        holder = {"pid": os.getpid(), "command": command, "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # still holding the lock: nobody reads a half-cleared file
    finally:
        os.close(fd)  # releases the lock


def lock_holder(state_dir: Path) -> str | None:
    """Who holds the lock of `state_dir` at this moment (`pid 123 (patchpilot run …, since …)`),
    or None when nobody does. Looks only: creates nothing and waits for nothing (a writer that
    tries at the same instant finds it busy for that instant, and tries again)."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: no command ever wrote here
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return None


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it: `pid 123 (patchpilot run …, since …)`."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(holder['pid'])} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "another process"
