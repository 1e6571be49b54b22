"""Asterisk ``queue_log`` lines -> EVENTS.md events.

Format, per Asterisk's own documentation ("Queue Logs",
https://docs.asterisk.org/Operation/Logging/Queue-Logs/, and the sample file of
"Asterisk: The Definitive Guide", http://www.asteriskdocs.org/en/3rd_Edition/asterisk-book-html-chunk/ACD_id289009.html)::

    epoch|uniqueid|queuename|agent|event|data1|data2|...

``uniqueid`` is the caller channel's unique id (``MANAGER``, ``NONE`` or ``REALTIME``
on lines that are not about a call); ``agent`` is the member name (by default the
member's interface, e.g. ``SIP/1001``; ``NONE`` when no member is involved). The
event's data fields, as app_queue writes them:

- ENTERQUEUE(url|callerid[|position]); CONNECT(holdtime|bridgedchanneluniqueid|ringtime)
- ABANDON, EXITEMPTY, EXITWITHTIMEOUT (position|origposition|waittime);
  EXITWITHKEY(key|position|origposition|waittime)
- COMPLETEAGENT, COMPLETECALLER (holdtime|calltime|origposition)
- TRANSFER, BLINDTRANSFER (extension|context|holdtime|calltime|origposition);
  ATTENDEDTRANSFER(method|method-data|holdtime|calltime|origposition), method BRIDGE|APP|LINK
- ADDMEMBER, REMOVEMEMBER (no data); PAUSE, UNPAUSE (reason, Asterisk 1.8+; empty before);
  PAUSEALL, UNPAUSEALL on queue ``NONE``, followed by one PAUSE/UNPAUSE per queue.

The mapping and its judgements are in README.md, "Connectors" > "Asterisk". The mapper
is stateful only where the format forces it, and its state is small and saved with
the follower's position (:meth:`QueueLogMapper.snapshot` / :meth:`QueueLogMapper.restore`):

- each agent's queues and paused queues, because ADDMEMBER/PAUSE name one queue
  while EVENTS.md's agent events carry the agent's whole list and one state;
- the calls that left a queue by a transfer in the last day, because a call transferred
  into another queue comes back with the same uniqueid, usually within the same whole
  second as the transfer; in one interaction that ``call.offered`` would sort before the
  ``call.ended`` of the same millisecond (lifecycle order) and be an orphan, so each
  queue visit after the n-th transfer is the interaction ``<uniqueid>.t<n>``.

After a restart without the saved state (a new state file), an agent's queue list starts
again from the lines read, and a transfer's re-entry within that day maps to the bare
uniqueid (its offer may then be an orphan in the pipeline: counted, not lost).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from ccpulse.connectors.base import UNNAMED_DESTINATION, Mapped, MappingError, event_id
from ccpulse.core.timestamps import format_ms
from schemas.events import MAX_ID_CHARS, name_problem

SOURCE = "asterisk"

# Lines app_queue writes that are no contact or presence change ccpulse counts: queue
# housekeeping, ring attempts (the call is still waiting), callers turned away before
# entering the queue (JOINEMPTY/JOINUNAVAIL: never offered), chan_agent logins (the queue
# membership, ADDMEMBER/REMOVEMEMBER, is what routes calls), FreePBX's DID/INFO lines.
IGNORED = frozenset((
    "QUEUESTART", "CONFIGRELOAD", "RINGNOANSWER", "RINGCANCELED", "AGENTDUMP", "SYSCOMPAT",
    "JOINEMPTY", "JOINUNAVAIL", "AGENTLOGIN", "AGENTLOGOFF", "AGENTCALLBACKLOGIN",
    "AGENTCALLBACKLOGOFF", "PENALTY", "DID", "INFO", "RINGCANCELLED", "QUEUEMEMBERUPDATE",
))
FLOW_OUT_REASONS = {"EXITWITHTIMEOUT": "timeout", "EXITEMPTY": "no_agents", "EXITWITHKEY": "caller_key"}
TRANSFERS = frozenset(("TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER"))
# How long a transferred call's uniqueid is remembered (event time): a transfer into
# another queue re-enters within seconds; a day bounds the state on any PBX.
TRANSFER_MEMORY_SECONDS = 86_400
# A channel interface (TECH/resource, e.g. SIP/1001, PJSIP/1001, Local/1001@from-queue/n,
# Agent/1001): the agent is the resource, so one person reached through two technologies
# is one agent. A member name without a slash is kept as it is.
_INTERFACE = re.compile(r"[A-Za-z][A-Za-z0-9_]*/([^@/]+)")
_NO_CALL = frozenset(("NONE", "MANAGER", "REALTIME", ""))


def agent_id(member: str) -> str:
    """The ccpulse agent id of a queue_log member field: ``SIP/1001`` -> ``1001``; a name as is."""
    match = _INTERFACE.match(member)
    return match.group(1) if match else member


class QueueLogMapper:
    """Maps queue_log lines one at a time, in file order."""

    def __init__(self) -> None:
        # agent id -> (queues in the order added, queues paused, last pause reason)
        self._agents: dict[str, tuple[list[str], set[str], str]] = {}
        # The derived state last sent per agent, so a PAUSEALL and its per-queue PAUSE
        # lines send one agent.state_changed, not one per queue.
        self._sent: dict[str, tuple[str, str]] = {}
        # uniqueid -> (transfers so far, epoch of the last): oldest first, for expiry.
        self._transfers: OrderedDict[str, tuple[int, int]] = OrderedDict()

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """The mapper's state as JSON-able data, saved with the follower's position."""
        return {
            "agents": {a: [q, sorted(p), r] for a, (q, p, r) in self._agents.items()},
            "sent": {a: list(s) for a, s in self._sent.items()},
            "transfers": [[u, n, t] for u, (n, t) in self._transfers.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (a restart resumes where the saved position is)."""
        self._agents = {a: (list(q), set(p), str(r)) for a, (q, p, r) in state.get("agents", {}).items()}
        self._sent = {a: (s[0], s[1]) for a, s in state.get("sent", {}).items()}
        self._transfers = OrderedDict((u, (int(n), int(t))) for u, n, t in state.get("transfers", []))

    # ------------------------------------------------------------------ mapping

    def map_line(self, line: str) -> list[Mapped]:
        """The events of one queue_log line (without its newline); [] for a line ccpulse ignores.

        Raises ``MappingError`` for a line that is not queue_log or names an event or a
        queue/agent ccpulse cannot take; the caller dead-letters it and goes on.
        """
        fields = line.rstrip("\r").split("|")
        if len(fields) < 5:
            raise MappingError("bad_line", f"{len(fields)} '|'-separated fields, a queue_log line has at least 5")
        epoch_text, uniqueid, queue, member, event = fields[:5]
        data = fields[5:]
        if not epoch_text.isdigit():
            raise MappingError("bad_timestamp", f"epoch {epoch_text[:32]!r} is not a UNIX timestamp")
        epoch = int(epoch_text)
        if event in IGNORED:
            return []
        if event in ("ADDMEMBER", "REMOVEMEMBER", "PAUSE", "UNPAUSE", "PAUSEALL", "UNPAUSEALL"):
            return self._agent_event(epoch, queue, member, event, data)
        if event not in ("ENTERQUEUE", "CONNECT", "ABANDON", "COMPLETEAGENT", "COMPLETECALLER",
                         *FLOW_OUT_REASONS, *TRANSFERS):
            raise MappingError("unknown_event", f"{event[:64]!r} is not a queue_log event ccpulse maps")
        return self._call_event(epoch, uniqueid, queue, member, event, data)

    def _call_event(self, epoch: int, uniqueid: str, queue: str, member: str, event: str,
                    data: list[str]) -> list[Mapped]:
        if uniqueid in _NO_CALL:
            raise MappingError("missing_field", f"{event} without the caller's uniqueid ({uniqueid!r})")
        _check_name("queue", queue)
        self._expire(epoch)
        transfers, _ = self._transfers.get(uniqueid, (0, 0))
        iid = uniqueid if transfers == 0 else f"{uniqueid}.t{transfers}"
        if len(iid) > MAX_ID_CHARS:
            raise MappingError("invalid_value", f"uniqueid must be at most {MAX_ID_CHARS - 4} characters")

        def call(etype: str, *extra_id: str, **fields: Any) -> Mapped:
            doc: dict[str, Any] = {
                "event_id": event_id(SOURCE, uniqueid, transfers, queue, event, epoch, *extra_id),
                "type": etype, "occurred_at": format_ms(epoch * 1000), "interaction_id": iid,
                "queue": queue, "schema_version": 1, **fields}
            return Mapped("call", doc)

        if event == "ENTERQUEUE":
            callerid = data[1] if len(data) > 1 else ""
            # The caller id is the customer (FCR's repeat-contact key); the pipeline treats
            # customer_id as personal data. Asterisk writes "" or "unknown" when it has none.
            extra = {"customer_id": callerid} if callerid and callerid.lower() not in ("unknown", "anonymous") else {}
            return [call("call.offered", **extra)]
        if event == "ABANDON":
            return [call("call.abandoned")]
        if event in FLOW_OUT_REASONS:
            extra = {"attributes": {"key": data[0]}} if event == "EXITWITHKEY" and data and data[0] else {}
            return [call("call.flowed_out", reason=FLOW_OUT_REASONS[event], **extra)]
        agent = _member(event, member)
        if event == "CONNECT":
            return [call("call.answered", agent_id=agent)]
        if event in ("COMPLETEAGENT", "COMPLETECALLER"):
            ended_by = "agent" if event == "COMPLETEAGENT" else "caller"
            return [call("call.ended", agent_id=agent, attributes={"ended_by": ended_by})]
        # A transfer: the queue's part of the call is over (Asterisk writes no COMPLETE*
        # after it), so the agent's handling ends here too; where the call went is the
        # dialplan's, and a queue it enters writes its own ENTERQUEUE (a new visit).
        if event == "ATTENDEDTRANSFER":
            method = data[0] if data else ""
            target = f"{method}:{data[1]}" if len(data) > 1 and data[1] else method
        else:
            target = "@".join(part for part in data[:2] if part)
        to_agent = target[:MAX_ID_CHARS] if target and name_problem(target[:MAX_ID_CHARS]) is None else UNNAMED_DESTINATION
        self._transfers[uniqueid] = (transfers + 1, epoch)
        self._transfers.move_to_end(uniqueid)
        return [call("call.transferred", "transferred", agent_id=agent, to_agent=to_agent,
                     attributes={"transfer": event.lower()}),
                call("call.ended", "ended", agent_id=agent, attributes={"ended_by": "transfer"})]

    def _agent_event(self, epoch: int, queue: str, member: str, event: str, data: list[str]) -> list[Mapped]:
        agent = _member(event, member)
        queues, paused, reason = self._agents.get(agent, ([], set(), ""))
        queues, paused = list(queues), set(paused)
        all_queues = event in ("PAUSEALL", "UNPAUSEALL")
        if not all_queues:
            _check_name("queue", queue)
        out: list[Mapped] = []

        def agent_event(etype: str, **fields: Any) -> Mapped:
            doc: dict[str, Any] = {
                "event_id": event_id(SOURCE, member, queue, event, epoch, etype),
                "type": etype, "occurred_at": format_ms(epoch * 1000), "agent_id": agent,
                "schema_version": 1, **fields}
            return Mapped("agent", doc)

        if event == "ADDMEMBER":
            if queue not in queues:
                queues.append(queue)
            state = _state(queues, paused, reason)
            # Each ADDMEMBER repeats the login with the grown list: EVENTS.md's logged_in
            # carries every queue the agent serves from now on.
            out.append(agent_event("agent.logged_in", queues=list(queues), state=state[0],
                                   **({"reason": state[1]} if state[1] else {})))
            self._sent[agent] = state
        elif event == "REMOVEMEMBER":
            if queue in queues:
                queues.remove(queue)
            paused.discard(queue)
            if not queues:
                out.append(agent_event("agent.logged_out"))
                self._agents.pop(agent, None)
                self._sent.pop(agent, None)
                return out
            state = _state(queues, paused, reason)
            out.append(agent_event("agent.state_changed", queues=list(queues), state=state[0],
                                   **({"reason": state[1]} if state[1] else {})))
            self._sent[agent] = state
        else:
            pausing = event in ("PAUSE", "PAUSEALL")
            if pausing:
                reason = _reason(data[0] if data else "")
            targets = queues if all_queues else [queue]
            if not all_queues and queue not in queues:
                # A static member (queues.conf) never gets an ADDMEMBER: its queues are
                # learnt from the lines that name them.
                queues.append(queue)
            if pausing:
                paused.update(targets)
            else:
                paused.difference_update(targets)
            state = _state(queues, paused, reason)
            if self._sent.get(agent) != state:
                out.append(agent_event("agent.state_changed", state=state[0],
                                       **({"reason": state[1]} if state[1] else {})))
                self._sent[agent] = state
        self._agents[agent] = (queues, paused, reason)
        return out

    def _expire(self, epoch: int) -> None:
        while self._transfers:
            uniqueid, (_, last) = next(iter(self._transfers.items()))
            if epoch - last <= TRANSFER_MEMORY_SECONDS:
                break
            del self._transfers[uniqueid]


def _state(queues: list[str], paused: set[str], reason: str = "") -> tuple[str, str]:
    """An agent paused in every queue it serves is away; unpaused in any, it takes calls."""
    if queues and all(q in paused for q in queues):
        return ("away", reason)
    return ("available", "")


def _reason(text: str) -> str:
    # EVENTS.md: 1-64 characters. An Asterisk pause without a reason is just "away".
    text = text.strip()[:64]
    return text if text and name_problem(text) is None else ""


def _member(event: str, member: str) -> str:
    if member in ("NONE", ""):
        raise MappingError("missing_field", f"{event} without the queue member (agent field {member!r})")
    agent = agent_id(member)
    _check_name("agent", agent)
    return agent


def _check_name(what: str, name: str) -> None:
    if name in ("NONE", ""):
        raise MappingError("missing_field", f"no {what} name")
    if len(name) > MAX_ID_CHARS:
        raise MappingError("invalid_value", f"{what} name longer than {MAX_ID_CHARS} characters")
    problem = name_problem(name)
    if problem is not None:
        raise MappingError("invalid_value", f"{what} {name[:64]!r} {problem}")
