"""Issue 17: the connectors' publisher on the real broker: every event on its family's topic,
keyed as EVENTS.md asks, acknowledged before ``publish`` returns; a dead letter shaped as the
pipeline's own; a batch Kafka refuses becomes one clear error."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ccpulse.commands.connect_publish import ConnectorPublisher, PublishError
from ccpulse.config import Settings, load_settings
from ccpulse.connectors.base import Mapped
from ccpulse.probes import free_port
from tests.worker_process import read_topic

pytestmark = pytest.mark.integration


def settings(bootstrap: str, prefix: str) -> Settings:
    return load_settings(env={"CCPULSE_KAFKA_BOOTSTRAP": bootstrap, "CCPULSE_TOPIC_PREFIX": prefix})


def run(settings_: Settings, action: Any) -> Any:
    async def go() -> Any:
        publisher = ConnectorPublisher(settings_, "testsrc")
        await publisher.start()
        try:
            return await action(publisher)
        finally:
            await publisher.stop()
    return asyncio.run(go())


CALL = {"event_id": "e1", "type": "call.offered", "occurred_at": "2026-01-05T08:00:00.000Z",
        "interaction_id": "c-1", "queue": "billing"}
AGENT = {"event_id": "e2", "type": "agent.logged_in", "occurred_at": "2026-01-05T08:00:00.000Z",
         "agent_id": "a-7", "queues": ["billing"]}


def test_publish_lands_every_event_on_its_topic_keyed_and_acknowledged(kafka_bootstrap: str) -> None:
    s = settings(kafka_bootstrap, "pub1.")
    run(s, lambda p: p.publish([Mapped("call", CALL), Mapped("agent", AGENT)]))
    # publish returned: both are on the broker already, no waiting needed.
    calls = read_topic(kafka_bootstrap, "pub1.calls", timeout=10)
    agents = read_topic(kafka_bootstrap, "pub1.agents", timeout=10)
    assert [(k, json.loads(v)) for k, v in calls] == [(b"c-1", CALL)]
    assert [(k, json.loads(v)) for k, v in agents] == [(b"a-7", AGENT)]


def test_dead_letter_is_the_pipelines_record_naming_the_connector(kafka_bootstrap: str) -> None:
    s = settings(kafka_bootstrap, "pub2.")
    raw = b"1700000000|1700000000.1|support|SIP/1001|FROBNICATE|x"
    run(s, lambda p: p.dead_letter(raw, "unknown_event", "FROBNICATE is not a queue_log event"))
    [(key, value)] = read_topic(kafka_bootstrap, "pub2.events.dead-letter", timeout=10)
    record = json.loads(value)
    assert key == b"testsrc"
    assert base64.b64decode(record.pop("value_base64")) == raw
    assert record.pop("received_at").endswith("Z")
    assert record == {"reason": "unknown_event", "detail": "FROBNICATE is not a queue_log event",
                      "topic": "connect:testsrc", "partition": -1, "offset": -1}


def test_a_batch_the_broker_refuses_is_one_clear_error(kafka_bootstrap: str) -> None:
    s = settings(kafka_bootstrap, "pub3.")

    async def small_calls_topic() -> None:
        # An existing input topic is never altered (streams.topics): this one refuses 10 KB.
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("pub3.calls", s.kafka.partitions, 1, topic_configs={"max.message.bytes": "4096"})])
        finally:
            await admin.close()
    asyncio.run(small_calls_topic())
    big = dict(CALL, event_id="e-big", interaction_id="c-2", attributes={"note": "x" * 10_000})
    with pytest.raises(PublishError) as caught:
        run(s, lambda p: p.publish([Mapped("call", CALL), Mapped("call", big)]))
    message = str(caught.value)
    assert "\n" not in message and "Kafka at" in message
    assert "1 of 2 messages acknowledged" in message


def test_an_unreachable_broker_is_one_clear_error_at_start(tmp_path: Path) -> None:
    s = settings(f"127.0.0.1:{free_port()}", "pub4.")
    with pytest.raises(PublishError) as caught:
        run(s, lambda p: p.publish([Mapped("call", CALL)]))
    assert "\n" not in str(caught.value) and "unreachable" in str(caught.value)
