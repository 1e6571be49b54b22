"""Event time across a restart (issue 14, item 3): pure, the clock passed in.

The lifecycle state keeps every input partition's event time as last reported; the
ingest stage restarts knowing none. A partition silent after the restart must stop
holding event time back once it has had nothing to read for ``idle_ms``; one with
records left to read must keep holding it (its events would be late otherwise).
"""

from __future__ import annotations

from ccpulse.core.engine import PartitionEngine, PartitionRecord
from ccpulse.core.watermark import InputWatermarks
from ccpulse.core.windowing import Windowing
from ccpulse.config import Thresholds

IDLE = 5_000
T0 = 1_767_600_000_000  # event time before the restart


def engine_after_restart() -> PartitionEngine:
    """Voice and tickets both active in the last report before the restart."""
    record = PartitionRecord(watermark=T0, sources={"calls/0": [T0 + 1_000, False], "tickets/0": [T0, False]})
    return PartitionEngine(0, Windowing((60,)), 120, lambda q, c: Thresholds(), 3600, record)


def test_a_silent_caught_up_partition_stops_holding_event_time_back() -> None:
    engine = engine_after_restart()
    sources = InputWatermarks(IDLE)
    now = 1_000_000
    sources.assigned("tickets/0", now, caught_up=True)
    sources.seen("calls/0", T0 + 600_000, now)  # voice only after the restart
    engine.observe(sources.report(now))
    assert engine.record.watermark == T0  # the tickets may still come: held back
    for step in range(1, 7):
        sources.seen("calls/0", T0 + 600_000 + step, now + step * 1_000)
        sources.assigned("tickets/0", now + step * 1_000, caught_up=True)
        report = sources.report(now + step * 1_000)
        if report:
            engine.observe(report)
    assert engine.record.sources["tickets/0"] == [T0, True]  # its own event time kept
    assert engine.record.watermark == T0 + 600_006


def test_a_partition_with_records_left_to_read_keeps_holding_event_time_back() -> None:
    engine = engine_after_restart()
    sources = InputWatermarks(IDLE)
    now = 1_000_000
    for step in range(60):  # a minute of voice while the tickets are still being caught up on
        sources.assigned("tickets/0", now + step * 1_000, caught_up=False)
        sources.seen("calls/0", T0 + 600_000 + step, now + step * 1_000)
        report = sources.report(now + step * 1_000)
        if report:
            engine.observe(report)
        assert (report or {}).get("tickets/0", [-1, False]) == [-1, False]  # active, no time of its own
    assert engine.record.watermark == T0


def test_catching_up_starts_the_idle_time_over() -> None:
    sources = InputWatermarks(IDLE)
    sources.assigned("tickets/0", 0, caught_up=True)
    sources.assigned("tickets/0", 4_000, caught_up=False)  # new records arrived meanwhile
    sources.assigned("tickets/0", 4_500, caught_up=True)
    assert sources.report(9_000) is None
    assert sources.report(9_500) == {"tickets/0": [-1, True]}


def test_a_partition_that_delivers_is_reported_as_before() -> None:
    sources = InputWatermarks(IDLE)
    sources.assigned("tickets/0", 0, caught_up=True)
    sources.seen("tickets/0", T0, 1_000)
    sources.assigned("tickets/0", 7_000, caught_up=True)  # ignored: it has its own event time now
    assert sources.report(2_000) == {"tickets/0": [T0, False]}
    assert sources.report(7_000) == {"tickets/0": [T0, True]}
    sources.forget("tickets/0")
    assert sources.report(8_000) is None or sources.report(8_000) == {}
