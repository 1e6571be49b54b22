"""Amazon Connect -> EVENTS.md events: contact events, agent events and contact records.

Sources (field names and meanings checked against AWS's own documentation):

- Contact events (EventBridge, ``detail-type`` "Amazon Connect Contact Event"):
  https://docs.aws.amazon.com/connect/latest/adminguide/contact-events.html
  (``detail.eventType`` INITIATED / QUEUED / CONNECTED_TO_AGENT / DISCONNECTED /
  COMPLETED / CONTACT_DATA_UPDATED / ..., ``contactId``, ``initialContactId``,
  ``previousContactId``, ``channel``, ``initiationMethod``, ``disconnectTimestamp``,
  ``disconnectReason``, ``queueInfo.queueArn`` / ``queueType`` / ``enqueueTimestamp``,
  ``agentInfo.agentArn`` / ``connectedToAgentTimestamp`` / ``afterContactWorkEndTimestamp``;
  COMPLETED "indicates when the contact is fully completed, including after contact
  work", and is published right after DISCONNECTED with the same data when there is none).
- Agent event stream (Kinesis): https://docs.aws.amazon.com/connect/latest/adminguide/agent-event-stream-model.html
  (``AgentARN``, ``EventId``, ``EventTimestamp``, ``EventType`` LOGIN / LOGOUT /
  STATE_CHANGE / HEART_BEAT, ``CurrentAgentSnapshot`` / ``PreviousAgentSnapshot`` with
  ``AgentStatus.Name``, ``Configuration.RoutingProfile.InboundQueues[].Name|ARN`` and
  ``Contacts[].State``; a contact in state ENDED is in after contact work:
  https://docs.aws.amazon.com/connect/latest/adminguide/determine-acw-time.html).
- Contact records (CTR, one JSON object per contact, Kinesis or S3):
  https://docs.aws.amazon.com/connect/latest/adminguide/ctr-data-model.html
  (``ContactId``, ``Channel``, ``Queue.ARN|Name|EnqueueTimestamp|DequeueTimestamp``,
  ``Agent.ARN|ConnectedToAgentTimestamp|AfterContactWorkEndTimestamp``,
  ``DisconnectTimestamp``, ``DisconnectReason`` (CUSTOMER_DISCONNECT, AGENT_DISCONNECT,
  THIRD_PARTY_DISCONNECT, TELECOM_PROBLEM, BARGED, CONTACT_FLOW_DISCONNECT, OTHER; tasks
  also EXPIRED, API: none says "transferred"), ``NextContactId``, ``PreviousContactId``,
  ``InitialContactId``, ``InitiationMethod`` (INBOUND, OUTBOUND, TRANSFER, QUEUE_TRANSFER,
  CALLBACK, API, DISCONNECT, MONITOR), ``InitiationTimestamp``).

The judgements (README "Connectors" > "Amazon Connect"), in short:

- One Connect contact is one interaction (its ``contactId``), as Connect itself counts
  them. An agent's transfer (``initiationMethod`` TRANSFER: "transferred by an agent to
  another agent or to a queue, using quick connects ... This results in a new CTR") makes
  a new contact, offered in the queue it goes to with its own wait, and a
  ``*.transferred`` on the contact it came from (``previousContactId``, else
  ``initialContactId``) at the new contact's ``initiationTimestamp`` ("for TRANSFER ...
  when the transfer was initiated", CTR data model), with ``to_agent`` = the destination
  (the agent of an agent queue, else the queue), never ``to_queue``: that would move the
  first interaction into the new queue, while the first contact's own end (its COMPLETED,
  after its after contact work) still comes, and nothing in it says it was transferred
  (contact events name no next contact; ``disconnectReason`` has no transfer value), so
  it would end the new queue visit as an abandon. The first contact's handle time is its
  own talk + hold + ACW, as in Connect's per-contact metrics. ``initial_contact_id`` /
  ``previous_contact_id`` attributes link the contacts in the raw store.
- Abandoned counts only contacts that were queued and left before an agent (Connect's
  "abandoned over queued"); one that never reached a queue (IVR, outbound) maps to nothing.
  A queued contact the flow moved on (``nextContactId``) or the flow disconnected is a
  flow-out, not an abandon.
- A handled contact ends when its after contact work ends (COMPLETED, or the CTR's
  ``Agent.AfterContactWorkEndTimestamp``): handle time = talk + hold + ACW, as Connect's
  own handle time; DISCONNECTED of an answered contact maps to nothing.
- The same contact gives the same event ids from contact events and from its contact
  record, so a record replayed over live events dedups.

Pure: no Kafka, no HTTP. Every function raises ``MappingError`` for a payload it cannot map.
"""

from __future__ import annotations

from typing import Any, Mapping

from ccpulse.connectors.base import Family, Mapped, MappingError, event_id
from ccpulse.connectors.payload import checked_id, checked_name, dig, ident, rfc3339
from schemas.events import MAX_REASON_CHARS

SOURCE = "connect"
CONTACT_EVENT = "Amazon Connect Contact Event"
CHANNEL_FAMILY: dict[str, Family] = {"VOICE": "call", "CHAT": "chat"}
# The contact event types ccpulse counts; the others (INITIATED, CONNECTED_TO_SYSTEM,
# CONTACT_DATA_UPDATED, answering-machine detection, and types added later, which the
# docs say to expect) change nothing it counts.
COUNTED_EVENT_TYPES = frozenset(("QUEUED", "CONNECTED_TO_AGENT", "DISCONNECTED", "COMPLETED"))
# DisconnectReason values (CTR data model) for which a queued contact did not hang up
# itself: the system took it out of the queue.
FLOW_OUT_DISCONNECTS = {"CONTACT_FLOW_DISCONNECT": "flow_disconnect", "EXPIRED": "timeout",
                        "API": "api_disconnect"}
# InitiationMethod of a contact an agent made by transferring another (quick connects).
# QUEUE_TRANSFER, a flow moving a waiting contact on, is the first contact's flow-out.
AGENT_TRANSFER = "TRANSFER"
# AgentStatus.Type (newer streams) or, when absent, AgentStatus.Name.
ROUTABLE_STATUS = "Available"
OFFLINE_STATUS = "Offline"


def map_record(doc: Any, queue_names: Mapping[str, str] | None = None) -> list[Mapped]:
    """Any Amazon Connect payload ccpulse reads, recognised by its shape.

    An EventBridge contact event (or its bare ``detail``), an agent event stream
    record, or a contact record. ``queue_names`` maps a queue id (the last part of its
    ARN) to the name to report; without it, a payload's own queue name, else the id.
    An empty list: a valid payload with nothing to count (``ignored``).
    """
    if not isinstance(doc, dict):
        raise MappingError("not_object", f"a JSON {type(doc).__name__}, expected an object")
    names = queue_names or {}
    if "detail" in doc or "detail-type" in doc:
        detail_type = doc.get("detail-type")
        if detail_type != CONTACT_EVENT:
            raise MappingError("unknown_type", f"detail-type {str(detail_type)[:64]!r} is not "
                                               f"{CONTACT_EVENT!r}")
        return contact_event(dig(doc, "detail"), names, envelope_time=doc.get("time"))
    if "AgentARN" in doc and "EventType" in doc:
        return agent_event(doc, names)
    if "ContactId" in doc and ("AWSContactTraceRecordFormatVersion" in doc or "Queue" in doc
                               or "InitiationTimestamp" in doc):
        return contact_record(doc, names)
    if _get(doc, "eventType") is not None and _get(doc, "contactId") is not None:
        return contact_event(doc, names)
    raise MappingError("unknown_shape", "not an Amazon Connect contact event, agent event or contact record "
                                        "(see README, Connectors > Amazon Connect)")


# ---------------------------------------------------------------- contact events

def contact_event(detail: Any, queue_names: Mapping[str, str] | None = None,
                  envelope_time: Any = None) -> list[Mapped]:
    """One contact event's ``detail`` -> the lifecycle events of that contact it shows."""
    if not isinstance(detail, dict):
        raise MappingError("wrong_type", "detail must be an object")
    names = queue_names or {}
    etype = _get(detail, "eventType")
    if not isinstance(etype, str):
        raise MappingError("missing_field", "detail.eventType is required")
    if etype not in COUNTED_EVENT_TYPES:
        return []
    contact = _contact_id(detail, "contactId")
    family = _family(_get(detail, "channel"))
    if family is None:
        return []  # TASK, EMAIL: not a queue-and-answer contact ccpulse counts (README)
    queue_info = _get(detail, "queueInfo")
    agent_info = _get(detail, "agentInfo")
    enqueued = _get(queue_info, "enqueueTimestamp")
    connected = _get(agent_info, "connectedToAgentTimestamp")
    disconnected = _get(detail, "disconnectTimestamp")
    fallback = envelope_time

    def when(value: Any, where: str) -> str:
        if value is not None:
            return rfc3339(value, where)
        if fallback is None:
            raise MappingError("missing_field", f"{where} is required (no envelope time either)")
        return rfc3339(fallback, "time")

    if etype == "QUEUED":
        queue = _queue(_get(queue_info, "queueArn"), None, names, "detail.queueInfo.queueArn")
        offered = _event(family, contact, "offered", when(enqueued, "detail.queueInfo.enqueueTimestamp"),
                         queue=queue)
        offered["attributes"] = _links(contact, _get(detail, "initialContactId"),
                                       _get(detail, "previousContactId"), _get(detail, "initiationMethod"))
        return [Mapped(family, offered), *_transfer_in(
            family, contact, offered, _get(queue_info, "queueArn"), _get(detail, "initiationTimestamp"),
            "detail.initiationTimestamp")]
    if etype == "CONNECTED_TO_AGENT":
        agent = _agent_id(_get(agent_info, "agentArn"), "detail.agentInfo.agentArn")
        return [Mapped(family, _event(family, contact, "answered",
                                      when(connected, "detail.agentInfo.connectedToAgentTimestamp"),
                                      agent_id=agent))]
    # DISCONNECTED / COMPLETED
    if enqueued is None and _get(queue_info, "queueArn") is None:
        return []  # never queued (IVR hang-up, outbound): not offered, not abandoned
    # The older event model names the agent without timestamps: an agent means answered.
    if connected is not None or _get(agent_info, "agentArn") is not None:
        if etype == "DISCONNECTED":
            return []  # the end comes with COMPLETED, after the after contact work
        end = _get(agent_info, "afterContactWorkEndTimestamp")
        occurred = when(end if end is not None else disconnected, "detail.disconnectTimestamp")
        return [Mapped(family, _event(family, contact, "ended", occurred))]
    occurred = when(disconnected, "detail.disconnectTimestamp")
    return [_queue_exit(family, contact, occurred, _get(detail, "disconnectReason"),
                        _get(detail, "nextContactId"))]


# ---------------------------------------------------------------- contact records

def contact_record(ctr: Any, queue_names: Mapping[str, str] | None = None) -> list[Mapped]:
    """One contact record (CTR) -> its lifecycle events, in event-time order.

    Offered at ``Queue.EnqueueTimestamp``; answered at ``Agent.ConnectedToAgentTimestamp``;
    ended at ``Agent.AfterContactWorkEndTimestamp`` (else ``DisconnectTimestamp``);
    a queued contact with no agent left at ``Queue.DequeueTimestamp`` (else the disconnect):
    abandoned, or flowed out (see ``contact_event``). Never queued: nothing.
    """
    if not isinstance(ctr, dict):
        raise MappingError("not_object", "a contact record must be a JSON object")
    names = queue_names or {}
    contact = _contact_id(ctr, "ContactId")
    family = _family(ctr.get("Channel"))
    queue_doc = ctr.get("Queue")
    enqueued = _get(queue_doc, "EnqueueTimestamp")
    if family is None or enqueued is None:
        return []
    queue = _queue(_get(queue_doc, "ARN"), _get(queue_doc, "Name"), names, "Queue.ARN")
    offered = _event(family, contact, "offered", rfc3339(enqueued, "Queue.EnqueueTimestamp"), queue=queue)
    offered["attributes"] = _links(contact, ctr.get("InitialContactId"), ctr.get("PreviousContactId"),
                                   ctr.get("InitiationMethod"))
    out = [Mapped(family, offered), *_transfer_in(family, contact, offered, _get(queue_doc, "ARN"),
                                                  ctr.get("InitiationTimestamp"), "InitiationTimestamp")]
    agent_doc = ctr.get("Agent")
    connected = _get(agent_doc, "ConnectedToAgentTimestamp")
    disconnected = ctr.get("DisconnectTimestamp")
    if connected is not None:
        agent = _agent_id(_get(agent_doc, "ARN"), "Agent.ARN")
        out.append(Mapped(family, _event(family, contact, "answered",
                                         rfc3339(connected, "Agent.ConnectedToAgentTimestamp"), agent_id=agent)))
        end = _get(agent_doc, "AfterContactWorkEndTimestamp")
        if end is not None:
            out.append(Mapped(family, _event(family, contact, "ended",
                                             rfc3339(end, "Agent.AfterContactWorkEndTimestamp"))))
        elif disconnected is not None:
            out.append(Mapped(family, _event(family, contact, "ended",
                                             rfc3339(disconnected, "DisconnectTimestamp"))))
        return out
    left = _get(queue_doc, "DequeueTimestamp")
    if left is None:
        left = disconnected
    if left is not None:
        out.append(_queue_exit(family, contact, rfc3339(left, "Queue.DequeueTimestamp"),
                               ctr.get("DisconnectReason"), ctr.get("NextContactId")))
    return out


# ---------------------------------------------------------------- agent events

def agent_event(doc: Any, queue_names: Mapping[str, str] | None = None) -> list[Mapped]:
    """One agent event stream record -> at most one ``agent.*`` event.

    LOGIN -> ``agent.logged_in`` (the routing profile's inbound queues, the declared
    state); LOGOUT -> ``agent.logged_out``; STATE_CHANGE -> ``agent.state_changed`` when
    the declared state, its reason or the queues changed (a configuration change that
    touches none of them maps to nothing). The status Offline is not staffed: changing
    to it is a log-out, leaving it a log-in. HEART_BEAT: nothing.
    """
    if not isinstance(doc, dict):
        raise MappingError("not_object", "an agent event must be a JSON object")
    names = queue_names or {}
    etype = ident(doc, "EventType")
    if etype == "HEART_BEAT":
        return []
    if etype not in ("LOGIN", "LOGOUT", "STATE_CHANGE"):
        raise MappingError("unknown_type", f"EventType {etype[:64]!r} is not LOGIN, LOGOUT, "
                                           "STATE_CHANGE or HEART_BEAT")
    agent = _agent_id(doc.get("AgentARN"), "AgentARN")
    eid = event_id(SOURCE, "agent", ident(doc, "EventId"))
    occurred = rfc3339(dig(doc, "EventTimestamp"), "EventTimestamp")

    def event(etype_: str, **fields: Any) -> list[Mapped]:
        return [Mapped("agent", {"event_id": eid, "type": etype_, "occurred_at": occurred,
                                 "agent_id": agent, "schema_version": 1, **fields})]

    if etype == "LOGOUT":
        return event("agent.logged_out")
    current = _snapshot(doc.get("CurrentAgentSnapshot"), names, "CurrentAgentSnapshot")

    def logged_in() -> list[Mapped]:
        # No inbound queue (an outbound-only routing profile): staffed for no queue ccpulse counts.
        return event("agent.logged_in", queues=current.queues, **current.fields()) if current.queues else []

    if etype == "LOGIN":
        # Logged in but Offline: staffed from the first change out of it.
        return [] if current.state is None else logged_in()
    previous_doc = doc.get("PreviousAgentSnapshot")
    previous = _snapshot(previous_doc, names, "PreviousAgentSnapshot") if previous_doc is not None else None
    if current.state is None:
        return [] if previous is not None and previous.state is None else event("agent.logged_out")
    if previous is not None and previous.state is None:
        return logged_in()
    if previous is not None and (previous.state, previous.reason, previous.queues) == (
            current.state, current.reason, current.queues):
        return []
    queues = {"queues": current.queues} if current.queues else {}  # EVENTS.md: a list replaces, none keeps
    return event("agent.state_changed", **queues, **current.fields())


class _Snapshot:
    """The part of an AgentSnapshot EVENTS.md carries: declared state (None: Offline), reason, queues."""

    __slots__ = ("state", "reason", "queues")

    def __init__(self, state: str | None, reason: str | None, queues: list[str]) -> None:
        self.state, self.reason, self.queues = state, reason, queues

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _snapshot(doc: Any, names: Mapping[str, str], where: str) -> _Snapshot:
    if not isinstance(doc, dict):
        raise MappingError("missing_field", f"{where} is required")
    status = dig(doc, "AgentStatus", "Name") if isinstance(doc.get("AgentStatus"), dict) else None
    if not isinstance(status, str) or not status:
        raise MappingError("missing_field", f"{where}.AgentStatus.Name is required")
    status_type = _get(doc.get("AgentStatus"), "Type")
    queues_doc = _get(_get(doc.get("Configuration"), "RoutingProfile"), "InboundQueues") or []
    if not isinstance(queues_doc, list):
        raise MappingError("wrong_type", f"{where}.Configuration.RoutingProfile.InboundQueues must be a list")
    queues: list[str] = []
    for i, q in enumerate(queues_doc):
        name = _queue(_get(q, "ARN"), _get(q, "Name"), names,
                      f"{where}.Configuration.RoutingProfile.InboundQueues[{i}].ARN")
        if name not in queues:
            queues.append(name)
    if status_type == "OFFLINE" or (status_type is None and status == OFFLINE_STATUS):
        return _Snapshot(None, None, queues)
    if status_type == "ROUTABLE" or (status_type is None and status == ROUTABLE_STATUS):
        contacts = doc.get("Contacts") or []
        in_acw = isinstance(contacts, list) and any(_get(c, "State") == "ENDED" for c in contacts)
        return _Snapshot("after_contact_work" if in_acw else "available", None, queues)
    return _Snapshot("away", _reason(status, f"{where}.AgentStatus.Name"), queues)


# ---------------------------------------------------------------- shared pieces

def _get(doc: Any, name: str) -> Any:
    """``doc[name]``, also under its PascalCase spelling (older contact events used it)."""
    if not isinstance(doc, dict):
        return None
    value = doc.get(name)
    if value is None:
        value = doc.get(name[:1].upper() + name[1:])
    return value


def _family(channel: Any) -> Family | None:
    if not isinstance(channel, str):
        raise MappingError("missing_field", "channel is required (VOICE, CHAT, TASK or EMAIL)")
    return CHANNEL_FAMILY.get(channel.upper())


def _contact_id(doc: dict[str, Any], key: str) -> str:
    value = _get(doc, key)
    if not isinstance(value, str) or not value:
        raise MappingError("missing_field", f"{key} is required")
    return checked_id(value, key)


def _arn_id(arn: Any, marker: str, where: str) -> str:
    """The resource id of a Connect ARN: what follows ``/queue/`` or ``/agent/``."""
    if not isinstance(arn, str) or not arn:
        raise MappingError("missing_field", f"{where} is required")
    head, sep, tail = arn.partition(marker)
    return tail if sep and tail else arn


def _queue(arn: Any, name: Any, names: Mapping[str, str], where: str) -> str:
    """The queue to report: the ``queue_names`` entry of its id, else the payload's name, else the id."""
    if arn is None and isinstance(name, str) and name:
        queue = names.get(name, name)
    else:
        qid = _arn_id(arn, "/queue/", where)
        queue = names.get(qid) or (name if isinstance(name, str) and name else qid)
    return checked_name(queue, where)


def _agent_id(arn: Any, where: str) -> str:
    return checked_name(_arn_id(arn, "/agent/", where), where)


def _reason(status: str, where: str) -> str:
    """An away status name as a reason code: lower case, spaces as underscores (``On Break`` -> ``on_break``)."""
    code = "_".join(status.lower().split())[:MAX_REASON_CHARS]
    return checked_name(code, where)


def _links(contact: str, initial: Any, previous: Any, method: Any) -> dict[str, str]:
    """The contact's relatives, as attributes: how a transferred contact links to the first."""
    out = {}
    if isinstance(initial, str) and initial and initial != contact:
        out["initial_contact_id"] = initial
    if isinstance(previous, str) and previous and previous != contact:
        out["previous_contact_id"] = previous
    if isinstance(method, str) and method:
        out["initiation_method"] = method
    return out


def _transfer_in(family: Family, contact: str, offered: dict[str, Any], queue_arn: Any, initiated: Any,
                 where: str) -> list[Mapped]:
    """The ``*.transferred`` an agent's transfer counts, on the contact it came from, if ``contact`` is one.

    ``offered`` is the new contact's offer (its queue, time and ``_links`` attributes). Dated
    when the agent started the transfer, so it falls inside the first contact's handling
    whatever that contact's own events say; without that time, when the new contact queued.
    """
    links = offered["attributes"]
    source = links.get("previous_contact_id") or links.get("initial_contact_id")
    if links.get("initiation_method") != AGENT_TRANSFER or source is None:
        return []
    # A quick connect to an agent queues the contact in that agent's own queue
    # (ARN .../queue/agent/ID): the destination is the agent, from live events and records alike.
    if isinstance(queue_arn, str) and "/queue/agent/" in queue_arn:
        to = _agent_id(_arn_id(queue_arn, "/queue/agent/", "queue ARN"), "queue ARN")
    else:
        to = offered["queue"]
    occurred = rfc3339(initiated, where) if initiated is not None else offered["occurred_at"]
    return [Mapped(family, {"event_id": event_id(SOURCE, contact, "transfer_in"), "type": f"{family}.transferred",
                            "occurred_at": occurred, "interaction_id": checked_id(source, "previousContactId"),
                            "to_agent": to, "schema_version": 1})]


def _queue_exit(family: Family, contact: str, occurred: str, disconnect_reason: Any,
                next_contact: Any) -> Mapped:
    """How a queued contact that no agent took left the queue: abandoned, unless the system moved it."""
    if isinstance(next_contact, str) and next_contact:
        reason: str | None = "transfer"  # the flow moved it on as a new contact (e.g. another queue)
    else:
        reason = FLOW_OUT_DISCONNECTS.get(disconnect_reason) if isinstance(disconnect_reason, str) else None
    if reason is None:
        return Mapped(family, _event(family, contact, "abandoned", occurred))
    flowed = _event(family, contact, "flowed_out", occurred)
    flowed["reason"] = reason
    return Mapped(family, flowed)


def _event(family: Family, contact: str, step: str, occurred: str, **fields: Any) -> dict[str, Any]:
    # One id per contact and step: a redelivered event, or the contact record of a contact
    # already seen live, dedups in the pipeline. A contact leaves its queue once, whichever
    # way its payload tells it: one id for the abandon and the flow-out.
    key = "queue_exit" if step in ("abandoned", "flowed_out") else step
    return {"event_id": event_id(SOURCE, contact, key), "type": f"{family}.{step}", "occurred_at": occurred,
            "interaction_id": contact, "schema_version": 1, **fields}
