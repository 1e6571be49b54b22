"""A backlog read before event time moved at all still closes its last windows once the input
is quiet (streams/stages/pipeline.py, ``on_tick``), on a real broker with a real worker.

Event time waits for every input partition to report (calls, chats, tickets x
partitions). ``source_idle_seconds`` is long here, so the whole backlog is applied
while the empty chat and ticket partitions still hold event time at 0; only then do
they go idle and move it to the newest event. From there a quiet stream's event time
must follow the wall clock (``idle_close_seconds``), or the last minute never becomes
final and kpi.queue-state stays at one instant (an SLA hold-down never completes:
tests/test_sla_integration.py timed out waiting for its breach when the replay was
read that way).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from ccpulse.core.timestamps import format_ms
from schemas.events import parse_timestamp_ms
from tests.worker_process import WorkerProcess, latest_windows, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

CONFIG = "[windows]\nsource_idle_seconds = 20\nidle_close_seconds = 2\nallowed_lateness_seconds = 5\n"
NEWEST = "2026-01-05T08:00:53Z"


def call(iid: str, second: int) -> tuple[bytes, bytes]:
    doc = {"event_id": iid, "type": "call.offered", "occurred_at": f"2026-01-05T08:00:{second:02d}Z",
           "interaction_id": iid, "queue": "billing"}
    return iid.encode(), orjson.dumps(doc)


def test_a_backlog_applied_before_event_time_moved_closes_its_last_minute(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "ccpulse.toml").write_text(CONFIG)
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "quietbacklog")
    worker.start()
    try:
        # Enough interactions that every calls partition carries some, the newest at 08:00:53.
        produce(kafka_bootstrap, f"{worker.prefix}calls", [call(f"c{i}", 30 + i) for i in range(24)])

        def final_0800() -> dict | None:
            record = latest_windows(kafka_bootstrap, f"{worker.prefix}kpi.windows").get(
                "1m|2026-01-05T08:00:00.000Z|billing|voice")
            return record if record is not None and record["final"] else None

        record = wait_until(final_0800, 120, "the 08:00 minute to become final (event time following the wall clock)",
                            interval=1.0)
        assert record["offered"] == 24
        # The live view moves on too: what an SLA hold-down is measured in.
        states = [json.loads(v) for _k, v in read_topic(kafka_bootstrap, f"{worker.prefix}kpi.queue-state")]
        newest = max(parse_timestamp_ms(s["as_of"]) or 0 for s in states if s["queue"] == "billing")
        assert newest > parse_timestamp_ms(NEWEST), format_ms(newest)
    finally:
        assert worker.stop() == 0
