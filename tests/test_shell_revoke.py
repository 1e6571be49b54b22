"""A revoked partition's pending outputs are written before the revocation ends.

The pipeline and agent shells write what they read in checkpoints, about every 0.2 s.
Faust revokes without waiting for the streams (``stream_wait_empty=False``), so what a
worker had read from a partition it was losing was written by its next timer instead:
under load that landed after the partition's next owner had recovered the tables, or
after that owner's own changes. The next recovery then restored the stale timeline or
interaction. Here the shells run on their own, with a recording outbox instead of
Kafka: the revocation hook (``revoke_partitions``) must hand the pending changelog
records over (and only then forget the partition).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from faust.types import TP

from ccpulse.config import Settings, WindowSettings
from streams.agents import AgentShell
from streams.app import create_app
from streams.kafka_consumer import Envelope
from streams.pipeline import PipelineShell, revoke_partitions
from streams.stages.pipeline import key_partition
from tests.agents_support import call, iid_on
from tests.test_agents_stage import AGENT, at, presence

PARTITIONS = 2


@dataclass
class Rec:
    key: bytes | None
    value: bytes
    offset: int


class Event:
    def __init__(self, envelope: Envelope) -> None:
        self.value, self.acked = envelope, False

    def ack(self) -> None:
        self.acked = True


class RecordingOutbox:
    """What a shell hands to Kafka, in order: ("put", changelog table, partition, key) and
    ("send", topic) entries."""

    def __init__(self) -> None:
        self.handed: list[tuple[Any, ...]] = []

    def put(self, table: Any, partition: int, key: Any, value: Any) -> None:
        self.handed.append(("put", table.name, partition, key))

    def delete(self, table: Any, partition: int, key: Any) -> None:
        self.handed.append(("delete", table.name, partition, key))

    def send(self, topic: Any, key: Any, value: Any, partition: int | None = None) -> None:
        self.handed.append(("send", topic.get_topic_name()))

    async def flush(self) -> None:
        self.handed.append(("flush",))

    async def deliver(self) -> None:
        await self.flush()
        self.handed.append(("delivered",))

    def puts(self, table: str) -> list[tuple[int, Any]]:
        return [(entry[2], entry[3]) for entry in self.handed if entry[0] == "put" and entry[1] == table]


def app_with_recording_outbox() -> tuple[Any, RecordingOutbox]:
    base = Settings()
    settings = replace(base, kafka=replace(base.kafka, partitions=PARTITIONS),
                       windows=replace(WindowSettings(), sizes=(60, 900), allowed_lateness_seconds=60))
    app = create_app(settings, "compute")
    outbox = app.pipeline.outbox = RecordingOutbox()  # type: ignore[attr-defined]
    return app, outbox


def test_the_pipeline_writes_a_revoked_partitions_interactions_before_it_forgets_the_partition() -> None:
    app, outbox = app_with_recording_outbox()
    shell = PipelineShell(app.pipeline)  # type: ignore[attr-defined]
    calls = app.pipeline.settings.topics.name("calls")  # type: ignore[attr-defined]
    owned = {TP(calls, 0)}
    shell.owned = lambda: owned  # type: ignore[method-assign]
    shell.caught_up = lambda tp: False  # type: ignore[method-assign]
    shell.last_checkpoint = time.monotonic() + 3600  # no checkpoint but the revocation's
    iid = iid_on(0, PARTITIONS)
    event = Event(Envelope(calls, 0, [Rec(iid.encode(), call(iid, 0, "offered", at(9, 0)), 0),
                                      Rec(iid.encode(), call(iid, 1, "answered", at(9, 1), agent_id=AGENT), 1)]))

    async def run() -> None:
        await shell.on_envelope(event)
        assert outbox.handed == [] and not event.acked  # read, not yet checkpointed
        owned.clear()
        await revoke_partitions(shell, {TP(calls, 0)})

    asyncio.run(run())
    assert (0, iid) in outbox.puts("interactions")
    assert 0 in [partition for partition, _ in outbox.puts("partition-records")]
    assert outbox.handed[-2:] == [("flush",), ("delivered",)] and event.acked
    assert 0 not in shell.stage.engines


def test_the_agent_stage_writes_a_revoked_partitions_timelines_before_it_forgets_the_partition() -> None:
    app, outbox = app_with_recording_outbox()
    shell = AgentShell(app.pipeline)  # type: ignore[attr-defined]
    agents = app.pipeline.settings.topics.name("agents")  # type: ignore[attr-defined]
    assert key_partition(AGENT.encode(), PARTITIONS) == 0
    owned = {TP(agents, 0)}
    shell.owned = lambda: owned  # type: ignore[method-assign]
    shell.last_checkpoint = time.monotonic() + 3600
    event = Event(Envelope(agents, 0, [Rec(AGENT.encode(), presence("e1", "agent.logged_in", at(9, 0),
                                                                     queues=["billing"]), 0)]))

    async def run() -> None:
        await shell.on_envelope(event)
        assert outbox.handed == [] and not event.acked
        owned.clear()
        await revoke_partitions(shell, {TP(agents, 0)})

    asyncio.run(run())
    assert outbox.puts("agent-timelines") == [(0, AGENT)]
    assert outbox.handed[-2:] == [("flush",), ("delivered",)] and event.acked
    assert 0 not in shell.stage.parts


def test_a_revocation_of_other_topics_writes_nothing() -> None:
    app, outbox = app_with_recording_outbox()
    shell = AgentShell(app.pipeline)  # type: ignore[attr-defined]
    asyncio.run(revoke_partitions(shell, {TP("some-other-topic", 0)}))
    assert outbox.handed == []


def test_a_revocation_whose_outputs_cannot_be_delivered_stops_the_commits_instead_of_crashing_the_app() -> None:
    # Raised from Faust's revocation, the error would crash the whole app; like any other
    # checkpoint failure it stops every commit instead (a restart reads it all again).
    app, outbox = app_with_recording_outbox()

    async def refuse() -> None:
        raise RuntimeError("the producer could not deliver")

    outbox.deliver = refuse  # type: ignore[method-assign]
    shell = AgentShell(app.pipeline)  # type: ignore[attr-defined]
    agents = app.pipeline.settings.topics.name("agents")  # type: ignore[attr-defined]
    shell.stage.assign(0)
    asyncio.run(revoke_partitions(shell, {TP(agents, 0)}))
    assert 0 not in shell.stage.parts
    assert not shell.guard.health_part()["ok"]
