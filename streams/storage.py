"""ClickHouse writer agents: raw events, interaction rows and KPI windows; the Faust shell
around the store stage of streams/stages/store.py (unit tests: tests/test_store_stage.py).

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

from typing import Any

from ccpulse.pseudonym import CustomerIdHasher
from schemas.records import breach_row, scorecard_row
from sinks.clickhouse import ClickHouseWriter, Retention
from streams.context import Pipeline
from streams.guard import stage_guard
from streams.pipeline import DirectRows
from streams.stages.io import Consumed
from streams.stages.store import RawEventRows, RowOf, StoreStage, of_value


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

    def store(topic: str, table: str, name: str, row: RowOf) -> None:
        """One agent per table; a batch is acknowledged once the sink has written it."""
        stage = StoreStage(name, writer.sink(table), row)

        @app.agent(pipe.topics.named(topic), name=name)
        async def agent(stream):  # type: ignore[no-untyped-def]
            async for batch in stream.take_events(ch.batch_size, within=ch.flush_seconds):
                for failure in stage.on_batch([Consumed.of(event) for event in batch]):
                    guard.record_failed(name, failure.message, failure.error)
                await stage.flush(stopping)

    if pipe.role == "writer":
        store("input_raw", "raw_events", "store-raw-events", RawEventRows(settings, hasher))
        store("interactions", "interactions", "store-interactions", of_value(_same))
    else:
        pipe.direct_rows = DirectRows(writer.sink("raw_events"), writer.sink("interactions"), hasher, stopping)
    store("kpi_agents", "agent_windows", "store-agent-windows", of_value(_same))
    store("kpi_windows", "kpi_windows", "store-kpi-windows", of_value(_same))
    store("sla_breaches", "sla_breaches", "store-sla-breaches", of_value(breach_row))
    store("kpi_scorecards", "scorecards", "store-scorecards", of_value(scorecard_row))
