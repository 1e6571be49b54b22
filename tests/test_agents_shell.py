"""The agent stage's messages for the merge and its Faust shell's pure parts, without a
broker: the ``agents_live`` partial (the contract in docs/agents.md and the issue 16
brief), and what the stage sends of it."""

from __future__ import annotations

from streams.stages.partials import agents_live_partial, live_key


def test_agents_live_partial_follows_the_contract() -> None:
    key, value = agents_live_partial(3, "billing", "voice",
                                     {"staffed": 2, "available": 1, "away": 1, "away:lunch": 1, "on_contact": 0},
                                     1_700_000_000_000)
    assert key == live_key("billing", "voice").encode() == b"live|billing|voice"
    assert value == {"kind": "agents_live", "queue": "billing", "channel": "voice", "partition": "agents-3",
                     "version": 1_700_000_000_000, "watermark": 1_700_000_000_000,
                     "counts": {"available": 1, "away": 1, "away:lunch": 1, "staffed": 2}}


def test_a_queue_whose_agents_are_gone_is_sent_with_no_counts() -> None:
    _, value = agents_live_partial(0, "billing", "", {"staffed": 0}, 5)
    assert value["counts"] == {} and value["partition"] == "agents-0"


# -- what the agent stage sends of it ----------------------------------------------------

from streams.stages.agents import AgentStage  # noqa: E402
from tests.test_agents_stage import FACTS, WALL, at, clocks, on_agents, presence, settings, stage  # noqa: E402


def lives(out: object) -> dict[tuple[str, str], dict]:
    return {(m.value["queue"], m.value["channel"]): m.value for m in out.live}  # type: ignore[attr-defined]


def test_live_counts_go_out_when_they_change_at_most_once_a_second_and_once_more_at_zero() -> None:
    s, _t, _r = stage()
    out = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                      clocks(at(9, 1), 1)], WALL)
    assert lives(out) == {("billing", ""): {
        "kind": "agents_live", "queue": "billing", "channel": "", "partition": "agents-0",
        "version": at(9, 1), "watermark": at(9, 1), "counts": {"staffed": 1, "available": 1, "presence_seen": 1}}}
    # A break within the same second waits for the next one; nothing changed, nothing sent.
    assert not lives(s.on_batch([on_agents(presence("e2", "agent.state_changed", at(9, 1), state="away",
                                                    reason="lunch"), 1), clocks(at(9, 2), 2)], WALL + 500))
    assert lives(s.on_tick(WALL + 1000))[("billing", "")]["counts"] == {"staffed": 1, "away": 1, "away:lunch": 1,
                                                                        "presence_seen": 1}
    assert not lives(s.on_tick(WALL + 2000))
    gone = lives(s.on_batch([on_agents(presence("e3", "agent.logged_out", at(9, 2)), 2), clocks(at(9, 3), 3)],
                            WALL + 3000))
    assert gone[("billing", "")]["counts"] == {"presence_seen": 1}  # no agents, and known (agents_gap)
    assert not lives(s.on_tick(WALL + 5000))


def test_a_restored_partition_clears_what_it_said_before_the_crash() -> None:
    s, table, records = stage()
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                clocks(at(9, 1), 1)], WALL)
    s.on_batch([on_agents(presence("e2", "agent.logged_out", at(9, 0, 30)), 1)], WALL + 100)
    # A crash before the zero went out: the new owner knows the queue had agents.
    again = AgentStage(settings(), FACTS, table, records)
    again.assign(0)
    assert lives(again.on_batch([clocks(at(9, 2), 2)], WALL + 2000))[("billing", "")]["counts"] == {"presence_seen": 1}
