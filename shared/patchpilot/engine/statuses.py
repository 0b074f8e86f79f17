"""A run's status words: light to import (the CLI's options name them; tests/test_cli_imports.py)."""

from typing import Literal

# succeeded_with_failures: every wave finished within max_failures, but at least one machine is
# left `failed` (its rollback failed, or it is still unhealthy after it): restore it by hand.
# nothing_patched: every wave finished, but no machine was patched (an empty inventory, a first
# ring that selected or patched nothing): the fleet is as exposed as before. A machine that was
# up to date is `patched` with nothing installed, so such a run still succeeds.
TerminalState = Literal["succeeded", "succeeded_with_failures", "nothing_patched", "halted", "incomplete"]
Status = Literal["running", "waiting_approval", TerminalState]
