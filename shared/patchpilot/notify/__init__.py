"""Slack and Teams notifications: a neutral card per notice (`messages`), rendered for each
platform (`slack`, `teams`), routed by the policy (`routing`). See docs/notifications.md."""

from __future__ import annotations

from patchpilot.notify.messages import Card, card_for
from patchpilot.notify.routing import EveryNotifier, RoutedNotifier, Undelivered, channels_for
from patchpilot.notify.secrets import EnvironmentSecrets, LazySecrets

__all__ = [
    "Card",
    "EnvironmentSecrets",
    "EveryNotifier",
    "LazySecrets",
    "RoutedNotifier",
    "Undelivered",
    "card_for",
    "channels_for",
]
