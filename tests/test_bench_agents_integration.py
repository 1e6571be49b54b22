"""``ccpulse bench --agent-mix`` against the real thing: a broker, a ``--role all`` worker.

The throughput scenario's clock stops when the offset watch says every group has
committed its input. With agent events in the mix, that moment must come after the
agent stage applied them all: its group has committed every agent event, and every
agent of the input has its timeline in the agent stage's changelog by then.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from ccpulse.tools.bench import ensure_topics
from ccpulse.tools.bench_kafka import (GroupTopics, OffsetWatch, event_messages, partitions_of, produce_all,
                                       simulated_events)
from ccpulse.tools.bench_worker import BenchApp, WorkerProc

CODE = Path(__file__).resolve().parents[1]
EVENTS = 5000  # the 3,240 agents log in first, then calls, chats and tickets with their agents


def test_the_watch_ends_after_the_agent_stage_applied_the_mix(kafka_bootstrap: str, tmp_path: Path) -> None:
    app = BenchApp("h3-agentmix", tmp_path, kafka_bootstrap, CODE, "h3-agentmix.", agent_mix=True)
    app.write_config()
    events = simulated_events(EVENTS, seed=5, agent_mix=True)
    agent_events = [orjson.loads(value) for family, value in events if family == "agent"]
    agents = {ev["agent_id"] for ev in agent_events}
    assert len(agents) > 100 and len(agent_events) < EVENTS  # contacts too, on their topics
    asyncio.run(ensure_topics(app))
    assert asyncio.run(produce_all(kafka_bootstrap, event_messages(events, app.input_topics))) == EVENTS
    group = app.topology()["all"]
    app.check_agent_stage([group])
    worker = WorkerProc(app, "all", 0)
    worker.start()
    try:
        committed = asyncio.run(_wait_done(kafka_bootstrap, app, group))
        assert worker.alive(), worker.log_tail()
        # Read right after the watch said done: what the agent stage had written by then.
        applied = asyncio.run(_changelog_keys(kafka_bootstrap, f"{app.name}-agent-timelines-changelog"))
    finally:
        worker.stop()
    assert sum(committed.values()) == len(agent_events)
    assert agents <= applied, f"{len(agents - applied)} of {len(agents)} agents not applied when the watch was done"


async def _wait_done(bootstrap: str, app: BenchApp, group: GroupTopics) -> dict[int, int]:
    """As the throughput scenario waits; then the group's commits on the agents topic."""
    watch = OffsetWatch(bootstrap, [group], steady=app.steady_topics, inputs=frozenset(app.input_topics.values()))
    await watch.start()
    try:
        await watch.wait_done(timeout=300)
        return await watch.committed(group.group, app.input_topics["agent"])
    finally:
        await watch.stop()


async def _changelog_keys(bootstrap: str, topic: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        keys: set[str] = set()
        tps = await partitions_of(consumer, [topic])
        if not tps:  # nothing written yet: not even the topic
            return keys
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 60
        while remaining:
            assert time.monotonic() < deadline, f"{topic}: not read to its end within 60 s"
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                keys.update(orjson.loads(r.key) for r in records if r.key is not None)
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return keys
    finally:
        await consumer.stop()
