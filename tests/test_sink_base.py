"""The batching sink base (sinks/base.py) against fake destinations, without any service:
rows kept per partition and in order, nothing dropped while the destination pushes back,
the backpressure signal's own delay honoured, the pause and resume hooks, the status a
group of sinks reports, and a stop that gives the batch up unwritten but still held.

The ClickHouse table sinks built on it are tested against a real store in
tests/test_sink_outage.py and tests/test_sink_outage_integration.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import pytest

from sinks.base import BatchingSink, SinkBackpressureError, SinkBatch, SinkGroup


class FlakyDestination(BatchingSink):
    """Pushes back the first ``failures`` writes, then keeps every batch it was handed."""

    kind = "Fake"

    def __init__(self, failures: int, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__("fake", **kwargs)
        self.failures, self.retry_after = failures, retry_after
        self.written: list[list[SinkBatch]] = []
        self.attempts: list[float] = []
        self.events: list[str] = []

    async def write(self, batches: Sequence[SinkBatch]) -> None:
        self.attempts.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            raise SinkBackpressureError("destination down", self.retry_after)
        self.written.append([SinkBatch(b.partition, list(b.rows), b.since) for b in batches])

    def on_paused(self) -> None:
        self.events.append("paused")

    def on_resumed(self) -> None:
        self.events.append("resumed")


def rows_of(sink: FlakyDestination) -> list[tuple[int, Any]]:
    return [(b.partition, row) for batches in sink.written for b in batches for row in b.rows]


def test_a_batch_pushed_back_is_written_once_whole_and_in_order() -> None:
    sink = FlakyDestination(failures=3, initial_backoff=0.001, max_backoff=0.004)
    backoffs: list[float] = []
    sink.on_error = lambda name, exc: backoffs.append(sink.retry_backoff())
    for i in range(5):
        sink.add(("a", i), partition=1)
        sink.add(("b", i), partition=0)
    assert sink.pending_rows() == 10
    assert asyncio.run(sink.flush()) is True
    # One write after three refused: every row, each once, partition by partition in arrival order.
    assert len(sink.attempts) == 4 and len(sink.written) == 1
    assert rows_of(sink) == [(0, ("b", i)) for i in range(5)] + [(1, ("a", i)) for i in range(5)]
    assert backoffs == [0.001, 0.002, 0.004]  # doubling, capped
    assert sink.events == ["paused", "resumed"]  # once per outage, not per retry
    assert sink.healthy and sink.failing_since() is None and sink.retry_backoff() == 0
    assert sink.pending_rows() == 0 and sink.oldest_unwritten_age() == 0
    assert asyncio.run(sink.flush()) is True and len(sink.attempts) == 4  # nothing left: no write


def test_while_pushed_back_the_sink_says_why_since_when_and_what_it_holds() -> None:
    sink = FlakyDestination(failures=10**6, initial_backoff=0.05, max_backoff=0.05)
    seen: dict[str, Any] = {}

    async def run() -> bool:
        for i in range(7):
            sink.add(i)
        before = time.time()
        task = asyncio.create_task(sink.flush(lambda: bool(seen)))
        while len(sink.attempts) < 3:
            await asyncio.sleep(0.01)
        seen.update(healthy=sink.healthy, since=sink.failing_since(), before=before, error=sink.last_error,
                    pending=sink.pending_rows(), age=sink.oldest_unwritten_age(), backoff=sink.retry_backoff())
        return await asyncio.wait_for(task, 2)

    assert asyncio.run(run()) is False  # stopped while the destination was still down
    assert seen["healthy"] is False and seen["before"] - 1 <= seen["since"] <= time.time()
    assert seen["error"] == "destination down" and seen["pending"] == 7 and seen["backoff"] == 0.05
    assert seen["age"] >= 0.08  # two backoffs at least
    # Given up, not dropped: the rows are still held, and the next flush writes them.
    assert sink.pending_rows() == 7 and sink.written == []
    sink.failures = 0
    assert asyncio.run(sink.flush()) is True and rows_of(sink) == [(0, i) for i in range(7)]


def test_the_delay_the_destination_asks_for_wins_over_the_backoff() -> None:
    sink = FlakyDestination(failures=2, retry_after=0.2, initial_backoff=0.001, max_backoff=0.001)
    sink.add("x")
    assert asyncio.run(sink.flush()) is True
    gaps = [b - a for a, b in zip(sink.attempts, sink.attempts[1:])]
    assert len(gaps) == 2 and all(gap >= 0.19 for gap in gaps), gaps


def test_a_stopping_worker_is_not_held_by_a_long_backoff() -> None:
    sink = FlakyDestination(failures=10**6, initial_backoff=30, max_backoff=30)
    sink.add("x")
    stop: list[bool] = []

    async def run() -> bool:
        task = asyncio.create_task(sink.flush(lambda: bool(stop)))
        await asyncio.sleep(0.2)
        stop.append(True)
        return await asyncio.wait_for(task, 3)  # woken from its 30 s backoff, not after it

    assert asyncio.run(run()) is False and sink.pending_rows() == 1


def test_an_error_that_is_not_backpressure_is_not_retried_and_keeps_the_rows() -> None:
    class Broken(FlakyDestination):
        async def write(self, batches: Sequence[SinkBatch]) -> None:
            raise TypeError("a bug, not an outage")

    sink = Broken(failures=0)
    sink.add("x")
    with pytest.raises(TypeError):
        asyncio.run(sink.flush())
    assert sink.pending_rows() == 1


def test_rows_added_during_a_write_wait_for_the_next_flush() -> None:
    class Slow(FlakyDestination):
        async def write(self, batches: Sequence[SinkBatch]) -> None:
            await asyncio.sleep(0.05)
            await super().write(batches)

    sink = Slow(failures=1, initial_backoff=0.01)

    async def run() -> None:
        sink.add(1)
        task = asyncio.create_task(sink.flush())
        await asyncio.sleep(0.02)
        sink.add(2)
        await task
        assert rows_of(sink) == [(0, 1)] and sink.pending_rows() == 1
        await sink.flush()

    asyncio.run(run())
    assert rows_of(sink) == [(0, 1), (0, 2)]


def test_a_group_reports_the_worst_of_its_sinks() -> None:
    group = SinkGroup()
    ok, down = group.add(FlakyDestination(0)), group.add(FlakyDestination(10**6, initial_backoff=0.3))
    down.name = "down"
    ok.add("a")
    down.add("b")
    down.add("c")

    async def run() -> bool:
        assert await ok.flush()
        return await down.flush(lambda: len(down.attempts) >= 1)

    assert asyncio.run(run()) is False
    assert not group.healthy and group.failing() == ["down"]
    assert group.failing_since() == down.failing_since() and group.retry_backoff() == 0.3
    assert group.pending_rows() == 2 and group.oldest_unwritten_age() > 0
    assert group.last_error() == "down: destination down"
    down.failures = 0
    assert asyncio.run(down.flush()) is True
    assert group.healthy and group.failing() == [] and group.pending_rows() == 0
