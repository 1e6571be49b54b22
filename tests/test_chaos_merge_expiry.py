"""Found by ``ccpulse chaos``: a window's FCR part was lost when it reached the merge stage
after the merge had already forgotten the window's final KPI entry.

The merge used to forget a final entry once the newest event time reported by *any*
source was past end + FCR horizon + retention. When event time jumped (a replay, a
long idle close, a restarted worker whose lifecycle caught up before its FCR stage),
the KPI-only entry was dropped before the FCR part arrived; that part then started a
new entry with no KPIs and a lower version. In ``ccpulse chaos --scenarios crash
--sentinel-gap 10800`` this lost the fcr_* fields of 18 of 35 windows after a kill -9.
Now every source sends its clock to every merge partition and the slowest one decides
(ccpulse/core/merge_clock.py); this drives a real worker through both halves of that rule.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from ccpulse.config import KafkaSettings
from ccpulse.core.merge_clock import expected_sources
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


def clock(source: str, watermark: int) -> tuple[bytes, bytes]:
    # Same key as the window, so the clock lands on the window's merge partition.
    return RECORD_KEY, orjson.dumps({"kind": "clock", "source": source, "watermark": watermark})


def last_record(bootstrap: str, topic: str) -> dict | None:
    """The record a compacted-topic consumer keeps: the last one for the key."""
    records = [json.loads(value) for key, value in read_topic(bootstrap, topic) if key == RECORD_KEY]
    return records[-1] if records else None


def test_a_lagging_fcr_part_still_merges_and_a_resent_part_after_forgetting_is_skipped(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "merge-expiry", role="compute")
    worker.start()
    try:
        partials = f"{worker.prefix}merge-expiry-window-partials"
        kpi_topic = f"{worker.prefix}kpi.windows"
        later = START + 3 * 86400 * 1000  # past end + 1 day FCR horizon + lateness + retention
        lagging = "fcr-0"
        def merged_entries() -> float:
            return worker.metrics()[("ccpulse_table_entries", (("table", "merged"),))]

        # Every source the merge waits for (the lifecycle, FCR and agent-stage partitions).
        ahead = sorted(expected_sources(KafkaSettings().partitions) - {lagging})
        # The KPI part, final, then every source's clock far ahead -- but the FCR partition
        # that still owes its part of the window reports an old clock.
        produce(kafka_bootstrap, partials, [partial("0", 4000, {"offered": 1}, later)]
                + [clock(s, later) for s in ahead] + [clock(lagging, START)])
        wait_until(lambda: (newest(kafka_bootstrap, kpi_topic) or {}).get("final"), 60, "the KPI record")
        time.sleep(3)  # a few publish ticks: the expiry runs after each
        assert merged_entries() == 1, "kept while the lagging source still owes its part"
        produce(kafka_bootstrap, partials, [partial(lagging, 10, {"fcr_contacts": 1, "fcr_decided": 1,
                                                                  "fcr_resolved": 1}, later),
                                            clock(lagging, later)])
        wait_until(lambda: (last_record(kafka_bootstrap, kpi_topic) or {}).get("fcr_contacts") == 1, 30,
                   "the FCR part merged into the window")
        record = last_record(kafka_bootstrap, kpi_topic)
        assert (record["offered"], record["fcr_contacts"], record["fcr_final"]) == (1, 1, True), record

        # Every clock is past now: the window is forgotten. A source re-sending its part
        # (as after a crash) must not start a new, poorer record.
        wait_until(lambda: merged_entries() == 0, 30, "the merged window forgotten")
        produce(kafka_bootstrap, partials, [partial("0", 4000, {"offered": 1}, later)])
        wait_until(lambda: worker.metrics().get(("ccpulse_merge_redelivered_parts_total", ())) == 1, 30,
                   "the re-sent part counted as a re-delivery")
        time.sleep(2)
        assert last_record(kafka_bootstrap, kpi_topic) == record
        assert merged_entries() == 0
    finally:
        worker.stop()
