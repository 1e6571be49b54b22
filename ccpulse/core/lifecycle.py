"""The interaction lifecycle: offered -> waits -> answered | abandoned -> ended.

An ``Interaction`` keeps the steps it has seen, in event-time order, and what they
derive is a fold over them (``Fold``). A step that comes in order is folded onto the
kept fold; one that comes out of order is inserted and every step folded again. Both
give what folding the sorted steps from the start gives, which is what makes an
out-of-order delivery give exactly the in-order result, and a duplicate (same
``event_id``) change nothing.

Channel adapters (EVENTS.md -> lifecycle):
- voice and chat: ``*.offered`` enters a queue, ``*.answered`` / ``*.abandoned`` leave
  it, ``*.transferred`` with ``to_queue`` starts a new queue segment, ``*.ended`` ends
  the handling (ending while still queued is an abandon). ``*.flowed_out`` and
  ``*.callback_requested`` leave the queue too, neither answered nor abandoned (a
  flow-out with ``to_queue`` is a transfer there); ``call.held`` / ``call.resumed``
  open and close a hold of the answered segment, whose end also ends an open hold.
- tickets: ``ticket.created`` enters the queue; the first *public agent* reply is the
  answer (its wait is the first response time); ``ticket.closed`` with no such reply
  is an abandon, otherwise it ends the handling; ``solved``/``reopened`` feed the
  ticket KPIs.
"""

from __future__ import annotations

import sys
from bisect import insort
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import orjson

# Ties at the same millisecond are broken by lifecycle order, then event id, so
# the derivation never depends on arrival order.
STEP_ORDER = {"offered": 0, "transferred": 1, "answered": 2, "message": 3, "replied": 3,
              "assigned": 3, "abandoned": 4, "solved": 5, "reopened": 6, "ended": 7,
              "closed": 7, "rated": 8,
              # Exits rank as the abandon does; a hold and its resume at the same
              # millisecond are a hold of 0 ms (held first), both after the answer.
              "flowed_out": 4, "callback_requested": 4, "held": 3, "resumed": 5}


@dataclass(frozen=True, slots=True)
class Step:
    ts: int  # event time, epoch ms
    step: str
    event_id: str
    queue: str | None = None
    agent: str | None = None
    to_queue: str | None = None
    wrapup_ms: int = 0
    sender: str | None = None  # chat.message / ticket.replied
    public: bool = True  # ticket.replied
    csat: int | None = None
    nps: int | None = None
    complaint: bool = False
    customer: str | None = None
    reason: str | None = None  # *.flowed_out

    def sort_key(self) -> tuple[int, int, str]:
        return (self.ts, STEP_ORDER.get(self.step, 9), self.event_id)

    @classmethod
    def from_list(cls, row: list[Any]) -> "Step":
        return cls(*row)


@dataclass(slots=True)
class Segment:
    """One stay in one queue, and what happened after it left the queue."""

    queue: str
    entered: int
    # "answered" | "abandoned" | "transferred" | "flowed_out" | "callback_requested" | None (waiting)
    exit: str | None = None
    left: int | None = None
    agent: str | None = None
    transfer_times: list[int] = field(default_factory=list)  # agent transfers after answering
    ended: int | None = None
    wrapup_ms: int = 0
    holds: list[tuple[int, int]] = field(default_factory=list)  # (held, resumed or ended), in order
    hold_from: int | None = None  # the hold still open
    reason: str | None = None  # why the contact left the queue (a flow-out's reason)

    @property
    def hold_ms(self) -> int:
        return sum(end - start for start, end in self.holds)

    @property
    def wait_ms(self) -> int | None:
        return None if self.left is None else self.left - self.entered

    @property
    def handle_ms(self) -> int | None:
        if self.exit != "answered" or self.ended is None or self.left is None:
            return None
        return self.ended - self.left + self.wrapup_ms


@dataclass(slots=True)
class Response:
    """An agent message answering a customer message (chat)."""

    ts: int  # the agent message: the window it counts in
    response_ms: int
    first: bool  # the interaction's first response (customer's first message -> first agent message)
    queue: str


@dataclass(slots=True)
class Solve:
    ts: int
    resolution_ms: int  # created -> this solve
    one_touch: bool  # solved after a single public agent reply
    queue: str


@dataclass(slots=True)
class Rating:
    ts: int
    csat: int | None
    nps: int | None
    queue: str
    agent: str | None


@dataclass(slots=True)
class Derivation:
    segments: list[Segment]
    # Steps that could not be placed: e.g. an answer with no offer seen (yet).
    orphan_steps: int
    ended: bool
    responses: list[Response] = field(default_factory=list)
    solves: list[Solve] = field(default_factory=list)
    reopens: list[tuple[int, str]] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    complaint: tuple[int, str] | None = None  # (ts, queue) of the first complaint flag
    customer: str | None = None
    ticket_open: bool = False  # created and not solved/closed (tickets only)

    @property
    def first_offered(self) -> int | None:
        return self.segments[0].entered if self.segments else None

    @property
    def last_queue(self) -> str | None:
        return self.segments[-1].queue if self.segments else None


def is_ticket(channel: str) -> bool:
    return channel not in ("voice", "chat")


# A step's kind and sender as the changelog writes them: one small code for the pair
# (any other pair as [kind, sender]).
STEP_KINDS = ("offered", "answered", "abandoned", "transferred", "ended", "message", "replied",
              "assigned", "solved", "reopened", "closed", "rated",
              "flowed_out", "callback_requested", "held", "resumed")  # new kinds last: codes stay
SENDERS = (None, "customer", "agent")
_KINDS = tuple((kind, sender) for kind in STEP_KINDS for sender in SENDERS)
_KIND_CODE = {pair: code for code, pair in enumerate(_KINDS)}
# A step row: [ts - base, kind, event_id, queue, agent, customer, to_queue, wrapup_ms, public,
# csat, nps, complaint, reason], trailing defaults left out. Queue, agent and customer names repeat on
# many steps: each is written once, in the interaction's ``names``, and a row holds its index,
# which also keeps the changelog record of the longest allowed interaction well under Kafka's
# 1 MiB message limit. The common fields come first, so most rows stop after three to six.
_ROW_DEFAULTS: tuple[Any, ...] = (None, None, None, None, None, None, None, 0, True, None, None, False, None)
_NAME_FIELDS = (3, 4, 5, 6, 12)


def step_row(s: Step, base: int, ref: Callable[[str | None], int | None]) -> list[Any]:
    kind = _KIND_CODE.get((s.step, s.sender))
    row = [s.ts - base, [s.step, s.sender] if kind is None else kind, s.event_id, ref(s.queue), ref(s.agent),
           ref(s.customer), ref(s.to_queue), s.wrapup_ms, s.public, s.csat, s.nps, s.complaint,
           None if s.reason is None else ref(s.reason)]  # rare: no call for it on most steps
    while len(row) > 3:
        default = _ROW_DEFAULTS[len(row) - 1]
        last = row[-1]
        if last is not default and not (last == default and type(last) is type(default)):
            break
        row.pop()
    return row


def step_from_row(row: list[Any], base: int, names: list[str]) -> Step:
    values = list(row) + list(_ROW_DEFAULTS[len(row):])
    for i in _NAME_FIELDS:
        if values[i] is not None:
            values[i] = names[values[i]]
    ts, kind, event_id, queue, agent, customer, to_queue, wrapup_ms, public, csat, nps, complaint, reason = values
    step, sender = _KINDS[kind] if isinstance(kind, int) else kind
    return Step(ts + base, sys.intern(step), event_id, queue, agent, to_queue, wrapup_ms, sender, public, csat,
                nps, complaint, customer, reason)


# Where the current segment stands (Fold.phase).
DONE, WAITING, SERVING = 0, 1, 2
# Segment.exit, as a fold writes it (new exits last: codes stay)
_EXITS = (None, "answered", "abandoned", "transferred", "flowed_out", "callback_requested")
# Fold.flags
_FIRST_RESPONSE_DONE, _OPEN_TICKET, _ENDED = 1, 2, 4


class Fold:
    """Where an interaction's lifecycle stands after the steps folded so far, in sort order.

    ``derive`` folds every step from the start and collects every segment, response,
    solve, reopen and rating; the engine keeps the fold of an interaction and folds one
    more step when it comes in order, so an in-order step costs the same whatever came
    before it. Only the last segment can still change (the one waiting or being served),
    which is why it is the only one kept.
    """

    __slots__ = ("ticket", "names", "base", "count", "last_ts", "tail_order", "queue", "last", "phase", "segments",
                 "first_queue", "first_entered", "answered_agent", "pending", "first_customer", "flags",
                 "public_replies", "orphans", "complaint", "customer")

    def __init__(self, ticket: bool) -> None:
        self.ticket = ticket
        self.names: list[str] = []  # every name the step rows refer to (see ``step_row``)
        self.base = 0  # event time the step rows are written from (the first step's)
        self.count = 0  # steps folded
        self.last_ts = 0
        self.tail_order = 0  # STEP_ORDER of the last step: with last_ts, where the next one goes
        self.queue: str | None = None  # the queue named last
        self.last: Segment | None = None
        self.phase = DONE
        self.segments = 0
        self.first_queue: str | None = None
        self.first_entered = 0
        self.answered_agent: str | None = None  # agent of the last answered segment (ratings)
        self.pending: list[int] = []  # chat: customer messages awaiting an agent message
        self.first_customer: int | None = None
        self.flags = 0
        self.public_replies = 0
        self.orphans = 0
        self.complaint: tuple[int, str] | None = None
        self.customer: str | None = None

    # -- folding ----------------------------------------------------------------

    def follows(self, step: Step) -> bool | None:
        """True if ``step`` sorts after every step folded so far, False if before one;
        None on a tie of time and order (the event ids decide: the caller looks)."""
        if not self.count:
            return True
        order = STEP_ORDER.get(step.step, 9)
        if step.ts != self.last_ts:
            return step.ts > self.last_ts
        if order != self.tail_order:
            return order > self.tail_order
        return None

    def step(self, s: Step, out: Derivation) -> None:
        """Fold one more step; what it creates (a segment, a response, ...) is appended to ``out``."""
        if not self.count:
            self.base = s.ts
        self.count += 1
        self.last_ts = s.ts if self.count == 1 else max(self.last_ts, s.ts)
        self.tail_order = STEP_ORDER.get(s.step, 9)
        queue = self.queue = s.queue or self.queue
        self.customer = self.customer or s.customer
        if s.complaint and self.complaint is None:
            self.complaint = (s.ts, queue or "")
        waiting = self.last if self.phase == WAITING else None
        serving = self.last if self.phase == SERVING else None
        kind = s.step
        if self.ticket:
            if kind == "replied":
                if s.sender == "agent" and s.public:
                    # A reply before the ticket exists (in event time) is an orphan.
                    self.public_replies += 1 if self.segments else 0
                    kind = "answered" if waiting is not None else "reply"
                else:
                    kind = "note"
            elif kind == "closed":
                kind = "ended"
        if kind == "offered":
            if waiting is None and serving is None and queue:
                self._enter(Segment(queue, s.ts), out)
                self._set(_OPEN_TICKET, self.ticket)
            else:
                self.orphans += 1  # an offer while queued or handled: nothing new
        elif kind == "answered":
            if waiting is not None:
                waiting.exit, waiting.left, waiting.agent = "answered", s.ts, s.agent
                self.phase, self.answered_agent = SERVING, s.agent
            else:
                self.orphans += 1
        elif kind == "abandoned":
            if waiting is not None:
                waiting.exit, waiting.left = "abandoned", s.ts
                self.phase = DONE
                self._set(_ENDED, True)  # the customer left: the interaction is over
            else:
                self.orphans += 1
        elif kind == "transferred":
            if waiting is not None:
                waiting.exit, waiting.left = "transferred", s.ts
                self.phase = DONE
            elif serving is not None:
                serving.transfer_times.append(s.ts)
                if s.to_queue:
                    # The contact leaves the agent to wait again: close its handling.
                    serving.ended = s.ts
                    _end_hold(serving, s.ts)
                    self.phase = DONE
            else:
                self.orphans += 1
                return
            if s.to_queue:
                self.queue = s.to_queue
                self._enter(Segment(s.to_queue, s.ts), out)
        elif kind in ("flowed_out", "callback_requested"):
            # Only a waiting contact can leave the queue.
            if waiting is None:
                self.orphans += 1
            elif s.to_queue:  # a flow-out to another queue is a transfer there (EVENTS.md)
                waiting.exit, waiting.left, waiting.reason = "transferred", s.ts, s.reason
                self.queue = s.to_queue
                self._enter(Segment(s.to_queue, s.ts), out)
            else:
                waiting.exit, waiting.left, waiting.reason = kind, s.ts, s.reason
                self.phase = DONE
                # Over, as after an abandon: it expires after the lateness, not the horizon.
                self._set(_ENDED, True)
        elif kind == "held":
            if serving is not None and serving.hold_from is None:
                serving.hold_from = s.ts
            else:
                self.orphans += 1  # not answered yet, or already on hold
        elif kind == "resumed":
            if serving is not None and serving.hold_from is not None:
                _end_hold(serving, s.ts)
            else:
                self.orphans += 1
        elif kind == "ended":
            if waiting is not None:
                # Hanging up while still queued (or a ticket closed unanswered) is an abandon.
                waiting.exit, waiting.left = "abandoned", s.ts
                self.phase = DONE
                self._set(_ENDED, True)
            elif serving is not None:
                serving.ended, serving.wrapup_ms = s.ts, s.wrapup_ms
                _end_hold(serving, s.ts)  # a call that ends while held ends its hold
                self.phase = DONE
                self._set(_ENDED, True)
            else:
                self.orphans += 1
            self._set(_OPEN_TICKET, False)
        elif kind == "message":
            if s.sender == "customer":
                self.pending.append(s.ts)
                if self.first_customer is None:
                    self.first_customer = s.ts
            elif s.sender == "agent" and self.pending:
                owner = serving or waiting
                q = owner.queue if owner else (queue or "")
                for sent in self.pending:
                    first = not self.flags & _FIRST_RESPONSE_DONE and sent == self.first_customer
                    out.responses.append(Response(s.ts, s.ts - sent, first, q))
                    if first:
                        self._set(_FIRST_RESPONSE_DONE, True)
                self.pending = []
        elif kind == "solved":
            if self.last is not None:
                out.solves.append(Solve(s.ts, s.ts - self.first_entered, self.public_replies == 1,
                                        self.last.queue))
                self._set(_OPEN_TICKET, False)
            else:
                self.orphans += 1
        elif kind == "reopened":
            if self.last is not None:
                out.reopens.append((s.ts, self.last.queue))
                self._set(_OPEN_TICKET, not self.ended)
            else:
                self.orphans += 1
        elif kind == "rated":
            if self.last is not None:
                out.ratings.append(Rating(s.ts, s.csat, s.nps, self.last.queue, self.answered_agent))
            else:
                self.orphans += 1

    def _enter(self, seg: Segment, out: Derivation) -> None:
        self.last, self.phase = seg, WAITING
        self.segments += 1
        if self.segments == 1:
            self.first_queue, self.first_entered = seg.queue, seg.entered
        out.segments.append(seg)

    def ref(self, name: str | None) -> int | None:
        """The index of ``name`` in ``names`` (added if new)."""
        if name is None:
            return None
        try:
            return self.names.index(name)
        except ValueError:
            self.names.append(name)
            return len(self.names) - 1

    def _set(self, flag: int, on: bool) -> None:
        self.flags = self.flags | flag if on else self.flags & ~flag

    # -- what it says -------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return bool(self.flags & _ENDED)

    @property
    def ticket_open(self) -> bool:
        return bool(self.flags & _OPEN_TICKET)

    @property
    def waiting(self) -> Segment | None:
        return self.last if self.phase == WAITING else None

    @property
    def serving(self) -> Segment | None:
        return self.last if self.phase == SERVING else None

    def resolved_complaint(self) -> tuple[int, str] | None:
        """The complaint as counted now: a flag raised before any queue was named counts
        in the interaction's last queue (so it moves with a later transfer)."""
        c = self.complaint
        if c is not None and not c[1]:
            return (c[0], self.last.queue) if self.last is not None else None
        return c

    def finish(self, d: Derivation) -> Derivation:
        """Complete a derivation whose elements this fold appended, from the start."""
        d.orphan_steps, d.ended, d.customer = self.orphans, self.ended, self.customer
        d.complaint = self.resolved_complaint()
        d.ticket_open = self.ticket_open
        return d

    # -- kept as bytes: a few dozen per open interaction ---------------------------

    def encode(self) -> bytes:
        b, ref = self.base, self.ref
        last = self.last
        seg = None
        if last is not None:
            seg = [ref(last.queue), last.entered - b, _EXITS.index(last.exit),
                   None if last.left is None else last.left - b, ref(last.agent),
                   [t - b for t in last.transfer_times], None if last.ended is None else last.ended - b,
                   # Rarely set (an in-order step's cost is counted in calls): no call when not.
                   last.wrapup_ms, [[start - b, end - b] for start, end in last.holds] if last.holds else [],
                   None if last.hold_from is None else last.hold_from - b,
                   None if last.reason is None else ref(last.reason)]
            _drop_defaults(seg, _SEG_DEFAULTS, 3)
        complaint = self.complaint
        row = [b, self.count, self.last_ts - b, self.tail_order, ref(self.queue), self.phase, seg, self.segments,
               ref(self.first_queue), self.first_entered - b if self.segments else None, ref(self.answered_agent),
               ref(self.customer), self.flags, self.public_replies, self.orphans, [t - b for t in self.pending],
               None if self.first_customer is None else self.first_customer - b,
               None if complaint is None else [complaint[0] - b, ref(complaint[1] or None)]]
        _drop_defaults(row, _FOLD_DEFAULTS, 0)
        return orjson.dumps([self.names, *row])

    @classmethod
    def decode(cls, data: bytes | memoryview, ticket: bool) -> "Fold":
        f = cls(ticket)
        if not data:
            return f
        names, *row = orjson.loads(data)
        names = f.names = [sys.intern(n) for n in names]
        row += _FOLD_DEFAULTS[len(row):]
        (b, f.count, last_ts, f.tail_order, queue, f.phase, seg, f.segments, first_queue, first_entered,
         answered_agent, customer, f.flags, f.public_replies, f.orphans, pending, first_customer,
         complaint) = row

        def name(index: int | None) -> str | None:
            return None if index is None else names[index]

        f.base, f.last_ts = b, last_ts + b
        f.first_entered = 0 if first_entered is None else first_entered + b
        f.queue, f.first_queue, f.answered_agent, f.customer = (name(queue), name(first_queue),
                                                                name(answered_agent), name(customer))
        if seg is not None:
            (q, entered, exit_, left, agent, transfers, ended, wrapup, holds, hold_from,
             reason) = seg + list(_SEG_DEFAULTS[len(seg):])
            f.last = Segment(names[q], entered + b, _EXITS[exit_], None if left is None else left + b,
                             name(agent), [t + b for t in transfers], None if ended is None else ended + b, wrapup,
                             [(start + b, end + b) for start, end in holds] if holds else [],
                             None if hold_from is None else hold_from + b, None if reason is None else names[reason])
        f.pending = [t + b for t in pending]
        f.first_customer = None if first_customer is None else first_customer + b
        if complaint is not None:
            f.complaint = (complaint[0] + b, name(complaint[1]) or "")
        return f


# What a packed fold leaves out at the end of its row and of its segment (the rarely set
# fields come last): a call waiting or being served packs in about 60 bytes.
_FOLD_DEFAULTS: list[Any] = [None] * 12 + [0, 0, 0, [], None, None]
_SEG_DEFAULTS: tuple[Any, ...] = (None, None, None, None, None, [], None, 0, [], None, None)


def _end_hold(seg: Segment, ts: int) -> None:
    """Close the segment's open hold, if any, at ``ts``."""
    if seg.hold_from is not None:
        seg.holds.append((seg.hold_from, ts))
        seg.hold_from = None


def _drop_defaults(row: list[Any], defaults: Sequence[Any], keep: int) -> None:
    while len(row) > keep:
        last, default = row[-1], defaults[len(row) - 1]
        if last is not default and last != default:
            break
        row.pop()


# An interaction's state, one byte string: the length of the packed fold (4 bytes), the fold,
# then the step rows as a JSON array. One object rather than two saves its header (33 bytes)
# and a slot for every open interaction.
_FOLD_LEN = 4
_NO_STEPS = b"[]"
_EMPTY = bytes(_FOLD_LEN) + _NO_STEPS  # no fold, no step: shared by every new interaction


def _pack(fold: bytes, log: bytes | memoryview) -> bytes:
    return b"".join((len(fold).to_bytes(_FOLD_LEN, "big"), fold, log))


class Interaction:
    """One interaction: its steps (packed rows, in event-time order) and their fold.

    Held as one small byte string rather than objects (see ``_pack``): an open interaction
    costs about two hundred bytes however its steps are shaped. The steps are read back only for an
    out-of-order step, a re-derivation (``derive``) or a duplicate's confirmation.
    """

    __slots__ = ("interaction_id", "channel", "partition", "_state")

    def __init__(self, interaction_id: str, channel: str, steps: Iterable[Step] = (),
                 partition: int = -1) -> None:
        self.interaction_id = interaction_id
        self.channel = channel
        self.partition = partition  # the input partition that owns it (kept across recovery)
        self._state = _EMPTY
        ordered = sorted(steps, key=Step.sort_key)
        if ordered:
            self._replace(ordered)

    def __repr__(self) -> str:
        return f"Interaction({self.interaction_id!r}, {self.channel!r}, {self.steps!r}, partition={self.partition})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Interaction) and (self.interaction_id, self.channel, self.partition, self.steps)
                == (other.interaction_id, other.channel, other.partition, other.steps))

    __hash__ = None  # type: ignore[assignment]

    # -- reading ------------------------------------------------------------------

    @property
    def ticket(self) -> bool:
        return is_ticket(self.channel)

    def fold(self) -> Fold:
        """Where the lifecycle stands (a fresh copy: changing it changes nothing here)."""
        state = self._state
        return Fold.decode(memoryview(state)[_FOLD_LEN:_FOLD_LEN + int.from_bytes(state[:_FOLD_LEN], "big")],
                           self.ticket)

    def _log(self) -> memoryview:
        """The step rows (a JSON array)."""
        state = self._state
        return memoryview(state)[_FOLD_LEN + int.from_bytes(state[:_FOLD_LEN], "big"):]

    @property
    def steps(self) -> list[Step]:
        fold = self.fold()
        return [step_from_row(row, fold.base, fold.names) for row in orjson.loads(self._log())]

    @property
    def step_count(self) -> int:
        return self.fold().count

    @property
    def last_ts(self) -> int:
        return self.fold().last_ts

    def has(self, step: Step) -> bool:
        # The id as JSON writes it is looked for in the packed rows first (in C, no
        # decoding): nearly every step is new and is told so at once. A hit may be some
        # other field's text, so it is confirmed on the decoded rows.
        if orjson.dumps(step.event_id) not in self._state:
            return False
        return any(row[2] == step.event_id for row in orjson.loads(self._log()))

    def derive(self) -> Derivation:
        return self._refold(self.steps)[0]

    # -- changing -----------------------------------------------------------------

    def add(self, step: Step) -> bool:
        """Insert a step in event-time order; False when its event id was seen before."""
        if self.has(step):
            return False
        fold = self.fold()
        if self.follows(fold, step):
            fold.step(step, Derivation([], 0, False))
            self.append(step, fold)
        else:
            self.insert(step)
        return True

    def follows(self, fold: Fold, step: Step) -> bool:
        """Whether ``step`` (not a duplicate) sorts after every step held; ``fold`` is this one's."""
        after = fold.follows(step)
        if after is None:  # same time and order as the last step: its event id decides
            last = orjson.loads(self._log())[-1]
            return step.event_id > last[2]
        return after

    def append(self, step: Step, fold: Fold) -> None:
        """Keep ``step``, which sorts last, and ``fold``, this interaction's fold after it."""
        row = orjson.dumps(step_row(step, fold.base, fold.ref))
        log = self._log()
        tail = b"[" + row + b"]" if len(log) == 2 else b"".join((log[:-1], b",", row, b"]"))
        self._state = _pack(fold.encode(), tail)

    def insert(self, step: Step) -> tuple[Derivation, Fold]:
        """Keep ``step`` wherever it sorts, re-folding every step; returns the new derivation and fold."""
        steps = self.steps
        insort(steps, step, key=Step.sort_key)
        return self._replace(steps)

    def save(self) -> bytes:
        return self._state

    def restore(self, saved: bytes) -> None:
        """Back to what ``save`` returned (a step whose effects could not be computed is taken back)."""
        self._state = saved

    def _replace(self, ordered: list[Step]) -> tuple[Derivation, Fold]:
        d, fold = self._refold(ordered)
        log = orjson.dumps([step_row(s, fold.base, fold.ref) for s in ordered])
        self._state = _pack(fold.encode(), log)
        return d, fold

    def _refold(self, ordered: list[Step]) -> tuple[Derivation, Fold]:
        fold = Fold(self.ticket)
        d = Derivation([], 0, False)
        for s in ordered:
            fold.step(s, d)
        return fold.finish(d), fold

    # -- the changelog --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The changelog record: ``[2, id, channel, partition, base, names, [step rows]]`` (the
        fold is derived again when it is read)."""
        fold = self.fold()
        return orjson.dumps([2, self.interaction_id, self.channel, self.partition, fold.base, fold.names,
                             orjson.Fragment(self._log().tobytes())])

    @classmethod
    def from_bytes(cls, data: bytes) -> "Interaction":
        return cls.from_record(orjson.loads(data))

    @classmethod
    def from_record(cls, record: list[Any] | dict[str, Any]) -> "Interaction":
        """A changelog record as JSON decodes it: the compact array, or the object written
        before it (issue 15)."""
        if isinstance(record, dict):
            return cls.from_dict(record)
        version, iid, channel, partition, base, names, rows = record
        if version != 2:
            raise ValueError(f"unknown interaction record version {version!r}")
        return cls(iid, channel, [step_from_row(row, base, names) for row in rows], partition)

    def to_dict(self) -> dict[str, Any]:
        fold = self.fold()
        return {"v": 2, "id": self.interaction_id, "ch": self.channel, "p": self.partition,
                "base": fold.base, "names": fold.names, "rows": orjson.loads(self._log())}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Interaction":
        if doc.get("v") == 2:
            base, names = doc["base"], doc["names"]
            return cls(doc["id"], doc["ch"], [step_from_row(row, base, names) for row in doc["rows"]],
                       doc.get("p", -1))
        # Records before issue 15: whole steps (names shared in ``names`` since issue 14) and
        # the facts they applied, which are derived again now.
        names = doc.get("names")
        rows = doc["steps"]
        if names is not None:
            def name(index: int | None) -> str | None:
                return None if index is None else names[index]

            rows = [[r[0], r[1], r[2], name(r[3]), name(r[4]), name(r[5]), *r[6:12], name(r[12])]
                    for r in rows]
        return cls(doc["id"], doc["ch"], [Step.from_list(r) for r in rows], doc.get("p", -1))
