"""What the cloud fleets' health checks share (no cloud SDK here): the HTTP check and the
templates a policy's checks are written in.

An HTTP check is a request PatchPilot makes from inside the fleet's network to an address built
from what the fleet reports, so both halves are bounded:

- `fill_url` puts only DNS labels and IP addresses into a URL, percent-encoded: a machine named
  ``x/../admin?`` or ``evil.com#`` cannot change the URL's host or path; its check fails instead.
- `urllib_get` speaks http and https only, follows a redirect only to the same host and port,
  waits at most `MAX_TIMEOUT` seconds per socket operation whatever it is asked, and reads no
  response body (urllib would read a redirect's body whole; it is dropped unread here). Headers
  are bounded by `http.client` (at most 100 lines of at most 64 KiB).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPMessage
from typing import IO, NamedTuple

from patchpilot.inventory import Instance
from patchpilot.policy.fields import HEALTH_URL_PLACEHOLDER, HEALTH_URL_SCHEMES

HttpGet = Callable[[str, float], int]  # (url, timeout seconds) -> HTTP status; raises on no answer


class HttpProbe(NamedTuple):
    """How a fleet makes the policy's HTTP checks: the GET and its timeout in seconds."""

    get: HttpGet
    timeout: float


MAX_TIMEOUT = 10.0  # seconds: the most a check waits on a socket, whatever timeout it is given
MAX_REDIRECTS = 5
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123 host name label


class UnsafeUrlValueError(ValueError):
    """A value that cannot go into a health-check URL: not a DNS label nor an IP address."""


class RedirectRefusedError(urllib.error.URLError):
    """A health check answered with a redirect to another host or port: not followed."""


def fill(template: str, instance: Instance, private_ip: str) -> str:
    """An alarm name with {name}, {id} and {private_ip} filled in for one instance, as they are
    (alarm names are looked up by exact name, never parsed)."""
    return (
        template.replace("{name}", instance.name or instance.short_name)
        .replace("{id}", instance.id)
        .replace("{private_ip}", private_ip)
    )


def fill_url(template: str, instance: Instance, private_ip: str) -> str:
    """A check's URL with {name}, {id} and {private_ip} filled in for one instance, in one pass.
    Each value must be a DNS label (letters, digits, inner hyphens, at most 63) or an IP
    address, and is percent-encoded; UnsafeUrlValueError names the value otherwise."""
    values = {
        "name": ("instance name", instance.name or instance.short_name),
        "id": ("instance id", instance.id),
        "private_ip": ("private IP", private_ip),
    }

    def value(match: re.Match[str]) -> str:
        what, text = values[match.group(1)]
        return _url_safe(what, text, instance.id)

    return HEALTH_URL_PLACEHOLDER.sub(value, template)


def _url_safe(what: str, text: str, instance_id: str) -> str:
    if not _LABEL.fullmatch(text):
        try:
            ipaddress.ip_address(text)
        except ValueError:
            shown = f'"{text[:80]}"' if text else "empty"
            raise UnsafeUrlValueError(
                f"{what} {shown} of {instance_id} is not a DNS label or an IP address: "
                "it cannot go into a health-check URL"
            ) from None
    return urllib.parse.quote(text, safe=":")  # a no-op for a label; keeps an IPv6 address whole


def urllib_get(url: str, timeout: float) -> int:
    """The default `HttpGet`: the status of a plain GET, within the bounds of this module."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in HEALTH_URL_SCHEMES:
        raise ValueError(f"{url}: only http and https health checks are made, not {scheme or 'no scheme'}")
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "patchpilot-health-check"})
    try:
        with _opener().open(request, timeout=min(timeout, MAX_TIMEOUT)) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    """urllib's machinery with http and https only (no file:, ftp: or data:), the proxies of the
    environment as before, and redirects to the same host only."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _SameHostRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        fp.close()  # urllib would read the redirect's body to its end, however long
        if _origin(newurl) != _origin(req.full_url):
            raise RedirectRefusedError(f"redirect ({code}) to {newurl[:200]} not followed: another host or port")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # not a port number
        port = -1
    return scheme, parts.hostname, port
