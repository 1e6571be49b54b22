"""A batching sink: rows buffered per partition, written as one batch, pushed back on while
the destination is down. Every store writer (the ClickHouse tables) is one of these.

Modelled on Quix Streams' ``BatchingSink`` (``quixstreams/sinks/base/``): ``add`` buffers a
row under its partition, ``flush`` hands the buffered batches to ``write``, and a
destination that cannot take them raises :class:`SinkBackpressureError` (optionally saying
when to come back) instead of an arbitrary error; ``on_paused``/``on_resumed`` are called
when an outage begins and ends.

One difference, because a Faust agent is the caller: Quix pauses the partition, seeks
back and drops the buffer (the rows are read again from Kafka). Here the agent awaits
``flush``, which keeps the batch and retries it with a capped, doubling backoff; the agent
takes no other batch meanwhile, so consumption stops (offsets stay uncommitted) and the
memory held is one batch. Nothing is dropped: ``flush`` returns only once the batch is
written, or, when the worker stops, with the rows still held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

log = logging.getLogger(__name__)


class SinkBackpressureError(Exception):
    """The destination cannot take the batch now: keep it and try again later.

    ``reason`` is one line safe to show (no credentials); ``retry_after`` (seconds) wins
    over the sink's own backoff when the destination knows better (e.g. a Retry-After).
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class SinkBatch:
    """The rows of one partition, in the order they were added."""

    partition: int
    rows: list[Any] = field(default_factory=list)
    since: float = field(default_factory=time.time)  # wall-clock time its first row was added


def _no_write(name: str, rows: int, seconds: float) -> None:
    pass


def _no_error(name: str, exc: Exception) -> None:
    pass


class BatchingSink(ABC):
    """Subclasses implement :meth:`write`; one caller at a time adds and flushes."""

    kind = "sink"  # how log lines name the destination

    def __init__(self, name: str, initial_backoff: float = 0.2, max_backoff: float = 10.0,
                 on_write: Callable[[str, int, float], None] = _no_write,
                 on_error: Callable[[str, Exception], None] = _no_error) -> None:
        self.name = name
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self.on_write, self.on_error = on_write, on_error
        self._batches: dict[int, SinkBatch] = {}
        self._writing: list[SinkBatch] = []
        self._failing_since: float | None = None
        self.last_failure_at = 0.0  # wall-clock time of the latest refused write
        self._backoff = 0.0
        self.last_error = ""

    @abstractmethod
    async def write(self, batches: Sequence[SinkBatch]) -> None:
        """Write every batch (one per partition, by partition) or raise SinkBackpressureError."""

    def on_paused(self) -> None:
        """Called once when writes start failing (an outage begins)."""

    def on_resumed(self) -> None:
        """Called once when a write succeeds again."""

    def add(self, row: Any, partition: int = 0) -> None:
        batch = self._batches.get(partition)
        if batch is None:
            batch = self._batches[partition] = SinkBatch(partition)
        batch.rows.append(row)

    async def flush(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Write what was added, retrying until it is written. False only if stopped first
        (the rows are then still held, ahead of any added later)."""
        if not self._batches:
            return True
        self._writing = [self._batches[p] for p in sorted(self._batches)]
        self._batches = {}
        delay = self.initial_backoff
        try:
            while True:
                started = time.perf_counter()
                try:
                    await self.write(self._writing)
                except SinkBackpressureError as exc:
                    wait = delay if exc.retry_after is None else exc.retry_after
                    self._pushed_back(exc, wait)
                    if should_stop():
                        self._hold_back()
                        return False
                    await sleep_unless(wait, should_stop)
                    delay = min(delay * 2, self.max_backoff)
                    continue
                except BaseException:  # a bug or a cancel, not an outage: keep the rows, let it out
                    self._hold_back()
                    raise
                self._written()
                self.on_write(self.name, sum(len(b.rows) for b in self._writing), time.perf_counter() - started)
                self._writing = []
                return True
        finally:
            self._writing = []

    def _hold_back(self) -> None:
        """Put the batches being written back in front of anything added since."""
        newer, self._batches = self._batches, {b.partition: b for b in self._writing}
        for partition, batch in newer.items():
            if partition in self._batches:
                self._batches[partition].rows.extend(batch.rows)
            else:
                self._batches[partition] = batch
        self._writing = []

    def _pushed_back(self, exc: SinkBackpressureError, wait: float) -> None:
        first = self._failing_since is None
        if first:
            self._failing_since = time.time()
        self.last_failure_at = time.time()
        self._backoff = wait
        self.last_error = exc.reason
        self.on_error(self.name, exc)
        log.warning("%s write to %s failed (%s); retrying in %.3gs", self.kind, self.name, exc.reason, wait)
        if first:
            self.on_paused()

    def _written(self) -> None:
        self._backoff = 0.0
        if self._failing_since is not None:
            self._failing_since = None
            log.info("%s writes to %s succeed again", self.kind, self.name)
            self.on_resumed()

    # -- status, for /health and the sink gauges ------------------------------------

    @property
    def healthy(self) -> bool:
        return self._failing_since is None

    def failing_since(self) -> float | None:
        """Wall-clock time the current outage began (None: the last write succeeded)."""
        return self._failing_since

    def retry_backoff(self) -> float:
        """The current delay before a retry (0 when writes succeed)."""
        return self._backoff

    def pending_rows(self) -> int:
        """Rows added and not yet written."""
        return sum(len(b.rows) for b in [*self._writing, *list(self._batches.values())])

    def oldest_unwritten_age(self) -> float:
        """Seconds since the oldest row not yet written was added (0: none)."""
        oldest = min((b.since for b in [*self._writing, *list(self._batches.values())]), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)


S = TypeVar("S", bound=BatchingSink)


class SinkGroup:
    """Several sinks seen as one (one /health part, one set of gauges): the worst of them."""

    def __init__(self) -> None:
        self.sinks: list[BatchingSink] = []

    def add(self, sink: S) -> S:
        self.sinks.append(sink)
        return sink

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.sinks)

    def failing(self) -> list[str]:
        return sorted(s.name for s in self.sinks if not s.healthy)

    def failing_since(self) -> float | None:
        return min((t for s in self.sinks if (t := s.failing_since()) is not None), default=None)

    def retry_backoff(self) -> float:
        return max((s.retry_backoff() for s in self.sinks), default=0.0)

    def pending_rows(self) -> int:
        return sum(s.pending_rows() for s in self.sinks)

    def oldest_unwritten_age(self) -> float:
        return max((s.oldest_unwritten_age() for s in self.sinks), default=0.0)

    def last_error(self) -> str:
        """``name: reason`` of the failing sink that failed last ("" when none fails)."""
        failing = [s for s in self.sinks if not s.healthy]
        if not failing:
            return ""
        latest = max(failing, key=lambda s: s.last_failure_at)
        return f"{latest.name}: {latest.last_error}"


async def sleep_unless(delay: float, should_stop: Callable[[], bool]) -> None:
    """Sleep ``delay`` seconds, waking early when the worker stops (shutdown stays prompt)."""
    deadline = time.monotonic() + delay
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.5))
