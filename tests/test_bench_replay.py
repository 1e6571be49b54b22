"""The bench's bank-month replay bookkeeping: which day windows a replay must close, when
each turned final on kpi.windows and when the storing group committed past it."""

from __future__ import annotations

import pytest

from ccpulse.core.windowing import Windowing
from ccpulse.tools.bench import add_parser, plan_from_args, FULL, SHORT
from ccpulse.tools.bench_replay import BANK_FILE, BANK_JANUARY_DAYS, BANK_MAPPING, FinalBook, day_window_keys, expected_day_windows

JERUSALEM = Windowing((60, 86400), "Asia/Jerusalem")


def call(iid: str, kind: str, at: str, queue: str = "PS") -> tuple[str, dict]:
    return "call", {"event_id": f"{iid}-{kind}", "type": f"call.{kind}", "occurred_at": at,
                    "interaction_id": iid, "queue": queue}


def test_day_windows_are_the_local_days_of_every_event_per_queue() -> None:
    events = [call("a", "offered", "1999-01-01T21:59:00.000Z"),  # 23:59 in Israel: Jan 1
              call("a", "answered", "1999-01-01T22:00:30.000Z"),  # 00:00:30 in Israel: Jan 2
              call("b", "offered", "1999-01-01T10:00:00.000Z", queue="NW")]
    assert day_window_keys(events, JERUSALEM) == {
        "1d|1998-12-31T22:00:00.000Z|PS|voice", "1d|1999-01-01T22:00:00.000Z|PS|voice",
        "1d|1998-12-31T22:00:00.000Z|NW|voice"}


def test_a_day_counts_when_its_first_final_record_is_published_and_stored_when_committed_past() -> None:
    book = FinalBook({"k1", "k2"})
    book.saw("k1", final=False, at=10.0, where=(0, 5))
    book.saw("k1", final=True, at=11.0, where=(0, 7))
    book.saw("k1", final=True, at=12.0, where=(0, 9))  # a later version: still final since 11.0
    assert not book.all_final()
    book.saw("k2", final=True, at=13.0, where=(1, 3))
    assert book.all_final() and book.final_at() == 13.0
    book.stored_through({0: 8, 1: 3}, at=14.0)  # partition 1 committed up to, not past, offset 3
    assert not book.all_stored()
    book.stored_through({0: 8, 1: 4}, at=15.0)
    assert book.all_stored() and book.stored_at() == 15.0


def test_a_window_outside_the_days_of_the_log_is_not_waited_for() -> None:
    """An unended call's agent is on contact up to a horizon past the log's last day: that
    day's window is not one the replay's end of input closes (issue 16)."""
    book = FinalBook({"k1"})
    book.saw("extra", final=False, at=2.0, where=(0, 1))
    assert not book.all_final() and book.not_final() == ["k1"]
    book.saw("k1", final=True, at=3.0, where=(0, 2))
    assert book.all_final() and book.final_at() == 3.0


def test_the_bank_month_has_every_day_with_calls() -> None:
    if not BANK_FILE.is_file():
        pytest.skip(f"no {BANK_FILE}")
    keys = expected_day_windows(BANK_FILE, BANK_MAPPING, None, JERUSALEM)
    days = {key.split("|")[1] for key in keys}
    # Israel's days of January 1999 (UTC+2) but the 11th and 12th, which the data lacks.
    january = {f"{1998 if d == 1 else 1999}-{12 if d == 1 else 1:02d}-{31 if d == 1 else d - 1:02d}T22:00:00.000Z"
               for d in range(1, 32) if d not in (11, 12)}
    assert days == january and len(days) == BANK_JANUARY_DAYS == 29
    assert {key.split("|")[2] for key in keys} == {"IN", "NE", "NW", "PE", "PS", "TT"}
    assert len(keys) == 166  # not every queue has calls every day
    first = expected_day_windows(BANK_FILE, BANK_MAPPING, 2000, JERUSALEM)
    assert first < keys and len({key.split("|")[1] for key in first}) == 3


def test_only_selects_scenarios_and_short_replays_a_cut_of_the_month() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    plan = plan_from_args(parser.parse_args(["bench", "--only", "replay"]))
    assert plan.scenarios == ("replay",) and plan.replay_limit is None
    assert FULL.replay_limit is None and SHORT.replay_limit is not None
    assert set(FULL.scenarios) == {"throughput", "latency", "memory", "replay", "connect-http"}
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--only", "nonsense"])
