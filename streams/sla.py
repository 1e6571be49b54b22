"""Stage 4: SLA breaches and the weighted scorecard.

    kpi.queue-state ─────────────────────────────┐
                                                  ├─ sla ──▶ sla.breaches ──▶ sla_breaches (CH)
    kpi.windows ── sla-windows ──▶ <app>-sla-observations ┘        (+ ccpulse_sla_breach_open gauge)
         └──────── scorecards ──▶ kpi.scorecards ──▶ scorecards (CH)

- ``sla`` keeps one :class:`~ccpulse.core.sla.QueueSla` per queue x channel in the
  ``sla-state`` table (so a restart recovers open breaches and never re-opens
  them) and feeds it: service_level, abandonment_rate and asa_seconds from the
  record's rolling ``last_15m``, longest_wait_seconds from the live state; the
  ticket first-response p90 from the final 1-hour ``kpi.windows`` records (the
  answered wait of a ticket *is* its first response time), which
  ``sla-windows`` re-keys by queue|channel onto ``<app>-sla-observations`` so
  that both inputs of a queue meet on one partition.
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
from typing import Any, Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ccpulse.core.scorecard import eligible, scorecard_key, scorecard_record
from ccpulse.core.sla import OPEN_STATES, Breach, QueueSla, queue_state_values, window_values
from schemas.events import parse_timestamp_ms
from streams.context import Pipeline
from streams.guard import stage_guard

OBSERVATIONS = "sla-observations"


def _ms(text: str) -> int:
    ms = parse_timestamp_ms(text)
    if ms is None:
        raise ValueError(f"not a timestamp: {text!r}")
    return ms


def register(pipe: Pipeline) -> None:
    app, settings = pipe.app, pipe.settings
    targets = settings.targets
    hold = targets.hold
    table = pipe.tables["sla"]
    breaches_topic = pipe.topics["sla_breaches"]
    observations = pipe.topics["sla_observations"]
    scorecards_topic = pipe.topics["kpi_scorecards"]
    source_names = {settings.topics.name("kpi_queue_state"), pipe.internal(OBSERVATIONS)}
    source = app.topic(*sorted(source_names), value_serializer="orjson", key_serializer="raw")

    def active_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in source_names}

    def owned_entries() -> Iterable[dict[str, Any]]:
        actives = active_partitions()
        return [entry for entry in list(table.data.values())
                if entry is not None and entry.get("p") in actives]

    pipe.metrics.registry.register(SlaCollector(owned_entries))

    outbox = pipe.outbox
    guard = stage_guard(pipe)

    def publish(events: list[Breach]) -> None:
        now_ms = int(time.time() * 1000)
        for breach in events:
            outbox.send(breaches_topic, breach.breach_id.encode(), breach.to_record(now_ms))

    def save(partition: int, key: str, sla: QueueSla, before: dict[str, Any] | None,
             force: bool) -> None:
        after = {"p": partition, **sla.to_dict()}
        if force or before is None or _significant(before) != _significant(after):
            outbox.put(table, partition, key, after)

    @app.agent(source, name="sla")
    async def sla(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            newest = 0
            for event in batch:
                with guard.record("sla", event.message):
                    doc = event.value
                    if not isinstance(doc, dict) or "queue" not in doc or "channel" not in doc:
                        continue
                    queue, channel = doc["queue"], doc["channel"]
                    key = f"{queue}|{channel}"
                    before = table.data.get(key)
                    state = QueueSla.from_dict(before) if before else QueueSla(queue, channel)
                    partition = before["p"] if before else event.message.partition
                    queue_targets = targets.for_queue(queue, channel)
                    if "last_15m" in doc:  # a kpi.queue-state record
                        at = _ms(doc["as_of"])
                        if at <= 0:
                            # Published before the merge stage saw any event time (just after
                            # its restart): no time to place it at, and its rolling view is void.
                            continue
                        newest = max(newest, at)
                        seq = (at, _ms(doc["published_at"]))
                        events = state.observe(queue_state_values(doc), at, queue_targets, hold,
                                               seq=seq, source="state")
                    else:  # an observation re-keyed from kpi.windows
                        events = state.observe(doc["values"], doc["at"], queue_targets, hold,
                                               seq=doc["seq"], source=doc["source"])
                    publish(events)
                    save(partition, key, state, before, force=True)
            if newest:
                tick(newest)
            await outbox.flush()

    def tick(at: int) -> None:
        for entry in owned_entries():
            state = QueueSla.from_dict(entry)
            events = state.tick(at, targets.for_queue(state.queue, state.channel), hold)
            publish(events)
            save(entry["p"], f"{state.queue}|{state.channel}", state, entry, force=False)

    @app.agent(pipe.topics["kpi_windows"], name="sla-windows")
    async def sla_windows(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            for event in batch:
                record = event.value
                with guard.record("sla-windows", event.message):
                    values = window_values(record) if isinstance(record, dict) else None
                    if values is None:
                        continue
                    end = _ms(record["window_end"])
                    outbox.send(
                        observations, f"{record['queue']}|{record['channel']}".encode(),
                        {"queue": record["queue"], "channel": record["channel"], "values": values,
                         "at": end, "seq": [end, record["version"]], "source": "windows-1h"})
            await outbox.flush()

    @app.agent(pipe.topics["kpi_windows"], name="scorecards")
    async def scorecards(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            now_ms = int(time.time() * 1000)
            for event in batch:
                record = event.value
                with guard.record("scorecards", event.message):
                    if not isinstance(record, dict) or not eligible(record, settings.scorecard):
                        continue
                    card = scorecard_record(record, settings.scorecard, now_ms)
                    outbox.send(scorecards_topic, scorecard_key(card).encode(), card)
            await outbox.flush()


def _significant(entry: dict[str, Any]) -> Any:
    """A stored entry without the bookkeeping a tick moves on every batch (last_at)."""
    return {**entry, "detectors": {k: {f: v for f, v in d.items() if f != "last_at"}
                                   for k, d in entry.get("detectors", {}).items()}}


class SlaCollector(Collector):
    """``ccpulse_sla_breach_open{queue,channel,kpi}``: 1 while a breach is open, else 0.

    Read from the recovered state table at scrape time (like the KPI counters), for
    the queues whose partitions this worker owns.
    """

    def __init__(self, entries: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._entries = entries

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("ccpulse_sla_breach_open",
                                  "1 while an SLA breach of the KPI is open (targets in the config)",
                                  labels=["queue", "channel", "kpi"])
        for entry in self._entries():
            for kpi, det in sorted(entry.get("detectors", {}).items()):
                gauge.add_metric([entry["queue"], entry["channel"], kpi],
                                 1.0 if det.get("status") in OPEN_STATES else 0.0)
        yield gauge

