"""Chat and ticket events, and a mixed voice + chat + ticket stream.

The companions of :mod:`ccpulse.commands.simulate` (voice), built the same way: a
discrete-event simulation on integer milliseconds of event time driven by a
heap, deterministic for a seed, lazy (``duration=math.inf`` streams forever in
bounded memory) and yielding EVENTS.md-shaped dicts in event-time order with
RFC 3339 millisecond ``Z`` timestamps.

Chats are an M/M/c+M queue in which an agent holds up to ``concurrency`` chats
at once: a chat waits (FIFO) for a free slot, routed to the agent with the
fewest open chats (then the one assigned least recently). A conversation
alternates customer and agent messages, customer first; the customer sometimes
types the first message while still waiting, so first-response time includes
the queue wait, as it does for a real customer. A transfer hands the chat to a
chat queue (another one when there is one, else a re-queue), where it waits
again and may be abandoned.

Tickets have no capacity model: each ticket's whole lifecycle (assignment,
internal notes, the first public reply, customer/agent exchanges, solve,
reopen, rating, auto-close) is scripted when it is created, and the scripts are
merged in event time.

Customers come from the voice simulator's finite population, and a share of
contacts are follow-ups by a customer seen in the last hours, so that
first-contact resolution has both outcomes even over a short run.

Identifiers never collide with the voice simulator's (``c-<seed>-<n>``):
chats are ``chat-<seed>-<n>``, tickets ``tkt-<seed>-<n>``, and an event id is
the interaction id plus the event's 1-based position in that interaction.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import accumulate, count
from typing import Any, Iterable, Iterator

from ccpulse.commands.simulate import (
    DEFAULT_START,
    QueueModel,
    SimulationConfig,
    _Clock,
    _Customers,
    generate_call_events,
)
from ccpulse.config import StaffingSettings

__all__ = [
    "FAMILIES",
    "ChatConfig",
    "TicketConfig",
    "generate_chat_events",
    "generate_mixed_events",
    "generate_ticket_events",
]

# Event families, in the order the mixed stream breaks event-time ties.
FAMILIES = ("call", "chat", "ticket")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

# Follow-ups: a repeat contact comes from someone seen within this window
# (inside the default 24 h first-contact-resolution horizon); the memory is
# bounded so an endless stream stays in bounded memory.
_FOLLOW_UP_MEMORY = 2000

# Chat pacing not worth a config field.
_EARLY_MESSAGE_MEAN = 15.0  # s after offered that a waiting customer types
_OPENING_MEAN = 5.0  # s after accept to the customer's first message (when none was typed while waiting)
_CLOSING_MEAN = 30.0  # s after the last message until the chat is closed
_CHAT_RATING_MEAN = 30.0  # s after end until the post-chat survey is answered

# CSAT 1..5: most customers who answer a survey are satisfied; complainants are not.
_CSAT_WEIGHTS = tuple(accumulate((0.06, 0.05, 0.09, 0.30, 0.50)))
_CSAT_COMPLAINT_WEIGHTS = tuple(accumulate((0.35, 0.25, 0.20, 0.12, 0.08)))
# NPS 0..10: about 20% detractors (0-6), 30% passives, 50% promoters.
_NPS_WEIGHTS = tuple(accumulate((0.02, 0.01, 0.02, 0.02, 0.03, 0.05, 0.05, 0.12, 0.18, 0.22, 0.28)))

# Tickets.
_TICKET_PRIORITIES = (("normal", 1.0), ("high", 0.5), ("urgent", 0.25))  # (name, reply-time factor)
_TICKET_PRIORITY_WEIGHTS = tuple(accumulate((0.75, 0.18, 0.07)))
_ASSIGN_PROBABILITY = 0.7  # an explicit ticket.assigned before the first reply
_TICKET_RATING_MEAN = 4 * 3600.0  # s after the final solve


def _check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be a positive number")


def _check_non_negative(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be zero or a positive number")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a probability between 0 and 1")


def _check_common(cfg: Any) -> None:
    _check_positive("rate", cfg.rate)
    if not cfg.queues:
        raise ValueError("queues: at least one queue is needed")
    names = [q.name for q in cfg.queues]
    if len(set(names)) != len(names):
        raise ValueError(f"queues: names must be unique, got {names}")
    _check_probability("repeat_probability", cfg.repeat_probability)
    _check_probability("complaint_probability", cfg.complaint_probability)
    _check_probability("rating_probability", cfg.rating_probability)
    if cfg.start.tzinfo is None or cfg.start.utcoffset() is None:
        raise ValueError("start: must be timezone-aware")
    start = cfg.start.astimezone(timezone.utc)
    object.__setattr__(cfg, "start", start.replace(microsecond=start.microsecond // 1000 * 1000))


@dataclass(frozen=True)
class ChatConfig:
    rate: float = 0.5  # chats per second (event time), all chat queues together
    # 0.5 chats/s of ~2.5 min each is ~80 chats open at once: 30 agents x 3 slots
    # run at ~85% occupancy, so chats wait a little and a few are missed.
    queues: tuple[QueueModel, ...] = (QueueModel("chat-support", agents=30),)
    # Chats one agent handles at once: what the pipeline's agents_required assumes by default.
    concurrency: int = StaffingSettings.chat_sessions_per_agent
    patience_mean: float | None = 120.0  # s; a chat not accepted in time is abandoned. None: never
    messages_mean: float = 6.0  # messages per chat, alternating customer/agent, customer first
    agent_reply_mean: float = 20.0  # s from a customer message to the agent's reply
    customer_reply_mean: float = 30.0  # s from an agent message to the customer's reply
    transfer_probability: float = 0.05  # transferred to a chat queue after the answer
    rating_probability: float = 0.3  # chat.rated (csat 1-5, mostly 4-5) shortly after the end
    complaint_probability: float = 0.02  # attributes {"complaint": true} on chat.offered
    # The customer types the first message while still waiting for an agent.
    pre_message_probability: float = 0.3
    # A contact is a follow-up by a customer seen in the last hours (a repeat contact).
    repeat_probability: float = 0.15
    seed: int = 1
    start: datetime = DEFAULT_START  # normalised to UTC milliseconds
    # agent.logged_in for every chat agent at the start (family "agent"); off by default.
    agent_events: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.agent_events, bool):
            raise ValueError("agent_events: must be true or false")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError("concurrency: must be an integer of at least 1")
        if self.patience_mean is not None:
            _check_positive("patience_mean", self.patience_mean)
        if not (self.messages_mean >= 1 and math.isfinite(self.messages_mean)):
            raise ValueError("messages_mean: must be at least 1")
        _check_positive("agent_reply_mean", self.agent_reply_mean)
        _check_positive("customer_reply_mean", self.customer_reply_mean)
        _check_probability("transfer_probability", self.transfer_probability)
        _check_probability("pre_message_probability", self.pre_message_probability)


@dataclass(frozen=True)
class TicketConfig:
    rate: float = 0.2  # tickets per second (event time)
    queues: tuple[QueueModel, ...] = (QueueModel("tier1", agents=5),)
    channels: tuple[str, ...] = ("email", "web", "social")  # drawn uniformly per ticket
    first_reply_mean: float = 3600.0  # s until the first public agent reply (normal priority)
    no_reply_close_probability: float = 0.05  # closed without any agent reply (abandoned)
    replies_mean: float = 2.0  # public agent replies until solved (>= 1); customer replies in between
    internal_note_probability: float = 0.2  # an internal note (public false) before the first response
    solve_after_mean: float = 7200.0  # s from the last agent reply to ticket.solved
    reopen_probability: float = 0.1  # reopened after the solve, then another reply and solve
    close_after_solve: float = 86400.0  # s from the final solve to ticket.closed (auto-close)
    rating_probability: float = 0.2  # ticket.rated (csat and/or nps) after the final solve
    complaint_probability: float = 0.02  # attributes {"complaint": true} on ticket.created
    customer_reply_mean: float = 7200.0  # s from an agent reply to the customer's answer
    repeat_probability: float = 0.15
    seed: int = 1
    start: datetime = DEFAULT_START

    def __post_init__(self) -> None:
        _check_common(self)
        if not self.channels:
            raise ValueError("channels: at least one channel is needed")
        for ch in self.channels:
            if not isinstance(ch, str) or not 1 <= len(ch) <= 128 or ch in ("voice", "chat"):
                raise ValueError(f"channels: {ch!r} is not a ticket channel (1-128 characters, not voice/chat)")
        _check_positive("first_reply_mean", self.first_reply_mean)
        _check_probability("no_reply_close_probability", self.no_reply_close_probability)
        if not (self.replies_mean >= 1 and math.isfinite(self.replies_mean)):
            raise ValueError("replies_mean: must be at least 1")
        _check_probability("internal_note_probability", self.internal_note_probability)
        _check_positive("solve_after_mean", self.solve_after_mean)
        _check_probability("reopen_probability", self.reopen_probability)
        _check_non_negative("close_after_solve", self.close_after_solve)
        _check_positive("customer_reply_mean", self.customer_reply_mean)


# ---------------------------------------------------------------- shared pieces

def _geometric(rng: random.Random, mean: float) -> int:
    """0, 1, 2, ... with the given mean (the discrete memoryless count)."""
    if mean <= 0:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log(mean / (mean + 1.0)))


def _exp_ms(rng: random.Random, mean_s: float) -> int:
    """An exponential delay in whole milliseconds, at least 1 ms (so order is strict)."""
    return max(1, round(rng.expovariate(1.0 / mean_s) * 1000))


def _pick(rng: random.Random, cum_weights: tuple[float, ...]) -> int:
    return min(bisect_right(cum_weights, rng.random() * cum_weights[-1]), len(cum_weights) - 1)


def _horizon_ms(duration: float) -> float:
    if not duration >= 0:
        raise ValueError("duration: must be zero or a positive number of seconds")
    return math.inf if math.isinf(duration) else round(duration * 1000)


# ---------------------------------------------------------------- chats

# Heap entry kinds, in tie order: a conversation step (which may free a slot)
# before a patience timer (a chat accepted exactly at its patience is answered),
# before a message typed while waiting, before a new arrival.
_STEP, _ABANDON, _EARLY, _ARRIVAL = 0, 1, 2, 3
_WAITING, _ACTIVE, _ENDED, _ABANDONED = 0, 1, 2, 3


@dataclass(slots=True, eq=False)
class _Agent:
    name: str
    index: int
    active: int = 0
    assigned_ms: int = -1


@dataclass(slots=True, eq=False)
class _ChatQueue:
    name: str
    agents: list[_Agent]
    free_slots: int
    waiting: deque[_Chat] = field(default_factory=deque)


@dataclass(slots=True, eq=False)
class _Chat:
    iid: str
    queue: int
    customer_id: str
    complaint: bool
    # Everything random is drawn at arrival, whether used or not: the random
    # stream then depends on the arrivals only, so changing agent counts keeps
    # the same customers and conversations.
    patience_ms: tuple[int | None, int | None]  # first wait, wait after a transfer
    early_ms: int | None  # typed while waiting, this long after offered
    opening_ms: int  # first customer message after accept, when none was typed while waiting
    messages: int
    gaps_ms: list[int]  # gaps_ms[i]: delay of message i after message i - 1 (i >= 1)
    transfer_turn: int  # the agent turn replaced by a transfer, or -1
    to_queue: int
    after_transfer_ms: int  # the new agent's reply after accepting a transferred chat
    closing_ms: int
    csat: int | None
    rating_ms: int
    segment: int = 0
    state: int = _WAITING
    agent: _Agent | None = None
    sent: int = 0  # messages sent so far
    emitted: int = 0  # events emitted so far (the event id suffix)


def generate_chat_events(cfg: ChatConfig, duration: float) -> Iterator[dict[str, Any]]:
    """Every chat event with ``occurred_at < cfg.start + duration``, in event-time order.

    Per chat: ``chat.offered`` (queue, customer_id, sometimes attributes
    ``{"complaint": true}``) -> optionally a customer ``chat.message`` while
    waiting -> ``chat.answered`` (agent_id) or ``chat.abandoned`` -> alternating
    ``chat.message`` (sender customer/agent, customer first; agent messages carry
    agent_id) -> ``chat.ended`` (agent_id) -> sometimes ``chat.rated`` (csat).
    A ``chat.transferred`` (to_queue) replaces an agent's turn; the chat then
    waits in ``to_queue`` and is answered (or abandoned) there. Lazy and
    deterministic, like :func:`ccpulse.commands.simulate.generate_call_events`.
    """
    horizon_ms = _horizon_ms(duration)
    return _chat_events(cfg, horizon_ms)


def _chat_events(cfg: ChatConfig, horizon_ms: float) -> Iterator[dict[str, Any]]:
    rng = random.Random(cfg.seed)
    customers = _Customers(rng, cfg.repeat_probability, memory=_FOLLOW_UP_MEMORY)
    start_ms = (cfg.start - _EPOCH) // _MS
    clock = _Clock()
    conc = cfg.concurrency
    queues = [
        _ChatQueue(q.name, [_Agent(f"{q.name}-a{i}", i) for i in range(1, q.agents + 1)], q.agents * conc)
        for q in cfg.queues
    ]
    cum_weights = tuple(accumulate(q.weight for q in cfg.queues))
    nq = len(queues)
    patience_mean = cfg.patience_mean
    agent_mean, customer_mean = cfg.agent_reply_mean, cfg.customer_reply_mean
    many = cfg.messages_mean >= 2
    extra_mean = cfg.messages_mean - (2 if many else 1)
    prefix = f"chat-{cfg.seed}-"

    heap: list[tuple[int, int, int, _Chat, int]] = []
    seq = count()
    arrival_s = 0.0
    chats = 0

    def push(at_ms: int, kind: int, chat: _Chat, tag: int = 0) -> None:
        heapq.heappush(heap, (at_ms, kind, next(seq), chat, tag))

    def next_arrival() -> None:
        nonlocal arrival_s, chats
        arrival_s += rng.expovariate(cfg.rate)
        chats += 1
        offered = round(arrival_s * 1000)
        queue = _pick(rng, cum_weights)
        customer = customers.draw(offered)
        complaint = rng.random() < cfg.complaint_probability
        if patience_mean is None:
            patience: tuple[int | None, int | None] = (None, None)
        else:
            patience = (round(rng.expovariate(1.0 / patience_mean) * 1000),
                        round(rng.expovariate(1.0 / patience_mean) * 1000))
        early = _exp_ms(rng, _EARLY_MESSAGE_MEAN) if rng.random() < cfg.pre_message_probability else None
        opening = _exp_ms(rng, _OPENING_MEAN)
        messages = (2 if many else 1) + _geometric(rng, extra_mean)
        gaps = [0] + [_exp_ms(rng, agent_mean if i % 2 else customer_mean) for i in range(1, messages)]
        transfer_turn, to_queue = -1, queue
        if messages >= 2 and rng.random() < cfg.transfer_probability:
            transfer_turn = 2 * rng.randrange(messages // 2) + 1  # an agent turn: 1, 3, ...
            if nq > 1:
                to_queue = rng.randrange(nq - 1)
                to_queue += to_queue >= queue  # any other queue
        after_transfer = _exp_ms(rng, agent_mean)
        closing = _exp_ms(rng, _CLOSING_MEAN)
        csat = None
        if rng.random() < cfg.rating_probability:
            csat = 1 + _pick(rng, _CSAT_COMPLAINT_WEIGHTS if complaint else _CSAT_WEIGHTS)
        rating = _exp_ms(rng, _CHAT_RATING_MEAN)
        push(offered, _ARRIVAL, _Chat(
            f"{prefix}{chats}", queue, customer, complaint, patience, early, opening, messages,
            gaps, transfer_turn, to_queue, after_transfer, closing, csat, rating))

    def event(chat: _Chat, kind: str, now: int) -> dict[str, Any]:
        chat.emitted += 1
        return {
            "event_id": f"{chat.iid}-{chat.emitted}",
            "type": kind,
            "occurred_at": clock.format(start_ms + now),
            "interaction_id": chat.iid,
            "queue": queues[chat.queue].name,
            "schema_version": 1,
        }

    def free_agent(q: _ChatQueue, avoid: _Agent | None) -> _Agent | None:
        """Fewest open chats, then assigned least recently; ``avoid`` only as a last resort."""
        if not q.free_slots:
            return None
        best, best_key = None, None
        for agent in q.agents:
            if agent.active < conc:
                key = (agent is avoid, agent.active, agent.assigned_ms, agent.index)
                if best_key is None or key < best_key:
                    best, best_key = agent, key
        return best

    def answer(chat: _Chat, agent: _Agent, now: int) -> dict[str, Any]:
        q = queues[chat.queue]
        agent.active += 1
        agent.assigned_ms = now
        q.free_slots -= 1
        chat.state = _ACTIVE
        chat.agent = agent
        if chat.sent == 0:
            delay = chat.opening_ms
        elif chat.sent >= chat.messages:
            delay = chat.closing_ms
        elif chat.segment:
            delay = chat.after_transfer_ms
        else:  # the customer wrote while waiting: the agent replies to that
            delay = chat.gaps_ms[chat.sent]
        push(now + delay, _STEP, chat)
        ev = event(chat, "chat.answered", now)
        ev["agent_id"] = agent.name
        return ev

    def offer(chat: _Chat, now: int, avoid: _Agent | None) -> Iterator[dict[str, Any]]:
        q = queues[chat.queue]
        agent = free_agent(q, avoid)
        if agent is not None:
            yield answer(chat, agent, now)
            return
        q.waiting.append(chat)
        patience = chat.patience_ms[chat.segment]
        if patience is not None:
            push(now + patience, _ABANDON, chat, chat.segment)

    def release(chat: _Chat, now: int) -> Iterator[dict[str, Any]]:
        agent = chat.agent
        assert agent is not None
        q = queues[chat.queue]
        agent.active -= 1
        q.free_slots += 1
        chat.agent = None
        while q.waiting:
            nxt = q.waiting.popleft()
            if nxt.state == _WAITING:  # abandoned chats are skipped lazily
                yield answer(nxt, free_agent(q, None), now)  # type: ignore[arg-type]
                return

    def step(chat: _Chat, now: int) -> Iterator[dict[str, Any]]:
        if chat.state == _ENDED:
            ev = event(chat, "chat.rated", now)
            ev["csat"] = chat.csat
            if chat.agent is not None:
                ev["agent_id"] = chat.agent.name
            yield ev
            return
        i = chat.sent
        agent = chat.agent
        assert agent is not None
        if i == chat.transfer_turn:
            chat.transfer_turn = -1
            ev = event(chat, "chat.transferred", now)
            ev["agent_id"] = agent.name
            ev["to_queue"] = queues[chat.to_queue].name
            yield ev
            yield from release(chat, now)
            chat.queue = chat.to_queue
            chat.segment = 1
            chat.state = _WAITING
            yield from offer(chat, now, agent)
        elif i < chat.messages:
            ev = event(chat, "chat.message", now)
            if i % 2:
                ev["sender"] = "agent"
                ev["agent_id"] = agent.name
            else:
                ev["sender"] = "customer"
            chat.sent = i + 1
            push(now + (chat.gaps_ms[i + 1] if i + 1 < chat.messages else chat.closing_ms), _STEP, chat)
            yield ev
        else:
            ev = event(chat, "chat.ended", now)
            ev["agent_id"] = agent.name
            yield ev
            chat.state = _ENDED
            if chat.csat is not None:
                push(now + chat.rating_ms, _STEP, chat)
            yield from release(chat, now)
            chat.agent = agent  # the rating names the agent who closed the chat

    next_arrival()
    if cfg.agent_events and horizon_ms > 0:
        # Chat agents stay logged in: staffed for the whole run (no breaks in the chat model).
        for q in queues:
            for agent in q.agents:
                yield {"event_id": f"ag-chat-{cfg.seed}-{agent.name}-1", "type": "agent.logged_in",
                       "occurred_at": clock.format(start_ms), "agent_id": agent.name, "queues": [q.name],
                       "schema_version": 1}
    while heap[0][0] < horizon_ms:
        now, kind, _, chat, tag = heapq.heappop(heap)
        if kind == _STEP:
            yield from step(chat, now)
        elif kind == _ARRIVAL:
            next_arrival()
            ev = event(chat, "chat.offered", now)
            ev["customer_id"] = chat.customer_id
            if chat.complaint:
                ev["attributes"] = {"complaint": True}
            yield ev
            if chat.early_ms is not None:
                push(now + chat.early_ms, _EARLY, chat)
            yield from offer(chat, now, None)
        elif kind == _ABANDON:
            # Stale if the chat was accepted meanwhile or this timer is from an earlier wait.
            if chat.state == _WAITING and chat.segment == tag:
                chat.state = _ABANDONED
                yield event(chat, "chat.abandoned", now)
        else:  # _EARLY: the customer types while waiting (stale once accepted or gone)
            if chat.state == _WAITING and chat.segment == 0 and chat.sent == 0:
                chat.sent = 1
                ev = event(chat, "chat.message", now)
                ev["sender"] = "customer"
                yield ev


# ---------------------------------------------------------------- tickets

@dataclass(slots=True, eq=False)
class _Ticket:
    iid: str
    queue: str
    channel: str
    # The whole lifecycle, scripted at creation: (model ms, type, extra fields), strictly increasing.
    script: list[tuple[int, str, dict[str, Any] | None]]
    index: int = 0


def generate_ticket_events(cfg: TicketConfig, duration: float) -> Iterator[dict[str, Any]]:
    """Every ticket event with ``occurred_at < cfg.start + duration``, in event-time order.

    Per ticket: ``ticket.created`` (queue, channel, customer_id, attributes with
    ``priority`` and sometimes ``complaint``) -> sometimes ``ticket.assigned``
    (agent_id) -> sometimes an internal note (``ticket.replied``, sender agent,
    public false) -> the first public agent reply -> customer and agent replies
    -> ``ticket.solved`` -> sometimes ``ticket.reopened``, another agent reply
    and solve -> sometimes ``ticket.rated`` (csat and/or nps) -> ``ticket.closed``
    ``close_after_solve`` after the final solve. A share of tickets is closed
    without any agent reply (abandoned). Every event carries ``queue`` and the
    ticket's ``channel``. Tickets live for days: events past the horizon are cut.
    """
    horizon_ms = _horizon_ms(duration)
    return _ticket_events(cfg, horizon_ms)


def _ticket_events(cfg: TicketConfig, horizon_ms: float) -> Iterator[dict[str, Any]]:
    rng = random.Random(cfg.seed)
    customers = _Customers(rng, cfg.repeat_probability, memory=_FOLLOW_UP_MEMORY)
    start_ms = (cfg.start - _EPOCH) // _MS
    clock = _Clock()
    agent_names = [[f"{q.name}-a{i}" for i in range(1, q.agents + 1)] for q in cfg.queues]
    cum_weights = tuple(accumulate(q.weight for q in cfg.queues))
    channels = cfg.channels
    close_ms = round(cfg.close_after_solve * 1000)
    prefix = f"tkt-{cfg.seed}-"

    heap: list[tuple[int, int, _Ticket]] = []
    seq = count()
    arrival_s = 0.0
    tickets = 0

    def next_arrival() -> None:
        nonlocal arrival_s, tickets
        arrival_s += rng.expovariate(cfg.rate)
        tickets += 1
        t0 = round(arrival_s * 1000)
        qi = _pick(rng, cum_weights)
        ticket = _Ticket(f"{prefix}{tickets}", cfg.queues[qi].name,
                         channels[rng.randrange(len(channels))], _script(t0, agent_names[qi]))
        heapq.heappush(heap, (t0, next(seq), ticket))

    def _script(t0: int, names: list[str]) -> list[tuple[int, str, dict[str, Any] | None]]:
        steps: list[tuple[int, str, dict[str, Any] | None]] = []
        last = t0 - 1

        def add(at: int, kind: str, fields: dict[str, Any] | None = None) -> int:
            nonlocal last
            last = at = max(at, last + 1)
            steps.append((at, kind, fields))
            return at

        priority, factor = _TICKET_PRIORITIES[_pick(rng, _TICKET_PRIORITY_WEIGHTS)]
        reply_mean = cfg.first_reply_mean * factor
        attributes: dict[str, Any] = {"priority": priority}
        complaint = rng.random() < cfg.complaint_probability
        if complaint:
            attributes["complaint"] = True
        add(t0, "ticket.created", {"customer_id": customers.draw(t0), "attributes": attributes})
        agent = names[rng.randrange(len(names))]
        assigned = rng.random() < _ASSIGN_PROBABILITY
        first = t0 + _exp_ms(rng, reply_mean)
        if rng.random() < cfg.no_reply_close_probability:
            # Withdrawn, spam or solved elsewhere: closed before anyone answered.
            if assigned:
                add(t0 + int((first - t0) * rng.random()), "ticket.assigned", {"agent_id": agent})
            add(first, "ticket.closed")
            return steps
        if assigned:
            add(t0 + int((first - t0) * rng.random()), "ticket.assigned", {"agent_id": agent})
        if rng.random() < cfg.internal_note_probability:
            add(last + int((first - last) * rng.random()), "ticket.replied",
                {"sender": "agent", "public": False, "agent_id": agent})
        agent_reply = {"sender": "agent", "public": True, "agent_id": agent}
        cur = add(first, "ticket.replied", agent_reply)
        for _ in range(_geometric(rng, cfg.replies_mean - 1)):
            cur = add(cur + _exp_ms(rng, cfg.customer_reply_mean), "ticket.replied",
                      {"sender": "customer", "public": True})
            cur = add(cur + _exp_ms(rng, reply_mean), "ticket.replied", agent_reply)
        cur = add(cur + _exp_ms(rng, cfg.solve_after_mean), "ticket.solved", {"agent_id": agent})
        if rng.random() < cfg.reopen_probability:
            # The customer writes back before the auto-close.
            reopen = _exp_ms(rng, cfg.close_after_solve / 4) if close_ms else 1
            cur = add(cur + min(reopen, max(1, int(close_ms * 0.9))), "ticket.reopened")
            cur = add(cur + _exp_ms(rng, reply_mean), "ticket.replied", agent_reply)
            cur = add(cur + _exp_ms(rng, cfg.solve_after_mean), "ticket.solved", {"agent_id": agent})
        if rng.random() < cfg.rating_probability:
            which = rng.random()
            rating: dict[str, Any] = {"agent_id": agent}
            if which < 0.85:
                rating["csat"] = 1 + _pick(rng, _CSAT_COMPLAINT_WEIGHTS if complaint else _CSAT_WEIGHTS)
            if which >= 0.6:
                rating["nps"] = _pick(rng, _NPS_WEIGHTS)
            # Surveys are answered before the auto-close.
            add(cur + min(_exp_ms(rng, _TICKET_RATING_MEAN), max(1, int(close_ms * 0.9))), "ticket.rated", rating)
        add(cur + close_ms, "ticket.closed")
        return steps

    next_arrival()
    while heap[0][0] < horizon_ms:
        now, _, ticket = heapq.heappop(heap)
        i = ticket.index
        if i == 0:
            next_arrival()
        _, kind, fields = ticket.script[i]
        ticket.index = i + 1
        iid = ticket.iid
        ev = {
            "event_id": f"{iid}-{i + 1}",
            "type": kind,
            "occurred_at": clock.format(start_ms + now),
            "interaction_id": iid,
            "queue": ticket.queue,
            "channel": ticket.channel,
            "schema_version": 1,
        }
        if fields:
            ev.update(fields)
        yield ev
        if i + 1 < len(ticket.script):
            heapq.heappush(heap, (ticket.script[i + 1][0], next(seq), ticket))


# ---------------------------------------------------------------- mixed stream

def generate_mixed_events(voice: SimulationConfig | None, chat: ChatConfig | None,
                          ticket: TicketConfig | None, duration: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(family, event)`` of every enabled generator, merged lazily in event-time order.

    ``family`` is ``"call"``, ``"chat"`` or ``"ticket"`` (the topic to route to), and
    ``"agent"`` for the agent events of a model with ``agent_events`` (their place in
    the stream is their generator's: a login before the agent's first answer).
    Ties in ``occurred_at`` keep each generator's own order and put calls before
    chats before tickets, so the output is deterministic.
    """
    horizon_ms = _horizon_ms(duration)
    streams: list[Iterator[tuple[str, dict[str, Any]]]] = []
    if voice is not None:
        streams.append(_by_type(generate_call_events(voice, duration)))
    if chat is not None:
        streams.append(_by_type(_chat_events(chat, horizon_ms)))
    if ticket is not None:
        streams.append(_tagged("ticket", _ticket_events(ticket, horizon_ms)))
    if not streams:
        raise ValueError("at least one of voice, chat and ticket must be configured")
    # Every generator formats occurred_at as fixed-width UTC "YYYY-MM-DDTHH:MM:SS.mmmZ",
    # so comparing the strings compares the instants.
    return heapq.merge(*streams, key=_occurred_at)


def _tagged(family: str, events: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for ev in events:
        yield family, ev


def _by_type(events: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The family is the type's prefix: ``call.*`` -> call, ``agent.*`` -> agent."""
    for ev in events:
        yield ev["type"].partition(".")[0], ev


def _occurred_at(item: tuple[str, dict[str, Any]]) -> str:
    return item[1]["occurred_at"]
