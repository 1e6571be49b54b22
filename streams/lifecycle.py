"""Stage 2: per-interaction lifecycle and partition-local window partials.

Per input partition, a ``PartitionEngine`` (pure, see ccpulse/core/engine.py)
holds the open windows. Durable state is the ``interactions`` table and one
``partition-records`` value per partition; the open windows are rebuilt from
them when a partition is (re)assigned, so they always agree with what was
persisted. A timer publishes changed windows at most once per interval and the
final snapshot once the allowed lateness has passed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ccpulse.core.engine import PartitionEngine, PartitionRecord, Snapshot
from ccpulse.core.lifecycle import Interaction, Step
from ccpulse.core.windowing import Windowing
from ccpulse.log_limit import CountedLines
from schemas.records import dead_letter, interaction_rows, step_from_message, window_label
from streams.context import Pipeline
from streams.fcr import customer_hasher
from streams.guard import stage_guard
from streams.stages.partials import live_partial, window_partial
from streams.stages.validation import TOO_LONG, too_long
from streams.merge import ClockSender
from streams.ingest import WATERMARK_FIELD

EXPIRY_SCAN_SECONDS = 10.0
# The dead-letter reason of a step past limits.max_steps_per_interaction.
log = logging.getLogger(__name__)


class PartitionClock:
    """Wall-clock bookkeeping so event time still advances when a partition goes quiet."""

    def __init__(self) -> None:
        self.last_arrival = time.monotonic()
        self.watermark_at_arrival = 0

    def arrived(self, watermark: int) -> None:
        self.last_arrival = time.monotonic()
        self.watermark_at_arrival = watermark

    def idle_watermark(self, idle_close_s: float) -> int | None:
        quiet = time.monotonic() - self.last_arrival
        if quiet < idle_close_s or not self.watermark_at_arrival:
            return None
        return self.watermark_at_arrival + int(quiet * 1000)


def register(pipe: Pipeline) -> None:
    app, settings = pipe.app, pipe.settings
    w = settings.windows
    interactions = pipe.tables["interactions"]
    records = pipe.tables["partitions"]
    partials = pipe.topics["partials"]
    rows_topic = pipe.topics["interactions"]
    contacts = pipe.topics["contacts"]
    events_topic_name = pipe.topics["events"].get_topic_name()
    outbox = pipe.outbox
    put, delete = outbox.put, outbox.delete
    clocks: dict[int, PartitionClock] = {}
    windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
    last_expiry = [time.monotonic()]
    merge_clock = ClockSender(outbox, partials, settings.kafka.partitions)
    guard = stage_guard(pipe)
    # Late events are counted per partition; this line says which windows they missed.
    late_lines = CountedLines(log.warning, "late events (their window was already final; "
                              "counted in ccpulse_late_events_total, not in the window)")

    def engine_for(partition: int) -> PartitionEngine:
        engine = pipe.engines.get(partition)
        if engine is None:
            record = records.data.get(str(partition)) or PartitionRecord()
            engine = PartitionEngine(partition, windowing, w.allowed_lateness_seconds,
                                     settings.thresholds_for, w.interaction_horizon_seconds, record,
                                     settings.limits.max_steps_per_interaction)
            engine.rebuild(inter for inter in list(interactions.data.values())
                           if inter is not None and inter.partition == partition)
            pipe.engines[partition] = engine
            clocks[partition] = PartitionClock()
            clocks[partition].arrived(record.watermark)
        return engine

    def refuse_too_long(key: bytes | None, doc: dict[str, Any], limit: int) -> None:
        # Not applied (the interaction keeps its first ``limit`` steps), so never lost silently.
        topic, partition, offset = doc["source"]
        pipe.metrics.events_invalid.labels(TOO_LONG).inc()
        pipe.metrics.dead_lettered.inc()
        outbox.send(pipe.topics["dead_letter"], key, dead_letter(
            doc["payload"].encode("utf-8"), too_long(doc["interaction_id"], limit), topic, partition, offset,
            int(time.time() * 1000)))

    def publish(partition: int, engine: PartitionEngine, snaps: list[Snapshot]) -> None:
        wm = engine.record.watermark
        for snap in snaps:
            outbox.send(partials, *window_partial(partition, snap, windowing.end(snap.key[0], snap.key[1]), wm))
        for (queue, channel), live in engine.take_live():
            outbox.send(partials, *live_partial(partition, queue, channel, live, engine.version(False), wm))

    @app.agent(pipe.topics["events"], name="lifecycle")
    async def lifecycle(stream):  # type: ignore[no-untyped-def]
        hasher = await customer_hasher(pipe)
        async for batch in stream.take_events(2000, within=0.05):
            touched: dict[str, tuple[int, Interaction]] = {}
            partitions: set[int] = set()
            for event in batch:
                msg = event.message
                with guard.record("lifecycle", msg):
                    doc = orjson.loads(msg.value)
                    engine = engine_for(msg.partition)
                    if WATERMARK_FIELD in doc:
                        engine.observe(doc[WATERMARK_FIELD])
                        partitions.add(msg.partition)
                        continue
                    iid = doc["interaction_id"]
                    inter = touched.get(iid, (0, None))[1] or interactions.data.get(iid)
                    if inter is None:
                        inter = Interaction(iid, doc["channel"], partition=msg.partition)
                    step = step_from_message(doc)
                    topic, source_partition, _ = doc["source"]
                    outcome = engine.apply(inter, step, msg.offset, f"{topic}/{source_partition}")
                    if outcome.too_long:
                        refuse_too_long(msg.key, doc, engine.max_steps)
                        continue
                    if outcome.late_window is not None:
                        late_lines.note(window_label(outcome.late_window), time.monotonic())
                    touched[iid] = (msg.partition, inter)
                    partitions.add(msg.partition)
                    d = outcome.fold
                    if d is not None and d.customer and d.segments and (step.customer or step.step == "offered"):
                        # Only the steps that can create or change the contact send it again.
                        # Customers meet on the FCR partition by a keyed hash (streams/fcr.py).
                        contact = {"customer": hasher.hash(d.customer), "kid": hasher.key_id,
                                   "interaction_id": iid,
                                   "ts": d.first_entered, "queue": d.first_queue,
                                   "channel": inter.channel}
                        outbox.send(contacts, contact["customer"].encode(), orjson.dumps(contact))
            for iid, (partition, inter) in touched.items():
                put(interactions, partition, iid, inter)
                for row in interaction_rows(inter, version=inter.step_count):
                    outbox.send(rows_topic, f"{iid}|{row['segment']}".encode(), row)
            for partition in partitions:
                put(records, partition, str(partition), pipe.engines[partition].record)
                clocks[partition].arrived(pipe.engines[partition].record.watermark)
            await outbox.flush()

    @app.timer(w.publish_interval_seconds, name="publish-windows")
    async def publish_windows() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == events_topic_name}
        for partition in owned:
            engine_for(partition)
        for partition in set(pipe.engines) - owned:
            # Re-created by a batch fetched before a rebalance took the partition away:
            # its new owner publishes it now.
            drop(partition)
        expire_now = time.monotonic() - last_expiry[0] >= EXPIRY_SCAN_SECONDS
        late_lines.flush(time.monotonic())
        for partition, engine in list(pipe.engines.items()):
            idle = clocks[partition].idle_watermark(w.idle_close_seconds)
            if idle is not None:
                engine.advance(idle)
            before = engine.record.final_through
            snaps = engine.close() + engine.take_dirty()
            publish(partition, engine, snaps)
            merge_clock.send(str(partition), engine.record.watermark)
            if snaps or engine.record.final_through != before:
                put(records, partition, str(partition), engine.record)
        if expire_now:
            expired = expire()
            for partition in expired:
                put(records, partition, str(partition), pipe.engines[partition].record)
            last_expiry[0] = time.monotonic()
        send_watermarks()
        await outbox.flush()

    def expire() -> set[int]:
        """One pass over the interactions; returns the partitions whose counters changed."""
        changed: set[int] = set()
        for iid, inter in list(interactions.data.items()):
            engine = pipe.engines.get(inter.partition) if inter is not None else None
            if engine is None or engine.record.watermark - inter.last_ts < engine.lateness_ms:
                continue  # still active: the cheap test first, the derivation only if needed
            if engine.expirable(inter):
                engine.count_expired(inter)
                delete(interactions, inter.partition, iid)
                changed.add(inter.partition)
        return changed

    sent_watermarks: dict[str, int] = {}

    def send_watermarks() -> None:
        # The FCR stage's event time is this stage's: a tick on every contacts
        # partition, after the contacts it covers (see ccpulse/core/fcr.py).
        report = {f"lifecycle/{p}": e.record.watermark for p, e in pipe.engines.items()
                  if e.record.watermark}
        if not report or all(sent_watermarks.get(k) == v for k, v in report.items()):
            return
        sent_watermarks.update(report)
        value = orjson.dumps({WATERMARK_FIELD: report})
        for partition in range(settings.kafka.partitions):
            outbox.send(contacts, None, value, partition)

    def drop(partition: int) -> None:
        pipe.engines.pop(partition, None)
        clocks.pop(partition, None)
        sent_watermarks.pop(f"lifecycle/{partition}", None)
        merge_clock.forget(str(partition))

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        for tp in revoked:
            if tp.topic == events_topic_name:
                drop(tp.partition)

