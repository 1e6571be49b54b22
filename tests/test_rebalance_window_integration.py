"""Records fetched while a rebalance ends are neither lost nor left behind (real broker and workers).

At the end of every rebalance Faust's recovery resumes the stream partitions, seeks them
to the committed offsets, and only then calls ``flow_control.resume()``, which empties
every stream's queue. A record the fetch loop delivered in between vanished unseen while
the consumer counted it as delivered: one such record was committed past (lost), two or
more stalled the partition for good. The chaos rebalance run hit this about once in a
dozen runs; here a ``sitecustomize`` on the workers' path holds that window open until a
record has been delivered (or two seconds have passed), so a worker starting on a
backlog, and a second one joining it, fetch records inside it every time.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ccpulse.tools.chaos_worker import committed, end_offsets
from ccpulse.config import load_settings
from streams.topics import ensure_topics
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

SITECUSTOMIZE = '''
import asyncio
import sys
import time

from streams import kafka_consumer

_perform_seek = kafka_consumer.InOrderConsumer.perform_seek


async def perform_seek(self):
    await _perform_seek(self)
    # Faust's recovery calls flow_control.resume(), which empties the stream queues,
    # right after this returns: return as soon as a record waits in one (or after 2 s).
    print("holding the end of a rebalance", file=sys.stderr, flush=True)
    acked = self.app.topics.acks_enabled_for

    def stream_records_waiting():  # table changelogs keep Faust's own handling
        return any(acked(event.message.topic) for queue in self.app.flow_control._queues
                   for event in list(queue._queue) if hasattr(event, "message"))
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not stream_records_waiting():
        await asyncio.sleep(0.001)
    if stream_records_waiting():
        print("records were delivered before the rebalance ended", file=sys.stderr, flush=True)


kafka_consumer.InOrderConsumer.perform_seek = perform_seek
'''
INTERACTIONS = 3000


def calls() -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(INTERACTIONS):
        iid = f"w-{i}"
        at = f"2026-01-05T08:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
        out.append((iid.encode(), json.dumps({"event_id": f"{iid}-1", "type": "call.offered", "occurred_at": at,
                                              "interaction_id": iid, "queue": "billing"}).encode()))
        out.append((iid.encode(), json.dumps({"event_id": f"{iid}-2", "type": "call.abandoned", "occurred_at": at,
                                              "interaction_id": iid}).encode()))
    return out


def produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], per_second: float = 0) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            for n, (key, value) in enumerate(messages):
                await producer.send(topic, value=value, key=key)
                if per_second and n % 50 == 49:
                    await asyncio.sleep(50 / per_second)
            await producer.flush()
        finally:
            await producer.stop()
    asyncio.run(run())


def committed_to(bootstrap: str, group: str, ends: dict) -> bool:
    done = committed(bootstrap, group)
    return all(done.get(tp, 0) >= end for tp, end in ends.items())


def test_records_fetched_while_a_rebalance_ends_are_processed(kafka_bootstrap: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    for d in (site, tmp_path / "a", tmp_path / "b"):
        d.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    a = WorkerProcess.create(kafka_bootstrap, tmp_path / "a", "rebalance-window", role="compute",
                             PYTHONPATH=pythonpath, CCPULSE_KAFKA_PARTITIONS="4")
    b = a.sibling(tmp_path / "b", role="compute")
    settings = load_settings(a.env["CCPULSE_CONFIG"], env=a.env)
    ensure_topics(settings)
    input_topic = f"{a.prefix}calls"
    rows_topic = f"{a.prefix}{settings.app_id}-interactions"
    backlog = calls()
    produce_all(kafka_bootstrap, input_topic, backlog[:1000])
    # The rest arrives steadily while b joins, so both workers fetch records as the
    # rebalance ends (with tables to recover, Faust's fetch loop runs through it).
    rest = threading.Thread(target=produce_all, args=(kafka_bootstrap, input_topic, backlog[1000:], 350.0))
    try:
        a.start()  # its first rebalance ends on a backlog
        rest.start()
        time.sleep(3)
        b.start()  # a rebalance of both while records arrive
        rest.join()
        ends = end_offsets(kafka_bootstrap, [input_topic])
        assert sum(ends.values()) == len(backlog)
        wait_until(lambda: committed_to(kafka_bootstrap, settings.app_id, ends), 90,
                   "the input committed to its end (a partition stalled?)")
        # Every event applied: each interaction's latest row says it was abandoned.
        def outcomes() -> dict[str, str]:
            return {json.loads(value)["interaction_id"]: json.loads(value)["outcome"]
                    for _, value in read_topic(kafka_bootstrap, rows_topic)}

        def not_applied() -> set[str]:
            seen = outcomes()
            return {f"w-{i}" for i in range(INTERACTIONS)} - {iid for iid, o in seen.items() if o == "abandoned"}

        wait_until(lambda: not not_applied() or None, 60, "every interaction's rows")
        missing = not_applied()
        assert not missing, f"{len(missing)} interactions committed but not fully applied, e.g. {sorted(missing)[:5]}"
        log = a.log_path.read_text(errors="replace") + b.log_path.read_text(errors="replace")
        assert log.count("holding the end of a rebalance") >= 3  # a's first, then a's and b's
        assert "records were delivered before the rebalance ended" not in log
    finally:
        if rest.is_alive():
            rest.join()
        for worker in (b, a):
            worker.stop()
