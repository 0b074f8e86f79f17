"""AWS Lambda handlers: thin shims over `patchpilot.bootstrap.aws` (see template.yaml).

Cold starts: this package loads before any handler module, and pauses the garbage collector
(`patchpilot.loading`) until the handler module calls `loaded()` at its end.
"""

from patchpilot.loading import loaded

__all__ = ["loaded"]
