"""Secrets on Azure: Key Vault through the SDK's `SecretClient`, each value cached for `max_age`
(per warm Functions instance) so a webhook URL is not fetched per message.

Values are never logged, never put in exception texts and never shown by `repr`. The identity
needs the data-plane role Key Vault Secrets User (secrets/get) on the vault.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from patchpilot.ports import SecretUnavailableError

DEFAULT_MAX_AGE = timedelta(minutes=5)
__all__ = ["KeyVaultSecrets", "SecretUnavailableError"]
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class KeyVaultSecrets:
    """`Secrets` from the Key Vault of `client`, cached for `max_age`."""

    def __init__(self, client: SecretClient, max_age: timedelta = DEFAULT_MAX_AGE) -> None:
        self._client = client
        self._max_age = max_age.total_seconds()
        self._cache: dict[str, tuple[float, str]] = {}  # name -> (monotonic time read, value)

    def get(self, name: str) -> str:
        """The current value of the secret `name` (its latest version)."""
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        if not _SECRET_NAME.match(name):
            raise SecretUnavailableError(f"{name!r} is not a Key Vault secret name (1-127 letters, digits and dashes)")
        where = f"secret {name!r} in {self._client.vault_url}"
        try:
            secret = self._client.get_secret(name)
        except ResourceNotFoundError:
            raise SecretUnavailableError(f"{where} does not exist") from None
        except AzureError as error:
            # The service's message names the failure (forbidden, disabled), never the value.
            raise SecretUnavailableError(f"{where} could not be read: {error.message}") from None
        if secret.value is None:
            raise SecretUnavailableError(f"{where} has no value")
        self._cache[name] = (time.monotonic(), secret.value)
        return secret.value

    def __repr__(self) -> str:
        return f"KeyVaultSecrets({self._client.vault_url!r}, max_age={self._max_age:g}s)"
