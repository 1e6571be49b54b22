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


class Outbox:
    def __init__(self, app: AppT) -> None:
        self._app = app
        self._items: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self._lock = asyncio.Lock()
        self._names: dict[int, str] = {}

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
        """Hand every queued message to the producer (not waiting for acks: Faust's commit does)."""
        async with self._lock:
            send = self._app.producer.send
            while self._items:
                items, self._items = self._items, []
                for topic, key, value, partition in items:
                    await send(topic, key, value, partition, None, None)
