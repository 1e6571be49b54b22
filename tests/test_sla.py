"""SLA targets (config) and the breach detector (ccpulse/core/sla.py): unit and property tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ccpulse.config import ConfigError, load_settings
from ccpulse.core.sla import (
    DEFAULT_TARGETS, KPIS, MAX, MIN, Breach, Detector, Hold, QueueSla, SlaTargets, Target, breach_id,
    queue_state_values, window_values,
)
from schemas.json_schemas import load

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
SL = Target("service_level", MIN, 0.8, "critical")
WAIT = Target("longest_wait_seconds", MAX, 120.0)
HOLD = Hold(60, 60)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    import os
    for var in list(os.environ):
        if var.startswith("CCPULSE_"):
            monkeypatch.delenv(var)


def settings_from(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env={})


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- targets in the config ----------------------------------------------------------------

def test_default_targets_are_those_of_metrics_md() -> None:
    t = load_settings(env={}).targets
    for kind in ("voice", "chat"):
        got = {k: (v.op, v.value) for k, v in t.kinds[kind].items()}
        assert got == {"service_level": (">=", 0.8), "abandonment_rate": ("<=", 0.05),
                       "asa_seconds": ("<=", 30.0), "longest_wait_seconds": ("<=", 120.0)}
    assert {k: (v.op, v.value) for k, v in t.kinds["ticket"].items()} == \
        {"first_response_p90_seconds": ("<=", 86400.0)}
    assert t.hold == Hold(60.0, 60.0)
    assert t.for_queue("anything", "email") == t.kinds["ticket"]
    assert t == SlaTargets()


def test_targets_per_kind_and_per_queue(tmp_path: Path) -> None:
    s = settings_from(tmp_path, """
[targets.voice]
service_level = { min = 0.9 }
asa_seconds = { max = 20, severity = "critical" }
longest_wait_seconds = false

[targets.ticket]
first_response_p90_seconds = { max = 3600 }
service_level = { min = 0.5 }

[targets.hold]
open_seconds = 120
resolve_seconds = 30.5

[queues.billing.voice]
service_level_seconds = 10

[queues.billing.targets.voice]
service_level = { min = 0.95 }
abandonment_rate = false
longest_wait_seconds = { max = 60 }

[queues.vip.targets.chat]
asa_seconds = { max = 10 }
""")
    t = s.targets
    voice = t.for_queue("sales", "voice")
    assert voice["service_level"].value == 0.9 and voice["asa_seconds"].severity == "critical"
    assert "longest_wait_seconds" not in voice and voice["abandonment_rate"].value == 0.05
    billing = t.for_queue("billing", "voice")
    assert billing["service_level"].value == 0.95
    assert billing["asa_seconds"] == voice["asa_seconds"]  # inherited from [targets.voice]
    assert "abandonment_rate" not in billing and billing["longest_wait_seconds"].value == 60
    assert t.for_queue("billing", "chat") == DEFAULT_TARGETS["chat"]
    assert t.for_queue("vip", "chat")["asa_seconds"].value == 10
    assert t.for_queue("x", "web")["first_response_p90_seconds"].value == 3600
    assert t.for_queue("x", "web")["service_level"].value == 0.5
    assert t.hold == Hold(120.0, 30.5)
    # The existing per-queue thresholds keep working next to the targets.
    assert s.thresholds_for("billing", "voice").service_level_seconds == 10


@pytest.mark.parametrize("text,key", [
    ("[targets.fax]\nservice_level = { min = 0.8 }", "targets.fax"),
    ("[targets.voice]\nhandle_time = { max = 1 }", "targets.voice.handle_time"),
    ("[targets.voice]\nservice_level = { max = 0.8 }", "targets.voice.service_level.max"),
    ("[targets.voice]\nasa_seconds = { min = 3 }", "targets.voice.asa_seconds.min"),
    ("[targets.voice]\nasa_seconds = { max = -1 }", "targets.voice.asa_seconds.max"),
    ("[targets.voice]\nservice_level = { min = 80 }", "targets.voice.service_level.min"),
    ("[targets.voice]\nservice_level = { min = 'high' }", "targets.voice.service_level.min"),
    ("[targets.voice]\nservice_level = { min = true }", "targets.voice.service_level.min"),
    ("[targets.voice]\nservice_level = 0.8", "targets.voice.service_level"),
    ("[targets.voice]\nservice_level = true", "targets.voice.service_level"),
    ("[targets.voice]\nservice_level = { min = 0.8, for = 3 }", "targets.voice.service_level.for"),
    ("[targets.voice]\nservice_level = { min = 0.8, severity = 'page' }", "targets.voice.service_level.severity"),
    ("[targets.voice]\nfirst_response_p90_seconds = { max = 60 }", "targets.voice.first_response_p90_seconds"),
    ("[targets.ticket]\nservice_level = {}", "targets.ticket.service_level"),
    ("[targets]\nvoice = 3", "targets.voice"),
    ("targets = 3", "targets"),
    ("[targets.hold]\nopen_seconds = -1", "targets.hold.open_seconds"),
    ("[targets.hold]\nresolve_seconds = 'soon'", "targets.hold.resolve_seconds"),
    ("[targets.hold]\nflap_seconds = 1", "targets.hold.flap_seconds"),
    ("[queues.billing.targets.fax]\nasa_seconds = { max = 1 }", "queues.billing.targets.fax"),
    ("[queues.billing.targets.voice]\nasa_seconds = { min = 1 }", "queues.billing.targets.voice.asa_seconds.min"),
    ("[queues.billing]\ntargets = 1", "queues.billing.targets"),
])
def test_every_target_error_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).startswith(key + ":")


def test_queue_override_can_keep_the_value_and_change_the_severity(tmp_path: Path) -> None:
    s = settings_from(tmp_path, "[queues.vip.targets.voice]\nservice_level = { severity = 'warning' }\n")
    target = s.targets.for_queue("vip", "voice")["service_level"]
    assert (target.value, target.severity) == (0.8, "warning")


# --- the detector: examples ---------------------------------------------------------------

def feed(det: Detector, points: list[tuple[float | None, float]], target: Target = SL,
         hold: Hold = HOLD) -> list[Breach]:
    out = []
    for value, seconds in points:
        event = det.observe(value, T0 + round(seconds * 1000), target, hold, "billing", "voice")
        if event is not None:
            out.append(event)
    return out


def test_opens_after_the_hold_down_of_event_time_and_resolves_after_recovery() -> None:
    det = Detector()
    events = feed(det, [(0.9, 0), (0.7, 10), (0.6, 40), (0.65, 69.999)])
    assert events == [] and det.status == "pending_violation"
    events = feed(det, [(0.75, 70)])
    assert len(events) == 1
    opened = events[0]
    assert (opened.state, opened.observed, opened.worst_observed) == ("open", 0.75, 0.6)
    assert opened.violating_since == T0 + 10_000 and opened.opened_at == T0 + 70_000
    assert opened.breach_id == "billing|voice|service_level|2026-01-05T08:01:10.000Z"
    assert opened.resolved_at is None and opened.as_of == T0 + 70_000
    assert feed(det, [(0.5, 100), (0.85, 130), (0.9, 189)]) == []
    assert det.status == "pending_recovery"
    resolved = feed(det, [(0.95, 190)])
    assert [(e.state, e.breach_id, e.observed, e.worst_observed, e.resolved_at) for e in resolved] == \
        [("resolved", opened.breach_id, 0.95, 0.5, T0 + 190_000)]
    assert det.status == "ok" and not det.is_open


def test_a_compliant_observation_inside_the_hold_down_cancels_it() -> None:
    det = Detector()
    assert feed(det, [(0.7, 0), (0.7, 50), (0.85, 55), (0.7, 60), (0.7, 110)]) == []
    assert len(feed(det, [(0.7, 120)])) == 1  # 60 s after the run restarted at 60


def test_a_violation_inside_the_recovery_hold_down_keeps_the_breach() -> None:
    det = Detector()
    assert [e.state for e in feed(det, [(0.1, 0), (0.1, 60)])] == ["open"]
    assert feed(det, [(0.9, 70), (0.9, 129), (0.5, 130), (0.9, 140), (0.9, 199)]) == []
    assert [e.state for e in feed(det, [(0.9, 200)])] == ["resolved"]


def test_no_data_neither_opens_nor_resolves() -> None:
    det = Detector()
    # A gap without data breaks the violating run.
    assert feed(det, [(0.1, 0), (None, 30), (0.1, 61), (0.1, 90)]) == []
    assert det.status == "pending_violation" and det.since == T0 + 61_000
    assert [e.state for e in feed(det, [(0.1, 121)])] == ["open"]
    # Open: no data for an hour resolves nothing, and breaks a pending recovery.
    assert feed(det, [(None, 200), (None, 3800), (0.9, 3810), (None, 3820), (0.9, 3860)]) == []
    assert det.status == "pending_recovery" and det.since == T0 + 3_860_000
    assert [e.state for e in feed(det, [(0.9, 3920)])] == ["resolved"]


def test_zero_hold_down_opens_and_resolves_at_once() -> None:
    det = Detector()
    hold = Hold(0, 0)
    events = feed(det, [(0.1, 0), (0.1, 1), (0.9, 1), (0.9, 2)], hold=hold)
    assert [(e.state, e.as_of - T0) for e in events] == [("open", 0), ("resolved", 1000)]


def test_lower_is_better_targets() -> None:
    det = Detector()
    events = feed(det, [(130, 0), (120, 30), (121, 40), (500, 100), (0, 200), (0, 260)], target=WAIT)
    assert [(e.state, e.observed, e.worst_observed) for e in events] == \
        [("open", 500, 500), ("resolved", 0, 500)]
    assert events[0].to_record(T0)["target"] == {"op": "<=", "value": 120.0}


def test_an_older_observation_is_ignored_and_the_last_one_can_be_reapplied() -> None:
    det = Detector()
    assert [e.state for e in feed(det, [(0.1, 0), (0.1, 60)])] == ["open"]
    before = det.to_dict()
    assert feed(det, [(0.9, 30), (0.1, 60), (0.1, 0)]) == []
    assert det.to_dict() == before


def test_breach_record_validates_against_the_schema() -> None:
    validator = Draft202012Validator(load("sla-breach"))
    det = Detector()
    for event in feed(det, [(0.1, 0), (0.2, 60), (0.9, 100), (0.95, 160)]):
        record = event.to_record(T0 + 999_999)
        assert not list(validator.iter_errors(record)), record
        assert json.loads(json.dumps(record)) == record
    assert record["duration_seconds"] == 100.0 and record["version"] == 2


def test_schema_lists_every_kpi() -> None:
    assert set(load("sla-breach")["properties"]["kpi"]["enum"]) == set(KPIS)


# --- QueueSla: several KPIs, re-deliveries, ticks, restarts ---------------------------------

def observe(q: QueueSla, seconds: float, values: dict[str, float | None], published: int = 0,
            targets: dict[str, Target] | None = None) -> list[Breach]:
    at = T0 + round(seconds * 1000)
    return q.observe(values, at, targets if targets is not None else DEFAULT_TARGETS["voice"], HOLD,
                     seq=(at, published), source="state")


def test_re_delivered_records_change_nothing() -> None:
    q = QueueSla("billing", "voice")
    assert observe(q, 0, {"service_level": 0.1}, 1) == []
    first = observe(q, 60, {"service_level": 0.1}, 2)
    assert [e.state for e in first] == ["open"]
    snapshot = q.to_dict()
    # The same records again (e.g. after a crash before the offsets were committed).
    assert observe(q, 0, {"service_level": 0.1}, 1) == []
    assert observe(q, 60, {"service_level": 0.9}, 2) == []  # same seq: a duplicate
    assert q.to_dict() == snapshot


def test_a_restart_recovers_an_open_breach_and_never_reopens_it() -> None:
    q = QueueSla("billing", "voice")
    observe(q, 0, {"service_level": 0.1}, 1)
    assert [e.state for e in observe(q, 60, {"service_level": 0.1}, 2)] == ["open"]
    recovered = QueueSla.from_dict(json.loads(json.dumps(q.to_dict())))
    assert recovered.open_kpis() == ["service_level"]
    assert observe(recovered, 61, {"service_level": 0.1}, 3) == []
    assert observe(recovered, 300, {"service_level": 0.2}, 4) == []
    assert [e.state for e in observe(recovered, 400, {"service_level": 0.9}, 5)
            + observe(recovered, 460, {"service_level": 0.9}, 6)] == ["resolved"]


def test_tick_applies_the_last_values_at_the_new_event_time() -> None:
    q = QueueSla("billing", "voice")
    observe(q, 0, {"longest_wait_seconds": 500.0, "service_level": None})
    assert q.tick(T0 + 59_000, DEFAULT_TARGETS["voice"], HOLD) == []
    events = q.tick(T0 + 60_000, DEFAULT_TARGETS["voice"], HOLD)
    assert [(e.kpi, e.state, e.as_of) for e in events] == [("longest_wait_seconds", "open", T0 + 60_000)]
    assert q.tick(T0 + 10_000, DEFAULT_TARGETS["voice"], HOLD) == []  # not newer: nothing


def test_a_record_behind_a_tick_is_applied_at_the_tick_time() -> None:
    q = QueueSla("billing", "voice")
    observe(q, 0, {"service_level": 0.1}, 1)
    q.tick(T0 + 30_000, DEFAULT_TARGETS["voice"], HOLD)
    # A record of 20 s arrives after the tick to 30 s (another partition was ahead).
    assert observe(q, 20, {"service_level": 0.9}, 2) == []
    det = q.detectors["service_level"]
    assert det.status == "ok" and det.last_at == T0 + 30_000


def test_a_removed_target_resolves_its_open_breach() -> None:
    q = QueueSla("billing", "voice")
    observe(q, 0, {"service_level": 0.1}, 1)
    observe(q, 60, {"service_level": 0.1}, 2)
    without = {k: v for k, v in DEFAULT_TARGETS["voice"].items() if k != "service_level"}
    events = observe(q, 70, {"service_level": 0.1}, 3, targets=without)
    assert [(e.kpi, e.state, e.target.value) for e in events] == [("service_level", "resolved", 0.8)]
    assert "service_level" not in q.detectors


def test_values_read_from_the_records() -> None:
    record = {"queue": "q", "channel": "voice", "longest_wait_seconds": None,
              "last_15m": {"service_level": None, "abandonment_rate": 0.5, "asa_seconds": 12.5}}
    assert queue_state_values(record) == {"service_level": None, "abandonment_rate": 0.5,
                                          "asa_seconds": 12.5, "longest_wait_seconds": 0.0,
                                          "agents_gap": None}
    window = {"window": "1h", "final": True, "channel": "email", "wait_answered_p90_seconds": 7.0}
    assert window_values(window) == {"first_response_p90_seconds": 7.0}
    assert window_values({**window, "final": False}) is None
    assert window_values({**window, "window": "15m"}) == {"occupancy": None}  # no agent data: null
    assert window_values({**window, "channel": "chat"}) is None


def test_breach_id_is_stable() -> None:
    assert breach_id("a|b", "voice", "asa_seconds", T0) == "a|b|voice|asa_seconds|2026-01-05T08:00:00.000Z"


# --- properties ---------------------------------------------------------------------------

observations = st.lists(
    st.tuples(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 0.79, 0.8, 0.81, 1.0])),
              st.integers(min_value=0, max_value=40_000)),
    max_size=60)
holds = st.tuples(st.integers(0, 90_000), st.integers(0, 90_000))


def timeline(points: list[tuple[float | None, int]]) -> list[tuple[float | None, int]]:
    at, out = T0, []
    for value, step in points:
        at += step
        out.append((value, at))
    return out


def run_detector(points: list[tuple[float | None, int]], hold: Hold) -> tuple[Detector, list[Breach]]:
    det, out = Detector(), []
    for value, at in points:
        event = det.observe(value, at, SL, hold, "billing", "voice")
        if event is not None:
            out.append(event)
    return det, out


def reference(points: list[tuple[float | None, int]], hold: Hold) -> list[tuple[str, int, int]]:
    """A plain restatement of the rules: runs of violating / compliant observations."""
    events, is_open, run_start, opened = [], False, None, None
    for value, at in points:
        wanted = (value is not None and value >= 0.8) if is_open else (value is not None and value < 0.8)
        if not wanted:
            run_start = None
            continue
        run_start = at if run_start is None else run_start
        if at - run_start >= (hold.resolve_ms if is_open else hold.open_ms):
            if is_open:
                events.append(("resolved", opened, at))
            else:
                opened = at
                events.append(("open", at, at))
            is_open, run_start = not is_open, None
    return events


@settings(max_examples=400, deadline=None)
@given(observations, holds)
def test_detector_matches_the_reference_and_never_flaps(raw: list, hold_ms: tuple[int, int]) -> None:
    hold = Hold(hold_ms[0] / 1000, hold_ms[1] / 1000)
    points = timeline(raw)
    det, events = run_detector(points, hold)
    assert [(e.state, e.opened_at, e.as_of) for e in events] == reference(points, hold)
    # Exactly alternating, starting with open; each pair shares its id.
    assert [e.state for e in events] == ["open", "resolved"] * (len(events) // 2) + ["open"] * (len(events) % 2)
    for opened, resolved in zip(events[::2], events[1::2]):
        assert opened.breach_id == resolved.breach_id and resolved.resolved_at >= opened.opened_at
    assert det.is_open == (len(events) % 2 == 1)
    # Each open: the unbroken run of violations before it began at violating_since and
    # lasted the hold-down; it opened at the first observation completing the hold-down.
    for e in events:
        if e.state == "open":
            assert e.opened_at - e.violating_since >= hold.open_ms
            j = max(i for i, (v, at) in enumerate(points) if at == e.opened_at and v is not None and v < 0.8)
            k = j
            while k > 0 and points[k - 1][0] is not None and points[k - 1][0] < 0.8:
                k -= 1
            assert points[k][1] == e.violating_since


@settings(max_examples=300, deadline=None)
@given(observations, holds, st.data())
def test_restart_and_replay_emit_nothing_twice(raw: list, hold_ms: tuple[int, int], data: st.DataObject) -> None:
    """Persist the state at any point, re-deliver any earlier records: same transitions, once."""
    hold = Hold(hold_ms[0] / 1000, hold_ms[1] / 1000)
    targets = {"service_level": SL}
    points = timeline(raw)
    records = [({"service_level": v}, at, (at, i)) for i, (v, at) in enumerate(points)]

    def play(q: QueueSla, recs: list) -> list[tuple[str, str]]:
        out = []
        for values, at, seq in recs:
            out += [(e.state, e.breach_id) for e in q.observe(values, at, targets, hold, seq=seq, source="s")]
        return out

    straight = play(QueueSla("b", "voice"), records)
    crash = data.draw(st.integers(0, len(records)))
    committed = data.draw(st.integers(0, crash))
    q = QueueSla("b", "voice")
    before = play(q, records[:crash])
    restored = QueueSla.from_dict(json.loads(json.dumps(q.to_dict())))
    after = play(restored, records[committed:])  # re-delivered from the committed offset
    assert before + after == straight


@settings(max_examples=200, deadline=None)
@given(observations, holds)
def test_state_round_trips_through_json(raw: list, hold_ms: tuple[int, int]) -> None:
    det, _ = run_detector(timeline(raw), Hold(hold_ms[0] / 1000, hold_ms[1] / 1000))
    assert Detector.from_dict(json.loads(json.dumps(det.to_dict()))) == det


# --- the stream stage's pure helpers --------------------------------------------------------

def test_breach_gauge_and_clickhouse_rows() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from schemas.records import breach_row
    from streams.stages.sla import SlaCollector

    q = QueueSla("billing", "voice")
    observe(q, 0, {"service_level": 0.1, "asa_seconds": 5.0}, 1)
    event = observe(q, 60, {"service_level": 0.1, "asa_seconds": 5.0}, 2)[0]
    registry = CollectorRegistry()
    registry.register(SlaCollector(lambda: [{"p": 0, **q.to_dict()}]))
    text = generate_latest(registry).decode()
    assert 'ccpulse_sla_breach_open{channel="voice",kpi="service_level",queue="billing"} 1.0' in text
    assert 'ccpulse_sla_breach_open{channel="voice",kpi="asa_seconds",queue="billing"} 0.0' in text
    row = breach_row(event.to_record(T0))
    assert (row["target_op"], row["target_value"], row["state"]) == (">=", 0.8, "open")


# --- agents and staffing targets (issue 16) ------------------------------------------------

AGENT_TARGETS = """
[targets.voice]
agents_gap = { max = 0 }
occupancy = { max = 0.85 }

[targets.chat]
agents_gap = { max = -1, severity = "critical" }

[targets.ticket]
occupancy = { max = 0.9 }

[queues.billing.targets.voice]
agents_gap = { max = 2 }
occupancy = false
"""


def test_agent_targets_in_the_config(tmp_path: Path) -> None:
    t = settings_from(tmp_path, AGENT_TARGETS).targets
    voice = t.for_queue("sales", "voice")
    assert (voice["agents_gap"].op, voice["agents_gap"].value) == ("<=", 0.0)
    assert (voice["occupancy"].op, voice["occupancy"].value, voice["occupancy"].severity) == ("<=", 0.85, "warning")
    # One spare agent wanted on chat: a negative gap target is allowed (agents, not a duration).
    assert t.for_queue("sales", "chat")["agents_gap"].value == -1 and t.for_queue("x", "chat")["agents_gap"].severity == "critical"
    assert t.for_queue("x", "email")["occupancy"].value == 0.9
    billing = t.for_queue("billing", "voice")
    assert billing["agents_gap"].value == 2 and "occupancy" not in billing
    assert not billing["agents_gap"].violated(2) and billing["agents_gap"].violated(3)
    # Opt-in: by default neither carries a target (a center sending no agent events
    # has nobody staffed, so every queue with traffic would be "short").
    assert not any(k in targets for targets in SlaTargets().kinds.values() for k in ("agents_gap", "occupancy"))


@pytest.mark.parametrize("text,key", [
    ("[targets.ticket]\nagents_gap = { max = 0 }", "targets.ticket.agents_gap"),
    ("[targets.voice]\nagents_gap = { min = 0 }", "targets.voice.agents_gap.min"),
    ("[targets.voice]\nagents_gap = { max = 0.5 }", "targets.voice.agents_gap.max"),
    ("[targets.voice]\noccupancy = { max = 85 }", "targets.voice.occupancy.max"),
    ("[targets.voice]\noccupancy = { min = 0.5 }", "targets.voice.occupancy.min"),
    ("[windows]\nsizes = [60, 3600]\n[targets.voice]\noccupancy = { max = 0.85 }", "targets.voice.occupancy"),
    ("[windows]\nsizes = [60, 3600]\n[queues.b.targets.chat]\noccupancy = { max = 0.85 }",
     "queues.b.targets.chat.occupancy"),
])
def test_every_agent_target_error_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).startswith(key + ":")


def test_agent_values_read_from_the_records() -> None:
    state = {"queue": "q", "channel": "voice", "longest_wait_seconds": 0, "last_15m": {}, "agents_gap": 3}
    assert queue_state_values(state)["agents_gap"] == 3
    assert queue_state_values({**state, "agents_gap": None})["agents_gap"] is None
    # A record of before issue 16 has no gap: no data, not "not short".
    assert queue_state_values({k: v for k, v in state.items() if k != "agents_gap"})["agents_gap"] is None
    window = {"window": "15m", "final": True, "channel": "voice", "occupancy": 0.9}
    assert window_values(window) == {"occupancy": 0.9}
    assert window_values({**window, "channel": "email"}) == {"occupancy": 0.9}
    assert window_values({**window, "occupancy": None}) == {"occupancy": None}
    assert window_values({**window, "final": False}) is None
    assert window_values({**window, "window": "1h"}) is None
    assert window_values({**window, "window": "1m"}) is None


def test_a_target_may_set_its_own_hold_down(tmp_path: Path) -> None:
    """"Short of agents for 5 minutes" while the other KPIs keep the 1-minute hold-down."""
    t = settings_from(tmp_path, "[targets.voice]\nagents_gap = { max = 0, open_seconds = 300 }\n"
                                "[queues.b.targets.voice]\nagents_gap = { max = 1 }\n"
                                "[queues.c.targets.voice]\nagents_gap = { resolve_seconds = 0 }\n").targets
    gap = t.for_queue("x", "voice")["agents_gap"]
    assert gap.hold_in(t.hold) == Hold(300, 60) and t.for_queue("x", "voice")["service_level"].hold_in(t.hold) == Hold(60, 60)
    assert t.for_queue("b", "voice")["agents_gap"].hold_in(t.hold) == Hold(300, 60)  # inherited
    assert t.for_queue("c", "voice")["agents_gap"].hold_in(t.hold) == Hold(300, 0)
    q = QueueSla("x", "voice")
    targets = t.for_queue("x", "voice")
    assert q.observe({"agents_gap": 2}, T0, targets, t.hold, seq=(T0, 0), source="state") == []
    assert q.observe({"agents_gap": 2}, T0 + 299_000, targets, t.hold, seq=(T0 + 299_000, 0), source="state") == []
    [event] = q.tick(T0 + 300_000, targets, t.hold)
    assert (event.kpi, event.state, event.observed) == ("agents_gap", "open", 2)


@pytest.mark.parametrize("text,key", [
    ("[targets.voice]\nagents_gap = { max = 0, open_seconds = -5 }", "targets.voice.agents_gap.open_seconds"),
    ("[targets.voice]\nasa_seconds = { max = 5, resolve_seconds = 'x' }", "targets.voice.asa_seconds.resolve_seconds"),
])
def test_a_targets_hold_down_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).startswith(key + ":")


def test_agent_breaches_validate_and_become_clickhouse_rows() -> None:
    from schemas.records import breach_row

    validator = Draft202012Validator(load("sla-breach"))
    targets = {"agents_gap": Target("agents_gap", MAX, -1.0, open_seconds=300),
               "occupancy": Target("occupancy", MAX, 0.85)}
    q = QueueSla("billing", "voice")
    events = []
    for i, (gap, occ) in enumerate([(1, 0.9), (0, 0.95), (2, 0.7), (1, 0.7)]):
        at = T0 + i * 100_000
        events += q.observe({"agents_gap": gap, "occupancy": occ}, at, targets, HOLD, seq=(at, 0), source="state")
    # occupancy: open at 100 s (1-minute hold), resolved at 300 s; the gap: short from 0 s,
    # open at 300 s only (its own 5 minutes).
    assert [(e.kpi, e.state, e.as_of - T0) for e in events] == [
        ("occupancy", "open", 100_000), ("agents_gap", "open", 300_000), ("occupancy", "resolved", 300_000)]
    for event in events:
        record = event.to_record(T0)
        assert not list(validator.iter_errors(record)), record
        row = breach_row(record)
        assert (row["kpi"], row["target_value"]) == (event.kpi, event.target.value)
    assert events[1].to_record(T0)["target"] == {"op": "<=", "value": -1.0}


def test_only_agents_gap_may_be_negative_in_a_breach_record() -> None:
    validator = Draft202012Validator(load("sla-breach"))
    det = Detector()
    [opened] = [e for e in feed(det, [(0.1, 0), (0.2, 60)])]
    record = opened.to_record(T0)
    assert not list(validator.iter_errors(record))
    assert list(validator.iter_errors({**record, "observed": -1}))  # a service level cannot be negative
    gap = {**record, "kpi": "agents_gap", "observed": -1, "worst_observed": -1, "target": {"op": "<=", "value": -2}}
    assert not list(validator.iter_errors(gap))
