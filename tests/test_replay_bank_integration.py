"""The whole real call log (Anonymous Bank, January 1999) replayed through the real
broker and worker; ClickHouse's day windows must equal a plain recomputation.

The recomputation below reads the TSV itself (its own parsing, not
``ccpulse.replay``) and applies METRICS.md: offered on the day of queue entry,
answered and abandoned on the day the caller left the queue, short abandons
(<= 5 s) not counted as abandoned, service level = answered within 20 s /
(answered + abandoned), immediate response = answered with no wait /
(answered + abandoned), ASA = mean wait of answered calls. The data's own
``q_time`` column is the wait, so the replay's time arithmetic (dates, midnight
crossings, the time zone) is checked too.

Interpretation of the log (deploy/replay/README.md): PHANTOM rows are not
calls; a call with neither ``q_start`` nor ``ser_start`` hung up in the voice
menu (never offered); a served call that never queued is offered and answered
when its service starts (wait 0); AGENT = answered, HANG = abandoned when
leaving the queue. The date is the day of ``vru_entry``: a time more than 12 h
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

from ccpulse import replay
from tests.worker_process import WorkerProcess, latest_windows, produce, wait_until, worker_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "anonymous-bank-1999-01.tsv"
MAPPING = REPO / "deploy" / "replay" / "anonymous-bank.toml"
ZONE = ZoneInfo("Asia/Jerusalem")
SENTINEL_AT = "1999-02-05T00:00:00.000Z"  # days after the last call: closes every January day
WORKER_CONFIG = """\
[windows]
sizes = [86400]                  # day windows only: the comparison is per day
timezone = "Asia/Jerusalem"
allowed_lateness_seconds = 120
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
            if not queued and row["ser_start"] == "0:00:00":
                continue  # hung up in the voice menu: never offered to a queue
            d = row["date"]
            day = date(1900 + int(d[:2]), int(d[2:4]), int(d[4:]))
            entry = _seconds(row["q_start"] if queued else row["ser_start"])
            if entry < _seconds(row["vru_entry"]) - 12 * 3600:
                day += timedelta(days=1)  # the call reached the queue after midnight
            queue = row["type"]
            acc[(day, queue)]["offered"] += 1
            wait = int(row["q_time"]) if queued else 0
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
        sentinel = {"event_id": "sentinel-1", "type": "call.offered", "occurred_at": SENTINEL_AT,
                    "interaction_id": "sentinel", "queue": "sentinel"}
        produce(kafka_bootstrap, calls, [(b"sentinel", orjson.dumps(sentinel))])
        wanted = {window_key(day, queue) for day, queue in expected}

        def all_final() -> bool | list[str]:
            windows = latest_windows(kafka_bootstrap, f"{worker.prefix}kpi.windows")
            missing = sorted(k for k in wanted if k not in windows or not windows[k]["final"])
            return not missing or False

        wait_until(all_final, 300, "final day windows of every (day, queue)", interval=2.0)
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
    yield dict(expected=expected, rows=rows, stats=stats, metrics=metrics, exit_code=exit_code)


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
    assert run["exit_code"] == 0


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
    assert sum(r["answered"] for r in rows) == 27_041
    assert sum(r["abandoned"] + r["short_abandoned"] for r in rows) == 3_101
