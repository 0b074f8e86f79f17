"""Key Vault secrets through the real SecretClient, with a fake vault behind its HTTP transport:
the authentication challenge, cached reads, and no value ever shown in errors, logs or repr.

`FakeVault` models what secrets/get does: a request without a token is answered 401 with the
challenge (``WWW-Authenticate: Bearer authorization=..., resource=...``), after which the SDK
asks the credential for a token for the vault's resource and sends the request again; a known
secret is 200 with its value, an unknown one 404 SecretNotFound, a disabled one 403."""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
from azure.core.pipeline.transport import RequestsTransport
from azure.keyvault.secrets import SecretClient
from fake_arm import FakeCredential

from patchpilot.adapters.azure.secrets import KeyVaultSecrets, SecretUnavailableError

VAULT = "https://patchpilot-kv.vault.azure.net"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/very-secret-token"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'


@dataclass
class FakeVault(requests.adapters.BaseAdapter):
    secrets: dict[str, str] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, with the token

    def __post_init__(self) -> None:
        super().__init__()

    def reads(self, name: str) -> int:
        """Authorized reads of the secret `name`."""
        return sum(1 for method, path, token in self.calls if token and path.rstrip("/") == f"/secrets/{name}")

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        path = urlsplit(request.url or "").path
        token = request.headers.get("Authorization") == "Bearer fake-token"
        self.calls.append((request.method or "", path, token))
        if not token:
            return _response(401, {"error": {"code": "Unauthorized", "message": "No token."}}, CHALLENGE)
        found = re.fullmatch(r"/secrets/([0-9A-Za-z-]+)/?", path)
        if request.method != "GET" or found is None:
            return _response(400, {"error": {"code": "BadParameter", "message": f"the fake models no {path}"}})
        name = found.group(1)
        if name in self.disabled:
            error = {"code": "Forbidden", "message": "Operation get is not allowed on a disabled secret."}
            return _response(403, {"error": {**error, "innererror": {"code": "SecretDisabled"}}})
        if name not in self.secrets:
            message = f"A secret with (name/id) {name} was not found in this key vault."
            return _response(404, {"error": {"code": "SecretNotFound", "message": message}})
        return _response(
            200,
            {
                "value": self.secrets[name],
                "id": f"{VAULT}/secrets/{name}/0123456789abcdef0123456789abcdef",
                "attributes": {"enabled": True, "created": 1735689600, "updated": 1735689600},
            },
        )

    def close(self) -> None:
        pass


def _response(status: int, body: Any, challenge: str | None = None) -> requests.Response:
    content = json.dumps(body).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(content))}
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(content), headers=headers, status=status, preload_content=False)
    return response


@pytest.fixture
def vault() -> FakeVault:
    return FakeVault(secrets={"slack-webhook": WEBHOOK, "teams-webhook": "https://example.invalid/teams"})


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def client(vault: FakeVault, credential: FakeCredential) -> SecretClient:
    session = requests.Session()
    session.mount(VAULT, vault)
    transport = RequestsTransport(session=session, session_owner=False)
    return SecretClient(VAULT, credential, transport=transport, retry_total=0)


def test_a_secret_is_read_once_after_the_challenge_and_then_served_from_the_cache(
    client: SecretClient, vault: FakeVault, credential: FakeCredential
) -> None:
    secrets = KeyVaultSecrets(client)

    assert secrets.get("slack-webhook") == WEBHOOK
    assert secrets.get("slack-webhook") == WEBHOOK

    assert vault.calls[0][2] is False  # the challenge
    assert vault.reads("slack-webhook") == 1
    assert credential.requests == 1


def test_a_max_age_of_zero_reads_every_time(client: SecretClient, vault: FakeVault) -> None:
    secrets = KeyVaultSecrets(client, max_age=timedelta(0))
    secrets.get("slack-webhook")
    vault.secrets["slack-webhook"] = WEBHOOK + "-rotated"

    assert secrets.get("slack-webhook") == WEBHOOK + "-rotated"
    assert vault.reads("slack-webhook") == 2


def test_a_missing_secret_raises_a_clear_error_without_leaking_anything(
    client: SecretClient, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = KeyVaultSecrets(client)
    caplog.set_level(logging.DEBUG, logger="patchpilot")
    caplog.set_level(logging.DEBUG, logger="azure")
    secrets.get("slack-webhook")

    with pytest.raises(SecretUnavailableError, match=f"secret 'missing' in {VAULT}/? does not exist") as raised:
        secrets.get("missing")

    assert WEBHOOK not in str(raised.value)
    assert WEBHOOK not in repr(secrets)
    assert WEBHOOK not in caplog.text
    assert "slack-webhook" in caplog.text  # the SDK's request log was captured, without the value


def test_a_disabled_secret_is_unavailable_with_the_vaults_reason(client: SecretClient, vault: FakeVault) -> None:
    vault.disabled.add("teams-webhook")

    with pytest.raises(SecretUnavailableError, match=r"could not be read: .*not allowed on a disabled secret"):
        KeyVaultSecrets(client).get("teams-webhook")


def test_a_name_key_vault_cannot_hold_is_refused_without_a_request(client: SecretClient, vault: FakeVault) -> None:
    with pytest.raises(SecretUnavailableError, match="'patchpilot/slack' is not a Key Vault secret name"):
        KeyVaultSecrets(client).get("patchpilot/slack")

    assert vault.calls == []
