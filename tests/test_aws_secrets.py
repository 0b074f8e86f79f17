"""Secrets Manager secrets on moto: cached reads, text and binary values, and no value ever
shown in errors, logs or repr."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto_support import REGION, aws, record

from patchpilot.adapters.aws.secrets import Secrets, SecretsManagerSecrets, SecretUnavailableError

WEBHOOK = "https://hooks.slack.com/services/T000/B000/very-secret-token"


@pytest.fixture
def client() -> Iterator[Any]:
    with aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        client.create_secret(Name="patchpilot/slack", SecretString=WEBHOOK)
        client.create_secret(Name="patchpilot/binary", SecretBinary="ünïcode".encode())
        client.create_secret(Name="patchpilot/raw", SecretBinary=b"\xff\xfe")
        yield client


def test_a_secret_is_read_once_and_then_served_from_the_cache(client: Any) -> None:
    secrets: Secrets = SecretsManagerSecrets(client)
    calls = record(client, "GetSecretValue")

    assert secrets.get("patchpilot/slack") == WEBHOOK
    assert secrets.get("patchpilot/slack") == WEBHOOK

    assert len(calls.of("GetSecretValue")) == 1


def test_a_max_age_of_zero_reads_every_time(client: Any) -> None:
    from datetime import timedelta

    secrets = SecretsManagerSecrets(client, max_age=timedelta(0))
    calls = record(client, "GetSecretValue")
    secrets.get("patchpilot/slack")
    client.put_secret_value(SecretId="patchpilot/slack", SecretString=WEBHOOK + "-rotated")

    assert secrets.get("patchpilot/slack") == WEBHOOK + "-rotated"
    assert len(calls.of("GetSecretValue")) == 2


def test_a_binary_secret_is_returned_as_text_when_it_is_utf8(client: Any) -> None:
    secrets = SecretsManagerSecrets(client)
    assert secrets.get("patchpilot/binary") == "ünïcode"
    with pytest.raises(SecretUnavailableError, match="not UTF-8"):
        secrets.get("patchpilot/raw")


def test_a_missing_secret_raises_without_leaking_anything(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    secrets = SecretsManagerSecrets(client)
    # Ours and powertools' loggers; botocore's DEBUG log prints response bodies, secrets
    # included, and must stay above DEBUG wherever secrets are read.
    caplog.set_level(logging.DEBUG, logger="patchpilot")
    caplog.set_level(logging.DEBUG, logger="aws_lambda_powertools")
    secrets.get("patchpilot/slack")

    with pytest.raises(SecretUnavailableError, match="patchpilot/missing") as raised:
        secrets.get("patchpilot/missing")

    assert WEBHOOK not in str(raised.value)
    assert WEBHOOK not in repr(secrets)
    assert WEBHOOK not in caplog.text
