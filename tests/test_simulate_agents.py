"""The simulator speaks agents (EVENTS.md "Agents", flow-outs, callbacks, hold): opt-in, well-formed.

Pure: the generators in memory, no Kafka (one integration test at the end publishes
to a real broker and checks the agents topic and its keys).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

import pytest

from ccpulse.commands import demo, scenarios, simulate
from ccpulse.commands.simulate import Outage, QueueModel, SimulationConfig, generate_call_events
from ccpulse.commands.simulate_channels import ChatConfig, generate_mixed_events
from tests.test_simulate import ms

START = datetime(2026, 1, 5, 8, 50, tzinfo=timezone.utc)
AGENT_TYPES = {"agent.logged_in", "agent.state_changed", "agent.logged_out"}
STATES = {"available", "away", "after_contact_work"}
NEW_CALL_TYPES = {"call.held", "call.resumed", "call.flowed_out", "call.callback_requested"}

# Staffing that changes every hour and an outage: agents log in and out all the time.
BUSY = SimulationConfig(
    rate=0.6, seed=5, start=START, service_mean=150.0, wrapup_mean=25.0, patience_mean=90.0,
    transfer_probability=0.1, rating_probability=0.2,
    queues=(QueueModel("billing", schedule=tuple([20] * 9 + [30, 12, 25] + [20] * 12)),
            QueueModel("support", schedule=tuple([20] * 9 + [18, 30, 10] + [20] * 12))),
    outages=(Outage(5400, 900, 0.3, ("support",)),),
    agent_events=True, break_interval=1800.0, break_duration=300.0,
    hold_probability=0.3, max_wait=75.0, callback_probability=0.4)
HORIZON = 4 * 3600


@pytest.fixture(scope="module")
def busy() -> list[dict[str, Any]]:
    return list(generate_call_events(BUSY, HORIZON))


def family(ev: dict[str, Any]) -> str:
    return ev["type"].split(".", 1)[0]


def check_agent_envelope(ev: dict[str, Any]) -> None:
    assert isinstance(ev["event_id"], str) and 1 <= len(ev["event_id"]) <= 128
    assert isinstance(ev["agent_id"], str) and 1 <= len(ev["agent_id"]) <= 128
    assert ev["schema_version"] == 1 and ev["occurred_at"].endswith("Z")
    if ev["type"] == "agent.logged_in":
        assert isinstance(ev["queues"], list) and ev["queues"] and all(isinstance(q, str) for q in ev["queues"])
    if ev["type"] == "agent.state_changed":
        assert ev["state"] in STATES
        if ev["state"] == "away":
            assert isinstance(ev["reason"], str) and 1 <= len(ev["reason"]) <= 64, "away without a reason code"
        else:
            assert "reason" not in ev
    try:  # the contract's own validator, where the agents topic has one
        from schemas.events import Rejection, validate_agent
    except ImportError:
        return
    assert not isinstance(validate_agent(ev, ms(ev["occurred_at"])), Rejection)


def replay_agents(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Walks the stream as a supervisor's screen would; asserts every agent's sequence is possible."""
    logged: dict[str, str] = {}  # agent -> declared state while logged in
    open_calls: dict[str, set[str]] = defaultdict(set)  # agent -> calls answered and not over
    acw_due: dict[str, int] = {}  # agent -> when its after-contact work ends
    last_end: dict[str, tuple[int, int]] = {}  # agent -> (ended ms, wrapup ms) of its last call
    owner: dict[str, str] = {}  # call -> agent on it now
    reasons: Counter[str] = Counter()
    counts = Counter(ev["type"] for ev in events)
    for ev in events:
        t = ms(ev["occurred_at"])
        kind = ev["type"]
        if kind in AGENT_TYPES:
            check_agent_envelope(ev)
            a = ev["agent_id"]
            if kind == "agent.logged_in":
                assert a not in logged, f"{a} logged in twice"
                logged[a] = "available"
            else:
                assert a in logged, f"{kind} of {a} while logged out"
                assert not open_calls[a], f"{a}: {kind} while on a contact"
                if a in acw_due:  # after-contact work lasts exactly the call's wrap-up
                    assert t == acw_due.pop(a), f"{a}: after-contact work ended at the wrong time"
                if kind == "agent.logged_out":
                    del logged[a]
                else:
                    state = ev["state"]
                    if state == "after_contact_work":
                        ended, wrapup = last_end[a]
                        assert ended == t and wrapup > 0, f"{a}: after-contact work not right after its call"
                        acw_due[a] = t + wrapup
                    elif state == "away":
                        reasons[ev["reason"]] += 1
                    assert state != logged[a], f"{a}: {state} twice in a row"
                    logged[a] = state
            continue
        iid, agent = ev["interaction_id"], ev.get("agent_id")
        if kind == "call.answered":
            assert logged.get(agent) == "available", f"{agent} answered {iid} while {logged.get(agent)}"
            assert agent not in acw_due
            open_calls[agent].add(iid)
            owner[iid] = agent
        elif kind in ("call.ended", "call.transferred"):
            assert owner.pop(iid) == agent
            open_calls[agent].discard(iid)
            if kind == "call.ended":
                last_end[agent] = (t, ev["wrapup_seconds"] * 1000)
    return {"reasons": reasons, "counts": counts, "still_logged_in": logged}


def test_an_agents_events_are_a_possible_sequence(busy: list[dict[str, Any]]) -> None:
    seen = replay_agents(busy)
    counts = seen["counts"]
    assert counts["agent.logged_in"] > counts["agent.logged_out"] > 0
    assert {"break", "lunch"} <= set(seen["reasons"]), "breaks and lunch with their reason codes"
    states = Counter(ev["state"] for ev in busy if ev["type"] == "agent.state_changed")
    assert states["after_contact_work"] > 100 and states["available"] > 100


def test_agent_ids_and_event_ids_are_unique_and_time_ordered(busy: list[dict[str, Any]]) -> None:
    ids = [ev["event_id"] for ev in busy]
    assert len(ids) == len(set(ids))
    times = [ms(ev["occurred_at"]) for ev in busy]
    assert times == sorted(times)


def test_hold_only_while_answered_and_a_held_call_resumes_or_ends(busy: list[dict[str, Any]]) -> None:
    answered: dict[str, str] = {}  # call -> agent while answered
    held: set[str] = set()
    holds = 0
    for ev in busy:
        iid, kind = ev.get("interaction_id"), ev["type"]
        if kind == "call.answered":
            answered[iid] = ev["agent_id"]
        elif kind in ("call.ended", "call.transferred"):
            answered.pop(iid, None)
            held.discard(iid)  # a call that ends while held ends its hold
        elif kind == "call.held":
            assert iid in answered and iid not in held, f"{iid} held while not answered or already held"
            assert ev["agent_id"] == answered[iid]
            held.add(iid)
            holds += 1
        elif kind == "call.resumed":
            assert iid in held, f"{iid} resumed without a hold"
            held.discard(iid)
    answered_calls = sum(ev["type"] == "call.answered" for ev in busy)
    assert 0.15 * answered_calls < holds < 0.45 * answered_calls


def test_callers_flow_out_after_exactly_the_maximum_wait(busy: list[dict[str, Any]]) -> None:
    wait_start: dict[str, int] = {}
    flowed = 0
    max_wait_ms = round(BUSY.max_wait * 1000)
    for ev in busy:
        iid, kind, t = ev.get("interaction_id"), ev["type"], ms(ev["occurred_at"])
        if kind == "call.offered" and "callback_of" not in ev.get("attributes", {}):
            wait_start[iid] = t
        elif kind == "call.transferred":
            wait_start[iid] = t
        elif kind in ("call.answered", "call.abandoned", "call.callback_requested"):
            if iid in wait_start:
                assert t - wait_start.pop(iid) <= max_wait_ms, f"{iid} waited past the maximum"
        elif kind == "call.flowed_out":
            assert ev["reason"] == "timeout"
            assert t - wait_start.pop(iid) == max_wait_ms
            flowed += 1
    assert flowed > 20


def test_callbacks_are_requested_instead_of_abandoning_and_placed_linked(busy: list[dict[str, Any]]) -> None:
    requested: dict[str, dict[str, Any]] = {}
    placed: dict[str, dict[str, Any]] = {}
    offered = {ev["interaction_id"]: ev for ev in busy if ev["type"] == "call.offered"}
    for ev in busy:
        if ev["type"] == "call.callback_requested":
            requested[ev["interaction_id"]] = ev
        elif ev["type"] == "call.offered" and "callback_of" in ev.get("attributes", {}):
            original = ev["attributes"]["callback_of"]
            assert original in requested, "a callback placed before (or without) its request"
            assert original not in placed, "one request, one callback"
            assert ev["interaction_id"] != original
            assert ev["customer_id"] == offered[original]["customer_id"]
            assert ev["queue"] == requested[original]["queue"]
            placed[original] = ev
    assert len(requested) > 20 and len(placed) >= len(requested) - 5  # the last ones fall past the horizon
    abandoned = sum(ev["type"] == "call.abandoned" for ev in busy)
    assert abandoned > 0, "only some callers ask for a callback"
    callbacks = {ev["interaction_id"] for ev in placed.values()}
    for ev in busy:  # a callback is not offered a callback again, nor flows out
        if ev.get("interaction_id") in callbacks:
            assert ev["type"] not in ("call.callback_requested", "call.flowed_out", "call.abandoned")


def test_the_options_keep_the_same_callers() -> None:
    plain = dataclasses.replace(BUSY, agent_events=False, hold_probability=0.0, max_wait=None,
                                callback_probability=0.0)

    def callers(cfg: SimulationConfig) -> list[tuple]:
        return [(ev["interaction_id"], ev["occurred_at"], ev["queue"], ev["customer_id"])
                for ev in generate_call_events(cfg, 3600) if ev["type"] == "call.offered"
                and "callback_of" not in ev.get("attributes", {})]

    assert callers(BUSY) == callers(plain)


def test_each_option_alone_adds_only_its_own_events() -> None:
    base = dataclasses.replace(BUSY, agent_events=False, hold_probability=0.0, max_wait=None,
                               callback_probability=0.0)
    for option, types in (({"agent_events": True}, AGENT_TYPES), ({"hold_probability": 0.3},
                          {"call.held", "call.resumed"}), ({"max_wait": 60.0}, {"call.flowed_out"}),
                          ({"callback_probability": 0.5}, {"call.callback_requested"})):
        kinds = {ev["type"] for ev in generate_call_events(dataclasses.replace(base, **option), 3600)}
        assert kinds & (AGENT_TYPES | NEW_CALL_TYPES) == types, option


def test_the_hold_changes_no_other_call() -> None:
    # A hold is part of the talk time: the queue behaves exactly as without it.
    base = dataclasses.replace(BUSY, agent_events=False, max_wait=None, callback_probability=0.0)
    with_hold = [ev for ev in generate_call_events(base, 3600) if ev["type"] not in ("call.held", "call.resumed")]
    without = list(generate_call_events(dataclasses.replace(base, hold_probability=0.0), 3600))
    strip = [{k: v for k, v in ev.items() if k != "event_id"} for ev in with_hold]
    assert strip == [{k: v for k, v in ev.items() if k != "event_id"} for ev in without]


def test_chat_agents_log_in_with_their_queue() -> None:
    chat = ChatConfig(seed=3, start=START, agent_events=True)
    events = list(generate_mixed_events(None, chat, None, 600))
    logins = [ev for f, ev in events if f == "agent"]
    assert len(logins) == sum(q.agents for q in chat.queues)
    assert all(ev["type"] == "agent.logged_in" and ev["queues"] == ["chat-support"] for ev in logins)
    for ev in logins:
        check_agent_envelope(ev)
    answered_by = {ev["agent_id"] for f, ev in events if ev["type"] == "chat.answered"}
    assert answered_by <= {ev["agent_id"] for ev in logins}


def test_the_mixed_stream_routes_agent_events_to_the_agent_family() -> None:
    events = list(generate_mixed_events(BUSY, ChatConfig(seed=5, start=START, agent_events=True), None, 1800))
    for fam, ev in events:
        assert fam == family(ev)
    assert {f for f, _ in events} == {"call", "chat", "agent"}


def logged_in_over(events: list[dict[str, Any]], start_ms: int, end_ms: int) -> float:
    """Mean number of agents logged in over [start, end), from the agent events."""
    logged, total, last = 0, 0, None
    for ev in events:
        t = ms(ev["occurred_at"])
        if ev["type"] not in ("agent.logged_in", "agent.logged_out"):
            continue
        if last is not None:
            a, b = max(last, start_ms), min(t, end_ms)
            if b > a:
                total += logged * (b - a)
        last = t
        logged += 1 if ev["type"] == "agent.logged_in" else -1
    a = max(last, start_ms)
    if end_ms > a:
        total += logged * (end_ms - a)
    return total / (end_ms - start_ms)


@pytest.mark.parametrize("name", ["understaffed", "outage"])
def test_understaffed_and_outage_log_in_fewer_agents(name: str) -> None:
    start = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    t0 = ms(start.isoformat().replace("+00:00", "Z"))

    def run(scenario: str) -> list[dict[str, Any]]:
        voice = scenarios.load_scenario(scenario).voice_config(1, start)
        voice = dataclasses.replace(voice, agent_events=True)
        return list(generate_call_events(voice, 3 * 3600))

    normal, other = run("normal"), run(name)
    # The outage is 10:00-10:30 (two hours in); understaffing shows all day.
    window = (t0 + 2 * 3600_000, t0 + 2 * 3600_000 + 1800_000)
    assert logged_in_over(other, *window) < 0.85 * logged_in_over(normal, *window)


def test_the_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    ns = parser.parse_args(["--speed", "max", "--duration", "60", "--agent-events", "--hold-rate", "0.2",
                            "--max-wait", "120", "--callback-share", "0.3"])
    cfg, _, _ = simulate.config_from_args(ns)
    assert (cfg.agent_events, cfg.hold_probability, cfg.max_wait, cfg.callback_probability) == (True, 0.2, 120.0, 0.3)
    plain, _, _ = simulate.config_from_args(parser.parse_args(["--speed", "max", "--duration", "60"]))
    assert (plain.agent_events, plain.hold_probability, plain.max_wait, plain.callback_probability) \
        == (False, 0.0, None, 0.0)
    for bad in (["--hold-rate", "1.5"], ["--callback-share", "-0.1"], ["--max-wait", "0"], ["--max-wait", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--speed", "max", "--duration", "60", *bad])
        assert f"argument {bad[0]}: {bad[1]!r}" in capsys.readouterr().err
    text = parser.format_help()
    for flag in ("--agent-events", "--hold-rate", "--max-wait", "--callback-share"):
        assert flag in text


def test_the_options_reach_a_scenario_run() -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    scenarios.add_scenario_argument(parser)
    ns = parser.parse_args(["--speed", "max", "--duration", "60", "--scenario", "normal", "--agent-events",
                            "--max-wait", "200"])
    voice, chat, _ = scenarios.configs_from_args(ns)
    assert voice.agent_events and voice.max_wait == 200.0 and chat.agent_events
    voice, chat, _ = scenarios.configs_from_args(parser.parse_args(["--scenario", "normal"]))
    assert not voice.agent_events and voice.max_wait is None and not chat.agent_events


@pytest.mark.parametrize("field,value", [("hold_probability", 1.5), ("callback_probability", -0.1),
                                         ("max_wait", 0.0), ("max_wait", math.inf), ("break_interval", 0.0),
                                         ("break_duration", -1.0)])
def test_bad_option_values_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        SimulationConfig(**{field: value})


def test_the_demo_turns_everything_on() -> None:
    voice, chat, _ticket = demo._default_configs(1.0, 26, 7, START)
    assert voice.agent_events and voice.hold_probability > 0 and voice.max_wait and voice.callback_probability > 0
    assert chat.agent_events
    chosen = scenarios.load_scenario("outage_now")
    voice, chat, _ = demo.demo_options(*chosen.configs(7, START))
    assert voice.agent_events and voice.max_wait and chat.agent_events
    # Breaks come within minutes, so that a person watching sees them.
    kinds = Counter(ev.get("reason") for ev in itertools.islice(generate_call_events(voice, 900), 100000)
                    if ev["type"] == "agent.state_changed")
    assert kinds["break"] > 0


@pytest.mark.integration
def test_agent_events_go_to_the_agents_topic_keyed_by_agent(kafka_bootstrap: str) -> None:
    from ccpulse.commands.publish import publish_mixed
    from tests.test_simulate_channels import _create_topics, _read

    tag = uuid.uuid4().hex[:8]
    topics = {"call": f"t-calls-{tag}", "chat": f"t-chats-{tag}", "agent": f"t-agents-{tag}"}
    events = list(generate_mixed_events(BUSY, ChatConfig(rate=0.2, seed=5, start=START, agent_events=True),
                                        None, 900))
    expected = Counter(f for f, _ in events)
    assert expected["agent"] > 50

    async def run() -> tuple[int, list]:
        await _create_topics(kafka_bootstrap, list(topics.values()), 3)
        sent = await publish_mixed(iter(events), kafka_bootstrap, topics, None)
        return sent, await _read(kafka_bootstrap, list(topics.values()), len(events))

    sent, records = asyncio.run(run())
    assert sent == len(events) == len(records)
    family_of = {topic: f for f, topic in topics.items()}
    assert Counter(family_of[r.topic] for r in records) == expected
    import orjson

    for rec in records:
        ev = orjson.loads(rec.value)
        want = ev["agent_id"] if family_of[rec.topic] == "agent" else ev["interaction_id"]
        assert rec.key == want.encode()


def gap_at(events: list[dict[str, Any]], queue: str, instants: list[int], target: float = 0.8,
           threshold: float = 20.0) -> list[int | None]:
    """agents_gap of ``queue`` at each instant as METRICS.md defines it: Erlang C on the last
    15 minutes' arrivals and handle time, against staffed minus away from the agent events."""
    from ccpulse.core.staffing import agents_gap, agents_required

    logged: set[str] = set()
    away: set[str] = set()
    offered: list[int] = []
    handled: list[tuple[int, float]] = []  # (ended ms, handle s)
    answered: dict[str, int] = {}
    out: list[int | None] = []
    pending = sorted(instants)
    for ev in [*events, None]:
        t = math.inf if ev is None else ms(ev["occurred_at"])
        while pending and pending[0] < t:
            now = pending.pop(0)
            arrivals = sum(1 for o in offered if o > now - 900_000)
            recent = [h for e, h in handled if e > now - 900_000]
            required = agents_required(arrivals / 900, sum(recent) / len(recent) if recent else None, target,
                                       threshold)
            out.append(agents_gap(required, len(logged), len(away & logged)))
        if ev is None:
            break
        kind, aid = ev["type"], ev.get("agent_id")
        if kind == "agent.logged_in" and queue in ev["queues"]:
            logged.add(aid)
        elif kind == "agent.logged_out":
            logged.discard(aid)
            away.discard(aid)
        elif kind == "agent.state_changed":
            (away.add if ev["state"] == "away" else away.discard)(aid)
        elif ev.get("queue") == queue:
            if kind == "call.offered":
                offered.append(t)
            elif kind == "call.answered":
                answered[ev["interaction_id"]] = t
            elif kind == "call.ended" and ev["interaction_id"] in answered:
                handled.append((t, (t - answered.pop(ev["interaction_id"])) / 1000 + ev["wrapup_seconds"]))
    return out


def test_understaffed_and_outage_drive_agents_gap_positive() -> None:
    start = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    t0 = ms("2026-01-05T08:00:00Z")
    instants = [t0 + minute * 60_000 for minute in (125, 140)]  # 10:05 and 10:20, in the outage

    def gaps(name: str) -> list[int | None]:
        voice = dataclasses.replace(scenarios.load_scenario(name).voice_config(1, start), agent_events=True)
        return gap_at(list(generate_call_events(voice, 2.5 * 3600)), "support", instants)

    normal, understaffed, outage = gaps("normal"), gaps("understaffed"), gaps("outage")
    for n, u, o in zip(normal, understaffed, outage):
        assert abs(n) <= 10, "a day planned for its service level is about balanced, breaks covered"
        assert u >= n + 10 and u > 0
        assert o >= n + 50 and o > 0


def test_the_break_cover_rounds_up_exactly() -> None:
    # BUSY: aways of 300, 600 and 300 s every 1800 s of work, 2/11 of the time away: 9 agents
    # scheduled are 11 logged in, 45 are 55 (45 x 11/9 is 55.00000000000001 in floats), 13 are 16.
    assert simulate._Presence.away_share(BUSY) == pytest.approx(2 / 11)
    cfg = dataclasses.replace(BUSY, queues=(QueueModel("billing", 45), QueueModel("support", 13),
                                            QueueModel("sales", 9)), outages=())
    logins = Counter(ev["agent_id"].rsplit("-", 1)[0] for ev in generate_call_events(cfg, 1)
                     if ev["type"] == "agent.logged_in")
    assert logins == {"billing": 55, "support": 16, "sales": 11}


@pytest.mark.integration
def test_publish_events_creates_and_fills_the_configured_agents_topic(kafka_bootstrap: str) -> None:
    """What `ccpulse simulate --agent-events` and the demo do: the settings' topics, created first."""
    from ccpulse.commands.publish import publish_events
    from ccpulse.config import load_settings
    from tests.test_simulate_channels import _read

    prefix = f"sim{uuid.uuid4().hex[:6]}-"
    settings = load_settings(env={"CCPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap, "CCPULSE_TOPIC_PREFIX": prefix,
                                  "CCPULSE_CONFIG": "/dev/null"})
    events = list(generate_mixed_events(BUSY, None, None, 300))
    agents = [ev for f, ev in events if f == "agent"]
    assert asyncio.run(publish_events(settings, events, None)) == len(events)
    records = asyncio.run(_read(kafka_bootstrap, [f"{prefix}agents"], len(agents)))
    import orjson

    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(ev["event_id"] for ev in agents)
    assert all(r.key == orjson.loads(r.value)["agent_id"].encode() for r in records)


def test_a_scenario_file_may_set_the_agent_side(tmp_path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("""
[scenarios.shift]
[scenarios.shift.voice]
rate = 0.3
agent_events = true
break_interval = 1200
break_duration = 120
hold_probability = 0.2
max_wait = 90
callback_probability = 0.25
queues = [{ name = "billing", agents = 12 }]
[scenarios.shift.chat]
agent_events = true
""")
    voice, chat, _ = scenarios.load_scenario("shift", path).configs(1, START)
    assert (voice.agent_events, voice.break_interval, voice.break_duration, voice.hold_probability, voice.max_wait,
            voice.callback_probability) == (True, 1200, 120, 0.2, 90, 0.25)
    assert chat.agent_events
    for bad, where in (("agent_events = 1", "voice.agent_events"), ("max_wait = 0", "voice.max_wait"),
                       ("hold_probability = 2", "voice.hold_probability")):
        path.write_text(f"[scenarios.x.voice]\n{bad}\n")
        with pytest.raises(ValueError, match=f"scenarios.x.{where}: "):
            scenarios.load_scenarios(path)
    path.write_text("[scenarios.x.chat]\nagent_events = 1\n")
    with pytest.raises(ValueError, match="scenarios.x.chat.agent_events: "):
        scenarios.load_scenarios(path)
