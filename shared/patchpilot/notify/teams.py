"""A card as a Microsoft Teams Workflows webhook message: an Adaptive Card, version 1.5 (the
highest Teams renders), in the envelope the "When a Teams webhook request is received" trigger
takes, at most 28 KB on the wire (msteams-docs: add-incoming-webhook). The old Office 365
connectors are retired; their MessageCard format is not used."""

from __future__ import annotations

import json
from typing import Any

from patchpilot.notify.messages import Card, shorten, summarise
from patchpilot.policy.model import TeamsMention

CARD_VERSION = "1.5"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_BYTES = 28_000  # 28 KB, with room for the transport's own framing
TEXT_LIMIT = 4000
LIST_LIMIT = 12_000
MAX_LIST_ITEMS = 200
COLOURS = {"info": "Default", "warning": "Warning", "error": "Attention"}


def wire_size(payload: dict[str, Any]) -> int:
    """Bytes as posted (the webhook client serialises with json.dumps' defaults)."""
    return len(json.dumps(payload).encode("utf-8"))


def teams_message(card: Card, mention: TeamsMention | None = None) -> dict[str, Any]:
    """The webhook body; `mention` leads failures and halts. Texts and the list shrink together
    until the message fits MAX_BYTES (non-ASCII text grows when escaped)."""
    text_limit, list_limit = TEXT_LIMIT, LIST_LIMIT
    while True:
        payload = _message(card, mention if card.alert else None, text_limit, list_limit)
        if wire_size(payload) <= MAX_BYTES or list_limit < 100:
            return payload
        text_limit, list_limit = text_limit // 2, list_limit // 2


def _message(card: Card, mention: TeamsMention | None, text_limit: int, list_limit: int) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": shorten(card.title, 200, " …"),
            "style": "heading",
            "weight": "Bolder",
            "size": "Medium",
            "color": COLOURS[card.severity],
            "wrap": True,
        }
    ]
    content: dict[str, Any] = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": CARD_VERSION}
    msteams: dict[str, Any] = {"width": "Full"}
    if mention is not None:
        tag = f"<at>{mention.name}</at>"
        body.append({"type": "TextBlock", "text": f"{tag}: on-call, please look", "wrap": True})
        msteams["entities"] = [{"type": "mention", "text": tag, "mentioned": {"id": mention.id, "name": mention.name}}]
    body.append({"type": "TextBlock", "text": shorten(card.text, text_limit), "wrap": True})
    if card.facts:
        facts = [{"title": label, "value": shorten(value, 500, " …")} for label, value in card.facts]
        body.append({"type": "FactSet", "facts": facts})
    if card.items:
        lines = summarise(card.items, MAX_LIST_ITEMS, list_limit)
        body.append({"type": "TextBlock", "text": card.items_label, "weight": "Bolder", "wrap": True})
        body.append({"type": "TextBlock", "text": "\n".join(f"- {line}" for line in lines), "wrap": True})
    context = f"PatchPilot · {card.topic.replace('_', ' ')} · {card.severity} · notice {card.notice_id}"
    body.append({"type": "TextBlock", "text": context, "size": "Small", "isSubtle": True, "wrap": True})
    content["body"] = body
    if card.links:
        content["actions"] = [{"type": "Action.OpenUrl", "title": label, "url": url} for label, url in card.links]
    content["msteams"] = msteams
    attachment = {"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": content}
    return {"type": "message", "attachments": [attachment]}


def delivered(status: int, body: str) -> bool:
    """The Workflows trigger answers 202 Accepted (200 from some flows); a post it accepted can
    still fail inside the flow, which only its run history shows."""
    return status in (200, 202)
