"""The worker's HTTP endpoints: ``/metrics`` (Prometheus) and ``/health``."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ccpulse.core.kpis import QUEUE, WindowAgg, kpi_figures
from streams import broker_health
from streams.app import Pipeline
from streams.merge import merged_record
from streams.web_auth import guarded


def health(pipe: Pipeline) -> tuple[bool, dict[str, Any]]:
    app = pipe.app
    recovered = app.tables.recovery.completed.is_set()
    broker_up = pipe.broker is None or pipe.broker.up
    detail = ("broker unreachable" if not broker_up else
              "consuming" if recovered else "recovering state / joining group")
    parts: dict[str, Any] = {
        "kafka": {"ok": broker_up and recovered and not app.rebalancing, "detail": detail,
                  **(pipe.broker.detail() if pipe.broker is not None else {})},
    }
    if pipe.writer is not None:
        parts["clickhouse"] = pipe.writer.health_part()
    ok = all(part["ok"] for part in parts.values())
    return ok, {"status": "ok" if ok else "unhealthy", "role": pipe.role, "parts": parts,
                "partitions": sorted(pipe.engines)}


async def kpi_summary(pipe: Pipeline, recent: int = 20) -> dict[str, Any]:
    """Cumulative KPIs per queue owned by this worker, the newest merged windows, store row count."""
    totals: dict[tuple[str, str], WindowAgg] = {}
    for engine in list(pipe.engines.values()):
        for queue, channel, counts in engine.running_totals():
            totals.setdefault((queue, channel), WindowAgg()).merge(WindowAgg(dict(counts)))
    queues = []
    for (queue, channel), agg in sorted(totals.items()):
        figures = kpi_figures(agg, pipe.settings.thresholds_for(queue, channel))
        figures.pop("wait_buckets")
        queues.append({"queue": queue, "channel": channel, **figures})
    now_ms = int(time.time() * 1000)
    merged = pipe.tables["merged"].data.values() if "merged" in pipe.tables else []
    entries = sorted((e for e in merged
                      if e["kind"] == "window" and e["key"][2] == QUEUE),
                     key=lambda e: (e["key"][1], e["key"][0]), reverse=True)
    windows = [merged_record(entry, pipe, now_ms) for entry in entries[:recent]]
    consumed = sum(sample.value for metric in pipe.metrics.events_consumed.collect()
                   for sample in metric.samples if sample.name.endswith("_total"))
    watermarks = [e.record.watermark for e in list(pipe.engines.values()) if e.record.watermark]
    lag = (now_ms - max(watermarks)) / 1000 if watermarks else None
    body: dict[str, Any] = {"queues": queues, "windows": windows, "events_consumed": consumed,
                            "event_time_lag_seconds": lag}
    if pipe.writer is not None and pipe.writer.client is not None:
        body["clickhouse_kpi_rows"] = await pipe.writer.count("kpi_windows")
    return body


def register(pipe: Pipeline) -> None:
    app = pipe.app
    broker_health.register(pipe)
    registry = pipe.metrics.registry
    auth = guarded(pipe.settings.web.token)  # /health stays open: liveness probes carry no token

    @app.page("/metrics")
    @auth
    async def metrics(web, request):  # type: ignore[no-untyped-def]
        return web.bytes(generate_latest(registry),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/api/windows")
    @auth
    async def windows_page(web, request):  # type: ignore[no-untyped-def]
        return web.json(await kpi_summary(pipe))

    @app.page("/health")
    async def health_page(web, request):  # type: ignore[no-untyped-def]
        ok, body = health(pipe)
        return web.json(body, status=200 if ok else 503)
