"""End to end on the real broker and a real worker process: flow-outs, callback requests
and hold (issue 16), on kpi.windows, kpi.agents, in ClickHouse and on /metrics.

The expected figures come from the scenario's timestamps and METRICS.md ("Agents and
staffing"): a flow-out or callback request is a queue exit counted in the window of the
exit, neither answered nor abandoned; each hold counts in the window in which it ended
(resumed, or the call ended while held), ``held`` once per answered segment.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import clickhouse_connect
import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.json_schemas import load
from tests.worker_process import WorkerProcess, latest_windows, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

T = "2026-01-05T08:"
Q = "retention"


def ev(eid: str, etype: str, at: str, iid: str, queue: str | None = None, **extra: object) -> dict:
    doc = {"event_id": eid, "type": etype, "occurred_at": T + at, "interaction_id": iid}
    if queue:
        doc["queue"] = queue
    doc.update(extra)
    return doc


CALLS = [
    # K: flows out after 45 s of waiting (08:00).
    ev("K1", "call.offered", "00:05.000Z", "K", Q),
    ev("K2", "call.flowed_out", "00:50.000Z", "K", reason="timeout"),
    # L: asks for a callback after 60 s (08:01).
    ev("L1", "call.offered", "00:10.000Z", "L", Q),
    ev("L2", "call.callback_requested", "01:10.000Z", "L"),
    # M: answered after 5 s; on hold 20 s (ends 08:00:50), then again from 08:01:40 until
    # the call ends while held at 08:02:10 (30 s, in 08:02). Its first resume is delivered
    # before the hold it ends.
    ev("M1", "call.offered", "00:15.000Z", "M", Q),
    ev("M2", "call.answered", "00:20.000Z", "M", agent_id="ag-1"),
    ev("M4", "call.resumed", "00:50.000Z", "M"),
    ev("M3", "call.held", "00:30.000Z", "M"),
    ev("M5", "call.held", "01:40.000Z", "M"),
    ev("M6", "call.ended", "02:10.000Z", "M"),
    # N: flows out to the overflow queue after 20 s (a transfer there), answered there.
    ev("N1", "call.offered", "00:20.000Z", "N", Q),
    ev("N2", "call.flowed_out", "00:40.000Z", "N", reason="overflow", to_queue="retention-overflow"),
    ev("N3", "call.answered", "00:45.000Z", "N", agent_id="ag-2"),
    ev("N4", "call.ended", "01:00.000Z", "N"),
]
CHATS = [
    # P: a chat no agent took: flowed out at 08:01:30.
    ev("P1", "chat.offered", "00:00.000Z", "P", Q),
    ev("P2", "chat.flowed_out", "01:30.000Z", "P", reason="no_agents"),
]
DUPLICATE = ev("K2", "call.flowed_out", "00:50.000Z", "K", reason="timeout")  # producer retry
NO_REASON = ev("X1", "call.flowed_out", "00:55.000Z", "X")  # a flow-out must say why
CHAT_HOLD = ev("X2", "chat.held", "00:55.000Z", "P")  # hold is for calls only
# Move event time to 08:20 on both topics, past the end + 2 min lateness of 08:00-08:15.
TICKS = {"calls": ev("H1", "call.offered", "20:00.000Z", "H", "tick"),
         "chats": ev("H2", "chat.offered", "20:00.000Z", "H2", "tick")}

EXPECTED = {
    ("1m", "08:00", "voice"): dict(offered=4, answered=1, abandoned=0, flowed_out=1, callbacks_requested=0,
                                   transferred_out=1, held=1, hold_seconds=20.0, avg_hold_seconds=20.0,
                                   waiting_at_start=0, waiting_at_end=1),
    ("1m", "08:01", "voice"): dict(offered=0, flowed_out=0, callbacks_requested=1, held=0, hold_seconds=0.0,
                                   avg_hold_seconds=None, waiting_at_start=1, waiting_at_end=0),
    ("1m", "08:02", "voice"): dict(held=0, hold_seconds=30.0, avg_hold_seconds=None, handled=1,
                                   handle_time_sum_seconds=110.0, waiting_at_start=0, waiting_at_end=0),
    ("15m", "08:00", "voice"): dict(offered=4, answered=1, flowed_out=1, callbacks_requested=1, transferred_out=1,
                                    held=1, hold_seconds=50.0, avg_hold_seconds=50.0, abandonment_rate=0.0,
                                    service_level=1.0, waiting_at_start=0, waiting_at_end=0),
    ("1m", "08:00", "chat"): dict(offered=1, waiting_at_end=1),  # none of them: the fields are absent
    ("1m", "08:01", "chat"): dict(offered=0, flowed_out=1, waiting_at_start=1, waiting_at_end=0,
                                  abandonment_rate=None),
}


def window_key(size: str, hhmm: str, channel: str, queue: str = Q) -> str:
    return f"{size}|2026-01-05T{hhmm}:00.000Z|{queue}|{channel}"


def keyed(docs: list[dict]) -> list[tuple[bytes | None, bytes]]:
    return [(doc["interaction_id"].encode(), orjson.dumps(doc)) for doc in docs]


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("exits-hold")
    worker = WorkerProcess.create(kafka_bootstrap, tmp, "exitshold")
    worker.start()
    try:
        p = worker.prefix
        produce(kafka_bootstrap, f"{p}calls", keyed(CALLS + [DUPLICATE, NO_REASON]), one_at_a_time=True)
        produce(kafka_bootstrap, f"{p}chats", keyed(CHATS + [CHAT_HOLD]), one_at_a_time=True)
        produce(kafka_bootstrap, f"{p}calls", keyed([TICKS["calls"]]))
        produce(kafka_bootstrap, f"{p}chats", keyed([TICKS["chats"]]))
        wanted = {window_key(size, hhmm, channel) for size, hhmm, channel in EXPECTED}
        agent_key = "15m|2026-01-05T08:00:00.000Z|ag-1|voice"

        def all_final() -> bool:
            windows = latest_windows(kafka_bootstrap, f"{p}kpi.windows")
            agents = latest_windows(kafka_bootstrap, f"{p}kpi.agents")
            return (all(k in windows and windows[k]["final"] for k in wanted)
                    and agent_key in agents and agents[agent_key]["final"])

        # Polled against a deadline: under load the worker may take a while to get there.
        wait_until(all_final, 240, "final kpi.windows and kpi.agents for 08:00-08:15", interval=1.0)
        metrics = worker.metrics()
        windows = latest_windows(kafka_bootstrap, f"{p}kpi.windows")
        agents = latest_windows(kafka_bootstrap, f"{p}kpi.agents")
        dead = [json.loads(v) for _k, v in read_topic(kafka_bootstrap, f"{p}events.dead-letter")]
        state = {k.decode(): json.loads(v) for k, v in read_topic(kafka_bootstrap, f"{p}kpi.queue-state")}
        worker.wait_sink_idle()
    finally:
        exit_code = worker.stop()
    client = clickhouse_connect.get_client(interface="chdb", path=worker.clickhouse_path)
    yield dict(metrics=metrics, windows=windows, agents=agents, dead=dead, state=state, client=client,
               exit_code=exit_code, agent_key=agent_key)
    client.close()


# Every record carries them, 0 (the average: null) in a window without flow-outs, callbacks or holds.
NONE_OF_THEM = {"flowed_out": 0, "callbacks_requested": 0, "held": 0, "hold_seconds": 0.0, "avg_hold_seconds": None}


def check(record: dict, expected: dict) -> None:
    none = NONE_OF_THEM if "queue" in record else {k: v for k, v in NONE_OF_THEM.items() if "hold" in k or k == "held"}
    expected = {**none, **expected}
    for name, value in expected.items():
        if isinstance(value, float):
            assert record[name] == pytest.approx(value), name
        else:
            assert record[name] == value, name


@pytest.mark.parametrize("size,hhmm,channel", list(EXPECTED))
def test_kpi_windows_hold_the_hand_computed_exits_and_hold(run, size: str, hhmm: str, channel: str) -> None:
    record = run["windows"][window_key(size, hhmm, channel)]
    assert record["final"] is True
    check(record, EXPECTED[(size, hhmm, channel)])
    # The extended reconciliation identity, as any reader can check it.
    assert (record["waiting_at_start"] + record["offered"]
            == record["answered"] + record["abandoned"] + record["short_abandoned"] + record["transferred_out"]
            + record["flowed_out"] + record["callbacks_requested"] + record["waiting_at_end"])
    errors = [e.message for e in Draft202012Validator(load("kpi-window")).iter_errors(record)]
    assert not errors


def test_the_overflow_queue_got_the_flowed_out_call_as_an_offer(run) -> None:
    record = run["windows"][window_key("1m", "08:00", "voice", "retention-overflow")]
    check(record, dict(offered=1, answered=1, transferred_out=0))


def test_kpi_agents_hold_the_agents_hold(run) -> None:
    record = run["agents"][run["agent_key"]]
    check(record, dict(held=1, hold_seconds=50.0, avg_hold_seconds=50.0, handled=1))
    assert not list(Draft202012Validator(load("agent-window")).iter_errors(record))


@pytest.mark.parametrize("size,hhmm,channel", list(EXPECTED))
def test_clickhouse_kpi_windows_hold_the_same(run, size: str, hhmm: str, channel: str) -> None:
    result = run["client"].query(
        "SELECT * FROM kpi_windows FINAL WHERE window = {w:String} AND queue = {q:String} AND channel = {c:String} "
        "AND window_start = toDateTime64({s:String}, 3, 'UTC')",
        parameters={"w": size, "q": Q, "c": channel, "s": f"2026-01-05 {hhmm}:00"})
    assert len(result.result_rows) == 1
    row = dict(zip(result.column_names, result.result_rows[0]))
    # The store has every column: 0 (the average: null) where the record had none of them.
    expected = {**NONE_OF_THEM, **EXPECTED[(size, hhmm, channel)]}
    for name, value in expected.items():
        assert row[name] == (pytest.approx(value) if isinstance(value, float) else value), name


def test_clickhouse_interaction_rows_say_how_each_contact_left_and_its_hold(run) -> None:
    rows = {(r[0], r[1]): r[2:] for r in run["client"].query(
        "SELECT interaction_id, segment, queue, outcome, exit_reason, holds, hold_ms FROM interactions FINAL "
        "WHERE queue != 'tick'").result_rows}
    assert rows == {
        ("K", 0): (Q, "flowed_out", "timeout", 0, 0),
        ("L", 0): (Q, "callback_requested", None, 0, 0),
        ("M", 0): (Q, "answered", None, 2, 50_000),
        ("N", 0): (Q, "transferred", "overflow", 0, 0),
        ("N", 1): ("retention-overflow", "answered", None, 0, 0),
        ("P", 0): (Q, "flowed_out", "no_agents", 0, 0),
    }
    # (channel "": the agent stage's time-in-state record of the same agent, issue 16)
    agent = run["client"].query("SELECT held, hold_seconds FROM agent_windows FINAL WHERE agent_id = 'ag-1' "
                                "AND window = '15m' AND channel = 'voice'").result_rows
    assert agent == [(1, 50.0)]


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(value for (n, lbls), value in metrics.items()
               if n == name and all((k, v) in lbls for k, v in labels.items()))


def test_prometheus_counts_them(run) -> None:
    m = run["metrics"]
    voice, chat = dict(queue=Q, channel="voice"), dict(queue=Q, channel="chat")
    assert _sum(m, "ccpulse_queue_flowed_out_total", **voice) == 1
    assert _sum(m, "ccpulse_queue_flowed_out_total", **chat) == 1
    assert _sum(m, "ccpulse_queue_callbacks_requested_total", **voice) == 1
    assert _sum(m, "ccpulse_queue_transferred_out_total", **voice) == 1
    assert _sum(m, "ccpulse_queue_held_total", **voice) == 1
    assert _sum(m, "ccpulse_queue_hold_time_seconds_total", **voice) == 50
    assert _sum(m, "ccpulse_queue_abandoned_total", **voice) == 0
    assert _sum(m, "ccpulse_queue_waiting", **voice) == 0  # nobody of the scenario waits any more
    assert _sum(m, "ccpulse_duplicate_events_total") == 1
    assert _sum(m, "ccpulse_events_invalid_total", reason="missing_field") == 1
    assert _sum(m, "ccpulse_events_invalid_total", reason="unknown_type") == 1


def test_bad_flow_out_and_chat_hold_are_dead_lettered_with_their_bytes(run) -> None:
    by_reason = {d["reason"]: d for d in run["dead"]}
    assert set(by_reason) == {"missing_field", "unknown_type"}
    assert json.loads(base64.b64decode(by_reason["missing_field"]["value_base64"]))["event_id"] == "X1"
    assert "reason" in by_reason["missing_field"]["detail"]
    assert json.loads(base64.b64decode(by_reason["unknown_type"]["value_base64"]))["event_id"] == "X2"


def test_live_state_no_longer_counts_them_waiting(run) -> None:
    for channel in ("voice", "chat"):
        assert run["state"][f"{Q}|{channel}"]["waiting"] == 0


def test_worker_stopped_cleanly(run) -> None:
    assert run["exit_code"] == 0
