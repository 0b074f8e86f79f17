"""boto3 sessions and clients for a fleet that spans accounts and regions.

One boto3 `Session` per (account, region): boto3 sessions are cheap but not thread-safe, and a
session per placement keeps the credentials of different accounts apart. An account listed with
a role is reached by STS AssumeRole (session name "patchpilot"); its temporary credentials are
cached per account and renewed a few minutes before they expire. Any other account, and the
account `None`, use the ambient credentials (the Lambda's role, the CLI profile). The roles are
given as a mapping, or found on an account's first use by `role_of` (the member role of an
organization's account, `adapters/aws/accounts.py` `member_role`) and kept for the session's life.

Every client is built with adaptive retries (client-side rate limiting plus up to 10 attempts),
so throttling (`RequestLimitExceeded`, `ThrottlingException`) is absorbed by botocore and the
adapters contain no retry loops of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import boto3
from botocore.config import Config

ROLE_SESSION_NAME = "patchpilot"
RENEW_BEFORE = timedelta(minutes=5)


def client_config() -> Config:
    """The botocore configuration of every PatchPilot client."""
    return Config(retries={"mode": "adaptive", "max_attempts": 10}, user_agent_extra="patchpilot")


class ClientFactory(Protocol):
    """Builds (or returns a cached) boto3 client for a service in an account and region.

    `account` None means the ambient credentials. Tests pass a function returning moto-backed
    or Stubber-wrapped clients."""

    def __call__(self, service: str, account: str | None, region: str) -> Any: ...


class _Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str
    expires: datetime


class AwsSessions:
    """The default `ClientFactory`: sessions per (account, region), roles assumed per account."""

    def __init__(
        self,
        roles: Mapping[str, str | None] | None = None,
        *,
        role_of: Callable[[str], str | None] | None = None,
        base: boto3.Session | None = None,
        sts_region: str | None = None,
        config: Config | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`roles` maps an account id to the role ARN assumed in it (None: ambient credentials);
        `role_of` answers for the accounts `roles` does not name, once per account (it may build
        clients of the account None through this factory: it is called outside the lock)."""
        self._roles: dict[str, str | None] = dict(roles or {})
        self._role_of = role_of
        self._given = base
        self._base = base or boto3.Session()
        self._sts_region = sts_region or self._base.region_name or "us-east-1"
        self._config = config or client_config()
        self._now = now
        self._lock = threading.Lock()
        self._credentials: dict[str, _Credentials] = {}
        self._sessions: dict[tuple[str | None, str], boto3.Session] = {}
        self._clients: dict[tuple[str, str | None, str], Any] = {}

    def __call__(self, service: str, account: str | None, region: str) -> Any:
        return self.client(service, account, region)

    def client(self, service: str, account: str | None, region: str) -> Any:
        role_account = account if account is not None and self._role(account) else None
        with self._lock:
            if role_account is not None:
                self._renew(role_account)
            key = (service, role_account, region)
            client = self._clients.get(key)
            if client is None:
                session = self._session(role_account, region)
                client = session.client(service, region_name=region, config=self._config)  # type: ignore[call-overload]
                self._clients[key] = client
            return client

    def _role(self, account: str) -> str | None:
        if account not in self._roles:
            # Two threads may both ask `role_of` for a new account: the answers are the same.
            self._roles[account] = self._role_of(account) if self._role_of is not None else None
        return self._roles[account]

    def _session(self, account: str | None, region: str) -> boto3.Session:
        session = self._sessions.get((account, region))
        if session is not None:
            return session
        if account is None:
            # A given base session (a named profile, tests) is shared; regions are set per client.
            session = self._given or boto3.Session(region_name=region)
        else:
            creds = self._credentials[account]
            session = boto3.Session(
                aws_access_key_id=creds.access_key,
                aws_secret_access_key=creds.secret_key,
                aws_session_token=creds.token,
                region_name=region,
            )
        self._sessions[(account, region)] = session
        return session

    def _renew(self, account: str) -> None:
        """Assume the account's role unless cached credentials are still good for a while;
        renewed credentials drop the account's sessions and clients."""
        cached = self._credentials.get(account)
        if cached is not None and cached.expires - RENEW_BEFORE > self._now():
            return
        sts = self._base.client("sts", region_name=self._sts_region, config=self._config)
        role = self._roles[account]
        assert role is not None  # only accounts with a role are renewed
        answer = sts.assume_role(RoleArn=role, RoleSessionName=ROLE_SESSION_NAME)
        creds = answer["Credentials"]
        self._credentials[account] = _Credentials(
            access_key=creds["AccessKeyId"],
            secret_key=creds["SecretAccessKey"],
            token=creds["SessionToken"],
            expires=creds["Expiration"],
        )
        self._sessions = {key: value for key, value in self._sessions.items() if key[0] != account}
        self._clients = {key: value for key, value in self._clients.items() if key[1] != account}
