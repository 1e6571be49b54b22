"""Rate-limited log lines (issue 14, item 8: late events are logged, not silently counted)."""

from __future__ import annotations

from ccpulse.log_limit import CountedLines, LogLimiter


def test_one_line_per_interval_and_the_next_says_how_many_were_held_back() -> None:
    limiter = LogLimiter(10.0)
    assert limiter.allow(0.0) == 0
    assert [limiter.allow(t) for t in (0.1, 5.0, 9.99)] == [None, None, None]
    assert limiter.allow(10.0) == 3
    assert limiter.allow(10.5) is None
    assert limiter.allow(25.0) == 1


def test_counted_lines_write_the_first_at_once_and_a_burst_as_one_summary() -> None:
    lines: list[str] = []
    late = CountedLines(lines.append, "late events", interval_s=10.0, shown=2)
    late.note("billing/voice 1m 08:00", 0.0)
    assert lines == ["1 late events: billing/voice 1m 08:00: 1"]
    for i in range(1000):
        late.note("billing/voice 1m 08:01", 1.0 + i / 1000)
    late.note("sales/chat 15m 08:00", 3.0)
    late.note("x/voice 1m 08:00", 3.0)
    late.flush(9.0)
    assert len(lines) == 1  # still inside the interval
    late.flush(10.0)
    assert lines[1] == "1002 late events: billing/voice 1m 08:01: 1000; sales/chat 15m 08:00: 1 (and 1 more)"
    late.flush(30.0)
    assert len(lines) == 2  # nothing new: nothing written
