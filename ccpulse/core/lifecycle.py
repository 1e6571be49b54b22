"""The interaction lifecycle: offered -> waits -> answered | abandoned -> ended.

An ``Interaction`` keeps the (few) steps it has seen, in event-time order, and
derives everything from them every time. Deriving from the sorted steps, instead
of mutating a state machine per arrival, is what makes an out-of-order delivery
give exactly the in-order result, and a duplicate (same ``event_id``) change
nothing.

Channel adapters (EVENTS.md -> lifecycle):
- voice and chat: ``*.offered`` enters a queue, ``*.answered`` / ``*.abandoned`` leave
  it, ``*.transferred`` with ``to_queue`` starts a new queue segment, ``*.ended`` ends
  the handling (ending while still queued is an abandon).
- tickets: ``ticket.created`` enters the queue; the first *public agent* reply is the
  answer (its wait is the first response time); ``ticket.closed`` with no such reply
  is an abandon, otherwise it ends the handling; ``solved``/``reopened`` feed the
  ticket KPIs.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

# Ties at the same millisecond are broken by lifecycle order, then event id, so
# the derivation never depends on arrival order.
STEP_ORDER = {"offered": 0, "transferred": 1, "answered": 2, "message": 3, "replied": 3,
              "assigned": 3, "abandoned": 4, "solved": 5, "reopened": 6, "ended": 7,
              "closed": 7, "rated": 8}


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
    exit: str | None = None  # "answered" | "abandoned" | "transferred" | None (still waiting)
    left: int | None = None
    agent: str | None = None
    transfer_times: list[int] = field(default_factory=list)  # agent transfers after answering
    ended: int | None = None
    wrapup_ms: int = 0

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


@dataclass(slots=True)
class Interaction:
    interaction_id: str
    channel: str
    steps: list[Step] = field(default_factory=list)
    last_ts: int = 0
    # Facts (see kpis.py) currently counted for this interaction, with multiplicity.
    applied: dict[tuple, int] = field(default_factory=dict)
    partition: int = -1  # the input partition that owns it (kept across recovery)
    ids: set[str] = field(default_factory=set, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Derived from the steps (never persisted): a duplicate is found by one lookup,
        # not a scan, which made a long interaction cost the square of its length.
        self.ids = {s.event_id for s in self.steps}

    def add(self, step: Step) -> bool:
        """Insert a step in event-time order; False when its event id was seen before."""
        if self.has(step):
            return False
        # Nearly always appended at the end; a late step is placed by bisection.
        key = step.sort_key()
        steps = self.steps
        if steps and steps[-1].sort_key() > key:
            steps.insert(bisect_right(steps, key, key=Step.sort_key), step)
        else:
            steps.append(step)
        self.ids.add(step.event_id)
        self.last_ts = max(self.last_ts, step.ts)
        return True

    def has(self, step: Step) -> bool:
        return step.event_id in self.ids

    def derive(self) -> Derivation:
        ticket = is_ticket(self.channel)
        d = Derivation([], 0, False)
        waiting: Segment | None = None  # the segment currently in queue
        serving: Segment | None = None  # the segment whose agent has the contact
        queue: str | None = None
        pending_customer: list[int] = []  # chat: customer messages awaiting an agent message
        first_customer: int | None = None
        first_response_done = False
        public_replies = 0
        open_ticket = False
        for s in self.steps:
            queue = s.queue or queue
            d.customer = d.customer or s.customer
            if s.complaint and d.complaint is None:
                d.complaint = (s.ts, queue or "")
            kind = s.step
            if ticket:
                if kind == "replied":
                    if s.sender == "agent" and s.public:
                        # A reply before the ticket exists (in event time) is an orphan.
                        public_replies += 1 if d.segments else 0
                        kind = "answered" if waiting is not None else "reply"
                    else:
                        kind = "note"
                elif kind == "closed":
                    kind = "ended"
            if kind == "offered":
                if waiting is None and serving is None and queue:
                    waiting = Segment(queue, s.ts)
                    d.segments.append(waiting)
                    open_ticket = ticket
                else:
                    d.orphan_steps += 1  # an offer while queued or handled: nothing new
            elif kind == "answered":
                if waiting is not None:
                    waiting.exit, waiting.left, waiting.agent = "answered", s.ts, s.agent
                    serving, waiting = waiting, None
                else:
                    d.orphan_steps += 1
            elif kind == "abandoned":
                if waiting is not None:
                    waiting.exit, waiting.left = "abandoned", s.ts
                    waiting = None
                    d.ended = True  # the customer left: the interaction is over
                else:
                    d.orphan_steps += 1
            elif kind == "transferred":
                if waiting is not None:
                    waiting.exit, waiting.left = "transferred", s.ts
                    waiting = None
                elif serving is not None:
                    serving.transfer_times.append(s.ts)
                    if s.to_queue:
                        # The contact leaves the agent to wait again: close its handling.
                        serving.ended = s.ts
                        serving = None
                else:
                    d.orphan_steps += 1
                    continue
                if s.to_queue:
                    queue = s.to_queue
                    waiting = Segment(queue, s.ts)
                    d.segments.append(waiting)
            elif kind == "ended":
                if waiting is not None:
                    # Hanging up while still queued (or a ticket closed unanswered) is an abandon.
                    waiting.exit, waiting.left = "abandoned", s.ts
                    waiting = None
                    d.ended = True
                elif serving is not None:
                    serving.ended, serving.wrapup_ms = s.ts, s.wrapup_ms
                    serving = None
                    d.ended = True
                else:
                    d.orphan_steps += 1
                open_ticket = False
            elif kind == "message":
                if s.sender == "customer":
                    pending_customer.append(s.ts)
                    if first_customer is None:
                        first_customer = s.ts
                elif s.sender == "agent" and pending_customer:
                    owner = serving or waiting
                    q = owner.queue if owner else (queue or "")
                    for sent in pending_customer:
                        first = not first_response_done and sent == first_customer
                        d.responses.append(Response(s.ts, s.ts - sent, first, q))
                        first_response_done = first_response_done or first
                    pending_customer.clear()
            elif kind == "solved":
                if d.segments:
                    d.solves.append(Solve(s.ts, s.ts - d.segments[0].entered, public_replies == 1,
                                          d.segments[-1].queue))
                    open_ticket = False
                else:
                    d.orphan_steps += 1
            elif kind == "reopened":
                if d.segments:
                    d.reopens.append((s.ts, d.segments[-1].queue))
                    open_ticket = not d.ended
                else:
                    d.orphan_steps += 1
            elif kind == "rated":
                if d.segments:
                    # The agent of the last answered segment (none if it named no agent).
                    agent = next((seg.agent for seg in reversed(d.segments)
                                  if seg.exit == "answered"), None)
                    d.ratings.append(Rating(s.ts, s.csat, s.nps, d.segments[-1].queue, agent))
                else:
                    d.orphan_steps += 1
        if d.complaint is not None and not d.complaint[1]:
            d.complaint = (d.complaint[0], d.last_queue or "") if d.segments else None
        d.ticket_open = open_ticket
        return d

    def to_dict(self) -> dict[str, Any]:
        # Queue, agent and customer names repeat on every step and fact: each is written
        # once in ``names`` and referred to by its index, which keeps the changelog record
        # of the longest allowed interaction well under Kafka's 1 MiB message limit.
        names: dict[str, int] = {}

        def ref(name: str | None) -> int | None:
            return None if name is None else names.setdefault(name, len(names))

        steps = [[s.ts, s.step, s.event_id, ref(s.queue), ref(s.agent), ref(s.to_queue), s.wrapup_ms,
                  s.sender, s.public, s.csat, s.nps, s.complaint, ref(s.customer)] for s in self.steps]
        applied = [[size, start, scope, ref(name), *rest, n]
                   for (size, start, scope, name, *rest), n in self.applied.items()]
        return {"id": self.interaction_id, "ch": self.channel, "last": self.last_ts, "steps": steps,
                "applied": applied, "p": self.partition, "names": list(names)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Interaction":
        names = doc.get("names")
        rows, applied = doc["steps"], doc.get("applied", ())
        if names is not None:  # records written before ``names`` hold the names themselves
            def name(index: int | None) -> str | None:
                return None if index is None else names[index]

            rows = [[r[0], r[1], r[2], name(r[3]), name(r[4]), name(r[5]), *r[6:12], name(r[12])]
                    for r in rows]
            applied = [[*row[:3], name(row[3]), *row[4:]] for row in applied]
        return cls(doc["id"], doc["ch"], [Step.from_list(r) for r in rows], doc["last"],
                   {tuple(row[:-1]): row[-1] for row in applied}, doc.get("p", -1))
