"""A quiet input's event time follows the wall clock from where the input last moved it
(streams/stages/pipeline.py, ``on_tick``), also when that move came from the clocks alone.

Event time moves only with the clocks read back from <app>-rekey, once every input
partition reported (ccpulse/core/watermark.py). A backlog read before that point has
applied all its events while event time was still 0; the clocks that then report the
partitions idle move it to the newest event. Anchoring the wall-clock follow on the
event time seen when the last event was *applied* (0) left it there for good: the last
windows never closed, kpi.queue-state stayed at one instant and an SLA hold-down never
completed (tests/test_sla_integration.py timed out waiting for its breach).
"""

from __future__ import annotations

from tests.test_pipeline_stage import EVERY, NOW, PARTITIONS, REKEY, T0, Rec, call, clocks_back, iid_on, settings

from streams.stages.pipeline import PipelineStage


def test_a_backlog_read_before_event_time_moved_still_follows_the_wall_clock_once_quiet() -> None:
    stage = PipelineStage(settings(source_idle_seconds=5.0, idle_close_seconds=10.0,
                                   allowed_lateness_seconds=60.0), REKEY)
    a, b = iid_on(0, "a"), iid_on(1, "b")
    # The whole backlog, read at once: nobody has reported yet, event time stays 0.
    stage.on_batch("calls", 0, [Rec(a.encode(), call(a, 1, "offered", T0 + 60_000), 0),
                                Rec(a.encode(), call(a, 2, "abandoned", T0 + 90_000), 1)], NOW)
    stage.on_batch("calls", 1, [Rec(b.encode(), call(b, 1, "offered", T0 + 120_000), 0),
                                Rec(b.encode(), call(b, 2, "abandoned", T0 + 125_000), 1)], NOW)
    finals: set[bytes] = set()
    seen: dict[int, int] = {}
    for at in range(NOW, NOW + 130_001, 1_000):
        stage.on_tick(at, EVERY)
        out = stage.checkpoint(at)
        finals |= {m.key for m in out.partials if m.value["kind"] == "window" and m.value["final"]}
        clocks_back(stage, out, at)
        seen[at - NOW] = min(e.record.watermark for e in stage.engines.values())
    assert seen[0] == 0
    # source_idle_seconds later every input partition is idle: the newest event.
    jump = next(t for t, wm in sorted(seen.items()) if wm)
    assert seen[jump] == T0 + 125_000
    # From there on every engine follows the wall clock (idle_close_seconds after the
    # last event), never ahead of it: the input's newest time plus the time since.
    assert seen[130_000] == T0 + 125_000 + (130_000 - jump)
    assert {e.record.watermark for e in stage.engines.values()} == {seen[130_000]}
    # So the last minute (08:02, closing at 08:04 with the lateness) is final.
    assert b"1m|2026-01-05T08:02:00.000Z|billing|voice" in finals
    assert len(stage.engines) == PARTITIONS
