"""``ccpulse connect http``: one receiver for the webhook platforms (README "Connect your platform").

A route per source of ``ccpulse.connectors.registry.SOURCES`` (/twilio, /zendesk,
/jira, /eventbridge/connect, /eventbridge/genesys), each served only when its secret
is configured. A request is answered:

- 401, with a body that does not say why, when it is unsigned, wrongly signed or stale
  (the log and ``ccpulse_connect_refused_total`` say why);
- 413 when its body is over ``connect.max_body_bytes``;
- 2xx only once Kafka acknowledged every event it mapped to, so a platform retries
  whatever was not stored; a retry maps to the same event ids and dedups in the pipeline;
- 503 when Kafka did not acknowledge within ``connect.ack_timeout_seconds``;
- 200 when it cannot be mapped: its body goes to the dead-letter topic with the reason,
  and the platform does not retry it forever.

TLS is left to a reverse proxy in front (README shows one).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Any, Callable

from ccpulse.commands.connect_publish import ConnectorPublisher, PublishError
from ccpulse.commands.errors import CommandError
from ccpulse.config import Settings
from ccpulse.connectors.base import MAPPER_ERROR, MappingError
from ccpulse.connectors.registry import SOURCES, WebhookRequest, WebhookSource
from ccpulse.log_limit import CountedLines, LogLimiter

log = logging.getLogger(__name__)

HEALTH_PROBE_SECONDS = 2.0
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A platform reads only the status; nothing in a refusal's body may help a forger.
_EMPTY_JSON = b"{}"


def add_parser(sources: Any, settings: Callable[[], Any]) -> None:
    """Register ``connect http``."""
    from ccpulse.commands.arguments import positive_int

    p = sources.add_parser(
        "http", help="receive the platforms' webhooks (Twilio, Zendesk, Jira, EventBridge) into the input topics",
        description="One HTTP receiver for the webhook platforms: each request's signature is checked, its "
                    "events published, and it is answered 2xx only once Kafka acknowledged them.")
    p.add_argument("--host", default=None, help="address to listen on (default: connect.http_bind, 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=None,
                   help="port to listen on (default: connect.http_port, 6070)")
    p.set_defaults(func=lambda args: run(args, settings))


def served_sources(settings: Settings) -> tuple[list[WebhookSource], list[str]]:
    """The sources with a secret configured, and one line per source left out."""
    served = [source for source in SOURCES if source.secret(settings.connect)]
    left_out = [f"{source.path} (no connect.{source.secret_setting})" for source in SOURCES
                if source not in served]
    return served, left_out


class Receiver:
    """The aiohttp application: the source routes, /health and /metrics, and their own metrics registry."""

    def __init__(self, settings: Settings, sources: list[WebhookSource], publishers: dict[str, Any],
                 clock: Callable[[], float] = time.time) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.settings = settings
        self.sources = sources
        # One per source: a dead letter names its source (topic connect:<source>).
        self.publishers = publishers
        self.clock = clock
        self.registry = CollectorRegistry()
        self.requests = Counter("ccpulse_connect_requests", "Webhook requests by source and outcome "
                                "(accepted, ignored, dead_lettered, unauthorized, too_large, unavailable)",
                                ["source", "outcome"], registry=self.registry)
        self.refused = Counter("ccpulse_connect_refused", "Requests answered 401, by source and reason "
                               "(unsigned, bad_signature, stale)", ["source", "reason"], registry=self.registry)
        self.mapping_failures = Counter("ccpulse_connect_mapping_failures", "Payloads dead-lettered because "
                                        "they could not be mapped, by source and reason", ["source", "reason"],
                                        registry=self.registry)
        self.published = Counter("ccpulse_connect_events_published", "Events acknowledged by Kafka, by source "
                                 "and family", ["source", "family"], registry=self.registry)
        self.ack_seconds = Histogram("ccpulse_connect_ack_seconds", "From a request's events sent to Kafka "
                                     "having acknowledged them all", ["source"], buckets=ACK_BUCKETS,
                                     registry=self.registry)
        self.kafka_problem: str | None = None
        # A platform misconfigured or an attacker can repeat these many times a second: summed lines.
        self._refusals = CountedLines(log.warning, "webhook requests refused with 401")
        self._dead_letters = CountedLines(log.warning, "webhook payloads dead-lettered")
        self._mapper_errors = LogLimiter(60.0)

    def app(self) -> Any:
        from aiohttp import web

        # aiohttp refuses a larger body with 413 itself, also when it comes chunked.
        app = web.Application(client_max_size=self.settings.connect.max_body_bytes)
        for source in self.sources:
            app.router.add_post(source.path, self._handler(source))
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    def _handler(self, source: WebhookSource) -> Callable[[Any], Any]:
        async def handle(request: Any) -> Any:
            return await self.handle(source, request)
        return handle

    async def handle(self, source: WebhookSource, request: Any) -> Any:
        from aiohttp import web

        connect = self.settings.connect
        if request.content_length is not None and request.content_length > connect.max_body_bytes:
            return self._answer(source, "too_large", 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._answer(source, "too_large", 413)
        req = WebhookRequest(_public_url(request, connect.public_url),
                             {k.lower(): v for k, v in request.headers.items()}, body, int(self.clock() * 1000))
        refused = source.check(req, connect)
        if refused is not None:
            self.refused.labels(source.name, refused).inc()
            self._refusals.note(f"{source.name} {refused}", time.monotonic())
            return self._answer(source, "unauthorized", 401)
        try:
            mapped = source.map(req, connect)
        except MappingError as exc:
            return await self._dead_letter(source, body, exc.reason, exc.detail)
        except Exception as exc:  # a mapper's bug on some input: dead-lettered, never a 500 retried forever
            if self._mapper_errors.allow(time.monotonic()) is not None:
                log.exception("%s: the mapper failed on a request (dead-lettered as mapper_error)", source.name)
            return await self._dead_letter(source, body, MAPPER_ERROR, f"{type(exc).__name__}: {exc}"[:300])
        if not mapped:
            return self._answer(source, "ignored", 200)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.publishers[source.name].publish(mapped), connect.ack_timeout_seconds)
        except (PublishError, asyncio.TimeoutError) as exc:
            return self._unavailable(source, exc)
        self.ack_seconds.labels(source.name).observe(time.monotonic() - started)
        for m in mapped:
            self.published.labels(source.name, m.family).inc()
        return self._answer(source, "accepted", 200)

    async def _dead_letter(self, source: WebhookSource, body: bytes, reason: str, detail: str) -> Any:
        try:
            await asyncio.wait_for(self.publishers[source.name].dead_letter(body, reason, detail),
                                   self.settings.connect.ack_timeout_seconds)
        except (PublishError, asyncio.TimeoutError) as exc:
            # Not stored yet: the platform must send it again.
            return self._unavailable(source, exc)
        self.mapping_failures.labels(source.name, reason).inc()
        self._dead_letters.note(f"{source.name} {reason}", time.monotonic())
        return self._answer(source, "dead_lettered", 200)

    def _unavailable(self, source: WebhookSource, exc: BaseException) -> Any:
        problem = str(exc) or f"Kafka did not acknowledge within {self.settings.connect.ack_timeout_seconds:g} s"
        if self.kafka_problem is None:
            log.error("%s: answered 503, the platform will retry: %s", source.name, problem)
        self.kafka_problem = problem
        return self._answer(source, "unavailable", 503)

    def _answer(self, source: WebhookSource, outcome: str, status: int) -> Any:
        from aiohttp import web

        self.requests.labels(source.name, outcome).inc()
        return web.Response(status=status, body=_EMPTY_JSON, content_type="application/json")

    async def health(self, request: Any) -> Any:
        from aiohttp import web

        ok = self.kafka_problem is None
        return web.json_response({"status": "ok" if ok else "unavailable", "kafka": self.kafka_problem or "ok",
                                  "sources": [s.path for s in self.sources]}, status=200 if ok else 503)

    async def metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def probe_forever(self) -> None:
        """Keep /health honest: can the broker be reached and logged in to, as the producer does."""
        from ccpulse.kafka_security import diagnose

        while True:
            self.kafka_problem = await diagnose(self.settings.kafka, timeout=HEALTH_PROBE_SECONDS * 2)
            self._refusals.flush(time.monotonic())
            self._dead_letters.flush(time.monotonic())
            await asyncio.sleep(HEALTH_PROBE_SECONDS)


def _public_url(request: Any, configured: str) -> str:
    """The URL the platform called (Twilio signs it): ``connect.public_url``, else as a proxy forwarded it."""
    if configured:
        return configured + request.raw_path
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or request.scheme
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
    return f"{proto}://{host}{request.raw_path}"


def run(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    s = settings()
    host = args.host or s.connect.http_bind
    port = args.port or s.connect.http_port
    if not 1 <= port <= 65535:
        raise CommandError(f"--port {port}: not a TCP port (1-65535)")
    served, left_out = served_sources(s)
    if not served:
        raise CommandError("no webhook source is configured: set at least one of connect.twilio_auth_token, "
                           "connect.zendesk_secret, connect.jira_secret, connect.eventbridge_api_key "
                           "(or their CCPULSE_CONNECT_* variables)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(s, host, port, served, left_out))


async def _serve(s: Settings, host: str, port: int, served: list[WebhookSource], left_out: list[str]) -> int:
    from aiohttp import web

    publishers: dict[str, ConnectorPublisher] = {}
    runner = None
    try:
        for source in served:
            publishers[source.name] = ConnectorPublisher(s, source.name)
            await publishers[source.name].start()
        receiver = Receiver(s, served, publishers)
        runner = web.AppRunner(receiver.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        probe = asyncio.create_task(receiver.probe_forever())
        print(f"ccpulse connect http: listening on http://{host}:{port}, serving "
              + ", ".join(src.path for src in served)
              + (f"; not served: {', '.join(left_out)}" if left_out else ""), file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        probe.cancel()
    finally:
        # Requests in flight finish (their acknowledgements awaited) before the producers close.
        if runner is not None:
            await runner.cleanup()
        for publisher in publishers.values():
            await publisher.stop()
    return 0
