"""An independent, deliberately naive reference of the KPI definitions (METRICS.md).

Batch computation over the complete history: take every event document ever
delivered (any order, duplicates included), group it by interaction, drop
repeated ``event_id``s, sort each interaction's events by
``(time, step rank, event_id)`` and walk them once with a tiny state machine,
emitting *facts* ``(time, scope, name, field, value)``. Facts are then put in
tumbling UTC windows. Shares no code with ``ccpulse.core`` apart from the
``Thresholds`` dataclass and the sketch's bucket function (used only to predict
the engine's sketch bucket counts).

Rules implemented (the brief of the test, refining METRICS.md):

* voice/chat: ``offered`` when idle (and a queue is known) opens a waiting
  segment; ``answered`` / ``abandoned`` / ``ended`` / ``transferred`` close it;
  ``ended`` or ``transferred`` with ``to_queue`` while an agent has the contact
  ends the handling; ``transferred`` with ``to_queue`` (while waiting or served)
  opens a new waiting segment in ``to_queue``; anything else is an orphan.
* tickets: ``created`` = offered; the first public agent reply while waiting =
  answered; ``closed`` = ended; ``solved`` / ``reopened`` / one-touch.
* chat messages: an agent message answers every pending customer message.
* ``flowed_out`` / ``callback_requested`` while waiting leave the queue (``flowed_out``
  / ``callbacks_requested``, neither answered nor abandoned); a flow-out with
  ``to_queue`` is a transfer there; the interaction is then over for the queue.
* ``held`` / ``resumed`` while an agent has the contact: each hold counts ``hold_ms``
  when it ends (resumed, or the handling ends: ``ended``, a transfer to a queue) and the
  segment's first hold to end counts ``held``, for the queue and for the agent.
* ``rated`` and ``complaint`` flags on any channel.
* queue outcomes per segment, with the queue's thresholds; agent rollups for
  windows of 15 minutes and longer.
* ``waiting_at_start`` / ``waiting_at_end`` straight from their definition.

Judgement calls where the written rules are silent (kept in one place, here):

* the "current queue" is the last ``queue`` field seen, and becomes ``to_queue``
  when a transfer opens a segment there (the contact now waits in that queue);
* a public agent reply counts towards one-touch only once the ticket exists
  (i.e. after its first segment started); a reply before ``created`` is an orphan;
* a chat response with no segment and no queue ever seen is attributed to the
  queue ``""`` (there is nowhere else to put it; orphans must stay visible);
* a second ``held`` while on hold, a ``resumed`` with no hold, an exit or a hold in the
  wrong state are orphans; a ``held`` and a ``resumed`` at the same millisecond are a
  hold of 0 ms (``held`` ranks first); a transfer to an agent does not end a hold.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

from ccpulse.config import Thresholds
from ccpulse.core import sketch

SIZES = (60, 900, 3600, 86400)
DAY_S = 86400
AGENT_MIN_S = 900
QUEUE, AGENT = "q", "a"

# Answered-wait histogram bounds in seconds (Prometheus "le" semantics: a wait goes
# to the first bound >= it, past the last one to +Inf). A test checks they match
# the engine's published bounds, so a change there is a deliberate one.
HISTOGRAM_BOUNDS_S = (0, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600, 14400, 86400)

RANK = {"offered": 0, "created": 0, "transferred": 1, "answered": 2, "message": 3, "replied": 3,
        "assigned": 3, "abandoned": 4, "solved": 5, "reopened": 6, "ended": 7, "closed": 7,
        "rated": 8, "flowed_out": 4, "callback_requested": 4, "held": 3, "resumed": 5}

WindowKey = tuple[int, int, str, str, str]  # (size_s, start_ms, scope, name, channel)
MAXIMA = ("wait_answered_max_ms", "wait_abandoned_max_ms")


# -- parsing ------------------------------------------------------------------


def parse_ms(text: str) -> int:
    """RFC 3339 (``Z`` or offset, at most ms precision in what the tests generate) -> epoch ms."""
    moment = datetime.fromisoformat(text.replace("z", "Z"))
    assert moment.tzinfo is not None, text
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def format_ms(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Ev:
    ts: int
    kind: str  # the part of ``type`` after the dot (created, replied, offered, ...)
    event_id: str
    channel: str
    queue: str | None
    agent: str | None
    doc: dict[str, Any]

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (self.ts, RANK[self.kind], self.event_id)


def normalise(doc: dict[str, Any]) -> Ev:
    family, kind = doc["type"].split(".", 1)
    if family == "call":
        channel = "voice"
    elif family == "chat":
        channel = "chat"
    else:
        channel = doc.get("channel") or "email"
    return Ev(parse_ms(doc["occurred_at"]), kind, doc["event_id"], channel, doc.get("queue"),
              doc.get("agent_id"), doc)


def channel_kind(channel: str) -> str:
    return channel if channel in ("voice", "chat") else "ticket"


# -- windows ------------------------------------------------------------------


def utc_window_start(ts: int, size_s: int) -> int:
    return ts - ts % (size_s * 1000)


def local_window(ts: int, size_s: int, tz: str, day_start_hour: int) -> tuple[int, int]:
    """(start, end) in a time zone, computed by walking local wall-clock time (used by hand tests).

    Sub-day windows are aligned on local wall-clock multiples of the size; the day
    runs from ``day_start_hour`` local time to the same hour of the next local day.
    """
    zone = ZoneInfo(tz)
    utc = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ts)
    local = utc.astimezone(zone)
    if size_s == DAY_S:
        day = local.date() if local.hour >= day_start_hour else local.date() - timedelta(days=1)
        begin = datetime(day.year, day.month, day.day, day_start_hour, tzinfo=zone)
        nxt = day + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, day_start_hour, tzinfo=zone)
        return to_ms(begin), to_ms(end)
    offset_ms = int(local.utcoffset().total_seconds() * 1000)
    wall = ts + offset_ms
    start = ts - wall % (size_s * 1000)
    return start, start + size_s * 1000


def to_ms(moment: datetime) -> int:
    delta = moment.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


# -- the walk -----------------------------------------------------------------


@dataclass
class Seg:
    queue: str
    entered: int
    exit: str | None = None
    left: int | None = None
    agent: str | None = None


@dataclass
class InteractionResult:
    channel: str
    segments: list[Seg]
    facts: list[tuple[int, str, str, str, int]]  # (ts, scope, name, field, value)
    orphans: int
    # Edge cases met where the engine is known to read the rules differently (see the
    # xfail tests in test_engine_vs_reference.py): "reply_before_creation",
    # "rating_agent_unknown".
    notes: set[str] = field(default_factory=set)


def histogram_index(wait_ms: int) -> int:
    for i, bound in enumerate(HISTOGRAM_BOUNDS_S):
        if wait_ms <= bound * 1000:
            return i
    return len(HISTOGRAM_BOUNDS_S)


def wrapup_ms(doc: dict[str, Any]) -> int:
    value = doc.get("wrapup_seconds")
    if value is None:
        return 0
    # Exact decimal arithmetic: 1.005 s is 1005 ms, whatever its binary float is.
    return int((Decimal(str(value)) * 1000).to_integral_value())


def walk(events: list[Ev], thresholds: Callable[[str, str], Thresholds]) -> InteractionResult:
    """One interaction's de-duplicated, sorted events -> its segments and facts."""
    channel = events[0].channel
    ticket = channel_kind(channel) == "ticket"
    facts: list[tuple[int, str, str, str, int]] = []
    segments: list[Seg] = []
    waiting: Seg | None = None
    serving: Seg | None = None
    current: str | None = None
    pending: list[int] = []  # chat: times of customer messages not yet answered
    first_customer_index: int | None = None  # index (in customer messages) of the first one
    customer_count = 0
    pending_idx: list[int] = []
    public_replies = 0
    complaint: tuple[int, str | None] | None = None
    orphans = 0
    notes: set[str] = set()
    hold_start: int | None = None  # the open hold of the served segment
    holds_ended = 0  # holds of the served segment that ended

    def q(ts: int, queue: str, name: str, value: int = 1) -> None:
        facts.append((ts, QUEUE, queue, name, value))

    def a(ts: int, agent: str | None, name: str, value: int = 1) -> None:
        if agent:
            facts.append((ts, AGENT, agent, name, value))

    def open_segment(queue: str, ts: int) -> Seg:
        seg = Seg(queue, ts)
        segments.append(seg)
        q(ts, queue, "offered")
        return seg

    def leave(seg: Seg, how: str, ts: int, agent: str | None = None) -> None:
        seg.exit, seg.left = how, ts
        wait = ts - seg.entered
        th = thresholds(seg.queue, channel)
        if how == "answered":
            seg.agent = agent
            q(ts, seg.queue, "answered")
            q(ts, seg.queue, "wait_answered_ms", wait)
            q(ts, seg.queue, "wait_answered_max_ms", wait)
            q(ts, seg.queue, "wait_sample", wait)
            if wait <= th.service_level_seconds * 1000:
                q(ts, seg.queue, "answered_within_target")
            if wait <= th.immediate_seconds * 1000:
                q(ts, seg.queue, "answered_immediately")
            a(ts, agent, "answered")
        elif how == "abandoned":
            if th.short_abandon_seconds > 0 and wait <= th.short_abandon_seconds * 1000:
                q(ts, seg.queue, "short_abandoned")
            else:
                q(ts, seg.queue, "abandoned")
                q(ts, seg.queue, "wait_abandoned_ms", wait)
                q(ts, seg.queue, "wait_abandoned_max_ms", wait)
                if wait <= th.service_level_seconds * 1000:
                    q(ts, seg.queue, "abandoned_within_target")
        elif how == "flowed_out":
            q(ts, seg.queue, "flowed_out")
        elif how == "callback_requested":
            q(ts, seg.queue, "callbacks_requested")
        else:
            assert how == "transferred"
            q(ts, seg.queue, "transferred_out")

    def end_hold(seg: Seg, ts: int) -> None:
        nonlocal hold_start, holds_ended
        if hold_start is None:
            return
        for scope_fn, name in ((q, seg.queue), (a, seg.agent)):
            scope_fn(ts, name, "hold_ms", ts - hold_start)
            if holds_ended == 0:
                scope_fn(ts, name, "held")
        hold_start = None
        holds_ended += 1

    def handled(seg: Seg, ts: int, extra_ms: int) -> None:
        assert seg.left is not None
        handle = ts - seg.left + extra_ms
        for scope_fn, name in ((q, seg.queue), (a, seg.agent)):
            scope_fn(ts, name, "handled")
            scope_fn(ts, name, "handle_ms", handle)

    for ev in events:
        if ev.queue:
            current = ev.queue
        attrs = ev.doc.get("attributes") or {}
        if complaint is None and attrs.get("complaint") is True:
            complaint = (ev.ts, current)
        kind = ev.kind
        doc = ev.doc
        if ticket and kind == "created":
            kind = "offered"
        if ticket and kind == "closed":
            kind = "ended"

        if kind == "offered":
            if waiting is None and serving is None and current:
                waiting = open_segment(current, ev.ts)
            else:
                orphans += 1
        elif kind == "answered":  # voice / chat only
            if waiting is not None:
                leave(waiting, "answered", ev.ts, ev.agent)
                serving, waiting = waiting, None
                hold_start, holds_ended = None, 0
            else:
                orphans += 1
        elif kind in ("flowed_out", "callback_requested"):
            to_queue = doc.get("to_queue")
            if waiting is None:
                orphans += 1
            elif to_queue:
                leave(waiting, "transferred", ev.ts)
                current = to_queue
                waiting = open_segment(to_queue, ev.ts)
            else:
                leave(waiting, kind, ev.ts)
                waiting = None
        elif kind == "held":
            if serving is not None and hold_start is None:
                hold_start = ev.ts
            else:
                orphans += 1
        elif kind == "resumed":
            if serving is not None and hold_start is not None:
                end_hold(serving, ev.ts)
            else:
                orphans += 1
        elif kind == "abandoned":
            if waiting is not None:
                leave(waiting, "abandoned", ev.ts)
                waiting = None
            else:
                orphans += 1
        elif kind == "ended":
            if waiting is not None:
                leave(waiting, "abandoned", ev.ts)
                waiting = None
            elif serving is not None:
                end_hold(serving, ev.ts)
                handled(serving, ev.ts, 0 if ticket else wrapup_ms(doc))
                serving = None
            else:
                orphans += 1
        elif kind == "transferred":
            to_queue = doc.get("to_queue")
            if waiting is not None:
                leave(waiting, "transferred", ev.ts)
                waiting = None
            elif serving is not None:
                q(ev.ts, serving.queue, "transfers")
                a(ev.ts, serving.agent, "transfers")
                if to_queue:
                    end_hold(serving, ev.ts)
                    handled(serving, ev.ts, 0)
                    serving = None
            else:
                orphans += 1
                continue
            if to_queue:
                current = to_queue
                waiting = open_segment(to_queue, ev.ts)
        elif kind == "message":
            if doc["sender"] == "customer":
                if first_customer_index is None:
                    first_customer_index = customer_count
                pending.append(ev.ts)
                pending_idx.append(customer_count)
                customer_count += 1
            elif pending:
                owner = serving or waiting
                queue = owner.queue if owner is not None else (current or "")
                for sent, idx in zip(pending, pending_idx):
                    response = ev.ts - sent
                    q(ev.ts, queue, "agent_responses")
                    q(ev.ts, queue, "agent_response_ms", response)
                    if idx == first_customer_index:
                        q(ev.ts, queue, "first_responses")
                        q(ev.ts, queue, "first_response_ms", response)
                pending.clear()
                pending_idx.clear()
        elif kind == "replied":
            if doc["sender"] == "agent" and doc.get("public", True):
                if waiting is not None:
                    public_replies += 1
                    first_segment = waiting is segments[0]
                    leave(waiting, "answered", ev.ts, ev.agent)
                    if first_segment:
                        q(ev.ts, waiting.queue, "first_responses")
                        q(ev.ts, waiting.queue, "first_response_ms", ev.ts - waiting.entered)
                    serving, waiting = waiting, None
                elif segments:
                    public_replies += 1
                else:
                    orphans += 1  # the ticket does not exist yet
                    notes.add("reply_before_creation")
        elif kind == "assigned":
            pass
        elif kind == "solved":
            if segments:
                queue = segments[-1].queue
                q(ev.ts, queue, "solved")
                q(ev.ts, queue, "resolution_ms", ev.ts - segments[0].entered)
                if public_replies == 1:
                    q(ev.ts, queue, "one_touch")
            else:
                orphans += 1
        elif kind == "reopened":
            if segments:
                q(ev.ts, segments[-1].queue, "reopened")
            else:
                orphans += 1
        elif kind == "rated":
            if segments:
                answered = [s for s in segments if s.exit == "answered"]
                agent = answered[-1].agent if answered else None
                if agent is None and any(s.agent for s in answered):
                    notes.add("rating_agent_unknown")  # an earlier segment's agent is not it
                csat, nps = doc.get("csat"), doc.get("nps")
                for scope_fn, name in ((q, segments[-1].queue), (a, agent)):
                    if csat is not None:
                        scope_fn(ev.ts, name, "csat_responses")
                        if csat >= 4:
                            scope_fn(ev.ts, name, "csat_satisfied")
                    if nps is not None:
                        scope_fn(ev.ts, name, "nps_responses")
                        if nps >= 9:
                            scope_fn(ev.ts, name, "nps_promoters")
                        elif nps <= 6:
                            scope_fn(ev.ts, name, "nps_detractors")
            else:
                orphans += 1
        else:
            raise AssertionError(f"unexpected kind {kind}")

    if complaint is not None:
        ts, queue = complaint
        queue = queue or (segments[-1].queue if segments else None)
        if queue:
            q(ts, queue, "complaints")
    return InteractionResult(channel, segments, facts, orphans, notes)


# -- the batch ----------------------------------------------------------------


@dataclass
class Reference:
    counts: dict[WindowKey, Counter] = field(default_factory=lambda: defaultdict(Counter))
    maxima: dict[WindowKey, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    waits: dict[WindowKey, list[int]] = field(default_factory=lambda: defaultdict(list))
    # (queue, channel) -> [(entered, left or None)]
    segments: dict[tuple[str, str], list[tuple[int, int | None]]] = field(
        default_factory=lambda: defaultdict(list))
    interactions: dict[str, InteractionResult] = field(default_factory=dict)

    def nonzero(self, key: WindowKey) -> dict[str, int]:
        return {k: v for k, v in self.counts.get(key, {}).items() if v}

    def keys(self) -> set[WindowKey]:
        return {k for k in self.counts if self.nonzero(k)} | {k for k, m in self.maxima.items() if m}

    def waiting_at(self, key: WindowKey) -> tuple[int, int]:
        """Contacts waiting in the queue at the window's start and at its end, by definition."""
        size, start, scope, name, channel = key
        assert scope == QUEUE
        end = start + size * 1000
        at_start = at_end = 0
        for entered, left in self.segments.get((name, channel), ()):
            if entered < start and (left is None or left >= start):
                at_start += 1
            if entered < end and (left is None or left >= end):
                at_end += 1
        return at_start, at_end


def compute(docs: Iterable[dict[str, Any]], thresholds: Callable[[str, str], Thresholds],
            sizes: tuple[int, ...] = SIZES) -> Reference:
    by_interaction: dict[str, dict[str, Ev]] = defaultdict(dict)
    for doc in docs:
        ev = normalise(doc)
        by_interaction[doc["interaction_id"]].setdefault(ev.event_id, ev)  # first copy wins
    ref = Reference()
    for iid, evs in by_interaction.items():
        ordered = sorted(evs.values(), key=lambda e: e.sort_key)
        result = walk(ordered, thresholds)
        ref.interactions[iid] = result
        for seg in result.segments:
            ref.segments[(seg.queue, result.channel)].append((seg.entered, seg.left))
        for ts, scope, name, fname, value in result.facts:
            for size in sizes:
                if scope == AGENT and size < AGENT_MIN_S:
                    continue
                key = (size, utc_window_start(ts, size), scope, name, result.channel)
                if fname in MAXIMA:
                    ref.maxima[key][fname] = max(ref.maxima[key].get(fname, value), value)
                elif fname == "wait_sample":
                    ref.waits[key].append(value)
                    ref.counts[key][f"wait_sk:{sketch.bucket_of(value)}"] += 1
                    ref.counts[key][f"wait_bucket_{histogram_index(value)}"] += 1
                else:
                    ref.counts[key][fname] += value
    return ref


# -- ratios -------------------------------------------------------------------


def _ratio(n: int, d: int) -> float | None:
    return None if d == 0 else n / d


def service_level(c: dict[str, int], formula: str) -> float | None:
    within = c.get("answered_within_target", 0)
    answered = c.get("answered", 0)
    abandoned = c.get("abandoned", 0)
    ab_within = c.get("abandoned_within_target", 0)
    return {
        "answered_over_exits": lambda: _ratio(within, answered + abandoned),
        "abandons_within_target_neutral": lambda: _ratio(within, answered + abandoned - ab_within),
        "abandons_within_target_positive": lambda: _ratio(within + ab_within, answered + abandoned),
        "answered_only": lambda: _ratio(within, answered),
    }[formula]()


def ratios(c: dict[str, int]) -> dict[str, float | None]:
    answered, abandoned = c.get("answered", 0), c.get("abandoned", 0)
    nps_n = c.get("nps_responses", 0)
    nps = _ratio(c.get("nps_promoters", 0) - c.get("nps_detractors", 0), nps_n)
    asa = _ratio(c.get("wait_answered_ms", 0), answered)
    aht = _ratio(c.get("handle_ms", 0), c.get("handled", 0))
    return {
        "abandonment_rate": _ratio(abandoned, answered + abandoned),
        "immediate_response_rate": _ratio(c.get("answered_immediately", 0), answered + abandoned),
        "transfer_rate": _ratio(c.get("transfers", 0), answered),
        "asa_seconds": None if asa is None else asa / 1000,
        "aht_seconds": None if aht is None else aht / 1000,
        "csat": _ratio(c.get("csat_satisfied", 0), c.get("csat_responses", 0)),
        "nps": None if nps is None else 100 * nps,
        "reopen_rate": _ratio(c.get("reopened", 0), c.get("solved", 0)),
        "one_touch_rate": _ratio(c.get("one_touch", 0), c.get("solved", 0)),
    }


def lower_quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]
