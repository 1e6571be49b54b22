"""Genesys Cloud conversation detail events -> EVENTS.md events.

Sources (topic names and fields checked against Genesys' own documentation):

- The detail-event topics ``v2.detail.events.conversation.{id}.customer.start|end``,
  ``.acd.start|end``, ``.user.start|end``, ``.acw``, ...: Genesys Cloud Developer Center,
  "Available topics", https://developer.genesys.cloud/notificationsalerts/notifications/available-topics
- Their bodies, as the Platform API client models describe them
  (https://github.com/MyPureCloud/platform-client-sdk-go, models
  ``AcdEndDetailEventTopicAcdEndEvent``, ``AcwDetailEventTopicAfterCallWorkEvent``, ...):
  ``eventTime`` (epoch milliseconds), ``conversationId``, ``participantId``, ``sessionId``,
  ``mediaType`` (VOICE, CHAT, EMAIL, CALLBACK, MESSAGE, ...), ``queueId``,
  ``acdOutcome`` (ABANDON, ANSWERED, FLOW_OUT, UNKNOWN), ``answeredUserId``, ``userId``,
  ``disconnectType``, ``wrapupCode``, ``wrapupDurationMs``.
- Delivery through the Amazon EventBridge integration
  (https://developer.genesys.cloud/notificationsalerts/notifications/event-bridge): an
  EventBridge event whose ``detail`` is ``{"topicName": ..., "version": ..., "eventBody":
  {...}, "metadata": {...}}``, the same object the notification service sends.

- ``user.end``'s ``disconnectType`` (the SDK models' enum: ENDPOINT, CLIENT, SYSTEM,
  TRANSFER, CONSULT_TRANSFER, CONFERENCE_TRANSFER, FORWARD_TRANSFER, NO_ANSWER_TRANSFER,
  NOT_AVAILABLE_TRANSFER, DND_TRANSFER, PEER, ERROR, OTHER, SPAM, TIMEOUT, ...;
  ``UserEndDetailEventTopicUserEndEvent``).

The judgements (README "Connectors" > "Genesys Cloud"), in short: each queue visit of a
conversation is one interaction, ``<conversationId>:<queueId>`` (``attributes.conversation_id``
links them). ``acd.start`` -> offered in its queue; ``acd.end`` ANSWERED -> answered
(``answeredUserId``), ABANDON -> abandoned, FLOW_OUT -> flowed out; ``user.end`` of an
ACD-routed agent -> ended (the agent's handling is over). An agent's transfer (``user.end``
TRANSFER, CONSULT_TRANSFER, CONFERENCE_TRANSFER) is also ``*.transferred`` at the same
time, ``attributes.transfer`` = the kind in lower case (as Asterisk's). Neither ``user.end``
nor the next ``acd.start`` names where the call went (the SDK models have no such field),
and EVENTS.md gives a transfer ``to_queue`` and/or ``to_agent``: ``to_agent`` is
``unknown`` (Asterisk's word for a destination it cannot name), never ``to_queue`` (the
next queue's own ``acd.start`` is its offer there). Not one
interaction for the whole conversation: the next queue's ``acd.start`` can carry the
very millisecond of (or an earlier time than) the transferring agent's ``user.end``, and
in one interaction it would sort as an offer while the call is still handled (an orphan),
its answer and end with it. A ``user.end`` of a user who never took the call
(NO_ANSWER_, NOT_AVAILABLE_, DND_, FORWARD_TRANSFER: it went on to someone else) maps to
nothing: it would end the visit while waiting, an abandon. ``customer.*``,
``user.start``, ``acw`` and other topics map to nothing (see the README for why).

Pure: no Kafka, no HTTP. ``MappingError`` for a payload that cannot be mapped.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ccpulse.connectors.base import UNNAMED_DESTINATION, Family, Mapped, MappingError, event_id
from ccpulse.connectors.payload import checked_id, checked_name, dig, epoch, ident

SOURCE = "genesys"
MEDIA_FAMILY: dict[str, Family] = {"VOICE": "call", "CALLBACK": "call", "CHAT": "chat", "MESSAGE": "chat"}
_TOPIC = re.compile(r"v2\.detail\.events\.conversation\.([^.]+)\.(.+)\Z")
# user.end disconnectType of an agent who handed the call on; its lower case is attributes.transfer.
AGENT_TRANSFERS = frozenset(("TRANSFER", "CONSULT_TRANSFER", "CONFERENCE_TRANSFER"))
# user.end disconnectType of a user the call was offered to who never took it.
NOT_TAKEN = frozenset(("NO_ANSWER_TRANSFER", "NOT_AVAILABLE_TRANSFER", "DND_TRANSFER", "FORWARD_TRANSFER"))


def map_record(doc: Any, queue_names: Mapping[str, str] | None = None) -> list[Mapped]:
    """An EventBridge event from the Genesys integration, or its bare ``detail`` -> events.

    ``queue_names`` maps a ``queueId`` to the queue name to report (default: the id).
    An empty list: a valid payload with nothing to count.
    """
    if not isinstance(doc, dict):
        raise MappingError("not_object", f"a JSON {type(doc).__name__}, expected an object")
    detail = doc.get("detail") if "detail" in doc else doc
    if not isinstance(detail, dict):
        raise MappingError("wrong_type", "detail must be an object")
    topic = detail.get("topicName")
    if not isinstance(topic, str):
        topic = doc.get("detail-type")
    if not isinstance(topic, str):
        raise MappingError("missing_field", "detail.topicName is required")
    match = _TOPIC.match(topic)
    if match is None:
        raise MappingError("unknown_type", f"topic {topic[:96]!r} is not a conversation detail event "
                                           "(v2.detail.events.conversation.{id}.*)")
    kind = match.group(2)
    body = dig(detail, "eventBody")
    if not isinstance(body, dict):
        raise MappingError("wrong_type", "eventBody must be an object")
    return detail_event(kind, body, queue_names or {})


def detail_event(kind: str, body: dict[str, Any], queue_names: Mapping[str, str]) -> list[Mapped]:
    """One detail event (``kind`` = the topic after the conversation id, e.g. ``acd.end``)."""
    if kind not in ("acd.start", "acd.end", "user.end"):
        # customer.start|end, user.start, acw, flow.*, ... and topics added later: what they
        # tell is counted from the three above, or not at all (README).
        return []
    media = dig(body, "mediaType")
    family = MEDIA_FAMILY.get(media) if isinstance(media, str) else None
    if family is None:
        return []  # EMAIL, COBROWSE, VIDEO, SCREENSHARE: not counted (README)
    conversation = checked_id(_required(ident(body, "conversationId")), "eventBody.conversationId")
    occurred = epoch(dig(body, "eventTime"), "eventBody.eventTime", 1)
    # The queue visit is the interaction: an ACD event without its queue cannot be placed.
    queue_id = ident(body, "queueId", required=kind != "user.end")
    if queue_id is None:
        return []  # a call straight to a user, never offered in a queue: its end would be an orphan
    disconnect = body.get("disconnectType") if kind == "user.end" else None
    if not isinstance(disconnect, str):
        disconnect = None  # absent or not a name: a plain end
    if disconnect in NOT_TAKEN:
        return []
    # The platform's own ids of the happening: a redelivery is the same event.
    eid = event_id(SOURCE, conversation, kind, body.get("participantId"), body.get("sessionId"),
                   body.get("eventTime"))
    doc: dict[str, Any] = {"event_id": eid, "occurred_at": occurred,
                           "interaction_id": checked_id(f"{conversation}:{queue_id}", "conversationId:queueId"),
                           "queue": checked_name(queue_names.get(queue_id, queue_id), "eventBody.queueId"),
                           "attributes": {"conversation_id": conversation}, "schema_version": 1}
    if kind == "acd.start":
        doc["type"] = f"{family}.offered"
    elif kind == "user.end":
        doc["type"] = f"{family}.ended"
        if disconnect in AGENT_TRANSFERS:
            transfer = dict(doc, event_id=event_id(SOURCE, conversation, "transfer", body.get("participantId"),
                                                   body.get("sessionId"), body.get("eventTime")),
                            type=f"{family}.transferred", to_agent=UNNAMED_DESTINATION,
                            attributes=dict(doc["attributes"], transfer=disconnect.lower()))
            return [Mapped(family, transfer), Mapped(family, doc)]
    else:
        outcome = dig(body, "acdOutcome")
        if outcome == "ANSWERED":
            doc["type"] = f"{family}.answered"
            doc["agent_id"] = checked_name(_required(ident(body, "answeredUserId")), "eventBody.answeredUserId")
        elif outcome == "ABANDON":
            doc["type"] = f"{family}.abandoned"
        elif outcome == "FLOW_OUT":
            doc["type"] = f"{family}.flowed_out"
            doc["reason"] = "flow_out"
        else:
            raise MappingError("unknown_outcome", f"acd.end acdOutcome {str(outcome)[:32]!r} is not ANSWERED, "
                                                  "ABANDON or FLOW_OUT")
    return [Mapped(family, doc)]


def _required(value: str | None) -> str:
    assert value is not None  # ``ident`` raises for a required field that is absent
    return value
