"""Issue 14, item 2, through a real worker and broker: nothing the producer fails to deliver
is lost (its input offsets stay uncommitted and /health says so until it is delivered), and an
interaction's steps past the limit are dead-lettered and counted, not applied.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.worker_process import WorkerProcess, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

SMALL_MESSAGE_LIMIT = 4096  # max.message.bytes of the dead-letter topic while it refuses


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in metrics.items() if n == name and all((k, x) in lbls for k, x in labels.items()))


def _admin(bootstrap: str, action: Any) -> Any:
    async def run() -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return await action(admin)
        finally:
            await admin.close()
    return asyncio.run(run())


def committed_and_end(bootstrap: str, group: str, tp: TopicPartition) -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group, partitions=[tp])
            meta = committed.get(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            return (meta.offset if meta is not None else -1), end
        finally:
            await consumer.stop()
            await admin.close()
    return asyncio.run(run())


def event(event_id: str, etype: str, iid: str, second: int, **fields: Any) -> bytes:
    doc = {"event_id": event_id, "type": etype, "interaction_id": iid,
           "occurred_at": f"2026-01-05T08:{second // 60:02d}:{second % 60:02d}.000Z", **fields}
    return orjson.dumps(doc)


def test_a_message_the_broker_refuses_holds_the_commit_until_it_is_delivered(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "prodfail")
    dlq = f"{worker.prefix}events.dead-letter"
    # The dead-letter topic refuses the dead letter of the large bad message below.
    _admin(kafka_bootstrap, lambda a: a.create_topics(
        [NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": str(SMALL_MESSAGE_LIMIT)})]))
    calls = f"{worker.prefix}calls"
    bad = b"not json " + b"x" * (2 * SMALL_MESSAGE_LIMIT)  # its dead letter is ~12 KB
    worker.start()
    try:
        # One key: one input partition, the bad message between two valid ones.
        produce(kafka_bootstrap, calls, [
            (b"k", event("before", "call.offered", "before", 1, queue="held")),
            (b"k", bad),
            (b"k", event("after", "call.offered", "after", 2, queue="held"))])
        where = next(p for p in range(4) if committed_and_end(
            kafka_bootstrap, "prodfail", TopicPartition(calls, p))[1] == 3)
        tp = TopicPartition(calls, where)

        def refused_twice() -> bool:
            m = worker.metrics()
            # Processing went on past it, and the refused dead letter was re-sent at least once.
            return (_sum(m, "ccpulse_queue_offered_total", queue="held") == 2
                    and _sum(m, "ccpulse_produce_failures_total", topic=dlq) >= 2)

        wait_until(refused_twice, 90, "the dead letter refused, re-sent, refused again")
        status, body = worker.get("/health")
        assert status == 503, body
        producer = json.loads(body)["parts"]["producer"]
        assert not producer["ok"] and "MessageSizeTooLarge" in producer["detail"], producer
        assert _sum(worker.metrics(), "ccpulse_produce_failing") == 1
        committed, end = committed_and_end(kafka_bootstrap, "prodfail", tp)
        assert committed <= 1, f"committed past the message whose dead letter was refused: {committed}"
        assert read_topic(kafka_bootstrap, dlq) == []

        # The topic takes it now: the re-send is delivered, the offsets go, health comes back.
        _admin(kafka_bootstrap, lambda a: a.alter_configs([ConfigResource(
            ConfigResourceType.TOPIC, dlq, configs={"max.message.bytes": "1048588"})]))
        wait_until(lambda: committed_and_end(kafka_bootstrap, "prodfail", tp)[0] == 3, 60,
                   "the input offsets committed once the dead letter was delivered")
        wait_until(lambda: worker.get("/health")[0] == 200, 30, "healthy again")
        assert _sum(worker.metrics(), "ccpulse_produce_failing") == 0
        dead = read_topic(kafka_bootstrap, dlq)
        assert len(dead) == 1, dead
        record = json.loads(dead[0][1])
        assert (record["reason"], record["partition"], record["offset"]) == ("not_json", where, 1)
        assert base64.b64decode(record["value_base64"]) == bad
    finally:
        worker.stop()


def test_steps_past_the_limit_are_dead_lettered_and_counted(kafka_bootstrap: str, tmp_path: Path) -> None:
    (tmp_path / "ccpulse.toml").write_text("[limits]\nmax_steps_per_interaction = 5\n")
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "toolong")
    chats = f"{worker.prefix}chats"
    steps = [event("o", "chat.offered", "long", 1, queue="long-chat"),
             event("a", "chat.answered", "long", 2, agent_id="ag")]
    steps += [event(f"m{i}", "chat.message", "long", 3 + i, sender="customer" if i % 2 else "agent")
              for i in range(6)]
    steps.append(event("o2", "chat.offered", "short", 20, queue="long-chat"))
    worker.start()
    try:
        produce(kafka_bootstrap, chats, [(b"long", value) for value in steps[:-1]] + [(b"short", steps[-1])])
        dlq = f"{worker.prefix}events.dead-letter"
        dead = wait_until(lambda: (lambda d: d if len(d) >= 3 else None)(read_topic(kafka_bootstrap, dlq)),
                          90, "three dead letters")
        wait_until(lambda: _sum(worker.metrics(), "ccpulse_queue_offered_total", queue="long-chat") == 2, 60,
                   "the other chat counted")
        records = [json.loads(v) for _k, v in dead]
        assert [r["reason"] for r in records] == ["interaction_too_long"] * 3
        assert [json.loads(base64.b64decode(r["value_base64"]))["event_id"] for r in records] == ["m3", "m4", "m5"]
        assert "5 steps" in records[0]["detail"]
        m = worker.metrics()
        assert _sum(m, "ccpulse_events_invalid_total", reason="interaction_too_long") == 3
        assert _sum(m, "ccpulse_dead_letter_messages_total") == 3
        assert _sum(m, "ccpulse_duplicate_events_total") == 0
        assert worker.get("/health")[0] == 200
    finally:
        worker.stop()
