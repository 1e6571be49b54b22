"""``ccpulse replay`` without a broker: mappings, records, the events they become.

The expected events are worked out by hand from the rows (Israel is UTC+2 in
January 1999), not from ccpulse code.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import orjson
import pytest

from ccpulse.commands import replay
from ccpulse.commands.replay import ReplayError, ReplayStats, load_mapping, mapping_from_dict
from schemas.events import Event, parse_timestamp_ms, validate

REPO = Path(__file__).resolve().parents[1]
BANK_MAPPING = REPO / "deploy" / "replay" / "anonymous-bank.toml"
BANK_FILE = REPO.parent / "shared" / "data" / "anonymous-bank-1999-01.tsv"
FAR_FUTURE_MS = 10**15


def ev(n: int, etype: str, at: str, iid: str, queue: str, **extra: object) -> dict:
    doc = {"event_id": f"replay-{iid}-{n}", "type": etype, "occurred_at": at, "interaction_id": iid,
           "queue": queue, "schema_version": 1}
    doc.update(extra)
    return doc


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- mapping validation

MINIMAL = {"id": "interaction_id", "queue": "queue", "offered": "offered_at"}


@pytest.mark.parametrize("change,key", [
    ({"id": None}, "id: required"),
    ({"queue": None}, "queue: required"),
    ({"offered": None}, "offered: required"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"format": "xls"}, "format: 'xls' is not one of"),
    ({"delimiter": ";;"}, "delimiter: must be one character"),
    ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not a known time zone"),
    ({"on_error": "ignore"}, "on_error: 'ignore'"),
    ({"clock_skew_seconds": -1}, "clock_skew_seconds:"),
    ({"queue": 5}, "queue: must be"),
    ({"queue": {"column": "q", "colour": "x"}}, "queue.colour: unknown key"),
    ({"id": {"value": "x"}}, "id.value: unknown key"),
    ({"channel": {"column": "media", "values": {"phone": 1}}}, "channel.values:"),
    ({"channel": ""}, "channel: '' is not a channel"),
    ({"offered": []}, "offered: at least one column"),
    ({"answered": [""]}, "answered: must be a column name"),
    ({"date_reference": "vru_entry"}, "date_reference: only used together with date"),
    ({"date": "day", "date_format": "yymmdd"}, "date_format: 'yymmdd' is not a strptime pattern"),
    ({"timestamp_format": "dd/mm/yyyy"}, "timestamp_format:"),
    ({"outcome": "outcome"}, "outcome: must be a table"),
    ({"outcome": {"answered": ["AGENT"]}}, "outcome.column: required"),
    ({"outcome": {"column": "o"}}, "outcome: list at least one value"),
    ({"outcome": {"column": "o", "abandoned": ["HANG"], "skip": ["HANG"]}, "abandoned": "x"},
     "outcome.skip: 'HANG' is also listed under outcome.abandoned"),
    ({"outcome": {"column": "o", "answered": ["AGENT"]}}, "answered: required when outcome.answered"),
    ({"split_on_whitespace_fallback": "yes"}, "split_on_whitespace_fallback: must be true or false"),
    ({"empty_times": [0]}, "empty_times: must be a list of strings"),
    ({"unknown_agent": ""}, "unknown_agent:"),
    ({"attributes": {"priority": 3}}, "attributes:"),
    ({"encoding": "klingon-8"}, "encoding: 'klingon-8' is not a known text encoding"),
])
def test_a_bad_mapping_names_its_key(change: dict, key: str) -> None:
    doc = {**MINIMAL, **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(ReplayError) as info:
        mapping_from_dict(doc)
    assert str(info.value).startswith(key), str(info.value)


def test_load_mapping_reports_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", 'id = "id"\nqueue = "q"\noffered = "t"\nformat = "xls"\n')
    with pytest.raises(ValueError, match=r"m.toml: format: 'xls' is not one of csv, tsv, jsonl"):
        load_mapping(path)
    with pytest.raises(ReplayError, match="not valid TOML"):
        load_mapping(write(tmp_path, "bad.toml", "id = \n"))
    with pytest.raises(ReplayError, match="not found"):
        load_mapping(tmp_path / "missing.toml")


def test_the_bank_mapping_loads() -> None:
    m = load_mapping(BANK_MAPPING)
    assert m.format == "tsv" and m.on_error == "skip" and m.timezone == "Asia/Jerusalem"
    assert m.id.columns == ("vru+line", "call_id")
    assert m.offered == ("q_start", "ser_start") and m.outcome is not None
    assert m.outcome.skip == frozenset({"PHANTOM"})


def test_a_column_missing_from_the_header_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "interaction_id,queue\nc-1,billing\n")
    with pytest.raises(ReplayError, match="column 'offered_at' named in the mapping is not in the header"):
        replay.read_interactions(path, mapping_from_dict(MINIMAL))


# ---------------------------------------------------------------- a generic CSV (deploy/replay/README.md)

GENERIC_CSV = """\
interaction_id,queue,channel,agent,customer,offered_at,answered_at,abandoned_at,ended_at
c-1,billing,voice,a-7,cust-1,2026-01-05T08:00:05+01:00,2026-01-05T08:00:20+01:00,,2026-01-05T08:04:00+01:00
c-2,billing,voice,,,2026-01-05T08:01:00+01:00,,2026-01-05T08:01:45+01:00,
m-1,support,chat,a-2,cust-9,2026-01-05T08:02:00+01:00,2026-01-05T08:02:30+01:00,,2026-01-05T08:10:00+01:00
t-1,tier1,email,a-3,cust-4,2026-01-05T07:00:00+01:00,2026-01-05T09:30:00+01:00,,2026-01-06T10:00:00+01:00
"""
GENERIC_MAPPING = """\
format = "csv"
id = "interaction_id"
channel = { column = "channel" }
queue = "queue"
agent = "agent"
customer = "customer"
offered = "offered_at"
answered = "answered_at"
abandoned = "abandoned_at"
ended = "ended_at"
"""


def test_the_readme_example_becomes_these_events(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, "calls.toml", GENERIC_MAPPING))
    records, stats = replay.read_interactions(write(tmp_path, "calls.csv", GENERIC_CSV), mapping)
    assert stats == ReplayStats(rows=4, interactions=4, skipped={}, events=11)
    events = replay.lifecycle_events(records, mapping)
    assert events == [
        ("ticket", ev(1, "ticket.created", "2026-01-05T06:00:00.000Z", "t-1", "tier1", channel="email",
                      customer_id="cust-4")),
        ("call", ev(1, "call.offered", "2026-01-05T07:00:05.000Z", "c-1", "billing", customer_id="cust-1")),
        ("call", ev(2, "call.answered", "2026-01-05T07:00:20.000Z", "c-1", "billing", agent_id="a-7")),
        ("call", ev(1, "call.offered", "2026-01-05T07:01:00.000Z", "c-2", "billing")),
        ("call", ev(2, "call.abandoned", "2026-01-05T07:01:45.000Z", "c-2", "billing")),
        ("chat", ev(1, "chat.offered", "2026-01-05T07:02:00.000Z", "m-1", "support", customer_id="cust-9")),
        ("chat", ev(2, "chat.answered", "2026-01-05T07:02:30.000Z", "m-1", "support", agent_id="a-2")),
        ("call", ev(3, "call.ended", "2026-01-05T07:04:00.000Z", "c-1", "billing")),
        ("chat", ev(3, "chat.ended", "2026-01-05T07:10:00.000Z", "m-1", "support")),
        ("ticket", ev(2, "ticket.replied", "2026-01-05T08:30:00.000Z", "t-1", "tier1", channel="email",
                      sender="agent", public=True, agent_id="a-3")),
        ("ticket", ev(3, "ticket.closed", "2026-01-06T09:00:00.000Z", "t-1", "tier1", channel="email")),
    ]
    for family, doc in events:
        assert isinstance(validate(doc, family, now_ms=FAR_FUTURE_MS), Event), doc


def test_outcome_from_the_times_present(tmp_path: Path) -> None:
    csv = ("id,queue,channel,offered_at,answered_at,abandoned_at,ended_at\n"
           "w,q,voice,2026-01-05 08:00:00,,,\n"              # still waiting: offered only
           "e,q,voice,2026-01-05 08:00:00,,,2026-01-05 08:00:09\n"  # ended while waiting: abandoned
           "t,q,web,2026-01-05 08:00:00,,2026-01-05 09:00:00,\n")  # a ticket abandoned: closed
    mapping = mapping_from_dict({"id": "id", "queue": "queue", "channel": {"column": "channel"},
                                 "offered": "offered_at", "answered": "answered_at",
                                 "abandoned": "abandoned_at", "ended": "ended_at",
                                 "timezone": "Europe/Berlin"})
    records, _ = replay.read_interactions(write(tmp_path, "x.csv", csv), mapping)
    assert [(r.interaction_id, r.outcome) for r in records] == [("w", "open"), ("e", "abandoned"),
                                                                ("t", "abandoned")]
    events = replay.lifecycle_events(records, mapping)
    assert [(d["interaction_id"], d["type"], d["occurred_at"]) for _f, d in events] == [
        ("e", "call.offered", "2026-01-05T07:00:00.000Z"),  # naive times are Berlin's (UTC+1)
        ("t", "ticket.created", "2026-01-05T07:00:00.000Z"),
        ("w", "call.offered", "2026-01-05T07:00:00.000Z"),
        ("e", "call.abandoned", "2026-01-05T07:00:09.000Z"),
        ("t", "ticket.closed", "2026-01-05T08:00:00.000Z"),
    ]


def test_jsonl_input_with_epoch_times(tmp_path: Path) -> None:
    lines = [{"id": 17, "q": "sales", "in": 1767600000, "up": 1767600012.5, "agent": "a-1"},
             {"id": 18, "q": "sales", "in": 1767600001, "up": None}]
    path = write(tmp_path, "x.jsonl", "\n".join(orjson.dumps(x).decode() for x in lines) + "\n\n")
    mapping = mapping_from_dict({"id": "id", "queue": "q", "offered": "in", "answered": "up",
                                 "agent": "agent", "timestamp_format": "epoch"})
    records, stats = replay.read_interactions(path, mapping)
    assert stats.rows == 2 and stats.interactions == 2
    assert [(d["type"], d["occurred_at"]) for _f, d in replay.lifecycle_events(records, mapping)] == [
        ("call.offered", "2026-01-05T08:00:00.000Z"), ("call.offered", "2026-01-05T08:00:01.000Z"),
        ("call.answered", "2026-01-05T08:00:12.500Z")]


# ---------------------------------------------------------------- bad records

BAD_CSV = GENERIC_CSV.splitlines()


@pytest.mark.parametrize("line3,kind,message", [
    ("c-3,billing,voice,a-1,,2026-13-45T08:00:00Z,,,", "unparseable_time",
     "line 3: offered_at '2026-13-45T08:00:00Z' is not an ISO 8601 timestamp"),
    (",billing,voice,a-1,,2026-01-05T08:00:00Z,,,", "missing_id", "line 3: no id (interaction_id empty)"),
    ("c-3,,voice,a-1,,2026-01-05T08:00:00Z,,,", "missing_queue", "line 3: no queue (queue empty)"),
    ("c-1,billing,voice,a-1,,2026-01-05T08:00:00Z,,,", "duplicate_id",
     "line 3: id 'c-1' was already used on line 2"),
    ("c-3,billing,voice,a-1,,2026-01-05T08:00:00Z", "wrong_field_count", "line 3: 6 fields, the header has 9"),
    ("c-3,billing,voice,a-1,,2026-01-05T08:00:00Z,2026-01-05T07:59:00Z,,", "time_order",
     "line 3: answered (answered_at 2026-01-05T07:59:00Z) before offered"),
    ("c-3,billing,voice,a-1,,2026-01-05T08:00:00Z,2026-01-05T08:00:10Z,2026-01-05T08:00:20Z,",
     "conflicting_times", "line 3: both answered (answered_at) and abandoned (abandoned_at) times"),
])
def test_a_bad_record_names_its_line(tmp_path: Path, line3: str, kind: str, message: str) -> None:
    text = "\n".join([BAD_CSV[0], BAD_CSV[1], line3, BAD_CSV[2]]) + "\n"
    path = write(tmp_path, "x.csv", text)
    mapping = load_mapping(write(tmp_path, "m.toml", GENERIC_MAPPING))
    with pytest.raises(ReplayError) as info:
        replay.read_interactions(path, mapping)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.line == 3 and info.value.kind == kind
    # on_error = "skip": the same file is read, the bad row counted, the rest kept.
    from dataclasses import replace
    records, stats = replay.read_interactions(path, replace(mapping, on_error="skip"))
    assert stats.invalid == {kind: 1} and stats.examples[0].startswith(message)
    assert stats.rows == 3 and stats.interactions == 2 == len(records)
    assert "invalid and skipped 1" in stats.summary()


def test_clock_skew_within_the_tolerance_is_moved_not_rejected(tmp_path: Path) -> None:
    csv = ("id,queue,offered_at,answered_at,ended_at\n"
           "a,q,2026-01-05T08:00:00Z,2026-01-05T07:59:58Z,2026-01-05T08:05:00Z\n"
           "b,q,2026-01-05T08:00:00Z,2026-01-05T08:00:30Z,2026-01-05T08:00:29Z\n")
    mapping = mapping_from_dict({"id": "id", "queue": "queue", "offered": "offered_at",
                                 "answered": "answered_at", "ended": "ended_at", "clock_skew_seconds": 2})
    records, stats = replay.read_interactions(write(tmp_path, "x.csv", csv), mapping)
    assert stats.adjusted == {"answered_before_offered": 1, "ended_before_answered": 1, "unknown_agent": 2}
    a, b = records
    assert a.exit_ms == a.offered_ms and b.ended_ms == b.exit_ms
    assert {d["agent_id"] for _f, d in replay.lifecycle_events(records) if "agent_id" in d} == {"unknown"}


def test_a_file_that_is_not_there_or_empty(tmp_path: Path) -> None:
    mapping = mapping_from_dict(MINIMAL)
    with pytest.raises(ReplayError, match="not found"):
        replay.read_interactions(tmp_path / "nope.csv", mapping)
    with pytest.raises(ReplayError, match="empty"):
        replay.read_interactions(write(tmp_path, "e.csv", ""), mapping)
    with pytest.raises(ReplayError, match="cannot tell the format"):
        replay.read_interactions(write(tmp_path, "x.txt", "a\n"), mapping)


# ---------------------------------------------------------------- the bank mapping on hand-picked rows

BANK_HEADER = ("vru+line\tcall_id\tcustomer_id\tpriority\ttype\tdate\tvru_entry\tvru_exit\tvru_time\t"
               "q_start\tq_exit\tq_time\toutcome\tser_start\tser_exit\tser_time\tserver")
BANK_ROWS = [
    # a HANG after 153 s in the queue: abandoned
    "AA0101\t33116\t9664491\t2\tPS\t990101\t0:00:31\t0:00:36\t5\t0:00:36\t0:03:09\t153\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER",
    # a HANG in the voice menu: never offered (skipped)
    "AA0101\t33117\t0\t0\tPS\t990101\t0:34:12\t0:34:23\t11\t0:00:00\t0:00:00\t0\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER",
    # a served call that queued 17 s
    "AA0101\t33118\t27997683\t2\tPS\t990101\t6:55:20\t6:55:26\t6\t6:55:26\t6:55:43\t17\tAGENT\t6:55:43\t6:56:37\t54\tMICHAL",
    # a served call that never queued: offered and answered at ser_start; customer 0 = unknown
    "AA0101\t33119\t0\t0\tPS\t990101\t7:41:16\t7:41:26\t10\t0:00:00\t0:00:00\t0\tAGENT\t7:41:25\t7:44:53\t208\tBASCH",
    # spaces instead of tabs (in places)
    "AA0101 33128\t59669259  1\tPS 990101 9:41:14\t9:41:20 6 9:41:20 9:41:46 26 AGENT 9:41:45 9:42:19 34 BASCH",
    # a PHANTOM: not a call (skipped)
    "AA0112\t1560\t57056244\t2\tTT\t990113\t8:43:16\t8:43:16\t0\t8:43:16\t8:43:38\t22\tPHANTOM\t0:00:00\t0:00:00\t0\tNO_SERVER",
    # served, but no agent named: agent "unknown"
    "AA0109\t29079\t54881123\t2\tPS\t990124\t7:54:19\t7:54:24\t5\t7:54:24\t7:54:55\t31\tAGENT\t7:54:54\t7:56:35\t101\tNO_SERVER",
    # queued at 23:59:28, answered at 0:00:03 the next day
    "AA0213\t12511\t35796002\t1\tPS\t990109\t23:59:23\t23:59:23\t0\t23:59:28\t0:00:03\t35\tAGENT\t0:00:03\t0:00:55\t52\tANAT",
    # reached the voice menu on the 23rd, an agent on the 24th (the date is vru_entry's)
    "AA0106\t35258\t0\t0\tNE\t990123\t23:59:48\t23:59:48\t0\t0:00:00\t0:00:00\t0\tAGENT\t0:00:01\t0:00:24\t23\tZOHARI",
    # ser_exit 1 s before q_exit (two clocks): the end is moved to the answer
    "AA0106\t35183\t59756973\t1\tPS\t990121\t12:08:46\t12:08:52\t6\t12:08:52\t12:09:47\t55\tAGENT\t12:09:45\t12:09:46\t1\tYIFAT",
    # vru_exit before vru_entry (clock skew): q_start 53 s before vru_entry stays on the same day
    "AA0101\t34400\t48820351\t2\tPS\t990128\t15:46:49\t15:45:56\t-53\t15:45:56\t15:46:59\t63\tAGENT\t15:46:57\t15:53:31\t394\tDORIT",
]


def call(n: int, kind: str, at: str, iid: str, queue: str = "PS", **extra: object) -> tuple[str, dict]:
    return "call", ev(n, f"call.{kind}", at, iid, queue, **extra)


BANK_EVENTS = [
    call(1, "offered", "1998-12-31T22:00:36.000Z", "AA0101-33116", customer_id="9664491",
         attributes={"priority": "2"}),
    call(2, "abandoned", "1998-12-31T22:03:09.000Z", "AA0101-33116"),
    call(1, "offered", "1999-01-01T04:55:26.000Z", "AA0101-33118", customer_id="27997683",
         attributes={"priority": "2"}),
    call(2, "answered", "1999-01-01T04:55:43.000Z", "AA0101-33118", agent_id="MICHAL"),
    call(3, "ended", "1999-01-01T04:56:37.000Z", "AA0101-33118"),
    call(1, "offered", "1999-01-01T05:41:25.000Z", "AA0101-33119", attributes={"priority": "0"}),
    call(2, "answered", "1999-01-01T05:41:25.000Z", "AA0101-33119", agent_id="BASCH"),
    call(3, "ended", "1999-01-01T05:44:53.000Z", "AA0101-33119"),
    call(1, "offered", "1999-01-01T07:41:20.000Z", "AA0101-33128", customer_id="59669259",
         attributes={"priority": "1"}),
    call(2, "answered", "1999-01-01T07:41:46.000Z", "AA0101-33128", agent_id="BASCH"),
    call(3, "ended", "1999-01-01T07:42:19.000Z", "AA0101-33128"),
    call(1, "offered", "1999-01-09T21:59:28.000Z", "AA0213-12511", customer_id="35796002",
         attributes={"priority": "1"}),
    call(2, "answered", "1999-01-09T22:00:03.000Z", "AA0213-12511", agent_id="ANAT"),
    call(3, "ended", "1999-01-09T22:00:55.000Z", "AA0213-12511"),
    call(1, "offered", "1999-01-21T10:08:52.000Z", "AA0106-35183", customer_id="59756973",
         attributes={"priority": "1"}),
    call(2, "answered", "1999-01-21T10:09:47.000Z", "AA0106-35183", agent_id="YIFAT"),
    call(3, "ended", "1999-01-21T10:09:47.000Z", "AA0106-35183"),
    call(1, "offered", "1999-01-23T22:00:01.000Z", "AA0106-35258", "NE", attributes={"priority": "0"}),
    call(2, "answered", "1999-01-23T22:00:01.000Z", "AA0106-35258", "NE", agent_id="ZOHARI"),
    call(3, "ended", "1999-01-23T22:00:24.000Z", "AA0106-35258", "NE"),
    call(1, "offered", "1999-01-24T05:54:24.000Z", "AA0109-29079", customer_id="54881123",
         attributes={"priority": "2"}),
    call(2, "answered", "1999-01-24T05:54:55.000Z", "AA0109-29079", agent_id="unknown"),
    call(3, "ended", "1999-01-24T05:56:35.000Z", "AA0109-29079"),
    call(1, "offered", "1999-01-28T13:45:56.000Z", "AA0101-34400", customer_id="48820351",
         attributes={"priority": "2"}),
    call(2, "answered", "1999-01-28T13:46:59.000Z", "AA0101-34400", agent_id="DORIT"),
    call(3, "ended", "1999-01-28T13:53:31.000Z", "AA0101-34400"),
]


def test_bank_rows_become_exactly_these_events(tmp_path: Path) -> None:
    path = tmp_path / "bank.tsv"
    path.write_bytes(("\r\n".join([BANK_HEADER, *BANK_ROWS]) + "\r\n").encode())
    mapping = load_mapping(BANK_MAPPING)
    records, stats = replay.read_interactions(path, mapping)
    assert stats == ReplayStats(
        rows=11, interactions=9, skipped={"not_offered": 1, "outcome PHANTOM": 1}, events=26,
        adjusted={"split_on_whitespace": 1, "unknown_agent": 1, "after_midnight": 2,
                  "ended_before_answered": 1})
    events = replay.lifecycle_events(records, mapping)
    assert events == BANK_EVENTS
    for _family, doc in events:
        assert isinstance(validate(doc, "call", now_ms=FAR_FUTURE_MS), Event), doc


def test_a_bank_row_that_is_broken_is_skipped_and_counted(tmp_path: Path) -> None:
    broken = BANK_ROWS[2].replace("6:55:43\t17", "6:75:43\t17")  # q_exit 6:75:43
    path = write(tmp_path, "bank.tsv", "\n".join([BANK_HEADER, BANK_ROWS[0], broken]) + "\n")
    records, stats = replay.read_interactions(path, load_mapping(BANK_MAPPING))  # on_error = "skip"
    assert len(records) == 1 and stats.invalid == {"unparseable_time": 1}
    assert stats.examples == ("line 3: q_exit '6:75:43' is not a time of day (H:MM:SS)",)


# ---------------------------------------------------------------- served calls, 0:00:00 and midnight

# In the bank's log 0:00:00 is both "no such step" and midnight. A served (AGENT) call
# is offered and answered whatever its times say, and its wait is the row's q_time.
SERVED_ROWS = [
    # one of the 19 served rows of January whose queue and service times all read 0:00:00:
    # offered and answered (wait 0) when it left the voice menu; no service times, no ended
    "AA0102\t28609\t0\t0\tPS\t990104\t13:39:21\t13:39:30\t9\t0:00:00\t0:00:00\t0\tAGENT\t0:00:00\t0:00:00\t0\tGILI",
    # queued at midnight exactly (q_start 0:00:00 is a time here), answered 25 s later
    "AA0300\t1\t0\t0\tPS\t990105\t23:59:50\t0:00:00\t10\t0:00:00\t0:00:25\t25\tAGENT\t0:00:25\t0:03:00\t155\tANAT",
    # answered at midnight exactly (q_exit and ser_start 0:00:00) after 25 s in the queue
    "AA0300\t2\t0\t0\tPS\t990105\t23:59:30\t23:59:35\t5\t23:59:35\t0:00:00\t25\tAGENT\t0:00:00\t0:02:00\t120\tANAT",
]
SERVED_EVENTS = [
    call(1, "offered", "1999-01-04T11:39:30.000Z", "AA0102-28609", attributes={"priority": "0"}),
    call(2, "answered", "1999-01-04T11:39:30.000Z", "AA0102-28609", agent_id="GILI"),
    call(1, "offered", "1999-01-05T21:59:35.000Z", "AA0300-2", attributes={"priority": "0"}),
    call(1, "offered", "1999-01-05T22:00:00.000Z", "AA0300-1", attributes={"priority": "0"}),
    call(2, "answered", "1999-01-05T22:00:00.000Z", "AA0300-2", agent_id="ANAT"),
    call(2, "answered", "1999-01-05T22:00:25.000Z", "AA0300-1", agent_id="ANAT"),
    call(3, "ended", "1999-01-05T22:02:00.000Z", "AA0300-2"),
    call(3, "ended", "1999-01-05T22:03:00.000Z", "AA0300-1"),
]


def test_a_served_row_is_offered_and_answered_whatever_its_times_read(tmp_path: Path) -> None:
    path = tmp_path / "bank.tsv"
    path.write_bytes(("\r\n".join([BANK_HEADER, *SERVED_ROWS]) + "\r\n").encode())
    mapping = load_mapping(BANK_MAPPING)
    records, stats = replay.read_interactions(path, mapping)
    assert (stats.invalid, stats.skipped) == ({}, {})
    assert stats.adjusted == {"served_without_times": 1, "after_midnight": 2}
    events = replay.lifecycle_events(records, mapping)
    assert events == SERVED_EVENTS
    for _family, doc in events:
        assert isinstance(validate(doc, "call", now_ms=FAR_FUTURE_MS), Event), doc


def test_a_served_row_without_any_usable_time_is_a_bad_record_not_a_skip(tmp_path: Path) -> None:
    # Without served_offered, nothing says when it happened: counted as bad, never dropped quietly.
    doc = {"id": "id", "queue": "queue", "offered": "offered_at", "answered": "answered_at",
           "wait": "wait", "outcome": {"column": "result", "answered": ["served"]}}
    path = write(tmp_path, "x.csv", "id,queue,offered_at,answered_at,wait,result,agent\n"
                                    "a,q,,,0,served,ann\n")
    with pytest.raises(ReplayError, match="served, but no time"):
        replay.read_interactions(path, mapping_from_dict(doc))
    path = write(tmp_path, "y.csv", "id,queue,offered_at,answered_at,wait,result,agent\n"
                                    "a,q,,,0,served,ann\n"
                                    "b,q,2026-01-05T10:00:00Z,,soon,served,ann\n"
                                    "c,q,2026-01-05T10:00:00Z,,-3,served,ann\n"
                                    "d,q,2026-01-05T10:00:00Z,,,served,ann\n"
                                    "e,q,2026-01-05T10:00:00Z,,12.5,served,ann\n")
    records, stats = replay.read_interactions(path, mapping_from_dict({**doc, "on_error": "skip"}))
    assert stats.invalid == {"missing_time": 2, "invalid_wait": 2} and stats.skipped == {}
    assert [(r.interaction_id, r.exit_ms - r.offered_ms) for r in records] == [("e", 12_500)]
    with pytest.raises(ReplayError, match="wait: must be a column name"):
        mapping_from_dict({**doc, "wait": 5})


# ---------------------------------------------------------------- the whole real file

@pytest.fixture(scope="module")
def bank_events() -> tuple[list[tuple[str, dict]], ReplayStats, float]:
    if not BANK_FILE.is_file():
        pytest.skip(f"the real call log is not at {BANK_FILE}")
    started = time.perf_counter()
    events, stats = replay.load(BANK_FILE, load_mapping(BANK_MAPPING))
    return events, stats, time.perf_counter() - started


def test_the_real_file_reads_fast_and_every_row_is_accounted_for(bank_events) -> None:
    _events, stats, seconds = bank_events
    assert seconds < 10, f"reading and sorting took {seconds:.1f} s"
    assert stats.rows == 31_599
    # not_offered: the 1,198 calls that hung up in the voice menu; every served call is replayed
    assert stats.skipped == {"not_offered": 1_198, "outcome PHANTOM": 240}
    assert stats.invalid == {}
    assert stats.interactions == 30_161 and stats.events == 87_340
    assert stats.adjusted == {"unknown_agent": 490, "ended_before_answered": 70, "after_midnight": 24,
                              "served_without_times": 19}


def test_every_served_row_of_the_real_file_is_offered_and_answered(bank_events) -> None:
    """Read from the TSV itself: every AGENT row, the 19 whose times all read 0:00:00 included."""
    events, _stats, _seconds = bank_events
    served: dict[str, str] = {}  # id -> vru_exit of the rows without queue or service times
    agent_rows = 0
    with open(BANK_FILE, encoding="ascii", newline="") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        for text in handle:
            fields = text.rstrip("\r\n").split("\t")
            row = dict(zip(header, fields if len(fields) == len(header) else text.split()))
            if row["outcome"] != "AGENT":
                continue
            agent_rows += 1
            if {row[c] for c in ("q_start", "q_exit", "ser_start", "ser_exit")} == {"0:00:00"}:
                served[f"{row['vru+line']}-{row['call_id']}"] = row["vru_exit"]
    assert len(served) == 19
    steps: dict[str, dict[str, str]] = {}
    for _family, doc in events:
        steps.setdefault(doc["interaction_id"], {})[doc["type"]] = doc["occurred_at"]
    answered = [iid for iid, s in steps.items() if {"call.offered", "call.answered"} <= s.keys()]
    assert len(answered) == agent_rows == 27_060
    for iid, vru_exit in served.items():
        s = steps[iid]
        assert s["call.offered"] == s["call.answered"], iid  # the row's wait: 0
        # Israel is UTC+2 in January: the local time of day is two hours ahead of the UTC one
        hours, minutes, seconds = (int(x) for x in vru_exit.split(":"))
        assert s["call.offered"][11:19] == f"{(hours - 2) % 24:02d}:{minutes:02d}:{seconds:02d}", iid


def test_the_real_file_in_event_time_order_with_valid_unique_events(bank_events) -> None:
    events, _stats, _seconds = bank_events
    times = [parse_timestamp_ms(doc["occurred_at"]) for _f, doc in events]
    assert all(a <= b for a, b in zip(times, times[1:]))
    assert len({doc["event_id"] for _f, doc in events}) == len(events)
    steps: dict[str, list[str]] = {}
    for family, doc in events:
        assert family == "call"
        result = validate(doc, "call", now_ms=FAR_FUTURE_MS)
        assert isinstance(result, Event), (doc, result)
        steps.setdefault(doc["interaction_id"], []).append(doc["type"].split(".")[1])
    shapes = {tuple(s) for s in steps.values()}
    assert shapes == {("offered", "answered", "ended"), ("offered", "answered"), ("offered", "abandoned")}
    assert sum(1 for s in steps.values() if s[-1] == "abandoned") == 3_101


def test_limit_takes_the_first_interactions_in_event_time(tmp_path: Path) -> None:
    path = tmp_path / "bank.tsv"
    path.write_text("\n".join([BANK_HEADER, *BANK_ROWS]) + "\n")
    events, stats = replay.load(path, load_mapping(BANK_MAPPING), limit=2)
    assert stats.interactions == 2 and stats.events == 5
    assert {doc["interaction_id"] for _f, doc in events} == {"AA0101-33116", "AA0101-33118"}


# ---------------------------------------------------------------- native JSON Lines

def test_native_events_are_validated_and_sorted(tmp_path: Path) -> None:
    lines = [ev(2, "chat.answered", "2026-01-05T08:00:09Z", "m", "s", agent_id="a"),
             ev(1, "call.offered", "2026-01-05T08:00:05Z", "c", "q"),
             ev(1, "chat.offered", "2026-01-05T08:00:01Z", "m", "s")]
    path = write(tmp_path, "e.jsonl", "\n".join(orjson.dumps(x).decode() for x in lines) + "\n")
    events, stats = replay.read_native_events(path)
    assert [(f, d["event_id"]) for f, d in events] == [("chat", "replay-m-1"), ("call", "replay-c-1"),
                                                       ("chat", "replay-m-2")]
    assert (stats.rows, stats.interactions, stats.events) == (3, 2, 3)
    path.write_text(path.read_text() + '{"event_id": "x", "type": "call.answered"}\n')
    with pytest.raises(ReplayError, match=r"^line 4: missing_field: occurred_at is required"):
        replay.read_native_events(path)


# ---------------------------------------------------------------- command line and progress

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments() -> None:
    ns = parse("calls.csv", "--mapping", "m.toml", "--speed", "60", "--limit", "5")
    assert (ns.file, ns.mapping, ns.speed, ns.limit, ns.partition, ns.on_error, ns.dry_run) == \
        ("calls.csv", "m.toml", 60.0, 5, None, None, False)
    assert parse("x.jsonl").speed is None and parse("x.jsonl", "--speed", "max").speed is None
    assert parse("x.jsonl", "--partition", "key").partition is None
    for bad in (["--speed", "fast"], ["--limit", "0"], ["--partition", "-1"]):
        with pytest.raises(SystemExit):
            parse("x.csv", *bad)


def test_dry_run_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "calls.csv", GENERIC_CSV)
    mapping = write(tmp_path, "calls.toml", GENERIC_MAPPING)
    assert replay.run_from_args(parse(str(path), "--mapping", str(mapping), "--dry-run"), None) == 0
    err = capsys.readouterr().err
    assert "(dry run): 4 rows -> 4 interactions, 11 events" in err
    with pytest.raises(ReplayError, match="--mapping is required"):
        replay.run_from_args(parse(str(path), "--dry-run"), None)


def test_progress_bar() -> None:
    out = io.StringIO()
    show = replay.progress_bar(200, stream=out)
    show(0, 200)
    show(200, 200)
    text = out.getvalue()
    assert text.startswith("\r[") and "100.0% 200/200 events" in text and text.endswith("\n")
