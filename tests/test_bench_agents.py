"""``ccpulse bench --agent-mix``: the workload with the agent side of the simulation (issue 16).

Unit tests of the option, the plan, the workload (seeded, counted by topic), the apps'
topics and the rows that compare the two mixes; one real worker (subprocess) reads its
topology, which is what the throughput scenario's offset watch waits on.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter
from pathlib import Path

import orjson
import pytest

from ccpulse.tools.bench import (AGENT_MIX, FULL, PLAIN_MIX, SHORT, add_parser, mix_comparison, mix_tag,
                                 plan_from_args)
from ccpulse.tools.bench_kafka import event_messages, simulated_dicts, simulated_events, type_counts
from ccpulse.tools.bench_latency import load_messages
from ccpulse.tools.bench_worker import BenchApp

CODE = Path(__file__).resolve().parents[1]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_agent_mix_option_picks_the_mixes() -> None:
    assert plan_from_args(_args()).mixes == (PLAIN_MIX,) == FULL.mixes == SHORT.mixes
    assert plan_from_args(_args("--short", "--agent-mix")).mixes == (AGENT_MIX,)
    assert plan_from_args(_args("--agent-mix", "--short")).events == SHORT.events  # no value swallowed
    assert plan_from_args(_args("--agent-mix", "both")).mixes == (PLAIN_MIX, AGENT_MIX)
    assert plan_from_args(_args("--agent-mix", "only")).mixes == (AGENT_MIX,)
    with pytest.raises(SystemExit):
        _args("--agent-mix", "sometimes")


def test_mix_tags_name_the_variant_rows() -> None:
    assert mix_tag(PLAIN_MIX) == ""  # the plain rows keep the names earlier results have
    assert mix_tag(AGENT_MIX) == "[agents]"


def test_agent_mix_workload_has_the_agent_side_on_its_topic() -> None:
    app = BenchApp("tp1-agents", Path("/nonexistent"), "localhost:1", CODE, "bencha.", agent_mix=True)
    events = simulated_events(20_000, seed=3, agent_mix=True)
    assert events == simulated_events(20_000, seed=3, agent_mix=True)  # seeded
    messages = list(event_messages(events, app.input_topics))
    by_topic = Counter(topic for topic, _key, _value in messages)
    assert set(by_topic) == {"bencha.calls", "bencha.chats", "bencha.tickets", "bencha.agents"}
    assert sum(by_topic.values()) == 20_000  # every event counted, the agents' included
    docs = [(topic, key, orjson.loads(value)) for topic, key, value in messages]
    agent_docs = [(key, doc) for topic, key, doc in docs if topic == "bencha.agents"]
    # EVENTS.md: the agents topic is keyed by the agent, the contacts by the interaction.
    assert all(key == doc["agent_id"].encode() for key, doc in agent_docs)
    assert all(key == doc["interaction_id"].encode() for topic, key, doc in docs if topic != "bencha.agents")
    types = type_counts(events)
    assert types["agent.logged_in"] > 0 and types["call.held"] > 0 and types["call.resumed"] > 0
    states = Counter(doc.get("state") for _key, doc in agent_docs if doc["type"] == "agent.state_changed")
    assert states["after_contact_work"] > 0 and states["available"] > 0
    assert any(doc.get("reason") for _key, doc in agent_docs)  # breaks carry their reason code


def test_plain_workload_is_unchanged_by_the_option() -> None:
    plain = simulated_events(3000, seed=3)
    assert plain == simulated_events(3000, seed=3, agent_mix=False)
    assert not [f for f, _ in plain if f == "agent"]
    assert set(BenchApp("tp1", Path("/x"), "b:1", CODE, "bench.").input_topics) == {"call", "chat", "ticket"}


def test_agent_mix_apps_configure_their_agents_topic(tmp_path: Path) -> None:
    from ccpulse.config import load_settings

    mixed = BenchApp("tp1-agents", tmp_path, "localhost:1", CODE, "bencha.", agent_mix=True)
    settings = load_settings(mixed.write_config(), env={})
    assert settings.topics.name("agents") == mixed.input_topics["agent"] == "bencha.agents"
    plain = BenchApp("tp1", tmp_path, "localhost:1", CODE, "bench.")
    # The plain config stays as it was: a worker of an older tree (--worker-pythonpath) reads it.
    assert not [line for line in plain.write_config().read_text().splitlines() if line.startswith("agents =")]


def test_latency_load_keys_agent_events_by_agent_and_stamps_the_wall_clock() -> None:
    topics = {"call": "l.calls", "chat": "l.chats", "ticket": "l.tickets", "agent": "l.agents"}
    events = itertools.islice(simulated_dicts(seed=7, agent_mix=True), 4000)
    messages = list(load_messages(events, topics, "2026-12-06T09:00:00.000Z"))
    assert len(messages) == 4000
    agents = [(key, orjson.loads(value)) for topic, key, value in messages if topic == "l.agents"]
    assert agents and all(key == doc["agent_id"].encode() for key, doc in agents)
    assert {orjson.loads(value)["occurred_at"] for _t, _k, value in messages} == {"2026-12-06T09:00:00.000Z"}


def test_mixes_compare_against_the_issue_16_tolerance() -> None:
    rates = {(PLAIN_MIX, 1): 20_000.0, (AGENT_MIX, 1): 17_000.0, (PLAIN_MIX, 2): 30_000.0, (AGENT_MIX, 2): 30_000.0}
    p99 = {(PLAIN_MIX, 5000, "kpi.windows"): 1.0, (AGENT_MIX, 5000, "kpi.windows"): 1.05,
           (PLAIN_MIX, 200, "/metrics"): 0.2}  # no agent run at 200/s: no row
    rows = {(r.scenario, r.metric): r for r in mix_comparison(rates, p99, target_load=5000)}
    one = rows[("agents vs plain", "throughput 1 worker, ratio")]
    assert math.isclose(one.value, 0.85) and one.target == ">= 0.9" and one.met is False
    assert rows[("agents vs plain", "throughput 2 workers, ratio")].target == ""  # as the base rows
    lat = rows[("agents vs plain", "latency @5000/s kpi.windows p99, ratio")]
    assert math.isclose(lat.value, 1.05) and lat.met is True
    assert len(rows) == 3
    assert mix_comparison({(AGENT_MIX, 1): 1.0}, {}, target_load=5000) == []  # one mix: nothing to compare


def test_agent_mix_topology_watches_the_agent_stage(tmp_path: Path) -> None:
    """The worker's own code (a real subprocess) says which topics its groups consume: the
    throughput scenario waits for those groups' commits, so the agents topic must be there."""
    app = BenchApp("tp1-agents", tmp_path, "localhost:1", CODE, "bencha.", agent_mix=True)
    app.write_config()
    topology = app.topology()
    for role in ("all", "compute"):
        assert "bencha.agents" in topology[role].topics
    assert "bencha.agents" not in topology["writer"].topics
    app.check_agent_stage([topology["compute"], topology["writer"]])
    with pytest.raises(RuntimeError, match="agent stage"):
        app.check_agent_stage([topology["writer"]])
