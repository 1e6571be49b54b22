"""Zendesk: the signature by its documented algorithm (Zendesk publishes no test vector), the
mapper against webhook bodies shaped as Zendesk's event-type reference documents them."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ccpulse.connectors import zendesk
from ccpulse.connectors.base import MappingError
from schemas.events import parse_timestamp_ms
from tests.connector_support import assert_valid, fixture

SECRET = "dGhpcyBpcyBhIHNlY3JldA=="
BODY = b'{"type":"zen:event-type:ticket.created"}'
SIGNED_AT = "2026-01-05T08:00:06Z"
NOW = parse_timestamp_ms(SIGNED_AT) or 0


def documented(timestamp: str, body: bytes, secret: str) -> str:
    # Zendesk: base64(HMACSHA256(TIMESTAMP + BODY)) keyed with the webhook's signing secret.
    return base64.b64encode(hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()).decode()


def test_signature_by_the_documented_algorithm() -> None:
    signature = documented(SIGNED_AT, BODY, SECRET)
    assert zendesk.expected_signature(SIGNED_AT, BODY, SECRET) == signature
    assert zendesk.verify(BODY, signature, SIGNED_AT, SECRET, NOW, 300)
    assert zendesk.verify(BODY, signature, SIGNED_AT, SECRET, NOW + 299_000, 300)


@pytest.mark.parametrize("body, signature, timestamp, now", [
    (BODY + b" ", None, SIGNED_AT, NOW),  # body changed
    (BODY, None, "2026-01-05T08:00:07Z", NOW),  # timestamp changed
    (BODY, "", SIGNED_AT, NOW),  # unsigned
    (BODY, None, "", NOW),  # no timestamp
    (BODY, None, SIGNED_AT, NOW + 301_000),  # stale: a replay 5 min later
    (BODY, None, SIGNED_AT, NOW - 301_000),  # dated ahead of our clock by more than the tolerance
    (BODY, None, "not a time", NOW),
])
def test_signature_refusals(body: bytes, signature: str | None, timestamp: str, now: int) -> None:
    given = documented(SIGNED_AT, BODY, SECRET) if signature is None else signature
    assert not zendesk.verify(body, given, timestamp, SECRET, now, 300)


def test_a_ticket_lifecycle() -> None:
    names = ["ticket.created", "ticket.comment_added.description", "ticket.comment_added.internal",
             "ticket.comment_added.agent", "ticket.status_changed.solved", "ticket.status_changed.reopened",
             "ticket.status_changed.closed"]
    mapped = [m for name in names for m in zendesk.map_event(fixture("zendesk", name))]
    assert_valid(mapped)
    assert [(m.event["type"], m.event["occurred_at"]) for m in mapped] == [
        ("ticket.created", "2026-01-05T08:00:05.672Z"),
        # the description (written with the ticket) is not a reply
        ("ticket.replied", "2026-01-05T08:20:00.000Z"),
        ("ticket.replied", "2026-01-05T08:30:05.123Z"),
        ("ticket.solved", "2026-01-05T09:00:05.000Z"),
        ("ticket.reopened", "2026-01-05T10:00:00.000Z"),
        ("ticket.closed", "2026-01-09T10:00:00.000Z"),
    ]
    created, internal, reply = mapped[0].event, mapped[1].event, mapped[2].event
    assert all(m.family == "ticket" and m.event["interaction_id"] == "zendesk-5158" for m in mapped)
    assert all(m.event["channel"] == "web" for m in mapped)
    assert (created["queue"], created["customer_id"], created["attributes"]) == (
        "8447320466430", "9000000000001", {"priority": "low"})
    assert (internal["sender"], internal["public"]) == ("agent", False)
    assert (reply["sender"], reply["public"], reply["agent_id"]) == ("agent", True, "8447388090494")
    assert len({m.event["event_id"] for m in mapped}) == len(mapped)


def test_customer_comment_and_requester_who_is_staff() -> None:
    doc = fixture("zendesk", "ticket.comment_added.agent")
    doc["event"]["comment"]["author"] = {"id": 9000000000001, "is_staff": False}
    assert zendesk.map_event(doc)[0].event["sender"] == "customer"
    # A staff member who is the ticket's requester writes as the customer.
    doc["event"]["comment"]["author"] = {"id": 9000000000001, "is_staff": True}
    assert zendesk.map_event(doc)[0].event["sender"] == "customer"


@pytest.mark.parametrize("via, channel", [("email", "email"), ("twitter", "social"), ("api", "web"),
                                          ("web_form", "web")])
def test_channel_from_via(via: str, channel: str) -> None:
    doc = fixture("zendesk", "ticket.created")
    doc["detail"]["via"]["channel"] = via
    [m] = zendesk.map_event(doc)
    assert_valid([m])
    assert m.event["channel"] == channel


def test_a_ticket_with_no_group_waits_in_unassigned() -> None:
    doc = fixture("zendesk", "ticket.created")
    doc["detail"]["group_id"] = None
    assert zendesk.map_event(doc)[0].event["queue"] == "unassigned"


@pytest.mark.parametrize("new, expected", [
    ("online", {"type": "agent.state_changed", "state": "available"}),
    ("away", {"type": "agent.state_changed", "state": "away"}),
    ("offline", {"type": "agent.logged_out"}),
])
def test_agent_availability(new: str, expected: dict) -> None:
    doc = fixture("zendesk", "agent.state_changed")
    doc["event"]["new_state"] = new
    [m] = zendesk.map_event(doc)
    assert_valid([m])
    assert m.family == "agent" and m.event["agent_id"] == "8447388090494"
    assert {k: m.event[k] for k in expected} == expected
    assert m.event["occurred_at"] == "2026-01-05T07:58:58.642Z"


def test_agent_status_of_another_channel_maps_to_nothing() -> None:
    doc = fixture("zendesk", "agent.state_changed")
    assert zendesk.map_event(doc, agent_channel="messaging") == []


def test_other_events_map_to_nothing() -> None:
    assert zendesk.map_event(fixture("zendesk", "ticket.priority_changed")) == []


@pytest.mark.parametrize("path, value, reason", [
    (("type",), 5, "wrong_type"),
    (("detail", "id"), None, "missing_field"),
    (("time",), "5 Jan 2026", "bad_timestamp"),
    (("detail", "id"), {"x": 1}, "wrong_type"),
])
def test_unmappable_bodies_say_why(path: tuple, value: object, reason: str) -> None:
    doc = fixture("zendesk", "ticket.created")
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(MappingError) as err:
        zendesk.map_event(doc)
    assert err.value.reason == reason
