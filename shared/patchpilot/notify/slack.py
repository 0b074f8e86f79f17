"""A card as a Slack incoming-webhook message: Block Kit built with slack_sdk's models (their
`to_dict` checks Slack's limits), within the limits of docs.slack.dev/reference/block-kit/blocks:
at most 50 blocks, a header of 150 characters, section texts of 3000, fields of 2000, at most 10
fields and 25 buttons; the top-level `text` is the notification's fallback."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from patchpilot.notify.messages import Card, shorten, summarise

MAX_BLOCKS = 50
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
FALLBACK_LIMIT = 3000
MAX_LIST_ITEMS = 100
SEVERITY_MARK = {"info": ":information_source:", "warning": ":warning:", "error": ":rotating_light:"}
BROADCASTS = {"@here": "<!here>", "@channel": "<!channel>"}


def escape(text: str) -> str:
    """Slack mrkdwn control characters (docs.slack.dev: formatting, escaping text)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(card: Card, mention: str | None = None) -> dict[str, Any]:
    """The webhook body {text, blocks}; `mention` ("<!subteam^ID>", "<!here>") leads failures and halts."""
    ping = BROADCASTS.get(mention, mention) if (mention and card.alert) else None
    lead = f"{ping} " if ping else ""
    text = f"{SEVERITY_MARK[card.severity]} {lead}{escape(card.text)}"
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=shorten(card.title, HEADER_LIMIT, " …"))),
        SectionBlock(text=MarkdownTextObject(text=shorten(text, SECTION_LIMIT))),
    ]
    fields = [
        MarkdownTextObject(text=shorten(f"*{escape(label)}*\n{escape(value)}", FIELD_LIMIT, " …"))
        for label, value in card.facts[:MAX_FIELDS]
    ]
    if fields:
        blocks.append(SectionBlock(fields=fields))
    if card.items:
        heading = f"*{escape(card.items_label)}*\n"
        escaped = tuple(escape(item) for item in card.items)  # escaped first: escaping lengthens
        lines = summarise(escaped, MAX_LIST_ITEMS, SECTION_LIMIT - len(heading))
        blocks.append(SectionBlock(text=MarkdownTextObject(text=heading + "\n".join(lines))))
    if card.links:
        buttons = [_button(index, label, url) for index, (label, url) in enumerate(card.links)]
        blocks.append(ActionsBlock(elements=buttons))
    context = f"PatchPilot · {card.topic.replace('_', ' ')} · {card.severity} · notice `{escape(card.notice_id)}`"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=shorten(context, SECTION_LIMIT, " …"))]))
    assert len(blocks) <= MAX_BLOCKS  # a card has at most 6 blocks: long lists are summarised, not split
    fallback = shorten(f"{lead}{escape(card.title)}: {escape(card.text)}", FALLBACK_LIMIT)
    return {"text": fallback, "blocks": [block.to_dict() for block in blocks]}


def _button(index: int, label: str, url: str) -> ButtonElement:
    """A link as a button. Approve and Reject links carry a signed token: their buttons are
    interactive (the app's interactivity endpoint verifies the press, patchpilot.chat_approvals)
    and carry the token; any other link opens its page."""
    token = parse_qs(urlsplit(url).query).get("token", [""])[0]
    if label in ("Approve", "Reject") and token:
        style = "primary" if label == "Approve" else "danger"
        return ButtonElement(text=label, action_id=f"patchpilot_{label.lower()}", value=token, style=style)
    return ButtonElement(text=shorten(label, 75, "…"), url=url, action_id=f"link-{index}")


def delivered(status: int, body: str) -> bool:
    """Slack answers 200 "ok"; errors come as 4xx with a reason such as "invalid_blocks"."""
    return status == 200 and body.strip() == "ok"
