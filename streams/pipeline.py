"""The Faust shell around the one-pass pipeline stage (streams/stages/pipeline.py).

One agent, ``pipeline``, reads ``calls``, ``chats``, ``tickets`` and ``<app>-rekey``
in envelopes (one per partition and fetch, streams/kafka_consumer.py) and hands each
to ``PipelineStage.on_batch``. About every ``CHECKPOINT_SECONDS`` (sooner when much is
buffered) a checkpoint writes what the stage collected, in this order
(docs/streaming-layer.md):

1. in the all-in-one role, the raw events and interaction rows to ClickHouse, waiting
   until they are stored (a ClickHouse outage holds the checkpoint, and with it the
   agent: backpressure, nothing acknowledged);
2. the changelog of each changed interaction, once, and each changed partition record;
3. re-keyed events then the clocks (event time, see streams/stages/pipeline.py), dead letters, window/live partials (with the merge clock), contacts
   (with the FCR clock), interaction rows (compute role);
4. the producer flush;

and only then acknowledges the envelopes it covers, so Faust commits no offset whose
effects are not written. A timer ticks the stage once a second (idle sources, closing
windows, expiry) and checkpoints what that produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from faust.types import TP

from schemas.records import interaction_rows, raw_event_row
from streams.context import Pipeline
from streams.fcr import WATERMARK_FIELD, customer_hasher
from streams.guard import stage_guard
from streams.merge import ClockSender
from streams.stages.pipeline import PipelineStage

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 0.2
# Envelopes read since the last checkpoint past which the agent checkpoints at once:
# bounds what a checkpoint holds (and what a crash makes the next owner re-read).
CHECKPOINT_ENVELOPES = 200
TICK_SECONDS = 1.0
EXPIRY_SCAN_SECONDS = 10.0


def register(pipe: Pipeline) -> None:
    app, settings = pipe.app, pipe.settings
    interactions = pipe.tables["interactions"]
    records = pipe.tables["partitions"]
    rekey_name = pipe.internal("rekey")
    input_names = set(pipe.topics["input"].topics)
    outbox = pipe.outbox
    stage = PipelineStage(settings, rekey_name, interactions=interactions.data, metrics=pipe.metrics)
    pipe.engines = stage.engines  # /health and /metrics read the stage's engines
    merge_clock = ClockSender(outbox, pipe.topics["partials"], settings.kafka.partitions)
    sent_fcr_clock: dict[str, int] = {}
    lock = asyncio.Lock()
    pending: list[Any] = []  # envelopes applied, not yet covered by a checkpoint
    last = {"checkpoint": time.monotonic(), "expiry": time.monotonic()}

    def owned() -> set[TP]:
        return {tp for tp in app.assignor.assigned_actives() if tp.topic in input_names}

    def ensure(partition: int, now_ms: int) -> None:
        # Rebuilt from what the tables recovered: open windows are derived, never stored.
        if partition not in stage.engines:
            stage.assign(partition, records.data.get(str(partition)),
                         [inter for inter in list(interactions.data.values())
                          if inter is not None and inter.partition == partition], now_ms)

    def drop(partition: int) -> None:
        # The table keeps the interactions: deleting them here lost the open interactions of
        # a partition given back to this worker in the same rebalance (chaos "rebalance":
        # their windows never became final), as Faust's recovery did not read them again.
        stage.revoke(partition, forget_interactions=False)
        merge_clock.forget(str(partition))
        sent_fcr_clock.pop(f"lifecycle/{partition}", None)

    guard = stage_guard(pipe)

    async def checkpoint() -> None:
        async with lock:
            covered = list(pending)
            pending.clear()
            last["checkpoint"] = time.monotonic()
            try:
                await write(covered)
            except Exception as exc:  # noqa: BLE001 - see below
                # Outside any one record (records fail alone in the stage): the guard stops
                # every commit and /health says so; a restart reads it all again. The live
                # view goes on meanwhile (from the agent or a timer alike).
                guard.agent_crashed("pipeline", exc)

    async def write(covered: list[Any]) -> None:
        out = stage.checkpoint()
        if pipe.direct_rows is not None:  # (1) role all: ClickHouse first
            if not await pipe.direct_rows.store(out.raw_events, out.interactions):
                return  # stopping: nothing acknowledged, the next owner reads it again
        for iid, inter in out.interactions.items():  # (2)
            outbox.put(interactions, inter.partition, iid, inter)
        for partition, record in out.records.items():
            outbox.put(records, partition, str(partition), record)
        for m in out.rekey:  # (3)
            outbox.send(pipe.topics["rekey"], m.key, m.value)
        for m in out.clocks:  # after the events they cover, by the same producer
            for partition in range(settings.kafka.partitions):
                outbox.send(pipe.topics["rekey"], None, m.value, partition)
        for m in out.dead_letters:
            outbox.send(pipe.topics["dead_letter"], m.key, m.value)
        for m in out.partials:
            outbox.send(pipe.topics["partials"], m.key, m.value)
        for m in out.contacts:
            outbox.send(pipe.topics["contacts"], m.key, m.value)
        if pipe.direct_rows is None:
            for iid, inter in out.interactions.items():
                for row in interaction_rows(inter, version=inter.step_count):
                    outbox.send(pipe.topics["interactions"], f"{iid}|{row['segment']}".encode(), row)
        send_clocks()
        await outbox.flush()  # (4)
        for event in covered:
            event.ack()

    def send_clocks() -> None:
        # After the partials and contacts they cover, by the same producer: the merge
        # forgets a final window, and FCR decides a contact, only behind these clocks.
        report = {}
        for partition, engine in stage.engines.items():
            watermark = engine.record.watermark
            merge_clock.send(str(partition), watermark)
            if watermark and sent_fcr_clock.get(f"lifecycle/{partition}") != watermark:
                report[f"lifecycle/{partition}"] = watermark
        if report:
            sent_fcr_clock.update(report)
            value = orjson.dumps({WATERMARK_FIELD: report})
            for partition in range(settings.kafka.partitions):
                outbox.send(pipe.topics["contacts"], None, value, partition)

    @app.agent(pipe.topics["input"], name="pipeline")
    async def pipeline(stream):  # type: ignore[no-untyped-def]
        stage.hasher = await customer_hasher(pipe)
        async for event in stream.noack().events():
            envelope = event.value
            if TP(envelope.topic, envelope.partition) not in owned():
                continue  # fetched before a rebalance took it away: its new owner reads it
            now_ms = int(time.time() * 1000)
            ensure(envelope.partition, now_ms)
            stage.on_batch(envelope.topic, envelope.partition, envelope.records, now_ms)
            pending.append(event)
            if (len(pending) >= CHECKPOINT_ENVELOPES or lock.locked()
                    or time.monotonic() - last["checkpoint"] >= CHECKPOINT_SECONDS):
                await checkpoint()

    @app.timer(CHECKPOINT_SECONDS, name="pipeline-checkpoint")
    async def checkpoint_idle() -> None:
        # Envelopes of a stream that went quiet are still acknowledged within the interval.
        if pending and time.monotonic() - last["checkpoint"] >= CHECKPOINT_SECONDS:
            await checkpoint()

    @app.timer(TICK_SECONDS, name="pipeline-tick")
    async def tick() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        now_ms = int(time.time() * 1000)
        tps = owned()
        partitions = {tp.partition for tp in tps}
        for partition in set(stage.engines) - partitions:
            drop(partition)
        for partition in partitions:
            ensure(partition, now_ms)
        stage.on_tick(now_ms, {(tp.topic, tp.partition): caught_up(tp) for tp in tps})
        if time.monotonic() - last["expiry"] >= EXPIRY_SCAN_SECONDS:
            last["expiry"] = time.monotonic()
            expire()
        await checkpoint()

    def expire() -> None:
        """Forget the interactions whose windows are all final and that went quiet."""
        for iid, inter in list(interactions.data.items()):
            engine = stage.engines.get(inter.partition) if inter is not None else None
            if engine is None or engine.record.watermark - inter.last_ts < engine.lateness_ms:
                continue  # still active: the cheap test first, the derivation only if needed
            if engine.expirable(inter):
                engine.count_expired(inter)
                outbox.delete(interactions, inter.partition, iid)
                outbox.put(records, inter.partition, str(inter.partition), engine.record)

    def caught_up(tp: TP) -> bool:
        """Nothing left to read: the offset expected next has reached the partition's end."""
        consumer = app.consumer
        order = getattr(consumer, "order", None)  # streams/kafka_consumer.InOrderConsumer
        expected = order.expected(tp) if order is not None else None
        end = consumer.highwater(tp)
        return expected is not None and end is not None and expected >= end

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        for tp in revoked:
            if tp.topic in input_names:
                drop(tp.partition)


class DirectRows:
    """The all-in-one role's ClickHouse writes from the pipeline's checkpoint: raw events
    and interaction rows, stored before the envelopes behind them are acknowledged."""

    def __init__(self, raw_sink: Any, interaction_sink: Any, hasher: Any, stopping: Any) -> None:
        self._raw, self._rows, self._hasher, self._stopping = raw_sink, interaction_sink, hasher, stopping

    async def store(self, raw_events: list[dict[str, Any]], changed: dict[str, Any]) -> bool:
        """False if the worker began stopping before both were stored."""
        for doc in raw_events:
            self._raw.add(raw_event_row(doc, self._hasher), doc["source"][1])
        for inter in changed.values():
            for row in interaction_rows(inter, version=inter.step_count):
                self._rows.add(row, inter.partition)
        return await self._raw.flush(self._stopping) and await self._rows.flush(self._stopping)
