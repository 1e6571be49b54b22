"""The broker probe behind /health's ``kafka`` part and ``ccpulse_kafka_up`` (streams/broker_health.py).

The real broker going away and coming back is ``ccpulse chaos --scenarios broker-restart``
(tests/test_chaos.py): /health must answer 503 and ccpulse_kafka_up 0 meanwhile.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.broker_health import BrokerProbe, probe_once


class Client:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    async def fetch_all_metadata(self) -> object:
        if self.behaviour == "down":
            raise ConnectionError("Unable to get cluster metadata over all known brokers")
        if self.behaviour == "hang":
            await asyncio.sleep(60)
        return object()


def app_with(client: Client) -> SimpleNamespace:
    producer = SimpleNamespace(_ensure_producer=lambda: SimpleNamespace(client=client))
    return SimpleNamespace(producer=producer)


def test_down_then_back_up() -> None:
    probe, client = BrokerProbe(), Client("down")
    app = app_with(client)
    asyncio.run(probe_once(app, probe))
    assert not probe.up and "ConnectionError" in probe.last_error
    first = probe.failing_since
    asyncio.run(probe_once(app, probe))
    assert probe.failing_since == first, "failing since the first failure, not the latest"
    detail = probe.detail()
    assert detail["broker_unreachable_seconds"] >= 0 and "cluster metadata" in detail["last_error"]
    client.behaviour = "up"
    asyncio.run(probe_once(app, probe))
    assert probe.up and probe.detail() == {} and probe.last_error == ""


def test_a_broker_that_does_not_answer_in_time_is_down() -> None:
    probe = BrokerProbe()
    asyncio.run(probe_once(app_with(Client("hang")), probe, timeout=0.05))
    assert not probe.up and "TimeoutError" in probe.last_error


def test_a_producer_not_started_yet_is_down_not_a_crash() -> None:
    def not_ready() -> None:
        raise RuntimeError("Producer service not yet started")
    probe = BrokerProbe()
    asyncio.run(probe_once(SimpleNamespace(producer=SimpleNamespace(_ensure_producer=not_ready)), probe))
    assert not probe.up and "not yet started" in probe.last_error
