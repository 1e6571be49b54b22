"""A malformed message on <app>-window-partials costs that message only, on a real worker.

A window partial lacking a field the publish reads (here ``version``, ``final`` and ``agg``)
used to be stored as a part of its window: the publish after the batch then raised
outside any one record, the merge agent died, offsets were no longer committed and the
window was never published again. Now it is dead-lettered (``processing_error``,
``merge: ...``) and the good part of the same window is published.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest

from tests.worker_process import WorkerProcess, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

START = 1767600000000  # 2026-01-05T08:00:00Z
KEY = [60, START, "q", "billing", "voice"]
RECORD_KEY = b"1m|2026-01-05T08:00:00.000Z|billing|voice"


def test_a_malformed_partial_is_dead_lettered_and_the_window_still_published(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "merge-bad", role="compute")
    worker.start()
    try:
        malformed = orjson.dumps({"kind": "window", "key": KEY, "partition": "1", "end": START + 60000,
                                  "watermark": START})
        good = orjson.dumps({"kind": "window", "key": KEY, "partition": "0", "version": 7, "final": False,
                             "agg": {"counts": {"offered": 2}, "tops": {}}, "end": START + 60000,
                             "watermark": START, "waiting_at_start": 0, "waiting_at_end": 0})
        # One key: one merge partition, in this order (likely one batch).
        produce(kafka_bootstrap, f"{worker.prefix}merge-bad-window-partials",
                [(RECORD_KEY, malformed), (RECORD_KEY, good)])

        def published() -> dict | None:
            records = [json.loads(v) for k, v in read_topic(kafka_bootstrap, f"{worker.prefix}kpi.windows")
                       if k == RECORD_KEY]
            return records[-1] if records else None

        record = wait_until(published, 60, "the window from its good part", interval=0.5)
        assert (record["offered"], record["version"]) == (2, 7)
        letters = wait_until(lambda: [json.loads(v) for _, v in
                                      read_topic(kafka_bootstrap, f"{worker.prefix}events.dead-letter")],
                             30, "the dead letter", interval=0.5)
        assert len(letters) == 1, letters
        letter = letters[0]
        assert letter["reason"] == "processing_error"
        assert letter["detail"].startswith("merge: ValueError: partial: 'version'"), letter["detail"]
        assert base64.b64decode(letter["value_base64"]) == malformed
        status, body = worker.get("/health")
        assert status == 200, body
        assert worker.metrics().get(("ccpulse_stage_crashes_total", (("stage", "merge"),)), 0) == 0
    finally:
        worker.stop()
