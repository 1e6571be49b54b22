"""Catching up (a replay at full speed, a worker back after a pause), the pipeline stage
must not send an open partial for a window that the events already read put past its
lateness: that window is final one clock round trip later, and its open partial only
doubled what the merge, kpi.windows and ClickHouse had to carry (issue 15: a month
replayed sent about 4 partials per window). Without Kafka: the stage driven as the
Faust shell drives it, <app>-rekey looped back in order."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from ccpulse.core.timestamps import format_ms
from streams.stages.partials import AGENT_WINDOW_SECONDS
from streams.stages.pipeline import Checkpoint, PipelineStage, key_partition
from tests.test_pipeline_stage import PARTITIONS, REKEY, T0, Rec, settings

NOW = T0 + 40 * 86_400_000  # the wall clock, well after the replayed days


def replayed_calls(hours: int, per_minute: int) -> list[Rec]:
    """Calls on two queues, each offered, answered 20 s later and ended a minute later, in event-time order."""
    events: list[tuple[int, dict[str, Any]]] = []
    for n in range(hours * 60 * per_minute):
        iid, t = f"c{n}", T0 + n * 60_000 // per_minute
        base = {"interaction_id": iid, "queue": f"q{n % 2}"}
        events += [(t, {**base, "event_id": f"{iid}-1", "type": "call.offered"}),
                   (t + 20_000, {**base, "event_id": f"{iid}-2", "type": "call.answered", "agent_id": f"a{n % 7}"}),
                   (t + 80_000, {**base, "event_id": f"{iid}-3", "type": "call.ended", "agent_id": f"a{n % 7}"})]
    events.sort(key=lambda e: e[0])
    return [Rec(doc["interaction_id"].encode(), orjson.dumps({**doc, "occurred_at": format_ms(t)}), i)
            for i, (t, doc) in enumerate(events)]


def drive(records: list[Rec], batch: int) -> tuple[list[dict[str, Any]], PipelineStage]:
    """Everything on calls/0 (as ``ccpulse replay`` publishes), read ``batch`` records per
    envelope; a checkpoint per envelope (200 ms apart), a tick every 5; what a checkpoint
    wrote to <app>-rekey is read back before the next envelope."""
    stage = PipelineStage(settings(), REKEY)
    partials: list[dict[str, Any]] = []
    offsets: Counter[int] = Counter()
    now = NOW

    def write(out: Checkpoint) -> None:
        partials.extend(m.value for m in out.partials if m.value["kind"] == "window")
        back: dict[int, list[Rec]] = {}
        for m in out.rekey:
            p = key_partition(m.key, PARTITIONS)
            back.setdefault(p, []).append(Rec(m.key, m.value, offsets[p]))
            offsets[p] += 1
        for clock in out.clocks:
            for p in range(PARTITIONS):
                back.setdefault(p, []).append(Rec(None, clock.value, offsets[p]))
                offsets[p] += 1
        for p, recs in sorted(back.items()):
            stage.on_batch(REKEY, p, recs, now)

    # A running worker: its input partitions without records were reported idle long since.
    every = {(t, p): True for t in ("calls", "chats", "tickets") for p in range(PARTITIONS)}
    stage.on_tick(now - 5_000, every)
    stage.on_tick(now, every)
    write(stage.checkpoint(now))
    for n, i in enumerate(range(0, len(records), batch)):
        now += 200
        stage.on_batch("calls", 0, records[i:i + batch], now)
        if n % 5 == 4:
            stage.on_tick(now, {("calls", p): p != 0 or i + batch >= len(records) for p in range(PARTITIONS)})
        write(stage.checkpoint(now))
    for _ in range(3):  # the end: the last clocks go round, the tick closes what they allow
        now += int(AGENT_WINDOW_SECONDS * 1000)
        stage.on_tick(now, every)
        write(stage.checkpoint(now))
    return partials, stage


def test_catching_up_sends_about_one_partial_per_window_and_part() -> None:
    partials, stage = drive(replayed_calls(hours=12, per_minute=4), batch=300)
    per_window = Counter((tuple(p["key"]), p["partition"]) for p in partials)
    finals = {(tuple(p["key"]), p["partition"]) for p in partials if p["final"]}
    opened = [p for p in partials if not p["final"]]
    # The replayed hours, but the last, are final; windows of the newest events stay open.
    assert len(finals) > 0.9 * len(per_window)
    # Open partials left: the windows of the newest events at each checkpoint, and those the
    # 5 s pass of agent windows finds between the watermark and the newest events (one
    # clock round trip). Before: 88% of the minute windows, 82% of all, went out open first.
    minute_open = sum(1 for p in opened if p["key"][0] == 60)
    minute_final = sum(1 for key, _ in finals if key[0] == 60)
    assert minute_open < 0.2 * minute_final, f"{minute_open} open partials of {minute_final} final minute windows"
    assert len(opened) < 0.3 * len(finals), f"{len(opened)} open partials for {len(finals)} final windows x parts"


def test_a_live_window_still_goes_out_with_every_checkpoint() -> None:
    """The window of the newest events is open and sent at once: the live view does not wait."""
    stage = PipelineStage(settings(), REKEY)
    t = T0 + 3_600_000
    iid = "live-1"
    p = key_partition(iid.encode(), PARTITIONS)
    doc = {"event_id": "live-1-1", "type": "call.offered", "occurred_at": format_ms(t),
           "interaction_id": iid, "queue": "q0"}
    stage.on_batch("calls", p, [Rec(iid.encode(), orjson.dumps(doc), 0)], t + 100)
    sent = {(m.value["key"][0], m.value["final"]) for m in stage.checkpoint(t + 100).partials
            if m.value["kind"] == "window"}
    assert sent == {(60, False), (900, False), (3600, False), (86400, False)}
