"""A Faust consumer that never marks an offset done unless its record was delivered.

Faust's fetch loop (``Consumer._drain_messages``) keeps one "read offset" per
partition and, when a record arrives more than one offset past it, records the
offsets in between as a *gap* that is committed as if processed (meant for
compacted topics and transaction markers), or simply never reads some records
again. These races turn that into data loss or a stall; ccpulse's ``kill -9``
and rebalance chaos runs hit all of them, right after a restart or a rebalance:

- a seek (Faust seeks every partition back to its committed offset when it
  resumes) lands while the loop is still walking a batch fetched *before* it:
  the rest of that batch arrives far past the new read offset, the records in
  between become a gap, and their re-fetch is dropped as "already read";
- Faust stops its fetch loop in every rebalance. A fetch cancelled while it
  waited still runs in the consumer thread and moves aiokafka's position past
  the records it took, which nobody sees: the next batch jumps past them;
- aiokafka seeks only partitions committed past offset 0, so a partition with
  nothing committed kept the position of records fetched before the restart's
  recovery, and its first records were skipped;
- Faust's seek back to the committed offsets and a fetch run side by side in the
  consumer thread, and Faust's loop filters records out of a batch (a partition
  paused or its stream buffer full while the fetch was out). The records are then
  gone from aiokafka; at the end of the input no later record shows the jump,
  and the worker stood healthy with its committed offset short of the end;
- a re-fetch and a rebalance's seek to the committed offsets overlap in the
  consumer thread: the one that ended last set where delivery resumed, and records
  the streams had skipped (Faust's streams drop records of an older generation)
  were never read again: a stall, or with one record a loss, as Faust commits past
  a single unacknowledged offset;
- at the end of a rebalance Faust resumes the stream partitions and seeks them to
  the committed offsets, and only then calls ``flow_control.resume()``, which empties
  every stream's queue: records delivered in between vanished unseen (the same
  stall or loss).

This consumer delivers the records of acknowledged topics strictly in order
from an *expected* offset per partition (``InOrderTracker``). Every seek sets
it (of overlapping seeks, the one started last); a delivered record moves it
past itself. A record before it is a duplicate and is dropped. A record after it
is re-fetched from the expected offset, and counts as a real hole only when a
batch requested after that re-fetch shows the very same jump. A record that
waited while a seek or a rebalance came is not delivered, and nothing is delivered
or re-fetched until a rebalance has ended (its own seek decides). The tracker
also notes how far aiokafka has handed records out: before each fetch, a
partition handed out past its expected offset is re-fetched from there, without
waiting for more input. The fetch outlives a cancelled caller, so every record
aiokafka hands out is seen; partitions with nothing committed are sought where
the reset policy says. Records of topics without acknowledgements (table
changelogs) keep Faust's own handling.

Batch topics (``InOrderApp.batch_topic``): the records of one partition that one
fetch returned reach the agent as ONE Faust event, an ``Envelope``, instead of one
event each (Faust's per-record delivery costs about 30 µs, more than a stage's
work on a record). A record joins an envelope only once the rules above accept it,
and an envelope not handed to its stream, or overtaken by a seek or a rebalance,
is read again as its records would have been. Acknowledging the envelope
acknowledges every offset it covers. Faust's own commit arithmetic
(``_new_offset``) commits past one unacknowledged offset, and past any number when
nothing was committed yet; for batch topics an ``EnvelopeLedger`` decides instead:
the commit never passes an envelope that is not acknowledged.

Every workaround here was written against the faust-streaming and aiokafka
versions ccpulse pins (pyproject.toml); ``InOrderApp`` refuses to start with
others (``check_versions``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Awaitable, Callable, Coroutine, Generator, Iterable, Iterator, Mapping, Optional, cast

import faust
from faust.agents import current_agent
from faust.serializers import Schema
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, TopicT
from faust.types.tuples import ConsumerMessage, ack_lock
from mode import Service
from mode.utils.futures import notify


log = logging.getLogger(__name__)

# The libraries whose internals this module copies or patches.
PATCHED = ("faust-streaming", "aiokafka")


class UntestedLibraries(ValueError):
    """The installed Faust or aiokafka is not the version the workarounds were written for.

    A ValueError so that ``ccpulse worker`` says it in one line (ccpulse/cli.py)."""


def version_problem(installed: Mapping[str, Optional[str]], pinned: Mapping[str, str]) -> Optional[str]:
    """One line naming every patched library whose installed version is not the pinned one; None if all match."""
    wrong = [f"{name} {installed.get(name) or 'missing'} (written for {pinned[name]})"
             for name in PATCHED if name in pinned and installed.get(name) != pinned[name]]
    if not wrong:
        return None
    fix = " ".join(f"{name}=={pinned[name]}" for name in PATCHED if name in pinned)
    return (f"streams/kafka_consumer.py patches Faust's fetch loop and commit for exact versions; installed: "
            f"{', '.join(wrong)}. Install them with: pip install {fix}")


def pinned_versions() -> dict[str, str]:
    """What ccpulse pins for the patched libraries (pyproject.toml, as installed); empty if not installed."""
    try:
        requirements = metadata.requires("ccpulse") or []
    except metadata.PackageNotFoundError:
        return {}
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement.strip())
        if match and match.group(1) in PATCHED:
            pins[match.group(1)] = match.group(2)
    return pins


def installed_versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for name in PATCHED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_versions() -> None:
    """Refuse to run on other versions of Faust or aiokafka than the pinned ones.

    Refused rather than logged: this module replaces Faust's fetch loop and its commit
    arithmetic, and relies on private attributes (``_read_offset``, ``_acked``,
    ``_n_acked``, ``_committed_offset``...). On another version they can mean
    something else, and the likely failure is silent: offsets committed for records
    never processed. A worker that does not start says so; one that loses data does not.
    """
    pinned = pinned_versions()
    if not pinned:  # running from a source tree that was never installed: nothing to compare with
        log.warning("ccpulse is not installed: cannot check the Faust and aiokafka versions "
                    "streams/kafka_consumer.py was written for")
        return
    problem = version_problem(installed_versions(), pinned)
    if problem is not None:
        raise UntestedLibraries(problem)


def crash_of(app: AppT) -> str | None:
    """The first agent crash of ``app``, if any (None for an app without a guard): streams/guard.py
    sets ``app.stage_guard``; read here by attribute, as the guard sits above this module."""
    guard = getattr(app, "stage_guard", None)
    return guard.crashed if guard is not None else None


# Envelopes buffered per partition of a batch topic before its fetching pauses.
ENVELOPE_BUFFER = 8


# -- tables ------------------------------------------------------------------------


def convert_recovered_values(table: Any, convert: Callable[[Any], Any]) -> None:
    """Turn each value Faust's recovery decodes for ``table`` into ``convert(value)``: Faust
    derives the changelog codecs from value_type and offers no hook for the domain object."""
    table._to_value = convert


# -- Faust's web server ----------------------------------------------------------

FAUST_INDEX = "faust.web.apps.production_index:blueprint"


def drop_faust_index(app: Any) -> None:
    """Faust mounts its own ``/`` ({"status": "OK"}) whenever its stats view is off, and
    aiohttp refuses a second ``/`` when the server starts ("Added route will never be
    executed"): the worker then exits. Faust 0.15's BlueprintManager has no remove, so
    its list of blueprints still to apply is filtered before the server starts."""
    manager = app.web.blueprints
    manager._enabled = [(prefix, bp) for prefix, bp in manager._enabled if bp != FAUST_INDEX]


# -- the producer's internals (the Outbox and the broker probe) ---------------------
# Faust exposes no public handle on its aiokafka producer, and aiokafka none on the
# metadata wait and the partitioners ``send`` uses; the Outbox batches per partition
# and must place each message where ``send`` would have.


def caught_up(consumer: Any, tp: Any) -> bool:
    """Nothing left to read on ``tp``: the offset expected next (``InOrderTracker``) has
    reached the partition's end.

    Before anything was delivered from ``tp`` with no committed offset to start from
    (a fresh group on an empty topic: nothing ever is), the tracker expects nothing;
    then aiokafka's fetch position after its offset reset says where reading starts, as
    long as it handed out no record yet. Without it an empty partition looked unread and
    held event time back for ``idle_close_seconds`` (a day, in ``ccpulse chaos``)."""
    order = getattr(consumer, "order", None)
    expected = order.expected(tp) if order is not None else None
    end = consumer.highwater(tp)
    if expected is None and order is not None and order.handed_out(tp) is None:
        expected = fetch_position(consumer, tp)
    return expected is not None and end is not None and expected >= end


def fetch_position(consumer: Any, tp: Any) -> Optional[int]:
    """Where aiokafka fetches ``tp`` from next (its subscription state), or None while it
    has no valid position (an offset reset under way)."""
    try:
        subscription = consumer._thread._ensure_consumer()._subscription.subscription
    except AttributeError:
        return None
    assignment = subscription.assignment if subscription is not None else None
    state = assignment.state_value(tp) if assignment is not None else None
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def aiokafka_producer(app: Any) -> Any:
    """The aiokafka producer behind Faust's producer (started if it is not yet)."""
    return app.producer._ensure_producer()


async def topic_partitions(producer: Any, topic: str) -> list[int]:
    """Every partition of ``topic``, once the producer's metadata knows it."""
    await producer.client._wait_on_metadata(topic)
    return sorted(producer.client.cluster.partitions_for_topic(topic))


def keyless_partition(producer: Any, topic: str) -> int:
    """Where ``send`` puts a message without a key: spread over the partitions with a leader."""
    return producer._partition(topic, None, None, None, None, None)


def key_partition_of(producer: Any, key: bytes, partitions: list[int]) -> int:
    """Where ``send`` puts a message with ``key`` (the producer's configured partitioner)."""
    return producer._partitioner(key, partitions, partitions)


class Envelope:
    """The records of one partition of a batch topic from one fetch, in offset order:
    one Faust event (see the module docstring). ``records`` are Faust's messages
    (``topic``, ``partition``, ``offset``, ``key``, ``value``, ``timestamp``, ``headers``)."""

    __slots__ = ("topic", "partition", "records")

    def __init__(self, topic: str, partition: int, records: list[Any]) -> None:
        self.topic, self.partition, self.records = topic, partition, records

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"Envelope({self.topic}[{self.partition}] "
                f"{self.records[0].offset}..{self.records[-1].offset}, {len(self.records)} records)")


class EnvelopeLedger:
    """How far the offsets of batch topics may be committed: through the last envelope
    of an unbroken run of acknowledged ones, never past one that is not.

    Envelopes of a partition are delivered in offset order and each starts where the
    one before ended (holes confirmed by a re-fetch included), so the end of that run
    is the offset to commit. A seek to the committed offsets (a rebalance) voids the
    envelopes delivered before it (``forget``): their records are read again, and an
    acknowledgement that arrives for one of them later is ignored.
    """

    def __init__(self) -> None:
        # partition -> [envelope, acknowledged], in delivery order
        self._open: dict[Any, deque[list]] = {}

    def delivered(self, tp: Any, envelope: Envelope) -> None:
        self._open.setdefault(tp, deque()).append([envelope, False])

    def discard(self, tp: Any, envelope: Envelope) -> None:
        """It never reached its stream; its records are read again."""
        entries = self._open.get(tp)
        if entries:
            for entry in entries:
                if entry[0] is envelope:
                    entries.remove(entry)
                    return

    def acked(self, tp: Any, envelope: Envelope) -> bool:
        """False for an envelope it does not hold (voided by a seek, or acknowledged already)."""
        for entry in self._open.get(tp, ()):
            if entry[0] is envelope:
                if entry[1]:
                    return False
                entry[1] = True
                return True
        return False

    def committable(self, tp: Any) -> Optional[int]:
        """The offset to commit for ``tp`` now (one past the run of acknowledged envelopes), or None."""
        entries = self._open.get(tp)
        end = None
        while entries and entries[0][1]:
            end = entries.popleft()[0].records[-1].offset + 1
        return end

    def unacked(self, tp: Any) -> int:
        return sum(1 for _, done in self._open.get(tp, ()) if not done)

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self._open.pop(tp, None)


class EnvelopeSchema(Schema):
    """The schema of batch topics: the envelope is the event's value, as it is."""

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: AppT, *, on_key_decode_error: Any = None, on_value_decode_error: Any = None,
                default_propagate: bool = False) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class InOrderTracker:
    """The bookkeeping of :class:`InOrderConsumer`, free of I/O so it can be tested alone."""

    def __init__(self) -> None:
        self._expected: dict[Any, int] = {}
        # Ticks at the start and the end of every seek; a batch is stamped with it when requested.
        self.clock = 0
        self._seeking: dict[Any, int] = {}
        self._seeks: dict[Any, int] = {}  # seeks started, per partition: the last one decides
        # A jump seen once: (expected, offset, clock when the re-fetch's seek ended).
        self._suspects: dict[Any, tuple[int, int, Optional[int]]] = {}
        # One past the last record aiokafka handed out: its position may be there.
        self._fetched: dict[Any, int] = {}
        # The same, for records handed out while a seek was under way: Faust's seek and
        # a fetch run side by side in the consumer thread, so they may come from the
        # position the seek set, and the loop cannot take them until the seek ends.
        self._fetched_in_seek: dict[Any, int] = {}

    def seek_started(self, tps: Any, refetch: bool = False) -> dict[Any, int]:
        """``refetch``: our own re-fetch of a suspect jump; any other seek (a rebalance's)
        starts the suspicion over, as it may come with its own orphan fetch.
        Returns the token to end it with."""
        self.clock += 1
        started = {}
        for tp in tps:
            if not refetch:
                self._suspects.pop(tp, None)
            self._seeking[tp] = self._seeking.get(tp, 0) + 1
            started[tp] = self._seeks[tp] = self._seeks.get(tp, 0) + 1
        return started

    def seek_ended(self, tps: Any, offsets: Mapping[Any, Optional[int]],
                   started: Optional[Mapping[Any, int]] = None) -> None:
        """A seek ended. Seeks of one partition can overlap (a re-fetch and a rebalance's
        seek to the committed offset run side by side in the consumer thread): only the
        one started last sets where delivery resumes, whichever ends last."""
        self.clock += 1
        for tp in tps:
            self._seeking[tp] = max(0, self._seeking.get(tp, 0) - 1)
            offset = offsets.get(tp)
            self._fetched.pop(tp, None)
            if not self._seeking[tp] and tp in self._fetched_in_seek:
                self._fetched[tp] = self._fetched_in_seek.pop(tp)
            if started is not None and started.get(tp) != self._seeks.get(tp):
                continue  # superseded by a seek started after this one
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
        started = self.seek_started(tps, refetch)
        try:
            yield
        finally:
            self.seek_ended(tps, targets, started)

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

    def handed_out(self, tp: Any) -> Optional[int]:
        """One past the last record of ``tp`` aiokafka handed out since the last seek, if any."""
        return self._fetched.get(tp, self._fetched_in_seek.get(tp))

    def fetched(self, tp: Any, end: int) -> None:
        """aiokafka handed out records of ``tp`` up to ``end`` (exclusive)."""
        into = self._fetched_in_seek if self._seeking.get(tp) else self._fetched
        if end > into.get(tp, -1):
            into[tp] = end

    def undelivered(self) -> list[Any]:
        """Partitions with records handed out but neither delivered nor dropped as
        duplicates: Faust's loop filters records out (a partition paused or its stream
        buffer full while the fetch was out, a rebalance under way) and a delivery can
        be cancelled. Their position is past them; with no later record to show the
        jump, reading them again must not wait for more input."""
        return [tp for tp, end in self._fetched.items()
                if not self._seeking.get(tp) and tp in self._expected and end > self._expected[tp]]

    def refetch_from(self, tp: Any) -> Optional[int]:
        """Where to re-fetch ``tp`` from; None while a seek is under way (it decides)."""
        return None if self._seeking.get(tp) else self._expected.get(tp)

    def delivered(self, tp: Any, offset: int) -> None:
        self._expected[tp] = offset + 1

    def rewind(self, tp: Any, offset: int) -> None:
        """Records from ``offset`` on, taken as delivered, were not (an envelope that never
        reached its stream): reading resumes there, like after any undelivered record."""
        if not self._seeking.get(tp):
            self._expected[tp] = offset

    def forget(self, tp: Any) -> None:
        self._expected.pop(tp, None)
        self._suspects.pop(tp, None)
        self._fetched.pop(tp, None)
        self._fetched_in_seek.pop(tp, None)


def started_inline(coro: Coroutine[Any, Any, Any]) -> Optional[asyncio.Future]:
    """Run ``coro`` up to its first suspension, in the caller's task.

    None if it finished without suspending (its exception, if any, is raised here);
    otherwise a task that runs the rest of it.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_Resumed(coro, waiting_on))
    # A task cancelled before its first step never runs the rest: close the coroutine
    # so its cleanup runs now (a no-op once it has finished).
    task.add_done_callback(lambda _: coro.close())
    return task


class _Resumed:
    """The rest of a coroutine that was started by hand (``yield from`` for an
    already-started coroutine): what it waits on goes to the task, and what the
    task sends or throws goes back in."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro, self._waiting_on = coro, waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # a cancel, or the awaited future's error: pass it in
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def being_cancelled() -> bool:
    """Whether the running task itself is being cancelled, as opposed to a call it
    made raising ``CancelledError`` (mode passes one from the consumer thread on)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class FetchInFlight:
    """At most one fetch at a time, which outlives a cancelled caller.

    Faust stops its fetch loop in every rebalance; a fetch cancelled while it waited
    still ran in the consumer thread and moved aiokafka's position past the records
    it took, which nobody then saw. Here the fetch goes on, and the next caller
    receives its records, with the clock of when it was asked for.
    """

    def __init__(self) -> None:
        self._task: Optional[asyncio.Future] = None
        self._clock = 0

    async def get(self, start: Callable[[], Awaitable[Any]], clock: int) -> tuple[Any, int]:
        """The records of the fetch in flight (started with ``start()`` if there is none)
        and the clock it was started at. A fetch that was itself cancelled (not its
        caller) has no records: that returns ``({}, clock)``; kept, it would fail every
        later call and the fetch loop would stop for good."""
        if self._task is None:
            self._task = asyncio.ensure_future(start())
            self._clock = clock
        task = self._task
        try:
            records = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                self._forget(task)
                if not being_cancelled():
                    return {}, clock
            raise  # only the caller was cancelled: the next call takes the records
        except BaseException:
            self._forget(task)
            raise
        self._forget(task)
        return records, self._clock

    def _forget(self, task: asyncio.Future) -> None:
        if self._task is task:
            self._task = None


class InOrderConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = InOrderTracker()
        self._fetch = FetchInFlight()
        self.batch_clock = 0  # the clock of the batch the fetch loop is walking
        # Offsets whose commit waits for the outbox to deliver what failed (see _commit_offsets).
        self.held_offsets: dict[TP, int] = {}
        self._commit_tried = False
        self.ledger = EnvelopeLedger()

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records, self.batch_clock = await self._fetch.get(
            lambda: super(InOrderConsumer, self)._getmany(active_partitions, timeout), self.order.clock)
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, batch in records.items():
            if batch and acks_enabled_for(tp.topic):
                self.order.fetched(tp, batch[-1].offset + 1)
        return records

    async def perform_seek(self) -> None:
        tps = set(self.assignment())
        self.ledger.forget(tps)  # every partition reads again from its committed offset
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
        self.ledger.forget([partition])
        with self.order.seeking([partition], {partition: offset}):
            await super().seek(partition, offset)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        self.ledger.forget(partitions)
        with self.order.seeking(partitions, partitions):
            await super().seek_wait(partitions)

    def ack(self, message: Any) -> bool:
        envelope = message.value
        if type(envelope) is not Envelope:
            return super().ack(message)
        with ack_lock:  # as Faust's ack: Message.ack holds it around this call
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            try:
                if not self.ledger.acked(message.tp, envelope):
                    return False
                # Faust looks for offsets to commit only in partitions it saw acknowledged.
                self._acked[message.tp]  # noqa: B018 - creates the entry
                self._n_acked += len(envelope.records)
                return True
            finally:
                notify(self._waiting_for_ack)

    def _new_offset(self, tp: TP) -> Optional[int]:
        if tp.topic in self.app.batch_topics:
            return self.ledger.committable(tp)
        return super()._new_offset(tp)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        # Stopping cancels the agents, and Faust's ``take_events`` acknowledges the batch
        # of a cancelled agent in its ``finally``: its outputs half handed to the producer,
        # or a ClickHouse write still being retried. Committing those offsets lost them
        # (seen in the rebalance chaos run: an event missing from every output). So
        # nothing is committed once the worker is stopping; the next owner of the
        # partitions reads again from the last commit (at most about a second, the
        # commit interval), which every stage takes idempotently, as after a crash.
        if self.app.should_stop or crash_of(self.app) is not None:
            return False  # after an agent crash too: see on_task_error
        self._commit_tried = False
        done = await super().force_commit(topics, start_new_transaction=start_new_transaction)
        if self.held_offsets and not self._commit_tried:
            # Nothing new was acknowledged (a quiet input): the held offsets still go
            # once what failed has been delivered.
            done = await self._commit_offsets({}, start_new_transaction=start_new_transaction)
        return done

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        # Faust flushes the producer and commits without asking whether what it flushed
        # was delivered: a record larger than its topic allows failed in a future nobody
        # read ("Future exception was never retrieved") and the offsets of the input
        # behind it were committed all the same, losing its outputs. Here the offsets
        # wait until the outbox has delivered everything, re-sending what failed.
        self._commit_tried = True
        for tp, offset in offsets.items():
            self.held_offsets[tp] = max(offset, self.held_offsets.get(tp, offset))
        outbox = getattr(getattr(self.app, "pipeline", None), "outbox", None)
        if outbox is not None:
            await self.app.producer.flush()
            if not await outbox.settle():
                return False
        offsets, self.held_offsets = self.held_offsets, {}
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    async def on_task_error(self, exc: BaseException) -> None:
        # Faust commits here, and the dead agent's ``take_events`` acknowledges its whole
        # batch on the way out: records it never finished were committed as processed.
        # The guard records the crash instead, and nothing is committed from then on.
        agent = current_agent()
        guard = getattr(self.app, "stage_guard", None)
        if guard is not None:
            guard.agent_crashed(agent.name if agent is not None else "unknown", exc)

    async def on_stop(self) -> None:
        # Faust stops its services in the reverse order of their start: the agents have
        # stopped, and the producer stops after this consumer leaves the group. What the
        # agents' last checkpoints handed to the producer is delivered first, or it could
        # land after the partitions' next owners recovered the tables (a stale table entry
        # restored at the rebalance after that).
        try:
            await self.app.producer.flush()
        except Exception as exc:  # noqa: BLE001 - nothing was committed: the next owner reads it again
            self.log.warning("could not deliver the last outputs before leaving the group: %r", exc)
        await super().on_stop()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.ledger.forget(revoked)
        for tp in revoked:
            self.order.forget(tp)
            # Its next owner reads again from the last commit.
            self.held_offsets.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    # -- the fetch loop

    async def _refetch(self, tp: TP, why: str) -> None:
        expected = self.order.refetch_from(tp)
        if expected is None or self.suspend_flow.is_set() or self.app.rebalancing:
            # A rebalance is under way: its own seek to the committed offsets decides
            # where every partition resumes, and nothing is delivered until it has ended.
            return
        metrics = getattr(getattr(self.app, "pipeline", None), "metrics", None)
        if metrics is not None:
            metrics.consumer_refetches.inc()
        self.log.info("re-fetching %s from offset %d: %s", tp, expected, why)
        with self.order.seeking([tp], {tp: expected}, refetch=True):
            try:
                # In the consumer thread, as aiokafka wants: Faust's plain seek() calls it
                # from this thread while the fetcher may be walking the same buffers.
                await super().seek_wait({tp: expected})
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                self.log.warning("re-fetch of %s was cancelled in the consumer thread; the loop retries", tp)
            except Exception as exc:  # e.g. the partition was just revoked; the loop retries
                self.log.warning("re-fetch of %s failed: %r", tp, exc)

    async def _deliver(self, delivery: Coroutine[Any, Any, Any]) -> bool:
        """Run one record's delivery; False if the flow was suspended (a rebalance) first.

        Faust races every delivery against ``suspend_flow`` with ``wait_first``: four
        tasks and an ``asyncio.wait`` per record, the largest single cost of the fetch
        loop. Almost every delivery finishes without waiting (its stream's buffer has
        room), so it is started here and only one that has to wait takes that path.
        """
        if self.suspend_flow.is_set():
            delivery.close()
            return False
        started = started_inline(delivery)
        if started is None:
            return True
        result = await self.wait_first(started, self.suspend_flow.wait())
        return started in result.done

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        # Outside a rebalance, Faust's fetcher ends quietly on a CancelledError, and the
        # worker stays up reading nothing. One that a call raised (the consumer thread
        # gave up on it) rather than a cancel of this task starts the loop again.
        while True:
            try:
                return await self._drain(fetcher)
            except asyncio.CancelledError:
                if being_cancelled() or self.transport.app.should_stop or self.app.rebalancing:
                    raise
                self.log.warning("fetch loop: a call was cancelled in the consumer thread; reading on")

    async def _drain(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        # Faust's loop (faust.transport.consumer.Consumer._drain_messages) with
        # in-order delivery for acknowledged topics; see the module docstring.
        order = self.order
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        # Envelopes being filled from the fetch being walked: partition -> (the seeks of
        # it when the first record joined, the expected offset then, the records).
        filling: dict[TP, tuple[int, int, list[Any]]] = {}
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                for tp in order.undelivered():
                    await self._refetch(tp, "records fetched were not delivered")
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = self.getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                refetched: set[TP] = set()
                try:
                    await self._walk(ait, filling, refetched)
                    # Every envelope filled goes now, in the order its partition came first.
                    while filling:
                        tp = next(iter(filling))
                        await self._hand_over(tp, *filling.pop(tp))
                finally:
                    # Stopped or failed first: their records are read again.
                    for tp, (seeks, start, _records) in filling.items():
                        if order.seeks(tp) == seeks:
                            order.rewind(tp, start)
                    filling.clear()
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

    async def _walk(self, ait: Any, filling: dict[TP, tuple[int, int, list[Any]]],
                    refetched: set[TP]) -> None:  # pragma: no cover - needs a broker
        """One fetched batch, record by record (Faust's loop, in order; see the module docstring)."""
        callback = self.callback
        order = self.order
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.app.batch_topics
        num_since_yield = 0
        async for tp, message in ait:
            seeks_at_receipt = order.seeks(tp)
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
                    if tp in filling:  # its records come before where the re-fetch reads from
                        await self._hand_over(tp, *filling.pop(tp))
                    await self._refetch(tp, "the next record seen was past it")
                    continue
                expected = order.expected(tp)
                if tp.topic in batch_topics:
                    envelope = filling.get(tp)
                    if envelope is None or envelope[0] != seeks_at_receipt:
                        # (one filled before a seek is void: the seek decided where tp resumes)
                        envelope = filling[tp] = (seeks_at_receipt, offset if expected is None else expected, [])
                    envelope[2].append(message)
                    # Taken as delivered, so the next record is accepted after it; undone
                    # (rewind) if the envelope does not reach its stream.
                    order.delivered(tp, offset)
                    continue
                if expected is not None and offset > expected:
                    await self._add_gap(tp, expected, offset - 1)
            else:
                r_offset = get_read_offset(tp)
                if r_offset is not None and offset < r_offset:
                    continue
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            if acked and self._overtaken(tp, seeks_at_receipt, message):
                # A seek or a rebalance came while this record waited (at an await
                # above): the seek decides where the partition resumes, and a stream
                # silently skips a record of an older generation, which would then
                # count as delivered and its re-fetch be dropped as a duplicate.
                # Until the rebalance has ended nothing is delivered: Faust resumes
                # stream partitions and seeks them *before* its final
                # ``flow_control.resume()``, which empties every stream's queue, so
                # a record delivered in between was dropped unseen (its partition is
                # re-read from the expected offset once the rebalance has ended).
                continue
            delivered = await self._deliver(callback(message))
            if order.seeks(tp) != seeks_at_receipt:
                continue  # a seek decided where this partition resumes
            if not delivered:
                # The stream never got it: the expected offset stays, so this
                # partition is re-fetched from here before the next fetch.
                continue
            set_read_offset(tp, offset)
            if acked:
                order.delivered(tp, offset)

    def _overtaken(self, tp: TP, seeks_at_receipt: int, message: Any) -> bool:
        return (self.order.seeks(tp) != seeks_at_receipt
                or message.generation_id != self.app.consumer_generation_id
                or self.app.rebalancing)

    async def _hand_over(self, tp: TP, seeks: int, start: int, records: list[Any]) -> None:
        """Deliver the envelope of ``records``, under the rules a single record follows."""
        order = self.order
        last = records[-1]
        if self._overtaken(tp, seeks, last):
            if order.seeks(tp) == seeks:  # a rebalance, no seek yet: read them again
                order.rewind(tp, start)
            return
        envelope = Envelope(tp.topic, tp.partition, records)
        message = ConsumerMessage(
            tp.topic, tp.partition, last.offset, last.timestamp, last.timestamp_type, None, None,
            envelope, None, 0, 0, tp, generation_id=last.generation_id)
        self.ledger.delivered(tp, envelope)
        delivered = False
        try:
            delivered = await self._deliver(self.callback(message))
        finally:
            if not delivered:
                # Read again; should it reach its stream all the same, its
                # acknowledgement is ignored rather than holding every commit.
                self.ledger.discard(tp, envelope)
                if order.seeks(tp) == seeks:
                    order.rewind(tp, start)
        if order.seeks(tp) != seeks:
            return  # a seek decided where this partition resumes
        if not delivered:
            return
        self._read_offset[tp] = last.offset
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()


class InOrderTransport(faust_aiokafka.Transport):
    Consumer = InOrderConsumer


class InOrderApp(faust.App):
    """``faust.App`` whose consumer is :class:`InOrderConsumer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_versions()
        super().__init__(*args, **kwargs)
        # Topics whose records reach their agent in envelopes (see batch_topic).
        self.batch_topics: set[str] = set()

    def batch_topic(self, *names: str, **kwargs: Any) -> TopicT:
        """A topic whose agent receives :class:`Envelope` values: the records one fetch
        returned for one partition, in offset order, as one event. Acknowledging the
        event acknowledges them all; the commit never passes an envelope that is not."""
        self.batch_topics.update(names)
        topic = self.topic(*names, schema=EnvelopeSchema(), **kwargs)
        # Faust's stream buffer counts events: 4,096 envelopes of a fetch each would let
        # the fetcher run a whole backlog ahead into memory before flow control stops it.
        # (App.topic takes ``maxsize`` but does not pass it on: set on the topic.)
        topic.maxsize = ENVELOPE_BUFFER
        return topic

    def _new_transport(self) -> Any:
        return InOrderTransport(self.conf.broker_consumer, self)
