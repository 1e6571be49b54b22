"""What the merge stage's once-a-second tick looks up, kept without scanning the table.

The merged-windows table holds every open and recently final window of every
queue and agent: thousands of entries. The tick used to scan all of them three
times a second (queues with contacts waiting, the rolling 15-minute view, expiry)
and to rebuild each window's merged counters from its parts for the rolling sum.
A profile of one worker put that tick level with the whole lifecycle stage.

``MergeIndex`` follows every write the merge agent makes. Faust's recovery
changes the table behind its back (a restart, a rebalance), so the owner
rebuilds it whenever the consumer generation changes.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from ccpulse.core.kpis import QUEUE, WindowAgg
from streams.merged import Entry, merged_agg


class MergeIndex:
    def __init__(self, rolling_size_s: int) -> None:
        self._rolling_size_s = rolling_size_s
        self._rolling: dict[tuple[str, str], set[str]] = {}  # queue x channel -> its 1-minute windows
        self._waiting: set[str] = set()                       # live keys with contacts waiting
        self._final: set[str] = set()                         # windows whose every part is final
        self._aggs: dict[str, WindowAgg] = {}
        # queue x channel -> (its final 1-minute windows summed, that sum): every queue state
        # sums up to 15 windows, of which only the newest one or two still change.
        self._final_sums: dict[tuple[str, str], tuple[frozenset[str], WindowAgg]] = {}
        self.generation: Any = None

    def rebuild(self, data: Mapping[str, Entry], generation: Any) -> None:
        self._rolling.clear()
        self._waiting.clear()
        self._final.clear()
        self._aggs.clear()
        self._final_sums.clear()
        for key, entry in data.items():
            self.put(key, entry)
        self.generation = generation

    def put(self, key: str, entry: Entry) -> None:
        self._aggs.pop(key, None)
        parts = entry["parts"].values()
        if entry["kind"] == "live":
            if any(p.get("waiting") for p in parts):  # the agent stage's parts have no waiting
                self._waiting.add(key)
            else:
                self._waiting.discard(key)
            return
        k = entry["key"]
        final = all(p["final"] for p in parts)
        if k[0] == self._rolling_size_s and k[2] == QUEUE:
            self._rolling.setdefault((k[3], k[4]), set()).add(key)
            if final or key in self._final:  # the sum of the final windows may have changed
                self._final_sums.pop((k[3], k[4]), None)
        if final:
            self._final.add(key)
        else:
            self._final.discard(key)

    def delete(self, key: str, entry: Entry | None) -> None:
        self._aggs.pop(key, None)
        self._waiting.discard(key)
        self._final.discard(key)
        if entry is not None and entry["kind"] == "window":
            k = entry["key"]
            self._final_sums.pop((k[3], k[4]), None)
            keys = self._rolling.get((k[3], k[4]))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._rolling[(k[3], k[4])]

    def agg(self, key: str, entry: Entry) -> WindowAgg:
        """The window's counters merged over its parts; computed once per change."""
        agg = self._aggs.get(key)
        if agg is None:
            agg = self._aggs[key] = merged_agg(entry)
        return agg

    def waiting(self) -> set[str]:
        return set(self._waiting)

    def final(self) -> list[str]:
        return list(self._final)

    def rolling_agg(self, data: Mapping[str, Entry], queue: str, channel: str, since_ms: int) -> WindowAgg:
        """The counters of the queue's 1-minute windows that end after ``since_ms``, merged
        (a new object: the caller may change it)."""
        final: list[str] = []
        total = WindowAgg()
        for key, entry in self.rolling(data, queue, channel, since_ms):
            if key in self._final:
                final.append(key)
            else:
                total.merge(self.agg(key, entry))
        members = frozenset(final)
        cached = self._final_sums.get((queue, channel))
        if cached is None or cached[0] != members:
            summed = WindowAgg()
            for key in members:
                summed.merge(self.agg(key, data[key]))
            cached = self._final_sums[(queue, channel)] = (members, summed)
        total.merge(cached[1])  # counters add up and the kept maxima are the top of the union: any order
        return total

    def rolling(self, data: Mapping[str, Entry], queue: str, channel: str, since_ms: int) -> Iterator[tuple[str, Entry]]:
        """The queue's 1-minute windows that end after ``since_ms``."""
        for key in self._rolling.get((queue, channel), ()):
            entry = data.get(key)
            if entry is not None and entry["end"] > since_ms:
                yield key, entry
