"""A batch is committed only once applied (streams/batches.py).

Real Faust messages, acknowledged the way ``take_events`` does after each batch; the
consumer below records what Faust would then be allowed to commit. The real broker
cases (a worker stopped or killed mid-batch, partitions moving) are ``ccpulse chaos``'s
crash and rebalance scenarios (tests/test_chaos.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from faust.types.tuples import ConsumerMessage

from streams.batches import NotApplied, applying


class Consumer:
    def __init__(self) -> None:
        self.committable: list[tuple[int, int]] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.committable.append((message.partition, message.offset))
        return True


@dataclass
class App:
    consumer: Consumer


@dataclass
class Event:
    message: ConsumerMessage


def event(partition: int, offset: int, streams: int = 1) -> Event:
    m = ConsumerMessage("events", partition, offset, 0.0, 0, None, b"k", b"v", None, None)
    m.refcount = streams  # the conductor's one reference per stream that receives it
    return Event(m)


def take_events_ack(app: App, batch: list[Event]) -> None:
    """What Faust's take_events does after a batch, whatever happened to it."""
    for e in batch:
        e.message.ack(app.consumer)


async def run(app: App, batch: list[Event], body: Any = None) -> list[int]:
    seen: list[int] = []
    try:
        async with applying(batch) as events:
            seen = [e.message.offset for e in events]
            if body is not None:
                await body()
    finally:
        take_events_ack(app, batch)
    return seen


def test_an_applied_batch_becomes_committable() -> None:
    app = App(Consumer())
    batch = [event(0, 1), event(0, 2)]
    assert asyncio.run(run(app, batch)) == [1, 2]
    assert app.consumer.committable == [(0, 1), (0, 2)]


@pytest.mark.parametrize("failure", [RuntimeError("sink broke"), asyncio.CancelledError()])
def test_a_batch_whose_work_failed_or_was_cancelled_is_never_committable(failure: BaseException) -> None:
    async def body() -> None:
        raise failure

    app = App(Consumer())
    with pytest.raises(type(failure)):
        asyncio.run(run(app, [event(0, 1), event(0, 2)], body=body))
    assert app.consumer.committable == []


def test_not_applied_leaves_the_batch_uncommitted_without_failing_the_agent() -> None:
    async def body() -> None:
        raise NotApplied("stopping before the write succeeded")

    app = App(Consumer())
    asyncio.run(run(app, [event(0, 1)], body=body))
    assert app.consumer.committable == []


def test_a_message_read_by_two_agents_waits_for_both() -> None:
    app = App(Consumer())
    shared = event(0, 7, streams=2)

    async def other_agent_acks_meanwhile() -> None:
        shared.message.ack(app.consumer)  # e.g. the raw-events writer on the same topic
        assert app.consumer.committable == []

    asyncio.run(run(app, [shared], body=other_agent_acks_meanwhile))
    assert app.consumer.committable == [(0, 7)]
