"""The worker's HTTP endpoints: ``/metrics`` (Prometheus) and ``/health``.

Every other route wants the token too (``web_auth.middleware``), and a malformed
request is logged as one line, at most once a minute (:class:`HttpErrorLog`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ccpulse.core.kpis import QUEUE, WindowAgg, kpi_figures
from ccpulse.log_limit import LogLimiter
from streams import broker_health, web_auth
from streams.context import Pipeline
from streams.guard import stage_guard
from streams.kafka_consumer import drop_faust_index
from streams.merged import merged_record
from streams.web_auth import guarded

log = logging.getLogger(__name__)

HTTP_ERROR_LOG_SECONDS = 60.0
# aiohttp's logger for requests it could not parse or handle.
AIOHTTP_SERVER_LOG = "aiohttp.server"


class HttpErrorLog(logging.Filter):
    """aiohttp's log of a request it could not parse (a 100 KB header or URL, a bad request
    line), turned into one line, at most one per ``interval`` seconds.

    Any client can send such requests as fast as it likes, and each one was a traceback
    of a dozen lines: the line now says how many were left out since the previous one,
    so a flood is still visible. Other errors (a bug in a page) keep their traceback.
    """

    def __init__(self, interval: float = HTTP_ERROR_LOG_SECONDS, clock: Callable[[], float] = time.monotonic,
                 secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._limiter = LogLimiter(interval)
        self._clock = clock
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        held = self._limiter.allow(self._clock())
        if held is None:
            return False
        # The parser's message quotes the start of the offending bytes: printable, one line.
        detail = " ".join(f"{exc.code} {exc.message}".split())
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        detail = "".join(c if c.isprintable() else "?" for c in detail)[:200]
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "rejected a malformed HTTP request from %s: %s%s"
        record.args = (remote, detail, f" ({held} more not logged since the previous line)" if held else "")
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


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
    parts["stages"] = stage_guard(pipe).health_part()
    parts["producer"] = pipe.outbox.health_part()
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
    merged = pipe.tables.merged.data.values() if pipe.tables.merged is not None else []
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
    pipe.metrics.watch_producer(lambda: pipe.outbox.failed_messages, lambda: pipe.outbox.failure is not None)
    registry = pipe.metrics.registry
    token = pipe.settings.web.token
    auth = guarded(token)  # /health stays open: liveness probes carry no token
    # Default deny: the decorators name what each page wants; the middleware also
    # covers any route nobody decorated.
    app.web.web_app.middlewares.append(web_auth.middleware(token))
    server_log = logging.getLogger(AIOHTTP_SERVER_LOG)
    for old in [f for f in server_log.filters if isinstance(f, HttpErrorLog)]:
        server_log.removeFilter(old)  # an app built again in the same process
    server_log.addFilter(HttpErrorLog(secrets=(token,)))
    if not token and pipe.settings.web.bind not in ("127.0.0.1", "::1", "localhost"):
        log.warning("web: listening on %s without a token: anyone who can reach port %d sees the KPIs "
                    "(set CCPULSE_WEB_TOKEN)", pipe.settings.web.bind, pipe.settings.web_port)

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

    # Open like /health: links only, the pages behind them want the token.
    index = index_html(pipe.role)
    drop_faust_index(app)

    @app.page("/")
    async def index_page(web, request):  # type: ignore[no-untyped-def]
        return web.html(index)


def index_html(role: str) -> str:
    """The worker's front page: where a new user finds the wallboard (Faust's said {"status": "OK"})."""
    pages = ([("/wallboard", "the wallboard")] if role != "writer" else []) + [
        ("/api/windows", "KPI windows (JSON)"), ("/metrics", "Prometheus metrics"), ("/health", "health")]
    items = "".join(f'<li><a href="{href}">{href}</a> {what}</li>' for href, what in pages)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>ccpulse worker</title></head>"
            f"<body><h1>ccpulse worker ({role})</h1><ul>{items}</ul></body></html>")
