"""The outbox against a real broker: each message lands where aiokafka's own ``send``
would put it, in order within its partition, however large the flush."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from streams.outbox import Outbox

PARTITIONS = 6


class _Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        got: list[Any] = []
        for _ in range(200):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [(r.partition, r.key, r.value) for r in records]
            if len(got) >= expected:
                break
        return got
    finally:
        await consumer.stop()


def test_messages_land_where_send_puts_them_in_order(kafka_bootstrap: str) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1)
                                   for t in ("outbox-batched", "outbox-sent")])
        await admin.close()
        # A small batch size, so one flush fills several batches of a partition.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=16 * 1024, linger_ms=5)
        await producer.start()
        try:
            outbox = Outbox(SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))
            rnd = random.Random(7)
            keyed = [(f"iid-{rnd.randrange(50)}".encode(), f"{n}:".encode() + b"x" * rnd.randrange(2000))
                     for n in range(2000)]
            big = (b"big", b"y" * 40_000)  # larger than a batch: goes alone
            topic = _Topic("outbox-batched")
            for n, (key, value) in enumerate(keyed):
                outbox.send(topic, key, value)
                if n == 1000:
                    outbox.send(topic, *big)
                    outbox.send(topic, None, b"tick", 3)  # an explicit partition
            outbox.send(topic, None, b"unkeyed")  # any partition with a leader
            await outbox.flush()
            assert len(outbox) == 0
            for key, value in keyed[:1001] + [big] + keyed[1001:]:
                await producer.send("outbox-sent", value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

        batched = await _read_all(kafka_bootstrap, "outbox-batched", len(keyed) + 3)
        sent = await _read_all(kafka_bootstrap, "outbox-sent", len(keyed) + 1)
        assert len(batched) == len(keyed) + 3
        assert sorted(p for p, k, v in batched if v == b"tick") == [3]
        assert len([v for p, k, v in batched if v == b"unkeyed"]) == 1
        # Same partition and same order within it as send() gives.
        batched_keyed = [m for m in batched if m[1] is not None]
        for partition in range(PARTITIONS):
            assert [m for m in batched_keyed if m[0] == partition] == [m for m in sent if m[0] == partition]
        assert len({p for p, _, _ in batched_keyed}) > 1
    asyncio.run(run())
