"""The SLA, sla-windows and scorecard stages (streams/stages/sla.py) without Kafka: a dict
for the sla-state table, small objects for the consumed records."""

from __future__ import annotations

import json
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from ccpulse.config import Settings
from ccpulse.core.kpis import QUEUE, WindowAgg
from ccpulse.core.scorecard import ScorecardSettings, scorecard_key, scorecard_record
from ccpulse.core.sla import Hold, QueueSla, SlaTargets
from ccpulse.core.timestamps import format_ms
from schemas.events import parse_timestamp_ms
from schemas.records import window_record
from streams.stages.io import Consumed
from streams.stages.sla import ScorecardStage, SlaCollector, SlaStage, SlaWindowsStage

T0 = parse_timestamp_ms("2026-01-05T08:00:00Z")
NOW = T0 + 3_600_000
HOLD_S = 60
TARGETS = SlaTargets(hold=Hold(HOLD_S, HOLD_S))


def state(queue: str, seconds: float, service_level: float | None, *, channel: str = "voice",
          published: int = 0, wait: float | None = 0.0) -> dict[str, Any]:
    """A kpi.queue-state record ``seconds`` after T0."""
    at = T0 + round(seconds * 1000)
    return {"queue": queue, "channel": channel, "as_of": format_ms(at),
            "published_at": format_ms(at + published),
            "last_15m": {"service_level": service_level, "abandonment_rate": 0.0, "asa_seconds": 5.0},
            "longest_wait_seconds": wait}


def rec(value: Any, partition: int = 0, offset: int = 0) -> Consumed:
    return Consumed("kpi.queue-state", partition, offset, value, message=("msg", partition, offset))


def make(owned: set[int] | None = None, entries: dict[str, Any] | None = None) -> tuple[SlaStage, dict[str, Any]]:
    table: dict[str, Any] = {} if entries is None else entries
    return SlaStage(TARGETS, table, lambda: owned if owned is not None else {0, 1}), table


def values(messages: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in messages]


# --- sla -------------------------------------------------------------------------------------

def test_a_violation_held_for_the_hold_down_opens_one_breach_before_its_state() -> None:
    stage, table = make()
    out = stage.on_batch([rec(state("billing", 0, 0.1))], NOW)
    assert out.breaches == [] and out.failures == []
    assert [(p.partition, p.key) for p in out.puts] == [(0, "billing|voice")]
    assert table["billing|voice"]["p"] == 0
    assert table["billing|voice"]["detectors"]["service_level"]["status"] == "pending_violation"
    out = stage.on_batch([rec(state("billing", HOLD_S, 0.1, published=1))], NOW)
    [breach] = values(out.breaches)
    assert (breach["kpi"], breach["state"], breach["version"]) == ("service_level", "open", 1)
    assert breach["published_at"] == format_ms(NOW)
    assert out.breaches[0].key == breach["breach_id"].encode()
    assert out.newest == T0 + HOLD_S * 1000
    # The state that follows from the breach is put; the table holds it as the changelog does.
    assert out.puts[-1].value is table["billing|voice"]
    assert table["billing|voice"]["detectors"]["service_level"]["status"] == "breached"


def test_a_re_delivered_record_changes_nothing_after_a_restart() -> None:
    stage, table = make()
    records = [rec(state("billing", s, 0.1, published=i), offset=i) for i, s in enumerate((0, HOLD_S))]
    first = stage.on_batch(records, NOW)
    assert len(first.breaches) == 1
    # A new worker recovers the table (JSON, as the changelog holds it) and reads again.
    recovered = {k: json.loads(json.dumps(v)) for k, v in table.items()}
    again, _ = make(entries=recovered)
    out = again.on_batch(records, NOW)
    assert out.breaches == [] and out.failures == []


def test_records_without_a_queue_and_states_before_any_event_time_are_skipped() -> None:
    stage, table = make()
    out = stage.on_batch([rec("not a dict"), rec({"channel": "voice"}), rec({"queue": "q"}),
                          rec(state("billing", -T0 / 1000, 0.1))], NOW)  # as_of = the epoch
    assert (out.breaches, out.puts, out.failures, out.newest) == ([], [], [], 0)
    assert table == {}


def test_a_record_that_raises_costs_that_record_only() -> None:
    stage, table = make()
    bad = {**state("billing", 0, 0.1), "as_of": "yesterday"}
    out = stage.on_batch([rec(state("sales", 0, 0.9)), rec(bad, offset=1), rec(state("vip", 0, 0.1), offset=2)], NOW)
    assert [(f.message, type(f.error)) for f in out.failures] == [(("msg", 0, 1), ValueError)]
    assert "yesterday" in str(out.failures[0].error)
    assert sorted(table) == ["sales|voice", "vip|voice"]
    assert [p.key for p in out.puts] == ["sales|voice", "vip|voice"]


def test_a_window_observation_feeds_the_ticket_first_response_target() -> None:
    stage, table = make()
    obs = {"queue": "support", "channel": "email", "values": {"first_response_p90_seconds": 90_000.0},
           "source": "windows-1h"}
    out = stage.on_batch([rec({**obs, "at": T0, "seq": [T0, 1]}),
                          rec({**obs, "at": T0 + HOLD_S * 1000, "seq": [T0 + HOLD_S * 1000, 1]})], NOW)
    [breach] = values(out.breaches)
    assert (breach["kpi"], breach["queue"], breach["channel"]) == ("first_response_p90_seconds", "support", "email")
    # Observations carry no queue-state time: no tick follows them.
    assert out.newest == 0
    assert table["support|email"]["seqs"] == {"windows-1h": [T0 + HOLD_S * 1000, 1]}


def test_a_queue_that_went_quiet_completes_its_hold_down_on_event_time_from_another() -> None:
    stage, table = make(owned={0})
    stage.on_batch([rec(state("billing", 0, 0.1))], NOW)
    out = stage.on_batch([rec(state("sales", HOLD_S, 0.9))], NOW)
    [breach] = values(out.breaches)
    assert (breach["queue"], breach["state"], breach["as_of"]) == ("billing", "open", format_ms(T0 + HOLD_S * 1000))
    assert [p.key for p in out.puts] == ["sales|voice", "billing|voice"]
    # Breaches of the batch and of its tick go out before any state that follows from them.
    assert table["billing|voice"]["detectors"]["service_level"]["status"] == "breached"


def test_a_tick_that_moves_only_the_last_observation_time_writes_no_state() -> None:
    stage, _ = make(owned={0})
    stage.on_batch([rec(state("billing", 0, 0.9)), rec(state("sales", 0, 0.9))], NOW)
    out = stage.on_batch([rec(state("sales", 10, 0.9))], NOW)
    assert [p.key for p in out.puts] == ["sales|voice"]  # billing's tick changed only last_at


def test_the_tick_and_the_gauge_see_only_the_partitions_this_worker_owns() -> None:
    owned = {0}
    stage, table = make(owned=owned)
    stage.on_batch([rec(state("billing", 0, 0.1), partition=1)], NOW)
    out = stage.on_batch([rec(state("sales", HOLD_S, 0.9), partition=0)], NOW)
    assert out.breaches == []  # billing lives on partition 1: its owner ticks it
    assert [e["queue"] for e in stage.snapshot()] == ["sales"]
    owned.add(1)
    assert sorted(e["queue"] for e in stage.snapshot()) == ["billing", "sales"]
    table["gone|voice"] = None  # a tombstone recovered from the changelog
    assert len(stage.snapshot()) == 2


def test_an_entry_keeps_the_partition_it_was_first_stored_under() -> None:
    stage, table = make()
    stage.on_batch([rec(state("billing", 0, 0.9), partition=1)], NOW)
    out = stage.on_batch([rec(state("billing", 1, 0.9), partition=0)], NOW)
    assert [p.partition for p in out.puts] == [1] and table["billing|voice"]["p"] == 1


def test_the_breach_gauge_reads_the_owned_entries() -> None:
    stage, _ = make()
    stage.on_batch([rec(state("billing", s, 0.1, published=i)) for i, s in enumerate((0, HOLD_S))], NOW)
    registry = CollectorRegistry()
    registry.register(SlaCollector(stage.snapshot))
    text = generate_latest(registry).decode()
    assert 'ccpulse_sla_breach_open{channel="voice",kpi="service_level",queue="billing"} 1.0' in text
    assert 'ccpulse_sla_breach_open{channel="voice",kpi="asa_seconds",queue="billing"} 0.0' in text


def test_the_stored_state_is_the_queue_sla_with_its_partition() -> None:
    stage, table = make()
    stage.on_batch([rec(state("billing", 0, 0.1), partition=1)], NOW)
    entry = table["billing|voice"]
    assert entry == {"p": 1, **QueueSla.from_dict(entry).to_dict()}


# --- sla-windows -----------------------------------------------------------------------------

def window(channel: str = "email", size: int = 3600, final: bool = True, version: int = 3,
           queue: str = "support") -> dict[str, Any]:
    agg = WindowAgg()
    agg.counts.update(offered=2, answered=2, answered_within_target=2, handled=1, handle_ms=60_000)
    return window_record((size, T0, QUEUE, queue, channel), T0 + size * 1000, agg,
                         Settings().thresholds_for(queue, channel), version=version, final=final, now_ms=T0)


def test_final_hourly_ticket_windows_become_observations_keyed_by_queue() -> None:
    w = window()
    out = SlaWindowsStage().on_batch([rec(w), rec(window(channel="voice")), rec(window(final=False)),
                                      rec(window(size=900)), rec(["not", "a", "dict"])])
    assert out.failures == []
    m, fifteen = out.messages  # the 15-minute one carries occupancy (test below)
    assert orjson.loads(fifteen.value)["source"] == "windows-15m"
    assert m.key == b"support|email"
    end = T0 + 3_600_000
    assert orjson.loads(m.value) == {"queue": "support", "channel": "email",
                                     "values": {"first_response_p90_seconds": w["wait_answered_p90_seconds"]},
                                     "at": end, "seq": [end, 3], "source": "windows-1h"}


def test_a_window_the_observation_cannot_be_built_from_is_a_failure() -> None:
    bad = {**window(), "window_end": "later"}
    out = SlaWindowsStage().on_batch([rec(bad), rec(window(), offset=1)])
    assert [f.message for f in out.failures] == [("msg", 0, 0)]
    assert len(out.messages) == 1


# --- scorecards ------------------------------------------------------------------------------

def test_one_scorecard_per_final_long_enough_queue_window() -> None:
    cards = ScorecardSettings()
    w = window(channel="voice", size=900, queue="billing")
    out = ScorecardStage(cards).on_batch([rec(w), rec(window(channel="voice", size=60)),
                                          rec(window(final=False)), rec("x")], NOW)
    assert out.failures == []
    [m] = out.messages
    expected = scorecard_record(w, cards, NOW)
    assert (m.key, orjson.loads(m.value)) == (scorecard_key(expected).encode(), expected)


def test_a_window_the_scorecard_cannot_be_built_from_is_a_failure() -> None:
    bad = {k: v for k, v in window(size=900).items() if k != "window_start"}
    out = ScorecardStage(ScorecardSettings()).on_batch([rec(bad), rec(window(size=900), offset=1)], NOW)
    assert [(f.message, type(f.error)) for f in out.failures] == [(("msg", 0, 0), KeyError)]
    assert len(out.messages) == 1


# --- agents and staffing (issue 16) ----------------------------------------------------------

def test_a_queue_short_of_agents_for_the_hold_down_opens_one_breach_and_resolves() -> None:
    from ccpulse.core.sla import DEFAULT_TARGETS, MAX, Target

    hold = Hold(300, 60)  # "short of agents for 5 minutes"
    voice = {**DEFAULT_TARGETS["voice"], "agents_gap": Target("agents_gap", MAX, 0.0)}
    stage = SlaStage(SlaTargets({**DEFAULT_TARGETS, "voice": voice}, hold=hold), {}, lambda: {0})

    def short(seconds: float, gap: int | None, offset: int) -> Consumed:
        return rec({**state("billing", seconds, 0.9), "agents_gap": gap}, offset=offset)

    out = stage.on_batch([short(0, 2, 0), short(120, 1, 1), short(240, None, 2)], NOW)
    assert out.breaches == []  # a null (handle time unknown) breaks the run
    out = stage.on_batch([short(250, 2, 3), short(500, 1, 4)], NOW)
    assert out.breaches == []  # short for 250 s only
    out = stage.on_batch([short(550, 0, 5), short(560, 3, 6), short(860, 3, 7)], NOW)
    [breach] = values(out.breaches)
    assert (breach["kpi"], breach["state"], breach["observed"], breach["target"]) == (
        "agents_gap", "open", 3, {"op": "<=", "value": 0.0})
    assert breach["violating_since"] == format_ms(T0 + 560_000)
    out = stage.on_batch([short(870, -1, 8), short(930, 0, 9)], NOW)
    assert [(b["kpi"], b["state"]) for b in values(out.breaches)] == [("agents_gap", "resolved")]


def test_occupancy_from_final_15_minute_windows_opens_a_breach() -> None:
    from ccpulse.core.sla import DEFAULT_TARGETS, MAX, Target

    voice = {**DEFAULT_TARGETS["voice"], "occupancy": Target("occupancy", MAX, 0.85)}
    stage = SlaStage(SlaTargets({**DEFAULT_TARGETS, "voice": voice}, hold=Hold(HOLD_S, HOLD_S)), {}, lambda: {0})
    busy = [{**window(channel="voice", size=900, version=v), "occupancy": 0.95} for v in (1, 2)]
    busy[1] = {**busy[1], "window_start": format_ms(T0 + 900_000), "window_end": format_ms(T0 + 1_800_000)}
    sent = SlaWindowsStage().on_batch([rec(w, offset=i) for i, w in enumerate(busy)])
    assert [orjson.loads(m.value)["source"] for m in sent.messages] == ["windows-15m"] * 2
    assert [orjson.loads(m.value)["values"] for m in sent.messages] == [{"occupancy": 0.95}] * 2
    out = stage.on_batch([rec(orjson.loads(m.value), offset=i) for i, m in enumerate(sent.messages)], NOW)
    [breach] = values(out.breaches)
    assert (breach["kpi"], breach["queue"], breach["channel"], breach["observed"]) == (
        "occupancy", "support", "voice", 0.95)
