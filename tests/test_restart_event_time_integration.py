"""Event time moves on after a restart when an input that carried traffic before it stays silent
(issue 14, item 3), on a real broker with a real worker process.

Voice and ticket traffic, a restart (SIGTERM, within the idle time of the last
ticket), then voice only. Before the fix the ticket partitions' event time, persisted
as active in the lifecycle state, held event time back for good: no window became
final until a ticket arrived. ``idle_close_seconds`` is an hour here, so the
wall-clock fallback for a quiet stream cannot hide it. A late event sent afterwards
is named in the worker's log (item 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.worker_process import WorkerProcess, latest_windows, produce, wait_until

pytestmark = pytest.mark.integration

CONFIG = "[windows]\nidle_close_seconds = 3600\nsource_idle_seconds = 3\n"


def call(eid: str, iid: str, minute: int, second: int = 0) -> tuple[bytes, bytes]:
    doc = {"event_id": eid, "type": "call.offered", "occurred_at": f"2026-01-05T08:{minute:02d}:{second:02d}Z",
           "interaction_id": iid, "queue": "billing"}
    return iid.encode(), orjson.dumps(doc)


def ticket(eid: str, iid: str, minute: int) -> tuple[bytes, bytes]:
    doc = {"event_id": eid, "type": "ticket.created", "occurred_at": f"2026-01-05T08:{minute:02d}:00Z",
           "interaction_id": iid, "queue": "support", "channel": "email"}
    return iid.encode(), orjson.dumps(doc)


def consumed(worker: WorkerProcess) -> float:
    return sum(v for (n, _l), v in worker.metrics().items() if n == "ccpulse_events_consumed_total")


def test_windows_become_final_after_a_restart_with_a_silent_input(kafka_bootstrap: str, tmp_path: Path) -> None:
    (tmp_path / "ccpulse.toml").write_text(CONFIG)
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "restartwm")
    calls, tickets = f"{worker.prefix}calls", f"{worker.prefix}tickets"
    # Enough interactions that every partition of both topics carries some.
    before_calls = [call(f"c{i}", f"c{i}", 0, i) for i in range(24)]
    before_tickets = [ticket(f"t{i}", f"t{i}", 1) for i in range(24)]
    worker.start()
    try:
        produce(kafka_bootstrap, calls, before_calls)
        produce(kafka_bootstrap, tickets, before_tickets)
        wait_until(lambda: consumed(worker) >= 48, 90, "the traffic before the restart consumed")
        # The lifecycle state must hold the ticket partitions as active: the watermark
        # tick that carries them goes out within a publish interval.
        wait_until(lambda: json.loads(worker.get("/api/windows")[1] or "{}").get("event_time_lag_seconds"),
                   30, "event time from the traffic")
    finally:
        assert worker.stop() == 0
    worker.start()
    try:
        produce(kafka_bootstrap, calls, [call(f"v{i}", f"v{i}", 10, i) for i in range(24)])
        windows_topic = f"{worker.prefix}kpi.windows"

        def final_0800() -> bool:
            windows = latest_windows(kafka_bootstrap, windows_topic)
            record = windows.get("1m|2026-01-05T08:00:00.000Z|billing|voice")
            return record is not None and record["final"] and record["offered"] == 24

        wait_until(final_0800, 60, "the 08:00 voice window to become final (event time moving on)")
        # Item 8, the worker's side: a late event is named in the log, not only counted.
        produce(kafka_bootstrap, calls, [call("late", "late-1", 0, 30)])
        line = "billing/voice 1m window from 2026-01-05T08:00:00.000Z: 1"
        wait_until(lambda: line in worker.log_tail(20_000), 60, "the late event's log line")
    finally:
        assert worker.stop() == 0
