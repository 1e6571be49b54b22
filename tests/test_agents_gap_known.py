"""``agents_gap`` of a queue no presence was ever seen for (issue 16): null, not the whole
requirement. A center that sends no agent events (none wired yet, or a connector that
maps none) is not short of every agent it needs; a queue whose agents all logged out
still is. "Known" is the agent stage's: a queue some presence event named, on any of its
partitions, kept in its changelogged partition record. No broker: a real ``AgentStage``
feeds a real ``MergeStage``; /metrics through the real collector."""

from __future__ import annotations

import json
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from ccpulse.core.agents import PRESENCE_SEEN, AgentCore, Contact, Presence
from ccpulse.core.windowing import Windowing
from sinks.prometheus import QueueStateCollector
from streams.stages.agents import AgentStage, AgentOutput, clock_fact, contact_fact
from tests.test_agents_stage import AGENT, FACTS, OTHER, PARTITIONS, WALL, at, on_agents, on_facts, presence, settings
from tests.test_merge_agents import Merge, live_part, pipeline_minute, queue_state
from tests.test_prometheus_agents import samples

S = 1000
# 90 offered in the last 15 minutes, AHT 180 s: Erlang C wants 22 voice agents (test_merge_agents).
BUSY = dict(offered=90, handled=30, handle_ms=30 * 180 * S)
REQUIRED = 22


def clocks(ts: int, offset: int, partition: int = 0) -> Any:
    """Every expected source at ``ts``, and billing's channel (voice) known."""
    report = {f"{t}/{p}": [ts, False] for t in ("calls", "chats", "tickets", "agents") for p in range(PARTITIONS)}
    return on_facts(clock_fact(report, {"billing": ["voice"]}).value, offset, partition)


def on_contact(agent: str, iid: str, answered: int, offset: int, partition: int) -> Any:
    return on_facts(contact_fact(agent, iid, 0, Contact(1, "billing", "voice", answered, None)).value, offset, partition)


def sent(*outs: AgentOutput) -> list[dict[str, Any]]:
    """The agents_live partials the stage sent, as the merge reads them."""
    return [orjson.loads(orjson.dumps(m.value)) for out in outs for m in out.live]


def billing(*partials: dict[str, Any]) -> dict[str, Any]:
    return queue_state(Merge().batch(pipeline_minute("voice", **BUSY), *partials))


# -- the rule ---------------------------------------------------------------------------


def test_a_queue_no_presence_was_ever_seen_for_has_a_requirement_and_a_null_gap() -> None:
    # Calls answered by agents who never sent a presence event: on contact, nothing staffed.
    s = AgentStage(settings(), FACTS, {}, {})
    out = s.on_batch([on_contact(AGENT, "c-1", at(9, 55), 0, 0), clocks(at(10, 0), 1)], WALL)
    state = billing(*sent(out))
    assert state["agents_on_contact"] == 1 and state["agents_staffed"] == 0
    assert state["agents_required"] == REQUIRED
    assert state["agents_gap"] is None
    # No agent-stage part at all (no agents topic traffic): the same.
    assert billing()["agents_gap"] is None and billing()["agents_required"] == REQUIRED


def test_a_queue_whose_agents_all_logged_out_is_short_by_all_it_needs() -> None:
    s = AgentStage(settings(), FACTS, {}, {})
    first = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                        clocks(at(9, 1), 1)], WALL)
    state = billing(*sent(first))
    assert (state["agents_staffed"], state["agents_gap"]) == (1, REQUIRED - 1)
    then = s.on_batch([on_agents(presence("e2", "agent.logged_out", at(9, 2)), 1), clocks(at(9, 3), 2)],
                      WALL + 1000)
    state = billing(*sent(first, then))
    assert (state["agents_staffed"], state["agents_gap"]) == (0, REQUIRED)


def test_known_survives_the_sum_over_agent_partitions() -> None:
    # Partition 0 had a login and a logout on billing; partition 1 only an agent on a call
    # who sends no presence: the queue is known, and short.
    s = AgentStage(settings(), FACTS, {}, {})
    out = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                      on_agents(presence("e2", "agent.logged_out", at(9, 1)), 1),
                      on_contact(OTHER, "c-9", at(9, 58), 0, 1),
                      clocks(at(10, 0), 1, 0), clocks(at(10, 0), 1, 1)], WALL)
    parts = {p["partition"]: p for p in sent(out)}
    assert parts["agents-0"]["counts"] == {PRESENCE_SEEN: 1} and parts["agents-1"]["counts"] == {"on_contact": 1}
    state = billing(parts["agents-1"], parts["agents-0"])
    assert (state["agents_on_contact"], state["agents_gap"]) == (1, REQUIRED)
    assert billing(parts["agents-1"])["agents_gap"] is None  # partition 1 alone knows nothing
    # A partial of before the flag that counts a staffed agent: presence data all the same.
    assert billing(live_part(1, {"staffed": 2}, at(10, 0)))["agents_gap"] == REQUIRED - 2


# -- state: restore, rebalance ---------------------------------------------------------


def test_a_restored_or_rebalanced_partition_still_knows_a_queue_its_timelines_forgot() -> None:
    table: dict = {}
    records: dict = {}
    s = AgentStage(settings(), FACTS, table, records)
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                on_agents(presence("e2", "agent.state_changed", at(9, 5), state="available", queues=["sales"]), 1),
                on_agents(presence("e3", "agent.logged_out", at(9, 6)), 2),
                clocks(at(9, 30), 3)], WALL)
    # Folded: no timeline names billing any more, only the partition record does.
    assert "billing" not in json.dumps(table[AGENT])
    again = AgentStage(settings(), FACTS, table, records)  # a restart, or the partition's new owner
    again.assign(0)
    assert again.live(0)[("billing", "voice")] == {PRESENCE_SEEN: 1}
    out = again.on_batch([clocks(at(9, 31), 4)], WALL + 1000)
    assert billing(*sent(out))["agents_gap"] == REQUIRED


def test_a_record_stored_before_the_known_queues_learns_them_from_the_timelines() -> None:
    table: dict = {}
    records: dict = {}
    s = AgentStage(settings(), FACTS, table, records)
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                on_agents(presence("e2", "agent.logged_out", at(9, 1)), 1), clocks(at(9, 2), 2)], WALL)
    records["0"] = {k: v for k, v in records["0"].items() if k != "known"}
    again = AgentStage(settings(), FACTS, table, records)
    again.assign(0)
    assert again.live(0)[("billing", "voice")] == {PRESENCE_SEEN: 1}


def test_the_core_snapshot_keeps_the_known_queues_and_a_late_event_counts() -> None:
    w = Windowing((60, 900))
    core = AgentCore(w, 60_000)
    core.advance(at(10, 0))
    core.apply("a-1", Presence(at(10, 0), "e1", "logged_in", queues=("billing",)))
    core.apply("a-2", Presence(at(8, 0), "e2", "logged_in", queues=("late",)))  # before the floor
    core.apply("a-1", Presence(at(10, 0, 1), "e3", "state_changed", "available", queues=("sales",)))
    core.apply("a-3", Presence(at(10, 0, 2), "e4", "logged_in", queues=()))
    core.upsert("a-4", ("c-1", 0), Contact(1, "contacts-only", "voice", at(9, 59), None))
    assert core.known == {"billing", "late", "sales"}
    restored = AgentCore.restore(w, 60_000, json.loads(json.dumps(core.snapshot())))
    assert restored.known == {"billing", "late", "sales"}


# -- where people look ------------------------------------------------------------------


def test_a_null_gap_is_no_sample_on_metrics_while_the_requirement_is() -> None:
    s = AgentStage(settings(), FACTS, {}, {})
    out = s.on_batch([on_contact(AGENT, "c-1", at(9, 55), 0, 0), clocks(at(10, 0), 1)], WALL)
    registry = CollectorRegistry()
    registry.register(QueueStateCollector(lambda: [billing(*sent(out))]))
    assert samples(registry, "ccpulse_queue_agents_required") == {(("channel", "voice"), ("queue", "billing")): REQUIRED}
    assert samples(registry, "ccpulse_queue_agents_gap") == {}
