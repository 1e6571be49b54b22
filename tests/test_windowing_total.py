"""Windowing is total over every timestamp the decoder accepts (issue 14, item 1).

.NET's ``DateTime.MinValue`` (0001-01-01T00:00:00Z) in America/New_York made
``Windowing._offset_ms`` raise ``OverflowError`` and took the lifecycle agent down.
Every zone, every day start, years 1 to 9999: a window is always found, it holds
the timestamp, and ``placeable`` says whether its bounds can be written as RFC 3339.
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.core.timestamps import format_ms
from ccpulse.core.windowing import DAY, FIRST_MS, LAST_MS, Windowing
from schemas.events import parse_timestamp_ms

SIZES = (60, 900, 3600, 7200, DAY)
ZONES = sorted(available_timezones())


def test_the_range_is_the_decoders() -> None:
    assert parse_timestamp_ms("0001-01-01T00:00:00Z") == FIRST_MS
    assert parse_timestamp_ms("9999-12-31T23:59:59.999Z") == LAST_MS
    assert parse_timestamp_ms("0001-01-01T00:00:00+00:01") is None
    assert parse_timestamp_ms("9999-12-31T23:59:59.999-00:01") is None


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo", "Pacific/Kiritimati", "UTC"])
@pytest.mark.parametrize("day_start_hour", [0, 6, 23])
@pytest.mark.parametrize("ts", [FIRST_MS, LAST_MS])
def test_the_first_and_last_timestamps_have_windows(zone: str, day_start_hour: int, ts: int) -> None:
    w = Windowing(SIZES, zone, day_start_hour)
    for size, start in w.starts(ts):
        assert start <= ts < w.end(size, start)


def test_dotnet_min_value_in_new_york_is_refused_not_raised() -> None:
    w = Windowing(SIZES, "America/New_York", 6)
    # The local time there is still 31 Dec of year 0: no window can be written down.
    assert w.placeable(FIRST_MS) is not None
    assert "0001-01-01" in w.placeable(FIRST_MS)
    assert w.placeable(parse_timestamp_ms("2026-01-05T08:00:00Z")) is None


@settings(max_examples=600, deadline=None)
@given(ts=st.one_of(st.integers(FIRST_MS, LAST_MS),
                    st.integers(FIRST_MS, FIRST_MS + 3 * 86_400_000),
                    st.integers(LAST_MS - 3 * 86_400_000, LAST_MS)),
       zone=st.sampled_from(ZONES), day_start_hour=st.integers(0, 23))
def test_every_timestamp_has_a_window_in_every_zone(ts: int, zone: str, day_start_hour: int) -> None:
    w = Windowing(SIZES, zone, day_start_hour)
    for size, start in w.starts(ts):
        end = w.end(size, start)
        assert start <= ts < end, (size, start, end)
        assert w.start(start, size) == start  # a window's start lies in that window
        assert w.start(end - 1, size) == start
    refusal = w.placeable(ts)
    if refusal is None:
        for size, start in w.starts(ts):
            format_ms(start), format_ms(w.end(size, start))  # RFC 3339, as every record writes it
    else:
        assert any(start < FIRST_MS or w.end(size, start) > LAST_MS for size, start in w.starts(ts))


def test_the_ends_of_the_range_keep_their_local_offsets() -> None:
    w = Windowing(SIZES, "America/New_York", 6)
    # Year 1: local mean time, -4:56:02, so local hours begin at hh:56:02 UTC.
    assert w.start(parse_timestamp_ms("0001-01-01T12:00:00Z"), 3600) == parse_timestamp_ms("0001-01-01T11:56:02Z")
    assert w.start(parse_timestamp_ms("0001-01-02T12:00:00Z"), DAY) == parse_timestamp_ms("0001-01-02T10:56:02Z")
    # Year 9999: today's rules (EDT, -4:00 in July; EST, -5:00 in December).
    assert w.start(parse_timestamp_ms("9999-07-01T12:30:00Z"), DAY) == parse_timestamp_ms("9999-07-01T10:00:00Z")
    assert w.end(DAY, parse_timestamp_ms("9999-12-30T11:00:00Z")) == parse_timestamp_ms("9999-12-31T11:00:00Z")
    assert w.start(parse_timestamp_ms("9999-12-31T23:59:59.999Z"), DAY) == parse_timestamp_ms("9999-12-31T11:00:00Z")
    kolkata = Windowing((3600,), "Asia/Kolkata")
    assert kolkata.start(parse_timestamp_ms("9999-12-31T23:59:59Z"), 3600) == parse_timestamp_ms("9999-12-31T23:30:00Z")
