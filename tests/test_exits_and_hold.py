"""Flow-outs, callback requests and hold (issue 16, contact side): validation, the core,
the records and the sinks. Expected figures are worked out by hand from the timestamps
and METRICS.md ("Agents and staffing"), not from ccpulse code.
"""

from __future__ import annotations

import calendar
import itertools
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from ccpulse.config import DEFAULT_THRESHOLDS, Settings
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.kpis import AGENT, QUEUE, WindowAgg, kpi_figures
from ccpulse.core.lifecycle import Interaction, Step
from ccpulse.core.windowing import Windowing
from schemas import records
from schemas.events import REASONS, Event, Rejection, decode
from schemas.json_schemas import load

S = 1000
MIN = 60 * S
T0 = calendar.timegm((2026, 11, 22, 9, 0, 0)) * 1000  # 09:00:00 UTC
NOW = T0 + 10 * MIN
VOICE = DEFAULT_THRESHOLDS["voice"]


# -- validation ---------------------------------------------------------------------


def doc(etype: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_id": "e-1", "type": etype, "occurred_at": "2026-11-22T09:00:30.000Z",
                           "interaction_id": "i-1"}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def run(d: dict[str, Any], family: str = "call") -> Event | Rejection:
    return decode(orjson.dumps(d), family, NOW)


@pytest.mark.parametrize("etype, family, step", [
    ("call.flowed_out", "call", "flowed_out"), ("chat.flowed_out", "chat", "flowed_out"),
    ("call.callback_requested", "call", "callback_requested"),
    ("chat.callback_requested", "chat", "callback_requested"),
    ("call.held", "call", "held"), ("call.resumed", "call", "resumed"),
])
def test_the_new_contact_types_decode(etype: str, family: str, step: str) -> None:
    extra = {"reason": "timeout"} if step == "flowed_out" else {}
    ev = run(doc(etype, **extra), family)
    assert isinstance(ev, Event), ev
    assert ev.step == step
    assert ev.details == extra


def test_a_flow_out_keeps_its_reason_and_target_queue() -> None:
    ev = run(doc("call.flowed_out", reason="overflow", to_queue="billing-2"))
    assert isinstance(ev, Event) and ev.details == {"reason": "overflow", "to_queue": "billing-2"}


@pytest.mark.parametrize("fields, reason", [
    ({}, "missing_field"),
    ({"reason": None}, "missing_field"),
    ({"reason": ""}, "missing_field"),
    ({"reason": 7}, "wrong_type"),
    ({"reason": ["timeout"]}, "wrong_type"),
    ({"reason": "x" * 65}, "invalid_value"),
    ({"reason": "time|out"}, "invalid_value"),
    ({"reason": "time\u200bout"}, "invalid_value"),
    ({"reason": "timeout", "to_queue": ""}, "invalid_value"),
    ({"reason": "timeout", "to_queue": 3}, "wrong_type"),
    ({"reason": "timeout", "to_queue": "a|b"}, "invalid_value"),
])
def test_a_bad_flow_out_is_dead_lettered_with_an_existing_reason(fields: dict[str, Any], reason: str) -> None:
    result = run(doc("call.flowed_out", **fields))
    assert isinstance(result, Rejection), result
    assert result.reason == reason and result.reason in REASONS and result.detail


def test_a_reason_of_64_characters_is_accepted() -> None:
    assert isinstance(run(doc("chat.flowed_out", reason="r" * 64), "chat"), Event)


@pytest.mark.parametrize("etype, family", [
    ("chat.held", "chat"), ("chat.resumed", "chat"), ("ticket.flowed_out", "ticket"),
    ("ticket.callback_requested", "ticket"), ("ticket.held", "ticket"),
])
def test_hold_is_for_calls_and_flow_outs_for_calls_and_chats(etype: str, family: str) -> None:
    result = run(doc(etype, reason="timeout"), family)
    assert isinstance(result, Rejection) and result.reason == "unknown_type", result


def test_a_call_event_on_the_chats_topic_is_refused() -> None:
    result = run(doc("call.held"), "chat")
    assert isinstance(result, Rejection) and result.reason == "wrong_topic"


def test_a_forwarded_flow_out_keeps_its_reason_on_the_step() -> None:
    raw = orjson.dumps(doc("call.flowed_out", reason="no_agents", queue="billing"))
    ev = decode(raw, "call", NOW)
    assert isinstance(ev, Event)
    step = records.step_from_message(orjson.loads(orjson.dumps(records.event_message(ev, raw, "calls", 0, 1))))
    assert (step.step, step.reason, step.to_queue) == ("flowed_out", "no_agents", None)


# -- the core -----------------------------------------------------------------------


def offered(ts: int, eid: str, queue: str = "billing") -> Step:
    return Step(ts, "offered", eid, queue)


def answered(ts: int, eid: str, agent: str = "a-1") -> Step:
    return Step(ts, "answered", eid, agent=agent)


def step(kind: str, ts: int, eid: str, **kw: Any) -> Step:
    return Step(ts, kind, eid, **kw)


def engine(sizes: tuple[int, ...] = (60,)) -> PartitionEngine:
    return PartitionEngine(0, Windowing(sizes), 600, lambda q, c: VOICE, 86400)


def feed(steps: list[Step], sizes: tuple[int, ...] = (60,), channel: str = "voice",
         order: list[int] | None = None) -> tuple[PartitionEngine, dict[str, Interaction]]:
    """Apply ``steps`` (each ``(iid, Step)`` via the event id prefix) in ``order``."""
    eng = engine(sizes)
    inters: dict[str, Interaction] = {}
    for offset, i in enumerate(order if order is not None else range(len(steps))):
        s = steps[i]
        iid = s.event_id.split("-")[0]
        inter = inters.setdefault(iid, Interaction(iid, channel, partition=0))
        eng.apply(inter, s, offset)
    return eng, inters


def counts(eng: PartitionEngine, start: int, size: int = 60, scope: str = QUEUE, name: str = "billing",
           channel: str = "voice") -> dict[str, int]:
    agg = eng.windows.get((size, start, scope, name, channel))
    return {k: v for k, v in (agg.counts if agg else {}).items() if v}


def waiting(eng: PartitionEngine) -> dict[int, tuple[int, int]]:
    snaps = eng.take_dirty()
    return {s.key[1]: (s.waiting_at_start, s.waiting_at_end) for s in snaps if s.key[2] == QUEUE
            and s.key[3] == "billing" and s.key[0] == 60}


def test_a_flow_out_is_a_queue_exit_counted_in_the_window_of_the_exit() -> None:
    eng, inters = feed([offered(T0 + 30 * S, "A-1"),
                        step("flowed_out", T0 + 70 * S, "A-2", reason="timeout")])
    assert counts(eng, T0) == {"offered": 1}
    assert counts(eng, T0 + MIN) == {"flowed_out": 1}
    # Neither answered nor abandoned: no wait sums, no service-level denominator.
    assert waiting(eng) == {T0: (0, 1), T0 + MIN: (1, 0)}
    assert not eng.live.get(("billing", "voice"), None) or not eng.live[("billing", "voice")].waiting
    [seg] = inters["A"].derive().segments
    assert (seg.exit, seg.left, seg.reason) == ("flowed_out", T0 + 70 * S, "timeout")
    assert inters["A"].derive().ended


def test_a_callback_request_is_a_queue_exit_and_ends_the_wait() -> None:
    eng, inters = feed([offered(T0 + 10 * S, "A-1"), offered(T0 + 20 * S, "B-1"),
                        step("callback_requested", T0 + 50 * S, "A-2")])
    assert counts(eng, T0) == {"offered": 2, "callbacks_requested": 1}
    assert waiting(eng) == {T0: (0, 1)}
    live = eng.live[("billing", "voice")]
    assert dict(live.waiting) == {T0 + 20 * S: 1}  # only B still waits
    assert inters["A"].derive().segments[0].exit == "callback_requested"


def test_a_flow_out_to_a_queue_is_a_transfer_there() -> None:
    eng, inters = feed([offered(T0 + 10 * S, "A-1"),
                        step("flowed_out", T0 + 40 * S, "A-2", reason="overflow", to_queue="spill")])
    assert counts(eng, T0) == {"offered": 1, "transferred_out": 1}
    assert counts(eng, T0, name="spill") == {"offered": 1}
    segs = inters["A"].derive().segments
    assert [(s.queue, s.exit, s.reason) for s in segs] == [("billing", "transferred", "overflow"),
                                                           ("spill", None, None)]


def test_exits_and_hold_outside_their_state_are_orphans_and_count_nothing() -> None:
    eng, inters = feed([offered(T0, "A-1"), answered(T0 + 5 * S, "A-2"),
                        step("flowed_out", T0 + 10 * S, "A-3", reason="timeout"),
                        step("callback_requested", T0 + 11 * S, "A-4"),
                        step("resumed", T0 + 12 * S, "A-5"),
                        offered(T0, "B-1"), step("held", T0 + 3 * S, "B-2"),
                        step("flowed_out", T0 + 5 * S, "C-1", reason="timeout")])
    assert counts(eng, T0) == {"offered": 2, "answered": 1, "answered_within_target": 1,
                               "wait_answered_ms": 5000, "wait_bucket_1": 1,
                               f"wait_sk:{_bucket(5000)}": 1}
    assert inters["A"].derive().orphan_steps == 3
    assert inters["B"].derive().orphan_steps == 1
    assert inters["C"].derive().orphan_steps == 1


def _bucket(ms: int) -> int:
    from ccpulse.core import sketch
    return sketch.bucket_of(ms)


HOLD_STEPS = [
    offered(T0, "A-1"), answered(T0 + 5 * S, "A-2", "a-7"),
    step("held", T0 + 10 * S, "A-3"), step("resumed", T0 + 30 * S, "A-4"),   # 20 s, ends in 09:00
    step("held", T0 + 50 * S, "A-5"), step("ended", T0 + 75 * S, "A-6"),    # 25 s, ended while held: 09:01
]


def test_hold_counts_per_segment_in_the_window_in_which_each_hold_ended() -> None:
    eng, inters = feed(HOLD_STEPS, sizes=(60, 900))
    first, second = counts(eng, T0), counts(eng, T0 + MIN)
    assert (first.get("held"), first.get("hold_ms")) == (1, 20_000)
    assert (second.get("held"), second.get("hold_ms")) == (None, 25_000)
    quarter = counts(eng, T0, 900)
    assert (quarter["held"], quarter["hold_ms"], quarter["handled"]) == (1, 45_000, 1)
    agent = counts(eng, T0, 900, AGENT, "a-7")
    assert (agent["held"], agent["hold_ms"]) == (1, 45_000)
    [seg] = inters["A"].derive().segments
    assert seg.hold_ms == 45_000 and len(seg.holds) == 2 and seg.hold_from is None
    # Handle time still runs from answer to end: hold is part of it.
    assert seg.handle_ms == 70_000


def test_an_open_hold_counts_nothing_until_it_ends() -> None:
    eng, _ = feed(HOLD_STEPS[:5])
    assert counts(eng, T0 + MIN) == {}
    assert counts(eng, T0).get("hold_ms") == 20_000


def test_a_transfer_to_a_queue_ends_the_hold_of_the_segment_it_leaves() -> None:
    eng, inters = feed([offered(T0, "A-1"), answered(T0 + 5 * S, "A-2"), step("held", T0 + 10 * S, "A-3"),
                        step("transferred", T0 + 40 * S, "A-4", to_queue="spill"),
                        answered(T0 + 50 * S, "A-5", "a-2"), step("held", T0 + 52 * S, "A-6"),
                        step("resumed", T0 + 55 * S, "A-7")])
    assert (counts(eng, T0)["held"], counts(eng, T0)["hold_ms"]) == (1, 30_000)
    assert (counts(eng, T0, name="spill")["held"], counts(eng, T0, name="spill")["hold_ms"]) == (1, 3_000)


MIXED = [
    offered(T0 + 5 * S, "A-1"), step("flowed_out", T0 + 65 * S, "A-2", reason="timeout"),
    offered(T0 + 20 * S, "B-1"), step("callback_requested", T0 + 59 * S, "B-2"),
    offered(T0 + 25 * S, "C-1"), answered(T0 + 30 * S, "C-2"), step("held", T0 + 40 * S, "C-3"),
    step("resumed", T0 + 62 * S, "C-4"), step("held", T0 + 90 * S, "C-5"), step("resumed", T0 + 95 * S, "C-6"),
    step("ended", T0 + 130 * S, "C-7"),
    offered(T0 + 50 * S, "D-1"), step("flowed_out", T0 + 55 * S, "D-2", reason="overflow", to_queue="spill"),
]


def _state(eng: PartitionEngine) -> dict[tuple, tuple]:
    return {k: ({n: v for n, v in a.counts.items() if v}, {n: list(v) for n, v in a.tops.items() if v})
            for k, a in eng.windows.items() if not a.is_empty()}


def test_any_order_and_duplicates_give_the_in_order_result() -> None:
    want = _state(feed(MIXED, sizes=(60, 900))[0])
    assert want[(60, T0 + MIN, QUEUE, "billing", "voice")][0] == {"flowed_out": 1, "held": 1, "hold_ms": 27_000}
    interactions = {s.event_id[0] for s in MIXED}
    for iid in interactions:  # every order of one interaction's steps, the rest in order
        own = [i for i, s in enumerate(MIXED) if s.event_id[0] == iid]
        others = [i for i in range(len(MIXED)) if i not in own]
        for perm in itertools.islice(itertools.permutations(own), 720):
            order = others + list(perm) + [perm[0], perm[-1]]  # and two re-sent duplicates
            assert _state(feed(MIXED, sizes=(60, 900), order=order)[0]) == want, (iid, perm)


def test_the_reconciliation_identity_holds_with_flow_outs_and_callbacks() -> None:
    eng, _ = feed(MIXED)
    for snap in eng.take_dirty():
        if snap.key[2] != QUEUE:
            continue
        c = snap.agg.counts
        assert (snap.waiting_at_start + c.get("offered", 0)
                == c.get("answered", 0) + c.get("abandoned", 0) + c.get("short_abandoned", 0)
                + c.get("transferred_out", 0) + c.get("flowed_out", 0) + c.get("callbacks_requested", 0)
                + snap.waiting_at_end), snap


def test_windows_closed_with_flow_outs_carry_the_backlog_on() -> None:
    eng, _ = feed([offered(T0 + 30 * S, "A-1"), step("callback_requested", T0 + 70 * S, "A-2"),
                   offered(T0 + 20 * MIN, "Z-1")])
    eng.advance(T0 + 20 * MIN)
    eng.close()
    assert eng.record.backlog["60|billing|voice"] == 0


def test_the_changelog_record_round_trips_the_new_steps() -> None:
    _, inters = feed(MIXED)
    for inter in inters.values():
        again = Interaction.from_bytes(inter.to_bytes())
        assert again.steps == inter.steps
        assert again.derive() == inter.derive()
        assert Interaction.from_dict(orjson.loads(orjson.dumps(inter.to_dict()))).derive() == inter.derive()


# -- the records --------------------------------------------------------------------


def agg_of(**c: int) -> WindowAgg:
    agg = WindowAgg()
    agg.counts.update(c)
    return agg


def test_the_figures_carry_the_new_counters_and_the_average_hold() -> None:
    figs = kpi_figures(agg_of(offered=4, flowed_out=1, callbacks_requested=2, held=2, hold_ms=45_500), VOICE)
    assert (figs["flowed_out"], figs["callbacks_requested"], figs["held"]) == (1, 2, 2)
    assert figs["hold_seconds"] == 45.5 and figs["avg_hold_seconds"] == 22.75
    empty = kpi_figures(agg_of(offered=1), VOICE)
    assert (empty["held"], empty["hold_seconds"], empty["avg_hold_seconds"]) == (0, 0.0, None)
    # Flow-outs and callbacks are not in the abandonment or service-level denominators.
    assert kpi_figures(agg_of(answered=1, answered_within_target=1, flowed_out=3), VOICE)["service_level"] == 1.0


def _record(scope: str) -> dict[str, Any]:
    name = "billing" if scope == QUEUE else "a-7"
    return records.window_record((900, T0, scope, name, "voice"), T0 + 900_000,
                                 agg_of(offered=3, answered=1, flowed_out=1, callbacks_requested=1, held=1,
                                        hold_ms=30_000),
                                 Settings().thresholds_for(name, "voice"), version=5, final=True, now_ms=T0)


NEW_FIGURES = ("flowed_out", "callbacks_requested", "held", "hold_seconds", "avg_hold_seconds")


@pytest.mark.parametrize("scope, schema", [(QUEUE, "kpi-window"), (AGENT, "agent-window")])
def test_window_records_carry_the_new_figures_and_match_their_schema(scope: str, schema: str) -> None:
    record = _record(scope)
    assert (record["held"], record["hold_seconds"], record["avg_hold_seconds"]) == (1, 30.0, 30.0)
    if scope == QUEUE:
        assert (record["flowed_out"], record["callbacks_requested"]) == (1, 1)
    errors = [e.message for e in Draft202012Validator(load(schema)).iter_errors(record)]
    assert not errors


@pytest.mark.parametrize("scope, schema", [(QUEUE, "kpi-window"), (AGENT, "agent-window")])
def test_a_window_without_exits_or_hold_publishes_them_as_0_and_null(scope: str, schema: str) -> None:
    """Every record has every field; ``ccpulse same-day`` accepts a field the old code lacks
    only while it is 0 or null. (The schema does not require them: records published
    before them may still sit on the compacted topics.)"""
    name = "billing" if scope == QUEUE else "a-7"
    record = records.window_record((900, T0, scope, name, "voice"), T0 + 900_000,
                                   agg_of(offered=3, answered=2, handled=1, handle_ms=60_000, transfers=1),
                                   Settings().thresholds_for(name, "voice"), version=5, final=True, now_ms=T0)
    # (and the time-in-state figures, tests/test_merge_agents.py)
    from ccpulse.core.agents import state_figures
    assert set(record) == set(load(schema)["required"]) | set(NEW_FIGURES if scope == QUEUE else NEW_FIGURES[2:]) \
        | set(state_figures({}))
    assert (record["held"], record["hold_seconds"], record["avg_hold_seconds"]) == (0, 0.0, None)
    if scope == QUEUE:
        assert (record["flowed_out"], record["callbacks_requested"]) == (0, 0)
    assert record["queue" if scope == QUEUE else "agent_id"] == name
    # One hold ending in the window (its first ended before) brings every new figure in.
    again = records.window_record((900, T0, scope, name, "voice"), T0 + 900_000, agg_of(offered=1, hold_ms=5_000),
                                  Settings().thresholds_for(name, "voice"), version=5, final=True, now_ms=T0)
    assert (again["held"], again["hold_seconds"], again["avg_hold_seconds"]) == (0, 5.0, None)


def test_the_schema_of_kpi_windows_requires_nothing_old_records_lack() -> None:
    old = _record(QUEUE)
    for name in NEW_FIGURES:
        del old[name]
    assert not list(Draft202012Validator(load("kpi-window")).iter_errors(old))


def test_interaction_rows_carry_the_exit_outcome_its_reason_and_the_hold() -> None:
    _, inters = feed(MIXED)
    rows = {r["interaction_id"]: r for i in inters.values() for r in records.interaction_rows(i, 1)
            if r["segment"] == 0}
    assert (rows["A"]["outcome"], rows["A"]["exit_reason"], rows["A"]["wait_ms"]) == ("flowed_out", "timeout", 60_000)
    assert (rows["B"]["outcome"], rows["B"]["exit_reason"]) == ("callback_requested", None)
    assert (rows["C"]["hold_ms"], rows["C"]["holds"]) == (27_000, 2)
    assert (rows["D"]["outcome"], rows["D"]["exit_reason"]) == ("transferred", "overflow")
    assert rows["A"]["hold_ms"] == 0 and rows["A"]["holds"] == 0


# -- ClickHouse ---------------------------------------------------------------------

NEW_COLUMNS = {
    "kpi_windows": {"flowed_out", "callbacks_requested", "held", "hold_seconds", "avg_hold_seconds"},
    "agent_windows": {"held", "hold_seconds", "avg_hold_seconds"},
    "interactions": {"exit_reason", "holds", "hold_ms"},
}


def _columns(client: Any, table: str) -> set[str]:
    return {row[0] for row in client.query(f"DESCRIBE TABLE {table}").result_rows}


def test_a_store_created_before_the_new_columns_gets_them_and_stores_them(tmp_path: Any) -> None:
    from sinks.clickhouse import ClickHouseWriter, connect, ddl_statements
    dsn = f"chdb://{tmp_path / 'store'}"
    # The store as the code before issue 16 left it: its CREATE statements only.
    client = connect(dsn)
    for statement in ddl_statements():
        if "CREATE TABLE" in statement and "ALTER TABLE" not in statement:
            client.command(statement)
    for table, new in NEW_COLUMNS.items():
        assert not new & _columns(client, table), table
    client.close()
    with ClickHouseWriter(dsn) as writer:
        for table, new in NEW_COLUMNS.items():
            assert new <= _columns(writer.client, table), table
        day = records.window_record((86400, T0 - 9 * 3600 * S, QUEUE, "billing", "voice"), T0 + 15 * 3600 * S,
                                    agg_of(offered=3, answered=1, flowed_out=1, callbacks_requested=1, held=2,
                                           hold_ms=50_000), VOICE, version=3, final=True, now_ms=T0)
        next_day = dict(day, window_start=records.format_ms(T0 + 15 * 3600 * S),
                        window_end=records.format_ms(T0 + 39 * 3600 * S), flowed_out=2, held=1, hold_seconds=10.0,
                        avg_hold_seconds=10.0)
        plain = records.window_record((86400, T0 - 9 * 3600 * S, QUEUE, "plain", "voice"), T0 + 15 * 3600 * S,
                                      agg_of(offered=1), VOICE, version=3, final=True, now_ms=T0)
        for name in NEW_FIGURES:  # as a record published before them, still on the compacted topic
            del plain[name]
        writer.insert_now("kpi_windows", [day, next_day, plain])
        writer.insert_now("agent_windows", [_record(AGENT)])
        _, inters = feed(MIXED)
        writer.insert_now("interactions", [r for i in inters.values() for r in records.interaction_rows(i, 1)])
        c = writer.client
        assert c.query("SELECT flowed_out, callbacks_requested, held, hold_seconds, avg_hold_seconds "
                       "FROM kpi_windows FINAL WHERE queue = 'billing' ORDER BY window_start").result_rows == [
            (1, 1, 2, 50.0, 25.0), (2, 1, 1, 10.0, 10.0)]
        # A record without them (published before them) stores 0, and null for the average.
        assert c.query("SELECT flowed_out, callbacks_requested, held, hold_seconds, avg_hold_seconds, offered "
                       "FROM kpi_windows FINAL WHERE queue = 'plain'").result_rows == [(0, 0, 0, 0.0, None, 1)]
        assert c.query("SELECT held, hold_seconds FROM agent_windows FINAL").result_rows == [(1, 30.0)]
        assert dict(c.query("SELECT interaction_id, (outcome, exit_reason, holds, hold_ms) FROM interactions FINAL "
                            "WHERE segment = 0").result_rows) == {
            "A": ("flowed_out", "timeout", 0, 0), "B": ("callback_requested", None, 0, 0),
            "C": ("answered", None, 2, 27_000), "D": ("transferred", "overflow", 0, 0)}
        # The monthly rollup sums the counters and recomputes the average hold from them (the
        # two days are a Sunday and a Monday: two weeks).
        month = c.query("SELECT flowed_out, callbacks_requested, held, hold_seconds, avg_hold_seconds, days "
                        "FROM kpi_monthly WHERE queue = 'billing'").result_rows
        assert month == [(3, 2, 3, 60.0, 20.0, 2)]
        assert c.query("SELECT count() FROM kpi_weekly WHERE queue = 'billing'").result_rows == [(2,)]
        daily = c.query("SELECT avg_hold_seconds FROM kpi_daily WHERE queue = 'billing' "
                        "ORDER BY period_start").result_rows
        assert daily == [(25.0,), (10.0,)]
    # Opening it again changes nothing (the migration runs at every start).
    with ClickHouseWriter(dsn) as writer:
        assert writer.client.query("SELECT count() FROM kpi_windows FINAL").result_rows == [(3,)]


# -- Prometheus ---------------------------------------------------------------------


def test_prometheus_counts_flow_outs_callbacks_and_hold_like_the_other_queue_counters() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from sinks.prometheus import KpiCollector
    eng, _ = feed(MIXED)
    registry = CollectorRegistry()
    registry.register(KpiCollector(lambda: {0: eng}))
    samples = {(s.name, s.labels.get("queue")): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("ccpulse_queue_flowed_out_total", "billing")] == 1
    assert samples[("ccpulse_queue_callbacks_requested_total", "billing")] == 1
    assert samples[("ccpulse_queue_held_total", "billing")] == 1
    assert samples[("ccpulse_queue_hold_time_seconds_total", "billing")] == 27.0
    assert samples[("ccpulse_queue_transferred_out_total", "billing")] == 1  # D's flow-out to "spill"
    assert samples[("ccpulse_queue_offered_total", "spill")] == 1
    assert samples[("ccpulse_queue_waiting", "billing")] == 0


def test_inserts_name_constant_default_columns_and_leave_computed_ones_to_the_store() -> None:
    from sinks.clickhouse import insert_columns
    described = [("a", "Int64", "", ""), ("flowed_out", "Int64", "DEFAULT", "0"),
                 ("hold_seconds", "Float64", "DEFAULT", "0."), ("x", "Float64", "DEFAULT", "-1.5"),
                 ("tag", "String", "DEFAULT", "'n/a'"), ("ingested_at", "DateTime64(3, 'UTC')", "DEFAULT", "now64(3)"),
                 ("m", "Int64", "MATERIALIZED", "a + 1"), ("al", "Int64", "ALIAS", "a")]
    assert insert_columns(described) == ["a", "flowed_out", "hold_seconds", "x", "tag"]
