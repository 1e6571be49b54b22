"""Zendesk event-subscribed webhooks -> EVENTS.md events, and Zendesk's webhook signature.

Vendor documentation this follows:
- Webhook payloads (``type`` zen:event-type:..., ``detail`` the ticket, ``event`` the
  change, ``time``, ``id``): https://developer.zendesk.com/api-reference/webhooks/event-types/webhook-event-types/
- Ticket events (ticket.created, ticket.comment_added with event.comment {id, is_public,
  author {id, is_staff}}, ticket.status_changed with event.current / event.previous):
  https://developer.zendesk.com/api-reference/webhooks/event-types/ticket-events/
- Agent availability events (agent.state_changed: detail.agent_id, event.channel,
  event.new_state / previous_state online|away|offline, event.updated_at):
  https://developer.zendesk.com/api-reference/webhooks/event-types/agent-availability-events/
- Signature: https://developer.zendesk.com/documentation/webhooks/verifying/
  X-Zendesk-Webhook-Signature = base64(HMAC-SHA256(secret, timestamp + body)), the
  timestamp in X-Zendesk-Webhook-Signature-Timestamp.

The mapping (README "Zendesk" has the judgements):
- ticket.created -> ticket.created (queue = the group id, channel from via.channel);
- ticket.comment_added -> ticket.replied, sender agent when the author is staff and is
  not the requester, public = is_public (the pipeline takes the first public agent reply
  as the first response); the ticket's description (a comment made in the second the
  ticket was created) maps to nothing;
- ticket.status_changed -> ticket.solved (to SOLVED), ticket.closed (to CLOSED: with no
  agent reply the pipeline counts it abandoned), ticket.reopened (from SOLVED back to
  an open status);
- agent.state_changed on the configured channel -> agent.logged_out (to offline),
  agent.state_changed (online: available, away: away);
- every other event type: nothing.
"""

from __future__ import annotations

import base64
from typing import Any

from ccpulse.connectors.base import Mapped, MappingError, event_id
from ccpulse.connectors.payload import checked_id, checked_name, dig, ident, rfc3339, same_secret, signature
from schemas.events import parse_timestamp_ms

SOURCE = "zendesk"
SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
EVENT_PREFIX = "zen:event-type:"

# via.channel -> the ticket's EVENTS.md channel (a ticket's channel cannot be voice or chat).
SOCIAL_CHANNELS = frozenset({"twitter", "facebook", "instagram", "instagram_dm", "whatsapp", "line",
                             "wechat", "telegram", "viber", "google_business_messages", "apple_business_chat"})
EMAIL_CHANNELS = frozenset({"email", "mail"})
_OPEN_STATUSES = frozenset({"NEW", "OPEN", "PENDING", "HOLD"})


def expected_signature(timestamp: str, body: bytes, secret: str) -> str:
    return base64.b64encode(signature(secret, timestamp.encode("utf-8") + body, "sha256")).decode("ascii")


def verify(body: bytes, signature: str | None, timestamp: str | None, secret: str, now_ms: int,
           tolerance_seconds: float) -> bool:
    """Whether the request is signed with ``secret`` and was signed within ``tolerance_seconds`` of now.

    The timestamp is part of what is signed, so an old request cannot be made fresh:
    one signed longer ago (or further ahead) than the tolerance is refused as a replay.
    """
    if not signature or not timestamp or not secret:
        return False
    signed_at = parse_timestamp_ms(timestamp.strip())
    if signed_at is None or abs(now_ms - signed_at) > tolerance_seconds * 1000:
        return False
    return same_secret(expected_signature(timestamp, body, secret), signature)


def map_event(doc: dict[str, Any], agent_channel: str = "support") -> list[Mapped]:
    """One webhook body (parsed JSON) as EVENTS.md events."""
    kind = dig(doc, "type")
    if not isinstance(kind, str):
        raise MappingError("wrong_type", "type must be a string")
    kind = kind.removeprefix(EVENT_PREFIX)
    if kind == "agent.state_changed":
        return _agent_state(doc, agent_channel)
    if kind not in ("ticket.created", "ticket.comment_added", "ticket.status_changed"):
        return []
    ticket = ident(doc, "detail", "id")
    interaction = checked_id(f"zendesk-{ticket}", "detail.id")
    at = rfc3339(dig(doc, "time"), "time")
    base: dict[str, Any] = {"occurred_at": at, "interaction_id": interaction}
    channel = _channel(doc)
    if channel:
        base["channel"] = channel
    if kind == "ticket.created":
        ev = dict(base, event_id=event_id(SOURCE, ticket, "created"), type="ticket.created",
                  queue=checked_name(ident(doc, "detail", "group_id", required=False) or "unassigned",
                                     "detail.group_id"))
        requester = ident(doc, "detail", "requester_id", required=False)
        if requester:
            ev["customer_id"] = requester
        priority = dig(doc, "detail", "priority", required=False)
        if isinstance(priority, str) and priority:
            ev["attributes"] = {"priority": priority.lower()}
        return [Mapped("ticket", ev)]
    if kind == "ticket.comment_added":
        return _comment(doc, base, ticket)
    return _status(doc, base, ticket)


def _comment(doc: dict[str, Any], base: dict[str, Any], ticket: str) -> list[Mapped]:
    comment = dig(doc, "event", "comment")
    created = dig(doc, "detail", "created_at", required=False)
    if isinstance(created, str) and rfc3339(created, "detail.created_at")[:19] == base["occurred_at"][:19]:
        return []  # the ticket's description, written with the ticket: not a reply
    author = ident(comment, "author", "id")
    public = dig(comment, "is_public", required=False)
    if public is not None and not isinstance(public, bool):
        raise MappingError("wrong_type", "event.comment.is_public must be a boolean")
    staff = dig(comment, "author", "is_staff", required=False) is True
    requester = ident(doc, "detail", "requester_id", required=False)
    agent = staff and author != requester
    ev = dict(base, event_id=event_id(SOURCE, ticket, "comment", ident(comment, "id")), type="ticket.replied",
              sender="agent" if agent else "customer", public=public is not False)
    if agent:
        ev["agent_id"] = checked_name(author, "event.comment.author.id")
    return [Mapped("ticket", ev)]


def _status(doc: dict[str, Any], base: dict[str, Any], ticket: str) -> list[Mapped]:
    current = str(dig(doc, "event", "current")).upper()
    previous = str(dig(doc, "event", "previous", required=False) or "").upper()
    if current == "SOLVED":
        kind = "ticket.solved"
    elif current == "CLOSED":
        kind = "ticket.closed"
    elif previous == "SOLVED" and current in _OPEN_STATUSES:
        kind = "ticket.reopened"
    else:
        return []
    # The webhook's own id: one status change, the same on every retry of its delivery.
    return [Mapped("ticket", dict(base, event_id=event_id(SOURCE, ticket, "status", ident(doc, "id")),
                                  type=kind))]


def _agent_state(doc: dict[str, Any], agent_channel: str) -> list[Mapped]:
    if dig(doc, "event", "channel", required=False) != agent_channel:
        return []
    agent = checked_name(ident(doc, "detail", "agent_id") or "", "detail.agent_id")
    new = str(dig(doc, "event", "new_state")).lower()
    at = rfc3339(dig(doc, "event", "updated_at", required=False) or dig(doc, "time"), "event.updated_at")
    states = {"online": "available", "away": "away"}
    if new != "offline" and new not in states:
        raise MappingError("invalid_value", f"event.new_state {new[:32]!r} is not online, away or offline")
    ev: dict[str, Any] = {"event_id": event_id(SOURCE, agent, "state", ident(doc, "id")), "occurred_at": at,
                          "agent_id": agent}
    # Coming online is a state change, not agent.logged_in: that needs the queues served,
    # and this event does not name the agent's groups.
    if new == "offline":
        ev["type"] = "agent.logged_out"
    else:
        ev.update(type="agent.state_changed", state=states[new])
    return [Mapped("agent", ev)]


def _channel(doc: dict[str, Any]) -> str:
    via = dig(doc, "detail", "via", "channel", required=False)
    if not isinstance(via, str) or not via:
        return ""
    via = via.lower()
    if via in EMAIL_CHANNELS:
        return "email"
    return "social" if via in SOCIAL_CHANNELS else "web"
