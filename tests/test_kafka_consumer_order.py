"""InOrderTracker: under any interleaving of fetches, seeks and cancelled deliveries,
no record is ever committed without being delivered, and reading never stalls.

The model is one partition of a topic whose offsets have real holes (transaction
markers, compaction). ``Fetcher`` stands for aiokafka: it returns the records from
its position on and moves past them; a seek moves the position. Records already
handed out in a batch stay in that batch: exactly the stale batch that made
Faust's own loop commit unread offsets as a "gap" after a seek. (A fetch whose
caller is cancelled in a rebalance is not modelled: InOrderConsumer hands its
records to the next loop, so every record aiokafka gives out is seen here.)
"""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from streams.kafka_consumer import InOrderTracker

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
        self.order.seek_started([TP])        # the assignment's first seek
        self.order.seek_ended([TP], {TP: 0})

    def fetch(self, n: int) -> None:
        if self.batch:
            return  # the loop fetches again only once it has walked the whole batch
        self.batch_clock = self.order.clock
        self.batch = self.fetcher.fetch(n)

    def step(self, deliver: bool, seek_meanwhile: bool = False) -> None:
        if not self.batch:
            return
        offset = self.batch.pop(0)
        verdict = self.order.accept(TP, offset, self.batch_clock)
        if verdict is False:
            return
        if verdict is None:
            target = self.order.refetch_from(TP)
            if target is not None:
                self.order.seek_started([TP], refetch=True)
                self.fetcher.position = target
                self.order.seek_ended([TP], {TP: target})
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
        if self.seek_target is not None:
            self.fetcher.position = self.seek_target

    def end_seek(self) -> None:
        if self.seek_target is not None:
            self.apply_seek()
            self.order.seek_ended([TP], {TP: self.seek_target})
            self.seek_target = None

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
       "apply_seek", "end_seek", "commit"]


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
