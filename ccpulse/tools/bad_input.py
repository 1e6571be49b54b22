"""A corpus of malformed input messages: one or more for every rejection class of EVENTS.md.

Used by the tests and by fault-injection runs (``ccpulse chaos``): publish each
item's ``value`` with its ``key`` to the input topic of its ``family``, interleaved
with valid events, then expect exactly one ``events.dead-letter`` record per item
whose ``reason`` is ``item.reason`` and whose ``value_base64`` is ``item.value``::

    from ccpulse.tools.bad_input import bad_input_corpus
    for item in bad_input_corpus():
        send(settings.topics.name(item.topic_attr), key=item.key, value=item.value)

Every ``schemas.events.REASONS`` entry has at least one item (tests/test_bad_input.py
fails when the decoder learns a reason the corpus does not cover).

One item needs more than broker defaults: ``oversize`` (``item.oversize``) is larger
than Kafka's default 1 MiB ``max.message.bytes``, so it reaches the worker only when
the input topic allows it (``OVERSIZE_TOPIC_CONFIG``) and the producer's
``max_request_size`` is at least ``OVERSIZE_PRODUCER_MAX_REQUEST``. Pass
``include_oversize=False`` to leave it out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.events import MAX_MESSAGE_BYTES, format_ms

FAMILY_TOPIC_ATTR = {"call": "calls", "chat": "chats", "ticket": "tickets"}
# What a topic and producer need for the oversize item (1 MiB + 1 KiB value).
OVERSIZE_TOPIC_CONFIG = {"max.message.bytes": str(2 * MAX_MESSAGE_BYTES)}
OVERSIZE_PRODUCER_MAX_REQUEST = 2 * MAX_MESSAGE_BYTES
# Well in the past: history has no lower bound, so only the future check can trip on time.
_BASE_TIME = "2026-01-05T08:00:00.000Z"
DROP = object()  # a field value meaning "leave the field out" (None stays a JSON null)


@dataclass(frozen=True)
class BadInput:
    """One malformed message and the dead-letter reason it must get."""

    name: str                # unique, stable (also the event_id of the near-valid items)
    family: str              # "call", "chat" or "ticket": the input topic it is sent to
    key: bytes | None
    value: bytes | None      # None: a Kafka record without a value (tombstone)
    reason: str              # the expected ``Rejection.reason`` (one of schemas.events.REASONS)
    oversize: bool = False   # larger than Kafka's default max.message.bytes

    @property
    def topic_attr(self) -> str:
        """The ``TopicSettings`` attribute of its input topic: ``settings.topics.name(item.topic_attr)``."""
        return FAMILY_TOPIC_ATTR[self.family]


def _doc(name: str, etype: str = "call.offered", **fields: Any) -> dict[str, Any]:
    """A valid event of ``etype`` (ids derived from ``name``), then ``fields`` applied (DROP deletes)."""
    doc: dict[str, Any] = {"event_id": f"bad-{name}", "type": etype, "occurred_at": _BASE_TIME,
                           "interaction_id": f"bad-{name}"}
    step = etype.split(".", 1)[1]
    if step in ("offered", "created"):
        doc["queue"] = "bad-input"
    if step == "answered":
        doc["agent_id"] = "bad-agent"
    if step == "transferred":
        doc["to_queue"] = "bad-input-2"
    if step in ("message", "replied"):
        doc["sender"] = "agent"
    if step == "rated":
        doc["csat"] = 5
    for key, value in fields.items():
        if value is DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def bad_input_corpus(now_ms: int | None = None, max_future_seconds: float = 86400.0,
                     include_oversize: bool = True) -> list[BadInput]:
    """Every malformed message of the corpus, in a fixed order.

    ``now_ms`` is the worker clock the future-timestamp items are measured against
    (default: now) and ``max_future_seconds`` the worker's ``max_future_seconds``;
    the future items are dated one day past that bound, so clock skew between the
    publisher and the worker of up to a day does not change their fate.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    future = format_ms(now_ms + int(max_future_seconds * 1000) + 86_400_000)
    items: list[BadInput] = []

    def add(name: str, family: str, value: bytes | None, reason: str, key: Any = DROP,
            oversize: bool = False) -> None:
        # Keyed by the name (like an interaction id) unless a key (or None: keyless) is given.
        items.append(BadInput(name, family, f"bad-{name}".encode() if key is DROP else key, value,
                              reason, oversize))

    def add_doc(name: str, reason: str, etype: str = "call.offered", family: str | None = None,
                **fields: Any) -> None:
        add(name, family or etype.split(".", 1)[0], orjson.dumps(_doc(name, etype, **fields)), reason)

    # -- the bytes are not a JSON object
    if include_oversize:
        pad = "x" * (MAX_MESSAGE_BYTES + 1024)
        add("oversize", "call", orjson.dumps(_doc("oversize", attributes={"pad": pad})), "too_large",
            oversize=True)
    add("latin1", "call", '{"event_id": "caf\u00e9", "type": "call.offered"}'.encode("latin-1"),
        "not_utf8")
    add("binary", "chat", bytes(range(0x80, 0x100)), "not_utf8")
    add("utf16", "ticket", orjson.dumps(_doc("utf16", "ticket.created")).decode().encode("utf-16"),
        "not_utf8")
    add("empty", "call", b"", "not_json")
    add("tombstone", "call", None, "not_json")
    add("whitespace", "chat", b" \n\t ", "not_json")
    add("truncated", "call", orjson.dumps(_doc("truncated"))[:-7], "not_json")
    add("single-quotes", "ticket", b"{'event_id': 'x', 'type': 'ticket.created'}", "not_json")
    add("trailing-garbage", "call", orjson.dumps(_doc("trailing-garbage")) + b" {}", "not_json")
    add("nan", "call", b'{"event_id": "bad-nan", "csat": NaN}', "not_json")
    add("bom", "call", b"\xef\xbb\xbf" + orjson.dumps(_doc("bom")), "not_json")
    add("no-key-garbage", "chat", b"<xml/>", "not_json", key=None)
    add("array", "call", orjson.dumps([_doc("array")]), "not_object")
    add("string", "chat", b'"chat.offered"', "not_object")
    add("number", "ticket", b"42", "not_object")
    add("null", "call", b"null", "not_object")
    add("boolean", "call", b"true", "not_object")

    # -- required fields missing (absent, null or empty)
    add("empty-object", "call", b"{}", "missing_field")
    for field in ("event_id", "type", "occurred_at", "interaction_id"):
        add_doc(f"no-{field}", "missing_field", **{field: DROP})
    add_doc("null-event-id", "missing_field", event_id=None)
    add_doc("null-type", "missing_field", type=None)
    add_doc("empty-interaction-id", "missing_field", interaction_id="")
    add_doc("no-queue-on-offer", "missing_field", queue=DROP)
    add_doc("no-queue-on-ticket", "missing_field", "ticket.created", queue=DROP)
    add_doc("no-agent-on-answer", "missing_field", "chat.answered", agent_id=DROP)
    add_doc("transfer-without-target", "missing_field", "call.transferred", to_queue=DROP)
    add_doc("rating-without-score", "missing_field", "ticket.rated", csat=DROP)
    add_doc("message-without-sender", "missing_field", "chat.message", sender=DROP)

    # -- fields of the wrong JSON type
    add_doc("numeric-event-id", "wrong_type", event_id=12345)
    add_doc("list-type", "wrong_type", type=["call.offered"])
    add_doc("epoch-occurred-at", "wrong_type", occurred_at=1767600000000)
    add_doc("object-interaction-id", "wrong_type", interaction_id={"id": "x"})
    add_doc("numeric-queue", "wrong_type", queue=7)
    add_doc("numeric-agent", "wrong_type", "call.answered", agent_id=17)
    add_doc("numeric-customer", "wrong_type", customer_id=424242)
    add_doc("string-schema-version", "wrong_type", schema_version="1")
    add_doc("float-schema-version", "wrong_type", schema_version=1.0)
    add_doc("list-attributes", "wrong_type", attributes=["vip"])
    add_doc("string-wrapup", "wrong_type", "call.ended", wrapup_seconds="20")
    add_doc("string-public", "wrong_type", "ticket.replied", public="yes")
    add_doc("float-csat", "wrong_type", "chat.rated", csat=4.5)
    add_doc("boolean-nps", "wrong_type", "call.rated", csat=DROP, nps=True)
    add_doc("numeric-ticket-channel", "wrong_type", "ticket.created", channel=3)
    add_doc("numeric-to-queue", "wrong_type", "chat.transferred", to_queue=9)

    # -- well-typed but out of range
    add_doc("long-event-id", "invalid_value", event_id="e" * 129)
    add_doc("long-queue", "invalid_value", "chat.offered", queue="q" * 129)
    add_doc("empty-optional-agent", "invalid_value", "call.ended", agent_id="")
    add_doc("csat-6", "invalid_value", "call.rated", csat=6)
    add_doc("csat-0", "invalid_value", "ticket.rated", csat=0)
    add_doc("nps-11", "invalid_value", "chat.rated", csat=DROP, nps=11)
    add_doc("negative-wrapup", "invalid_value", "call.ended", wrapup_seconds=-1)
    add_doc("wrapup-over-a-day", "invalid_value", "call.ended", wrapup_seconds=86401)
    add_doc("sender-bot", "invalid_value", "chat.message", sender="bot")
    add_doc("ticket-channel-voice", "invalid_value", "ticket.created", channel="voice")
    add_doc("schema-version-0", "invalid_value", schema_version=0)
    add_doc("schema-version-negative", "invalid_value", "chat.offered", schema_version=-1)
    add_doc("long-ticket-channel", "invalid_value", "ticket.created", channel="c" * 129)

    # -- unknown type, or a known type on another family's topic
    add_doc("unknown-type", "unknown_type", type="call.parked")
    add_doc("empty-type", "unknown_type", type="")
    add_doc("upper-case-type", "unknown_type", type="CALL.OFFERED")
    add_doc("unknown-family", "unknown_type", family="chat", type="sms.offered")
    add_doc("chat-on-calls", "wrong_topic", "chat.offered", family="call")
    add_doc("ticket-on-chats", "wrong_topic", "ticket.created", family="chat")
    add_doc("call-on-tickets", "wrong_topic", "call.answered", family="ticket")

    # -- occurred_at
    add_doc("words-timestamp", "bad_timestamp", occurred_at="yesterday")
    add_doc("month-13", "bad_timestamp", occurred_at="2026-13-01T00:00:00Z")
    add_doc("february-30", "bad_timestamp", "chat.offered", occurred_at="2026-02-30T10:00:00Z")
    add_doc("no-zone", "bad_timestamp", "ticket.created", occurred_at="2026-01-05T08:00:00")
    add_doc("offset-24h", "bad_timestamp", occurred_at="2026-01-05T08:00:00+24:00")
    add_doc("far-future", "future_timestamp", occurred_at=future)
    add_doc("far-future-ticket", "future_timestamp", "ticket.solved", occurred_at=future)
    return items


def covered_reasons(items: list[BadInput]) -> set[str]:
    return {item.reason for item in items}
