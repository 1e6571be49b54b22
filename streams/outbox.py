"""Everything a stage produces goes through one ``Outbox``: messages and table changelogs.

Faust's ``Topic.send``/``send_soon`` and ``Table.__setitem__`` cost tens of
microseconds each (futures, callbacks, a one-message-at-a-time buffer); a stage
that produces several messages per event spends most of its time there. The
outbox collects plain bytes while a batch is processed and hands them to the
Kafka producer in one loop at the end of the batch.

Guarantees kept:
- order: one list, flushed under a lock, so messages reach the producer in the
  order they were put (a watermark tick never overtakes the events it covers), and
  a flush's table changelogs after all of its messages (``_send`` says why);
- at-least-once: every agent flushes before it takes its next batch, and Faust
  acknowledges a batch only then; Faust's commit flushes the producer before it
  commits offsets, and the consumer (streams/kafka_consumer.py) then asks ``settle``
  whether everything was *delivered*: a batch the broker refused (a record larger
  than its topic allows, say) holds the offsets back, and its messages are sent
  again until they are delivered (a table's changelog as the table holds it then,
  so a re-sent state never overwrites a newer one). Only then are offsets committed.

Tables are written here too (the store first, then the changelog with an
explicit partition): ccpulse's keys always belong to a known partition, and
its timers must persist state outside any stream event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import orjson
from faust.serializers import codecs
from faust.types import AppT, TableT, TopicT
from streams.kafka_consumer import aiokafka_producer, key_partition_of, keyless_partition, topic_partitions


log = logging.getLogger(__name__)

PARTITION_CACHE_KEYS = 10_000  # per topic (a few MB in all): the keys of the open interactions and windows
# orjson 3.13 allocates every ``dumps`` result at about 4 KiB (ijl/orjson#483), and a message
# waits here until the broker acknowledged it: thousands per checkpoint while a backlog is
# read, each holding a page of the heap. Values shorter than this are copied to their size.
COMPACT_BELOW = 4096


def compact(value: bytes) -> bytes:
    """``value`` in an allocation of its own size (a copy of about 50 ns for a short one)."""
    return memoryview(value).tobytes() if len(value) < COMPACT_BELOW else value

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
        self._tables: dict[str, TableT] = {}  # changelog topic -> its table
        # Batches handed to the producer, until their delivery is known: future -> its messages.
        self._in_flight: dict[asyncio.Future, list[Item]] = {}
        self._failed: list[Item] = []  # messages of batches the producer could not deliver
        # Why the last delivery failed, until everything failed since was delivered again.
        self.failure: str | None = None
        self.failed_messages: Counter = Counter()  # topic -> messages not delivered (re-sends too)

    def send(self, topic: TopicT, key: bytes | None, value: Any, partition: int | None = None) -> None:
        """Queue a message; ``value`` is bytes or a JSON-able object."""
        if not isinstance(value, bytes):
            value = orjson.dumps(value)
        self._items.append((self._name(topic), key, compact(value), partition))

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
        name = self._name(table.changelog_topic)
        self._tables.setdefault(name, table)
        self._items.append((name, raw_key, None if raw_value is None else compact(raw_value), partition))

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
            producer = aiokafka_producer(self._app)
            while self._items:
                items, self._items = self._items, []
                await self._send(producer, items)

    async def deliver(self) -> None:
        """``flush``, then wait until the producer has sent everything handed to it: before a
        revoked partition's next owner reads its changelogs (Faust's own flush in the
        revocation ran before the stages' last checkpoint)."""
        await self.flush()
        await self._app.producer.flush()

    async def _send(self, producer: Any, items: list[Item]) -> None:
        """Hand ``items`` to the producer, one record batch per partition: every batch of
        a message topic first, in the order the messages were put, then the changelogs.

        A table's change accounts for messages put before it (the FCR record's "final
        through T" for the final partials of the windows before T, an interaction's
        state for its contact). aiokafka sends a node's batches in the order they were
        handed over (``add_batch`` waits while the partition's previous batch is queued,
        and a drain takes every batch ready), so handed over after the messages, a
        change is never stored while a message it accounts for is lost to a kill -9:
        the redelivered input finds the state before it and sends the messages again
        (consumers take them idempotently). In the order put, a change put first could
        be drained alone while a message batch waited for its partition (the chaos
        crash run lost FCR contacts that way).
        """
        batches: dict[tuple[str, int], tuple[Any, list[Item]]] = {}
        full: list[tuple[str, int, Any, list[Item]]] = []  # in the order they filled
        for item in items:
            topic, key, value, partition = item
            if partition is None:
                partition = await self._partition(producer, topic, key)
                item = (topic, key, value, partition)
            tp = (topic, partition)
            batch, members = batches.get(tp) or (None, [])
            if batch is None:
                batch, members = batches[tp] = producer.create_batch(), []
            if batch.append(key=key, value=value, timestamp=None) is None:
                # Full (a batch holds at least one message, however large): keep it, start the next.
                full.append((topic, partition, batch, members))
                batch, members = batches[tp] = producer.create_batch(), []
                batch.append(key=key, value=value, timestamp=None)
            members.append(item)
        # A partition's full batches before its last one, so each partition keeps its order;
        # the sort is stable: messages, then changelogs, each still in that order.
        ordered = full + [(topic, partition, batch, members)
                          for (topic, partition), (batch, members) in batches.items()]
        ordered.sort(key=lambda b: b[0] in self._tables)
        for topic, partition, batch, members in ordered:
            self._track(await producer.send_batch(batch, topic, partition=partition), members)

    def _track(self, delivery: asyncio.Future, items: list[Item]) -> None:
        self._in_flight[delivery] = items
        # Reads the outcome as soon as it is known: a failure is never left unseen in
        # its future ("Future exception was never retrieved").
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future) -> None:
        items = self._in_flight.pop(delivery, None)
        if items is None:
            return  # already seen
        exc = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if exc is None:
            return
        if self.failure is None:
            log.error("the producer could not deliver %d message(s) to %s: %r; offsets are not "
                      "committed until they are re-sent and delivered", len(items), items[0][0], exc)
        self.failure = f"{items[0][0]}: {type(exc).__name__}: {exc}"[:300]
        self._failed += items
        for topic, *_rest in items:
            self.failed_messages[topic] += 1

    async def settle(self) -> bool:
        """After the producer's flush: True when everything handed to it was delivered.

        Otherwise the messages that failed are sent again (each table key once, with the
        value the table holds now) and waited for; False while any is still not delivered.
        """
        for delivery in [d for d in self._in_flight if d.done()]:
            self._delivered(delivery)
        if self._failed:
            async with self._lock:
                producer = aiokafka_producer(self._app)
                retry, self._failed = self._failed, []
                await self._send(producer, self._resend(retry))
            await producer.flush()
            for delivery in [d for d in self._in_flight if d.done()]:
                self._delivered(delivery)
        # Batches still in flight were handed over after the flush began: they belong to
        # records acknowledged later, whose offsets are not part of this commit.
        if self._failed:
            return False
        if self.failure is not None:
            log.info("the messages the producer failed to deliver are delivered now (%s)", self.failure)
            self.failure = None
        return True

    def health_part(self) -> dict[str, Any]:
        """The ``producer`` part of /health."""
        if self.failure is None:
            return {"ok": True, "detail": "every message delivered"}
        return {"ok": False, "detail": f"not delivered ({self.failure}); re-sent every commit interval, "
                                       "input offsets are not committed until it is delivered",
                "messages_waiting": len(self._failed)}

    def _resend(self, items: list[Item]) -> list[Item]:
        """What to send again for ``items``: a table's changelog as the table holds it now
        (a failed older state must not overwrite a newer one), every other message as it was."""
        out: list[Item] = []
        current: dict[tuple[str, bytes | None], int] = {}  # (changelog, key) -> its index in ``out``
        for topic, key, value, partition in items:
            table = self._tables.get(topic)
            if table is None:
                out.append((topic, key, value, partition))
                continue
            now = table.data.get(codecs.loads(table.key_serializer, key))
            raw = None if now is None else codecs.dumps(table.value_serializer, now)
            if (topic, key) in current:
                out[current[(topic, key)]] = (topic, key, raw, partition)
            else:
                current[(topic, key)] = len(out)
                out.append((topic, key, raw, partition))
        return out

    async def _partition(self, producer: Any, topic: str, key: bytes | None) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = await topic_partitions(producer, topic)
        if key is None:  # spread over the partitions that have a leader, as send() does
            return keyless_partition(producer, topic)
        known = self._partition_of.setdefault(topic, {})
        partition = known.get(key)
        if partition is None:
            if len(known) >= PARTITION_CACHE_KEYS:
                known.clear()
            partition = known[key] = key_partition_of(producer, key, partitions)
        return partition
