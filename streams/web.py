"""The worker's HTTP endpoints: ``/metrics`` (Prometheus) and ``/health``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.app import Pipeline


def health(pipe: Pipeline) -> tuple[bool, dict[str, Any]]:
    app = pipe.app
    recovered = app.tables.recovery.completed.is_set()
    parts: dict[str, Any] = {
        "kafka": {"ok": recovered and not app.rebalancing,
                  "detail": "consuming" if recovered else "recovering state / joining group"},
    }
    if pipe.writer is not None:
        parts["clickhouse"] = {"ok": pipe.writer.healthy,
                               "detail": "writing" if pipe.writer.healthy else "writes failing, retrying"}
    ok = all(part["ok"] for part in parts.values())
    return ok, {"status": "ok" if ok else "unhealthy", "parts": parts,
                "partitions": sorted(pipe.engines)}


def register(pipe: Pipeline) -> None:
    app = pipe.app
    registry = pipe.metrics.registry

    @app.page("/metrics")
    async def metrics(web, request):  # type: ignore[no-untyped-def]
        return web.bytes(generate_latest(registry),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health_page(web, request):  # type: ignore[no-untyped-def]
        ok, body = health(pipe)
        return web.json(body, status=200 if ok else 503)
