"""``agents_gap`` on a real worker and the real broker (issue 16): null on ``kpi.queue-state``
and no ``ccpulse_queue_agents_gap`` sample for a queue no agent event ever named, while
``agents_required`` is published; the whole requirement for a queue whose only agent
logged out. The "known" fact crosses the topics (agent stage -> <app>-window-partials ->
merge) and a worker restart: the restarted agent stage sends the queue's live partial
again, still marked known (an agent stage that forgot would send it empty, and the
merge would take that).

    support  ag-S 08:00 login ... 08:05 logout; S1 offered 08:01, answered 08:01:10 by ag-S, ended 08:04
    walkin   W1 offered 08:01, answered 08:01:20 by ag-W (who sends no presence), ended 08:04
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.worker_process import WorkerProcess, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

DAY = "2026-01-05T"
NAME = "gapknown"


def event(eid: str, etype: str, hhmmss: str, **extra: object) -> dict:
    return {"event_id": eid, "type": etype, "occurred_at": f"{DAY}{hhmmss}.000Z", **extra}


AGENTS = [event("A1", "agent.logged_in", "08:00:00", agent_id="ag-S", queues=["support"]),
          event("A2", "agent.logged_out", "08:05:00", agent_id="ag-S")]
CALLS = [event("S1-1", "call.offered", "08:01:00", interaction_id="S1", queue="support"),
         event("S1-2", "call.answered", "08:01:10", interaction_id="S1", agent_id="ag-S"),
         event("S1-3", "call.ended", "08:04:00", interaction_id="S1"),
         event("W1-1", "call.offered", "08:01:00", interaction_id="W1", queue="walkin"),
         event("W1-2", "call.answered", "08:01:20", interaction_id="W1", agent_id="ag-W"),
         event("W1-3", "call.ended", "08:04:00", interaction_id="W1"),
         # event time to 08:06 on the contact side: past the logout
         event("T1-1", "call.offered", "08:06:00", interaction_id="T1", queue="tick")]
# Agent events produced before the calls of the same minutes (tests/test_agents_integration.py).
CONFIG = "[windows]\nallowed_lateness_seconds = 900\n"


def newest_states(bootstrap: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The newest kpi.queue-state record per key, as a compacted consumer sees it."""
    return {k.decode(): json.loads(v) for k, v in read_topic(bootstrap, f"{prefix}kpi.queue-state")}


def support_live_partials(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    """The agent stage's agents_live partials of support/voice, in the order sent."""
    out = []
    for key, value in read_topic(bootstrap, f"{prefix}{NAME}-window-partials"):
        doc = json.loads(value)
        if key == b"live|support|voice" and doc.get("kind") == "agents_live":
            out.append(doc)
    return out


def test_gap_is_null_without_presence_data_and_known_survives_a_restart(tmp_path: Path,
                                                                        kafka_bootstrap: str) -> None:
    (tmp_path / "ccpulse.toml").write_text(CONFIG)
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, NAME)
    p = worker.prefix
    worker.start()
    try:
        produce(kafka_bootstrap, f"{p}agents", [(d["agent_id"].encode(), orjson.dumps(d)) for d in AGENTS],
                one_at_a_time=True)
        produce(kafka_bootstrap, f"{p}calls", [(d["interaction_id"].encode(), orjson.dumps(d)) for d in CALLS],
                one_at_a_time=True)

        def settled() -> dict[str, dict[str, Any]] | None:
            states = newest_states(kafka_bootstrap, p)
            support, walkin = states.get("support|voice", {}), states.get("walkin|voice", {})
            done = (support.get("agents_required") is not None and support.get("agents_staffed") == 0
                    and support.get("agents_gap") is not None and walkin.get("agents_required") is not None)
            return states if done else None

        states = wait_until(settled, 120, "support logged out and both queues sized on kpi.queue-state",
                            interval=1.0)
        support, walkin = states["support|voice"], states["walkin|voice"]
        assert support["agents_gap"] == support["agents_required"] >= 1  # nobody staffed: short by all it needs
        assert walkin["agents_required"] >= 1 and walkin["agents_gap"] is None  # not reported is not short
        metrics = wait_until(lambda: (m := worker.metrics()) and ("ccpulse_queue_agents_required", (
            ("channel", "voice"), ("queue", "walkin"))) in m and m, 30, "walkin on /metrics", interval=1.0)
        assert ("ccpulse_queue_agents_gap", (("channel", "voice"), ("queue", "walkin"))) not in metrics
        assert metrics[("ccpulse_queue_agents_gap", (("channel", "voice"), ("queue", "support")))] == \
            support["agents_required"]

        before = len(support_live_partials(kafka_bootstrap, p))
        assert before >= 1
        worker.stop()
        worker.start()
        partials = wait_until(lambda: (got := support_live_partials(kafka_bootstrap, p)) and len(got) > before
                              and got, 90, "the restarted agent stage's live partial of support", interval=1.0)
        assert partials[-1]["counts"] == {"presence_seen": 1}
    finally:
        worker.stop()
