"""The live agent gauges on a real worker's ``/metrics`` (issue 16): what the merge stage
publishes on ``kpi.queue-state`` is what ``/metrics`` shows, queue by queue (the merge
shell keeps the newest record of each queue it owns; streams/merge.py). The seconds in
each state (``ccpulse_queue_agent_state_seconds_total``) are asserted with a scripted
shift in tests/test_agents_integration.py."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ccpulse.commands.publish import publish_mixed
from ccpulse.commands.simulate import QueueModel, SimulationConfig, generate_call_events
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
STATES = {"staffed": "agents_staffed", "available": "agents_available", "on_contact": "agents_on_contact",
          "after_contact_work": "agents_after_contact_work", "away": "agents_away"}


def expected(record: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gauges one queue-state record makes (a null ratio or requirement: no sample)."""
    q, ch = record["queue"], record["channel"]
    out = {("ccpulse_queue_agents", (("channel", ch), ("queue", q), ("state", state))): float(record.get(name) or 0)
           for state, name in STATES.items()}
    for reason, n in (record.get("agents_away_by_reason") or {}).items():
        out[("ccpulse_queue_agents_away", (("channel", ch), ("queue", q), ("reason", reason)))] = float(n)
    for metric, name in (("ccpulse_queue_occupancy", "occupancy_now"), ("ccpulse_queue_agents_required", "agents_required"),
                         ("ccpulse_queue_agents_gap", "agents_gap")):
        if record.get(name) is not None:
            out[(metric, (("channel", ch), ("queue", q)))] = float(record[name])
    return out


AGENT_METRICS = ("ccpulse_queue_agents", "ccpulse_queue_agents_away", "ccpulse_queue_occupancy",
                 "ccpulse_queue_agents_required", "ccpulse_queue_agents_gap")


def test_live_agent_gauges_are_the_merged_queue_state(tmp_path: Path, kafka_bootstrap: str) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "promagents")
    events = list(generate_call_events(SimulationConfig(
        rate=0.5, queues=(QueueModel("billing", agents=3), QueueModel("sales", agents=5)), seed=7, start=START), 180))
    worker.start()
    try:
        sent = asyncio.run(publish_mixed([("call", e) for e in events], kafka_bootstrap,
                                         {"call": f"{worker.prefix}calls"}, None))
        assert sent == len(events)
        topic = f"{worker.prefix}kpi.queue-state"

        def agree() -> Any:
            # The newest record per key on the topic, against /metrics: equal once the
            # last records are out (the merge publishes each key at most once a second).
            newest: dict[bytes, dict[str, Any]] = {}
            for key, value in read_topic(kafka_bootstrap, topic):
                newest[key] = json.loads(value)
            want: dict = {}
            for record in newest.values():
                want.update(expected(record))
            got = {k: v for k, v in worker.metrics().items() if k[0] in AGENT_METRICS}
            queues = {r["queue"] for r in newest.values()}
            return (want if queues >= {"billing", "sales"} and got == want else None, got, want)

        result = wait_until(lambda: agree()[0], 120, "the agent gauges equal the newest kpi.queue-state records")
        assert ("ccpulse_queue_agents", (("channel", "voice"), ("queue", "billing"), ("state", "staffed"))) in result
        assert worker.get("/health")[0] == 200
    finally:
        worker.stop()
