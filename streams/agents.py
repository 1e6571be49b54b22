"""The Faust shell around the agent stage (streams/stages/agents.py, docs/agents.md).

One agent, ``agents``, reads ``agents`` and ``<app>-agent-facts`` in envelopes (one per
partition and fetch, streams/kafka_consumer.py; co-partitioned, so partition *p* of both
is read by one worker) and hands each to ``AgentStage.on_batch``. About every
``CHECKPOINT_SECONDS`` (sooner when much is buffered) a checkpoint writes what the stage
returned since the last one, in this order:

1. forwarded presence events and dead letters, then this partition's clock of ``agents``
   to every partition of ``<app>-agent-facts`` (after the events it covers);
2. the window partials and the ``agents_live`` partials to ``<app>-window-partials``,
   then the merge clock of each partition (``agents-<p>``, after the partials it covers);
3. the changelog of each changed agent timeline (once per checkpoint) and partition record;
4. the producer flush;

and only then acknowledges the envelopes it covers, so no offset is committed whose
effects are not written. A timer ticks the stage once a second (idle ``agents``
partitions, the clock of ``agents`` said again, event time following the wall clock
when nothing moves it, live counts) and checkpoints what that produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import TP

from streams.context import Pipeline
from streams.guard import stage_guard
from streams.kafka_consumer import caught_up
from streams.pipeline import CHECKPOINT_ENVELOPES, CHECKPOINT_SECONDS, register_shell
from streams.stages.agents import STAGE, AgentOutput, AgentStage
from streams.stages.io import Consumed, TablePut
from streams.stages.merge import ClockSender
from streams.stages.partials import agents_source

log = logging.getLogger(__name__)


class AgentShell:
    """The Faust side of the agent stage: the outputs not yet written and the envelopes
    they cover."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe, self.app, self.settings = pipe, pipe.app, pipe.settings
        self.outbox = pipe.outbox
        self.timelines, self.records = pipe.tables.agent_timelines, pipe.tables.agent_records
        self.agents_topic = pipe.settings.topics.name("agents")
        self.input_names = set(pipe.topics.agent_input.topics)
        self.stage = AgentStage(pipe.settings, pipe.internal("agent-facts"), self.timelines.data,
                                self.records.data, metrics=pipe.metrics)
        if pipe.metrics is not None:
            pipe.metrics.watch_agents(self.stage.state_totals)
        self.merge_clock = ClockSender(self.outbox, pipe.topics.partials, pipe.settings.kafka.partitions)
        self.lock = asyncio.Lock()
        self.pending: list[Any] = []  # envelopes applied, not yet covered by a checkpoint
        self.outputs: list[AgentOutput] = []  # what the stage returned for them, in order
        self.last_checkpoint = time.monotonic()
        self.guard = stage_guard(pipe)

    def owned(self) -> set[TP]:
        return {tp for tp in self.app.assignor.assigned_actives() if tp.topic in self.input_names}

    def ensure(self, partition: int) -> None:
        # Rebuilt from what the tables recovered: open windows are derived, never stored.
        if partition not in self.stage.parts:
            self.stage.assign(partition)

    def drop(self, partition: int) -> None:
        self.stage.revoke(partition)
        self.merge_clock.forget(agents_source(partition))

    async def on_envelope(self, event: Any) -> None:
        envelope = event.value
        if TP(envelope.topic, envelope.partition) not in self.owned():
            return  # fetched before a rebalance took it away: its new owner reads it
        self.ensure(envelope.partition)
        records = [Consumed(envelope.topic, envelope.partition, r.offset, r.value, r) for r in envelope.records]
        self.outputs.append(self.stage.on_batch(records, int(time.time() * 1000)))
        self.pending.append(event)
        if (len(self.pending) >= CHECKPOINT_ENVELOPES or self.lock.locked()
                or time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS):
            await self.checkpoint()

    async def checkpoint(self, deliver: bool = False) -> None:
        """``deliver``: also wait until the producer has sent it (``Outbox.deliver``)."""
        async with self.lock:
            covered, self.pending = self.pending, []
            outputs, self.outputs = self.outputs, []
            self.last_checkpoint = time.monotonic()
            try:
                await self.write(outputs, covered)
                if deliver:
                    await self.outbox.deliver()
            except Exception as exc:  # noqa: BLE001 - outside any one record: see PipelineShell.checkpoint
                self.guard.agent_crashed(STAGE, exc)

    async def write(self, outputs: list[AgentOutput], covered: list[Any]) -> None:
        outbox, topics, partitions = self.outbox, self.pipe.topics, self.settings.kafka.partitions
        timelines: dict[str, TablePut] = {}  # the newest of each: one changelog record per agent
        records: dict[str, TablePut] = {}
        for out in outputs:  # (1), (2), in the order the stage returned them
            for failure in out.failures:
                self.guard.record_failed(STAGE, failure.message, failure.error)
            for m in out.forwards:
                outbox.send(topics.agent_facts, m.key, m.value)
            for m in out.dead_letters:
                outbox.send(topics.dead_letter, m.key, m.value)
            for m in out.clocks:
                for partition in range(partitions):
                    outbox.send(topics.agent_facts, None, m.value, partition)
            for m in out.partials + out.live:
                outbox.send(topics.partials, m.key, m.value)
            for m in out.agent_windows:
                outbox.send(topics.kpi_agents, m.key, m.value)
            timelines.update((put.key, put) for put in out.agents)
            records.update((put.key, put) for put in out.records)
        for partition, part in list(self.stage.parts.items()):
            if part.core.now is not None:
                self.merge_clock.send(agents_source(partition), part.core.now)
        for put in timelines.values():  # (3)
            outbox.put(self.timelines, put.partition, put.key, put.value)
        for put in records.values():
            outbox.put(self.records, put.partition, put.key, put.value)
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
        tps = self.owned()
        partitions = {tp.partition for tp in tps}
        for partition in set(self.stage.parts) - partitions:
            self.drop(partition)
        for partition in partitions:
            self.ensure(partition)
        # Every owned partition of `agents`, and whether it has nothing left to read: one
        # that never delivers is reported idle, or a center without agent events would
        # stop event time (AgentStage.on_tick).
        reading = {(tp.topic, tp.partition): caught_up(self.app.consumer, tp)
                   for tp in tps if tp.topic == self.agents_topic}
        self.outputs.append(self.stage.on_tick(int(time.time() * 1000), reading))
        await self.checkpoint()


def register(pipe: Pipeline) -> AgentShell:
    shell = AgentShell(pipe)
    register_shell(pipe, shell, pipe.topics.agent_input, "agents")
    return shell
