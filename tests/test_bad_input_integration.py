"""The bad-input corpus interleaved with valid simulated events, through a real worker.

Every corpus message must be on the dead-letter topic exactly once, with its reason,
its original bytes and its source topic/partition/offset (known from the producer's
acknowledgements); every valid event must be stored once and counted once (offers
and answers per queue, compared with the generator's own output); the worker stays up.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import clickhouse_connect
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ccpulse.tools.bad_input import (OVERSIZE_PRODUCER_MAX_REQUEST, OVERSIZE_TOPIC_CONFIG, BadInput,
                               bad_input_corpus)
from ccpulse.commands.simulate import QueueModel, SimulationConfig
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events
from schemas.events import TYPES
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

TOPIC_OF = {"call": "calls", "chat": "chats", "ticket": "tickets"}
PARTITIONS = 4


def valid_events() -> list[tuple[str, dict[str, Any]]]:
    start = datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
    # No transfers: each offer then counts in exactly one queue, so the expected
    # per-queue counts can be read off the events themselves.
    voice = SimulationConfig(rate=1.0, seed=11, start=start, rating_probability=0.3)
    chat = ChatConfig(rate=0.4, seed=11, start=start, transfer_probability=0.0,
                      queues=(QueueModel("chat-support", agents=4),))
    ticket = TicketConfig(rate=0.2, seed=11, start=start)
    return list(generate_mixed_events(voice, chat, ticket, 240))


async def _create_input_topics(bootstrap: str, prefix: str) -> None:
    # The oversize item needs input topics that accept it (see ccpulse.tools.bad_input).
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}{name}", PARTITIONS, 1, topic_configs=OVERSIZE_TOPIC_CONFIG)
                                   for name in TOPIC_OF.values()])
    finally:
        await admin.close()


async def _publish(bootstrap: str, prefix: str, stream: list[tuple[str, bytes | None, bytes | None, Any]]
                   ) -> dict[Any, tuple[str, int, int]]:
    """Send (family, key, value, tag) in order; returns tag -> (topic, partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=OVERSIZE_PRODUCER_MAX_REQUEST)
    await producer.start()
    try:
        futures = []
        for family, key, value, tag in stream:
            topic = prefix + TOPIC_OF[family]
            futures.append((tag, await producer.send(topic, value=value, key=key)))
        out = {}
        for tag, future in futures:
            meta = await future
            out[tag] = (meta.topic, meta.partition, meta.offset)
        return out
    finally:
        await producer.stop()


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in metrics.items() if n == name and all((k, x) in lbls for k, x in labels.items()))


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("badin")
    worker = WorkerProcess.create(kafka_bootstrap, tmp, "badin")
    asyncio.run(_create_input_topics(kafka_bootstrap, worker.prefix))
    # The oversize item has its own test below: today it stops the ingest agent.
    corpus = bad_input_corpus(include_oversize=False)
    events = valid_events()
    # One bad message after every few valid ones, the rest at the end.
    stream: list[tuple[str, bytes | None, bytes | None, Any]] = []
    step = max(1, len(events) // len(corpus))
    bad = iter(corpus)
    for i, (family, doc) in enumerate(events):
        stream.append((family, doc["interaction_id"].encode(), orjson.dumps(doc), ("ok", doc["event_id"])))
        if i % step == step - 1:
            item = next(bad, None)
            if item is not None:
                stream.append((item.family, item.key, item.value, ("bad", item.name)))
    for item in bad:
        stream.append((item.family, item.key, item.value, ("bad", item.name)))
    worker.start()
    try:
        where = asyncio.run(_publish(kafka_bootstrap, worker.prefix, stream))

        def consumed() -> bool:
            return _sum(worker.metrics(), "ccpulse_events_consumed_total") >= len(stream)

        wait_until(consumed, 120, "every message consumed")
        dlq_topic = f"{worker.prefix}events.dead-letter"
        wait_until(lambda: len(read_topic(kafka_bootstrap, dlq_topic)) >= len(corpus), 60, "dead letters")
        worker.wait_sink_idle(quiet_seconds=3)
        dead = read_topic(kafka_bootstrap, dlq_topic)
        metrics = worker.metrics()
        health = worker.get("/health")
        alive = worker.process is not None and worker.process.poll() is None
    finally:
        exit_code = worker.stop()
    client = clickhouse_connect.get_client(interface="chdb", path=worker.clickhouse_path)
    yield dict(corpus=corpus, events=events, stream=stream, where=where, dead=dead, metrics=metrics,
               health=health, alive=alive, exit_code=exit_code, client=client)
    client.close()


def test_every_bad_message_is_dead_lettered_once_with_reason_bytes_and_source(run) -> None:
    by_source = {run["where"][("bad", item.name)]: item for item in run["corpus"]}
    seen: Counter = Counter()
    for key, value in run["dead"]:
        record = json.loads(value)
        source = (record["topic"], record["partition"], record["offset"])
        assert source in by_source, f"a dead letter for a message that was not bad: {record}"
        item: BadInput = by_source[source]
        seen[item.name] += 1
        assert record["reason"] == item.reason, (item.name, record["detail"])
        assert base64.b64decode(record["value_base64"]) == (item.value or b""), item.name
        assert key == item.key, item.name
        assert record["detail"]
    assert seen == Counter({item.name: 1 for item in run["corpus"]})


def test_refusals_are_counted_by_reason(run) -> None:
    expected = Counter(item.reason for item in run["corpus"])
    for reason, count in expected.items():
        assert _sum(run["metrics"], "ccpulse_events_invalid_total", reason=reason) == count, reason
    assert _sum(run["metrics"], "ccpulse_dead_letter_messages_total") == len(run["corpus"])
    assert _sum(run["metrics"], "ccpulse_events_consumed_total") == len(run["stream"])


def test_every_valid_event_is_stored_once(run) -> None:
    ids = sorted(doc["event_id"] for _f, doc in run["events"])
    rows = run["client"].query("SELECT event_id FROM raw_events FINAL ORDER BY event_id").result_rows
    assert [r[0] for r in rows] == ids
    assert run["client"].query("SELECT count() FROM raw_events FINAL WHERE event_id LIKE 'bad-%'").result_rows[0][0] == 0


def test_every_valid_event_is_counted_once(run) -> None:
    offered: Counter = Counter()
    answered: Counter = Counter()
    for _family, doc in run["events"]:
        step = TYPES[doc["type"]]
        if step == "offered":
            channel = {"call": "voice", "chat": "chat"}.get(doc["type"].split(".")[0], doc.get("channel", "email"))
            offered[(doc["queue"], channel)] += 1
    queue_of = {doc["interaction_id"]: doc["queue"] for _f, doc in run["events"] if TYPES[doc["type"]] == "offered"}
    for _family, doc in run["events"]:
        if doc["type"] in ("call.answered", "chat.answered"):
            channel = "voice" if doc["type"].startswith("call.") else "chat"
            answered[(queue_of[doc["interaction_id"]], channel)] += 1
    assert offered and answered
    m = run["metrics"]
    for (queue, channel), count in offered.items():
        assert _sum(m, "ccpulse_queue_offered_total", queue=queue, channel=channel) == count, (queue, channel)
    for (queue, channel), count in answered.items():
        assert _sum(m, "ccpulse_queue_answered_total", queue=queue, channel=channel) == count, (queue, channel)
    assert _sum(m, "ccpulse_duplicate_events_total") == 0


def test_the_worker_stayed_healthy(run) -> None:
    assert run["alive"] and run["health"][0] == 200, run["health"]
    assert run["exit_code"] == 0


def test_an_oversize_message_is_dead_lettered_and_the_next_one_counted(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "oversize")
    asyncio.run(_create_input_topics(kafka_bootstrap, worker.prefix))
    item = next(i for i in bad_input_corpus() if i.oversize)
    after = {"event_id": "after-oversize", "type": "call.offered", "occurred_at": "2026-01-05T08:00:00.000Z",
             "interaction_id": "after", "queue": "q"}
    worker.start()
    try:
        asyncio.run(_publish(kafka_bootstrap, worker.prefix, [
            (item.family, item.key, item.value, "bad"), ("call", b"after", orjson.dumps(after), "ok")]))
        dlq = f"{worker.prefix}events.dead-letter"
        dead = wait_until(lambda: read_topic(kafka_bootstrap, dlq), 60, "the oversize dead letter")
        wait_until(lambda: _sum(worker.metrics(), "ccpulse_queue_offered_total", queue="q") == 1, 60,
                   "the next message counted")
        assert [json.loads(v)["reason"] for _k, v in dead] == ["too_large"]
    finally:
        worker.stop()
