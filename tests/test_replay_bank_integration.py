"""The whole real call log (Anonymous Bank, January 1999) replayed through the real
broker and worker; ClickHouse's day windows must equal a plain recomputation.

The recomputation below reads the TSV itself (its own parsing, not
``ccpulse.commands.replay``) and applies METRICS.md: offered on the day of queue entry,
answered and abandoned on the day the caller left the queue, short abandons
(<= 5 s) not counted as abandoned, service level = answered within 20 s /
(answered + abandoned), immediate response = answered with no wait /
(answered + abandoned), ASA = mean wait of answered calls. The data's own
``q_time`` column is the wait, so the replay's time arithmetic (dates, midnight
crossings, the time zone) is checked too.

Interpretation of the log (deploy/replay/README.md): PHANTOM rows are not
calls; a call that was not served and has neither ``q_start`` nor ``ser_start``
hung up in the voice menu (never offered); a served call (AGENT) is always
offered and answered, after the wait its row gives (``q_time``): when it queued
(``q_start``), else when its service started, else, for the 19 served rows whose
queue and service times all read 0:00:00, when it left the voice menu
(``vru_exit``); HANG = abandoned when leaving the queue. The date is the day of ``vru_entry``: a time more than 12 h
earlier is after midnight. Days are Israel's (the worker runs with
``timezone = "Asia/Jerusalem"``).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import clickhouse_connect
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ccpulse.commands import replay
from tests.worker_process import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "anonymous-bank-1999-01.tsv"
MAPPING = REPO / "deploy" / "replay" / "anonymous-bank.toml"
ZONE = ZoneInfo("Asia/Jerusalem")
SENTINEL_AT = "1999-02-05T00:00:00.000Z"  # days after the last call: closes every January day
WORKER_CONFIG = """\
[windows]
sizes = [86400]                    # day windows only: the comparison is per day
timezone = "Asia/Jerusalem"
# The replay keys every event by interaction (replay's default): each partition is in
# event-time order and event time is the slowest partition's, so the default lateness
# (120 s) holds at full speed.
# Works around a race in streams/merge.py: a window that turns final is sometimes
# forgotten (expired fcr_horizon + lateness after its end, in event time) before its
# final record is published; a month replayed in seconds gets there within one
# publish tick. A horizon longer than the replayed span keeps every window.
fcr_horizon_seconds = 5184000
"""


# ---------------------------------------------------------------- the independent recomputation

def _seconds(text: str) -> int:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + int(s)


def recompute(path: Path) -> dict[tuple[date, str], dict[str, float | int | None]]:
    """Per (local day, queue): the KPIs of METRICS.md, from the TSV alone."""
    acc: dict[tuple[date, str], dict[str, int]] = defaultdict(lambda: dict(
        offered=0, answered=0, abandoned=0, short_abandoned=0, wait_sum=0, within=0, immediate=0))
    with open(path, encoding="ascii", newline="") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        for text in handle:
            fields = text.rstrip("\r\n").split("\t")
            if len(fields) != len(header):
                fields = text.split()  # a row separated by spaces
            row = dict(zip(header, fields))
            outcome = row["outcome"]
            if outcome == "PHANTOM":
                continue
            queued = row["q_start"] != "0:00:00"
            started = row["ser_start"] != "0:00:00"
            if not queued and not started and outcome != "AGENT":
                continue  # hung up in the voice menu: never offered to a queue
            d = row["date"]
            day = date(1900 + int(d[:2]), int(d[2:4]), int(d[4:]))
            # An agent served every AGENT row: one without queue or service times
            # reached the queue as it left the voice menu.
            entry = _seconds(row["q_start"] if queued else row["ser_start"] if started else row["vru_exit"])
            if entry < _seconds(row["vru_entry"]) - 12 * 3600:
                day += timedelta(days=1)  # the call reached the queue after midnight
            queue = row["type"]
            acc[(day, queue)]["offered"] += 1
            wait = int(row["q_time"])  # 0 for every call that did not queue
            left = day + timedelta(days=(entry + wait) // 86400)
            out = acc[(left, queue)]
            if outcome == "AGENT":
                out["answered"] += 1
                out["wait_sum"] += wait
                out["within"] += wait <= 20
                out["immediate"] += wait == 0
            elif outcome == "HANG":
                if wait <= 5:
                    out["short_abandoned"] += 1
                else:
                    out["abandoned"] += 1
    result = {}
    for key, a in acc.items():
        exits = a["answered"] + a["abandoned"]
        result[key] = dict(
            offered=a["offered"], answered=a["answered"], abandoned=a["abandoned"],
            short_abandoned=a["short_abandoned"],
            asa_seconds=a["wait_sum"] / a["answered"] if a["answered"] else None,
            service_level=a["within"] / exits if exits else None,
            immediate_response_rate=a["immediate"] / exits if exits else None)
    return result


def window_key(day: date, queue: str) -> str:
    start = datetime(day.year, day.month, day.day, tzinfo=ZONE).astimezone(timezone.utc)
    return f"1d|{start:%Y-%m-%dT%H:%M:%S}.000Z|{queue}|voice"


# ---------------------------------------------------------------- the run

async def wait_committed(bootstrap: str, group: str, topic: str, timeout: float) -> dict[int, int]:
    """Wait until ``group`` committed every record of ``topic`` present now; returns what is left."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert tps, f"{topic} has no partitions"
        ends = await consumer.end_offsets(tps)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            lag = {tp.partition: ends[tp] - (committed[tp].offset if tp in committed else 0)
                   for tp in tps}
            lag = {p: n for p, n in lag.items() if n > 0}
            if not lag or asyncio.get_running_loop().time() > deadline:
                return lag
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
        await consumer.stop()


async def wait_final(bootstrap: str, topic: str, wanted: set[str], timeout: float) -> list[str]:
    """Follow kpi.windows (one consumer, so each record is read once) until every wanted key
    has a final record; returns the keys still not final at the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    final: set[str] = set()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not wanted <= final and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for record in records:
                    if orjson.loads(record.value)["final"]:
                        final.add(record.key.decode())
    finally:
        await consumer.stop()
    return sorted(wanted - final)


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not DATA.is_file():
        pytest.skip(f"the real call log is not at {DATA} (the repository is expected next to shared/)")
    expected = recompute(DATA)
    tmp: Path = tmp_path_factory.mktemp("bank")
    (tmp / "ccpulse.toml").write_text(WORKER_CONFIG)
    worker = WorkerProcess(worker_env(kafka_bootstrap, tmp, "bank"), tmp / "worker.log", 0)
    worker.port = int(worker.env["CCPULSE_WEB_PORT"])
    started = time.monotonic()
    worker.start()
    try:
        calls = f"{worker.prefix}calls"
        stats = asyncio.run(replay.replay(DATA, replay.load_mapping(MAPPING), kafka_bootstrap,
                                          {"call": calls}, None))
        published = time.monotonic()
        # The sentinel follows the replay: on a partition read ahead of the others, it
        # moves event time only once every partition has read its share of the replay.
        sentinel = {"event_id": "sentinel-1", "type": "call.offered", "occurred_at": SENTINEL_AT,
                    "interaction_id": "sentinel", "queue": "sentinel"}
        asyncio.run(replay.publish([("call", sentinel)], kafka_bootstrap, {"call": calls}, None))
        wanted = {window_key(day, queue) for day, queue in expected}

        topic = f"{worker.prefix}kpi.windows"
        missing = asyncio.run(wait_final(kafka_bootstrap, topic, wanted, 300))
        assert not missing, f"{len(missing)} day windows not final after 300 s, e.g. {missing[:3]}"
        # The ClickHouse writer commits its kpi.windows offsets once the rows are written.
        lag = asyncio.run(wait_committed(kafka_bootstrap, worker.env["CCPULSE_APP_ID"], topic, 60))
        assert not lag, f"ClickHouse writer still behind on {topic} after 60 s: {lag}"
        metrics = worker.metrics()
    finally:
        exit_code = worker.stop()
    finished = time.monotonic()
    client = clickhouse_connect.get_client(interface="chdb", path=worker.clickhouse_path)
    result = client.query(
        "SELECT toDate(window_start, 'Asia/Jerusalem') AS day, queue, final, offered, answered, abandoned, "
        "short_abandoned, asa_seconds, service_level, immediate_response_rate "
        "FROM kpi_windows FINAL WHERE window = '1d' AND queue != 'sentinel'")
    rows = {(r[0], r[1]): dict(zip(result.column_names[2:], r[2:])) for r in result.result_rows}
    client.close()
    print(f"\nbank replay: {stats.summary()}; published in {published - started:.1f} s "
          f"(worker start included), all final after {finished - started:.1f} s")
    yield dict(expected=expected, rows=rows, stats=stats, metrics=metrics, exit_code=exit_code,
               log_tail=worker.log_tail(6000))


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(value for (n, lbls), value in metrics.items()
               if n == name and all((k, v) in lbls for k, v in labels.items()))


def test_every_row_of_the_log_is_accounted_for(run) -> None:
    stats = run["stats"]
    assert stats.rows == 31_599
    assert stats.rows == stats.interactions + sum(stats.skipped.values()) + sum(stats.invalid.values())
    assert stats.invalid == {}
    offered = sum(v["offered"] for v in run["expected"].values())
    assert stats.interactions == offered


def test_the_worker_saw_every_event_in_time(run) -> None:
    m = run["metrics"]
    assert _sum(m, "ccpulse_events_consumed_total") == run["stats"].events + 1  # + the sentinel
    assert _sum(m, "ccpulse_events_invalid_total") == 0
    assert _sum(m, "ccpulse_duplicate_events_total") == 0
    assert _sum(m, "ccpulse_late_events_total") == 0
    assert run["exit_code"] == 0, run["log_tail"]


def test_clickhouse_day_windows_equal_the_independent_recomputation(run) -> None:
    expected, rows = run["expected"], run["rows"]
    assert set(expected) <= set(rows), sorted(set(expected) - set(rows))[:5]
    zero = dict(offered=0, answered=0, abandoned=0, short_abandoned=0, asa_seconds=None,
                service_level=None, immediate_response_rate=None)
    mismatches = []
    for key in sorted(rows):
        row, want = rows[key], expected.get(key, zero)
        if not row["final"]:
            mismatches.append((key, "not final"))
        for name, value in want.items():
            got = row[name]
            same = got == value if value is None or isinstance(value, int) else got == pytest.approx(value)
            if not same:
                mismatches.append((key, name, got, value))
    assert not mismatches, mismatches[:10]


def test_the_month_adds_up(run) -> None:
    rows = run["rows"].values()
    assert sum(r["offered"] for r in rows) == run["stats"].interactions
    # every served (AGENT) row: the 19 whose times all read 0:00:00 included
    assert sum(r["answered"] for r in rows) == 27_060
    assert sum(r["abandoned"] + r["short_abandoned"] for r in rows) == 3_101


# ---------------------------------------------------------------- the command's code path

def test_run_from_args_publishes_every_family_keyed_by_interaction(
        kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What ``ccpulse replay FILE --mapping M`` runs: topics created, every event on its
    interaction's partition (the pipeline applies it there, without the re-key hop)."""
    from ccpulse.config import load_settings
    from streams.stages.pipeline import key_partition
    from tests.test_replay import GENERIC_CSV, GENERIC_MAPPING, parse
    from tests.worker_process import read_topic

    data, mapping = tmp_path / "calls.csv", tmp_path / "calls.toml"
    data.write_text(GENERIC_CSV)
    mapping.write_text(GENERIC_MAPPING)
    (tmp_path / "ccpulse.toml").write_text("")
    settings = load_settings(tmp_path / "ccpulse.toml", env={
        "CCPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap, "CCPULSE_TOPIC_PREFIX": "replaycli."})
    assert replay.run_from_args(parse(str(data), "--mapping", str(mapping)), settings) == 0
    err = capsys.readouterr().err
    assert "4 rows -> 4 interactions, 11 events" in err
    assert "replaycli.calls, replaycli.chats, replaycli.tickets" in err

    async def placed(topic: str, count: int) -> tuple[list[tuple[bytes, int]], int]:
        """(key, partition) of the topic's ``count`` records, and its partition count."""
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            out: list[tuple[bytes, int]] = []
            deadline = time.monotonic() + 15
            while len(out) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                out += [(r.key, r.partition) for records in batch.values() for r in records]
            return out, len(consumer.partitions_for_topic(topic) or ())
        finally:
            await consumer.stop()

    used: set[int] = set()
    for topic, count in (("replaycli.calls", 5), ("replaycli.chats", 3), ("replaycli.tickets", 3)):
        records = read_topic(kafka_bootstrap, topic)
        assert len(records) == count, topic
        assert all(key.decode() == orjson.loads(value)["interaction_id"] for key, value in records)
        where, partitions = asyncio.run(placed(topic, count))
        assert len(where) == count and partitions == settings.kafka.partitions, topic
        assert all(p == key_partition(key, partitions) for key, p in where), (topic, where)
        used |= {p for _key, p in where}
    assert len(used) > 1  # spread, not pinned


def test_publish_paces_event_time_at_the_given_speed(kafka_bootstrap: str) -> None:
    events = [("call", {"event_id": f"p-{i}", "type": "call.offered", "interaction_id": f"p-{i}",
                        "queue": "q", "occurred_at": f"1999-01-01T00:00:0{2 * i}.000Z"}) for i in range(3)]
    acked: list[int] = []
    started = time.monotonic()
    sent = asyncio.run(replay.publish(events, kafka_bootstrap, {"call": "replaypace.calls"}, 10.0,
                                      progress=acked.append))
    elapsed = time.monotonic() - started
    assert sent == 3 and acked[-1] == 3
    assert 0.4 <= elapsed < 10  # 4 s of event time at 10x: at least 0.4 s
