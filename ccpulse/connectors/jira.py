"""Jira Service Management webhooks -> EVENTS.md ticket events, and Jira's webhook secret.

Vendor documentation this follows:
- Webhooks (``webhookEvent`` jira:issue_created / jira:issue_updated / comment_created,
  ``timestamp`` epoch ms, ``issue`` {id, key, fields}, ``comment`` {id, author, created,
  jsdPublic}, ``changelog`` {id, items [{field, fromString, toString}]}):
  https://developer.atlassian.com/cloud/jira/platform/webhooks/
- Secure admin webhooks: a webhook registered with a secret carries
  ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (WebSub's method=signature):
  https://developer.atlassian.com/cloud/jira/platform/webhooks/#secure-admin-webhooks
- Internal vs public comments: the comment property ``sd.public.comment``
  ({"internal": true} for an internal note):
  https://developer.atlassian.com/cloud/jira/service-desk/rest/intro/#comment-visibility

The mapping (README "Jira Service Management" has the judgements):
- jira:issue_created -> ticket.created (queue: the project key, or the request type's
  name with ``connect.jira_queue = "request_type"``);
- comment_created -> ticket.replied; the author is the customer when they reported the
  issue or are a portal customer (accountType "customer"), else an agent; the comment is
  public only when Jira says so: an ``sd.public.comment`` property marking it internal
  wins, then ``jsdPublic``; a comment with neither is taken as internal, so a note never
  counts as a first response;
- jira:issue_updated whose changelog changes the status, to a status of the done
  category -> ticket.solved;
- everything else: nothing.
"""

from __future__ import annotations

from typing import Any

from ccpulse.connectors.base import Mapped, MappingError, event_id
from ccpulse.connectors.payload import checked_id, checked_name, dig, epoch, ident, rfc3339, same_secret, signature

SOURCE = "jira"
SIGNATURE_HEADER = "X-Hub-Signature"
CHANNEL = "web"  # the service desk portal (Jira's email channel is not told apart in webhooks)


def expected_signature(body: bytes, secret: str) -> str:
    return "sha256=" + signature(secret, body, "sha256").hex()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """Whether ``signature`` (the X-Hub-Signature header) is ``sha256=`` the body's HMAC with ``secret``."""
    if not signature or not secret:
        return False
    method, _, digest = signature.strip().partition("=")
    if method.lower() != "sha256":
        return False
    return same_secret(expected_signature(body, secret), "sha256=" + digest.lower())


def map_event(doc: dict[str, Any], queue_rule: str = "project") -> list[Mapped]:
    """One webhook body (parsed JSON) as EVENTS.md events."""
    kind = dig(doc, "webhookEvent")
    if kind not in ("jira:issue_created", "comment_created", "jira:issue_updated"):
        return []
    issue_id = ident(doc, "issue", "id")
    base: dict[str, Any] = {"interaction_id": checked_id(f"jira-{issue_id}", "issue.id"), "channel": CHANNEL}
    if kind == "jira:issue_created":
        created = dig(doc, "issue", "fields", "created", required=False)
        ev = dict(base, event_id=event_id(SOURCE, issue_id, "created"), type="ticket.created",
                  occurred_at=rfc3339(created, "issue.fields.created") if created else _sent_at(doc),
                  queue=_queue(doc, queue_rule))
        reporter = ident(doc, "issue", "fields", "reporter", "accountId", required=False)
        if reporter:
            ev["customer_id"] = reporter
        return [Mapped("ticket", ev)]
    if kind == "comment_created":
        return [_comment(doc, base, issue_id)]
    return _status(doc, base, issue_id)


def _comment(doc: dict[str, Any], base: dict[str, Any], issue_id: str) -> Mapped:
    comment = dig(doc, "comment")
    author = ident(comment, "author", "accountId")
    reporter = ident(doc, "issue", "fields", "reporter", "accountId", required=False)
    customer = author == reporter or dig(comment, "author", "accountType", required=False) == "customer"
    created = dig(comment, "created", required=False)
    ev = dict(base, event_id=event_id(SOURCE, issue_id, "comment", ident(comment, "id")), type="ticket.replied",
              occurred_at=rfc3339(created, "comment.created") if created else _sent_at(doc),
              sender="customer" if customer else "agent", public=_public(comment))
    if not customer:
        ev["agent_id"] = checked_name(author, "comment.author.accountId")
    return Mapped("ticket", ev)


def _public(comment: dict[str, Any]) -> bool:
    for prop in comment.get("properties") or []:
        if isinstance(prop, dict) and prop.get("key") == "sd.public.comment":
            value = prop.get("value")
            if isinstance(value, dict) and isinstance(value.get("internal"), bool):
                return not value["internal"]
    return comment.get("jsdPublic") is True


def _status(doc: dict[str, Any], base: dict[str, Any], issue_id: str) -> list[Mapped]:
    items = dig(doc, "changelog", "items", required=False) or []
    if not isinstance(items, list) or not any(isinstance(i, dict) and i.get("field") == "status" for i in items):
        return []
    if dig(doc, "issue", "fields", "status", "statusCategory", "key", required=False) != "done":
        return []
    change = ident(doc, "changelog", "id")
    return [Mapped("ticket", dict(base, event_id=event_id(SOURCE, issue_id, "status", change),
                                  type="ticket.solved", occurred_at=_sent_at(doc)))]


def _queue(doc: dict[str, Any], rule: str) -> str:
    fields = dig(doc, "issue", "fields")
    if not isinstance(fields, dict):
        raise MappingError("wrong_type", "issue.fields must be an object")
    if rule == "request_type":
        # The request type sits in a custom field whose id differs per site: found by its shape.
        for value in fields.values():
            name = dig(value, "requestType", "name", required=False)
            if isinstance(name, str) and name:
                return checked_name(name, "the request type's name")
    key = dig(fields, "project", "key", required=False)
    if not isinstance(key, str) or not key:
        raise MappingError("missing_field", "issue.fields.project.key is required")
    return checked_name(key, "issue.fields.project.key")


def _sent_at(doc: dict[str, Any]) -> str:
    return epoch(dig(doc, "timestamp"), "timestamp", 1)
