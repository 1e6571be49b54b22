"""The KPI engine of one input partition: pure state, no I/O.

Durable state is only (a) the interactions, each with the facts it has applied,
and (b) one small ``PartitionRecord`` (event-time watermark, how far windows are
final, running totals of final windows). Open window aggregates are *derived*:
``rebuild`` recomputes them from the interactions, so after a crash or a
rebalance they are exactly what the interactions say, whatever changelog
message was lost in between.

Event time: the watermark is the newest ``occurred_at`` seen on the partition.
A window is final once ``end + allowed_lateness <= watermark``; ``close`` moves
it out of memory into the totals. A fact for a final window is late: counted,
never mixed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ccpulse.config import Thresholds
from ccpulse.core.kpis import Fact, WindowAgg, WindowKey, interaction_facts
from ccpulse.core.lifecycle import Interaction, Step


@dataclass(slots=True)
class PartitionRecord:
    """The per-partition scalars, persisted as one table value (one atomic write)."""

    watermark: int = 0
    final_through: int = 0  # every window with end + lateness <= this is final and published
    last_offset: int = -1
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # "queue|channel" -> counts
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


@dataclass(frozen=True, slots=True)
class Outcome:
    duplicate: bool = False
    late: bool = False


class PartitionEngine:
    def __init__(self, partition: int, sizes: Iterable[int], lateness_s: float,
                 thresholds: Callable[[str, str], Thresholds], horizon_s: float,
                 record: PartitionRecord | None = None) -> None:
        self.partition = partition
        self.sizes = tuple(sizes)
        self.lateness_ms = int(lateness_s * 1000)
        self.thresholds = thresholds
        self.horizon_ms = int(horizon_s * 1000)
        self.record = record or PartitionRecord()
        self.windows: dict[WindowKey, WindowAgg] = {}
        self.dirty: set[WindowKey] = set()

    # -- state ----------------------------------------------------------------

    def _closes_at(self, key_or_fact: tuple) -> int:
        size, start = key_or_fact[0], key_or_fact[1]
        return start + size * 1000 + self.lateness_ms

    def is_final(self, fact: tuple) -> bool:
        return self._closes_at(fact) <= self.record.final_through

    def rebuild(self, interactions: Iterable[Interaction]) -> None:
        """Derive the open windows from the interactions (after recovery or assignment)."""
        self.windows.clear()
        for inter in interactions:
            for fact, n in inter.applied.items():
                if not self.is_final(fact):
                    self._apply_fact(fact, n)
        self.dirty = set(self.windows)

    # -- events ---------------------------------------------------------------

    def apply(self, inter: Interaction, step: Step, offset: int) -> Outcome:
        self.record.last_offset = max(self.record.last_offset, offset)
        if not inter.add(step):
            self.record.duplicates += 1
            return Outcome(duplicate=True)
        self.record.watermark = max(self.record.watermark, step.ts)
        derivation = inter.derive()
        new = interaction_facts(derivation.segments, inter.channel, self.thresholds, self.sizes)
        old = Counter(inter.applied)
        late = False
        # A change to a final window is refused (the window stays as published) but
        # still recorded in ``applied``: otherwise every later step of the interaction
        # would find the same difference again and be counted as late too.
        for fact, n in (old - new).items():  # retractions
            if self.is_final(fact):
                late = True  # keep it counted: the final window already published it
            else:
                self._apply_fact(fact, -n)
            old[fact] -= n
        for fact, n in (new - old).items():
            if self.is_final(fact):
                late = True
            else:
                self._apply_fact(fact, n)
            old[fact] += n
        inter.applied = {fact: n for fact, n in old.items() if n > 0}
        if late:
            self.record.late_events += 1
        return Outcome(late=late)

    def _apply_fact(self, fact: Fact | tuple, n: int) -> None:
        size, start, queue, channel, name, value = fact
        key = (size, start, queue, channel)
        agg = self.windows.get(key)
        if agg is None:
            agg = self.windows[key] = WindowAgg()
        sign = 1 if n > 0 else -1
        for _ in range(abs(n)):
            agg.apply(name, value, sign)
        self.dirty.add(key)

    # -- time -----------------------------------------------------------------

    def advance(self, watermark: int) -> None:
        """Let event time move without events (a quiet stream, driven by the wall clock)."""
        self.record.watermark = max(self.record.watermark, watermark)

    def close(self) -> list[Snapshot]:
        """Finalize every window whose lateness has passed; returns their final snapshots."""
        wm = self.record.watermark
        finals: list[Snapshot] = []
        for key in sorted(k for k in self.windows if self._closes_at(k) <= wm):
            agg = self.windows.pop(key)
            self.dirty.discard(key)
            finals.append(Snapshot(key, agg, True, self.version(final=True)))
            if key[0] == self.sizes[0]:
                totals = self.record.totals.setdefault(f"{key[2]}|{key[3]}", {})
                for name, value in agg.counts.items():
                    totals[name] = totals.get(name, 0) + value
        self.record.final_through = max(self.record.final_through, wm)
        return finals

    def take_dirty(self) -> list[Snapshot]:
        snaps = [Snapshot(k, self.windows[k], False, self.version(final=False))
                 for k in sorted(self.dirty) if k in self.windows]
        self.dirty.clear()
        return snaps

    def version(self, final: bool) -> int:
        # Content at a given input offset is deterministic, so the offset orders
        # snapshots across restarts; the final one outranks any open one.
        return (self.record.last_offset + 1) * 2 + (1 if final else 0)

    def expirable(self, inter: Interaction) -> bool:
        """An interaction may be forgotten once all its windows are final and it went quiet."""
        if any(not self.is_final(fact) for fact in inter.applied):
            return False
        idle = self.record.watermark - inter.last_ts
        derivation = inter.derive()
        if derivation.ended:
            return idle >= self.lateness_ms
        return idle >= self.horizon_ms

    def count_expired(self, inter: Interaction) -> None:
        derivation = inter.derive()
        self.record.expired += 1
        if not derivation.segments:
            self.record.expired_orphans += 1
        elif not derivation.ended:
            self.record.expired_unfinished += 1

    def running_totals(self) -> Iterator[tuple[str, str, dict[str, int]]]:
        """Final totals plus the open windows of the smallest size: cumulative counters."""
        merged: dict[str, dict[str, int]] = {k: dict(v) for k, v in self.record.totals.items()}
        for (size, _start, queue, channel), agg in self.windows.items():
            if size != self.sizes[0]:
                continue
            into = merged.setdefault(f"{queue}|{channel}", {})
            for name, value in agg.counts.items():
                into[name] = into.get(name, 0) + value
        for key, counts in merged.items():
            queue, channel = key.split("|", 1)
            yield queue, channel, counts
