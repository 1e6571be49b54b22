"""The FCR stage's Faust shell (streams/fcr.py) on a real broker and a real worker: a
record of ``<app>-contacts`` that makes ``FcrStage`` raise is dead-lettered with reason
``processing_error`` (naming the fcr stage) and counted, and the contact after it in
the same batch is applied; no agent dies."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import orjson
import pytest

from tests.test_processing_error_integration import metric, publish
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration


def test_a_contact_that_raises_is_dead_lettered_and_the_next_one_applied(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    name = "fcrbad"
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, name)
    good = orjson.dumps({"customer": "c-hash", "kid": "", "interaction_id": "i1",
                         "ts": int(time.time() * 1000), "queue": "fcrq", "channel": "voice"})
    values = [b"{not json", orjson.dumps({"customer": "c-hash"}), good]
    worker.start()
    try:
        where = publish(kafka_bootstrap, f"{worker.prefix}{name}-contacts", values)
        dlq = f"{worker.prefix}events.dead-letter"
        dead = wait_until(lambda: [json.loads(v) for _k, v in read_topic(kafka_bootstrap, dlq)]
                          if len(read_topic(kafka_bootstrap, dlq)) >= 2 else None, 90, "two dead letters")
        assert [d["reason"] for d in dead] == ["processing_error", "processing_error"], dead
        assert [d["detail"].split(":")[0] for d in dead] == ["fcr", "fcr"], dead
        assert "KeyError" in dead[1]["detail"], dead
        assert [(d["topic"], d["partition"], d["offset"]) for d in dead] == where[:2]
        assert [base64.b64decode(d["value_base64"]) for d in dead] == values[:2]
        wait_until(lambda: metric(worker, "ccpulse_fcr_contacts_total", queue="fcrq") == 1, 60,
                   "the contact after them applied")
        assert metric(worker, "ccpulse_events_invalid_total", reason="processing_error") == 2
        assert worker.get("/health")[0] == 200
    finally:
        assert worker.stop() == 0
