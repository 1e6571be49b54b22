"""A flush hands every message batch to the producer before any table changelog batch
(streams/outbox.py, ``_send``). A table's change accounts for messages put before it
(an interaction's state for its FCR contact); handed over first, it could be stored
while a message it accounts for was lost to a kill -9, and the redelivered input would
then be taken as done (the chaos crash run lost FCR contacts that way). No broker: a
producer that records the order it is handed batches in."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams.outbox import Outbox


class _Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class _Table:
    key_serializer = value_serializer = "json"

    def __init__(self, name: str) -> None:
        self.data: dict[Any, Any] = {}
        self.changelog_topic = _Topic(name)


class _Batch:
    CAPACITY = 3  # small, so one flush fills several batches of a partition

    def __init__(self) -> None:
        self.values: list[bytes | None] = []

    def append(self, key: bytes | None, value: bytes | None, timestamp: Any) -> object | None:
        if len(self.values) >= self.CAPACITY:
            return None
        self.values.append(value)
        return object()


class _Producer:
    def __init__(self) -> None:
        self.handed: list[tuple[str, int, list[bytes | None]]] = []

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future:
        self.handed.append((topic, partition, batch.values))
        await asyncio.sleep(0)  # the real one may yield (a full partition queue): others run
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _outbox(producer: _Producer) -> Outbox:
    return Outbox(SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))


def test_changelogs_are_handed_over_after_every_message_of_the_flush() -> None:
    async def run() -> _Producer:
        producer = _Producer()
        outbox = _outbox(producer)
        contacts, partials = _Topic("contacts"), _Topic("partials")
        interactions, records = _Table("interactions-changelog"), _Table("records-changelog")
        # As a stage puts them: the state first, the messages it accounts for after it;
        # enough of each that several batches fill (full ones are queued mid-loop).
        for n in range(10):
            outbox.put(interactions, 0, f"i{n}", {"n": n})
            outbox.send(contacts, None, f"c{n}".encode(), n % 2)
            outbox.put(records, 1, "1", {"through": n})
            outbox.send(partials, None, f"p{n}".encode(), 0)
        await outbox.flush()
        return producer

    handed = asyncio.run(run()).handed
    kinds = ["changelog" if topic.endswith("-changelog") else "message" for topic, _, _ in handed]
    first_change = kinds.index("changelog")
    assert "message" not in kinds[first_change:], handed
    # Nothing lost, and each partition's values in the order they were put.
    by_tp: dict[tuple[str, int], list[bytes | None]] = {}
    for topic, partition, values in handed:
        by_tp.setdefault((topic, partition), []).extend(values)
    assert by_tp[("contacts", 0)] == [f"c{n}".encode() for n in range(0, 10, 2)]
    assert by_tp[("contacts", 1)] == [f"c{n}".encode() for n in range(1, 10, 2)]
    assert by_tp[("partials", 0)] == [f"p{n}".encode() for n in range(10)]
    assert [v for v in by_tp[("records-changelog", 1)]] == [b'{"through":%d}' % n for n in range(10)]
    assert len(by_tp[("interactions-changelog", 0)]) == 10
