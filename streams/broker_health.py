"""Is the Kafka broker reachable? The ``kafka`` part of ``/health`` and ``ccpulse_kafka_up``.

Faust keeps retrying quietly while the broker is away, so a worker whose broker
went down would otherwise still answer 200. A metadata request every couple of
seconds (through the producer's own client: same bootstrap, same credentials)
tells a reachable cluster from an unreachable one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from schemas.events import format_ms
from streams.context import Pipeline
from streams.kafka_consumer import aiokafka_producer

PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 3.0


@dataclass
class BrokerProbe:
    failing_since: float | None = None  # unix time of the first failed probe in a row
    last_error: str = ""

    @property
    def up(self) -> bool:
        return self.failing_since is None

    def succeeded(self) -> None:
        self.failing_since, self.last_error = None, ""

    def failed(self, error: str, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = error

    def detail(self) -> dict[str, Any]:
        if self.up:
            return {}
        return {"broker_unreachable_since": format_ms(int((self.failing_since or 0) * 1000)),
                "broker_unreachable_seconds": round(time.time() - (self.failing_since or 0), 1),
                "last_error": self.last_error}


async def probe_once(app: Any, probe: BrokerProbe, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    try:
        # The producer's client: the one every stage's output goes through.
        client = aiokafka_producer(app).client
        await asyncio.wait_for(client.fetch_all_metadata(), timeout)
    except Exception as exc:  # any failure means "not reachable now"; the reason goes to /health
        probe.failed(f"{type(exc).__name__}: {exc}"[:300], time.time())
    else:
        probe.succeeded()


def register(pipe: Pipeline) -> None:
    probe = pipe.broker = BrokerProbe()
    pipe.metrics.kafka_up.set_function(lambda: 1.0 if probe.up else 0.0)
    pipe.metrics.kafka_failing_since.set_function(lambda: probe.failing_since or 0.0)

    @pipe.app.timer(PROBE_INTERVAL_SECONDS, name="broker-probe")
    async def broker_probe() -> None:
        await probe_once(pipe.app, probe)
