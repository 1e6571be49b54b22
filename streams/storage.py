"""ClickHouse writer agents: raw events, interaction rows and KPI windows.

Each agent takes a batch, writes it (retrying until it succeeds) and only then
lets Faust acknowledge the batch, so a committed offset always means "stored".
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.events import format_ms
from sinks.clickhouse import ClickHouseWriter, Retention
from streams.app import Pipeline
from streams.ingest import WATERMARK_FIELD
from streams.sla import breach_row, scorecard_row


def raw_event_row(doc: dict[str, Any]) -> dict[str, Any]:
    topic, partition, offset = doc["source"]
    return {
        "event_id": doc["event_id"], "type": doc["type"], "channel": doc["channel"],
        "occurred_at": format_ms(doc["ts"]), "interaction_id": doc["interaction_id"],
        "queue": doc["queue"], "agent_id": doc["agent_id"], "customer_id": doc["customer_id"],
        "schema_version": doc["schema_version"], "source_topic": topic,
        "source_partition": partition, "source_offset": offset, "payload": doc["payload"],
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
    pipe.writer = writer = ClickHouseWriter(ch.dsn, on_write=on_write, on_error=on_error,
                                            retention=retention)

    def stopping() -> bool:
        return app.should_stop

    @app.agent(pipe.topics["events"], name="store-raw-events")
    async def store_raw(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(ch.batch_size, within=ch.flush_seconds):
            docs = (orjson.loads(value) for value in batch)
            rows = [raw_event_row(doc) for doc in docs if WATERMARK_FIELD not in doc]
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
