"""A batch is committed only once applied, and only by the worker that owns it (streams/batches.py).

Real Faust messages, acknowledged the way ``take_events`` does after each batch; the
consumer below records what Faust would then be allowed to commit. The real broker
cases (a worker stopped mid-batch, partitions moving) are ``ccpulse chaos``'s crash and
rebalance scenarios (tests/test_chaos.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.batches import NotApplied, applying


class Consumer:
    def __init__(self, assigned: set[TP] | None = None) -> None:
        self.committable: list[tuple[int, int]] = []
        self.assigned = assigned or set()

    def ack(self, message: ConsumerMessage) -> bool:
        self.committable.append((message.partition, message.offset))
        return True

    def assignment(self) -> set[TP]:
        return self.assigned


@dataclass
class FlowControl:
    active: bool = True

    def is_active(self) -> bool:
        return self.active


@dataclass
class App:
    consumer: Consumer
    consumer_generation_id: int = 1
    rebalancing: bool = False
    flow_control: FlowControl = field(default_factory=FlowControl)


@dataclass
class Event:
    message: ConsumerMessage


def event(partition: int, offset: int, generation: int = 1, streams: int = 1) -> Event:
    m = ConsumerMessage("events", partition, offset, 0.0, 0, None, b"k", b"v", None, None,
                        generation_id=generation)
    m.refcount = streams  # the conductor's one reference per stream that receives it
    return Event(m)


def take_events_ack(app: App, batch: list[Event]) -> None:
    """What Faust's take_events does after a batch, whatever happened to it."""
    for e in batch:
        e.message.ack(app.consumer)


async def run(app: App, batch: list[Event], fenced: bool, body: Any = None) -> list[int]:
    seen: list[int] = []
    try:
        async with applying(app, batch, fenced=fenced) as events:
            seen = [e.message.offset for e in events]
            if body is not None:
                await body()
    finally:
        take_events_ack(app, batch)
    return seen


def test_an_applied_batch_becomes_committable() -> None:
    app = App(Consumer())
    batch = [event(0, 1), event(0, 2)]
    assert asyncio.run(run(app, batch, fenced=False)) == [1, 2]
    assert app.consumer.committable == [(0, 1), (0, 2)]


@pytest.mark.parametrize("failure", [RuntimeError("sink broke"), asyncio.CancelledError()])
def test_a_batch_whose_work_failed_or_was_cancelled_is_never_committable(failure: BaseException) -> None:
    async def body() -> None:
        raise failure

    app = App(Consumer())
    with pytest.raises(type(failure)):
        asyncio.run(run(app, [event(0, 1), event(0, 2)], fenced=False, body=body))
    assert app.consumer.committable == []


def test_not_applied_leaves_the_batch_uncommitted_without_failing_the_agent() -> None:
    async def body() -> None:
        raise NotApplied("stopping before the write succeeded")

    app = App(Consumer())
    asyncio.run(run(app, [event(0, 1)], fenced=False, body=body))
    assert app.consumer.committable == []


def test_a_message_read_by_two_agents_waits_for_both() -> None:
    app = App(Consumer())
    shared = event(0, 7, streams=2)

    async def other_agent_acks_meanwhile() -> None:
        shared.message.ack(app.consumer)  # e.g. the raw-events writer on the same topic
        assert app.consumer.committable == []

    asyncio.run(run(app, [shared], fenced=False, body=other_agent_acks_meanwhile))
    assert app.consumer.committable == [(0, 7)]


def test_stale_events_wait_for_the_rebalance_and_only_owned_partitions_are_applied() -> None:
    kept_tp, moved_tp = TP("events", 0), TP("events", 1)
    app = App(Consumer({kept_tp, moved_tp}), consumer_generation_id=1)
    batch = [event(0, 10, generation=1), event(1, 20, generation=1), event(0, 11, generation=1)]

    async def scenario() -> list[int]:
        # A rebalance begins before the agent looks at its batch: partition 1 moves away.
        app.rebalancing, app.flow_control.active = True, False
        task = asyncio.create_task(run(app, batch, fenced=True))
        await asyncio.sleep(0.2)
        assert not task.done(), "applied while the rebalance was still under way"
        app.consumer.assigned = {kept_tp}
        app.consumer_generation_id = 2
        app.rebalancing, app.flow_control.active = False, True
        return await task

    assert asyncio.run(scenario()) == [10, 11]
    # The moved partition's event is left to its new owner: never committable here.
    assert app.consumer.committable == [(0, 10), (0, 11)]


def test_a_current_batch_is_applied_without_waiting() -> None:
    app = App(Consumer({TP("events", 0)}), consumer_generation_id=3)
    app.rebalancing = False
    assert asyncio.run(run(app, [event(0, 1, generation=3)], fenced=True)) == [1]


def test_a_stopping_worker_applies_nothing_and_commits_nothing() -> None:
    app = App(Consumer({TP("events", 0)}), consumer_generation_id=1)
    app.flow_control.active = False  # Faust suspends flow control when it stops

    async def scenario() -> None:
        task = asyncio.create_task(run(app, [event(0, 5)], fenced=True))
        await asyncio.sleep(0.2)
        task.cancel()  # the agent is stopped while it waits
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert app.consumer.committable == []
