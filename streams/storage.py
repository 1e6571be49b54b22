"""ClickHouse writer agents: raw events, interaction rows and KPI windows.

Each agent takes a batch, writes it (retrying until it succeeds) and only then
lets Faust acknowledge the batch, so a committed offset always means "stored".

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

import orjson

from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import format_ms
from sinks.clickhouse import ClickHouseWriter, Retention
from streams.app import Pipeline
from streams.guard import stage_guard
from streams.ingest import WATERMARK_FIELD
from streams.sla import breach_row, scorecard_row


def raw_event_row(doc: dict[str, Any], hasher: CustomerIdHasher | None = None) -> dict[str, Any]:
    """The raw_events row of a forwarded event; with ``hasher``, customer ids are stored hashed."""
    topic, partition, offset = doc["source"]
    customer_id, payload = doc["customer_id"], doc["payload"]
    if hasher is not None and customer_id:
        customer_id, payload = hasher.hash(customer_id), hasher.payload(payload)
    return {
        "event_id": doc["event_id"], "type": doc["type"], "channel": doc["channel"],
        "occurred_at": format_ms(doc["ts"]), "interaction_id": doc["interaction_id"],
        "queue": doc["queue"], "agent_id": doc["agent_id"], "customer_id": customer_id,
        "schema_version": doc["schema_version"], "source_topic": topic,
        "source_partition": partition, "source_offset": offset, "payload": payload,
    }


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

    @app.agent(pipe.topics["events"], name="store-raw-events")
    async def store_raw(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(ch.batch_size, within=ch.flush_seconds):
            rows = []
            for event in batch:
                with guard.record("store-raw-events", event.message):
                    doc = orjson.loads(event.value)
                    if WATERMARK_FIELD not in doc:
                        rows.append(raw_event_row(doc, hasher))
            await writer.write("raw_events", rows, stopping)

    @app.agent(pipe.topics["interactions"], name="store-interactions")
    async def store_interactions(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(ch.batch_size, within=ch.flush_seconds):
            await writer.write("interactions", _newest(batch, ("interaction_id", "segment")), stopping)

    @app.agent(pipe.topics["kpi_agents"], name="store-agent-windows")
    async def store_agents(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(ch.batch_size, within=ch.flush_seconds):
            await writer.write("agent_windows",
                               _newest(batch, ("window", "window_start", "agent_id", "channel")), stopping)

    @app.agent(pipe.topics["kpi_windows"], name="store-kpi-windows")
    async def store_windows(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(ch.batch_size, within=ch.flush_seconds):
            await writer.write("kpi_windows",
                               _newest(batch, ("window", "window_start", "queue", "channel")), stopping)

    @app.agent(pipe.topics["sla_breaches"], name="store-sla-breaches")
    async def store_breaches(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(ch.batch_size, within=ch.flush_seconds):
            await writer.write("sla_breaches", [breach_row(r) for r in _newest(batch, ("breach_id",))],
                               stopping)

    @app.agent(pipe.topics["kpi_scorecards"], name="store-scorecards")
    async def store_scorecards(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(ch.batch_size, within=ch.flush_seconds):
            await writer.write("scorecards", [scorecard_row(r) for r in _newest(
                batch, ("window", "window_start", "queue", "channel"))], stopping)


def _newest(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Keep only the highest version per key within a batch: less to write and merge."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        k = tuple(row[name] for name in key)
        if k not in best or row["version"] >= best[k]["version"]:
            best[k] = row
    return list(best.values())
