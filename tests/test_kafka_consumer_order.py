"""InOrderTracker: under any interleaving of fetches, seeks and cancelled deliveries,
no record is ever committed without being delivered, and reading never stalls.

The model is one partition of a topic whose offsets have real holes (transaction
markers, compaction). ``Fetcher`` stands for aiokafka: it returns the records from
its position on and moves past them; a seek moves the position. Records already
handed out in a batch stay in that batch: exactly the stale batch that made
Faust's own loop commit unread offsets as a "gap" after a seek. Faust's loop
may also filter a batch out (``drop``); the records are then gone from aiokafka,
and nothing later may come to show the jump: the clean run at the end reads no
new input. (A fetch whose caller is cancelled in a rebalance is not modelled:
InOrderConsumer hands its records to the next loop.)
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from streams.kafka_consumer import FetchInFlight, InOrderTracker, started_inline

TP = ("calls", 0)


class Fetcher:
    def __init__(self, records: list[int]) -> None:
        self.records = records
        self.position = 0

    def fetch(self, n: int) -> list[int]:
        batch = [o for o in self.records if o >= self.position][:n]
        if batch:
            self.position = batch[-1] + 1
        return batch


class Model:
    """The consumer loop of streams.kafka_consumer, driven step by step."""

    def __init__(self, records: list[int]) -> None:
        self.records = records
        self.fetcher = Fetcher(records)
        self.order = InOrderTracker()
        self.committed = 0
        self.done: set[int] = set()          # delivered or committed as a gap
        self.gaps: set[int] = set()
        self.delivered: set[int] = set()
        self.batch: list[int] = []
        self.batch_clock = 0
        self.seek_target: int | None = None  # a seek under way
        self.seek_applied = False            # ... and aiokafka's position already moved
        self.order.seek_started([TP])        # the assignment's first seek
        self.order.seek_ended([TP], {TP: 0})

    def fetch(self, n: int) -> None:
        if self.batch:
            return  # the loop fetches again only once it has walked the whole batch
        for tp in self.order.undelivered():  # the loop's first step
            self.refetch(tp)
        self.batch_clock = self.order.clock
        self.batch = self.fetcher.fetch(n)
        if self.batch:
            self.order.fetched(TP, self.batch[-1] + 1)

    def refetch(self, tp: Any) -> None:
        target = self.order.refetch_from(tp)
        if target is not None:
            self.order.seek_started([tp], refetch=True)
            self.fetcher.position = target
            self.order.seek_ended([tp], {tp: target})

    def drop(self) -> None:
        """Faust's loop filters out the rest of a batch: its partition was paused or its
        stream buffer filled while the fetch was out, or a rebalance began."""
        self.batch = []

    def step(self, deliver: bool, seek_meanwhile: bool = False) -> None:
        if not self.batch:
            return
        offset = self.batch.pop(0)
        verdict = self.order.accept(TP, offset, self.batch_clock)
        if verdict is False:
            return
        if verdict is None:
            self.refetch(TP)
            self.batch = []  # the real loop skips the rest of this partition's batch too
            return
        expected = self.order.expected(TP)
        if expected is not None and offset > expected:
            hole = set(range(expected, offset))
            self.gaps |= hole
            self.done |= hole
        if not deliver:
            return
        self.delivered.add(offset)
        self.done.add(offset)
        if seek_meanwhile:  # a seek landed while the stream took the record: it decides
            self.begin_seek()
            self.end_seek()
            return
        self.order.delivered(TP, offset)

    def begin_seek(self) -> None:
        if self.seek_target is None:
            self.seek_target = self.committed
            self.order.seek_started([TP])

    def apply_seek(self) -> None:
        if self.seek_target is not None and not self.seek_applied:
            self.fetcher.position = self.seek_target
            self.seek_applied = True

    def end_seek(self) -> None:
        if self.seek_target is not None:
            self.apply_seek()
            self.order.seek_ended([TP], {TP: self.seek_target})
            self.seek_target = None
            self.seek_applied = False

    def commit(self) -> None:
        while self.committed in self.done:
            self.committed += 1

    def run(self, op: str, batch: int) -> None:
        if op == "fetch":
            self.fetch(batch)
        elif op in ("deliver", "cancel", "seek_meanwhile"):
            self.step(deliver=op != "cancel", seek_meanwhile=op == "seek_meanwhile")
        elif op == "seek":
            self.begin_seek()
            self.end_seek()
        else:
            getattr(self, op)()


OPS = ["fetch", "deliver", "deliver", "deliver", "cancel", "seek_meanwhile", "seek", "begin_seek",
       "apply_seek", "end_seek", "commit", "drop"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=5, max_size=60),  # record offsets before holes
       st.lists(st.sampled_from(OPS), max_size=300),
       st.integers(1, 8))
def test_nothing_committed_unread_and_reading_completes(holes: list[int], ops: list[str], batch: int) -> None:
    records = sorted({o + i * 3 for i, o in enumerate(holes)})  # with real holes between
    m = Model(records)
    for op in ops:
        m.run(op, batch)
        # Safety, at every step: a record is never counted as a gap.
        assert not (m.gaps & set(records)), f"records {sorted(m.gaps & set(records))} committed unread"
    m.end_seek()
    for _ in range(4 * len(records) + 10):   # then a clean run must read everything
        if not m.batch:
            m.fetch(batch)
        m.step(deliver=True)
        m.commit()
    assert not (m.gaps & set(records))
    assert set(records) <= m.delivered
    assert m.committed == records[-1] + 1


def test_a_stale_batch_after_a_seek_is_refetched_not_skipped() -> None:
    """The chaos-run failure, step by step: a batch fetched at 20..52 is still being
    walked when the partition is sought back to its committed offset 20."""
    order = InOrderTracker()
    order.seek_started([TP])
    order.seek_ended([TP], {TP: 20})
    stale_clock = order.clock
    assert order.accept(TP, 20, stale_clock) is True
    order.delivered(TP, 20)
    order.seek_started([TP])                 # Faust resumes after recovery: seek to committed
    order.seek_ended([TP], {TP: 20})
    assert order.accept(TP, 21, stale_clock) is None   # Faust would have committed 20..20 as a gap
    assert order.refetch_from(TP) == 20
    fresh = order.clock
    assert order.accept(TP, 20, fresh) is True
    order.delivered(TP, 20)
    assert order.accept(TP, 20, fresh) is False        # a duplicate
    assert order.accept(TP, 23, fresh) is None         # a hole is re-fetched once to be sure


def test_a_hole_counts_only_when_a_refetch_shows_it_again() -> None:
    order = InOrderTracker()
    order.seek_started([TP])
    order.seek_ended([TP], {TP: 5})
    assert order.accept(TP, 9, order.clock) is None     # 5..8 may be there: re-fetch to be sure
    assert order.refetch_from(TP) == 5
    stale = order.clock
    order.seek_started([TP], refetch=True)
    order.seek_ended([TP], {TP: 5})
    assert order.accept(TP, 9, stale) is None           # not from a batch after the re-fetch
    order.seek_started([TP], refetch=True)
    order.seek_ended([TP], {TP: 5})
    assert order.accept(TP, 9, order.clock) is True     # the same hole again: real
    order.seek_started([TP], refetch=True)
    order.seek_ended([TP], {TP: 9})
    assert order.accept(TP, 12, order.clock) is None
    order.seek_started([TP])                            # a rebalance: suspicion starts over
    order.seek_ended([TP], {TP: 9})
    assert order.accept(TP, 12, order.clock) is None


def test_nothing_is_delivered_while_a_seek_is_under_way() -> None:
    order = InOrderTracker()
    order.seek_started([TP])
    assert order.accept(TP, 0, order.clock) is None
    assert order.refetch_from(TP) is None    # the seek under way decides where reading resumes
    order.seek_ended([TP], {TP: 0})
    assert order.accept(TP, 0, order.clock) is True


def test_random_interleavings_smoke() -> None:
    # A fixed-seed sweep wider than hypothesis' examples, cheap enough for CI.
    rng = random.Random(11)
    for _ in range(300):
        records = sorted(rng.sample(range(200), 60))
        m = Model(records)
        for _ in range(400):
            m.run(rng.choice(OPS), rng.randint(1, 10))
        assert not (m.gaps & set(records))


# ---------------------------------------------------------------- FetchInFlight

class ThreadFetch:
    """Stands for the consumer thread: each fetch waits until the test releases it."""

    def __init__(self) -> None:
        self.started = 0
        self.pending: list[asyncio.Future] = []

    async def start(self) -> Any:
        self.started += 1
        promise = asyncio.get_running_loop().create_future()
        self.pending.append(promise)
        return await promise


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _asking(fetch: FetchInFlight, thread: ThreadFetch, clock: int) -> asyncio.Future:
    """A caller of ``fetch.get``, once its fetch (if it starts one) waits in the thread."""
    caller = asyncio.ensure_future(fetch.get(thread.start, clock=clock))
    await _settle()
    return caller


def test_a_cancelled_caller_leaves_its_records_to_the_next_call() -> None:
    async def run() -> None:
        fetch, thread = FetchInFlight(), ThreadFetch()
        caller = await _asking(fetch, thread, clock=3)
        caller.cancel()
        await _settle()
        assert caller.cancelled()
        thread.pending[0].set_result({"tp": [1, 2]})
        # Asked for at clock 3; the clock has moved on since.
        assert await fetch.get(thread.start, clock=9) == ({"tp": [1, 2]}, 3)
        assert thread.started == 1
    asyncio.run(run())


def test_a_fetch_cancelled_in_the_thread_does_not_stop_every_later_fetch() -> None:
    # mode hands a CancelledError raised in the consumer thread to the caller's
    # future; the fetch then ends cancelled. Kept as "in flight", it failed every
    # later call at once, which ended Faust's fetch loop for good: a worker that is
    # healthy and reads nothing.
    async def run() -> None:
        fetch, thread = FetchInFlight(), ThreadFetch()
        caller = await _asking(fetch, thread, clock=1)
        thread.pending[0].set_exception(asyncio.CancelledError())
        assert await caller == ({}, 1)
        caller = await _asking(fetch, thread, clock=2)
        assert thread.started == 2
        thread.pending[1].set_result({"tp": [5]})
        assert await caller == ({"tp": [5]}, 2)
    asyncio.run(run())


def test_a_failed_fetch_raises_once_and_the_next_call_fetches_again() -> None:
    async def run() -> None:
        fetch, thread = FetchInFlight(), ThreadFetch()
        caller = await _asking(fetch, thread, clock=1)
        thread.pending[0].set_exception(RuntimeError("broker gone"))
        with pytest.raises(RuntimeError):
            await caller
        caller = await _asking(fetch, thread, clock=2)
        thread.pending[1].set_result({})
        assert await caller == ({}, 2)
        assert thread.started == 2
    asyncio.run(run())


def test_a_seek_started_earlier_and_ended_later_does_not_decide() -> None:
    """A re-fetch (to 25) and a rebalance's seek to the committed offset (20) overlap in
    the consumer thread, and the re-fetch ends last: delivery resumes from 20. Taking
    25 left 20..24, delivered before the rebalance and skipped by the streams, unread
    for good: a stall, or with one record a loss (Faust commits past a single gap)."""
    order = InOrderTracker()
    order.seek_ended([TP], {TP: 0}, order.seek_started([TP]))
    refetch = order.seek_started([TP], refetch=True)
    rebalance = order.seek_started([TP])
    order.seek_ended([TP], {TP: 20}, rebalance)
    assert order.accept(TP, 20, order.clock) is None  # the re-fetch is still under way
    order.seek_ended([TP], {TP: 25}, refetch)
    assert order.expected(TP) == 20
    assert order.accept(TP, 20, order.clock) is True


# -- a record's delivery runs in the fetch loop's task until it has to wait

def test_a_delivery_that_does_not_wait_finishes_inline() -> None:
    log: list[str] = []

    async def deliver() -> None:
        log.append("delivered")

    async def run() -> None:
        assert started_inline(deliver()) is None
        assert log == ["delivered"]  # already, with no turn of the event loop
    asyncio.run(run())


def test_a_delivery_that_fails_inline_raises_its_error() -> None:
    async def deliver() -> None:
        raise ValueError("bad record")

    async def run() -> None:
        with pytest.raises(ValueError, match="bad record"):
            started_inline(deliver())
    asyncio.run(run())


def test_a_delivery_that_waits_goes_on_in_a_task_with_what_it_waited_for() -> None:
    async def run() -> None:
        room = asyncio.get_running_loop().create_future()
        log: list[Any] = []

        async def deliver() -> str:
            log.append("started")
            log.append(await room)
            await asyncio.sleep(0)  # a bare yield is passed through too
            return "done"

        task = started_inline(deliver())
        assert task is not None and log == ["started"]
        await _settle()
        assert not task.done()
        room.set_result("room in the buffer")
        assert await task == "done"
        assert log == ["started", "room in the buffer"]
    asyncio.run(run())


def test_a_waiting_delivery_sees_a_cancel_and_an_error_of_what_it_waited_for() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        seen: list[str] = []

        async def deliver(future: asyncio.Future) -> None:
            try:
                await future
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            except RuntimeError as exc:
                seen.append(str(exc))
                raise

        cancelled = started_inline(deliver(loop.create_future()))
        assert cancelled is not None
        await _settle()
        cancelled.cancel()  # what wait_first does when the flow is suspended first
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        failing = loop.create_future()
        failed = started_inline(deliver(failing))
        assert failed is not None
        failing.set_exception(RuntimeError("queue closed"))
        with pytest.raises(RuntimeError):
            await failed
        assert seen == ["cancelled", "queue closed"]
    asyncio.run(run())


def test_a_delivery_cancelled_before_it_went_on_is_closed() -> None:
    async def run() -> None:
        cleaned: list[str] = []

        async def deliver() -> None:
            try:
                await asyncio.get_running_loop().create_future()
            finally:
                cleaned.append("closed")

        task = started_inline(deliver())
        assert task is not None
        task.cancel()  # before the task ever ran
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["closed"]
    asyncio.run(run())


def _read_on_without_new_input(m: Model) -> None:
    for _ in range(2 * len(m.records)):
        m.fetch(4)
        m.step(deliver=True)
        m.commit()
    assert m.delivered == set(m.records)
    assert m.committed == m.records[-1] + 1


def test_records_filtered_out_at_the_end_of_the_input_are_read_again() -> None:
    """The CI stall: the last records of a partition were fetched and filtered out by
    Faust's loop; with no later record there is no jump to see, and the worker stood
    healthy with its committed offset short of the end for good."""
    m = Model([0, 1, 2, 3])
    m.fetch(4)
    m.step(deliver=True)
    m.drop()
    _read_on_without_new_input(m)


def test_records_handed_out_during_a_seek_are_read_again_after_it() -> None:
    """The CI stall, as the worker's state showed it: aiokafka at the end of the input,
    the committed offset short of it, nothing delivered. Faust's seek to the committed
    offsets runs in the consumer thread alongside a fetch; the fetch drained the
    records from the new position while the seek was still under way, so the loop
    could not take them, and no later record came to show the jump."""
    m = Model([0, 1, 2, 3])
    m.begin_seek()
    m.apply_seek()
    m.fetch(4)                    # the thread's other worker drains 0..3 meanwhile
    for _ in range(4):
        m.step(deliver=True)      # each waits for the seek: none is delivered
    m.end_seek()                  # the seek's bookkeeping ends; aiokafka stays at 4
    _read_on_without_new_input(m)
