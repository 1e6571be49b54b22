"""Table changes are stored by the commit, after the messages handed over before them
were delivered, each key once with its newest value (streams/outbox.py, ``checkpoint``).
A state sent with its messages could be stored while a message it accounts for was lost
to a kill -9 (the chaos crash run lost an FCR contact that way). No broker: a producer
that records what it is handed and when it delivers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

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
    def __init__(self) -> None:
        self.values: list[bytes | None] = []

    def append(self, key: bytes | None, value: bytes | None, timestamp: Any) -> object:
        self.values.append(value)
        return object()


class _Producer:
    """``send_batch`` records the batch as handed over; ``flush`` delivers every batch
    handed over so far (failing the first delivery to a topic in ``fail_first``)."""

    def __init__(self, fail_first: set[str] | None = None) -> None:
        self.log: list[tuple[str, str, list[bytes | None]]] = []
        self.pending: list[tuple[str, _Batch, asyncio.Future]] = []
        self.fail_first = set(fail_first or ())

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((topic, batch, future))
        self.log.append(("handed", topic, batch.values))
        # A changelog waited for by the commit is delivered as the broker answers.
        asyncio.get_running_loop().call_soon(self._deliver_one, topic, batch, future)
        return future

    def _deliver_one(self, topic: str, batch: _Batch, future: asyncio.Future) -> None:
        if future.done():
            return
        if topic in self.fail_first:
            self.fail_first.discard(topic)
            future.set_exception(RuntimeError("broker said no"))
            self.log.append(("failed", topic, batch.values))
        else:
            future.set_result(None)
            self.log.append(("delivered", topic, batch.values))
        self.pending = [p for p in self.pending if p[2] is not future]

    async def flush(self) -> None:
        for topic, batch, future in list(self.pending):
            self._deliver_one(topic, batch, future)
        await asyncio.sleep(0)


def _outbox(producer: _Producer) -> Outbox:
    return Outbox(SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))


async def _commit(outbox: Outbox, producer: _Producer) -> bool:
    """What the consumer's commit does (streams/kafka_consumer.py, ``_store_state``)."""
    changes = outbox.take_ready()
    await producer.flush()
    if not await outbox.settle():
        outbox.give_back(changes)
        return False
    return await outbox.checkpoint(changes)


PARTIALS, RECORDS = "app-window-partials", "app-fcr-records-changelog"


def test_a_flush_hands_over_the_messages_and_the_commit_stores_the_state_after_their_delivery() -> None:
    async def run() -> list[tuple[str, str, list[bytes | None]]]:
        producer = _Producer()
        outbox = _outbox(producer)
        table = _Table(RECORDS)
        outbox.send(_Topic(PARTIALS), b"w", b"final partial", 0)
        outbox.put(table, 0, "0", {"final_through": 60_000})
        await outbox.flush()
        assert [what for what, topic, _v in producer.log if topic == RECORDS] == []
        assert await _commit(outbox, producer)
        return producer.log

    log = asyncio.run(run())
    delivered = log.index(("delivered", PARTIALS, [b"final partial"]))
    handed = [n for n, (what, topic, _v) in enumerate(log) if what == "handed" and topic == RECORDS]
    assert len(handed) == 1 and delivered < handed[0], log


def test_a_key_changed_at_every_batch_is_stored_once_with_its_newest_value() -> None:
    async def run() -> list[tuple[str, str, list[bytes | None]]]:
        producer = _Producer()
        outbox = _outbox(producer)
        table = _Table(RECORDS)
        for n in range(5):
            outbox.put(table, 1, "w", {"n": n})
            outbox.send(_Topic(PARTIALS), b"w", b"p%d" % n, 1)
            await outbox.flush()
        outbox.delete(table, 1, "gone")
        await outbox.flush()
        assert await _commit(outbox, producer)
        assert await _commit(outbox, producer)  # nothing changed since: nothing stored again
        return producer.log

    stored = [values for what, topic, values in asyncio.run(run()) if what == "handed" and topic == RECORDS]
    assert stored == [[orjson.dumps({"n": 4}), None]], stored


def test_a_change_whose_flush_has_not_run_waits_for_a_later_commit() -> None:
    async def run() -> tuple[list[list[bytes | None]], list[list[bytes | None]]]:
        producer = _Producer()
        outbox = _outbox(producer)
        table = _Table(RECORDS)
        outbox.put(table, 0, "k", {"v": 1})
        outbox.send(_Topic(PARTIALS), b"k", b"not handed over yet", 0)
        assert await _commit(outbox, producer)
        first = [v for what, topic, v in producer.log if what == "handed" and topic == RECORDS]
        await outbox.flush()
        assert await _commit(outbox, producer)
        return first, [v for what, topic, v in producer.log if what == "handed" and topic == RECORDS]

    first, after = asyncio.run(run())
    assert first == [] and after == [[orjson.dumps({"v": 1})]]


def test_a_message_not_delivered_holds_the_state_back_until_it_is_sent_again() -> None:
    async def run() -> list[tuple[str, str, list[bytes | None]]]:
        producer = _Producer(fail_first={"app-contacts"})
        outbox = _outbox(producer)
        table = _Table("app-interactions-changelog")
        outbox.send(_Topic("app-contacts"), b"c", b"contact", 2)
        outbox.put(table, 2, "iid", {"steps": 3})
        await outbox.flush()
        # The contact fails once: the commit sends it again, and stores the state only after.
        assert await _commit(outbox, producer)
        assert outbox.failed_messages["app-contacts"] == 1
        return producer.log

    log = asyncio.run(run())
    changelog = [n for n, (what, topic, _v) in enumerate(log) if what == "handed" and topic.endswith("changelog")]
    contact = [n for n, (what, topic, _v) in enumerate(log) if what == "delivered" and topic == "app-contacts"]
    assert len(changelog) == 1 and contact and contact[0] < changelog[0], log


def test_a_state_the_broker_refused_is_stored_again_unless_a_newer_one_came() -> None:
    async def run() -> list[list[bytes | None]]:
        producer = _Producer(fail_first={RECORDS})
        outbox = _outbox(producer)
        table = _Table(RECORDS)
        outbox.put(table, 0, "a", {"v": 1})
        outbox.put(table, 0, "b", {"v": 1})
        await outbox.flush()
        assert not await _commit(outbox, producer)
        assert outbox.failure is not None and outbox.failed_messages[RECORDS] == 2
        outbox.put(table, 0, "b", {"v": 2})
        await outbox.flush()
        assert await _commit(outbox, producer)
        assert outbox.failure is None
        return [v for what, topic, v in producer.log if what == "handed" and topic == RECORDS]

    stored = asyncio.run(run())
    assert len(stored) == 2 and sorted(stored[1]) == sorted([orjson.dumps({"v": 1}), orjson.dumps({"v": 2})]), stored


def test_what_a_stopping_worker_did_not_store_is_dropped() -> None:
    async def run() -> list[tuple[str, str, list[bytes | None]]]:
        producer = _Producer()
        outbox = _outbox(producer)
        table = _Table(RECORDS)
        outbox.put(table, 0, "a", {"v": 1})
        await outbox.flush()
        outbox.put(table, 0, "b", {"v": 1})
        outbox.drop_ready()
        await outbox.flush()
        assert not outbox.has_ready()
        assert await _commit(outbox, producer)
        return producer.log

    assert asyncio.run(run()) == []
