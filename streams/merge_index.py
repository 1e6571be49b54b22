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
        self.generation: Any = None

    def rebuild(self, data: Mapping[str, Entry], generation: Any) -> None:
        self._rolling.clear()
        self._waiting.clear()
        self._final.clear()
        self._aggs.clear()
        for key, entry in data.items():
            self.put(key, entry)
        self.generation = generation

    def put(self, key: str, entry: Entry) -> None:
        self._aggs.pop(key, None)
        parts = entry["parts"].values()
        if entry["kind"] == "live":
            if any(p["waiting"] for p in parts):
                self._waiting.add(key)
            else:
                self._waiting.discard(key)
            return
        k = entry["key"]
        if k[0] == self._rolling_size_s and k[2] == QUEUE:
            self._rolling.setdefault((k[3], k[4]), set()).add(key)
        if all(p["final"] for p in parts):
            self._final.add(key)
        else:
            self._final.discard(key)

    def delete(self, key: str, entry: Entry | None) -> None:
        self._aggs.pop(key, None)
        self._waiting.discard(key)
        self._final.discard(key)
        if entry is not None and entry["kind"] == "window":
            k = entry["key"]
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

    def rolling(self, data: Mapping[str, Entry], queue: str, channel: str, since_ms: int) -> Iterator[tuple[str, Entry]]:
        """The queue's 1-minute windows that end after ``since_ms``."""
        for key in self._rolling.get((queue, channel), ()):
            entry = data.get(key)
            if entry is not None and entry["end"] > since_ms:
                yield key, entry
