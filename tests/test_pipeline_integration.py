"""End to end on the real broker: scripted calls whose KPIs are worked out by hand.

The expected figures below come from the scenario's timestamps and METRICS.md's
rules (voice: service level 20 s, short abandon 5 s, immediate = no wait),
not from ccpulse code. ClickHouse, /metrics and kpi.windows must all hold them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import clickhouse_connect
import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.json_schemas import TOPIC_SCHEMAS, load
from tests.worker_process import (WorkerProcess, latest_windows, produce, read_topic, wait_until)

pytestmark = pytest.mark.integration

T = "2026-01-05T08:"


def ev(eid: str, etype: str, at: str, iid: str, queue: str | None = None, **extra: object) -> dict:
    doc = {"event_id": eid, "type": etype, "occurred_at": T + at, "interaction_id": iid}
    if queue:
        doc["queue"] = queue
    doc.update(extra)
    return doc


SCENARIO = [
    # A: answered at once (immediate, within target), ended 08:03:05 with 10 s wrap-up.
    ev("A1", "call.offered", "00:05.000Z", "A", "billing", customer_id="cust-1"),
    ev("A2", "call.answered", "00:05.000Z", "A", agent_id="ag-1"),
    # B: waits 30 s (over target), handled 80 s.
    ev("B1", "call.offered", "00:10.000Z", "B", "billing"),
    ev("B2", "call.answered", "00:40.000Z", "B", agent_id="ag-2"),
    # C: hangs up after 3 s: a short abandon.
    ev("C1", "call.offered", "00:20.000Z", "C", "billing"),
    ev("C2", "call.abandoned", "00:23.000Z", "C"),
    # D: abandons after 15 s (within target); sent without a key (see below).
    ev("D1", "call.offered", "00:30.000Z", "D", "billing"),
    ev("D2", "call.abandoned", "00:45.000Z", "D"),
    # E: answered at 08:01:05 after 15 s, its answer delivered BEFORE its offer.
    ev("E2", "call.answered", "01:05.000Z", "E", agent_id="ag-3"),
    ev("E1", "call.offered", "00:50.000Z", "E", "billing"),
    # F: abandons at 08:01:40 after 45 s.
    ev("F1", "call.offered", "00:55.000Z", "F", "billing"),
    ev("F2", "call.abandoned", "01:40.000Z", "F"),
    ev("E3", "call.ended", "01:50.000Z", "E"),
    ev("B3", "call.ended", "02:00.000Z", "B"),
    ev("A3", "call.ended", "03:05.000Z", "A", wrapup_seconds=10),
    # G (sales): waits exactly 20 s = the target; handled 30 s.
    ev("G1", "call.offered", "00:00.000Z", "G", "sales"),
    ev("G2", "call.answered", "00:20.000Z", "G", agent_id="ag-9"),
    ev("G3", "call.ended", "00:50.000Z", "G"),
]
DUPLICATE = ev("B2", "call.answered", "00:40.000Z", "B", agent_id="ag-2")  # producer retry
# H moves event time to 08:10, past the end + 2 min lateness of windows 08:00-08:03.
WATERMARK = ev("H1", "call.offered", "10:00.000Z", "H", "billing")
MALFORMED = b'{"event_id": "X1", "type": "call.offered", '  # truncated JSON

EXPECTED = {
    ("08:00", "billing"): dict(offered=6, answered=2, abandoned=1, short_abandoned=1,
                               answered_within_target=1, abandoned_within_target=1,
                               answered_immediately=1, handled=0, wait_answered_sum_seconds=30.0,
                               wait_answered_max_seconds=30.0, wait_abandoned_sum_seconds=15.0,
                               asa_seconds=15.0, abandonment_rate=1 / 3, service_level=1 / 3,
                               immediate_response_rate=1 / 3, aht_seconds=None),
    ("08:01", "billing"): dict(offered=0, answered=1, abandoned=1, short_abandoned=0,
                               answered_within_target=1, abandoned_within_target=0,
                               answered_immediately=0, handled=1, handle_time_sum_seconds=45.0,
                               wait_answered_max_seconds=15.0, asa_seconds=15.0,
                               abandonment_rate=0.5, service_level=0.5, immediate_response_rate=0.0),
    ("08:02", "billing"): dict(offered=0, answered=0, abandoned=0, handled=1,
                               handle_time_sum_seconds=80.0, aht_seconds=80.0, asa_seconds=None,
                               abandonment_rate=None, service_level=None, immediate_response_rate=None),
    ("08:03", "billing"): dict(offered=0, handled=1, handle_time_sum_seconds=190.0, aht_seconds=190.0),
    ("08:00", "sales"): dict(offered=1, answered=1, abandoned=0, answered_within_target=1,
                             answered_immediately=0, handled=1, handle_time_sum_seconds=30.0,
                             service_level=1.0, abandonment_rate=0.0, immediate_response_rate=0.0),
}


def window_key(hhmm: str, queue: str) -> str:
    return f"1m|2026-01-05T{hhmm}:00.000Z|{queue}|voice"


def messages() -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for doc in SCENARIO:
        key = None if doc["interaction_id"] == "D" else doc["interaction_id"].encode()
        out.append((key, orjson.dumps(doc)))
        if doc["event_id"] == "C2":
            out.append((b"X", MALFORMED))  # bad input mid-stream; the next valid one must count
    out.append((b"B", orjson.dumps(DUPLICATE)))
    out.append((b"H", orjson.dumps(WATERMARK)))
    return out


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("e2e")
    worker = WorkerProcess.create(kafka_bootstrap, tmp, "e2e")
    worker.start()
    try:
        # Sent as one backlog: keyless D1 comes back through <app>-rekey after H's partition
        # has read 08:10, and must still count in 08:00 (every input partition holds event
        # time back until it has reported, tests/test_pipeline_stage.py).
        produce(kafka_bootstrap, f"{worker.prefix}calls", messages())
        wanted = {window_key(h, q) for h, q in EXPECTED}

        def all_final() -> bool:
            windows = latest_windows(kafka_bootstrap, f"{worker.prefix}kpi.windows")
            return all(k in windows and windows[k]["final"] for k in wanted)

        wait_until(all_final, 60, "final kpi.windows for 08:00-08:03")
        metrics = worker.metrics()
        windows = latest_windows(kafka_bootstrap, f"{worker.prefix}kpi.windows")
        dead = read_topic(kafka_bootstrap, f"{worker.prefix}events.dead-letter")
        published = {topic: [json.loads(v) for _k, v in read_topic(kafka_bootstrap, worker.prefix + topic)]
                     for topic in TOPIC_SCHEMAS}
        state = {k.decode(): json.loads(v) for k, v in
                 read_topic(kafka_bootstrap, f"{worker.prefix}kpi.queue-state")}
        health = worker.get("/health")
        worker.wait_sink_idle()
    finally:
        exit_code = worker.stop()
    client = clickhouse_connect.get_client(interface="chdb", path=worker.clickhouse_path)
    yield dict(metrics=metrics, windows=windows, dead=dead, client=client, exit_code=exit_code,
               health=health, state=state, published=published)
    client.close()


def check_window(record: dict, expected: dict) -> None:
    for name, value in expected.items():
        if isinstance(value, float):
            assert record[name] == pytest.approx(value), name
        else:
            assert record[name] == value, name


@pytest.mark.parametrize("hhmm,queue", list(EXPECTED))
def test_kpi_windows_topic_holds_the_hand_computed_kpis(run, hhmm: str, queue: str) -> None:
    record = run["windows"][window_key(hhmm, queue)]
    assert record["final"] is True
    assert record["service_level_formula"] == "answered_over_exits"
    check_window(record, EXPECTED[(hhmm, queue)])


@pytest.mark.parametrize("hhmm,queue", list(EXPECTED))
def test_clickhouse_kpi_windows_hold_the_same_kpis(run, hhmm: str, queue: str) -> None:
    result = run["client"].query(
        "SELECT * FROM kpi_windows FINAL WHERE window = '1m' AND queue = {q:String} "
        "AND window_start = toDateTime64({s:String}, 3, 'UTC')",
        parameters={"q": queue, "s": f"2026-01-05 {hhmm}:00"})
    assert len(result.result_rows) == 1
    record = dict(zip(result.column_names, result.result_rows[0]))
    assert record["final"] is True
    check_window(record, EXPECTED[(hhmm, queue)])


def test_open_window_is_published_before_it_is_final(run) -> None:
    record = run["windows"][window_key("08:10", "billing")]
    assert record["offered"] == 1 and record["final"] is False


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(value for (n, lbls), value in metrics.items()
               if n == name and all((k, v) in lbls for k, v in labels.items()))


def test_prometheus_counters_and_histogram(run) -> None:
    m = run["metrics"]
    billing = dict(queue="billing", channel="voice")
    assert _sum(m, "ccpulse_queue_offered_total", **billing) == 7  # A-F and H
    assert _sum(m, "ccpulse_queue_answered_total", **billing) == 3
    assert _sum(m, "ccpulse_queue_abandoned_total", **billing) == 2
    assert _sum(m, "ccpulse_queue_short_abandoned_total", **billing) == 1
    assert _sum(m, "ccpulse_queue_answered_within_target_total", **billing) == 2
    assert _sum(m, "ccpulse_queue_abandoned_within_target_total", **billing) == 1
    assert _sum(m, "ccpulse_queue_answered_immediately_total", **billing) == 1
    assert _sum(m, "ccpulse_queue_handled_total", **billing) == 3
    assert _sum(m, "ccpulse_queue_handle_time_seconds_total", **billing) == 45 + 80 + 190
    assert _sum(m, "ccpulse_queue_abandon_wait_seconds_total", **billing) == 15 + 45
    assert _sum(m, "ccpulse_queue_answer_wait_seconds_sum", **billing) == 0 + 30 + 15
    assert _sum(m, "ccpulse_queue_answer_wait_seconds_count", **billing) == 3
    for le, count in {"0": 1, "10": 1, "15": 2, "20": 2, "30": 3, "+Inf": 3}.items():
        assert _sum(m, "ccpulse_queue_answer_wait_seconds_bucket", le=le, **billing) == count, le
    sales = dict(queue="sales", channel="voice")
    assert _sum(m, "ccpulse_queue_answered_within_target_total", **sales) == 1
    assert _sum(m, "ccpulse_queue_handle_time_seconds_total", **sales) == 30
    assert _sum(m, "ccpulse_events_consumed_total") == len(messages())
    assert _sum(m, "ccpulse_events_invalid_total", reason="not_json") == 1
    assert _sum(m, "ccpulse_duplicate_events_total") == 1
    # Labels never carry customer or interaction ids.
    labels = {v for (_n, lbls) in m for _k, v in lbls}
    assert not labels & {"cust-1", "A", "B", "C", "D", "E", "F", "G", "H"}


def test_malformed_message_is_dead_lettered_with_its_bytes_and_reason(run) -> None:
    assert len(run["dead"]) == 1
    record = json.loads(run["dead"][0][1])
    assert record["reason"] == "not_json"
    assert base64.b64decode(record["value_base64"]) == MALFORMED
    assert record["topic"] == "e2e.calls" and record["offset"] >= 0


def test_clickhouse_raw_events_and_interactions(run) -> None:
    client = run["client"]
    raw = client.query("SELECT count(), uniqExact(event_id) FROM raw_events FINAL").result_rows[0]
    assert raw == (len(SCENARIO) + 1, len(SCENARIO) + 1)  # duplicate collapsed, malformed absent
    payload = client.query("SELECT payload FROM raw_events FINAL WHERE event_id = 'A1'").result_rows[0][0]
    assert json.loads(payload)["customer_id"] == "cust-1"
    rows = dict(client.query("SELECT interaction_id, outcome FROM interactions FINAL").result_rows)
    assert rows == {"A": "answered", "B": "answered", "C": "abandoned", "D": "abandoned",
                    "E": "answered", "F": "abandoned", "G": "answered", "H": "waiting"}
    waits = dict(client.query("SELECT interaction_id, wait_ms FROM interactions FINAL "
                              "WHERE outcome != 'waiting'").result_rows)
    assert waits == {"A": 0, "B": 30000, "C": 3000, "D": 15000, "E": 15000, "F": 45000, "G": 20000}


def test_worker_was_healthy_and_stopped_cleanly(run) -> None:
    assert run["health"][0] == 200
    assert run["exit_code"] == 0


def test_live_queue_state_and_rolling_view(run) -> None:
    billing, sales = run["state"]["billing|voice"], run["state"]["sales|voice"]
    # H entered billing at 08:10:00, the newest event time: waiting now, for 0 s so far.
    assert (billing["waiting"], billing["longest_wait_seconds"], billing["agents_busy"]) == (1, 0.0, 0)
    assert (sales["waiting"], sales["longest_wait_seconds"], sales["agents_busy"]) == (0, None, 0)
    assert billing["as_of"] == "2026-01-05T08:10:00.000Z"
    # Last 15 minutes (08:10 back to 07:56): every billing exit of the scenario.
    last = billing["last_15m"]
    assert (last["offered"], last["answered"], last["abandoned"]) == (7, 3, 2)
    assert last["service_level"] == pytest.approx(2 / 5)
    m = run["metrics"]
    assert _sum(m, "ccpulse_queue_waiting", queue="billing") == 1
    assert _sum(m, "ccpulse_queue_waiting", queue="sales") == 0


@pytest.mark.parametrize("topic", list(TOPIC_SCHEMAS))
def test_every_published_record_validates_against_its_json_schema(run, topic: str) -> None:
    validator = Draft202012Validator(load(TOPIC_SCHEMAS[topic]))
    records = run["published"][topic]
    # This scenario breaches nothing and finalizes no window of 15 minutes or more, so
    # sla.breaches and kpi.scorecards stay empty here (their own tests cover them).
    if topic in ("kpi.windows", "kpi.agents", "kpi.queue-state", "events.dead-letter"):
        assert records, f"nothing was published on {topic}"
    for record in records:
        errors = sorted(validator.iter_errors(record), key=str)
        assert not errors, (topic, record, [e.message for e in errors])
