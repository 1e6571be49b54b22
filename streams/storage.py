"""ClickHouse writer agents: raw events, interaction rows and KPI windows.

In the all-in-one role the pipeline's checkpoint stores raw events and interaction
rows itself (streams.pipeline.DirectRows); the writer role reads them from the input
topics (decoded with the pipeline's own ``decode_event``, so it stores exactly the
events the pipeline accepted) and from ``<app>-interactions``.

Each agent takes a batch, adds each record's row (schemas/records.py) to its table's
sink (sinks/base.py) and flushes it, retrying until it is written; only then does
Faust acknowledge the batch, so a committed offset always means "stored". A record
whose row cannot be built is dead-lettered (processing_error), the rest stored.

Memory while ClickHouse is down stays bounded: per agent, the batch being retried
(``clickhouse.batch_size`` rows) plus the one event ``take`` holds back, plus what
Faust buffered for the agent's stream before consumption stopped: at most
``stream_buffer_maxsize`` (4096) events (Faust stops fetching a partition whose
buffer is 80% full) plus the fetcher's last response (at most
``consumer_max_fetch_size``, 1 MiB, per assigned partition). Nothing beyond is
fetched: offsets stay uncommitted and the consumer lag grows instead.
"""

from __future__ import annotations

from typing import Any, Callable

import time

from ccpulse.core.windowing import Windowing
from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import Rejection
from schemas.records import breach_row, event_message, raw_event_row, scorecard_row
from sinks.clickhouse import ClickHouseWriter, Retention
from streams.context import Pipeline
from streams.guard import stage_guard
from streams.pipeline import DirectRows
from streams.stages.validation import FAMILIES, decode_event


def _same(record: dict[str, Any]) -> dict[str, Any]:
    return record


def register(pipe: Pipeline) -> None:
    app, settings, metrics = pipe.app, pipe.settings, pipe.metrics
    ch = settings.clickhouse

    def on_write(table: str, rows: int, seconds: float) -> None:
        metrics.sink_write_seconds.labels("clickhouse", table).observe(seconds)
        metrics.sink_rows.labels("clickhouse", table).inc(rows)

    def on_error(table: str, exc: Exception) -> None:
        metrics.sink_errors.labels("clickhouse", table).inc()

    retention = Retention(raw_days=ch.raw_retention_days, interactions_days=ch.interactions_retention_days,
                          windows_days=ch.windows_retention_days, daily_days=ch.daily_retention_days)
    pipe.writer = writer = ClickHouseWriter(
        ch.dsn, on_write=on_write, on_error=on_error, retention=retention, username=ch.user,
        password=ch.password, initial_backoff=ch.retry_backoff_seconds,
        max_backoff=ch.retry_max_backoff_seconds)
    metrics.watch_sink("clickhouse", lambda: writer.healthy, writer.failing_since, writer.retry_backoff,
                       writer.pending_rows, writer.oldest_unwritten_age)
    hasher = CustomerIdHasher.from_secret(ch.customer_id_key) if ch.hash_customer_ids else None
    guard = stage_guard(pipe)

    def stopping() -> bool:
        return app.should_stop

    def store(topic: str, table: str, name: str, row: Callable[[Any], dict[str, Any] | None]) -> None:
        """One agent per table: each record's row goes to the table's sink under its partition,
        and the batch is acknowledged once the sink has written it."""
        sink = writer.sink(table)

        @app.agent(pipe.topics[topic], name=name)
        async def agent(stream):  # type: ignore[no-untyped-def]
            async for batch in stream.take_events(ch.batch_size, within=ch.flush_seconds):
                for event in batch:
                    with guard.record(name, event.message):
                        built = row(event)
                        if built is not None:
                            sink.add(built, event.message.partition)
                await sink.flush(stopping)

    family_of = {settings.topics.name(attr): family for attr, family in FAMILIES.items()}
    max_future_ms = int(settings.max_future_seconds * 1000)
    windowing = Windowing(settings.windows.sizes, settings.windows.timezone, settings.windows.day_start_hour)

    def raw_row(event: Any) -> dict[str, Any] | None:
        msg = event.message
        # Refused records are the pipeline's to dead-letter; only accepted ones are stored.
        event = decode_event(msg.value, family_of[msg.topic], int(time.time() * 1000), max_future_ms, windowing)
        if isinstance(event, Rejection):
            return None
        return raw_event_row(event_message(event, msg.value, msg.topic, msg.partition, msg.offset), hasher)

    def value_of(row: Callable[[Any], dict[str, Any] | None]) -> Callable[[Any], dict[str, Any] | None]:
        return lambda event: row(event.value)

    if pipe.role == "writer":
        store("input_raw", "raw_events", "store-raw-events", raw_row)
        store("interactions", "interactions", "store-interactions", value_of(_same))
    else:
        pipe.direct_rows = DirectRows(writer.sink("raw_events"), writer.sink("interactions"), hasher, stopping)
    store("kpi_agents", "agent_windows", "store-agent-windows", value_of(_same))
    store("kpi_windows", "kpi_windows", "store-kpi-windows", value_of(_same))
    store("sla_breaches", "sla_breaches", "store-sla-breaches", value_of(breach_row))
    store("kpi_scorecards", "scorecards", "store-scorecards", value_of(scorecard_row))
