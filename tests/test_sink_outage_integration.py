"""ClickHouse outage with real processes: a compute worker and the writer that owns the
embedded store; the store is made unwritable (chattr +i) while events keep coming.

Asserted: /health of the writer turns 503 with the clickhouse part saying why and since
when, ccpulse_sink_up drops to 0, the writer's consumer lag grows while its committed
offsets stand still (nothing acknowledged that is not stored), the compute worker stays
healthy; after the restore, /health is 200 again, the lag drains and every event and
every window is in ClickHouse exactly once, equal to what Kafka holds.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import clickhouse_connect
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ccpulse.tools.fault_injection import make_store_unwritable, store_unwritable_unsupported
from ccpulse.commands.simulate import SimulationConfig
from ccpulse.commands.simulate_channels import ChatConfig, generate_mixed_events
from tests.worker_process import WorkerProcess, latest_windows, produce, wait_until

pytestmark = pytest.mark.integration


def events() -> list[tuple[str, dict[str, Any]]]:
    start = datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
    return list(generate_mixed_events(SimulationConfig(rate=2.0, seed=5, start=start),
                                      ChatConfig(rate=0.5, seed=5, start=start), None, 600))


def writer_offsets(bootstrap: str, group: str, topics: list[str]) -> tuple[int, int]:
    """(sum of committed offsets of ``group``, sum of end offsets) over ``topics``."""
    per_topic = offsets_by_topic(bootstrap, group, topics)
    return sum(c for c, _e in per_topic.values()), sum(e for _c, e in per_topic.values())


def offsets_by_topic(bootstrap: str, group: str, topics: list[str]) -> dict[str, tuple[int, int]]:
    async def run() -> dict[str, tuple[int, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            out = {}
            for topic in topics:
                parts = consumer.partitions_for_topic(topic)
                if parts is None:
                    await consumer._client.force_metadata_update()
                    parts = consumer.partitions_for_topic(topic) or set()
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                ends = await consumer.end_offsets(tps) if tps else {}
                done = sum(meta.offset for tp, meta in committed.items() if tp.topic == topic and meta.offset >= 0)
                out[topic] = (done, sum(ends.values()))
            return out
        finally:
            await consumer.stop()
            await admin.close()
    return asyncio.run(run())


def gauge(worker: WorkerProcess, name: str) -> float | None:
    return worker.metrics().get((name, (("sink", "clickhouse"),)))


@pytest.fixture(scope="module")
def outage(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("outage")
    reason = store_unwritable_unsupported(tmp)
    if reason:
        pytest.skip(f"cannot make the embedded store unwritable on this machine: {reason}")
    (tmp / "ccpulse.toml").write_text("[clickhouse]\nretry_max_backoff_seconds = 2.0\nbatch_size = 500\n")
    compute = WorkerProcess.create(kafka_bootstrap, tmp, "outage", role="compute")
    writer = compute.sibling(tmp / "writer", role="writer")
    prefix = compute.prefix
    # The writer reads raw events from the input topics themselves (streams/storage.py).
    stored_topics = [f"{prefix}calls", f"{prefix}chats", f"{prefix}outage-interactions", f"{prefix}kpi.windows",
                     f"{prefix}kpi.agents", f"{prefix}sla.breaches", f"{prefix}kpi.scorecards"]
    all_events = events()
    thirds = [all_events[i * len(all_events) // 3:(i + 1) * len(all_events) // 3] for i in range(3)]

    def send(batch: list[tuple[str, dict[str, Any]]]) -> None:
        for family, topic in (("call", "calls"), ("chat", "chats")):
            produce(kafka_bootstrap, prefix + topic,
                    [(doc["interaction_id"].encode(), orjson.dumps(doc)) for f, doc in batch if f == family])

    obs: dict[str, Any] = {"sent": len(all_events)}
    restore = None
    writer.start()
    compute.start()
    try:
        send(thirds[0])
        wait_until(lambda: (gauge(writer, "ccpulse_sink_pending_rows") == 0
                            and sum(v for (n, _l), v in writer.metrics().items()
                                    if n == "ccpulse_sink_rows_written_total") > len(thirds[0])),
                   120, "the first third stored")
        writer.wait_sink_idle(quiet_seconds=3)
        restore = make_store_unwritable(writer.clickhouse_path)
        obs["outage_started"] = time.time()
        send(thirds[1])

        def unhealthy() -> Any:
            status, body = writer.get("/health")
            return (status, json.loads(body)) if status == 503 else None

        obs["health_down"] = wait_until(unhealthy, 60, "writer /health 503")
        obs["up_down"] = gauge(writer, "ccpulse_sink_up")
        obs["lag1"] = writer_offsets(kafka_bootstrap, "outage-writer", stored_topics)
        send(thirds[2])
        time.sleep(8)  # retries hit their cap; the compute worker keeps publishing windows
        obs["lag2"] = writer_offsets(kafka_bootstrap, "outage-writer", stored_topics)
        obs["health_down_later"] = json.loads(writer.get("/health")[1])
        obs["gauges_down"] = {n: gauge(writer, n) for n in (
            "ccpulse_sink_up", "ccpulse_sink_failing_since_seconds", "ccpulse_sink_retry_backoff_seconds",
            "ccpulse_sink_pending_rows", "ccpulse_sink_oldest_unwritten_seconds")}
        obs["errors_down"] = sum(v for (n, _l), v in writer.metrics().items()
                                 if n == "ccpulse_sink_write_errors_total")
        obs["compute_health"] = compute.get("/health")[0]
        obs["writer_alive"] = writer.process is not None and writer.process.poll() is None

        restore()
        restored_at = time.time()
        wait_until(lambda: writer.get("/health")[0] == 200, 60, "writer /health 200 again")
        obs["recovery_seconds"] = time.time() - restored_at
        obs["up_again"] = gauge(writer, "ccpulse_sink_up")
        # Drain: the compute worker finishes publishing, then the writer stores all of it.
        wait_until(lambda: _quiet(kafka_bootstrap, prefix), 120, "kpi.windows settled")
        compute.stop()
        lags: list[Any] = []

        def lag_drained() -> bool:
            per_topic = offsets_by_topic(kafka_bootstrap, "outage-writer", stored_topics)
            lags[:] = [per_topic]
            return all(c == e for c, e in per_topic.values())

        try:
            wait_until(lag_drained, 240, "writer lag drained")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; committed/end by topic: {lags}; writer log: {writer.log_tail()}") from None
        obs["caught_up_seconds"] = time.time() - restored_at
        writer.wait_sink_idle(quiet_seconds=3)
        obs["windows_kafka"] = latest_windows(kafka_bootstrap, f"{prefix}kpi.windows")
        obs["final_health"] = writer.get("/health")[0]
    finally:
        if restore is not None:
            restore()
        compute.stop()
        writer.stop()
    print("\nsink outage figures:", json.dumps({k: obs.get(k) for k in (
        "sent", "lag1", "lag2", "gauges_down", "errors_down", "recovery_seconds", "caught_up_seconds")},
        default=str))
    client = clickhouse_connect.get_client(interface="chdb", path=writer.clickhouse_path)
    obs["client"] = client
    obs["event_ids"] = sorted(doc["event_id"] for _f, doc in all_events)
    yield obs
    client.close()


_last: dict[str, Any] = {}


def _quiet(bootstrap: str, prefix: str) -> bool:
    """True once kpi.windows did not change between two looks 5 s apart."""
    from tests.worker_process import read_topic
    size = len(read_topic(bootstrap, f"{prefix}kpi.windows"))
    same = _last.get(prefix) == size
    _last[prefix] = size
    if not same:
        time.sleep(5)
    return same


def test_health_turns_503(outage) -> None:
    status, body = outage["health_down"]
    part = body["parts"]["clickhouse"]
    assert status == 503 and body["status"] == "unhealthy" and part["ok"] is False


def test_health_says_why_and_since_when(outage) -> None:
    later = outage["health_down_later"]["parts"]["clickhouse"]
    assert "failing_since" in later and "Operation not permitted" in later["last_error"], later
    since = datetime.fromisoformat(later["failing_since"].replace("Z", "+00:00")).timestamp()
    assert outage["outage_started"] - 1 <= since <= outage["outage_started"] + 30
    assert later["retry_backoff_seconds"] == 2.0  # capped at retry_max_backoff_seconds


def test_metrics_show_the_sink_down(outage) -> None:
    g = outage["gauges_down"]
    assert outage["up_down"] == 0 and g["ccpulse_sink_up"] == 0
    assert abs(g["ccpulse_sink_failing_since_seconds"] - outage["outage_started"]) < 30
    assert g["ccpulse_sink_retry_backoff_seconds"] == 2.0
    assert 0 < g["ccpulse_sink_pending_rows"] <= 6 * 500  # one batch per writer agent at most
    assert g["ccpulse_sink_oldest_unwritten_seconds"] >= 8
    assert outage["errors_down"] >= 3


def test_consumption_stops_instead_of_dropping(outage) -> None:
    (committed1, end1), (committed2, end2) = outage["lag1"], outage["lag2"]
    assert committed1 > 0  # the group is the writer's, and it had stored the first third
    assert end2 > end1  # events kept coming
    assert committed2 == committed1  # nothing acknowledged while nothing could be stored
    assert end2 - committed2 > end1 - committed1 > 0  # the lag grows
    assert outage["writer_alive"] and outage["compute_health"] == 200


def test_recovers_and_reports_healthy(outage) -> None:
    assert outage["up_again"] == 1 and outage["final_health"] == 200
    assert outage["recovery_seconds"] < 30


def test_every_event_stored_exactly_once(outage) -> None:
    client = outage["client"]
    rows = client.query("SELECT event_id FROM raw_events FINAL ORDER BY event_id").result_rows
    assert [r[0] for r in rows] == outage["event_ids"]


def test_every_window_stored_as_published(outage) -> None:
    kafka = outage["windows_kafka"]
    result = outage["client"].query(
        "SELECT window, formatDateTime(window_start, '%Y-%m-%dT%H:%i:%S.000Z', 'UTC'), queue, channel, version, "
        "offered, answered, abandoned FROM kpi_windows FINAL").result_rows
    stored = {f"{w}|{s}|{q}|{c}": (v, o, a, ab) for w, s, q, c, v, o, a, ab in result}
    assert len(result) == len(stored)  # one row per window key
    assert stored == {k: (r["version"], r["offered"], r["answered"], r["abandoned"]) for k, r in kafka.items()}
