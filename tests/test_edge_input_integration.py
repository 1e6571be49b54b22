"""Input at the contract's edges, through a real broker and a real worker (issue 14, items 6 and 9).

- A valid event of exactly the contract's size limit (EVENTS.md: 1 MiB) is accepted by
  the input topic as ``ccpulse worker`` creates it, and counted.
- The merge repro: a call in queue ``a|x`` and a ticket in queue ``a`` with channel
  ``x|voice`` were one key, ``a|x|voice``. Both are dead-lettered with their bytes and a
  reason, counted as invalid, and the valid queue ``a`` of either channel stays apart.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.events import MAX_MESSAGE_BYTES
from streams.topics import INPUT_MESSAGE_MAX_BYTES
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

TOPIC_OF = {"call": "calls", "chat": "chats", "ticket": "tickets"}
AT = "2026-01-05T08:00:00.000Z"


def event(event_id: str, etype: str, queue: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": etype, "occurred_at": AT, "interaction_id": event_id,
            "queue": queue, **extra}


def exactly_the_limit() -> bytes:
    """A valid call.offered of exactly MAX_MESSAGE_BYTES bytes (padded in an attribute)."""
    doc = event("big-1", "call.offered", "big", attributes={"pad": ""})
    doc["attributes"]["pad"] = "x" * (MAX_MESSAGE_BYTES - len(orjson.dumps(doc)))
    raw = orjson.dumps(doc)
    assert len(raw) == MAX_MESSAGE_BYTES
    return raw


async def _publish(bootstrap: str, prefix: str, messages: list[tuple[str, bytes, bytes]]
                   ) -> dict[bytes, tuple[str, int, int]]:
    """Send (family, key, value) and wait for each acknowledgement: key -> (topic, partition, offset)."""
    # What an integrator's producer needs for events up to the limit (README, "Input topics").
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_request_size=INPUT_MESSAGE_MAX_BYTES)
    await producer.start()
    try:
        out = {}
        for family, key, value in messages:
            meta = await producer.send_and_wait(prefix + TOPIC_OF[family], value=value, key=key)
            out[key] = (meta.topic, meta.partition, meta.offset)
        return out
    finally:
        await producer.stop()


async def _max_message_bytes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics])
        out = {}
        for response in responses:
            for _code, _msg, _type, name, entries in response.resources:
                out[name] = int(next(e[1] for e in entries if e[0] == "max.message.bytes"))
        return out
    finally:
        await admin.close()


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in metrics.items()
               if n == name and all((k, x) in lbls for k, x in labels.items()))


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("edges")
    # The worker creates its topics itself (ccpulse worker -> streams.topics.ensure_topics).
    worker = WorkerProcess.create(kafka_bootstrap, tmp, "edges")
    refused = [
        ("call", event("pipe-call", "call.offered", "a|x")),
        ("ticket", event("pipe-ticket", "ticket.created", "a", channel="x|voice")),
        ("call", event("zwsp-call", "call.offered", "a\u200b")),
    ]
    kept = [
        ("call", event("plain-call", "call.offered", "a")),
        ("ticket", event("plain-ticket", "ticket.created", "a", channel="x")),
    ]
    messages = [(f, doc["interaction_id"].encode(), orjson.dumps(doc)) for f, doc in refused + kept]
    big = exactly_the_limit()
    worker.start()
    try:
        limits = asyncio.run(_max_message_bytes(
            kafka_bootstrap, [worker.prefix + t for t in TOPIC_OF.values()]))
        where = asyncio.run(_publish(kafka_bootstrap, worker.prefix, [("call", b"big-1", big)] + messages))
        wait_until(lambda: _sum(worker.metrics(), "ccpulse_events_consumed_total") >= 1 + len(messages),
                   120, "every message consumed")
        dlq = f"{worker.prefix}events.dead-letter"
        dead = wait_until(lambda: len(read_topic(kafka_bootstrap, dlq)) >= len(refused)
                          and read_topic(kafka_bootstrap, dlq), 60, "the dead letters")
        wait_until(lambda: _sum(worker.metrics(), "ccpulse_queue_offered_total") >= 1 + len(kept), 60,
                   "the valid offers counted")
        metrics = worker.metrics()
    finally:
        worker.stop()
    yield dict(limits=limits, where=where, dead=dead, metrics=metrics, refused=refused,
               messages={key: value for _f, key, value in messages})


def test_the_created_input_topics_take_an_event_of_the_limit(run) -> None:
    assert run["limits"], "the input topics were not created"
    for topic, limit in run["limits"].items():
        assert limit == INPUT_MESSAGE_MAX_BYTES > MAX_MESSAGE_BYTES, topic


def test_an_event_of_exactly_the_limit_is_counted(run) -> None:
    assert b"big-1" in run["where"]
    assert _sum(run["metrics"], "ccpulse_queue_offered_total", queue="big", channel="voice") == 1


def test_names_that_would_merge_queues_are_dead_lettered_with_their_bytes(run) -> None:
    records = [(key, json.loads(value)) for key, value in run["dead"]]
    assert sorted(key for key, _r in records) == sorted(doc["interaction_id"].encode()
                                                        for _f, doc in run["refused"])
    for key, record in records:
        assert record["reason"] == "invalid_value", record
        assert base64.b64decode(record["value_base64"]) == run["messages"][key]
        assert (record["topic"], record["partition"], record["offset"]) == tuple(run["where"][key])
    details = {key: record["detail"] for key, record in records}
    assert "queue" in details[b"pipe-call"] and "'|'" in details[b"pipe-call"]
    assert "channel" in details[b"pipe-ticket"] and "'|'" in details[b"pipe-ticket"]
    assert "U+200B" in details[b"zwsp-call"]
    assert _sum(run["metrics"], "ccpulse_events_invalid_total", reason="invalid_value") == len(records)


def test_queue_a_stays_apart_per_channel_and_nothing_merged(run) -> None:
    m = run["metrics"]
    assert _sum(m, "ccpulse_queue_offered_total", queue="a", channel="voice") == 1
    assert _sum(m, "ccpulse_queue_offered_total", queue="a", channel="x") == 1
    queues = {dict(labels).get("queue") for (name, labels) in m if name == "ccpulse_queue_offered_total"}
    assert not any("|" in q or "\u200b" in q for q in queues if q), queues


def test_a_topic_the_local_broker_creates_on_first_use_takes_an_event_of_the_limit(kafka_bootstrap: str) -> None:
    # `ccpulse kafka start` auto-creates topics: a producer started before the worker
    # creates `calls` itself, with the broker's defaults rather than ccpulse's topic specs.
    import os
    if os.environ.get("CCPULSE_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("an external broker: its defaults are its operator's")
    where = asyncio.run(_publish(kafka_bootstrap, "autocreated.", [("call", b"big-1", exactly_the_limit())]))
    assert where[b"big-1"][0] == "autocreated.calls"


def test_an_existing_input_topic_with_a_smaller_limit_is_reported(kafka_bootstrap: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # ccpulse does not change topics it did not create (the platform may own them),
    # but a limit that refuses valid events must not go unnoticed.
    import logging
    from dataclasses import replace

    from aiokafka.admin import NewTopic

    from ccpulse.config import Settings, TopicSettings
    from streams.topics import ensure_topics_async

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            # As many partitions as the settings ask: the input topics are co-partitioned
            # (a count that differs is refused, tested below).
            await admin.create_topics([NewTopic("oldtopics.calls", Settings().kafka.partitions, 1,
                                                topic_configs={"max.message.bytes": "1048588"})])
        finally:
            await admin.close()

    asyncio.run(create())
    settings = replace(Settings(), topics=TopicSettings(prefix="oldtopics."), app_id="oldtopics")
    settings = replace(settings, kafka=replace(settings.kafka, bootstrap=kafka_bootstrap))
    with caplog.at_level(logging.WARNING, logger="streams.topics"):
        created = asyncio.run(ensure_topics_async(settings))
    assert "oldtopics.calls" not in created and "oldtopics.chats" in created
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "oldtopics.calls" in warnings[0] and "max.message.bytes=2097152" in warnings[0], warnings


def test_a_worker_on_an_input_topic_of_another_partition_count_refuses_in_one_line(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # The pipeline applies partition p of calls, chats, tickets and <app>-rekey on one
    # engine: a calls topic of 1 partition next to chats of 4 would split interactions.
    from aiokafka.admin import NewTopic

    from tests.test_cli_errors import assert_one_line, run_cli

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("onepart.calls", 1, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "onepart")
    code, out, err = run_cli(["worker"], worker.env, tmp_path, timeout=90)

    line = assert_one_line(code, err, "onepart.calls has 1", "kafka.partitions = 4",
                           "CCPULSE_KAFKA_PARTITIONS")
    # What to set when every existing input topic has 1: the check comes before ccpulse
    # creates the missing topics with 4, or the advice would be the setting that failed.
    assert "kafka.partitions = 1" in line, line
    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            return {t for t in await admin.list_topics() if t.startswith("onepart.")}
        finally:
            await admin.close()

    assert asyncio.run(topics()) == {"onepart.calls"}, "the refused worker created topics"
