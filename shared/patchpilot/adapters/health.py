"""What the cloud fleets' health checks share (no cloud SDK here): the HTTP check and the
templates a policy's checks are written in."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

from patchpilot.inventory import Instance

HttpGet = Callable[[str, float], int]  # (url, timeout seconds) -> HTTP status; raises on no answer


def urllib_get(url: str, timeout: float) -> int:
    """The default `HttpGet`: the status of a plain GET (redirects followed)."""
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "patchpilot-health-check"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def fill(template: str, instance: Instance, private_ip: str) -> str:
    """A check's URL or alarm name with {name}, {id} and {private_ip} filled in for one instance."""
    return (
        template.replace("{name}", instance.name or instance.short_name)
        .replace("{id}", instance.id)
        .replace("{private_ip}", private_ip)
    )
