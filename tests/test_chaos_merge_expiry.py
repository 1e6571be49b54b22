"""Reproduction (found by ``ccpulse chaos``): a window's FCR part is lost when it reaches the
merge stage after the merge already expired the window's final KPI entry.

streams/merge.py ``expire()`` drops a merged entry once all its parts are final and
event time (the newest watermark of *any* partial) is past end + fcr_horizon +
retention. When event time jumps (a replay, a long idle close, a restarted worker
whose lifecycle catches up before its FCR stage), the KPI-only entry is dropped
before the FCR part arrives; the FCR part then starts a new entry whose record has
no KPIs and a *lower* version, so kpi.windows consumers and the ReplacingMergeTree
keep the old record without FCR. In ``ccpulse chaos --scenarios crash
--sentinel-gap 10800`` this lost the fcr_* fields of 18 of 35 windows after a kill -9.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from tests.worker_process import WorkerProcess, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

START = 1767600000000  # 2026-01-05T08:00:00Z
KEY = [60, START, "q", "billing", "voice"]
RECORD_KEY = b"1m|2026-01-05T08:00:00.000Z|billing|voice"


def partial(source: str, version: int, counts: dict[str, int], watermark: int) -> tuple[bytes, bytes]:
    return RECORD_KEY, orjson.dumps({"kind": "window", "key": KEY, "partition": source, "version": version,
                                     "final": True, "agg": {"counts": counts, "tops": {}},
                                     "end": START + 60000, "watermark": watermark,
                                     "waiting_at_start": 0, "waiting_at_end": 0})


def newest(bootstrap: str, topic: str) -> dict | None:
    best = None
    for key, value in read_topic(bootstrap, topic):
        record = json.loads(value)
        if key == RECORD_KEY and (best is None or record["version"] >= best["version"]):
            best = record
    return best


@pytest.mark.xfail(reason="merge expiry drops a final KPI entry before its FCR part arrives (see module doc)",
                   strict=False)
def test_fcr_part_arriving_after_a_big_event_time_jump_is_not_lost(kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "merge-expiry", role="compute")
    worker.start()
    try:
        partials = f"{worker.prefix}merge-expiry-window-partials"
        kpi_topic = f"{worker.prefix}kpi.windows"
        # The KPI part, final, reported with event time 3 days later (past end + 1 day FCR horizon + retention).
        produce(kafka_bootstrap, partials, [partial("0", 4000, {"offered": 1}, START + 3 * 86400 * 1000)])
        wait_until(lambda: (newest(kafka_bootstrap, kpi_topic) or {}).get("final"), 60, "the KPI record")
        time.sleep(3)  # a few publish ticks: the expiry runs after each
        produce(kafka_bootstrap, partials, [partial("fcr-0", 10, {"fcr_contacts": 1, "fcr_decided": 1,
                                                                  "fcr_resolved": 1}, START + 3 * 86400 * 1000)])
        time.sleep(5)
        record = newest(kafka_bootstrap, kpi_topic)
        assert record is not None
        assert (record["offered"], record["fcr_contacts"]) == (1, 1), record
    finally:
        worker.stop()
