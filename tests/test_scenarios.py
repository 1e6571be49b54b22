"""Named scenarios (deploy/scenarios.toml): they load, they behave as named, bad files say where."""

from __future__ import annotations

import argparse
import collections
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ccpulse.commands import scenarios
from ccpulse.commands.scenarios import (
    DEFAULT_SCENARIOS_FILE,
    add_scenario_argument,
    agents_for_service_level,
    configs_from_args,
    erlang_c,
    load_scenario,
    load_scenarios,
    staffing_plan,
)
from ccpulse.commands.simulate import DEFAULT_START, SimulationConfig, add_arguments, generate_call_events
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events
from schemas.events import Event, validate
from tests.test_simulate import Occupancy, ms, spans

MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def shipped() -> dict[str, scenarios.Scenario]:
    return load_scenarios(DEFAULT_SCENARIOS_FILE)


def voice_run(scenario: scenarios.Scenario, hours: float, seed: int = 1) -> tuple[SimulationConfig, list[dict]]:
    cfg = scenario.voice_config(seed, DEFAULT_START)  # Monday 08:00 UTC: the morning ramp and peak
    assert cfg is not None
    return cfg, list(generate_call_events(cfg, hours * 3600))


def kpis(events: list[dict]) -> dict[str, float]:
    kinds = collections.Counter(ev["type"] for ev in events)
    offered: dict[str, int] = {}
    waits = []
    for ev in events:
        if ev["type"] == "call.offered":
            offered[ev["interaction_id"]] = ms(ev["occurred_at"])
        elif ev["type"] == "call.answered" and ev["interaction_id"] in offered:
            waits.append(ms(ev["occurred_at"]) - offered.pop(ev["interaction_id"]))
    exits = kinds["call.answered"] + kinds["call.abandoned"]
    return {"offered": kinds["call.offered"], "abandonment": kinds["call.abandoned"] / exits,
            "asa": statistics.fmean(waits) / 1000,
            "service_level": sum(w <= 20_000 for w in waits) / (len(waits) + kinds["call.abandoned"])}


def test_the_shipped_file_has_the_named_scenarios(shipped):
    assert {"normal", "understaffed", "outage", "outage_now", "peak", "steady"} <= set(shipped)
    assert DEFAULT_SCENARIOS_FILE == Path(scenarios.__file__).resolve().parents[2] / "deploy" / "scenarios.toml"
    for name, scenario in shipped.items():
        assert scenario.name == name and scenario.description
        voice, chat, ticket = scenario.configs(7, DEFAULT_START)
        assert isinstance(voice, SimulationConfig) and voice.seed == 7 and voice.start == DEFAULT_START
        assert chat is None or (isinstance(chat, ChatConfig) and chat.seed == 7)
        assert ticket is None or (isinstance(ticket, TicketConfig) and ticket.seed == 7)
    normal = shipped["normal"].voice_config()
    assert normal.profile is not None and normal.service_distribution == "lognormal"
    assert all(q.schedule is not None for q in normal.queues)
    # Planned for the curve: more agents at the 10:00 peak than at 03:00.
    assert all(q.schedule[10] > 5 * q.schedule[3] for q in normal.queues)
    assert normal.transfer_probability > 0 and normal.repeat_probability > 0 and normal.rating_probability > 0
    assert shipped["outage"].voice_config().outages and not normal.outages


def test_understaffed_abandons_more_than_normal(shipped):
    """Same callers (same seed, same rate and profile), a fifth of the agents missing: 08:00-16:00."""
    _, normal_events = voice_run(shipped["normal"], 8)
    _, under_events = voice_run(shipped["understaffed"], 8)
    normal, under = kpis(normal_events), kpis(under_events)
    assert normal["offered"] == under["offered"] > 10_000
    assert under["abandonment"] > 2 * normal["abandonment"] + 0.03, (normal, under)
    assert under["asa"] > 2 * normal["asa"] and under["service_level"] < normal["service_level"] - 0.2
    # The normal plan is a healthy center: Erlang C staffing for 80% within 20 s delivers it.
    assert normal["service_level"] > 0.8 and normal["abandonment"] < 0.05


def test_peak_day_is_worse_than_normal(shipped):
    _, normal_events = voice_run(shipped["normal"], 8)
    _, peak_events = voice_run(shipped["peak"], 8)
    normal, peak = kpis(normal_events), kpis(peak_events)
    assert peak["offered"] > 1.1 * normal["offered"]
    assert peak["abandonment"] > normal["abandonment"] + 0.03 and peak["asa"] > 2 * normal["asa"]


def test_outage_shows_a_waiting_peak_inside_its_window_then_recovers(shipped):
    cfg, events = voice_run(shipped["outage"], 4)
    (outage,) = cfg.outages
    begin, end = round(outage.start * 1000), round((outage.start + outage.duration) * 1000)
    assert (begin, end) == (120 * MINUTE_MS, 150 * MINUTE_MS)
    _, waiting = spans(cfg, events)
    occupancy = Occupancy([s for q in waiting.values() for s in q])
    series = [(t, occupancy.at(t)) for t in range(0, 4 * 60 * MINUTE_MS, 15_000)]
    peak_at, peak = max(series, key=lambda x: x[1])
    assert begin <= peak_at <= end, (peak_at / MINUTE_MS, peak)

    def mean_waiting(a: int, b: int) -> float:
        return statistics.fmean(n for t, n in series if a * MINUTE_MS <= t < b * MINUTE_MS)

    before, during, after = mean_waiting(60, 120), mean_waiting(125, 150), mean_waiting(165, 240)
    assert during > 10 * before + 10, (before, during, after)
    assert after < 3 * before + 2, (before, during, after)  # recovered within 15 minutes
    # The same day without the outage has no such peak.
    normal_cfg, normal_events = voice_run(shipped["normal"], 4)
    _, normal_waiting = spans(normal_cfg, normal_events)
    normal_occ = Occupancy([s for q in normal_waiting.values() for s in q])
    assert max(normal_occ.at(t) for t in range(begin, end, 15_000)) < peak / 3


def test_scenarios_are_deterministic_per_seed_and_every_event_is_valid(shipped):
    scenario = shipped["outage"]
    start = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
    first = list(generate_mixed_events(*scenario.configs(5, start), 2 * 3600))
    assert first == list(generate_mixed_events(*scenario.configs(5, start), 2 * 3600))
    assert first != list(generate_mixed_events(*scenario.configs(6, start), 2 * 3600))
    families = collections.Counter()
    types = set()
    for family, ev in first:
        out = validate(ev, family, now_ms=10**15)
        assert isinstance(out, Event), (family, ev, out)
        families[family] += 1
        types.add(ev["type"])
    assert set(families) == {"call", "chat", "ticket"}
    assert {"call.offered", "call.answered", "call.abandoned", "call.transferred", "call.ended",
            "call.rated"} <= types
    for name in ("normal", "understaffed", "peak", "steady"):
        for ev in generate_call_events(shipped[name].voice_config(), 1800):
            assert isinstance(validate(ev, "call", now_ms=10**15), Event)


# ---------------------------------------------------------------- Erlang C planning

def textbook_erlang_c(c: int, a: float) -> float:
    term = a**c / math.factorial(c) * c / (c - a)
    return term / (sum(a**k / math.factorial(k) for k in range(c)) + term)


def test_erlang_c_and_the_planned_agents():
    for c, a in ((1, 0.5), (5, 4.0), (8, 6.8), (20, 17.3), (60, 55.0)):
        assert erlang_c(c, a) == pytest.approx(textbook_erlang_c(c, a), rel=1e-9)
    assert erlang_c(5, 5.0) == 1.0 and erlang_c(5, 0.0) == 0.0
    aht, within = 270.0, 20.0

    def sl(c: int, a: float) -> float:
        return 1 - textbook_erlang_c(c, a) * math.exp(-(c - a) * within / aht) if c > a else 0.0

    for a in (0.3, 2.0, 9.5, 40.0, 120.0):
        c = agents_for_service_level(a, aht, 0.8, within)
        assert sl(c, a) >= 0.8 > sl(c - 1, a)
    plan = staffing_plan(0.5, None, ((2.0, True), (1.0, False)), service_mean=240.0, wrapup_mean=30.0,
                         service_level=0.8, within=20.0, min_agents=2)
    # Queue 0 gets 2/3 of 0.5 calls/s x 270 s = 90 Erlangs, flat.
    assert plan[1] == () and len(set(plan[0])) == 1
    assert plan[0][0] == agents_for_service_level(90.0, 270.0, 0.8, 20.0)
    scaled = staffing_plan(0.5, None, ((2.0, True), (1.0, False)), service_mean=240.0, wrapup_mean=30.0,
                           scale=0.8, min_agents=2)
    assert scaled[0][0] == round(plan[0][0] * 0.8)


# ---------------------------------------------------------------- the file format

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenarios.toml"
    path.write_text(text)
    return path


MINIMAL = """
[scenarios.base]
description = "two queues"
[scenarios.base.voice]
rate = 0.1
[[scenarios.base.voice.queues]]
name = "a"
agents = 3
[[scenarios.base.voice.queues]]
name = "b"
schedule = [1,1,1,1,1,1,1,1,2,2,2,2,2,2,2,2,2,2,1,1,1,1,1,1]
"""


def test_extends_merges_tables_and_replaces_values(tmp_path):
    path = write(tmp_path, MINIMAL + """
[profiles]
double = [2.0,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2]
[scenarios.child]
extends = "base"
chat = { rate = 0.05, queues = [{ name = "c", agents = 2 }] }
[scenarios.child.voice]
profile = "double"
patience_mean = 0
[[scenarios.child.voice.outages]]
start_minutes = 10
duration_minutes = 5
factor = 0.5
queues = ["b"]
[scenarios.grandchild]
extends = "child"
chat = false
ticket = {}
""")
    loaded = load_scenarios(path)
    base, child, grand = loaded["base"], loaded["child"], loaded["grandchild"]
    assert base.chat is None and base.ticket is None
    voice = child.voice_config(3)
    assert voice.rate == 0.1 and voice.profile == (2.0,) * 24 and voice.patience_mean is None
    assert [q.name for q in voice.queues] == ["a", "b"] and voice.queues[0].agents == 3
    assert voice.outages[0].start == 600 and voice.outages[0].queues == ("b",)
    assert child.chat_config().queues[0].name == "c" and child.description == "two queues"
    assert grand.chat is None and isinstance(grand.ticket_config(), TicketConfig)
    assert grand.voice_config(3) == voice


@pytest.mark.parametrize("text,key", [
    ("[scenarios.x.voice]\nrate = 1\nfoo = 2\n", "scenarios.x.voice.foo"),
    ("[scenarios.x.voice]\nrate = 'fast'\n", "scenarios.x.voice.rate"),
    ("[scenarios.x.voice]\nrate = -1\n", "scenarios.x.voice.rate"),
    ("[scenarios.x.voice]\nprofile = [1, 2]\n", "scenarios.x.voice.profile"),
    ("[scenarios.x.voice]\nprofile = 'nope'\n", "scenarios.x.voice.profile"),
    ("[profiles]\nbad = [1]\n[scenarios.x.voice]\nrate = 1\n", "profiles.bad"),
    ("[scenarios.x.voice]\nservice_distribution = 'gamma'\n", "scenarios.x.voice.service_distribution"),
    ("[scenarios.x.voice]\n[[scenarios.x.voice.queues]]\nname = 'a'\n", "scenarios.x.voice.queues[0]"),
    ("[scenarios.x.voice]\n[[scenarios.x.voice.queues]]\nname = 'a'\nagents = 2.5\n",
     "scenarios.x.voice.queues[0].agents"),
    ("[scenarios.x.voice]\n[[scenarios.x.voice.queues]]\nname = 'a'\nschedule = [1, 2]\n",
     "scenarios.x.voice.queues[0].schedule"),
    ("[scenarios.x.voice]\n[[scenarios.x.voice.outages]]\nstart_minutes = 1\n",
     "scenarios.x.voice.outages[0].duration_minutes"),
    ("[scenarios.x.voice]\n[[scenarios.x.voice.outages]]\nstart_minutes = -1\nduration_minutes = 5\n",
     "scenarios.x.voice.outages[0].start_minutes"),
    ("[scenarios.x.voice]\n[[scenarios.x.voice.outages]]\nstart_minutes = 1\nduration_minutes = 5\n"
     "queues = ['zz']\n", "scenarios.x.voice.outages[0].queues"),
    ("[scenarios.x.voice]\nrate = 1\n[scenarios.x.voice.staffing]\nservice_level = 0.8\n",
     "scenarios.x.voice.staffing"),
    ("[scenarios.x.voice]\n[scenarios.x.voice.staffing]\nservice_level = 1.5\n"
     "[[scenarios.x.voice.queues]]\nname = 'a'\n", "scenarios.x.voice.staffing.service_level"),
    ("[scenarios.x.chat]\nrate = 1\nbogus = 1\n", "scenarios.x.chat.bogus"),
    ("[scenarios.x.chat]\nconcurrency = 0\n", "scenarios.x.chat.concurrency"),
    ("[scenarios.x.chat]\nqueues = [{ name = 'c', agents = 0 }]\n", "scenarios.x.chat.queues[0].agents"),
    ("[scenarios.x.ticket]\nchannels = ['voice']\n", "scenarios.x.ticket.channels"),
    ("[scenarios.x]\nextends = 'missing'\n", "scenarios.x.extends"),
    ("[scenarios.x]\nextends = 'y'\n[scenarios.y]\nextends = 'x'\n", "extends"),
    ("[scenarios.x]\ndescription = 'nothing'\n", "scenarios.x"),
    ("[scenarios.x]\nvoice = 3\n", "scenarios.x.voice"),
    ("[scenarios.x]\nweather = 'rain'\n", "scenarios.x.weather"),
    ("[scenario.x]\n", "scenario"),
    ("scenarios = 1\n", "scenarios"),
    ("[profiles]\n", "scenarios: missing"),
])
def test_a_bad_file_names_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_scenarios(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and key in message, message


def test_unreadable_or_invalid_toml_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_scenarios(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_scenarios(write(tmp_path, "[scenarios\n"))


# ---------------------------------------------------------------- command line

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_scenario_argument(parser)
    return parser.parse_args(list(argv))


def test_command_line_builds_the_scenario_configs(tmp_path):
    ns = parse("--scenario", "outage", "--duration", "3600", "--speed", "max", "--seed", "9")
    assert ns.scenarios_file == DEFAULT_SCENARIOS_FILE
    voice, chat, ticket = configs_from_args(ns)
    assert voice == load_scenario("outage").voice_config(9, DEFAULT_START)
    assert chat.seed == ticket.seed == 9 and chat.start == ticket.start == DEFAULT_START
    # A live run: now, with a fresh seed, like the plain simulator.
    voice, _, _ = configs_from_args(parse("--scenario", "normal"))
    assert abs((voice.start - datetime.now(timezone.utc)).total_seconds()) < 60
    assert voice.seed == int(voice.start.timestamp())
    # No --scenario: nothing to build, the plain options apply.
    assert configs_from_args(parse("--duration", "10")) == (None, None, None)
    # Another file; a namespace without the simulate options (the demo's) runs live.
    path = write(tmp_path, MINIMAL)
    voice, chat, ticket = configs_from_args(argparse.Namespace(scenario="base", scenarios_file=path))
    assert [q.name for q in voice.queues] == ["a", "b"] and chat is None and ticket is None
    voice, _, _ = configs_from_args(argparse.Namespace(scenario="base", scenarios_file=path), seed=4,
                                    start=DEFAULT_START)
    assert voice.seed == 4 and voice.start == DEFAULT_START
    with pytest.raises(ValueError, match=r"no scenario 'nope'.*normal"):
        configs_from_args(parse("--scenario", "nope", "--duration", "10"))
