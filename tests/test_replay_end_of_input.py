"""A replay's end of input on the one-pass pipeline, without Kafka (streams/stages/end_of_input.py).

``ccpulse replay`` waits until the worker's group has committed every input partition
through its end, then writes one end-of-input record to every partition of
``<app>-rekey``. The owner of each partition moves its input sources to the close of the
largest window holding the replay's newest event, never past the wall clock; the
clocks carry that to every engine, and every window the replay touched becomes final.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from ccpulse.config import Settings, WindowSettings
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.kpis import QUEUE
from ccpulse.core.timestamps import format_ms
from ccpulse.core.windowing import Windowing
from schemas.events import parse_timestamp_ms
from streams.stages.pipeline import Checkpoint, PipelineStage, key_partition
from tests.test_pipeline_stage import Rec, call, idle_everywhere, iid_on

PARTITIONS = 4
REKEY = "ccpulse-rekey"
INPUTS = ("calls", "chats", "tickets")
DAY = parse_timestamp_ms("2026-01-05T00:00:00Z")
LATENESS_MS = 120_000
DAY_CLOSES = DAY + 86_400_000 + LATENESS_MS  # the day window's end plus the allowed lateness


def settings(**windows: Any) -> Settings:
    base = Settings()
    # Neither an idle source nor a quiet stream may explain a window closing here.
    windows = {"source_idle_seconds": 3600.0, "idle_close_seconds": 3600.0,
               "allowed_lateness_seconds": LATENESS_MS / 1000, **windows}
    return replace(base, kafka=replace(base.kafka, partitions=PARTITIONS),
                   windows=replace(WindowSettings(), **windows))


def marker(newest_ms: int, ends: dict[str, int] | None = None, run: str = "run-1") -> bytes:
    """The record ``ccpulse replay`` writes to every partition of <app>-rekey."""
    sources = {f"{t}/{p}": 0 for t in INPUTS for p in range(PARTITIONS)}
    sources.update(ends or {})
    return orjson.dumps({"end_of_input": {"run": run, "newest": newest_ms, "sources": sources}})


class Rekey:
    """<app>-rekey as the Faust shell writes it and the owners read it back, in order."""

    def __init__(self, stage: PipelineStage) -> None:
        self.stage = stage
        self.log: dict[int, list[Rec]] = {p: [] for p in range(PARTITIONS)}
        self.read: dict[int, int] = {p: 0 for p in range(PARTITIONS)}

    def append(self, p: int, key: bytes | None, value: bytes) -> None:
        self.log[p].append(Rec(key, value, len(self.log[p])))

    def write(self, out: Checkpoint) -> None:
        for m in out.rekey:
            self.append(key_partition(m.key, PARTITIONS), m.key, m.value)
        for clock in out.clocks:  # after the events they cover
            for p in range(PARTITIONS):
                self.append(p, None, clock.value)

    def marker(self, value: bytes) -> None:
        for p in range(PARTITIONS):
            self.append(p, None, value)

    def settle(self, now_ms: int, rounds: int = 4) -> list[Checkpoint]:
        """Read <app>-rekey, tick and checkpoint until nothing more moves."""
        every = {(t, p): True for t in (*INPUTS, REKEY) for p in range(PARTITIONS)}
        outs = []
        for _ in range(rounds):
            for p in range(PARTITIONS):
                records = self.log[p][self.read[p]:]
                self.read[p] = len(self.log[p])
                if records:
                    self.stage.on_batch(REKEY, p, records, now_ms)
            self.stage.on_tick(now_ms, every)
            out = self.stage.checkpoint()
            outs.append(out)
            self.write(out)
        return outs


def finals(outs: list[Checkpoint]) -> dict[tuple[bytes, int], dict[str, Any]]:
    return {(m.key, m.value["partition"]): m.value for out in outs for m in out.partials
            if m.value["kind"] == "window" and m.value["final"]}


NEWEST = DAY + 17 * 3_600_000  # the newest event of ``replayed_day``


def replayed_day(stage: PipelineStage, rekey: Rekey, now_ms: int, newest: int = NEWEST) -> None:
    """Two calls of one day on calls/0 (offsets 0-3), as ``ccpulse replay --partition 0``
    writes them: one on its own partition, one that calls/0 forwards over <app>-rekey."""
    here, there = iid_on(0, "h"), iid_on(1, "t")
    start = DAY + 9 * 3_600_000
    stage.on_batch("calls", 0, [
        Rec(here.encode(), call(here, 1, "offered", start), 0),
        Rec(there.encode(), call(there, 1, "offered", start + 60_000), 1),
        Rec(here.encode(), call(here, 2, "answered", start + 90_000), 2),
        Rec(there.encode(), call(there, 2, "abandoned", newest), 3),
    ], now_ms)
    rekey.write(stage.checkpoint())


def test_a_historic_replay_closes_every_window_it_touched_on_every_partition() -> None:
    now = DAY + 7 * 86_400_000  # a week later
    stage = PipelineStage(settings(), REKEY)
    rekey = Rekey(stage)
    idle_everywhere(stage, now)  # a running worker: nothing to read anywhere before the replay
    replayed_day(stage, rekey, now)
    outs = rekey.settle(now)
    # Without the end of input the day stays open: event time is the newest event.
    assert {e.record.watermark for e in stage.engines.values()} == {NEWEST}
    assert not any(v["key"][0] == 86400 for v in finals(outs).values())

    rekey.marker(marker(NEWEST, {"calls/0": 4}))
    outs = rekey.settle(now)
    assert set(stage.engines) == set(range(PARTITIONS))
    for engine in stage.engines.values():  # partitions 2 and 3 got no record of the replay
        assert engine.record.watermark == DAY_CLOSES
        assert not engine.windows, engine.partition
    day = finals(outs)[(b"1d|2026-01-05T00:00:00.000Z|billing|voice", 0)]
    assert day["agg"]["counts"]["offered"] == 1
    assert finals(outs)[(b"1d|2026-01-05T00:00:00.000Z|billing|voice", 1)]["agg"]["counts"]["offered"] == 1
    assert not any(out.dead_letters for out in outs)


def test_the_end_of_input_never_moves_event_time_past_the_wall_clock() -> None:
    # A replay of this morning while live producers write: the day is not over, and
    # an event stamped now must not find its window final because of the replay.
    now = DAY + 12 * 3_600_000
    stage = PipelineStage(settings(), REKEY)
    rekey = Rekey(stage)
    newest = DAY + 10 * 3_600_000
    replayed_day(stage, rekey, now, newest)
    rekey.marker(marker(newest, {"calls/0": 4}))
    outs = rekey.settle(now)
    assert {e.record.watermark for e in stage.engines.values()} == {now}
    # The replay's windows that closed by now are final; its day is not.
    assert (b"1h|2026-01-05T09:00:00.000Z|billing|voice", 0) in finals(outs)
    live = iid_on(2, "live")
    stage.on_batch("calls", 2, [Rec(live.encode(), call(live, 1, "offered", now - 5_000, queue="live"), 0)],
                   now + 1_000)
    outs += rekey.settle(now + 1_000)
    assert stage.engines[2].record.late_events == 0
    assert not [key for key, _p in finals(outs) if b"|live|" in key or key.startswith(b"1d|")]
    minute = (now - 5_000) - (now - 5_000) % 60_000
    assert (60, minute, QUEUE, "live", "voice") in stage.engines[2].windows  # counted, still open


def test_a_source_read_short_of_its_end_is_not_moved() -> None:
    """The replay sends the end only once the group has committed every input partition
    through it, so an owner that has read a source short of it is reading that source
    again (its offsets were reset): the records still to come must not be late."""
    now = DAY + 7 * 86_400_000
    stage = PipelineStage(settings(), REKEY)
    rekey = Rekey(stage)
    replayed_day(stage, rekey, now)
    rekey.settle(now)
    rekey.marker(marker(NEWEST, {"calls/0": 9}))  # calls/0 was read to 4
    rekey.settle(now)
    assert stage.engines[0].record.sources["calls/0"][0] == NEWEST
    assert {e.record.watermark for e in stage.engines.values()} == {NEWEST}
    # The other sources did move: only calls/0 holds event time back.
    assert stage.engines[0].record.sources["calls/1"][0] == DAY_CLOSES


def test_a_new_owner_applies_an_end_it_reads_before_any_record_of_the_source() -> None:
    """After a restart or a rebalance the new owner starts at the committed offsets, which
    the replay waited for: a source with nothing left to read is at its end already."""
    now = DAY + 7 * 86_400_000
    stage = PipelineStage(settings(), REKEY)
    rekey = Rekey(stage)
    replayed_day(stage, rekey, now)
    rekey.settle(now)
    for p in range(PARTITIONS):  # the worker restarts: every partition assigned afresh
        record = stage.engines[p].record
        stage.revoke(p, forget_interactions=False)
        stage.assign(p, record, [i for i in stage.interactions.values() if i.partition == p], now)
    rekey.marker(marker(NEWEST, {"calls/0": 4}))
    rekey.settle(now)
    assert {e.record.watermark for e in stage.engines.values()} == {DAY_CLOSES}


def test_duplicate_and_stale_ends_change_nothing() -> None:
    now = DAY + 7 * 86_400_000
    stage = PipelineStage(settings(), REKEY)
    rekey = Rekey(stage)
    replayed_day(stage, rekey, now)
    rekey.marker(marker(NEWEST, {"calls/0": 4}))
    rekey.settle(now)
    before = {p: (e.record.watermark, dict(e.record.sources)) for p, e in stage.engines.items()}
    rekey.marker(marker(NEWEST, {"calls/0": 4}))  # the same again (a re-read)
    rekey.marker(marker(DAY - 86_400_000, {"calls/0": 1}, run="older"))  # an earlier replay's
    outs = rekey.settle(now + 1_000)
    assert not any(out.clocks for out in outs)  # no source reported anything new
    assert {p: (e.record.watermark, dict(e.record.sources)) for p, e in stage.engines.items()} == before
    assert not any(out.dead_letters for out in outs)


def test_the_day_closes_in_the_workers_zone_and_day_start() -> None:
    # 05:30 in Berlin, the day starting at 06:00: the day that ends at 06:00 today.
    s = settings(timezone="Europe/Berlin", day_start_hour=6)
    newest = parse_timestamp_ms("2026-01-05T04:30:00Z")
    now = newest + 7 * 86_400_000
    stage = PipelineStage(s, REKEY)
    rekey = Rekey(stage)
    rekey.marker(marker(newest))
    rekey.settle(now)
    assert {e.record.watermark for e in stage.engines.values()} == \
        {parse_timestamp_ms("2026-01-05T05:00:00Z") + LATENESS_MS}


def test_the_close_is_the_engines_own_for_every_window_size() -> None:
    from streams.stages.end_of_input import closes_through

    w = Windowing((60, 900, 3600, 86400), "America/New_York", 6)
    engine = PartitionEngine(0, w, 120.0, Settings().thresholds_for, 86400.0)
    for newest in (parse_timestamp_ms("2026-03-08T10:59:59Z"), parse_timestamp_ms("2026-11-01T12:00:00Z")):
        assert closes_through(w, engine.lateness_ms, newest) == \
            max(engine.closes_at((size, w.start(newest, size))) for size in w.sizes)


@pytest.mark.parametrize("bad", [
    {"end_of_input": {"run": "r", "newest": "yesterday", "sources": {}}},
    {"end_of_input": {"run": "r", "newest": 1, "sources": {"calls/0": "end"}}},
    {"end_of_input": ["r", 1]},
])
def test_a_malformed_end_is_dead_lettered_and_moves_nothing(bad: dict[str, Any]) -> None:
    now = DAY + 7 * 86_400_000
    stage = PipelineStage(settings(), REKEY)
    stage.on_batch(REKEY, 0, [Rec(None, orjson.dumps(bad), 0)], now)
    out = stage.checkpoint()
    assert len(out.dead_letters) == 1
    assert "end_of_input" in out.dead_letters[0].value["detail"]
    assert not out.clocks


def test_the_rekey_topic_written_is_the_one_the_worker_reads() -> None:
    import os

    from ccpulse.config import load_settings
    from streams.app import create_app
    from streams.stages.end_of_input import rekey_topic

    env = {"CCPULSE_APP_ID": "some-app", "CCPULSE_TOPIC_PREFIX": "p.", "CCPULSE_CONFIG": os.devnull}
    s = load_settings(env=env)
    assert rekey_topic(s) == create_app(s).pipeline.topics.rekey.get_topic_name()  # type: ignore[attr-defined]


class FakeAdmin:
    """A consumer group's committed offsets, one answer per look."""

    def __init__(self, *looks: dict[Any, int]) -> None:
        self.looks = list(looks)

    async def list_consumer_group_offsets(self, group: str, partitions: list[Any]) -> dict[Any, Any]:
        from aiokafka.structs import OffsetAndMetadata

        look = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        return {tp: OffsetAndMetadata(offset, "") for tp, offset in look.items()}


def test_the_replay_waits_while_the_group_reads_and_gives_up_when_it_stops() -> None:
    import asyncio

    from aiokafka import TopicPartition

    from ccpulse.commands.errors import CommandError
    from ccpulse.commands.replay import _wait_until_read

    a, b = TopicPartition("calls", 0), TopicPartition("calls", 1)
    ends = {a: 100, b: 7}
    # Reading on (b committed later, a moving): done once both reach their ends.
    admin = FakeAdmin({a: 10}, {a: 60}, {a: 100}, {a: 100, b: 7})
    asyncio.run(_wait_until_read(admin, "app", ends, stall_seconds=0.6))
    assert admin.looks == [{a: 100, b: 7}]
    # Stuck at 40 of 100: a one-line error naming what is left, after stall_seconds.
    with pytest.raises(CommandError, match=r"app app .*committed nothing further for 0\.6 s \(calls/0 60 left, "
                                           r"calls/1 7 left\)"):
        asyncio.run(_wait_until_read(FakeAdmin({a: 40}), "app", ends, stall_seconds=0.6))


def test_the_replay_keys_every_event_by_interaction_unless_a_partition_is_given() -> None:
    """Pinned to one partition, three quarters of a replay (4 partitions) took the re-key hop
    and were decoded twice. Keyed by interaction it reads in event-time order per partition
    and the pipeline holds event time at the slowest one (``tests/test_pipeline_stage.py``)."""
    import argparse
    import inspect

    from ccpulse.commands import replay

    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    assert parser.parse_args(["x.jsonl"]).partition is None
    assert parser.parse_args(["x.jsonl", "--partition", "2"]).partition == 2
    for publishing in (replay.replay, replay.publish):
        assert inspect.signature(publishing).parameters["partition"].default is None, publishing.__name__


def test_a_replay_keyed_by_interaction_takes_no_rekey_hop_and_its_end_closes_every_partition() -> None:
    now = DAY + 7 * 86_400_000
    stage = PipelineStage(settings(), REKEY)
    rekey = Rekey(stage)
    idle_everywhere(stage, now)
    start = DAY + 9 * 3_600_000
    ends: dict[str, int] = {}
    newest = 0
    for n in range(40):  # 40 calls, each on its key's partition, in event-time order per partition
        iid = f"r{n}"
        p = key_partition(iid.encode(), PARTITIONS)
        at = start + n * 60_000
        offset = ends.get(f"calls/{p}", 0)
        stage.on_batch("calls", p, [Rec(iid.encode(), call(iid, 1, "offered", at), offset),
                                    Rec(iid.encode(), call(iid, 2, "abandoned", at + 5_000), offset + 1)], now)
        ends[f"calls/{p}"] = offset + 2
        newest = at + 5_000
    first = stage.checkpoint()
    assert first.rekey == [] and len(first.interactions) == 40
    rekey.write(first)
    rekey.marker(marker(newest, ends))
    outs = rekey.settle(now)
    assert {e.record.watermark for e in stage.engines.values()} == {DAY_CLOSES}
    day = [v for (key, _p), v in finals(outs).items() if key.startswith(b"1d|")]
    assert sum(v["agg"]["counts"]["offered"] for v in day) == 40
    assert len({v["partition"] for v in day}) > 1  # spread over the partitions
