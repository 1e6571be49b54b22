"""kpi.windows and kpi.queue-state get the merged record of every key a batch touched at
once: no timer in series after the pipeline's checkpoint (issue 15). With
publish_interval_seconds far longer than the test waits, a timer-driven merge shows nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from tests.worker_process import WorkerProcess, latest_windows, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

WAIT_SECONDS = 15.0  # far below the interval below, far above a checkpoint and two hops


def test_a_window_and_its_queue_state_are_published_without_waiting_for_a_timer(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    config = tmp_path / "ccpulse.toml"
    config.write_text("[windows]\npublish_interval_seconds = 120\n")
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "mergenow", CCPULSE_CONFIG=str(config))
    worker.start()
    try:
        event = {"event_id": "L1", "type": "call.offered", "occurred_at": "2026-01-05T08:00:05.000Z",
                 "interaction_id": "L", "queue": "billing"}
        sent = time.monotonic()
        produce(kafka_bootstrap, f"{worker.prefix}calls", [(b"L", orjson.dumps(event))])
        key = "1m|2026-01-05T08:00:00.000Z|billing|voice"
        record = wait_until(lambda: latest_windows(kafka_bootstrap, f"{worker.prefix}kpi.windows").get(key),
                            WAIT_SECONDS, "the 08:00 billing window on kpi.windows", interval=0.25)
        assert record["offered"] == 1
        # The first billing|voice state may precede the pipeline's live partial: the window's
        # partial (which refreshes the queue's last 15 minutes) or the agent stage's can
        # reach the merge in an earlier batch, and say 0 waiting until the live one is merged.
        wait_until(lambda: _queue_state(kafka_bootstrap, f"{worker.prefix}kpi.queue-state",
                                        "billing|voice", waiting=1),
                   max(1.0, WAIT_SECONDS - (time.monotonic() - sent)),
                   "billing|voice on kpi.queue-state with 1 waiting", interval=0.25)
    finally:
        worker.stop()


def _queue_state(bootstrap: str, topic: str, key: str, waiting: int) -> dict | None:
    """The latest ``key`` record on ``topic`` once it shows ``waiting``, else None."""
    states = {k.decode(): json.loads(v) for k, v in read_topic(bootstrap, topic)}
    state = states.get(key)
    return state if state is not None and state["waiting"] == waiting else None
