"""The interaction lifecycle: offered -> waits -> answered | abandoned -> ended.

An ``Interaction`` keeps the (few) lifecycle steps it has seen, in event-time
order, and derives its queue segments from them every time. Deriving from the
sorted steps, instead of mutating a state machine per arrival, is what makes an
out-of-order delivery give exactly the in-order result, and a duplicate
(same ``event_id``) change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Ties at the same millisecond are broken by lifecycle order, then event id, so
# the derivation never depends on arrival order.
STEP_ORDER = {"offered": 0, "transferred": 1, "answered": 2, "abandoned": 3, "ended": 4, "rated": 5}


@dataclass(frozen=True, slots=True)
class Step:
    ts: int  # event time, epoch ms
    step: str
    event_id: str
    queue: str | None = None
    agent: str | None = None
    to_queue: str | None = None
    wrapup_ms: int = 0

    def sort_key(self) -> tuple[int, int, str]:
        return (self.ts, STEP_ORDER.get(self.step, 9), self.event_id)

    def to_list(self) -> list[Any]:
        return [self.ts, self.step, self.event_id, self.queue, self.agent, self.to_queue, self.wrapup_ms]

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
class Derivation:
    segments: list[Segment]
    # Steps that could not be placed: e.g. an answer with no offer seen (yet).
    orphan_steps: int
    ended: bool


@dataclass(slots=True)
class Interaction:
    interaction_id: str
    channel: str
    steps: list[Step] = field(default_factory=list)
    last_ts: int = 0
    # Facts (see kpis.py) currently counted for this interaction, with multiplicity.
    applied: dict[tuple, int] = field(default_factory=dict)
    partition: int = -1  # the input partition that owns it (kept across recovery)

    def add(self, step: Step) -> bool:
        """Insert a step in event-time order; False when its event id was seen before."""
        if any(s.event_id == step.event_id for s in self.steps):
            return False
        key = step.sort_key()
        index = len(self.steps)
        while index and self.steps[index - 1].sort_key() > key:
            index -= 1
        self.steps.insert(index, step)
        self.last_ts = max(self.last_ts, step.ts)
        return True

    def derive(self) -> Derivation:
        segments: list[Segment] = []
        waiting: Segment | None = None  # the segment currently in queue
        serving: Segment | None = None  # the segment whose agent has the contact
        queue: str | None = None
        orphans = 0
        ended = False
        for s in self.steps:
            queue = s.queue or queue
            if s.step == "offered":
                if waiting is None and serving is None and queue:
                    waiting = Segment(queue, s.ts)
                    segments.append(waiting)
                elif waiting is None and serving is not None:
                    orphans += 1  # an offer while an agent has the contact: ignore
            elif s.step == "answered":
                if waiting is not None:
                    waiting.exit, waiting.left, waiting.agent = "answered", s.ts, s.agent
                    serving, waiting = waiting, None
                else:
                    orphans += 1
            elif s.step == "abandoned":
                if waiting is not None:
                    waiting.exit, waiting.left = "abandoned", s.ts
                    waiting = None
                    ended = True  # the customer left: the interaction is over
                else:
                    orphans += 1
            elif s.step == "transferred":
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
                    orphans += 1
                    continue
                if s.to_queue:
                    queue = s.to_queue
                    waiting = Segment(queue, s.ts)
                    segments.append(waiting)
            elif s.step == "ended":
                if waiting is not None:
                    # Hanging up while still queued is an abandon, whatever the platform calls it.
                    waiting.exit, waiting.left = "abandoned", s.ts
                    waiting = None
                    ended = True
                elif serving is not None:
                    serving.ended, serving.wrapup_ms = s.ts, s.wrapup_ms
                    serving = None
                    ended = True
                else:
                    orphans += 1
        return Derivation(segments, orphans, ended)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.interaction_id, "ch": self.channel, "last": self.last_ts,
                "steps": [s.to_list() for s in self.steps],
                "applied": [[*fact, n] for fact, n in self.applied.items()], "p": self.partition}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Interaction":
        return cls(doc["id"], doc["ch"], [Step.from_list(r) for r in doc["steps"]], doc["last"],
                   {tuple(row[:-1]): row[-1] for row in doc.get("applied", ())}, doc.get("p", -1))
