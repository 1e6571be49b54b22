"""Agent presence and time in state (METRICS.md "Agents and staffing"). Pure: no I/O.

Per agent, a timeline built from two inputs:

- its presence events (``Presence``, from the ``agents`` topic): de-duplicated by
  ``event_id`` and ordered by ``(occurred_at, event_id)``, so any arrival order within
  the lateness gives the in-order result (two events at one millisecond cannot be
  ordered by time; the event_id makes the order the same on every run);
- its contact intervals (``Contact``, from the pipeline: one per answered queue segment,
  keyed ``(interaction_id, segment)``): idempotent versioned upserts, the highest version
  wins, a removal too (a retraction moved the answer to another agent).

At every instant the agent is in exactly one state: on_contact (any open interval; it
wins over every declared state and over being logged out), else its declared state
(available, away with a reason, after_contact_work) while logged in, else offline.
An open contact counts at most the interaction horizon after its answer (``capped``).
Figures are the milliseconds in each state per window, split exactly at window
boundaries (``Windowing``'s arithmetic), per agent (windows of 15 min and more) and per
queue: staffed, available and away for every queue the agent serves at the instant,
on-contact for each open contact's queue and channel, after-contact work for the queue
and channel of the contact that ended last.

Event time (``advance``) bounds what is counted: figures cover [start of the oldest
open window, event time); at the first event time (a cold start that read a backlog
before event time was known) from the first instant read, the windows already past
their lateness sent final once. Time accrues when figures are read (``take``), when an agent
changes, and before windows close; a move of event time alone costs nothing per agent. A window is final once event time is past its end plus the
lateness; what it holds then never changes, and a change that would touch it is
counted late (``late_ms``) instead. Timeline parts are folded away once every window
they touch is final (``floor``): each agent keeps its state at the floor, the events
and contacts after it, and the contact that ended last (for after-contact work).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

from ccpulse.core.kpis import AGENT, AGENT_MIN_WINDOW_S, QUEUE, occupancy, utilization
from ccpulse.core.windowing import Windowing

LOGGED_IN, STATE_CHANGED, LOGGED_OUT = "logged_in", "state_changed", "logged_out"
AVAILABLE, AWAY, AFTER_CONTACT_WORK, ON_CONTACT = "available", "away", "after_contact_work", "on_contact"
# The reason an away without one counts under (no valid reason is empty: schemas/events.py).
NO_REASON = ""
# The channel of a queue's figures that come from no contact (staffed, available, away):
# an agent serves a queue, not a channel of it. No input channel is empty.
ANY_CHANNEL = ""
# Counters, in milliseconds: away time also per reason, as AWAY_BY_REASON + reason.
STAFFED, AVAILABLE_MS, ON_CONTACT_MS, ACW_MS, AWAY_MS = (
    "staffed_ms", "available_ms", "on_contact_ms", "after_contact_work_ms", "away_ms")
AWAY_BY_REASON = "away_ms:"
# A queue's live count that is not agents: 1 where some presence event ever named the
# queue (``AgentCore.known``). Summed over partitions, > 0 tells a queue with presence data
# whose agents are all gone (short) from one nobody sends presence for (agents_gap null).
PRESENCE_SEEN = "presence_seen"

ContactKey = tuple[str, int]  # (interaction_id, segment index)
_FOREVER = 1 << 62  # after every instant a timestamp can hold
# (size_s, window_start_ms, scope, name, channel): scope AGENT (name = agent id, channel
# ANY_CHANNEL) or QUEUE (name = queue), as ccpulse/core/kpis.py scopes its windows.
WindowKey = tuple[int, int, str, str, str]


class Presence(NamedTuple):
    """One presence event (``schemas.events.AgentEvent`` without the agent id, as the core
    keeps it: it imports nothing above itself)."""

    ts: int
    event_id: str
    kind: str  # LOGGED_IN | STATE_CHANGED | LOGGED_OUT
    state: str | None = None
    reason: str | None = None
    queues: tuple[str, ...] | None = None


class Contact(NamedTuple):
    """An answered queue segment as its agent saw it."""

    version: int
    queue: str
    channel: str
    answered: int
    ended: int | None  # None: still open


@dataclass(frozen=True, slots=True)
class Declared:
    """What the presence events say at an instant."""

    staffed: bool = False
    state: str | None = None  # None while not logged in
    reason: str = NO_REASON
    queues: tuple[str, ...] = ()

    def then(self, p: Presence) -> "Declared":
        queues = self.queues if p.queues is None else p.queues  # given: replaces the list
        if p.kind == LOGGED_OUT:
            return Declared(False, None, NO_REASON, queues)
        # A state change implies a login: a platform reports states of logged-in agents
        # only, and the login may predate what was read (a replay, a retention limit).
        state = p.state or (AVAILABLE if p.kind == LOGGED_IN else self.state or AVAILABLE)
        return Declared(True, state, (p.reason or NO_REASON) if state == AWAY else NO_REASON, queues)


@dataclass(frozen=True, slots=True)
class Instant:
    """An agent's whole situation at an instant: what every figure is computed from."""

    declared: Declared
    open: frozenset[tuple[str, str]]  # (queue, channel) of each open contact
    follows: tuple[str, str] | None  # (queue, channel) of the contact that ended last

    @property
    def state(self) -> str | None:
        """The one state of METRICS.md (None: offline or unknown)."""
        if self.open:
            return ON_CONTACT
        return self.declared.state if self.declared.staffed else None


def agent_counters(inst: Instant) -> list[str]:
    """The counters one agent's instant adds to, on its own windows."""
    out = [STAFFED] if inst.declared.staffed else []
    state = inst.state
    if state == ON_CONTACT:
        out.append(ON_CONTACT_MS)
    elif state == AVAILABLE:
        out.append(AVAILABLE_MS)
    elif state == AWAY:
        out += [AWAY_MS, AWAY_BY_REASON + inst.declared.reason]
    elif state == AFTER_CONTACT_WORK:
        out.append(ACW_MS)
    return out


def queue_counters(inst: Instant) -> list[tuple[str, str, str]]:
    """(queue, channel, counter) one agent's instant adds to, with METRICS.md's attribution."""
    d, state = inst.declared, inst.state
    served: list[str] = []
    if d.staffed:
        served.append(STAFFED)
    if state == AVAILABLE:
        served.append(AVAILABLE_MS)
    elif state == AWAY:
        served += [AWAY_MS, AWAY_BY_REASON + d.reason]
    out = [(queue, ANY_CHANNEL, name) for queue in d.queues for name in served]
    if state == ON_CONTACT:
        out += [(queue, channel, ON_CONTACT_MS) for queue, channel in sorted(inst.open)]
    elif state == AFTER_CONTACT_WORK and inst.follows is not None:
        out.append((inst.follows[0], inst.follows[1], ACW_MS))
    return out


@dataclass
class Timeline:
    """One agent: its declared state at the floor, and what follows it."""

    base: Declared = field(default_factory=Declared)
    # (ts, event_id) of the newest event folded into ``base``: an older one changes nothing
    marker: tuple[int, str] | None = None
    events: list[Presence] = field(default_factory=list)  # ordered by (ts, event_id)
    contacts: dict[ContactKey, Contact] = field(default_factory=dict)
    # Contacts removed or folded away -> (version, answered): newer versions only, from now on
    removed: dict[ContactKey, tuple[int, int]] = field(default_factory=dict)
    # Event time up to which its time is in the open windows (None: not yet counted). Not
    # stored: a restore counts everything from the floor again.
    accrued: int | None = field(default=None, repr=False, compare=False)
    # (from, situation, until): the situation holds on [from, until); not stored
    _cache: tuple[int, Instant, int] | None = field(default=None, repr=False, compare=False)
    # (the _cache it was made for, from, until, [(window key, [counter, ...]), ...]): where
    # time in the cached situation goes on [from, until), one window of every size
    # (``AgentCore._accrue_one``); not stored
    _plan: tuple[Any, int, int, list[tuple[WindowKey, list[str]]]] | None = field(
        default=None, repr=False, compare=False)

    def queues(self) -> set[str]:
        """Every queue its base and events name."""
        return set(self.base.queues).union(*(p.queues or () for p in self.events))

    def has(self, event_id: str) -> bool:
        return any(p.event_id == event_id for p in self.events)

    def at(self, t: int) -> Instant:
        declared = self.base
        for p in self.events:
            if p.ts > t:
                break
            declared = declared.then(p)
        open_: set[tuple[str, str]] = set()
        last: tuple[int, ContactKey] | None = None
        follows = None
        for key, c in self.contacts.items():
            if c.answered <= t and (c.ended is None or t < c.ended):
                open_.add((c.queue, c.channel))
            if c.ended is not None and c.ended <= t and (last is None or (c.ended, key) > last):
                last, follows = (c.ended, key), (c.queue, c.channel)
        return Instant(declared, frozenset(open_), follows)

    def first_instant(self, default: int) -> int:
        """The earliest instant its events or contacts speak of (``default`` if none)."""
        times = [p.ts for p in self.events] + [c.answered for c in self.contacts.values()]
        return min(times, default=default)

    def next_change(self, t: int) -> int | None:
        """The first instant after ``t`` at which the agent's situation may change."""
        later = [p.ts for p in self.events if p.ts > t]
        for c in self.contacts.values():
            later += [x for x in (c.answered, c.ended) if x is not None and x > t]
        return min(later, default=None)

    def pieces(self, a: int, b: int) -> Iterable[tuple[int, int, Instant]]:
        """[x0, x1) pieces of [a, b), the situation constant on each."""
        x0 = a
        while x0 < b:
            # Event time moves a little at a time: the situation at its last move nearly
            # always still holds, and then a piece costs no scan.
            inst = self.situation(x0)
            x1 = min(self._cache[2], b)  # type: ignore[index]
            yield x0, x1, inst
            x0 = x1

    def situation(self, t: int) -> Instant:
        """``at(t)``, from the cached piece when ``t`` is in it (the live counts look at
        every agent each second, and the situation rarely changed since)."""
        cached = self._cache
        if cached is not None and cached[0] <= t < cached[2]:
            return cached[1]
        following = self.next_change(t)
        cached = self._cache = (t, self.at(t), _FOREVER if following is None else following)
        return cached[1]

    def changed(self) -> None:
        """Forget the cached situation: the events or contacts changed."""
        self._cache = None

    def insert(self, p: Presence) -> None:
        order = (p.ts, p.event_id)
        i = len(self.events)
        while i and (self.events[i - 1].ts, self.events[i - 1].event_id) > order:
            i -= 1
        self.events.insert(i, p)

    def fold(self, floor: int, keep_removed_ms: int) -> None:
        """Forget what only final windows need: events before ``floor`` go into the base,
        contacts over before it go, all but the one that ended last (after-contact work).
        A removed or dropped contact's version is kept ``keep_removed_ms`` longer: an older
        upsert of it read again later (input delivered again after a crash) would bring
        it back."""
        n = 0
        while n < len(self.events) and self.events[n].ts < floor:
            self.base = self.base.then(self.events[n])
            self.marker = (self.events[n].ts, self.events[n].event_id)
            n += 1
        if n:
            del self.events[:n]
            self._cache = None
        over = [(c.ended, key) for key, c in self.contacts.items() if c.ended is not None and c.ended <= floor]
        if len(over) > 1:
            self._cache = None
        for _ended, key in sorted(over)[:-1]:
            # Its version stays (as a removal's does): an older upsert of it read again
            # must not bring it back.
            gone = self.contacts.pop(key)
            self.removed[key] = (gone.version, gone.answered)
        for key in [key for key, (_v, answered) in self.removed.items() if answered + keep_removed_ms < floor]:
            del self.removed[key]

    def to_doc(self) -> dict[str, Any]:
        """A compact, JSON-able encoding (the changelog value of one agent)."""
        b = self.base
        return {"b": [int(b.staffed), b.state, b.reason, list(b.queues)],
                "m": list(self.marker) if self.marker else None,
                "e": [[p.ts, p.event_id, p.kind, p.state, p.reason, None if p.queues is None else list(p.queues)]
                      for p in self.events],
                "c": [[k[0], k[1], *c] for k, c in self.contacts.items()],
                "r": [[k[0], k[1], v, a] for k, (v, a) in self.removed.items()]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Timeline":
        staffed, state, reason, queues = doc["b"]
        return cls(Declared(bool(staffed), state, reason, tuple(queues)),
                   tuple(doc["m"]) if doc["m"] else None,  # type: ignore[arg-type]
                   [Presence(ts, eid, kind, st, rs, None if qs is None else tuple(qs))
                    for ts, eid, kind, st, rs, qs in doc["e"]],
                   {(c[0], c[1]): Contact(*c[2:]) for c in doc["c"]},
                   {(r[0], r[1]): (r[2], r[3]) for r in doc["r"]})


def window_targets(agent: str, mine: list[str], queues: list[tuple[str, str, str]], size: int,
                   start: int) -> list[tuple[WindowKey, list[str]]]:
    """The windows of one size and start that an instant's counters (``agent_counters``,
    ``queue_counters``) add to, with the counters each gets: the one place that says
    which windows an agent's time lands in."""
    targets: list[tuple[WindowKey, list[str]]] = []
    if size >= AGENT_MIN_WINDOW_S and mine:
        targets.append(((size, start, AGENT, agent, ANY_CHANNEL), mine))
    by_key: dict[WindowKey, list[str]] = {}
    for queue, channel, name in queues:
        by_key.setdefault((size, start, QUEUE, queue, channel), []).append(name)
    targets += by_key.items()
    return targets


def time_in_state(agent: str, timeline: Timeline, a: int, b: int, windowing: Windowing) -> Counter:
    """Milliseconds per (window key, counter) of ``agent`` over [a, b), split at every
    window boundary of every configured size."""
    out: Counter = Counter()
    for x0, x1, inst in timeline.pieces(a, b):
        mine = agent_counters(inst)
        queues = queue_counters(inst)
        if not mine and not queues:
            continue
        for size in windowing.sizes:
            start = windowing.start(x0, size)
            while start < x1:
                end = windowing.end(size, start)
                ms = min(x1, end) - max(x0, start)
                for key, names in window_targets(agent, mine, queues, size, start):
                    for name in names:
                        out[(key, name)] += ms
                start = end
    return out


def live_counts(instants: Iterable[Instant]) -> dict[tuple[str, str], Counter]:
    """Agents per (queue, channel) in each state now, with METRICS.md's attribution (the
    agents themselves, not milliseconds): keys (queue, ANY_CHANNEL) for staffed, available,
    away and away by reason, (queue, channel) for on contact and after-contact work."""
    out: dict[tuple[str, str], Counter] = {}
    for inst in instants:
        # The same attribution as the windows: one instant's counters, counted once each.
        for queue, channel, name in set(queue_counters(inst)):
            out.setdefault((queue, channel), Counter())[name.replace("_ms", "")] += 1
    return out


def state_figures(counts: dict[str, int]) -> dict[str, Any]:
    """A window's time-in-state counters as a record publishes them: seconds, away time
    by reason, occupancy and utilization (null on an empty denominator)."""
    ms = {name: counts.get(name, 0) for name in (STAFFED, AVAILABLE_MS, ON_CONTACT_MS, ACW_MS, AWAY_MS)}
    out: dict[str, Any] = {name.replace("_ms", "_seconds"): value / 1000 for name, value in ms.items()}
    out["away_seconds_by_reason"] = {name[len(AWAY_BY_REASON):]: value / 1000
                                     for name, value in sorted(counts.items())
                                     if name.startswith(AWAY_BY_REASON) and value}
    out["occupancy"] = occupancy(ms[ON_CONTACT_MS], ms[ACW_MS], ms[AVAILABLE_MS])
    out["utilization"] = utilization(ms[ON_CONTACT_MS], ms[ACW_MS], ms[STAFFED])
    return out


@dataclass
class WindowChange:
    key: WindowKey
    counters: dict[str, int]  # milliseconds per counter; a copy
    final: bool


class AgentCore:
    """Every agent of one partition of the agents topic, and their open windows."""

    def __init__(self, windowing: Windowing, lateness_ms: int, horizon_ms: int | None = None) -> None:
        self.windowing = windowing
        self.lateness_ms = lateness_ms
        self.horizon_ms = horizon_ms
        # A removal outlives its windows by a day (or the longest window): input read again
        # after a crash is one checkpoint's, far less event time even in a full-speed replay.
        self.keep_removed_ms = max(86_400, *windowing.sizes) * 1000
        self.agents: dict[str, Timeline] = {}
        self.now: int | None = None  # event time; None until the first advance
        self.windows: dict[WindowKey, Counter] = {}  # open windows only
        self._dirty: set[WindowKey] = set()
        self._finals: list[WindowChange] = []
        self.late_events = 0  # presence events in a window already final
        self.late_ms = 0  # milliseconds a change would have moved in final windows (not applied)
        self.duplicates = 0
        self._folded_at: int | None = None
        self._ends: dict[tuple[int, int], int] = {}  # (size, start) -> end, for is_final
        # Every queue a presence event ever named: kept for good (stored), as a timeline
        # forgets a queue its agent no longer serves once the events are folded.
        self.known: set[str] = set()
        # Milliseconds per (queue, channel) and counter of every final queue window of the
        # smallest size: with the open ones, the cumulative counters of /metrics. Stored
        # (open windows are derived on a restore, final ones are not), so the count
        # continues after a restart and never counts a window twice.
        self.totals: dict[tuple[str, str], Counter] = {}

    # -- time -----------------------------------------------------------------

    def floor(self) -> int | None:
        """The start of the oldest open window: nothing before it can change any figure."""
        if self.now is None:
            return None
        closed = self.now - self.lateness_ms
        return min(self.windowing.start(closed, size) for size in self.windowing.sizes)

    def is_final(self, size: int, start: int) -> bool:
        end = self._ends.get((size, start))
        if end is None:
            if len(self._ends) > 4096:  # open windows are few: keep it bounded anyway
                self._ends.clear()
            end = self._ends[(size, start)] = self.windowing.end(size, start)
        return self.now is not None and end <= self.now - self.lateness_ms

    def advance(self, now_ms: int) -> None:
        """Event time moves to ``now_ms`` (never back): time in the current states
        accrues, windows past their lateness become final, the rest is folded away."""
        if self.now is None:
            self.now = now_ms
            self._rebuild(restored=False)
            return
        if now_ms <= self.now:
            return
        closed_before, closed_now = self.now - self.lateness_ms, now_ms - self.lateness_ms
        if all(self.windowing.start(closed_before, size) == self.windowing.start(closed_now, size)
               for size in self.windowing.sizes):
            # No window closes: time in the current states accrues when figures are read
            # (``take``) or the agent changes, not at each move (thousands of agents).
            self.now = now_ms
            return
        self._accrue(now_ms)  # everything up to the new event time, before windows close
        self.now = now_ms
        for key in [k for k in self.windows if self.is_final(k[0], k[1])]:
            self._finals.append(WindowChange(key, dict(self.windows.pop(key)), True))
            self._dirty.discard(key)
            self._total(key, self._finals[-1].counters)
        floor = self.floor()
        if floor != self._folded_at:  # it moves once per window of the longest size
            self._folded_at = floor
            for timeline in self.agents.values():
                timeline.fold(floor, self.keep_removed_ms)  # type: ignore[arg-type]

    # -- input ----------------------------------------------------------------

    def apply(self, agent: str, p: Presence) -> bool:
        """One presence event; False if it changed nothing (a duplicate, or older than
        the newest event already folded away, which it could not change)."""
        self.known.update(p.queues or ())  # even one that changes no timeline: it is presence data
        timeline = self.agents.setdefault(agent, Timeline())
        if timeline.has(p.event_id) or (timeline.marker is not None and (p.ts, p.event_id) <= timeline.marker):
            self.duplicates += 1
            return False
        smallest = min(self.windowing.sizes)
        if self.is_final(smallest, self.windowing.start(p.ts, smallest)):
            self.late_events += 1
        floor = self.floor()
        if floor is not None and p.ts < floor:
            # Every window of its own instant is final: it acts from the floor on.
            self._change(agent, timeline, floor, lambda: _fold_late(timeline, p))
        else:
            self._change(agent, timeline, p.ts, lambda: timeline.insert(p))
        return True

    def upsert(self, agent: str, key: ContactKey, contact: Contact) -> bool:
        """An answered segment of ``agent``; False if its version is not above the held one.
        One with no end is held as ended at its answer + ``horizon_ms`` (``capped``)."""
        timeline = self.agents.setdefault(agent, Timeline())
        held = timeline.contacts.get(key)
        contact = self.capped(contact)
        if contact.version <= self._version(timeline, key):
            self.duplicates += 1
            return False
        times = [t for c in (held, contact) if c is not None for t in (c.answered, c.ended) if t is not None]

        def change() -> None:
            timeline.removed.pop(key, None)
            timeline.contacts[key] = contact

        self._change(agent, timeline, min(times), change)
        return True

    def remove(self, agent: str, key: ContactKey, version: int, answered: int) -> bool:
        """The segment is no longer ``agent``'s (a retraction moved its answer elsewhere).
        Its version is remembered a day past the open windows (``Timeline.fold``), so an
        older upsert of it read later (a redelivery) does not bring it back."""
        timeline = self.agents.setdefault(agent, Timeline())
        if version <= self._version(timeline, key):
            self.duplicates += 1
            return False
        held = timeline.contacts.get(key)

        def change() -> None:
            timeline.contacts.pop(key, None)
            timeline.removed[key] = (version, answered if held is None else min(answered, held.answered))

        self._change(agent, timeline, answered if held is None else min(answered, held.answered), change)
        return True

    def capped(self, contact: Contact) -> Contact:
        """``contact`` with no end ends at its answer + the interaction horizon: the pipeline
        forgets an interaction that went quiet and ends its open contact exactly there
        (streams/stages/pipeline.py, ``_end_open_contact``), but only when its expiry scan
        runs. Were it open until then, the windows up to it would close with the agent on
        contact (for good, had the end been lost); capped, they close right, and the
        expiry's end changes nothing. An end that does come later still counts in full."""
        if contact.ended is not None or self.horizon_ms is None:
            return contact
        return contact._replace(ended=contact.answered + self.horizon_ms)

    @staticmethod
    def _version(timeline: Timeline, key: ContactKey) -> int:
        held, gone = timeline.contacts.get(key), timeline.removed.get(key)
        return max(held.version if held else -1, gone[0] if gone else -1)

    def _accrue(self, to: int) -> None:
        """Every agent's time up to ``to`` into the windows (``to`` >= event time)."""
        for agent, timeline in self.agents.items():
            self._accrue_one(agent, timeline, to)

    def _accrue_one(self, agent: str, timeline: Timeline, to: int) -> None:
        since = timeline.accrued if timeline.accrued is not None else self.floor()
        if since is not None and since < to and not self._accrue_planned(agent, timeline, since, to):
            self._add(time_in_state(agent, timeline, since, to, self.windowing))
        timeline.accrued = to

    def _accrue_planned(self, agent: str, timeline: Timeline, since: int, to: int) -> bool:
        """``time_in_state`` over [since, to) for the common case, every agent once a
        second: one situation, no window boundary crossed. The windows and counters it
        adds to are worked out once per situation and window (``Timeline._plan``), so a
        second on contact costs a few dict updates. False: not that case. The windows
        are open (they hold ``to`` - 1, and event time is at most ``to``)."""
        cached = timeline._cache
        if cached is None or not cached[0] <= since < cached[2] or to > cached[2]:
            return False
        plan = timeline._plan
        if plan is None or plan[0] is not cached or not plan[1] <= since or to > plan[2]:
            plan = timeline._plan = self._plan(agent, cached, since)
            if to > plan[2]:
                return False
        ms = to - since
        windows, dirty = self.windows, self._dirty
        for key, names in plan[3]:
            counters = windows.get(key)
            if counters is None:
                counters = windows[key] = Counter()
            for name in names:
                counters[name] += ms
            dirty.add(key)
        return True

    def _plan(self, agent: str, cached: tuple[int, Instant, int], t: int
              ) -> tuple[Any, int, int, list[tuple[WindowKey, list[str]]]]:
        """Where ``time_in_state`` puts time at ``t`` in the cached situation, and the span
        around ``t`` it holds for (the situation's, cut at the window boundaries)."""
        inst = cached[1]
        mine, queues = agent_counters(inst), queue_counters(inst)
        lo, hi = cached[0], cached[2]
        targets: list[tuple[WindowKey, list[str]]] = []
        for size in self.windowing.sizes:
            start = self.windowing.start(t, size)
            end = self.windowing.end(size, start)
            lo, hi = max(lo, start), min(hi, end)
            targets += window_targets(agent, mine, queues, size, start)
        return cached, lo, hi, targets

    def _change(self, agent: str, timeline: Timeline, t: int, mutate: Callable[[], None]) -> None:
        """Apply ``mutate`` to ``timeline``, and to every open window what it changes
        from ``t`` on: the figures after less the figures before."""
        if self.now is not None:
            self._accrue_one(agent, timeline, self.now)
        if self.now is None:
            mutate()
            timeline.changed()
            return
        lo = max(t, self.floor())  # type: ignore[type-var]
        if lo >= self.now:
            mutate()  # in the future of event time: it counts as time gets there
            timeline.changed()
            return
        before = time_in_state(agent, timeline, lo, self.now, self.windowing)
        mutate()
        timeline.changed()
        after = time_in_state(agent, timeline, lo, self.now, self.windowing)
        after.subtract(before)
        self._add(after)

    def _add(self, delta: Counter, late: bool = True) -> None:
        """``delta`` into the open windows; what falls in a final one is dropped, and
        counted in ``late_ms`` unless ``late`` is False (a rebuild: sent already)."""
        for (key, name), ms in delta.items():
            if not ms:
                continue
            if self.is_final(key[0], key[1]):
                if late:
                    self.late_ms += abs(ms)
                continue
            counters = self.windows.get(key)
            if counters is None:
                counters = self.windows[key] = Counter()
            counters[name] += ms
            self._dirty.add(key)

    def _rebuild(self, restored: bool) -> None:
        """Open windows from the timelines, at the first event time: also the windows
        already final then, sent final once, unless ``restored`` (they were sent before
        the snapshot was written)."""
        self.windows.clear()
        floor: int = self.floor()  # type: ignore[assignment]
        closed: dict[WindowKey, Counter] = {}
        for agent, timeline in self.agents.items():
            # A cold start read its backlog before event time was known: every window from
            # its first instant on is counted, those already past their lateness sent final
            # (as the engine closes what a catch-up put past it). Folding first, as a
            # restore does, dropped every window before the floor: they were never sent.
            since = floor if restored else min(floor, timeline.first_instant(floor))
            counted = time_in_state(agent, timeline, since, self.now, self.windowing)  # type: ignore[arg-type]
            timeline.fold(floor, self.keep_removed_ms)
            timeline.changed()
            if not restored:
                for (key, name), ms in counted.items():
                    if ms and self.is_final(key[0], key[1]):
                        closed.setdefault(key, Counter())[name] += ms
            self._add(counted, late=False)
            timeline.accrued = self.now
        self._finals += [WindowChange(key, dict(c), True) for key, c in sorted(closed.items())]
        for key, c in closed.items():
            self._total(key, c)
        self._dirty = set(self.windows)

    def _total(self, key: WindowKey, counters: dict[str, int]) -> None:
        """A window that became final into ``totals`` (queue windows of the smallest size)."""
        size, _start, scope, queue, channel = key
        if size == self.windowing.sizes[0] and scope == QUEUE:
            self.totals.setdefault((queue, channel), Counter()).update(counters)

    def running_totals(self) -> dict[tuple[str, str], dict[str, int]]:
        """Cumulative milliseconds per (queue, channel) and counter: the final queue windows
        of the smallest size plus the open ones as last read (``take``). Once every window
        is final, each counter equals the sum of the final windows of any size."""
        out = {qc: dict(c) for qc, c in self.totals.items()}
        smallest = self.windowing.sizes[0]
        for (size, _start, scope, queue, channel), counters in list(self.windows.items()):
            if size == smallest and scope == QUEUE:
                into = out.setdefault((queue, channel), {})
                for name, ms in counters.items():
                    into[name] = into.get(name, 0) + ms
        return out

    # -- output ---------------------------------------------------------------

    def take(self, scopes: frozenset[str] | None = None,
             agents: Callable[[str], bool] | None = None) -> list[WindowChange]:
        """Every window that became final, then every open window that changed, since
        the last call (each once; counters in milliseconds, zero counters left out).
        ``scopes``: only the open windows of these scopes; ``agents``: of the agent
        scope, only the windows of the agents it says yes to. The others stay changed,
        for a later call (thousands of agent windows change with every second of event time)."""
        if self.now is not None:
            self._accrue(self.now)
        out, self._finals = self._finals, []
        if scopes is None:
            taken, self._dirty = self._dirty, set()
        else:
            taken = {key for key in self._dirty
                     if key[2] in scopes and (agents is None or key[2] != AGENT or agents(key[3]))}
            self._dirty -= taken
        for key in sorted(taken):
            out.append(WindowChange(key, {k: v for k, v in self.windows[key].items() if v}, False))
        for change in out:  # finals too: a counter back at zero is no counter
            change.counters = {k: v for k, v in change.counters.items() if v}
        return out

    def take_finals(self) -> list[WindowChange]:
        """The windows that became final since the last call, without accruing open ones."""
        out, self._finals = self._finals, []
        return out

    def mark_queue(self, queue: str) -> None:
        """Take every open window of ``queue`` again as changed (its records' keys changed)."""
        self._dirty.update(key for key in self.windows if key[2] == QUEUE and key[3] == queue)

    def instant(self, agent: str) -> Instant | None:
        """``agent``'s situation at event time."""
        timeline = self.agents.get(agent)
        if timeline is None or self.now is None:
            return None
        return timeline.situation(self.now)

    def live(self) -> dict[tuple[str, str], Counter]:
        """Agents per queue in each state at event time (``live_counts``)."""
        instants = [self.instant(agent) for agent in self.agents]
        return live_counts(i for i in instants if i is not None)

    # -- state ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything to restore from, JSON-able: per agent its compact timeline
        (``Timeline.to_doc``), and event time. Open windows are derived, never stored."""
        return {"now": self.now, "agents": {a: t.to_doc() for a, t in self.agents.items()},
                "totals": self.totals_doc(), "known": sorted(self.known)}

    def totals_doc(self) -> list[list[Any]]:
        """``totals`` JSON-able: [[queue, channel, {counter: ms}], ...]."""
        return [[q, ch, {k: v for k, v in sorted(c.items()) if v}] for (q, ch), c in sorted(self.totals.items())]

    @classmethod
    def restore(cls, windowing: Windowing, lateness_ms: int, doc: dict[str, Any],
                horizon_ms: int | None = None) -> "AgentCore":
        """The core as snapshotted; every open window is taken again as changed (its
        records are versioned by event time, so one sent twice replaces itself)."""
        core = cls(windowing, lateness_ms, horizon_ms)
        core.agents = {a: Timeline.from_doc(t) for a, t in doc["agents"].items()}
        for timeline in core.agents.values():  # stored before the horizon was given to it
            timeline.contacts = {key: core.capped(c) for key, c in timeline.contacts.items()}
        # Absent in what was stored before the totals existed: they start from 0 there.
        core.totals = {(q, ch): Counter(c) for q, ch, c in doc.get("totals", [])}
        # Absent in what was stored before it existed: what the timelines still name.
        core.known = set(doc.get("known", ())).union(
            *(t.queues() for t in core.agents.values()))
        if doc["now"] is not None:
            core.now = doc["now"]
            core._rebuild(restored=True)
        return core


def _fold_late(timeline: Timeline, p: Presence) -> None:
    """A presence event older than the floor, newer than the marker: into the base."""
    timeline.base = timeline.base.then(p)
    timeline.marker = (p.ts, p.event_id)
