"""Secrets kept out of every text PatchPilot writes down: error reasons, logs, run records,
reports and notices.

`redact(text, secrets)` replaces

- anything shaped like a Slack or Teams webhook: `hooks.slack.com/services/…`,
  `hooks.slack.com/workflows/…`, `*.logic.azure.com…`, `*.webhook.office.com/…`,
  `*.environment.api.powerplatform.com…`, with or without the scheme, cut short, with whitespace
  around its dots and slashes (a wrapped line), JSON-escaped (`\\/`) or URL-encoded;
- the value of a `token=`, `code=` or `sig=` parameter (approval tokens, Azure function keys,
  Workflows signatures);
- any run of 12 or more characters of a known secret value, even with whitespace inside or
  URL-encoded.

A known secret shorter than 12 characters is matched whole. `Redactor` collects the secrets a
process has read (the routed notifier adds each webhook URL it reads, the approval links each token
they sign) and `RedactingFilter` applies it to the records of the `patchpilot` loggers. Of a URL,
the part after the host is the secret (a host alone is no secret, and other URLs share it); a URL
whose path and query are shorter than 12 characters is matched whole only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

WEBHOOK = "<webhook URL>"
SECRET = "<secret>"
MIN_RUN = 12  # the shortest piece of a secret that is recognised as one

_DOT = r"\s*\.\s*"
_SLASH = r"\s*\\?/\s*"
_SCHEME = r"(?:https?:\s*(?:\\?/){2}\s*)?"
# The host's leading labels, from the start of the name only (a scan from every label of a long
# dotted text would be quadratic), without whitespace.
_LABELS = r"(?:(?<![A-Za-z0-9.-])(?:[A-Za-z0-9-]+\.)+)?"
# The rest of a URL: its characters; whitespace only around / ? & = (where a line is wrapped).
_TAIL = r"(?:\s*(?:\\?/|[?&=])\s*|[A-Za-z0-9_\-.~%+:#;,@!$'()*])*"
_SHAPES = [
    # Slack: incoming webhooks and Workflow Builder triggers, or their path alone
    rf"{_SCHEME}(?:hooks{_DOT})?slack{_DOT}com{_SLASH}(?:services|workflows|triggers)\b{_TAIL}",
    rf"\b(?:services|workflows){_SLASH}T[A-Z0-9]{{6,}}{_SLASH}[AB][A-Z0-9]{{6,}}{_TAIL}",
    # Teams: Power Automate / Logic Apps Workflows triggers, and the retired connectors
    rf"{_SCHEME}{_LABELS}logic{_DOT}azure{_DOT}com{_TAIL}",
    rf"{_SCHEME}{_LABELS}webhook{_DOT}office{_DOT}com{_TAIL}",
    rf"{_SCHEME}{_LABELS}environment{_DOT}api{_DOT}powerplatform{_DOT}com{_TAIL}",
]
WEBHOOK_SHAPE = re.compile("|".join(f"(?:{shape})" for shape in _SHAPES), re.IGNORECASE)
# token=… (approval links), code=… (Azure function keys), sig=… (Workflows signatures)
SECRET_PARAMETER = re.compile(r"\b(token|code|sig)(\s*=\s*)[^\s&\"'<>]+", re.IGNORECASE)
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


def redact(text: str, secrets: Iterable[str] = (), whole: Iterable[str] = ()) -> str:
    """`text` with webhook URLs, secret parameters and pieces of `secrets` (`whole`: only these
    values whole) replaced (see the module)."""
    exact = _variants(whole)
    for value in exact:
        text = text.replace(value, SECRET)
    known = _variants(secrets)
    plain = _redact_plain(text, known)
    decoded = text
    for _ in range(3):  # URL-encoded, perhaps twice
        if not _ENCODED.search(decoded):
            break
        decoded = unquote(decoded)
    if decoded == text:
        return plain
    cleaned = _redact_plain(decoded, known)
    return cleaned if cleaned != decoded else plain


def _variants(secrets: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for secret in secrets:
        secret = secret.strip()
        if secret:
            found.update({secret, quote(secret, safe=""), quote(secret)})
    return sorted(found, key=len, reverse=True)


def _redact_plain(text: str, secrets: list[str]) -> str:
    text = WEBHOOK_SHAPE.sub(WEBHOOK, text)
    text = SECRET_PARAMETER.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    return _redact_runs(text, secrets)


def _redact_runs(text: str, secrets: list[str]) -> str:
    """Every run of at least MIN_RUN characters (whitespace inside ignored) of a secret, or a
    shorter secret whole."""
    if not secrets:
        return text
    positions = [i for i, char in enumerate(text) if not char.isspace()]
    compact = "".join(text[i] for i in positions)
    covered = [False] * len(text)
    for secret in secrets:
        size = min(MIN_RUN, len(secret))
        pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
        for start in range(len(compact) - size + 1):
            if compact[start : start + size] in pieces:
                for i in range(positions[start], positions[start + size - 1] + 1):
                    covered[i] = True
    if not any(covered):
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not covered[i]:
            out.append(char)
        elif i == 0 or not covered[i - 1]:
            out.append(SECRET)
    return "".join(out)


class Redactor:
    """The secret values one process has read, and `redact` with them. Values are never shown
    by `repr`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._whole: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        secret = secret.strip()
        if not secret:
            return
        parts = urlsplit(secret) if "://" in secret else None
        if parts is None or not parts.netloc:
            self._secrets.add(secret)
            return
        tail = secret.split(parts.netloc, 1)[1]
        if len(tail) >= MIN_RUN:
            self._secrets.add(tail)
        else:
            self._whole.add(secret)

    def __call__(self, text: str) -> str:
        return redact(text, self._secrets, self._whole)

    def clear(self) -> None:
        """Forget every secret (tests: each starts as a fresh process would)."""
        self._secrets.clear()
        self._whole.clear()

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets) + len(self._whole)} secrets)"


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in) and its string `reason` through a
    `Redactor`; every record passes."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        reason = getattr(record, "reason", None)
        if isinstance(reason, str):
            record.reason = self.redactor(reason)
        return True


PROCESS_SECRETS = Redactor()  # the secrets this process has read (the routed notifier adds them)
LOGGERS = ("patchpilot", "patchpilot.notify", "patchpilot.approvals", "patchpilot.maintenance")


def install_filter(redactor: Redactor = PROCESS_SECRETS, names: Iterable[str] = LOGGERS) -> None:
    """A `RedactingFilter` on each named logger (a logger's filters do not apply to its children,
    hence the list), once per logger and redactor."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) and f.redactor is redactor for f in logger.filters):
            logger.addFilter(RedactingFilter(redactor))
