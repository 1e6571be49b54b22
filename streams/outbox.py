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
  commits offsets, and the consumer (streams/kafka_consumer.py) then asks ``settle``
  whether everything was *delivered*: a batch the broker refused (a record larger
  than its topic allows, say) holds the offsets back, and its messages are sent
  again until they are delivered. Only then are offsets committed.
- a stored state never accounts for a lost message. Table changelogs are not sent
  with the messages: a flush keeps each changed key's newest value (``_ready``), and
  the commit (``checkpoint``) writes them only after every message handed over before
  them was delivered, then commits the offsets (Quix Streams' checkpoint order).
  Sent with the messages, a kill -9 could leave a state stored (an FCR record "final
  through T") while a message it accounts for (the final partial of a window before
  T) was lost; the restarted stage took the redelivered input as done and never sent
  it again. A key changed many times between two commits (a merged window, a chat)
  is also written once, not at each batch.

Tables are written here too (the store first, then the changelog with an
explicit partition): ccpulse's keys always belong to a known partition, and
its timers must persist state outside any stream event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Callable

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
# (changelog topic, key) -> (value, None for a delete; partition): a table key's newest change
Changes = dict[tuple[str, bytes], tuple[bytes | None, int]]


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
        # Table changes put since the last flush (their messages are not handed over yet),
        # and those of flushes done (theirs are): the next commit writes the latter.
        self._staged: Changes = {}
        self._ready: Changes = {}
        self._changes_failed = False  # the last checkpoint gave changes back
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
        self._staged[(self._name(table.changelog_topic), raw_key)] = (
            None if raw_value is None else compact(raw_value), partition)

    def _name(self, topic: TopicT) -> str:
        name = self._names.get(id(topic))
        if name is None:
            name = self._names[id(topic)] = topic.get_topic_name()
        return name

    def __len__(self) -> int:
        return len(self._items) + len(self._staged)

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
            # Nothing queued (no await since the check): every message of every change put
            # so far is with the producer, so the next commit may write those changes.
            self._ready.update(self._staged)
            self._staged = {}

    def take_ready(self) -> Changes:
        """The changes a commit writes (``checkpoint``), taken before it flushes the producer."""
        ready, self._ready = self._ready, {}
        return ready

    def has_ready(self) -> bool:
        return bool(self._ready)

    def give_back(self, changes: Changes) -> None:
        """Changes a commit could not write: the next one writes them (unless newer ones came)."""
        for key, change in changes.items():
            self._ready.setdefault(key, change)

    def drop_ready(self) -> None:
        """Forget the changes not written: the worker stops or an agent crashed, so no
        offset is committed either, and the next owner rebuilds from the stored state and
        reads again from the last commit (a crashed batch's half-written state never stored)."""
        self._staged, self._ready = {}, {}

    async def checkpoint(self, changes: Changes) -> bool:
        """Write ``changes`` (from ``take_ready``, after the producer delivered every
        message handed over before they were taken) and wait for them. False if any was
        not delivered: it is given back, and the offsets wait for the next commit."""
        if not changes:
            return True
        producer = aiokafka_producer(self._app)
        items = [(topic, key, value, partition) for (topic, key), (value, partition) in changes.items()]
        deliveries: list[tuple[asyncio.Future, list[Item]]] = []
        await self._send(producer, items, deliveries.append)
        failed: Changes = {}
        for delivery, members in deliveries:
            try:
                await asyncio.shield(delivery)
            except Exception as exc:  # noqa: BLE001 - any refusal holds the commit back
                self._note_failure(members, exc)
                for topic, key, value, partition in members:
                    failed[(topic, key)] = (value, partition)  # type: ignore[index]
        self._changes_failed = bool(failed)
        if failed:
            self.give_back(failed)
            return False
        if self.failure is not None and not self._failed:
            log.info("the table changes the producer failed to deliver are delivered now (%s)", self.failure)
            self.failure = None
        return True

    async def _send(self, producer: Any, items: list[Item],
                    track: Callable[[tuple[asyncio.Future, list[Item]]], None] | None = None) -> None:
        """Hand ``items`` to the producer, one record batch per partition; each batch's
        delivery goes to ``track`` (default: ``_track``, read at the next ``settle``)."""
        keep = track or (lambda pair: self._track(*pair))
        batches: dict[tuple[str, int], tuple[Any, list[Item]]] = {}
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
                # Full (a batch holds at least one message, however large): queue it, start the next.
                keep((await producer.send_batch(batch, topic, partition=partition), members))
                batch, members = batches[tp] = producer.create_batch(), []
                batch.append(key=key, value=value, timestamp=None)
            members.append(item)
        for (topic, partition), (batch, members) in batches.items():
            keep((await producer.send_batch(batch, topic, partition=partition), members))

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
        self._note_failure(items, exc)
        self._failed += items

    def _note_failure(self, items: list[Item], exc: BaseException) -> None:
        if self.failure is None:
            log.error("the producer could not deliver %d message(s) to %s: %r; offsets are not "
                      "committed until they are re-sent and delivered", len(items), items[0][0], exc)
        self.failure = f"{items[0][0]}: {type(exc).__name__}: {exc}"[:300]
        for topic, *_rest in items:
            self.failed_messages[topic] += 1

    async def settle(self) -> bool:
        """After the producer's flush: True when everything handed to it was delivered.

        Otherwise the messages that failed are sent again, as they were, and waited for;
        False while any is still not delivered. (Table changes are written after this, by
        ``checkpoint``: they wait for the messages, never the other way round.)
        """
        for delivery in [d for d in self._in_flight if d.done()]:
            self._delivered(delivery)
        if self._failed:
            async with self._lock:
                producer = aiokafka_producer(self._app)
                retry, self._failed = self._failed, []
                await self._send(producer, retry)
            await producer.flush()
            for delivery in [d for d in self._in_flight if d.done()]:
                self._delivered(delivery)
        # Batches still in flight were handed over after the flush began: they belong to
        # records acknowledged later, whose offsets are not part of this commit.
        if self._failed:
            return False
        if self.failure is not None and not self._changes_failed:
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
