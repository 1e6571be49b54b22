"""Stage 1: validate raw input, dead-letter what breaks EVENTS.md, re-key the rest.

Re-keying by ``interaction_id`` is what keeps keyless (or oddly keyed) producers
correct: every event of an interaction reaches the same lifecycle partition.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson

from ccpulse.core.watermark import InputWatermarks
from ccpulse.core.windowing import Windowing
from schemas.events import Rejection
from schemas.records import dead_letter, event_message
from streams.context import Pipeline
from streams.guard import stage_guard
from streams.stages.validation import FAMILIES, decode_event
# A message on the events topic with only this field is a watermark tick, not an event.
WATERMARK_FIELD = "watermark"


def register(pipe: Pipeline) -> None:
    settings = pipe.settings
    metrics = pipe.metrics
    events_topic = pipe.topics["events"]
    dlq = pipe.topics["dead_letter"]
    family_of = {settings.topics.name(attr): family for attr, family in FAMILIES.items()}
    max_future_ms = int(settings.max_future_seconds * 1000)

    sources = InputWatermarks(int(settings.windows.source_idle_seconds * 1000))

    outbox = pipe.outbox
    guard = stage_guard(pipe)
    windowing = Windowing(settings.windows.sizes, settings.windows.timezone, settings.windows.day_start_hour)

    def forward(msg: Any, now_ms: int) -> None:
        raw = msg.value
        result = decode_event(raw, family_of.get(msg.topic, "call"), now_ms, max_future_ms, windowing)
        if isinstance(result, Rejection):
            metrics.events_invalid.labels(result.reason).inc()
            metrics.dead_lettered.inc()
            outbox.send(dlq, msg.key, dead_letter(raw, result, msg.topic, msg.partition, msg.offset, now_ms))
            return
        sources.seen(f"{msg.topic}/{msg.partition}", result.occurred_at_ms, now_ms)
        outbox.send(events_topic, result.interaction_id.encode(),
                    orjson.dumps(event_message(result, raw, msg.topic, msg.partition, msg.offset)))

    @pipe.app.agent(pipe.topics["input"], name="ingest")
    async def ingest(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            now_ms = int(time.time() * 1000)
            consumed: Counter = Counter()
            for event in batch:
                msg = event.message
                consumed[msg.topic] += 1
                with guard.record("ingest", msg):
                    forward(msg, now_ms)
            for topic, n in consumed.items():  # once per batch: labels() takes a lock
                metrics.events_consumed.labels(topic).inc(n)
            await outbox.flush()

    @pipe.app.timer(settings.windows.publish_interval_seconds, name="broadcast-watermark")
    async def broadcast_watermark() -> None:
        # Each lifecycle partition only sees its own events: a tick on every partition
        # carries every input partition's event time (see ccpulse/core/watermark.py).
        # Sent after the events it covers, by the same producer, so it never overtakes them.
        now_ms = int(time.time() * 1000)
        app = pipe.app
        if not app.rebalancing and app.tables.recovery.completed.is_set():
            for tp in app.assignor.assigned_actives():
                if tp.topic in family_of:
                    sources.assigned(f"{tp.topic}/{tp.partition}", now_ms, caught_up(tp))
        report = sources.report(now_ms)
        if report is None:
            return
        value = orjson.dumps({WATERMARK_FIELD: report})
        for partition in range(settings.kafka.partitions):
            outbox.send(events_topic, None, value, partition)
        await outbox.flush()

    def caught_up(tp: Any) -> bool:
        """Nothing left to read: the offset expected next has reached the partition's end."""
        consumer = pipe.app.consumer
        order = getattr(consumer, "order", None)  # streams/kafka_consumer.InOrderConsumer
        expected = order.expected(tp) if order is not None else None
        end = consumer.highwater(tp)
        return expected is not None and end is not None and expected >= end

    @pipe.app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        for tp in revoked:
            sources.forget(f"{tp.topic}/{tp.partition}")
