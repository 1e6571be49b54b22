"""A record the ClickHouse writer cannot turn into a row costs that record only, on a real
broker and worker: it is dead-lettered (processing_error, naming the store stage), the rest
of its batch is stored, and the worker stays healthy. Before, a store agent had no
per-record guard: the first such record killed it and the worker stopped committing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest

from ccpulse.core.sla import DEFAULT_TARGETS, Hold, QueueSla
from tests.worker_process import WorkerProcess, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z


def breach_record() -> dict:
    sla, hold = QueueSla("billing", "voice"), Hold(0, 0)
    events = [e for at in (T0, T0 + 1000) for e in sla.observe(
        {"service_level": 0.1}, at, DEFAULT_TARGETS["voice"], hold, seq=(at, 0), source="state")]
    return events[0].to_record(T0)


def rows_written(worker: WorkerProcess, table: str) -> float:
    return sum(v for (name, labels), v in worker.metrics().items()
               if name == "ccpulse_sink_rows_written_total" and ("table", table) in labels)


def test_a_record_without_its_row_is_dead_lettered_and_the_rest_stored(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "sinkbad")
    worker.start()
    try:
        good = breach_record()
        bad = orjson.dumps({"breach_id": "no-target", "version": 1})  # JSON, but no "target"
        topic = f"{worker.prefix}sla.breaches"
        produce(kafka_bootstrap, topic, [(b"no-target", bad), (good["breach_id"].encode(), orjson.dumps(good))])
        dlq = f"{worker.prefix}events.dead-letter"
        dead = wait_until(lambda: [json.loads(v) for _k, v in read_topic(kafka_bootstrap, dlq)], 60,
                          f"a dead letter; worker log: {worker.log_tail()}")
        assert len(dead) == 1 and dead[0]["reason"] == "processing_error", dead
        assert dead[0]["detail"].startswith("store-sla-breaches: KeyError"), dead[0]["detail"]
        assert dead[0]["topic"] == topic and base64.b64decode(dead[0]["value_base64"]) == bad
        wait_until(lambda: rows_written(worker, "sla_breaches") >= 1, 60, "the valid breach stored")
        assert worker.get("/health")[0] == 200
    finally:
        assert worker.stop() == 0
