"""Stage 3: merge the partition-local partials into the published records.

- window partials -> one ``kpi.windows`` (queue) or ``kpi.agents`` (agent) record per window;
- live partials -> one ``kpi.queue-state`` record per queue x channel, with the
  rolling last-15-minutes KPIs summed from the queue's 1-minute windows;
- clock partials -> each source's event time on each merge partition, which says
  when a final window may be forgotten (ccpulse/core/merge_clock.py).

Partials are full snapshots, so merging is idempotent: the newest snapshot per
source partition replaces the older one, and a re-delivered or replayed
snapshot (lower or equal version) changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ccpulse.core.kpis import QUEUE, WindowAgg
from ccpulse.core.merge_clock import MergeClock, expected_sources
from schemas.records import queue_state_record, window_record_key
from streams.context import Pipeline
from streams.guard import stage_guard
from streams.merge_index import MergeIndex
from streams.merged import entry_key, live_key, live_queue, merged_record
from streams.outbox import Outbox

ROLLING_WINDOW_MS = 15 * 60 * 1000
ROLLING_SIZE_S = 60
# A final merged window is kept this long (event time) after its end, so a
# straggling partial is still merged and the rolling view still sees it.
FINAL_RETENTION_MS = 20 * 60 * 1000
# Open agent windows (>= 15 min, thousands of agents) are re-published at most this
# often; their final record goes out at once. Queue windows and queue state go out
# with the batch that changed them, without waiting for a timer.
AGENT_PUBLISH_SECONDS = 10.0


class ClockSender:
    """A source stage's side of the merge clock: its watermark to every merge partition, when it moved."""

    def __init__(self, outbox: Outbox, topic: Any, partitions: int) -> None:
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


def register(pipe: Pipeline) -> None:
    app = pipe.app
    merged = pipe.tables["merged"]
    topics = {QUEUE: pipe.topics["kpi_windows"], "a": pipe.topics["kpi_agents"]}
    state_topic = pipe.topics["kpi_queue_state"]
    outbox = pipe.outbox
    put, delete = outbox.put, outbox.delete
    agent_published: dict[str, float] = {}  # agent window key -> when it was last published
    as_of = [0]  # newest event-time watermark reported by any partition
    w = pipe.settings.windows
    index = MergeIndex(ROLLING_SIZE_S)
    guard = stage_guard(pipe)
    clock = MergeClock(expected_sources(pipe.settings.kafka.partitions), int(w.fcr_horizon_seconds * 1000),
                       int(w.allowed_lateness_seconds * 1000), FINAL_RETENTION_MS)

    @app.agent(pipe.topics["partials"], name="merge")
    async def merge(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            touched: dict[str, tuple[int, dict[str, Any]]] = {}
            for event in batch:
                with guard.record("merge", event.message):
                    partial = event.value
                    as_of[0] = max(as_of[0], partial.get("watermark", 0))
                    kind = partial.get("kind")
                    if kind == "clock":
                        clock.observe(event.message.partition, partial["source"], partial["watermark"])
                        continue
                    key, base = entry_key(partial)
                    entry = touched[key][1] if key in touched else merged.data.get(key)
                    if entry is None:
                        if kind == "window" and clock.done_with(event.message.partition, partial["end"]):
                            # Merged, final and forgotten already: a source re-sending after a crash.
                            pipe.metrics.merge_redelivered.inc()
                            continue
                        entry = {**base, "parts": {}, "partition": event.message.partition}
                    source = str(partial["partition"])
                    current = entry["parts"].get(source)
                    if current is not None and current["version"] > partial["version"]:
                        continue
                    entry["parts"][source] = {k: v for k, v in partial.items()
                                              if k not in ("key", "kind", "partition", "end")}
                    touched[key] = (event.message.partition, entry)
            # Each key once per batch: one changelog record however many partials it got.
            for key, (partition, entry) in touched.items():
                put(merged, partition, key, entry)
                index.put(key, entry)
                pipe.merged_dirty.add(key)
            # Published with the batch: a second timer in series after the pipeline's
            # checkpoint would add up to publish_interval_seconds to every record's latency.
            publish(waiting_too=False)
            await outbox.flush()

    @app.timer(pipe.settings.windows.publish_interval_seconds, name="publish-merged")
    async def publish_merged() -> None:
        # What a batch cannot trigger: owed agent windows, the growing wait of queues
        # with contacts waiting, a rebuild after a rebalance, forgetting final windows.
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        publish(waiting_too=True)
        expire()
        await outbox.flush()

    def publish(waiting_too: bool) -> None:
        if index.generation != app.consumer_generation_id:
            # Recovery after a restart or a rebalance rewrote the table behind the index,
            # and the previous owner of a partition may have written a change to it
            # without publishing it (a crash, or losing the partition first): publish
            # every entry again (idempotent: same record, same version).
            index.rebuild(merged.data, app.consumer_generation_id)
            pipe.merged_dirty.update(merged.data.keys())
        now_ms = int(time.time() * 1000)
        dirty, pipe.merged_dirty = pipe.merged_dirty, set()
        live_keys = set()
        now = time.monotonic()
        for key in sorted(dirty):
            entry = merged.data.get(key)
            if entry is None:
                continue
            if entry["kind"] == "live":
                live_keys.add(key)
                continue
            if entry["key"][2] != QUEUE:
                final = all(p["final"] for p in entry["parts"].values())
                if not final and now - agent_published.get(key, -AGENT_PUBLISH_SECONDS) < AGENT_PUBLISH_SECONDS:
                    pipe.merged_dirty.add(key)  # still owed: published on a later tick
                    continue
                if final:
                    agent_published.pop(key, None)
                else:
                    agent_published[key] = now
            record = merged_record(entry, pipe, now_ms, index.agg(key, entry))
            outbox.send(topics[entry["key"][2]], window_record_key(tuple(entry["key"])).encode(), record)
            if entry["key"][2] == QUEUE and entry["key"][0] == ROLLING_SIZE_S:
                live_keys.add(live_key(entry["key"][3], entry["key"][4]))
        # Queue state: every queue with contacts waiting is refreshed each tick (its
        # longest wait grows with time), the others when something changed.
        if waiting_too:
            live_keys |= index.waiting()
        for key in sorted(live_keys):
            record = queue_state(key, now_ms)
            if record is not None:
                outbox.send(state_topic, f"{record['queue']}|{record['channel']}".encode(), record)

    def queue_state(key: str, now_ms: int) -> dict[str, Any] | None:
        queue, channel = live_queue(key)
        entry = merged.data.get(key)
        parts = entry["parts"].values() if entry else []
        oldest = [p["oldest_entered"] for p in parts if p["oldest_entered"] is not None]
        agents = set().union(*(p["agents"] for p in parts)) if parts else set()
        last15 = WindowAgg()
        for other_key, other in index.rolling(merged.data, queue, channel, as_of[0] - ROLLING_WINDOW_MS):
            last15.merge(index.agg(other_key, other))
        return queue_state_record(
            queue, channel, as_of[0], sum(p["waiting"] for p in parts),
            min(oldest) if oldest else None, len(agents), sum(p["open_tickets"] for p in parts),
            last15, pipe.settings.thresholds_for(queue, channel), now_ms)

    def expire() -> None:
        for key in index.final():
            entry = merged.data.get(key)
            if entry is None:
                index.delete(key, None)
            # A key changed since this tick began still owes its (final) record.
            elif key not in pipe.merged_dirty and clock.done_with(entry["partition"], entry["end"]):
                delete(merged, entry["partition"], key)
                index.delete(key, entry)
