"""Secrets for the notifier: from the environment the runtime passes in (the local runtime: a
channel's `webhook: patchpilot-notifications-ops` reads the variable of that name, or, since shells
allow no dashes, `PATCHPILOT_NOTIFICATIONS_OPS`), and a lazy wrapper that builds the cloud's secret
store only when a notice is routed. Values are never logged nor shown by `repr`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from patchpilot.ports import Secrets, SecretUnavailableError


class EnvironmentSecrets:
    """`Secrets` from environment variables: the mapping the runtime passes (`os.environ` locally;
    any mapping in tests). It is read at each `get`, so a variable set later is seen."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str:
        variable = environment_name(name)
        value = (self._environ.get(name) or self._environ.get(variable) or "").strip()
        if not value:
            raise SecretUnavailableError(f"environment variable {variable!r} is not set")
        return value

    def __repr__(self) -> str:
        return "EnvironmentSecrets()"


class LazySecrets:
    """`Secrets` built on first use (Secrets Manager, Key Vault): most invocations send no notice,
    and a cold start should not pay for the client. `build` returns None when none is configured."""

    def __init__(self, build: Callable[[], Secrets | None]) -> None:
        self._build = build

    def get(self, name: str) -> str:
        store = self._build()
        if store is None:
            raise SecretUnavailableError(f"no secret store is configured to read {name!r}")
        return store.get(name)


def environment_name(secret: str) -> str:
    """The environment variable that holds a secret locally: `patchpilot-notifications-ops` ->
    `PATCHPILOT_NOTIFICATIONS_OPS`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", secret).strip("_").upper()
