"""Everything a stage produces goes through one ``Outbox``: messages and table changelogs.

Faust's ``Topic.send``/``send_soon`` and ``Table.__setitem__`` cost tens of
microseconds each (futures, callbacks, a one-message-at-a-time buffer); a stage
that produces several messages per event spends most of its time there. The
outbox collects plain bytes while a batch is processed and hands them to the
Kafka producer in one loop at the end of the batch.

Guarantees kept:
- order: one list, flushed under a lock, so messages reach the producer in the
  order they were put (a watermark tick never overtakes the events it covers);
- at-least-once: every agent flushes before it takes its next batch, and Faust
  acknowledges a batch only then; Faust's commit flushes the producer before it
  commits offsets, so a committed offset always means "its outputs were sent".

Tables are written here too (the store first, then the changelog with an
explicit partition): ccpulse's keys always belong to a known partition, and
its timers must persist state outside any stream event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.serializers import codecs
from faust.types import AppT, TableT, TopicT


PARTITION_CACHE_KEYS = 10_000  # per topic (a few MB in all): the keys of the open interactions and windows

# topic, key, value, partition (None: the producer's partitioner picks it by key)
Item = tuple[str, bytes | None, bytes | None, int | None]


class Outbox:
    def __init__(self, app: AppT) -> None:
        self._app = app
        self._items: list[Item] = []
        self._lock = asyncio.Lock()
        self._names: dict[int, str] = {}
        self._partitions: dict[str, list[int]] = {}  # topic -> its partitions (fixed for a topic)
        # topic -> key -> partition. aiokafka's partitioner hashes in pure Python
        # (murmur2, 2% of a worker), and every event of an interaction, like every
        # update of a window, has the same key.
        self._partition_of: dict[str, dict[bytes, int]] = {}

    def send(self, topic: TopicT, key: bytes | None, value: Any, partition: int | None = None) -> None:
        """Queue a message; ``value`` is bytes or a JSON-able object."""
        if not isinstance(value, bytes):
            value = orjson.dumps(value)
        self._items.append((self._name(topic), key, value, partition))

    def put(self, table: TableT, partition: int, key: Any, value: Any) -> None:
        table.data[key] = value
        self._changelog(table, partition, key, value)

    def delete(self, table: TableT, partition: int, key: Any) -> None:
        if key in table.data:
            del table.data[key]
        self._changelog(table, partition, key, None)

    def _changelog(self, table: TableT, partition: int, key: Any, value: Any) -> None:
        raw_key = codecs.dumps(table.key_serializer, key)
        raw_value = None if value is None else codecs.dumps(table.value_serializer, value)
        self._items.append((self._name(table.changelog_topic), raw_key, raw_value, partition))

    def _name(self, topic: TopicT) -> str:
        name = self._names.get(id(topic))
        if name is None:
            name = self._names[id(topic)] = topic.get_topic_name()
        return name

    def __len__(self) -> int:
        return len(self._items)

    async def flush(self) -> None:
        """Hand every queued message to the producer (not waiting for acks: Faust's commit does).

        One record batch per partition, not one ``send`` per message: aiokafka's
        ``send`` costs a metadata check, a partitioner call and a delivery future per
        message, which was a tenth of a worker's time. Order within a partition is
        kept (its batches are queued in order), and a message goes to the partition
        ``send`` would have chosen. Faust's commit flushes the producer, batches
        included, before it commits offsets.
        """
        async with self._lock:
            producer = self._app.producer._ensure_producer()  # the aiokafka producer
            while self._items:
                items, self._items = self._items, []
                await self._send(producer, items)

    async def _send(self, producer: Any, items: list[Item]) -> None:
        batches: dict[tuple[str, int], Any] = {}
        for topic, key, value, partition in items:
            if partition is None:
                partition = await self._partition(producer, topic, key)
            tp = (topic, partition)
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                # Full (a batch holds at least one message, however large): queue it, start the next.
                await producer.send_batch(batch, topic, partition=partition)
                batch = batches[tp] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for (topic, partition), batch in batches.items():
            await producer.send_batch(batch, topic, partition=partition)

    async def _partition(self, producer: Any, topic: str, key: bytes | None) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            await producer.client._wait_on_metadata(topic)
            partitions = self._partitions[topic] = sorted(producer.client.cluster.partitions_for_topic(topic))
        if key is None:  # spread over the partitions that have a leader, as send() does
            return producer._partition(topic, None, None, None, None, None)
        known = self._partition_of.setdefault(topic, {})
        partition = known.get(key)
        if partition is None:
            if len(known) >= PARTITION_CACHE_KEYS:
                known.clear()
            partition = known[key] = producer._partitioner(key, partitions, partitions)
        return partition
