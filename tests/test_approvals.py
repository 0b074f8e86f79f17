"""Signed approval links: accepted when genuine and fresh, refused otherwise."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest

from patchpilot.approvals import ApprovalLinkError, ApprovalRequest, sign_approval, verify_approval

SECRET = "s3cr3t-for-tests"
REQUEST = ApprovalRequest("monthly-20261212-0200", "production")


def test_a_genuine_link_names_the_run_and_ring() -> None:
    assert verify_approval(sign_approval(REQUEST, SECRET), SECRET) == REQUEST


def test_a_tampered_link_is_refused() -> None:
    token = sign_approval(REQUEST, SECRET)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(ApprovalLinkError, match="not valid"):
        verify_approval(forged, SECRET)


def test_a_link_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(ApprovalLinkError, match="not valid"):
        verify_approval(sign_approval(REQUEST, "other"), SECRET)


def test_an_expired_link_is_refused() -> None:
    token = sign_approval(REQUEST, SECRET)
    later = 10**10  # far in the future
    with (
        mock.patch("itsdangerous.timed.time.time", return_value=later),
        pytest.raises(ApprovalLinkError, match="expired"),
    ):
        verify_approval(token, SECRET, lifetime=timedelta(hours=1))
