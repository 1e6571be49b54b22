"""Stage 1: validate raw input, dead-letter what breaks EVENTS.md, re-key the rest.

Re-keying by ``interaction_id`` is what keeps keyless (or oddly keyed) producers
correct: every event of an interaction reaches the same lifecycle partition.
"""

from __future__ import annotations

import time

import orjson

from schemas.events import Rejection, decode
from schemas.records import dead_letter, event_message
from streams.app import Pipeline

FAMILIES = {"calls": "call", "chats": "chat", "tickets": "ticket"}
# A message on the events topic with only this field is a watermark tick, not an event.
WATERMARK_FIELD = "watermark"


def register(pipe: Pipeline) -> None:
    settings = pipe.settings
    metrics = pipe.metrics
    events_topic = pipe.topics["events"]
    contacts_topic = pipe.topics["contacts"]
    dlq = pipe.topics["dead_letter"]
    family_of = {settings.topics.name(attr): family for attr, family in FAMILIES.items()}
    max_future_ms = int(settings.max_future_seconds * 1000)

    newest = [0, 0]  # newest occurred_at seen, and the value last broadcast

    @pipe.app.agent(pipe.topics["input"], name="ingest")
    async def ingest(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            now_ms = int(time.time() * 1000)
            for event in batch:
                msg = event.message
                raw = msg.value
                metrics.events_consumed.labels(msg.topic).inc()
                result = decode(raw, family_of.get(msg.topic, "call"), now_ms, max_future_ms)
                if isinstance(result, Rejection):
                    metrics.events_invalid.labels(result.reason).inc()
                    metrics.dead_lettered.inc()
                    await dlq.send(key=msg.key, value=dead_letter(
                        raw, result, msg.topic, msg.partition, msg.offset, now_ms))
                    continue
                newest[0] = max(newest[0], result.occurred_at_ms)
                await events_topic.send(
                    key=result.interaction_id.encode(),
                    value=orjson.dumps(event_message(result, raw, msg.topic, msg.partition, msg.offset)))

    @pipe.app.timer(settings.windows.publish_interval_seconds, name="broadcast-watermark")
    async def broadcast_watermark() -> None:
        # Event time is the newest occurred_at on the whole input (METRICS.md), but
        # each lifecycle partition only sees its own events: a tick on every
        # partition carries the input's event time to partitions that went quiet.
        if newest[0] <= newest[1]:
            return
        newest[1] = newest[0]
        value = orjson.dumps({WATERMARK_FIELD: newest[0]})
        for topic in (events_topic, contacts_topic):
            for partition in range(settings.kafka.partitions):
                await topic.send(key=None, value=value, partition=partition)
