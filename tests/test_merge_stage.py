"""MergeStage (streams/stages/merge.py) without Kafka: the merged table is a dict, partials
are the pipeline's and FCR's messages as decoded, and the output is what the Faust shell
(streams/merge.py) writes: table puts/deletes and records for kpi.windows, kpi.agents and
kpi.queue-state."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson
import pytest

from ccpulse.config import Settings
from ccpulse.core.engine import LiveQueue, Snapshot
from ccpulse.core.kpis import QUEUE, WindowAgg
from schemas.records import window_record_key
from sinks.prometheus import PipelineMetrics
from streams.stages.io import Consumed, TablePut
from streams.stages.partials import AGENT_WINDOW_SECONDS
from streams.stages.merge import (KPI_AGENTS, KPI_QUEUE_STATE, KPI_WINDOWS, MergeOutput,
                                  MergeStage, TableDelete)
from streams.stages.partials import live_partial, window_partial

MIN = 60_000
T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
NOW = T0 + 3_600_000
GEN = 1


def agg(**counts: int) -> WindowAgg:
    return WindowAgg(dict(counts), {})


def window(source: int | str, start: int, *, version: int, final: bool = False, size: int = 60,
           scope: str = QUEUE, name: str = "billing", watermark: int = 0, **counts: int) -> dict[str, Any]:
    """A window partial as the pipeline (source: its partition) or FCR ("fcr-<p>") sends it."""
    key = (size, start, scope, name, "voice")
    _, value = window_partial(0, Snapshot(key, agg(**counts), final, version, 1, 2), start + size * 1000,
                              watermark or start)
    value["partition"] = source
    return orjson.loads(orjson.dumps(value))  # as the merge agent reads it: decoded JSON


def live(source: int, *, version: int, waiting: dict[int, int] | None = None, busy: tuple[str, ...] = (),
         watermark: int = T0, queue: str = "billing") -> dict[str, Any]:
    _, value = live_partial(source, queue, "voice", LiveQueue(Counter(waiting or {}), Counter(busy), 0),
                            version, watermark)
    return orjson.loads(orjson.dumps(value))


def clock(source: str, watermark: int) -> dict[str, Any]:
    return {"kind": "clock", "source": source, "watermark": watermark}


def wkey(start: int, size: int = 60, name: str = "billing", scope: str = QUEUE) -> str:
    key = window_record_key((size, start, scope, name, "voice"))
    return key if scope == QUEUE else "agent|" + key


class Stage:
    """A MergeStage over a dict, with a clock the test moves."""

    def __init__(self, partitions: int = 2, metrics: PipelineMetrics | None = None) -> None:
        from dataclasses import replace
        base = Settings()
        settings = replace(base, kafka=replace(base.kafka, partitions=partitions))
        self.table: dict[str, Any] = {}
        self.metrics = metrics
        self.stage = MergeStage(settings, self.table, metrics=metrics)
        self.now_ms, self.mono, self.generation = NOW, 1000.0, GEN

    def batch(self, *partials: dict[str, Any] | Any, partition: int = 0, publish: bool = True) -> MergeOutput:
        return self.stage.on_batch([consumed(partition, p, ("origin", i)) for i, p in enumerate(partials)],
                                   generation=self.generation, now_ms=self.now_ms, mono=self.mono, publish=publish)

    def tick(self) -> MergeOutput:
        return self.stage.on_tick(generation=self.generation, now_ms=self.now_ms, mono=self.mono)


def consumed(partition: int, value: Any, message: Any) -> Consumed:
    return Consumed("ccpulse-window-partials", partition, 0, value, message)


def records(out: MergeOutput, topic: str) -> dict[str, dict[str, Any]]:
    return {p.key.decode(): p.value for p in out.records if p.topic == topic}


# -- merging ---------------------------------------------------------------------------


def test_parts_of_two_sources_merge_into_one_entry_written_once_per_batch() -> None:
    s = Stage()
    out = s.batch(window(0, T0, version=3, offered=2), window(1, T0, version=5, offered=1, answered=1),
                  window(0, T0, version=4, offered=3), partition=1)
    key = wkey(T0)
    assert out.puts == [TablePut(1, key, s.table[key])]  # each key once per batch
    entry = s.table[key]
    # The changelog format recovery reads back: unchanged by the refactor.
    assert entry == {"kind": "window", "key": [60, T0, QUEUE, "billing", "voice"], "end": T0 + MIN,
                     "parts": {"0": {"version": 4, "final": False, "agg": {"counts": {"offered": 3}, "tops": {}},
                                     "watermark": T0, "waiting_at_start": 1, "waiting_at_end": 2},
                               "1": {"version": 5, "final": False,
                                     "agg": {"counts": {"offered": 1, "answered": 1}, "tops": {}},
                                     "watermark": T0, "waiting_at_start": 1, "waiting_at_end": 2}},
                     "partition": 1}
    assert list(entry) == ["kind", "key", "end", "parts", "partition"]
    assert list(entry["parts"]["0"]) == ["version", "final", "agg", "watermark", "waiting_at_start",
                                         "waiting_at_end"]
    record = records(out, KPI_WINDOWS)["1m|2026-01-05T08:00:00.000Z|billing|voice"]
    assert (record["offered"], record["answered"], record["version"], record["final"]) == (4, 1, 9, False)
    assert (record["waiting_at_start"], record["waiting_at_end"], record["published_at"]) == (
        2, 4, "2026-01-05T09:00:00.000Z")
    assert out.deletes == [] and out.failures == []


def test_an_older_part_changes_nothing_and_an_equal_one_is_merged_again() -> None:
    s = Stage()
    s.batch(window(0, T0, version=5, offered=2))
    assert s.batch(window(0, T0, version=4, offered=9)) == MergeOutput()
    assert s.table[wkey(T0)]["parts"]["0"]["agg"]["counts"] == {"offered": 2}
    again = s.batch(window(0, T0, version=5, offered=2))  # a re-delivery: same record again
    assert [p.key for p in again.puts] == [wkey(T0)]
    assert records(again, KPI_WINDOWS)["1m|2026-01-05T08:00:00.000Z|billing|voice"]["version"] == 5


def test_an_fcr_part_is_its_own_source_and_does_not_hold_final_back() -> None:
    s = Stage()
    s.batch(window(0, T0, version=2, final=True, offered=1))
    out = s.batch(window("fcr-0", T0, version=1, fcr_contacts=1))
    record = records(out, KPI_WINDOWS)["1m|2026-01-05T08:00:00.000Z|billing|voice"]
    assert (record["offered"], record["fcr_contacts"], record["final"], record["fcr_final"]) == (1, 1, True, False)
    assert set(s.table[wkey(T0)]["parts"]) == {"0", "fcr-0"}


def test_a_bad_partial_fails_alone_and_leaves_no_trace() -> None:
    s = Stage()
    no_version = {"kind": "window", "key": [60, T0, QUEUE, "billing", "voice"], "end": T0 + MIN, "partition": 1}
    bad_agg = {**window(2, T0, version=1), "agg": {"counts": {"offered": "many"}, "tops": {}}}
    bad = [{"kind": "window"}, ["not", "an", "object"], no_version, bad_agg,
           {**live(1, version=1), "agents": 7}, {**live(2, version=1), "waiting": None}]
    # Each would have crashed the publish after the batch (and the agent with it) had it been stored.
    good = [consumed(0, window(0, T0, version=1, offered=1), "ok")]
    out = s.stage.on_batch([consumed(0, p, f"b{i}") for i, p in enumerate(bad)] + good,
                           generation=GEN, now_ms=NOW, mono=0.0)
    assert [f.message for f in out.failures] == [f"b{i}" for i in range(len(bad))]
    assert all(isinstance(f.error, Exception) for f in out.failures)
    assert list(s.table) == [wkey(T0)] and s.table[wkey(T0)]["parts"]["0"]["version"] == 1
    assert len(records(out, KPI_WINDOWS)) == 1


# -- agents: throttled while open --------------------------------------------------------


def test_an_open_agent_window_is_published_at_most_every_few_seconds_and_its_final_at_once() -> None:
    s = Stage()
    key = "1m|2026-01-05T08:00:00.000Z|ag-1|voice"
    first = s.batch(window(0, T0, version=1, scope="a", name="ag-1", handled=1))
    assert records(first, KPI_AGENTS)[key]["handled"] == 1
    assert records(first, KPI_WINDOWS) == {}
    s.mono += 1
    assert records(s.batch(window(0, T0, version=2, scope="a", name="ag-1", handled=2)), KPI_AGENTS) == {}
    assert records(s.tick(), KPI_AGENTS) == {}  # still owed
    s.mono += AGENT_WINDOW_SECONDS
    owed = s.tick()
    assert records(owed, KPI_AGENTS)[key]["handled"] == 2
    assert records(s.tick(), KPI_AGENTS) == {}  # paid
    s.mono += 1
    final = s.batch(window(0, T0, version=3, final=True, scope="a", name="ag-1", handled=3))
    assert records(final, KPI_AGENTS)[key]["final"] is True
    assert [p.key for p in final.puts] == [wkey(T0, scope="a", name="ag-1")]


def test_owed_agent_windows_go_out_in_key_order_with_the_fresh_ones_and_then_at_once_again() -> None:
    s = Stage()
    ag = {n: f"1m|2026-01-05T08:00:00.000Z|{n}|voice" for n in ("ag-0", "ag-1", "ag-2")}
    s.batch(window(0, T0, version=1, scope="a", name="ag-1", handled=1),
            window(0, T0, version=1, scope="a", name="ag-2", handled=1))
    s.mono += 1
    s.batch(window(0, T0, version=2, scope="a", name="ag-2", handled=2))  # owed
    s.mono += AGENT_WINDOW_SECONDS
    out = s.batch(window(0, T0, version=1, scope="a", name="ag-0", handled=1))
    assert [p.key.decode() for p in out.records] == [ag["ag-0"], ag["ag-2"]]  # ag-1 owes nothing
    s.mono += AGENT_WINDOW_SECONDS
    again = s.batch(window(0, T0, version=2, scope="a", name="ag-1", handled=2))
    assert [p.key.decode() for p in again.records] == [ag["ag-1"]]  # its wait was over long ago


# -- queue state ---------------------------------------------------------------------------


def test_queue_state_sums_the_live_parts_and_the_last_15_one_minute_windows() -> None:
    s = Stage()
    as_of = T0 + 20 * MIN
    s.batch(*[window(0, T0 + m * MIN, version=1, offered=1) for m in range(20)],  # 08:00 .. 08:19
            window(0, T0 + 4 * MIN, version=1, size=300, offered=50))  # a 5m window: not in the rolling sum
    out = s.batch(live(0, version=7, waiting={as_of - 30_000: 1}, busy=("ag-1",), watermark=as_of),
                  live(1, version=3, waiting={as_of - 10_000: 2}, busy=("ag-1", "ag-2"), watermark=as_of - MIN))
    state = records(out, KPI_QUEUE_STATE)["billing|voice"]
    assert (state["waiting"], state["longest_wait_seconds"], state["agents_busy"]) == (3, 30.0, 2)
    assert state["as_of"] == "2026-01-05T08:20:00.000Z"
    assert state["last_15m"]["offered"] == 15  # 08:05 .. 08:19 end after 08:05
    assert s.table["live|billing|voice"]["kind"] == "live"
    assert records(out, KPI_WINDOWS) == {}


def test_a_changed_one_minute_queue_window_refreshes_its_queue_state() -> None:
    s = Stage()
    out = s.batch(window(0, T0, version=1, offered=1, watermark=T0 + MIN))
    assert records(out, KPI_QUEUE_STATE)["billing|voice"]["last_15m"]["offered"] == 1
    five = s.batch(window(0, T0, version=1, size=300, offered=1))
    assert records(five, KPI_QUEUE_STATE) == {}


def test_the_tick_refreshes_queues_with_contacts_waiting_only() -> None:
    s = Stage()
    s.batch(live(0, version=1, waiting={T0 - 5000: 1}, queue="billing"), live(0, version=1, queue="sales"))
    s.now_ms += 1000
    out = s.tick()
    assert list(records(out, KPI_QUEUE_STATE)) == ["billing|voice"]
    assert out.puts == [] and out.deletes == []


# -- expiry ----------------------------------------------------------------------------------


def test_a_final_window_is_forgotten_once_every_source_is_past_it_and_a_late_copy_is_counted() -> None:
    metrics = PipelineMetrics(dict)
    s = Stage(partitions=1, metrics=metrics)
    s.batch(window(0, T0, version=2, final=True, offered=1), window(0, T0 + MIN, version=1, offered=1),
            partition=0)
    later = T0 + 3 * 86400 * 1000  # past end + FCR horizon + lateness + retention
    s.batch(clock("0", later))
    assert s.tick().deletes == []  # fcr-0 has not reported: nothing is forgotten
    s.batch(clock("fcr-0", later))
    assert s.tick().deletes == []  # agents-0 has not reported either
    s.batch(clock("agents-0", later))
    out = s.tick()
    assert out.deletes == [TableDelete(0, wkey(T0))]  # the open one stays
    assert list(s.table) == [wkey(T0 + MIN)]
    again = s.batch(window(0, T0, version=2, final=True, offered=1))
    assert again == MergeOutput() and wkey(T0) not in s.table
    assert metrics.registry.get_sample_value("ccpulse_merge_redelivered_parts_total") == 1


# -- recovery ----------------------------------------------------------------------------------


def test_a_new_consumer_generation_rebuilds_the_index_and_publishes_every_entry_again() -> None:
    s = Stage()
    s.batch(window(0, T0, version=1, offered=1), live(0, version=1))
    # What recovery wrote behind the stage's back: another owner's entry.
    other = Stage()
    other.batch(window(1, T0 + MIN, version=4, offered=2))
    s.table.update(other.table)
    assert records(s.tick(), KPI_WINDOWS) == {}
    s.generation = GEN + 1
    out = s.tick()
    assert set(records(out, KPI_WINDOWS)) == {"1m|2026-01-05T08:00:00.000Z|billing|voice",
                                              "1m|2026-01-05T08:01:00.000Z|billing|voice"}
    assert "billing|voice" in records(out, KPI_QUEUE_STATE)
    assert records(s.tick(), KPI_WINDOWS) == {}


def test_records_are_json_and_keys_are_the_record_keys() -> None:
    s = Stage()
    out = s.batch(window(0, T0, version=1, offered=1), live(0, version=1))
    assert [(p.topic, p.key) for p in out.records] == [
        (KPI_WINDOWS, b"1m|2026-01-05T08:00:00.000Z|billing|voice"), (KPI_QUEUE_STATE, b"billing|voice")]
    for p in out.records:
        assert json.loads(orjson.dumps(p.value)) == p.value


@pytest.mark.parametrize("partial", [clock("0", T0), clock("nobody", T0)])
def test_clocks_are_not_entries(partial: dict[str, Any]) -> None:
    s = Stage()
    assert s.batch(partial) == MergeOutput() and s.table == {}


def test_a_batch_too_soon_after_a_publish_keeps_its_keys_for_the_flush() -> None:
    from streams.stages.merge import PUBLISH_SECONDS

    s = Stage()
    first = s.batch(window(0, T0, version=3, offered=2), publish=s.stage.publish_due(s.mono))
    assert KPI_WINDOWS in {r.topic for r in first.records}
    s.mono += PUBLISH_SECONDS / 5
    assert not s.stage.publish_due(s.mono)
    soon = s.batch(window(1, T0, version=5, offered=1), publish=s.stage.publish_due(s.mono))
    assert soon.puts and not soon.records  # merged and written to the table, not yet published
    s.mono += PUBLISH_SECONDS
    flushed = s.stage.on_flush(generation=s.generation, now_ms=s.now_ms, mono=s.mono)
    record = records(flushed, KPI_WINDOWS)["1m|2026-01-05T08:00:00.000Z|billing|voice"]
    assert record["offered"] == 3  # both sources, in one record
    assert s.stage.on_flush(generation=s.generation, now_ms=s.now_ms, mono=s.mono + 1).records == []
