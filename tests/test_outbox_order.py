"""The outbox hands a table's changelog to the producer only after every message queued
before it is delivered: a stored state must never account for a message a crash lost
(the chaos crash run lost an FCR contact that way). No broker: a producer that records."""

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
    def append(self, key: bytes | None, value: bytes | None, timestamp: Any) -> object:
        return object()


class _Producer:
    """Records each batch handed over and whether the broker acknowledged it yet; ``flush``
    delivers what was handed over (failing a topic's first delivery when asked)."""

    def __init__(self, fail_first: set[str] | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.pending: list[tuple[str, asyncio.Future]] = []
        self.fail_first = set(fail_first or ())

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((topic, future))
        self.log.append(("handed", topic))
        return future

    async def flush(self) -> None:
        for topic, future in self.pending:
            if topic in self.fail_first:
                self.fail_first.discard(topic)
                future.set_exception(RuntimeError("broker said no"))
                self.log.append(("failed", topic))
            else:
                future.set_result(None)
                self.log.append(("delivered", topic))
        self.pending = []
        await asyncio.sleep(0)


def _outbox(producer: _Producer) -> Outbox:
    return Outbox(SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))


def test_a_changelog_is_handed_over_only_after_the_messages_before_it_are_delivered() -> None:
    async def run() -> list[tuple[str, str]]:
        producer = _Producer()
        outbox = _outbox(producer)
        table = _Table("app-fcr-records-changelog")
        outbox.send(_Topic("app-window-partials"), b"w", b"final partial", 0)
        outbox.put(table, 0, "0", {"final_through": 60_000})
        outbox.send(_Topic("app-window-partials"), None, b"clock", 1)
        await outbox.flush()
        return producer.log

    log = asyncio.run(run())
    changelog = log.index(("handed", "app-fcr-records-changelog"))
    delivered = [n for n, (what, topic) in enumerate(log) if what == "delivered" and topic == "app-window-partials"]
    assert len(delivered) == 2 and max(delivered) < changelog, log


def test_a_message_that_failed_is_delivered_again_before_the_changelog() -> None:
    async def run() -> tuple[list[tuple[str, str]], dict[str, int]]:
        producer = _Producer(fail_first={"app-contacts"})
        outbox = _outbox(producer)
        table = _Table("app-interactions-changelog")
        outbox.send(_Topic("app-contacts"), b"c", b"contact", 2)
        outbox.put(table, 2, "iid", {"steps": 3})
        await outbox.flush()
        await producer.flush()
        return producer.log, dict(outbox.failed_messages)

    log, failed = asyncio.run(run())
    assert failed == {"app-contacts": 1}
    assert log.index(("delivered", "app-contacts")) < log.index(("handed", "app-interactions-changelog")), log


def test_messages_alone_are_not_waited_for() -> None:
    async def run() -> list[tuple[str, str]]:
        producer = _Producer()
        outbox = _outbox(producer)
        outbox.send(_Topic("app-window-partials"), b"w", b"partial", 0)
        await outbox.flush()
        return producer.log

    assert asyncio.run(run()) == [("handed", "app-window-partials")]
