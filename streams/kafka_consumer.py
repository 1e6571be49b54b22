"""A Faust consumer that never marks an offset done unless its record was delivered.

Faust's fetch loop (``Consumer._drain_messages``) keeps one "read offset" per
partition and, when a record arrives more than one offset past it, records the
offsets in between as a *gap* that is committed as if processed (meant for
compacted topics and transaction markers). Three races turn that into data
loss; ccpulse's ``kill -9`` chaos runs hit all of them, right after a restart's
table recovery:

- a seek (Faust seeks every partition back to its committed offset when it
  resumes) lands while the loop is still walking a batch fetched *before* it:
  the rest of that batch arrives far past the new read offset, the records in
  between become a gap, and their re-fetch is dropped as "already read";
- Faust stops its fetch loop in every rebalance. A fetch cancelled while it
  waited still runs in the consumer thread and moves aiokafka's position past
  the records it took, which nobody sees: the next batch jumps past them;
- aiokafka seeks only partitions committed past offset 0, so a partition with
  nothing committed kept the position of records fetched before the restart's
  recovery, and its first records were skipped.

This consumer delivers the records of acknowledged topics strictly in order
from an *expected* offset per partition (``InOrderTracker``). Every seek sets
it; a delivered record moves it past itself. A record before it is a duplicate
and is dropped. A record after it is re-fetched from the expected offset, and
counts as a real hole only when a batch requested after that re-fetch shows
the very same jump. The fetch outlives a cancelled caller, so every record
aiokafka hands out is seen; partitions with nothing committed are sought where
the reset policy says. Records of topics without acknowledgements (table
changelogs) keep Faust's own handling.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service


class InOrderTracker:
    """The bookkeeping of :class:`InOrderConsumer`, free of I/O so it can be tested alone."""

    def __init__(self) -> None:
        self._expected: dict[Any, int] = {}
        # Ticks at the start and the end of every seek; a batch is stamped with it when requested.
        self.clock = 0
        self._seeking: dict[Any, int] = {}
        self._seeks: dict[Any, int] = {}
        # A jump seen once: (expected, offset, clock when the re-fetch's seek ended).
        self._suspects: dict[Any, tuple[int, int, Optional[int]]] = {}

    def seek_started(self, tps: Any, refetch: bool = False) -> None:
        """``refetch``: our own re-fetch of a suspect jump; any other seek (a rebalance's)
        starts the suspicion over, as it may come with its own orphan fetch."""
        self.clock += 1
        for tp in tps:
            if not refetch:
                self._suspects.pop(tp, None)
            self._seeking[tp] = self._seeking.get(tp, 0) + 1
            self._seeks[tp] = self._seeks.get(tp, 0) + 1

    def seek_ended(self, tps: Any, offsets: Mapping[Any, Optional[int]]) -> None:
        self.clock += 1
        for tp in tps:
            self._seeking[tp] = max(0, self._seeking.get(tp, 0) - 1)
            offset = offsets.get(tp)
            if offset is not None and offset >= 0:
                self._expected[tp] = offset
            else:
                self._expected.pop(tp, None)  # the reset policy decides: take what comes first
            suspect = self._suspects.get(tp)
            if suspect is not None and suspect[2] is None:
                self._suspects[tp] = (suspect[0], suspect[1], self.clock)

    @contextmanager
    def seeking(self, tps: Any, targets: Mapping[Any, Optional[int]], refetch: bool = False) -> Iterator[None]:
        """A seek from start to end; ``targets`` is read when it ends (it may be filled meanwhile)."""
        self.seek_started(tps, refetch)
        try:
            yield
        finally:
            self.seek_ended(tps, targets)

    def seeks(self, tp: Any) -> int:
        return self._seeks.get(tp, 0)

    def expected(self, tp: Any) -> Optional[int]:
        return self._expected.get(tp)

    def accept(self, tp: Any, offset: int, batch_clock: int) -> Optional[bool]:
        """True: deliver; False: drop (a duplicate); None: re-fetch from the expected offset.

        A record past the expected offset is a real hole (compaction, a transaction
        marker) only if re-fetching from the expected offset, in a batch requested
        after that seek, shows the very same jump. Once is not enough: records can go
        missing between aiokafka and this loop (a batch filtered out while its
        partition was paused, a delivery cancelled by a rebalance).
        """
        if self._seeking.get(tp):
            return None
        expected = self._expected.get(tp)
        if expected is None or offset == expected:
            self._suspects.pop(tp, None)
            return True
        if offset < expected:
            return False
        suspect = self._suspects.get(tp)
        if (suspect is not None and suspect[:2] == (expected, offset)
                and suspect[2] is not None and batch_clock >= suspect[2]):
            del self._suspects[tp]
            return True
        self._suspects[tp] = (expected, offset, None)
        return None

    def refetch_from(self, tp: Any) -> Optional[int]:
        """Where to re-fetch ``tp`` from; None while a seek is under way (it decides)."""
        return None if self._seeking.get(tp) else self._expected.get(tp)

    def delivered(self, tp: Any, offset: int) -> None:
        self._expected[tp] = offset + 1

    def forget(self, tp: Any) -> None:
        self._expected.pop(tp, None)
        self._suspects.pop(tp, None)


class InOrderConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = InOrderTracker()
        # The fetch under way in the consumer thread, and the clock when it was asked for.
        self._inflight: Optional[asyncio.Future] = None
        self._inflight_clock = 0
        self.batch_clock = 0  # the clock of the batch the fetch loop is walking

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        # Faust stops its fetch loop in every rebalance; a fetch cancelled while it
        # waited still ran in the consumer thread and moved aiokafka's position past
        # the records it took, which nobody then saw. Here the fetch outlives its
        # caller, and the next loop receives its records (stamped as old).
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(super()._getmany(active_partitions, timeout))
            self._inflight_clock = self.order.clock
        inflight = self._inflight
        try:
            records = await asyncio.shield(inflight)
        except asyncio.CancelledError:
            raise  # the fetch goes on: the next loop takes its records
        except BaseException:
            if self._inflight is inflight:
                self._inflight = None
            raise
        if self._inflight is inflight:
            self._inflight = None
        self.batch_clock = self._inflight_clock
        return records

    async def perform_seek(self) -> None:
        tps = set(self.assignment())
        targets: dict[TP, Optional[int]] = {}
        with self.order.seeking(tps, targets):
            committed = await self.seek_to_committed()
            targets.update(committed)
            # aiokafka seeks only partitions committed past offset 0: the others stay
            # wherever this process last fetched them, so a restart skipped a new
            # partition's first records. Seek those to where the reset policy says.
            fresh = [tp for tp, off in committed.items() if not off]
            if fresh:
                targets.update(await self._reset_offsets(fresh))
                await super().seek_wait({tp: targets[tp] for tp in fresh})  # type: ignore[misc]
            self._read_offset.update({tp: off if off is not None and off >= 0 else None
                                      for tp, off in committed.items()})
            self._committed_offset.update({tp: off if off else None
                                           for tp, off in committed.items() if off is not None})

    async def _reset_offsets(self, tps: list[TP]) -> Mapping[TP, int]:
        if self.app.conf.consumer_auto_offset_reset == "latest":
            return await self.highwaters(*tps)
        return await self.earliest_offsets(*tps)

    async def seek(self, partition: TP, offset: int) -> None:
        with self.order.seeking([partition], {partition: offset}):
            await super().seek(partition, offset)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        with self.order.seeking(partitions, partitions):
            await super().seek_wait(partitions)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.order.forget(tp)
        await super().on_partitions_revoked(revoked)

    # -- the fetch loop

    async def _refetch(self, tp: TP) -> None:
        expected = self.order.refetch_from(tp)
        if expected is None:
            return
        metrics = getattr(getattr(self.app, "pipeline", None), "metrics", None)
        if metrics is not None:
            metrics.consumer_refetches.inc()
        self.log.info("re-fetching %s from offset %d: the next record seen was past it", tp, expected)
        with self.order.seeking([tp], {tp: expected}, refetch=True):
            try:
                # In the consumer thread, as aiokafka wants: Faust's plain seek() calls it
                # from this thread while the fetcher may be walking the same buffers.
                await super().seek_wait({tp: expected})
            except Exception as exc:  # e.g. the partition was just revoked; the next jump retries
                self.log.warning("re-fetch of %s failed: %r", tp, exc)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        # Faust's loop (faust.transport.consumer.Consumer._drain_messages) with
        # in-order delivery for acknowledged topics; see the module docstring.
        callback = self.callback
        order = self.order
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = self.getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                refetched: set[TP] = set()
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > 100:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    acked = acks_enabled_for(message.topic)
                    if acked:
                        if tp in refetched:
                            continue  # the rest of this batch predates the re-fetch
                        verdict = order.accept(tp, offset, self.batch_clock)
                        if verdict is False:
                            continue
                        if verdict is None:
                            refetched.add(tp)
                            await self._refetch(tp)
                            continue
                        expected = order.expected(tp)
                        if expected is not None and offset > expected:
                            await self._add_gap(tp, expected, offset - 1)
                    else:
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    seeks_before = order.seeks(tp)
                    delivery = callback(message)
                    result = await self.wait_first(delivery, self.suspend_flow.wait())
                    delivered = delivery in result.done
                    if order.seeks(tp) != seeks_before:
                        continue  # a seek decided where this partition resumes
                    if not delivered:
                        # The stream never got it: the expected offset stays, so this
                        # partition's next record is a jump and is re-fetched from here.
                        continue
                    set_read_offset(tp, offset)
                    if acked:
                        order.delivered(tp, offset)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class InOrderTransport(faust_aiokafka.Transport):
    Consumer = InOrderConsumer


class InOrderApp(faust.App):
    """``faust.App`` whose consumer is :class:`InOrderConsumer`."""

    def _new_transport(self) -> Any:
        return InOrderTransport(self.conf.broker_consumer, self)
