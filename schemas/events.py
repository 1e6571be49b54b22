"""The input wire contract of EVENTS.md: decoding and validating one Kafka message.

Pure: no I/O. ``decode`` never raises; a message that breaks the contract comes back
as a ``Rejection`` with a machine-readable reason (the dead-letter record's
``reason`` and the label of the invalid-events counter).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from ccpulse.core.timestamps import format_ms  # noqa: F401  (part of this module's API)

MAX_MESSAGE_BYTES = 1 << 20
MAX_ID_CHARS = 128
MAX_REASON_CHARS = 64  # a flow-out's (or an away state's) reason code
MAX_SCHEMA_VERSION = 65535

# Which event types each input topic carries, and the lifecycle step each maps to.
# The KPI engine only knows the steps; channel adapters live here, in one table.
TYPES: dict[str, str] = {
    "call.offered": "offered", "call.answered": "answered", "call.abandoned": "abandoned",
    "call.transferred": "transferred", "call.ended": "ended", "call.rated": "rated",
    "chat.offered": "offered", "chat.answered": "answered", "chat.abandoned": "abandoned",
    "chat.transferred": "transferred", "chat.ended": "ended", "chat.message": "message",
    "chat.rated": "rated",
    # Queue exits that are neither an answer nor an abandon (calls and chats), and hold (calls).
    "call.flowed_out": "flowed_out", "chat.flowed_out": "flowed_out",
    "call.callback_requested": "callback_requested", "chat.callback_requested": "callback_requested",
    "call.held": "held", "call.resumed": "resumed",
    "ticket.created": "offered", "ticket.replied": "replied", "ticket.assigned": "assigned",
    "ticket.solved": "solved", "ticket.reopened": "reopened", "ticket.closed": "closed",
    "ticket.rated": "rated",
}
FAMILY_CHANNEL = {"call": "voice", "chat": "chat"}  # tickets carry their own channel

REASONS = (
    "too_large", "not_utf8", "not_json", "not_object", "missing_field", "wrong_type",
    "invalid_value", "unknown_type", "wrong_topic", "bad_timestamp", "future_timestamp",
)

# The `agents` topic (EVENTS.md "Agents"): presence, not a lifecycle step, so apart from
# TYPES; decoded by ``decode_agent`` into an ``AgentEvent``.
AGENT_TYPES = frozenset(("agent.logged_in", "agent.state_changed", "agent.logged_out"))
AGENT_STATES = frozenset(("available", "away", "after_contact_work"))
MAX_REASON_CHARS = 64

_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The separator of ccpulse's composite keys (queue|channel, window keys, queue state):
# a name holding it would land on another queue's key, so names may not contain it.
KEY_SEPARATOR = "|"
# Printable ASCII but the separator, no space at either end nor two in a row: the
# common case, checked without looking at every character.
_PLAIN_NAME = re.compile(r"[!-{}~](?:[!-{}~]| (?! ))*(?<! )\Z", re.ASCII)
# Characters that render as nothing or as a plain space, so two names that differ only
# by them look the same on the wallboard: controls (Cc), format characters (Cf: the
# zero-width space, the BOM, bidi marks), surrogates, line/paragraph separators and
# every space but U+0020.
_HIDDEN_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"))


@dataclass(frozen=True, slots=True)
class Event:
    """A valid input event, normalised. Times are integer epoch milliseconds."""

    event_id: str
    type: str
    step: str
    channel: str
    occurred_at_ms: int
    interaction_id: str
    queue: str | None = None
    agent_id: str | None = None
    customer_id: str | None = None
    schema_version: int = 1
    # Type-specific fields (to_queue, to_agent, wrapup_seconds, sender, public, csat, nps).
    details: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # one of REASONS
    detail: str


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """A valid event of the agents topic, normalised (apart from ``Event``: the contact
    path's hot code never sees one). ``queues`` None: not given (the list is kept)."""

    event_id: str
    type: str  # one of AGENT_TYPES
    agent_id: str
    occurred_at_ms: int
    queues: tuple[str, ...] | None = None
    state: str | None = None  # one of AGENT_STATES; None: not given
    reason: str | None = None
    schema_version: int = 1


def decode(raw: bytes | None, family: str, now_ms: int,
           max_future_ms: int = 86_400_000) -> Event | Rejection:
    """Decode one message read from the topic of ``family`` ("call", "chat" or "ticket")."""
    doc = _load(raw)
    if isinstance(doc, Rejection):
        return doc
    return validate(doc, family, now_ms, max_future_ms)


def decode_agent(raw: bytes | None, now_ms: int, max_future_ms: int = 86_400_000) -> AgentEvent | Rejection:
    """Decode one message read from the agents topic. Never raises."""
    doc = _load(raw)
    if isinstance(doc, Rejection):
        return doc
    return validate_agent(doc, now_ms, max_future_ms)


def _load(raw: bytes | None) -> dict[str, Any] | Rejection:
    """The JSON object in ``raw``, or why it is none (the same rules on every topic)."""
    if raw is None:
        return Rejection("not_json", "empty message (no value)")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection("not_utf8", "message is not UTF-8")
        return Rejection("not_json", str(exc)[:200])
    if not isinstance(doc, dict):
        return Rejection("not_object", f"JSON {type(doc).__name__}, expected an object")
    return doc


def validate_agent(doc: dict[str, Any], now_ms: int, max_future_ms: int = 86_400_000) -> AgentEvent | Rejection:
    try:
        event_id = _ident(doc, "event_id", required=True)
        etype = _string(doc, "type", required=True)
        if etype not in AGENT_TYPES:
            if etype in TYPES:
                return Rejection("wrong_topic", f"{etype} does not belong on the agents topic")
            return Rejection("unknown_type", f"type {etype[:64]!r} is not in EVENTS.md")
        occurred = _occurred_at(doc, now_ms, max_future_ms)
        agent_id = _name(doc, "agent_id", required=True)
        queues = _queues(doc, required=etype == "agent.logged_in")
        state = _string(doc, "state", required=etype == "agent.state_changed")
        if state is not None and state not in AGENT_STATES:
            raise _Bad("invalid_value", f"state {state[:64]!r} is not one of {', '.join(sorted(AGENT_STATES))}")
        reason = _string(doc, "reason", required=False)
        if reason is not None and not 1 <= len(reason) <= MAX_REASON_CHARS:
            raise _Bad("invalid_value", f"reason must be 1-{MAX_REASON_CHARS} characters")
        if reason is not None:
            # A reason becomes a metric label and a record key, as a queue name does.
            problem = name_problem(reason)
            if problem is not None:
                raise _Bad("invalid_value", f"reason {reason!r} {problem}")
        version = _schema_version(doc)
    except _Bad as bad:
        return Rejection(bad.reason, bad.detail)
    return AgentEvent(event_id, etype, agent_id, occurred, queues, state, reason, version)


def _occurred_at(doc: dict[str, Any], now_ms: int, max_future_ms: int) -> int:
    ts_text = _string(doc, "occurred_at", required=True)
    occurred = parse_timestamp_ms(ts_text)
    if occurred is None:
        raise _Bad("bad_timestamp", f"occurred_at {ts_text[:64]!r} is not RFC 3339")
    if occurred > now_ms + max_future_ms:
        raise _Bad("future_timestamp", f"occurred_at {ts_text} is more than "
                                       f"{max_future_ms // 1000} s ahead of the worker clock")
    return occurred


def _schema_version(doc: dict[str, Any]) -> int:
    # JSON null means "not given" for every optional field, as serializers emit it.
    version = doc.get("schema_version")
    if version is None:
        version = 1
    if type(version) is not int:
        raise _Bad("wrong_type", "schema_version must be an integer")
    if not 1 <= version <= MAX_SCHEMA_VERSION:
        # Also what the raw store's UInt16 column holds: an event it could not store
        # would stop the ClickHouse writer, so it is refused here, where it is dead-lettered.
        raise _Bad("invalid_value", f"schema_version must be 1-{MAX_SCHEMA_VERSION}")
    return version


def _queues(doc: dict[str, Any], required: bool) -> tuple[str, ...] | None:
    value = doc.get("queues")
    if value is None:
        if required:
            raise _Bad("missing_field", "queues is required")
        return None
    if not isinstance(value, list):
        raise _Bad("wrong_type", "queues must be an array of queue names")
    if not value:
        raise _Bad("invalid_value", "queues must name at least one queue")
    names = []
    for index, name in enumerate(value):
        if not isinstance(name, str):
            raise _Bad("wrong_type", f"queues[{index}] must be a string")
        try:
            names.append(_name({"queue": name}, "queue", required=True))
        except _Bad as bad:  # the same rules as a queue field, named by position
            raise _Bad("invalid_value", f"queues[{index}]: {bad.detail}") from None
    return tuple(dict.fromkeys(names))  # a queue named twice is served once


def validate(doc: dict[str, Any], family: str, now_ms: int,
             max_future_ms: int = 86_400_000) -> Event | Rejection:
    try:
        event_id = _ident(doc, "event_id", required=True)
        etype = _string(doc, "type", required=True)
        step = TYPES.get(etype)
        if step is None:
            if etype in AGENT_TYPES:
                return Rejection("wrong_topic", f"{etype} belongs on the agents topic")
            return Rejection("unknown_type", f"type {etype[:64]!r} is not in EVENTS.md")
        if etype.split(".", 1)[0] != family:
            return Rejection("wrong_topic", f"{etype} does not belong on the {family} topic")
        occurred = _occurred_at(doc, now_ms, max_future_ms)
        interaction_id = _ident(doc, "interaction_id", required=True)
        queue = _name(doc, "queue", required=step == "offered")
        agent_id = _name(doc, "agent_id", required=step == "answered")
        customer_id = _string(doc, "customer_id", required=False)
        version = _schema_version(doc)
        attributes = doc.get("attributes")
        if attributes is None:
            attributes = {}
        if not isinstance(attributes, dict):
            raise _Bad("wrong_type", "attributes must be an object")
        if family == "ticket":
            # An empty channel means "not given", as null does. It becomes a metric
            # label and a table key: a name like the queue.
            channel = _name(doc, "channel", required=False) if doc.get("channel") != "" else None
            channel = channel or "email"
            if channel in ("voice", "chat"):
                raise _Bad("invalid_value", "a ticket's channel cannot be voice or chat")
        else:
            channel = FAMILY_CHANNEL[family]
        details = _details(doc, step)
    except _Bad as bad:
        return Rejection(bad.reason, bad.detail)
    return Event(event_id, etype, step, channel, occurred, interaction_id, queue, agent_id,
                 customer_id, version, details, attributes)


def parse_timestamp_ms(text: str) -> int | None:
    """RFC 3339 with ``Z`` or an offset; fractions below a millisecond are truncated."""
    m = _TS.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        moment = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    except ValueError:
        return None
    if not z:
        if int(oh) > 23 or int(om) > 59:
            return None
        offset = timedelta(hours=int(oh), minutes=int(om))
        try:
            moment = moment - offset if sign == "+" else moment + offset
        except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
            return None
    ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    return ms + (int((frac or "0")[:3].ljust(3, "0")))


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _string(doc: dict[str, Any], key: str, required: bool) -> Any:
    value = doc.get(key)
    if value is None:
        if required:
            raise _Bad("missing_field", f"{key} is required")
        return None
    if not isinstance(value, str):
        raise _Bad("wrong_type", f"{key} must be a string")
    return value


def _ident(doc: dict[str, Any], key: str, required: bool) -> Any:
    value = _string(doc, key, required)
    if value is not None and not 1 <= len(value) <= MAX_ID_CHARS:
        if not value and required:
            raise _Bad("missing_field", f"{key} is empty")
        raise _Bad("invalid_value", f"{key} must be 1-{MAX_ID_CHARS} characters")
    return value or None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a queue, channel or agent name (README "Names"); None if it can.

    Refused, not normalised: stripping or NFC-folding could merge names a producer
    meant to differ, and a dead letter tells the producer what to fix.
    """
    if _PLAIN_NAME.match(name):
        return None
    for char in name:
        if char == KEY_SEPARATOR:
            return f"contains {KEY_SEPARATOR!r} (ccpulse's key separator)"
        if char != " " and unicodedata.category(char) in _HIDDEN_CATEGORIES:
            return f"contains the invisible or control character U+{ord(char):04X}"
    if name != name.strip(" "):
        return "has leading or trailing whitespace"
    if "  " in name:
        return "contains two spaces in a row"
    if not unicodedata.is_normalized("NFC", name):
        return "is not in Unicode NFC (it would look like its composed form)"
    return None


def _name(doc: dict[str, Any], key: str, required: bool) -> Any:
    value = _ident(doc, key, required)
    if value is not None:
        problem = name_problem(value)
        if problem is not None:
            raise _Bad("invalid_value", f"{key} {value[:64]!r} {problem}")
    return value


def reason_code(doc: dict[str, Any], required: bool) -> Any:
    """A reason code (``reason``): 1-64 characters under the name rules, since reasons are
    grouped by and shown like names."""
    value = _name(doc, "reason", required)
    if value is not None and len(value) > MAX_REASON_CHARS:
        raise _Bad("invalid_value", f"reason must be 1-{MAX_REASON_CHARS} characters")
    return value


def _details(doc: dict[str, Any], step: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if step == "transferred":
        to_queue = _name(doc, "to_queue", required=False)
        to_agent = _name(doc, "to_agent", required=False)
        if to_queue is None and to_agent is None:
            raise _Bad("missing_field", "a transfer needs to_queue and/or to_agent")
        if to_queue:
            out["to_queue"] = to_queue
        if to_agent:
            out["to_agent"] = to_agent
    elif step == "flowed_out":
        out["reason"] = reason_code(doc, required=True)
        to_queue = _name(doc, "to_queue", required=False)
        if to_queue:
            out["to_queue"] = to_queue
    elif step == "ended":
        wrapup = doc.get("wrapup_seconds")
        if wrapup is not None:
            if isinstance(wrapup, bool) or not isinstance(wrapup, (int, float)):
                raise _Bad("wrong_type", "wrapup_seconds must be a number")
            if not 0 <= wrapup <= 86400:
                raise _Bad("invalid_value", "wrapup_seconds must be 0-86400")
            out["wrapup_seconds"] = wrapup
    elif step in ("message", "replied"):
        sender = _string(doc, "sender", required=True)
        if sender not in ("customer", "agent"):
            raise _Bad("invalid_value", "sender must be customer or agent")
        out["sender"] = sender
        if step == "replied":
            public = doc.get("public")
            if public is None:
                public = True
            if not isinstance(public, bool):
                raise _Bad("wrong_type", "public must be a boolean")
            out["public"] = public
    elif step == "rated":
        for key, low, high in (("csat", 1, 5), ("nps", 0, 10)):
            value = doc.get(key)
            if value is None:
                continue
            if type(value) is not int:
                raise _Bad("wrong_type", f"{key} must be an integer")
            if not low <= value <= high:
                raise _Bad("invalid_value", f"{key} must be {low}-{high}")
            out[key] = value
        if not out:
            raise _Bad("missing_field", "a rating needs csat and/or nps")
    return out
