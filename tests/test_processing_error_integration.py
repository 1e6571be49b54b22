"""An event that makes a stage raise costs that event only (issue 14, item 1), on a real broker.

- .NET's ``DateTime.MinValue`` (0001-01-01T00:00:00Z) with the day in America/New_York
  starting at 06:00 made ``Windowing`` raise: Faust restarted the lifecycle agent and
  committed the batch, and the valid events after it were never counted.
- Any record whose processing raises (a fault injected into the worker process,
  tests/faults/sitecustomize.py) is dead-lettered with reason ``processing_error``,
  counted, and the rest of its batch is applied.
- An agent that dies all the same commits nothing from then on and /health says so;
  a restart reads the batch again and nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

FAULTS_DIR = Path(__file__).parent / "faults"
CONFIG = '[windows]\ntimezone = "America/New_York"\nday_start_hour = 6\n'


def offered(event_id: str, interaction: str, ts: str = "2026-01-05T13:00:00.000Z") -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "call.offered", "occurred_at": ts,
                         "interaction_id": interaction, "queue": "q"})


def faulty_worker(bootstrap: str, tmp: Path, name: str, faults: str) -> WorkerProcess:
    (tmp / "ccpulse.toml").write_text(CONFIG)
    path = os.pathsep.join(filter(None, [str(FAULTS_DIR), os.environ.get("PYTHONPATH")]))
    return WorkerProcess.create(bootstrap, tmp, name, PYTHONPATH=path, CCPULSE_TEST_FAULTS=faults)


def publish(bootstrap: str, topic: str, values: list[bytes]) -> list[tuple[str, int, int]]:
    """In order, on one partition (one key); returns each message's (topic, partition, offset)."""
    async def run() -> list[tuple[str, int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=v, key=b"one-partition") for v in values]
            return [(m.topic, m.partition, m.offset) for m in [await f for f in futures]]
        finally:
            await producer.stop()
    return asyncio.run(run())


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    return asyncio.run(run())


def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in worker.metrics().items()
               if n == name and all((k, x) in lbls for k, x in labels.items()))


def test_a_record_that_raises_is_dead_lettered_and_the_rest_of_its_batch_counted(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = faulty_worker(kafka_bootstrap, tmp_path, "procerr", "poison-step")
    values = [offered("before", "i-before"),
              offered("dotnet-min", "i-min", "0001-01-01T00:00:00Z"),
              offered("poison", "i-poison")]
    values += [offered(f"after-{n}", f"i-after-{n}") for n in range(10)]
    worker.start()
    try:
        where = publish(kafka_bootstrap, f"{worker.prefix}calls", values)
        dlq = f"{worker.prefix}events.dead-letter"

        def counted() -> float:
            return metric(worker, "ccpulse_queue_offered_total", queue="q")

        wait_until(lambda: counted() >= 11, 90, "the valid events counted")
        dead = wait_until(lambda: [json.loads(v) for _k, v in read_topic(kafka_bootstrap, dlq)]
                          if len(read_topic(kafka_bootstrap, dlq)) >= 2 else None, 60, "two dead letters")
        assert counted() == 11
        by_reason = {d["reason"]: d for d in dead}
        assert sorted(by_reason) == ["bad_timestamp", "processing_error"], dead
        assert len(dead) == 2
        poisoned = by_reason["processing_error"]
        assert poisoned["detail"].startswith("pipeline: ValueError: injected fault"), poisoned
        assert base64.b64decode(poisoned["value_base64"]) == values[2]
        assert (poisoned["topic"], poisoned["partition"], poisoned["offset"]) == where[2]
        too_early = by_reason["bad_timestamp"]
        assert "0001-01-01" in too_early["detail"] and "America/New_York" in too_early["detail"]
        assert (too_early["topic"], too_early["partition"], too_early["offset"]) == where[1]
        assert metric(worker, "ccpulse_events_invalid_total", reason="processing_error") == 1
        assert metric(worker, "ccpulse_events_invalid_total", reason="bad_timestamp") == 1
        assert worker.get("/health")[0] == 200
    finally:
        assert worker.stop() == 0


def test_a_dead_agent_commits_nothing_and_a_restart_loses_nothing(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = faulty_worker(kafka_bootstrap, tmp_path, "agentcrash", "crash-rows")
    events_topic = f"{worker.prefix}calls"  # the pipeline commits the input itself
    first = [offered(f"a-{n}", f"a-{n}") for n in range(5)] + [offered("crash", "crash-me")]
    first += [offered(f"b-{n}", f"b-{n}") for n in range(5)]
    later = [offered(f"c-{n}", f"c-{n}") for n in range(3)]
    worker.start()
    try:
        publish(kafka_bootstrap, f"{worker.prefix}calls", first)

        def unhealthy() -> Any:
            status, body = worker.get("/health")
            return json.loads(body) if status == 503 else None

        body = wait_until(unhealthy, 90, "/health to report the dead agent")
        assert body["parts"]["stages"]["ok"] is False
        assert "pipeline: RuntimeError: injected crash" in body["parts"]["stages"]["detail"], body
        assert metric(worker, "ccpulse_stage_crashes_total", stage="pipeline") == 1
        at_crash = committed(kafka_bootstrap, "agentcrash", events_topic)
        publish(kafka_bootstrap, f"{worker.prefix}calls", later)
        # The restarted agent goes on (the live view stays fresh) but commits nothing.
        wait_until(lambda: metric(worker, "ccpulse_queue_offered_total", queue="q") >= len(first) + len(later), 60,
                   "the later events applied")
        deadline = time.monotonic() + 5  # five commit intervals
        while time.monotonic() < deadline:
            assert committed(kafka_bootstrap, "agentcrash", events_topic) == at_crash
            time.sleep(1)
        assert worker.get("/health")[0] == 503
    finally:
        worker.stop()
    worker.env.pop("CCPULSE_TEST_FAULTS")
    worker.start()
    try:
        total = len(first) + len(later)
        wait_until(lambda: metric(worker, "ccpulse_queue_offered_total", queue="q") >= total, 90,
                   "every event counted after the restart")
        assert metric(worker, "ccpulse_queue_offered_total", queue="q") == total
        assert worker.get("/health")[0] == 200
    finally:
        assert worker.stop() == 0
