"""Twilio TaskRouter event callbacks -> EVENTS.md events, and Twilio's request signature.

Vendor documentation this follows:
- Event callbacks (form-encoded POST to the Workspace's EventCallbackUrl; EventType,
  ResourceSid, Timestamp; the Task fields TaskSid, TaskAttributes, TaskAge,
  TaskAssignmentStatus, TaskCanceledReason...; the Worker fields WorkerSid, WorkerName,
  WorkerActivitySid, WorkerActivityName, WorkerTimeInPreviousActivity...):
  https://www.twilio.com/docs/taskrouter/api/event/reference
- Task lifecycle (pending -> reserved -> assigned -> wrapping -> completed; only a
  pending or reserved task can be canceled): https://www.twilio.com/docs/taskrouter/lifecycle-task-state
- Signature: https://www.twilio.com/docs/usage/security#validating-requests
  (X-Twilio-Signature = base64(HMAC-SHA1(auth token, full URL + each POST parameter's
  name and value, sorted by name))). No timestamp is signed, so a replayed request
  cannot be told from a retry: replays are harmless here because every event id is
  derived from Twilio's own ids (a replay dedups in the pipeline).

The mapping (README "Twilio TaskRouter" has the judgements). Each queue visit of a task is
one interaction, ``<TaskSid>:<TaskQueueSid>``, as each Genesys or Asterisk queue visit is:
``task-queue.moved`` names the queue the task LEAVES ("A task leaves its current queue to
move to a new queue during workflow processing"; consumers of the stream such as Twilio's
realtime-stats samples drop the task from that queue's map on it), and only the
``task-queue.entered`` that follows names the new one. A stateless receiver (no memory
across requests, restarts or replicas) cannot know the new queue on the moved event, and
in one interaction the next entry would be a second offer while waiting (an orphan).
The event reference lists TaskQueueSid on every event mapped here (reservation.*, task.*
but task.created, task-queue.*): one without it cannot be placed and is refused.
- task-queue.entered -> *.offered in the queue (customer_id from TaskAttributes.from, on
  every visit, so FCR and repeat contacts see one caller);
- reservation.accepted -> *.answered (agent_id = WorkerSid);
- task.canceled -> *.abandoned (TaskRouter cancels only pending or reserved tasks:
  always before acceptance);
- task.completed -> *.ended; handle time runs from acceptance to completion, so it
  includes the wrapping phase (Twilio's wrap-up); task.wrapup itself maps to nothing;
- task-queue.moved -> *.flowed_out, reason ``transfer``, on the visit it left: TaskRouter's
  workflow took the waiting task out of the queue (EVENTS.md's flow-out, as Connect's
  flow moving a contact on); not ``*.transferred``, which EVENTS.md gives a destination
  (to_queue or to_agent) the moved event does not name;
- worker.activity.update -> agent.state_changed / agent.logged_out by activity name;
- every other event type: nothing (acknowledged, not published).
The family comes from TaskChannelUniqueName: voice -> calls; chat, sms, messaging and
the social messaging channels -> chats; any other channel is refused (dead-lettered).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from ccpulse.connectors.base import Family, Mapped, MappingError, event_id
from ccpulse.connectors.payload import checked_id, checked_name, epoch, same_secret, signature

SOURCE = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"

CHANNEL_FAMILY: dict[str, Family] = {
    "voice": "call",
    "chat": "chat", "sms": "chat", "messaging": "chat", "whatsapp": "chat", "facebook": "chat",
    "web": "chat", "webchat": "chat",
}
# Activity names (lower case) -> EVENTS.md agent state. Offline is not a state: it is
# the end of the agent's shift (agent.logged_out).
OFFLINE_ACTIVITIES = frozenset({"offline"})
AVAILABLE_ACTIVITIES = frozenset({"available", "idle", "ready"})
_WRAP_UP = re.compile(r"wrap|acw|after.?(call|contact)", re.IGNORECASE)
_REASON_CHARS = re.compile(r"[^a-z0-9]+")
# Connect's reason for a flow moving a waiting contact on: the same happening, the same reason.
MOVED_REASON = "transfer"
_CONTACT_EVENTS = ("task-queue.entered", "reservation.accepted", "task.canceled", "task.completed",
                   "task-queue.moved")


def expected_signature(url: str, params: Sequence[tuple[str, str]], auth_token: str) -> str:
    """Twilio's signature of a request to ``url`` with these POST parameters."""
    # Sorted by name and, for a name given twice, by value: what Twilio's own helpers do.
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(signature(auth_token, data.encode("utf-8"), "sha1")).decode("ascii")


def verify(url: str, params: Sequence[tuple[str, str]], signature: str | None, auth_token: str) -> bool:
    """Whether ``signature`` (the X-Twilio-Signature header) signs this URL and these parameters.

    Twilio signs the URL as it called it; a proxy in between may add or drop the
    default port, so both spellings are accepted, as Twilio's own helpers do.
    """
    if not signature or not auth_token:
        return False
    return any(same_secret(expected_signature(candidate, params, auth_token), signature)
               for candidate in _url_spellings(url))


def _url_spellings(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if default is None or not host:
        return [url]
    try:
        port = parts.port
    except ValueError:
        return [url]
    other = host if port == default else (f"{host}:{default}" if port is None else None)
    if other is None:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{other}" if userinfo else other
    return [url, urlunsplit(parts._replace(netloc=netloc))]


def map_callback(params: Mapping[str, str]) -> list[Mapped]:
    """One TaskRouter event callback (its form parameters) as EVENTS.md events."""
    event_type = _required(params, "EventType")
    if event_type == "worker.activity.update":
        return [_worker_activity(params)]
    if event_type not in _CONTACT_EVENTS:
        return []
    task = checked_id(_required(params, "TaskSid"), "TaskSid")
    family = _family(params)
    at = _occurred_at(params)
    queue_sid = _required(params, "TaskQueueSid")
    base: dict[str, Any] = {"occurred_at": at,
                            "interaction_id": checked_id(f"{task}:{queue_sid}", "TaskSid:TaskQueueSid")}
    if event_type == "task-queue.entered":
        # The time tells a later visit to the same queue from Twilio retrying this callback.
        doc = dict(base, event_id=event_id(SOURCE, task, "offered", queue_sid, at), type=f"{family}.offered",
                   queue=_queue(params))
        customer = _attributes(params).get("from")
        if isinstance(customer, str) and customer:
            doc["customer_id"] = customer
    elif event_type == "reservation.accepted":
        doc = dict(base, event_id=event_id(SOURCE, task, "accepted", params.get("ReservationSid", "")),
                   type=f"{family}.answered", agent_id=checked_name(_required(params, "WorkerSid"), "WorkerSid"))
    elif event_type == "task.canceled":
        doc = dict(base, event_id=event_id(SOURCE, task, "canceled"), type=f"{family}.abandoned")
        reason = params.get("TaskCanceledReason")
        if reason:
            doc["attributes"] = {"canceled_reason": reason[:200]}
    elif event_type == "task.completed":
        doc = dict(base, event_id=event_id(SOURCE, task, "completed"), type=f"{family}.ended")
    else:  # task-queue.moved: out of the queue it names, to one its next task-queue.entered names
        doc = dict(base, event_id=event_id(SOURCE, task, "moved", queue_sid, at), type=f"{family}.flowed_out",
                   reason=MOVED_REASON)
    return [Mapped(family, doc)]


def _worker_activity(params: Mapping[str, str]) -> Mapped:
    worker = checked_name(_required(params, "WorkerSid"), "WorkerSid")
    activity = _required(params, "WorkerActivityName")
    at = _occurred_at(params)
    # The activity SID and the time tell two updates of one worker apart; a retry repeats both.
    eid = event_id(SOURCE, worker, "activity", params.get("WorkerActivitySid", activity), at)
    name = activity.strip().lower()
    doc: dict[str, Any] = {"event_id": eid, "occurred_at": at, "agent_id": worker}
    if name in OFFLINE_ACTIVITIES:
        doc["type"] = "agent.logged_out"
    elif name in AVAILABLE_ACTIVITIES:
        doc.update(type="agent.state_changed", state="available")
    elif _WRAP_UP.search(name):
        doc.update(type="agent.state_changed", state="after_contact_work")
    else:
        reason = _REASON_CHARS.sub("_", name).strip("_")[:64] or "away"
        doc.update(type="agent.state_changed", state="away", reason=reason)
    return Mapped("agent", doc)


def _family(params: Mapping[str, str]) -> Family:
    channel = (params.get("TaskChannelUniqueName") or "").strip().lower()
    if not channel:
        # Flex writes the channel into the task's attributes as well.
        attr = _attributes(params).get("channelType")
        channel = attr.strip().lower() if isinstance(attr, str) else ""
    family = CHANNEL_FAMILY.get(channel)
    if family is None:
        raise MappingError("unsupported_channel",
                           f"task channel {channel[:64]!r} is not voice or a chat channel "
                           f"({', '.join(sorted(CHANNEL_FAMILY))})")
    return family


def _queue(params: Mapping[str, str]) -> str:
    if params.get("TaskQueueName"):
        return checked_name(params["TaskQueueName"], "TaskQueueName")
    return checked_name(_required(params, "TaskQueueSid"), "TaskQueueSid")


def _attributes(params: Mapping[str, str]) -> dict[str, Any]:
    text = params.get("TaskAttributes")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise MappingError("not_json", "TaskAttributes is not JSON") from None
    return value if isinstance(value, dict) else {}


def _occurred_at(params: Mapping[str, str]) -> str:
    # TimestampMs where Twilio sends it; Timestamp is epoch seconds.
    if params.get("TimestampMs"):
        return epoch(params["TimestampMs"], "TimestampMs", 1)
    return epoch(_required(params, "Timestamp"), "Timestamp", 1000)


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise MappingError("missing_field", f"{name} is required")
    return value
