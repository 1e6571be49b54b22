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
