"""Stage 4: SLA breaches and the weighted scorecard: the Faust shell around the stages of
streams/stages/sla.py (their logic and unit tests: tests/test_sla_stage.py).

    kpi.queue-state ─────────────────────────────┐
                                                  ├─ sla ──▶ sla.breaches ──▶ sla_breaches (CH)
    kpi.windows ── sla-windows ──▶ <app>-sla-observations ┘        (+ ccpulse_sla_breach_open gauge)
         └──────── scorecards ──▶ kpi.scorecards ──▶ scorecards (CH)

- ``sla`` keeps one :class:`~ccpulse.core.sla.QueueSla` per queue x channel in the
  ``sla-state`` table (so a restart recovers open breaches and never re-opens
  them) and feeds it: service_level, abandonment_rate and asa_seconds from the
  record's rolling ``last_15m``, longest_wait_seconds and agents_gap from the live
  state; the ticket first-response p90 from the final 1-hour ``kpi.windows`` records
  (the answered wait of a ticket *is* its first response time) and occupancy from the
  final 15-minute ones, which ``sla-windows`` re-keys by queue|channel onto
  ``<app>-sla-observations`` so that both inputs of a queue meet on one partition.
  A target's own hold-down (``open_seconds``, ``resolve_seconds``) replaces
  ``[targets.hold]`` for it (ccpulse/core/sla.py).
- Event time is the records' ``as_of``. When it moves on, every queue's last
  values still stand (``QueueSla.tick``): a queue that stopped publishing
  because nothing changed still completes its hold-down.
- Each transition is one ``sla.breaches`` record, key = breach_id. It is sent
  before the state is written, so a crash in between re-derives and re-sends
  the same transition (same id and version: ClickHouse keeps one row).
- ``scorecards``: one record per final kpi.windows record of a window of 15
  minutes or more (``ccpulse/core/scorecard.py``), same key as the window.

Replays faster than real time: kpi.queue-state is published once per publish
interval of *wall* time, so a fast replay is sampled coarsely (minutes of event
time per record). The hold-down is still measured in event time, between those
samples, so ``opened_at``/``resolved_at`` can come up to one sample late, and a
violation shorter than the sampling step can go unseen. During such a replay the
merged live state may also pair a lagging partition's waiting contact with the
newest event time, overstating ``longest_wait_seconds`` (a merge-stage matter).
Live traffic, one record a second, is not affected.
"""

from __future__ import annotations

import time

from streams.context import Pipeline
from streams.guard import stage_guard
from streams.stages.io import Consumed, Failure, Sends
from streams.stages.sla import ScorecardStage, SlaCollector, SlaStage, SlaWindowsStage

OBSERVATIONS = "sla-observations"
BATCH, WITHIN = 2000, 0.05


def register(pipe: Pipeline) -> None:
    app, settings, outbox = pipe.app, pipe.settings, pipe.outbox
    table = pipe.tables.sla
    source_names = {settings.topics.name("kpi_queue_state"), pipe.internal(OBSERVATIONS)}
    source = app.topic(*sorted(source_names), value_serializer="orjson", key_serializer="raw")
    guard = stage_guard(pipe)

    def owned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in source_names}

    stage = SlaStage(settings.targets, table.data, owned)
    windows = SlaWindowsStage()
    scorecards = ScorecardStage(settings.scorecard)
    pipe.metrics.registry.register(SlaCollector(stage.snapshot))

    def dead_letter(agent: str, failures: list[Failure]) -> None:
        for failure in failures:
            guard.record_failed(agent, failure.message, failure.error)

    def send(topic: str, out: Sends) -> None:
        for m in out.messages:
            outbox.send(pipe.topics.named(topic), m.key, m.value)

    @app.agent(source, name="sla")
    async def sla(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(BATCH, within=WITHIN):
            out = stage.on_batch([Consumed.of(event) for event in batch], int(time.time() * 1000))
            dead_letter("sla", out.failures)
            for m in out.breaches:  # before the state that follows from them
                outbox.send(pipe.topics.sla_breaches, m.key, m.value)
            for put in out.puts:
                outbox.put(table, put.partition, put.key, put.value)
            await outbox.flush()

    @app.agent(pipe.topics.kpi_windows, name="sla-windows")
    async def sla_windows(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(BATCH, within=WITHIN):
            out = windows.on_batch([Consumed.of(event) for event in batch])
            dead_letter("sla-windows", out.failures)
            send("sla_observations", out)
            await outbox.flush()

    @app.agent(pipe.topics.kpi_windows, name="scorecards")
    async def scorecards_agent(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(BATCH, within=WITHIN):
            out = scorecards.on_batch([Consumed.of(event) for event in batch], int(time.time() * 1000))
            dead_letter("scorecards", out.failures)
            send("kpi_scorecards", out)
            await outbox.flush()
