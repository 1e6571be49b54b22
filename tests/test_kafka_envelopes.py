"""Batch envelopes (streams/kafka_consumer.py): the records of one partition from one
fetch reach the agent as one event; the commit never passes an envelope that is not
acknowledged; a rebalance or a restart loses nothing. The integration tests drive the
real fetch loop (tests/envelope_worker.py) against a real broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka_consumer import (Envelope, EnvelopeLedger, InOrderTracker, UntestedLibraries,
                                    check_versions, installed_versions, pinned_versions, version_problem)
from tests.worker_process import wait_until

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4


# -- pure parts


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def envelope(partition: int, first: int, last: int) -> Envelope:
    return Envelope("calls", partition, [Rec(o) for o in range(first, last + 1)])


def test_the_commit_stops_at_the_first_envelope_not_acknowledged() -> None:
    ledger = EnvelopeLedger()
    a, b, c = envelope(0, 0, 9), envelope(0, 10, 19), envelope(0, 20, 29)
    for e in (a, b, c):
        ledger.delivered("tp", e)
    assert ledger.acked("tp", b) and ledger.acked("tp", c)
    assert ledger.committable("tp") is None  # a holds it, however many come after
    assert ledger.acked("tp", a)
    assert ledger.committable("tp") == 30
    assert ledger.committable("tp") is None  # nothing new


def test_an_envelope_voided_by_a_seek_or_not_delivered_holds_nothing() -> None:
    ledger = EnvelopeLedger()
    old, lost = envelope(0, 0, 9), envelope(0, 10, 19)
    ledger.delivered("tp", old)
    ledger.delivered("tp", lost)
    ledger.discard("tp", lost)  # never reached its stream
    ledger.forget(["tp"])  # a rebalance's seek to the committed offset
    new = envelope(0, 0, 4)
    ledger.delivered("tp", new)
    assert not ledger.acked("tp", old)  # acknowledged late: ignored
    assert not ledger.acked("tp", lost)
    assert ledger.acked("tp", new) and not ledger.acked("tp", new)  # once
    assert ledger.committable("tp") == 5


def test_a_rewound_envelope_is_read_again_from_its_start() -> None:
    order = InOrderTracker()
    order.seek_started(["tp"])
    order.seek_ended(["tp"], {"tp": 0})
    for offset in range(5):  # joined an envelope
        assert order.accept("tp", offset, order.clock)
        order.delivered("tp", offset)
    order.fetched("tp", 5)
    order.rewind("tp", 0)  # ... which never reached its stream
    assert order.undelivered() == ["tp"] and order.refetch_from("tp") == 0


def test_a_version_mismatch_is_one_line_naming_each_library() -> None:
    pinned = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
    assert version_problem(dict(pinned), pinned) is None
    line = version_problem({"faust-streaming": "0.16.0", "aiokafka": None}, pinned)
    assert line is not None and "\n" not in line
    assert "faust-streaming 0.16.0 (written for 0.15.3)" in line and "aiokafka missing" in line
    assert "pip install faust-streaming==0.15.3 aiokafka==0.14.0" in line


def test_the_pins_are_read_from_the_installed_project_and_match(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    pinned = pinned_versions()
    assert pinned and all(f'"{name}=={version}"' in text for name, version in pinned.items())
    check_versions()  # the environment the tests run in is the pinned one
    monkeypatch.setattr("streams.kafka_consumer.installed_versions",
                        lambda: dict(installed_versions(), aiokafka="0.99.0"))
    with pytest.raises(UntestedLibraries, match="aiokafka 0.99.0"):
        check_versions()


# -- the real loop


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def create_topic(bootstrap: str, topic: str) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        finally:
            await admin.close()
    run_async(run())


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items()
                if tp.topic == topic and meta.offset >= 0}
    return run_async(run())


def produce(bootstrap: str, topic: str, per_partition: int, start: int = 0, per_second: float = 0) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            for i in range(start, start + per_partition):
                for p in range(PARTITIONS):
                    await producer.send(topic, value=f"{p}-{i}".encode(), partition=p)
                if per_second and i % 25 == 24:
                    await asyncio.sleep(25 * PARTITIONS / per_second)
            await producer.flush()
        finally:
            await producer.stop()
    run_async(run())


class Worker:
    def __init__(self, bootstrap: str, app_id: str, topic: str, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.log = open(out / "worker.log", "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "envelope_worker.py"), bootstrap, app_id, topic, str(out)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def received(*outs: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for out in outs:
        path = out / "received.jsonl"
        if path.exists():
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return lines


def offsets_by_partition(lines: list[dict[str, Any]]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
    for line in lines:
        out[line["partition"]].update(line["offsets"])
    return out


def fixture_names() -> tuple[str, str]:
    name = f"envelopes-{uuid.uuid4().hex[:8]}"
    return name, f"{name}.calls"


@pytest.mark.integration
def test_records_arrive_in_envelopes_in_order_none_lost_or_doubled(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id, topic = fixture_names()
    create_topic(kafka_bootstrap, topic)
    n = 1500
    produce(kafka_bootstrap, topic, n // 2)
    worker = Worker(kafka_bootstrap, app_id, topic, tmp_path / "w")
    try:
        produce(kafka_bootstrap, topic, n // 2, start=n // 2)  # while it reads
        wait_until(lambda: sum(map(len, offsets_by_partition(received(worker.out)).values())) >= n * PARTITIONS,
                   120, "every record received", interval=0.5)
        wait_until(lambda: committed(kafka_bootstrap, app_id, topic) == {p: n for p in range(PARTITIONS)},
                   60, "every offset committed", interval=0.5)
    finally:
        worker.stop()
    lines = received(worker.out)
    for p in range(PARTITIONS):
        sequence = [o for line in lines if line["partition"] == p for o in line["offsets"]]
        assert sequence == list(range(n)), f"partition {p}: not every record once, in order"
    assert len(lines) < n * PARTITIONS / 5, f"{len(lines)} envelopes for {n * PARTITIONS} records: not batched"


@pytest.mark.integration
def test_the_commit_never_passes_an_envelope_not_acknowledged(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id, topic = fixture_names()
    create_topic(kafka_bootstrap, topic)
    out = tmp_path / "w"
    out.mkdir()
    (out / "hold").touch()
    n = 600
    produce(kafka_bootstrap, topic, n // 2)
    worker = Worker(kafka_bootstrap, app_id, topic, out)
    try:
        held = wait_until(lambda: [line for line in received(out) if line.get("held")], 90, "an envelope held")[0]
        produce(kafka_bootstrap, topic, n // 2, start=n // 2)  # later envelopes of partition 0, acknowledged
        wait_until(lambda: len(offsets_by_partition(received(out))[0]) >= n, 60, "partition 0 received", 0.5)
        wait_until(lambda: all(committed(kafka_bootstrap, app_id, topic).get(p) == n for p in (1, 2, 3)),
                   60, "the other partitions committed to their end", interval=0.5)
        time.sleep(1.0)  # five more commit intervals, every later envelope of partition 0 acknowledged
        assert committed(kafka_bootstrap, app_id, topic).get(0, 0) <= held["offsets"][0], \
            "the commit passed an envelope that was not acknowledged"
        (out / "release").touch()
        wait_until(lambda: committed(kafka_bootstrap, app_id, topic).get(0) == n, 60,
                   "partition 0 committed once the held envelope is acknowledged", interval=0.5)
    finally:
        worker.stop()


@pytest.mark.integration
def test_a_rebalance_and_a_restart_mid_stream_lose_and_double_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id, topic = fixture_names()
    create_topic(kafka_bootstrap, topic)
    n = 2000
    a = Worker(kafka_bootstrap, app_id, topic, tmp_path / "a")
    b = None
    feed = threading.Thread(target=produce, args=(kafka_bootstrap, topic, n), kwargs={"per_second": 800.0})
    try:
        feed.start()
        wait_until(lambda: received(a.out), 90, "a reading", interval=0.2)
        b = Worker(kafka_bootstrap, app_id, topic, tmp_path / "b")  # a rebalance of both
        wait_until(lambda: received(b.out), 90, "b reading after the rebalance", interval=0.2)
        a.stop()  # a restart of its partitions on b, mid-stream
        a = Worker(kafka_bootstrap, app_id, topic, tmp_path / "a2")  # and a joins again
        feed.join()
        ends = {p: n for p in range(PARTITIONS)}
        wait_until(lambda: committed(kafka_bootstrap, app_id, topic) == ends, 120, "every offset committed", 0.5)
    finally:
        feed.join()
        a.stop()
        if b is not None:
            b.stop()
    lines = received(tmp_path / "a", b.out, a.out)
    for p, seen in offsets_by_partition(lines).items():
        assert seen == set(range(n)), f"partition {p}: lost {sorted(set(range(n)) - seen)[:10]}"
    # Within one owner and generation a partition's records come once each, in order, with
    # no hole; what a new owner reads again is what the last commit had not covered.
    runs: dict[tuple[int, int, int], list[int]] = {}
    for line in lines:
        runs.setdefault((line["pid"], line["generation"], line["partition"]), []).extend(line["offsets"])
    for (pid, generation, p), offsets in runs.items():
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), \
            f"worker {pid} generation {generation} partition {p}: {offsets[:20]}..."
    assert len({(line["pid"], line["generation"]) for line in lines}) >= 3, "no rebalance happened"


def test_a_batch_topic_buffers_few_envelopes_per_partition() -> None:
    """Faust's App.topic drops ``maxsize``: without it set on the topic, 4,096 envelopes
    (each a whole fetch) per partition could sit in memory before fetching paused."""
    from ccpulse.config import Settings
    from streams.app import create_app
    from streams.kafka_consumer import ENVELOPE_BUFFER

    topic = create_app(Settings(), "compute").pipeline.topics.input  # type: ignore[attr-defined]
    assert topic.maxsize == ENVELOPE_BUFFER and topic.clone().maxsize == ENVELOPE_BUFFER
    assert ENVELOPE_BUFFER < 100
