"""The KPI engine of one input partition: pure state, no I/O.

Durable state is only (a) the interactions (their steps) and (b) one small ``PartitionRecord`` (event-time watermark, how far windows are
final, running totals of final windows). Open window aggregates and the live
queue state are *derived*: ``rebuild`` recomputes them from the interactions, so
after a crash or a rebalance they are exactly what the interactions say,
whatever changelog message was lost in between.

Incremental: an interaction keeps the fold of its steps (ccpulse/core/lifecycle.py). A
step that comes in order is folded onto it and changes the windows by what it changed:
the one segment still open (waiting or served), what the step created (a segment, a
response, a solve, a reopen, a rating) and where a complaint counts, so its cost does
not grow with the interaction. A step that comes out of order re-derives the
interaction before and after it and applies the difference of their facts; both give
what folding the sorted steps from the start gives.

Event time: every input partition (a *source*) reports the newest ``occurred_at``
it delivered, and the watermark is the minimum over the active sources (as in
Kafka Streams and Flink): a source that lags behind, e.g. after a restart, holds
event time back instead of having its events refused as late, so what is late
does not depend on how fast each partition happens to be read. A window is final
once ``end + allowed_lateness <= watermark``; ``close`` moves it
out of memory into the totals. A fact for a final window is late: counted, never
mixed in.

Reconciliation (METRICS.md): ``waiting_at_start`` of a window is every queue
entry before it minus every exit before it, i.e. the final totals' backlog plus
the earlier open windows'; ``waiting_at_end = waiting_at_start + offered - exits``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from ccpulse.core.kpis import (AGENT_MIN_WINDOW_S, PLAIN_COUNTERS, QUEUE, Item, WindowAgg, WindowKey, complaint_items,
                               created_items, interaction_facts, segment_items, windowed)
from ccpulse.core.lifecycle import DONE, SERVING, WAITING, Derivation, Fold, Interaction, Segment, Step, is_ticket
from ccpulse.core.params import DEFAULT_MAX_STEPS_PER_INTERACTION, Thresholds
from ccpulse.core.watermark import low_watermark
from ccpulse.core.windowing import Windowing


@dataclass(slots=True)
class PartitionRecord:
    """The per-partition scalars, persisted as one table value (one atomic write)."""

    watermark: int = 0
    final_through: int = 0  # every window with end + lateness <= this is final and published
    last_offset: int = -1
    # source ("topic/partition" of the input) -> [newest occurred_at it delivered, idle]
    sources: dict[str, list] = field(default_factory=dict)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # "queue|channel" -> counts
    # "size|queue|channel" -> entries minus exits of all final windows of that size
    backlog: dict[str, int] = field(default_factory=dict)
    late_events: int = 0
    duplicates: int = 0
    expired: int = 0
    expired_orphans: int = 0
    expired_unfinished: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "PartitionRecord":
        return cls(**{k: doc[k] for k in cls.__slots__ if k in doc})


@dataclass(frozen=True, slots=True)
class Snapshot:
    key: WindowKey
    agg: WindowAgg
    final: bool
    version: int
    waiting_at_start: int = 0
    waiting_at_end: int = 0


class Outcome(NamedTuple):
    """What ``apply`` did with a step (immutable; a tuple, built on every step)."""

    duplicate: bool = False
    late: bool = False
    fold: Fold | None = None  # where the interaction stands after the step
    late_window: WindowKey | None = None  # a final window the event would have changed
    too_long: bool = False  # refused: the interaction already holds max_steps steps


@dataclass(slots=True)
class LiveQueue:
    """Live state of one queue x channel (not windowed)."""

    waiting: Counter = field(default_factory=Counter)  # entered_ms -> contacts still waiting
    busy: Counter = field(default_factory=Counter)  # agent -> contacts it is handling
    open_tickets: int = 0

    def is_empty(self) -> bool:
        return not self.waiting and not self.busy and not self.open_tickets


def live_contribution(channel: str, fold: Fold) -> list[tuple[str, str, str, Any]]:
    """What an interaction adds to the live state now: (queue, channel, kind, value)."""
    out: list[tuple[str, str, str, Any]] = []
    seg = fold.last
    if seg is not None:
        # Only the last segment can still be waiting or being served.
        if fold.phase == WAITING:
            out.append((seg.queue, channel, "waiting", seg.entered))
        elif fold.phase == SERVING and seg.agent and not is_ticket(channel):
            out.append((seg.queue, channel, "busy", seg.agent))
        if fold.ticket_open:
            out.append((seg.queue, channel, "open", 1))
    return out


def _shape(seg: Segment | None) -> tuple[Any, ...] | None:
    """What a step can change of the open segment: equal shapes derive equal facts."""
    if seg is None:
        return None
    # An open hold derives nothing until it ends (it is then one more of ``holds``).
    return (seg.exit, seg.left, seg.agent, len(seg.transfer_times), seg.ended, seg.wrapup_ms, len(seg.holds))


class PartitionEngine:
    def __init__(self, partition: int, windowing: Windowing, lateness_s: float,
                 thresholds: Callable[[str, str], Thresholds], horizon_s: float,
                 record: PartitionRecord | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS_PER_INTERACTION,
                 expected_sources: frozenset[str] = frozenset()) -> None:
        self.partition = partition
        # Every input partition of the deployment (watermark.input_sources): event time
        # waits until each has reported. Empty: the sources reported so far (one engine
        # over its own input, as the tests of the core drive it).
        self.expected_sources = expected_sources
        # Steps kept per interaction: bounds its state, its changelog record and the
        # work of re-deriving it on every step (see LimitSettings in ccpulse/config.py).
        self.max_steps = max_steps
        self.windowing = windowing
        self.sizes = windowing.sizes
        self.lateness_ms = int(lateness_s * 1000)
        self.thresholds = thresholds
        self.horizon_ms = int(horizon_s * 1000)
        self.record = record or PartitionRecord()
        self.windows: dict[WindowKey, WindowAgg] = {}
        self.dirty: set[WindowKey] = set()
        self.live: dict[tuple[str, str], LiveQueue] = {}
        self.live_dirty: set[tuple[str, str]] = set()
        self._closes: dict[tuple[int, int], int] = {}  # (size, start) -> end + lateness
        # granule of ts -> ((size, start, closes), ...) of its windows, agents' windows apart:
        # computed once for all the moments of a granule (see Windowing.granule_ms).
        self.granule_ms = windowing.granule_ms
        # The newest event time applied here: how far the input has been read, which the
        # watermark (clocks, the slowest source) only reaches a round trip later.
        self.frontier = 0
        self._places: dict[int, tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]] = {}

    # -- state ----------------------------------------------------------------

    def closes_at(self, key_or_fact: tuple) -> int:
        size, start = key_or_fact[0], key_or_fact[1]
        closes = self._closes.get((size, start))
        if closes is None:
            if len(self._closes) > 4096:  # bounded: replays move through many windows
                self._closes.clear()
            closes = self._closes[(size, start)] = self.windowing.end(size, start) + self.lateness_ms
        return closes

    def is_final(self, fact: tuple) -> bool:
        return self.closes_at(fact) <= self.record.final_through

    def rebuild(self, interactions: Iterable[Interaction]) -> None:
        """Derive the open windows and live state from the interactions (after recovery or assignment)."""
        self.windows.clear()
        self.live.clear()
        for inter in interactions:
            for fact, n in self.facts(inter).items():
                if not self.is_final(fact):
                    self._apply_fact(fact, n)
            fold = inter.fold()
            self.frontier = max(self.frontier, fold.last_ts)
            self._update_live([], live_contribution(inter.channel, fold))
        self.dirty = set(self.windows)
        self.live_dirty = set(self.live)

    def facts(self, inter: Interaction) -> Counter:
        """Every fact the interaction's steps derive (counted, or refused as late)."""
        return interaction_facts(inter.derive(), inter.channel, self.thresholds, self.windowing)

    # -- events ---------------------------------------------------------------

    def apply(self, inter: Interaction, step: Step, offset: int, source: str = "",
              moves_time: bool = True) -> Outcome:
        self.record.last_offset = max(self.record.last_offset, offset)
        if inter.has(step):
            self.record.duplicates += 1
            return Outcome(duplicate=True)
        fold = inter.fold()
        if fold.count >= self.max_steps:
            return Outcome(too_long=True)
        saved = inter.save()
        live_before = live_contribution(inter.channel, fold)
        try:
            if self._in_order(inter, fold, step):
                delta = self._fold_in(inter, fold, step)
            else:
                delta, fold = self._refold_in(inter, step)
        except Exception:
            # Nothing else has changed yet. Kept, a step that cannot be derived would
            # break every later step of its interaction; the stage dead-letters it.
            inter.restore(saved)
            raise
        # Event time moves here only when the caller lets it (else by observe(): the
        # pipeline's clocks). A step no newer than its active source's newest changes
        # nothing of event time: the watermark already covers what observe would compute.
        seen = self.record.sources.get(source) if moves_time else None
        if moves_time and (seen is None or seen[1] or step.ts > seen[0]):
            self.observe({source: [step.ts, False]})
        if step.ts > self.frontier:
            self.frontier = step.ts
        late: WindowKey | None = None
        final_through = self.record.final_through
        # A change to a final window is refused (the window stays as published) but the
        # step is kept: its facts are derived from the steps, so a later step of the
        # interaction does not find the same difference again (and is not late for it).
        # Retractions first, as a window's kept maxima need.
        if type(delta) is tuple:  # only additions, not yet windowed (see _fold_in)
            late = self._place(delta, inter.channel, final_through)
        else:
            for fact, n in sorted(delta.items(), key=lambda item: item[1] > 0):
                if self.closes_at(fact) <= final_through:
                    late = fact[:5]
                else:
                    self._apply_fact(fact, n)
        self._update_live(live_before, live_contribution(inter.channel, fold))
        if late:
            self.record.late_events += 1
        return Outcome(late=late is not None, fold=fold, late_window=late)

    def _in_order(self, inter: Interaction, fold: Fold, step: Step) -> bool:
        """Whether ``step`` takes the incremental path (it sorts after every step held)."""
        return inter.follows(fold, step)

    def _fold_in(self, inter: Interaction, fold: Fold, step: Step) -> Counter | tuple[tuple[Item, int], ...]:
        """Fold an in-order step onto ``fold`` (changed in place) and keep it; returns the
        change of the interaction's facts: only what the step can touch is looked at.

        Nearly every in-order step only adds items (an answer, an end, a message). Then no
        two of its facts can cancel, so the items are returned as they are, counted, and
        ``_place`` puts them in windows without building the facts; a step that also takes
        items back gets its facts netted as the full path nets them."""
        channel = inter.channel
        current = fold.last if fold.phase != DONE else None
        shape = _shape(current)
        current_first = fold.segments == 1
        complaint = fold.resolved_complaint()
        before: list[Item] = []
        if current is not None:
            before = segment_items(current, current_first, channel, self.thresholds(current.queue, channel))
        segments_before = fold.segments
        created = Derivation([], 0, False)
        fold.step(step, created)
        after = created_items(created)
        if _shape(current) != shape:  # the open segment was changed in place by the step
            after += segment_items(current, current_first, channel, self.thresholds(current.queue, channel))
        else:
            before = []
        if fold.resolved_complaint() != complaint:
            before += complaint_items(complaint)
            after += complaint_items(fold.resolved_complaint())
        for index, seg in enumerate(created.segments, segments_before):
            after += segment_items(seg, index == 0, channel, self.thresholds(seg.queue, channel))
        # What the step left as it was cancels out before it is placed in windows.
        items = Counter(after)
        inter.append(step, fold)
        if before:
            items.subtract(before)
            if min(items.values()) < 0:
                delta = windowed(items, channel, self.windowing)
                return Counter({fact: n for fact, n in delta.items() if n})
        return tuple(item for item in items.items() if item[1])

    def _placements(self, ts: int) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
        """(size, start, closes) of every window of ``ts``: for queues, and for agents."""
        granule = ts // self.granule_ms
        places = self._places.get(granule)
        if places is None:
            if len(self._places) > 4096:  # bounded: replays move through many windows
                self._places.clear()
            every = tuple((size, start, self.closes_at((size, start))) for size, start in self.windowing.starts(ts))
            places = self._places[granule] = (every, tuple(p for p in every if p[0] >= AGENT_MIN_WINDOW_S))
        return places

    def _place(self, items: tuple[tuple[Item, int], ...], channel: str, final_through: int) -> WindowKey | None:
        """Add counted items (n > 0) to their windows, what ``windowed`` then ``_apply_fact``
        do for them; returns the last final window one of them fell in, as they do.

        The items of one step mostly share a name and a time (an answer: its count, wait,
        maximum, sketch and buckets), so their windows are looked up once per group."""
        windows, dirty = self.windows, self.dirty
        late: WindowKey | None = None
        groups: dict[tuple[str, str, int], tuple[list[WindowAgg], WindowKey | None]] = {}
        for (scope, name, (ts, field_name, value)), n in items:
            group = groups.get((scope, name, ts))
            if group is None:
                every, agents = self._placements(ts)
                aggs: list[WindowAgg] = []
                final: WindowKey | None = None
                for size, start, closes in (every if scope == QUEUE else agents):
                    key = (size, start, scope, name, channel)
                    if closes <= final_through:
                        final = key
                        continue
                    agg = windows.get(key)
                    if agg is None:
                        agg = windows[key] = WindowAgg()
                    dirty.add(key)
                    aggs.append(agg)
                group = groups[(scope, name, ts)] = (aggs, final)
            aggs, final = group
            if final is not None:
                late = final
            if field_name in PLAIN_COUNTERS:  # WindowAgg.add, inlined for the common counter
                add = n * value
                for agg in aggs:
                    counts = agg.counts
                    counts[field_name] = counts.get(field_name, 0) + add
            else:
                for agg in aggs:
                    agg.add(field_name, value, n)
        return late

    def _refold_in(self, inter: Interaction, step: Step) -> tuple[Counter, Fold]:
        """Insert an out-of-order step: the facts of every step after it, before and after."""
        old = self.facts(inter)
        derivation, fold = inter.insert(step)
        delta = interaction_facts(derivation, inter.channel, self.thresholds, self.windowing)
        delta.subtract(old)
        return Counter({fact: n for fact, n in delta.items() if n}), fold

    def _apply_fact(self, fact: tuple, n: int) -> None:
        size, start, scope, name, channel, field_name, value = fact
        key = (size, start, scope, name, channel)
        agg = self.windows.get(key)
        if agg is None:
            agg = self.windows[key] = WindowAgg()
        sign = 1 if n > 0 else -1
        for _ in range(abs(n)):
            agg.apply(field_name, value, sign)
        self.dirty.add(key)

    def _update_live(self, old: list[tuple[str, str, str, Any]], new: list[tuple[str, str, str, Any]]) -> None:
        if new == old:
            return
        for items, sign in ((old, -1), (new, 1)):
            for queue, channel, kind, value in items:
                live = self.live.setdefault((queue, channel), LiveQueue())
                if kind == "waiting":
                    live.waiting[value] += sign
                    if live.waiting[value] <= 0:
                        del live.waiting[value]
                elif kind == "busy":
                    live.busy[value] += sign
                    if live.busy[value] <= 0:
                        del live.busy[value]
                else:
                    live.open_tickets += sign
                self.live_dirty.add((queue, channel))

    def forget(self, inter: Interaction) -> None:
        """Drop an expired interaction's live contribution (its facts stay counted)."""
        self._update_live(live_contribution(inter.channel, inter.fold()), [])

    # -- time -----------------------------------------------------------------

    def observe(self, sources: dict[str, list]) -> None:
        """[newest event time, idle] per source (see ccpulse/core/watermark.py)."""
        known = self.record.sources
        for source, (ts, idle) in sources.items():
            before = known.get(source)
            known[source] = [max(ts, before[0]) if before else ts, idle]
        expected = self.expected_sources
        if expected:
            if not expected <= known.keys():
                return  # one not heard of yet may still be behind every other: it holds event time
            values = [known[source] for source in expected]  # a stale name (another config) is not waited for
        else:
            values = list(known.values())
        if values:
            self.record.watermark = max(self.record.watermark, low_watermark(values))

    def input_idle(self) -> bool:
        """Every source event time waits for reported idle: nothing more is coming from any.
        Only then may a quiet stream's event time follow the wall clock: a source still
        active (records left to read, a slow worker) may yet send events for these windows."""
        known = self.record.sources
        names = self.expected_sources or known.keys()
        return bool(names) and all(known[source][1] if source in known else False for source in names)

    def advance(self, watermark: int) -> None:
        """Let event time move without events (ticks from the input, or a quiet stream)."""
        self.record.watermark = max(self.record.watermark, watermark)

    def close(self) -> list[Snapshot]:
        """Finalize every window whose lateness has passed; returns their final snapshots."""
        wm = self.record.watermark
        closing = [k for k in self.windows if self.closes_at(k) <= wm]
        waiting = self._waiting(closing)
        finals: list[Snapshot] = []
        for key in sorted(closing, key=lambda k: k[1]):
            start_waiting, end_waiting = waiting.get(key, (0, 0))
            agg = self.windows.pop(key)
            finals.append(Snapshot(key, agg, True, self.version(True), start_waiting, end_waiting))
            self.dirty.discard(key)
            size, _start, scope, name, channel = key
            if scope == QUEUE:
                backlog_key = f"{size}|{name}|{channel}"
                self.record.backlog[backlog_key] = (self.record.backlog.get(backlog_key, 0)
                                                    + agg.counts.get("offered", 0) - agg.exits())
                if size == self.sizes[0]:
                    totals = self.record.totals.setdefault(f"{name}|{channel}", {})
                    for counter, value in agg.counts.items():
                        totals[counter] = totals.get(counter, 0) + value
        self.record.final_through = max(self.record.final_through, wm)
        return finals

    def take_dirty(self, agents: Callable[[str], bool] | None = None) -> list[Snapshot]:
        """Snapshots of the windows changed since the last call. ``agents`` takes only the
        changed agent windows of the agents it says yes to, and leaves the others for a
        later call: one answer changes three of an agent's windows, and with thousands of
        agents their partials outnumbered the events. With ``agents``, it also leaves the
        queue windows the events applied already put past their lateness (``frontier``):
        they close as soon as the watermark gets there, a clock's round trip later, so
        their open snapshot would only precede the final one. Catching up (a replay at
        full speed) that was nearly every window, each sent twice."""
        if agents is None:
            keys = set(self.dirty)
            self.dirty.clear()
        else:
            keys = {k for k in self.dirty if k[2] == QUEUE or agents(k[3])}
            self.dirty.difference_update(keys)
        # A change in one window moves waiting_at_start of every later window of its
        # queue (queue windows only: agent windows have no waiting).
        earliest: dict[tuple, int] = {}
        for size, start, scope, name, channel in keys:
            if scope == QUEUE:
                group = (size, scope, name, channel)
                earliest[group] = min(start, earliest.get(group, start))
        if earliest:
            for key in self.windows:
                group = (key[0], key[2], key[3], key[4])
                if group in earliest and key[1] > earliest[group]:
                    keys.add(key)
        keys = {k for k in keys if k in self.windows}
        if agents is not None:
            passed = {k for k in keys if self.closes_at(k) <= self.frontier}
            keys -= passed
            self.dirty |= passed
        waiting = self._waiting(keys)
        snaps = [Snapshot(k, self.windows[k], False, self.version(False), *waiting.get(k, (0, 0)))
                 for k in sorted(keys)]
        for snap in snaps:
            # A window emptied by retractions is published once (so readers see the
            # correction) and then forgotten; it holds nothing to finalize.
            if snap.agg.is_empty():
                del self.windows[snap.key]
        return snaps

    def _waiting(self, keys: Iterable[WindowKey]) -> dict[WindowKey, tuple[int, int]]:
        """(waiting_at_start, waiting_at_end) of queue windows, by prefix sums per queue and size."""
        groups = {(k[0], k[2], k[3], k[4]) for k in keys if k[2] == QUEUE}
        if not groups:
            return {}
        members: dict[tuple, list[WindowKey]] = {g: [] for g in groups}
        for key in self.windows:
            group = (key[0], key[2], key[3], key[4])
            if group in members:
                members[group].append(key)
        out: dict[WindowKey, tuple[int, int]] = {}
        for (size, _scope, name, channel), group_keys in members.items():
            running = self.record.backlog.get(f"{size}|{name}|{channel}", 0)
            for key in sorted(group_keys, key=lambda k: k[1]):
                agg = self.windows[key]
                after = running + agg.counts.get("offered", 0) - agg.exits()
                out[key] = (running, after)
                running = after
        return out

    def take_live(self) -> list[tuple[tuple[str, str], LiveQueue]]:
        out = [(key, self.live.get(key, LiveQueue())) for key in sorted(self.live_dirty)]
        self.live_dirty.clear()
        for key, live in out:
            if live.is_empty():
                self.live.pop(key, None)
        return out

    def version(self, final: bool) -> int:
        # Content at a given input offset is deterministic, so the offset orders
        # snapshots across restarts; the final one outranks any open one.
        return (self.record.last_offset + 1) * 2 + (1 if final else 0)

    def expirable(self, inter: Interaction) -> bool:
        """An interaction may be forgotten once all its windows are final and it went quiet."""
        fold = inter.fold()
        idle = self.record.watermark - fold.last_ts
        if idle < (self.lateness_ms if fold.ended else self.horizon_ms):
            return False
        # Its offer counts in every window of its first queue entry: while one of them is
        # open, so is one of its facts (the common answer, without deriving anything).
        if fold.segments and not all(self.is_final(w) for w in self.windowing.starts(fold.first_entered)):
            return False
        # Every fact is at the time of one of its steps: all final once the last step's windows are.
        if all(self.is_final(w) for w in self.windowing.starts(fold.last_ts)):
            return True
        return all(self.is_final(fact) for fact in self.facts(inter))

    def count_expired(self, inter: Interaction) -> None:
        fold = inter.fold()
        self.record.expired += 1
        if not fold.segments:
            self.record.expired_orphans += 1
        elif not fold.ended:
            self.record.expired_unfinished += 1
        self.forget(inter)

    def running_totals(self) -> Iterator[tuple[str, str, dict[str, int]]]:
        """Final totals plus the open queue windows of the smallest size: cumulative counters."""
        merged: dict[str, dict[str, int]] = {k: dict(v) for k, v in self.record.totals.items()}
        for (size, _start, scope, name, channel), agg in self.windows.items():
            if size != self.sizes[0] or scope != QUEUE:
                continue
            into = merged.setdefault(f"{name}|{channel}", {})
            for counter, value in agg.counts.items():
                into[counter] = into.get(counter, 0) + value
        for key, counts in merged.items():
            # Exact: the decoder refuses '|' in queue and channel names (README, "Names").
            queue, channel = key.split("|", 1)
            yield queue, channel, counts
