"""Secrets on AWS: Secrets Manager through powertools' `SecretsProvider`, which caches each
value for `max_age` (per warm Lambda container) so a webhook URL is not fetched per message.

Values are never logged, never put in exception texts and never shown by `repr`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from patchpilot.ports import Secrets, SecretUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager.client import SecretsManagerClient

DEFAULT_MAX_AGE = timedelta(minutes=5)
__all__ = ["SecretUnavailableError", "Secrets", "SecretsManagerSecrets"]


class SecretsManagerSecrets:
    """`Secrets` from AWS Secrets Manager, cached for `max_age`."""

    def __init__(self, client: SecretsManagerClient, max_age: timedelta = DEFAULT_MAX_AGE) -> None:
        self._provider = SecretsProvider(boto3_client=client)
        self._max_age = int(max_age.total_seconds())

    def get(self, name: str) -> str:
        """The current value of the secret `name` (its id or ARN): SecretString, or a UTF-8
        SecretBinary."""
        try:
            value = self._provider.get(name, max_age=self._max_age)
        except GetParameterError as error:
            # The SDK's message names the secret and the failure, never the value.
            raise SecretUnavailableError(f"secret {name!r} could not be read: {error}") from None
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise SecretUnavailableError(f"secret {name!r} is binary, not UTF-8 text") from None
        if not isinstance(value, str):
            raise SecretUnavailableError(f"secret {name!r} is not text")
        return value

    def __repr__(self) -> str:
        return f"SecretsManagerSecrets(max_age={self._max_age}s)"
