"""Jira Service Management: the X-Hub-Signature by its documented algorithm, the mapper against
webhook bodies shaped as Atlassian's webhook reference documents them."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ccpulse.connectors import jira
from ccpulse.connectors.base import MappingError
from tests.connector_support import assert_valid, fixture

SECRET = "It's a Secret to Everybody"
BODY = b'{"webhookEvent":"jira:issue_created"}'


def documented(body: bytes, secret: str) -> str:
    # Atlassian: X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body keyed with the secret>.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signature_by_the_documented_algorithm() -> None:
    assert jira.expected_signature(BODY, SECRET) == documented(BODY, SECRET)
    assert jira.verify(BODY, documented(BODY, SECRET), SECRET)
    assert jira.verify(BODY, documented(BODY, SECRET).upper().replace("SHA256=", "sha256="), SECRET)


@pytest.mark.parametrize("body, signature, secret", [
    (BODY + b"\n", documented(BODY, SECRET), SECRET),
    (BODY, documented(BODY, SECRET), SECRET + "!"),
    (BODY, documented(BODY, SECRET).replace("sha256=", "sha1="), SECRET),
    (BODY, documented(BODY, SECRET)[7:], SECRET),  # no method
    (BODY, "", SECRET),
    (BODY, documented(BODY, SECRET), ""),
])
def test_signature_refusals(body: bytes, signature: str, secret: str) -> None:
    assert not jira.verify(body, signature, secret)


def test_a_request_lifecycle() -> None:
    names = ["jira.issue_created", "jira.issue_updated.priority", "comment_created.agent_internal",
             "comment_created.agent_public", "comment_created.customer", "jira.issue_updated.resolved"]
    mapped = [m for name in names for m in jira.map_event(fixture("jira", name))]
    assert_valid(mapped)
    assert [(m.event["type"], m.event["occurred_at"], m.event.get("sender"), m.event.get("public"))
            for m in mapped] == [
        ("ticket.created", "2026-01-05T08:00:05.000Z", None, None),
        ("ticket.replied", "2026-01-05T08:20:00.000Z", "agent", False),
        ("ticket.replied", "2026-01-05T08:30:05.000Z", "agent", True),
        ("ticket.replied", "2026-01-05T08:50:00.000Z", "customer", True),
        ("ticket.solved", "2026-01-05T09:00:05.000Z", None, None),
    ]
    assert all(m.event["interaction_id"] == "jira-10042" and m.event["channel"] == "web" for m in mapped)
    assert mapped[0].event["queue"] == "HELP" and mapped[0].event["customer_id"] == "qm:customer-1"
    assert mapped[2].event["agent_id"] == "5b10ac8d82e05b22cc7d4ef5"


def test_queue_by_request_type() -> None:
    [m] = jira.map_event(fixture("jira", "jira.issue_created"), queue_rule="request_type")
    assert m.event["queue"] == "Get IT help"
    doc = fixture("jira", "jira.issue_created")
    del doc["issue"]["fields"]["customfield_10010"]
    assert jira.map_event(doc, queue_rule="request_type")[0].event["queue"] == "HELP"


@pytest.mark.parametrize("comment_change, public", [
    ({"jsdPublic": True}, True),
    ({"jsdPublic": False}, False),
    ({"jsdPublic": None}, False),  # not said: taken as internal
    ({"jsdPublic": True, "properties": [{"key": "sd.public.comment", "value": {"internal": True}}]}, False),
    ({"jsdPublic": None, "properties": [{"key": "sd.public.comment", "value": {"internal": False}}]}, True),
])
def test_public_rule(comment_change: dict, public: bool) -> None:
    doc = fixture("jira", "comment_created.agent_public")
    doc["comment"].update(comment_change)
    if doc["comment"]["jsdPublic"] is None:
        del doc["comment"]["jsdPublic"]
    [m] = jira.map_event(doc)
    assert m.event["public"] is public


def test_status_change_not_to_done_maps_to_nothing() -> None:
    doc = fixture("jira", "jira.issue_updated.resolved")
    doc["issue"]["fields"]["status"]["statusCategory"]["key"] = "indeterminate"
    assert jira.map_event(doc) == []
    assert jira.map_event({"webhookEvent": "jira:issue_deleted", "issue": {"id": "1"}}) == []


@pytest.mark.parametrize("name, path, value, reason", [
    ("jira.issue_created", ("issue", "id"), None, "missing_field"),
    ("jira.issue_created", ("issue", "fields", "created"), "05/01/2026", "bad_timestamp"),
    ("jira.issue_created", ("issue", "fields", "project"), None, "missing_field"),
    ("comment_created.agent_public", ("comment", "author"), None, "missing_field"),
    ("jira.issue_updated.resolved", ("changelog", "id"), None, "missing_field"),
])
def test_unmappable_bodies_say_why(name: str, path: tuple, value: object, reason: str) -> None:
    doc = fixture("jira", name)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(MappingError) as err:
        jira.map_event(doc)
    assert err.value.reason == reason
