"""The merge stage: the partition-local partials merged into the published records.

- window partials -> one ``kpi.windows`` (queue) or ``kpi.agents`` (agent) record per window;
- live partials -> one ``kpi.queue-state`` record per queue x channel, with the
  rolling last-15-minutes KPIs summed from the queue's 1-minute windows; the agent
  stage's ``agents_live`` partials (one per agent-stage partition) share the entry and
  add the live agent counts and the staff the queue needs;
- clock partials -> each source's event time on each merge partition, which says
  when a final window may be forgotten (ccpulse/core/merge_clock.py).

Partials are full snapshots, so merging is idempotent: the newest snapshot per
source partition replaces the older one, and a re-delivered or replayed
snapshot (lower or equal version) changes nothing.

``MergeStage`` holds the logic and its state; the merged table's data is a plain
mapping it reads and updates, and each call returns a ``MergeOutput``: the table
changes whose changelog must be written and the records to publish. The Faust shell
(streams/merge.py) writes them through the outbox, in that order, then flushes
before the batch is acknowledged. No Faust here: tests drive it with dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, MutableMapping, Protocol

import orjson

from ccpulse.config import Settings
from ccpulse.core.kpis import QUEUE
from ccpulse.core.merge_clock import MergeClock, expected_sources
from sinks.prometheus import PipelineMetrics
from streams.merge_index import MergeIndex
from streams.merged import (LIVE_KINDS, ROLLING_WINDOW_MS, Entry, entry_key, live_key, live_queue, merged_record,
                            queue_state, record_key)
from streams.stages.io import Consumed, Failure, TablePut
from streams.stages.partials import AGENT_WINDOW_SECONDS

STAGE = "merge"
ROLLING_SIZE_S = 60
# A final merged window is kept this long (event time) after its end, so a
# straggling partial is still merged and the rolling view still sees it.
FINAL_RETENTION_MS = 20 * 60 * 1000
# Open agent windows are re-published at most every AGENT_WINDOW_SECONDS; their final
# record goes out at once. Queue windows and queue state go out with the batch that
# changed them, without waiting for a timer.
# A batch publishes what it merged at most this often (the shell flushes the rest on a
# timer as often): each of a window's pipeline partitions sends its partial at its own
# checkpoint, and publishing per batch sent one window up to 20 times a second, each
# record then stored, checked for SLA and scored downstream.
PUBLISH_SECONDS = 0.25
# The topics a record goes to, as the shell names them (Pipeline.topics).
KPI_WINDOWS, KPI_AGENTS, KPI_QUEUE_STATE = "kpi_windows", "kpi_agents", "kpi_queue_state"
_WINDOW_TOPIC = {QUEUE: KPI_WINDOWS, "a": KPI_AGENTS}
# Fields of a window or live partial that the entry holds once, not per part.
_ENTRY_FIELDS = ("key", "kind", "partition", "end")


class _Sender(Protocol):
    def send(self, topic: Any, key: bytes | None, value: Any, partition: int | None = None) -> None: ...


class ClockSender:
    """A source stage's side of the merge clock: its watermark to every merge partition, when it moved."""

    def __init__(self, outbox: _Sender, topic: Any, partitions: int) -> None:
        self._outbox, self._topic, self._partitions = outbox, topic, partitions
        self._sent: dict[str, int] = {}

    def send(self, source: str, watermark: int) -> None:
        """Call after the source's partials up to ``watermark`` are in the outbox."""
        if not watermark or self._sent.get(source) == watermark:
            return
        self._sent[source] = watermark
        value = orjson.dumps({"kind": "clock", "source": source, "watermark": watermark})
        for partition in range(self._partitions):
            self._outbox.send(self._topic, None, value, partition)

    def forget(self, source: str) -> None:
        self._sent.pop(source, None)


@dataclass(frozen=True, slots=True)
class TableDelete:
    partition: int
    key: str


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str  # KPI_WINDOWS, KPI_AGENTS or KPI_QUEUE_STATE
    key: bytes
    value: dict[str, Any]


@dataclass
class MergeOutput:
    """What to write, in this order, before the partials behind it are acknowledged."""

    failures: list[Failure] = field(default_factory=list)  # dead-lettered by the shell (streams/guard.py)
    puts: list[TablePut] = field(default_factory=list)  # merged table, each key once; already in the mapping
    records: list[Publish] = field(default_factory=list)
    deletes: list[TableDelete] = field(default_factory=list)  # merged table; already out of the mapping


_KINDS = ("window", *LIVE_KINDS)
_NUMBER = (int, float)


def _part(kind: str, partial: dict[str, Any]) -> dict[str, Any]:
    """The part an entry keeps of a partial, checked first: a field the publish reads that
    is missing or of the wrong type would fail every later publish of the entry (outside
    any one record) instead of this record alone."""
    part = {k: v for k, v in partial.items() if k not in _ENTRY_FIELDS}
    _need(part, "version", int)
    if kind == "window":
        _need(partial, "end", int)
        _need(part, "final", bool)
        agg = _need(part, "agg", dict)
        counts, tops = agg.get("counts"), agg.get("tops")
        if not isinstance(counts, dict) or not _numbers(counts.values()):
            raise ValueError("window partial: 'agg.counts' is not an object of numbers")
        if not (isinstance(tops, dict) and all(isinstance(v, list) and all(isinstance(x, _NUMBER) for x in v)
                                               for v in tops.values())):
            raise ValueError("window partial: 'agg.tops' is not an object of number lists")
        for name in ("waiting_at_start", "waiting_at_end"):
            if not isinstance(part.get(name, 0), int):
                raise ValueError(f"window partial: {name!r} is not an integer")
    elif kind == "agents_live":
        counts = part.get("counts")
        if not (isinstance(counts, dict) and all(type(v) is int and v >= 0 for v in counts.values())):
            raise ValueError("agents_live partial: 'counts' is not an object of agent counts (integers >= 0)")
    else:
        _need(part, "waiting", int)
        _need(part, "open_tickets", int)
        if not (isinstance(part.get("agents"), list) and all(isinstance(a, str) for a in part["agents"])):
            raise ValueError("live partial: 'agents' is not a list of strings")
        if "oldest_entered" not in part or not isinstance(part["oldest_entered"], (int, type(None))):
            raise ValueError("live partial: 'oldest_entered' is not an integer or null")
    return part


def _numbers(values: Iterable[Any]) -> bool:
    try:  # one pass in C, not a test per value: a part holds dozens of counters
        sum(values)
    except TypeError:
        return False
    return True


_WHAT = {int: "an integer", bool: "true or false", dict: "an object"}


def _need(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"partial: {name!r} is not {_WHAT[kind]}")
    return value


class MergeStage:
    def __init__(self, settings: Settings, merged: MutableMapping[str, Entry], *,
                 metrics: PipelineMetrics | None = None) -> None:
        self.settings = settings  # merged_record reads the thresholds through it
        self.merged = merged
        self.metrics = metrics
        w = settings.windows
        self.index = MergeIndex(ROLLING_SIZE_S)
        self.clock = MergeClock(expected_sources(settings.kafka.partitions), int(w.fcr_horizon_seconds * 1000),
                                int(w.allowed_lateness_seconds * 1000), FINAL_RETENTION_MS)
        self.as_of = 0  # newest event-time watermark reported by any partition
        self._dirty: set[str] = set()  # keys whose merged record must be (re-)published
        # Open agent windows published less than AGENT_WINDOW_SECONDS ago -> when, oldest
        # first (re-inserted when published again), and those of them changed since: owed.
        # Kept apart from ``_dirty`` so a batch does not sort and look at thousands of them.
        self._agent_published: dict[str, float] = {}
        self._owed: set[str] = set()
        self._published_mono = float("-inf")  # when the last publish ran (monotonic seconds)

    # -- input -----------------------------------------------------------------------

    def on_batch(self, partials: Iterable[Consumed], *, generation: Any, now_ms: int, mono: float,
                 publish: bool = True) -> MergeOutput:
        """Merge a batch of ``<app>-window-partials`` (window, live and clock partials, each
        on the merge partition it was read from) and publish every key it touched at once
        (``publish=False``: keep them for the next ``on_flush``, see PUBLISH_SECONDS).

        ``generation``: the consumer generation (a new one means recovery may have
        rewritten the table); ``now_ms``: wall clock for ``published_at``; ``mono``:
        monotonic seconds for the agent windows' throttle.
        """
        out = MergeOutput()
        touched: dict[str, tuple[int, Entry]] = {}
        for partial in partials:
            try:
                self._merge(partial.partition, partial.value, touched)
            except Exception as exc:  # one record's failure costs that record only
                out.failures.append(Failure(partial.message, exc))
        # Each key once per batch: one changelog record however many partials it got.
        for key, (partition, entry) in touched.items():
            self.merged[key] = entry
            out.puts.append(TablePut(partition, key, entry))
            self.index.put(key, entry)
            self._dirty.add(key)
        # Published with the batch: a second timer in series after the pipeline's
        # checkpoint would add up to publish_interval_seconds to every record's latency.
        if publish:
            self._publish(out, generation, now_ms, mono, waiting_too=False)
        return out

    def on_flush(self, *, generation: Any, now_ms: int, mono: float) -> MergeOutput:
        """Publish what batches merged without publishing (``on_batch(publish=False)``)."""
        out = MergeOutput()
        if self._dirty:
            self._publish(out, generation, now_ms, mono, waiting_too=False)
        return out

    def publish_due(self, mono: float) -> bool:
        """Whether a batch read now should publish at once: at most every PUBLISH_SECONDS,
        as every pipeline partition's checkpoint sends its partials of a window separately."""
        return mono - self._published_mono >= PUBLISH_SECONDS

    def _merge(self, partition: int, partial: Any, touched: dict[str, tuple[int, Entry]]) -> None:
        self.as_of = max(self.as_of, partial.get("watermark", 0))
        kind = partial.get("kind")
        if kind == "clock":
            self.clock.observe(partition, partial["source"], partial["watermark"])
            return
        if kind not in _KINDS:
            raise ValueError(f"unknown partial kind {kind!r}")
        key, base = entry_key(partial)
        entry = touched[key][1] if key in touched else self.merged.get(key)
        if entry is None:
            if kind == "window" and self.clock.done_with(partition, partial["end"]):
                # Merged, final and forgotten already: a source re-sending after a crash.
                if self.metrics is not None:
                    self.metrics.merge_redelivered.inc()
                return
            entry = {**base, "parts": {}, "partition": partition}
        source = str(partial["partition"])
        current = entry["parts"].get(source)
        if current is not None and current["version"] > partial["version"]:
            return
        entry["parts"][source] = _part(kind, partial)
        touched[key] = (partition, entry)

    # -- the publish timer -------------------------------------------------------------

    def on_tick(self, *, generation: Any, now_ms: int, mono: float) -> MergeOutput:
        """What a batch cannot trigger: owed agent windows, the growing wait of queues
        with contacts waiting, a rebuild after a rebalance, forgetting final windows."""
        out = MergeOutput()
        self._publish(out, generation, now_ms, mono, waiting_too=True)
        self._expire(out)
        return out

    # -- output ------------------------------------------------------------------------

    def _publish(self, out: MergeOutput, generation: Any, now_ms: int, mono: float, waiting_too: bool) -> None:
        if self.index.generation != generation:
            # Recovery after a restart or a rebalance rewrote the table behind the index,
            # and the previous owner of a partition may have written a change to it
            # without publishing it (a crash, or losing the partition first): publish
            # every entry again (idempotent: same record, same version).
            self.index.rebuild(self.merged, generation)
            self._dirty.update(self.merged.keys())
        self._published_mono = mono
        dirty, self._dirty = self._dirty, set()
        published = self._agent_published
        while published:
            key, when = next(iter(published.items()))
            if mono - when < AGENT_WINDOW_SECONDS:
                break
            # Its wait is over: owed, it is published now; if it changes later, at once.
            del published[key]
            if key in self._owed:
                self._owed.discard(key)
                dirty.add(key)
        live_keys = set()
        for key in sorted(dirty):
            entry = self.merged.get(key)
            if entry is None:
                continue
            if entry["kind"] == "live":
                live_keys.add(key)
                continue
            if entry["key"][2] != QUEUE:
                final = all(p["final"] for p in entry["parts"].values())
                if not final and key in published:
                    self._owed.add(key)  # published on a later tick
                    continue
                self._owed.discard(key)
                published.pop(key, None)
                if not final:
                    published[key] = mono
            record = merged_record(entry, self, now_ms, self.index.agg(key, entry))
            out.records.append(Publish(_WINDOW_TOPIC[entry["key"][2]], record_key(key).encode(), record))
            if entry["key"][2] == QUEUE and entry["key"][0] == ROLLING_SIZE_S:
                live_keys.add(live_key(entry["key"][3], entry["key"][4]))
        # Queue state: every queue with contacts waiting is refreshed each tick (its
        # longest wait grows with time), the others when something changed.
        if waiting_too:
            live_keys |= self.index.waiting()
        for key in sorted(live_keys):
            record = self._queue_state(key, now_ms)
            if record is not None:
                out.records.append(Publish(KPI_QUEUE_STATE, f"{record['queue']}|{record['channel']}".encode(),
                                           record))

    def _queue_state(self, key: str, now_ms: int) -> dict[str, Any] | None:
        queue, channel = live_queue(key)
        entry = self.merged.get(key)
        last15 = self.index.rolling_agg(self.merged, queue, channel, self.as_of - ROLLING_WINDOW_MS)
        return queue_state(self, queue, channel, entry["parts"] if entry else {}, self.as_of, last15, now_ms)

    def _expire(self, out: MergeOutput) -> None:
        for key in self.index.final():
            entry = self.merged.get(key)
            if entry is None:
                self.index.delete(key, None)
            # A key changed since this tick began still owes its (final) record.
            elif key not in self._owed and self.clock.done_with(entry["partition"], entry["end"]):
                del self.merged[key]
                out.deletes.append(TableDelete(entry["partition"], key))
                self.index.delete(key, entry)
