"""The Faust shell around the one-pass pipeline stage (streams/stages/pipeline.py).

One agent, ``pipeline``, reads ``calls``, ``chats``, ``tickets`` and ``<app>-rekey``
in envelopes (one per partition and fetch, streams/kafka_consumer.py) and hands each
to ``PipelineStage.on_batch``. About every ``CHECKPOINT_SECONDS`` (sooner when much is
buffered) a checkpoint writes what the stage collected, in this order
(docs/streaming-layer.md):

1. in the all-in-one role, the raw events and interaction rows to ClickHouse, waiting
   until they are stored (a ClickHouse outage holds the checkpoint, and with it the
   agent: backpressure, nothing acknowledged);
2. the changelog of each changed interaction, once, and each changed partition record;
3. re-keyed events then the clocks (event time, see streams/stages/pipeline.py), the agent
   facts then their clocks (streams/agents.py), dead letters, window/live partials (with the merge clock), contacts
   (with the FCR clock), interaction rows (compute role);
4. the producer flush;

and only then acknowledges the envelopes it covers, so Faust commits no offset whose
effects are not written. A timer ticks the stage once a second (idle sources, closing
windows, expiry) and checkpoints what that produced. What to expire and which clocks to
report the stage decides (``on_tick``, ``checkpoint``); this shell only times and writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

from faust.types import TP

from schemas.records import interaction_rows, raw_event_row
from streams.context import Pipeline
from streams.fcr import customer_hasher
from streams.guard import stage_guard
from streams.kafka_consumer import caught_up
from streams.stages.merge import ClockSender
from streams.stages.agent_facts import fact_batches
from streams.stages.pipeline import PipelineStage, key_partition

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 0.2
# Envelopes read since the last checkpoint past which the agent checkpoints at once:
# bounds what a checkpoint holds (and what a crash makes the next owner re-read).
CHECKPOINT_ENVELOPES = 200
# ... and events applied since it: what one checkpoint holds in memory (documents, rows,
# changelog values) is bounded, also when a backlog comes in large fetches.
CHECKPOINT_EVENTS = 5000
TICK_SECONDS = 1.0


class PipelineShell:
    """The Faust side of the pipeline stage: what was read but not yet covered by a
    checkpoint, and when the last checkpoint ran."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe, self.app, self.settings = pipe, pipe.app, pipe.settings
        self.interactions = pipe.tables.interactions
        self.records = pipe.tables.partitions
        self.input_names = set(pipe.topics.input.topics)
        self.outbox = pipe.outbox
        self.stage = PipelineStage(pipe.settings, pipe.internal("rekey"), interactions=self.interactions.data,
                                   metrics=pipe.metrics)
        pipe.engines = self.stage.engines  # /health and /metrics read the stage's engines
        self.stage.keep_raw_events = pipe.direct_rows is not None  # set by storage.register, before
        self.merge_clock = ClockSender(self.outbox, pipe.topics.partials, pipe.settings.kafka.partitions)
        self.lock = asyncio.Lock()
        self.pending: list[Any] = []  # envelopes applied, not yet covered by a checkpoint
        self.last_checkpoint = time.monotonic()
        self.guard = stage_guard(pipe)
        self._fact_partitions: dict[bytes, int] = {}  # agent key -> its partition (murmur2 is pure Python)

    def fact_partition(self, key: bytes) -> int:
        partition = self._fact_partitions.get(key)
        if partition is None:
            if len(self._fact_partitions) > 100_000:
                self._fact_partitions.clear()
            partition = self._fact_partitions[key] = key_partition(key, self.settings.kafka.partitions)
        return partition

    def owned(self) -> set[TP]:
        return {tp for tp in self.app.assignor.assigned_actives() if tp.topic in self.input_names}

    def ensure(self, partition: int, now_ms: int) -> None:
        # Rebuilt from what the tables recovered: open windows are derived, never stored.
        if partition not in self.stage.engines:
            self.stage.assign(partition, self.records.data.get(str(partition)),
                              [inter for inter in list(self.interactions.data.values())
                               if inter is not None and inter.partition == partition], now_ms)

    def drop(self, partition: int) -> None:
        # The table keeps the interactions: deleting them here lost the open interactions of
        # a partition given back to this worker in the same rebalance (chaos "rebalance":
        # their windows never became final), as Faust's recovery did not read them again.
        self.stage.revoke(partition, forget_interactions=False)
        self.merge_clock.forget(str(partition))

    def checkpoint_due(self) -> bool:
        return (len(self.pending) >= CHECKPOINT_ENVELOPES or self.lock.locked()
                or self.stage.records_since_checkpoint >= CHECKPOINT_EVENTS
                or time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS)

    async def on_envelope(self, event: Any) -> None:
        envelope = event.value
        if TP(envelope.topic, envelope.partition) not in self.owned():
            return  # fetched before a rebalance took it away: its new owner reads it
        now_ms = int(time.time() * 1000)
        self.ensure(envelope.partition, now_ms)
        self.stage.on_batch(envelope.topic, envelope.partition, envelope.records, now_ms)
        self.pending.append(event)
        if self.checkpoint_due():
            await self.checkpoint()

    async def checkpoint(self, deliver: bool = False) -> None:
        """``deliver``: also wait until the producer has sent it (``Outbox.deliver``)."""
        async with self.lock:
            covered, self.pending = self.pending, []
            self.last_checkpoint = time.monotonic()
            try:
                await self.write(covered)
                if deliver:
                    await self.outbox.deliver()
            except Exception as exc:  # noqa: BLE001 - see below
                # Outside any one record (records fail alone in the stage): the guard stops
                # every commit and /health says so; a restart reads it all again. The live
                # view goes on meanwhile (from the agent or a timer alike).
                self.guard.agent_crashed("pipeline", exc)

    async def write(self, covered: list[Any]) -> None:
        pipe, outbox, topics = self.pipe, self.outbox, self.pipe.topics
        now_ms = int(time.time() * 1000)
        if not self.app.rebalancing:  # which input partitions have records left to read (see reading)
            self.stage.reading(now_ms, self.reading_state())  # (partitions with an engine only)
        out = self.stage.checkpoint(now_ms)
        if pipe.direct_rows is not None:  # (1) role all: ClickHouse first
            if not await pipe.direct_rows.store(out.raw_events, out.interactions):
                return  # stopping: nothing acknowledged, the next owner reads it again
        for iid, inter in out.interactions.items():  # (2)
            outbox.put(self.interactions, inter.partition, iid, inter)
        for partition, iid in out.expired:  # after the puts: one changed, then expired, is gone
            outbox.delete(self.interactions, partition, iid)
        for partition, record in out.records.items():
            outbox.put(self.records, partition, str(partition), record)
        for m in out.rekey:  # (3)
            outbox.send(topics.rekey, m.key, m.value)
        for m in out.clocks:  # after the events they cover, by the same producer
            for partition in range(self.settings.kafka.partitions):
                outbox.send(topics.rekey, None, m.value, partition)
        # The agent stage's side of the join (docs/agents.md): one message per partition,
        # where each fact's agent key goes (issue 16 perf; agent_facts.fact_batches).
        for partition, value in fact_batches(out.agent_facts, self.settings.kafka.partitions, self.fact_partition):
            outbox.send(topics.agent_facts, None, value, partition)
        for m in out.agent_clocks:  # after the facts they cover
            for partition in range(self.settings.kafka.partitions):
                outbox.send(topics.agent_facts, None, m.value, partition)
        for m in out.dead_letters:
            outbox.send(topics.dead_letter, m.key, m.value)
        for m in out.partials:
            outbox.send(topics.partials, m.key, m.value)
        for m in out.contacts:
            outbox.send(topics.contacts, m.key, m.value)
        if pipe.direct_rows is None:
            for iid, inter in out.interactions.items():
                for row in interaction_rows(inter, version=inter.step_count):
                    outbox.send(topics.interactions, f"{iid}|{row['segment']}".encode(), row)
        # After the partials and contacts they cover, by the same producer.
        for source, watermark in out.merge_clocks.items():
            self.merge_clock.send(source, watermark)
        for m in out.fcr_clocks:
            for partition in range(self.settings.kafka.partitions):
                outbox.send(topics.contacts, m.key, m.value, partition)
        await outbox.flush()  # (4)
        for event in covered:
            event.ack()

    async def on_idle(self) -> None:
        # Envelopes of a stream that went quiet are still acknowledged within the interval.
        if self.pending and time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS:
            await self.checkpoint()

    async def on_tick(self) -> None:
        if self.app.rebalancing or not self.app.tables.recovery.completed.is_set():
            return
        now_ms = int(time.time() * 1000)
        tps = self.owned()
        partitions = {tp.partition for tp in tps}
        for partition in set(self.stage.engines) - partitions:
            self.drop(partition)
        for partition in partitions:
            self.ensure(partition, now_ms)
        self.stage.on_tick(now_ms, self.reading_state(tps))
        await self.checkpoint()

    def reading_state(self, tps: set[TP] | None = None) -> dict[tuple[str, int], bool]:
        """Every owned input partition (or ``tps``): whether it has nothing left to read."""
        return {(tp.topic, tp.partition): self.caught_up(tp) for tp in (self.owned() if tps is None else tps)}

    def caught_up(self, tp: TP) -> bool:
        return caught_up(self.app.consumer, tp)


class EnvelopeShell(Protocol):
    """What ``register_shell`` wires: a stage shell fed envelopes, checkpointed on a timer."""

    input_names: set[str]  # the topics it reads

    async def on_envelope(self, event: Any) -> None: ...
    async def on_idle(self) -> None: ...
    async def on_tick(self) -> None: ...
    async def checkpoint(self, deliver: bool = False) -> None: ...
    def drop(self, partition: int) -> None: ...


async def revoke_partitions(shell: EnvelopeShell, revoked: Any) -> None:
    """The revocation of ``revoked``: what was read from them and not yet checkpointed is
    written and delivered now, before this worker rejoins the group and their next owner
    recovers the tables; then the shell forgets them. Written by the next timer instead,
    under load it landed after the new owner had read the changelog, or after its own
    changes: a stale timeline or interaction, restored over newer state at the following
    rebalance."""
    mine = {tp.partition for tp in revoked if tp.topic in shell.input_names}
    if not mine:
        return
    await shell.checkpoint(deliver=True)
    for partition in sorted(mine):
        shell.drop(partition)


def register_shell(pipe: Pipeline, shell: EnvelopeShell, topic: Any, name: str,
                   before: Callable[[], Awaitable[None]] | None = None) -> None:
    """The Faust side every envelope stage shares: one agent reading ``topic`` without
    automatic acks (the shell acknowledges after its checkpoint), a checkpoint timer for
    a stream gone quiet, a tick timer, and the revocation hook. ``before`` runs once
    when the agent starts, before its first envelope."""
    app = pipe.app

    async def consume(stream):  # type: ignore[no-untyped-def]
        if before is not None:
            await before()
        async for event in stream.noack().events():
            await shell.on_envelope(event)

    app.agent(topic, name=name)(consume)
    app.timer(CHECKPOINT_SECONDS, name=f"{name}-checkpoint")(shell.on_idle)
    app.timer(TICK_SECONDS, name=f"{name}-tick")(shell.on_tick)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        await revoke_partitions(shell, revoked)


def register(pipe: Pipeline) -> PipelineShell:
    shell = PipelineShell(pipe)

    async def hasher() -> None:
        shell.stage.hasher = await customer_hasher(pipe)

    register_shell(pipe, shell, pipe.topics.input, "pipeline", before=hasher)
    return shell


class DirectRows:
    """The all-in-one role's ClickHouse writes from the pipeline's checkpoint: raw events
    and interaction rows, stored before the envelopes behind them are acknowledged."""

    def __init__(self, raw_sink: Any, interaction_sink: Any, hasher: Any, stopping: Any) -> None:
        self._raw, self._rows, self._hasher, self._stopping = raw_sink, interaction_sink, hasher, stopping

    async def store(self, raw_events: list[dict[str, Any]], changed: dict[str, Any]) -> bool:
        """False if the worker began stopping before both were stored."""
        for doc in raw_events:
            self._raw.add(raw_event_row(doc, self._hasher), doc["source"][1])
        for inter in changed.values():
            for row in interaction_rows(inter, version=inter.step_count):
                self._rows.add(row, inter.partition)
        return await self._raw.flush(self._stopping) and await self._rows.flush(self._stopping)
