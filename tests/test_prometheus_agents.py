"""Agents and staffing on ``/metrics`` (METRICS.md, issue 16): the cumulative seconds in
each state read from the agent stage's cores at scrape time (exact, restart-proof), and
the live gauges read from the merged ``kpi.queue-state`` records. No services: the
collectors are fed real ``AgentCore``/``AgentStage`` state and contract-shaped records."""

from __future__ import annotations

import calendar
import json
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ccpulse.core.agents import (
    ANY_CHANNEL, LOGGED_IN, LOGGED_OUT, STATE_CHANGED, AgentCore, Contact, Presence,
)
from ccpulse.core.kpis import QUEUE
from ccpulse.core.windowing import Windowing
from sinks.prometheus import AgentStateCollector, PipelineMetrics, QueueStateCollector
from tests.test_agents_stage import AGENT, WALL, clocks, on_agents, on_facts, presence, stage

SIZES = (60, 900, 3600, 86400)
LATE = 120_000


def at(hh: int, mm: int, ss: int = 0, day: int = 22) -> int:
    return calendar.timegm((2026, 11, day, hh, mm, ss)) * 1000


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    """{(sorted label items): value} of the samples named ``name``."""
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# A shift across midnight, with a late event inside the lateness, a retracted contact
# and a late event past it: every kind of change the totals must follow exactly.
SHIFT: list[tuple[str, Any]] = [
    ("t", at(23, 50)),
    ("p", ("a-1", Presence(at(23, 50, 10), "e1", LOGGED_IN, None, None, ("billing", "sales")))),
    ("p", ("a-2", Presence(at(23, 51), "e2", LOGGED_IN, None, None, ("billing",)))),
    ("c", ("a-1", ("c-1", 0), Contact(1, "billing", "voice", at(23, 52), None))),
    ("t", at(23, 55)),
    ("c", ("a-1", ("c-1", 0), Contact(2, "billing", "voice", at(23, 52), at(23, 57, 30)))),
    ("p", ("a-1", Presence(at(23, 57, 30), "e3", STATE_CHANGED, "after_contact_work"))),
    ("p", ("a-2", Presence(at(23, 56), "e4", STATE_CHANGED, "away", "break"))),  # late, within lateness
    ("t", at(23, 59)),
    ("p", ("a-1", Presence(at(23, 58, 15), "e5", STATE_CHANGED, "available"))),
    ("c", ("a-2", ("c-2", 0), Contact(3, "billing", "chat", at(23, 59, 30), at(0, 3, day=23)))),
    ("t", at(0, 2, day=23)),
    ("r", ("a-2", ("c-2", 0), 4, at(23, 59, 30))),  # the answer moved elsewhere
    ("p", ("a-2", Presence(at(23, 59, 45), "e6", STATE_CHANGED, "away", "lunch"))),  # past the lateness: late
    ("t", at(0, 4, day=23)),
    ("p", ("a-1", Presence(at(0, 4, 20, day=23), "e7", LOGGED_OUT))),
    ("p", ("a-2", Presence(at(0, 5, day=23), "e8", LOGGED_OUT))),
    ("t", at(0, 30, day=23)),
]


def feed(core: AgentCore, steps: list[tuple[str, Any]], finals: Counter | None = None) -> None:
    for kind, item in steps:
        if kind == "t":
            core.advance(item)
        elif kind == "p":
            core.apply(*item)
        elif kind == "c":
            core.upsert(*item)
        else:
            core.remove(*item)
        for change in core.take():
            size, _start, scope, name, channel = change.key
            if finals is not None and change.final and size == 86400 and scope == QUEUE:
                for counter, ms in change.counters.items():
                    finals[(name, channel, counter)] += ms


def flat(totals: dict[tuple[str, str], dict[str, int]]) -> Counter:
    return Counter({(q, ch, counter): ms for (q, ch), c in totals.items() for counter, ms in c.items() if ms})


def test_running_totals_equal_the_final_day_windows_and_continue_after_a_restore() -> None:
    w = Windowing(SIZES)
    whole, finals = AgentCore(w, LATE), Counter()
    feed(whole, SHIFT, finals)
    feed(whole, [("t", at(0, 0, day=24) + LATE)], finals)  # every day window final
    assert finals[("billing", ANY_CHANNEL, "staffed_ms")] > 0 and whole.late_events > 0
    assert flat(whole.running_totals()) == finals
    # Cut anywhere, snapshot (JSON), restore, the tail read again from the cut: the count
    # continues where it was, nothing twice, and at every step it equals the uncut one.
    for cut in range(1, len(SHIFT)):
        first = AgentCore(w, LATE)
        feed(first, SHIFT[:cut])
        before = flat(first.running_totals())
        restored = AgentCore.restore(w, LATE, json.loads(json.dumps(first.snapshot())))
        assert flat(restored.running_totals()) == before, cut
        reference = AgentCore(w, LATE)
        feed(reference, SHIFT[:cut])
        for step in SHIFT[cut:]:
            feed(restored, [step])
            feed(reference, [step])
            assert flat(restored.running_totals()) == flat(reference.running_totals()), (cut, step)
        feed(restored, [("t", at(0, 0, day=24) + LATE)])
        assert flat(restored.running_totals()) == finals, cut


def test_running_totals_grow_with_open_time_before_any_window_is_final() -> None:
    core = AgentCore(Windowing(SIZES), LATE)
    core.advance(at(9, 0))
    core.apply("a-1", Presence(at(9, 0), "e1", LOGGED_IN, None, None, ("q",)))
    core.advance(at(9, 0, 30))
    core.take()  # the stage reads open figures once a second; the scrape reads what it read
    assert flat(core.running_totals()) == {("q", "", "staffed_ms"): 30_000, ("q", "", "available_ms"): 30_000}


def test_agent_state_seconds_on_metrics_per_channel_and_partition_and_gone_when_revoked() -> None:
    s, _table, _records = stage()
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                on_facts(clocks(at(9, 0)).value, 0),
                on_agents(presence("e2", "agent.state_changed", at(9, 2), state="away", reason="lunch"), 1),
                clocks(at(9, 5), 1)], WALL)
    metrics = PipelineMetrics(dict)
    metrics.watch_agents(s.state_totals)
    got = samples(metrics.registry, "ccpulse_queue_agent_state_seconds_total")
    labels = (("channel", ""), ("partition", "agents-0"), ("queue", "billing"))

    def value(state: str) -> float:
        return got[tuple(sorted((*labels, ("state", state))))]

    assert value("staffed") == 300 and value("available") == 120 and value("away") == 180
    assert value("on_contact") == 0 and value("after_contact_work") == 0
    # A restart: the stage rebuilt from its tables continues the same count.
    again, _t, _r = stage()
    again.restore(0, json.loads(json.dumps(s.snapshot(0))))
    metrics2 = PipelineMetrics(dict)
    metrics2.watch_agents(again.state_totals)
    assert samples(metrics2.registry, "ccpulse_queue_agent_state_seconds_total") == got
    s.revoke(0)
    assert samples(metrics.registry, "ccpulse_queue_agent_state_seconds_total") == {}


def test_agent_state_seconds_follow_the_queue_channels_like_the_windows() -> None:
    from streams.stages.agents import clock_fact, contact_fact

    s, _t, _r = stage()
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                on_facts(clock_fact({}, {"billing": ["voice", "chat"]}).value, 0),
                on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "chat", at(9, 1), at(9, 2))).value, 1),
                clocks(at(9, 4), 2)], WALL)
    metrics = PipelineMetrics(dict)
    metrics.watch_agents(s.state_totals)
    got = {(dict(k)["channel"], dict(k)["state"]): v
           for k, v in samples(metrics.registry, "ccpulse_queue_agent_state_seconds_total").items()}
    # Staffed on both channels' series (as on both records: not additive across channels).
    assert got[("chat", "staffed")] == got[("voice", "staffed")] == 240
    assert got[("chat", "on_contact")] == 60 and got[("voice", "on_contact")] == 0


def queue_state(queue: str, channel: str, **fields: Any) -> dict[str, Any]:
    """A kpi.queue-state record shaped as the contract says (agent fields of issue 16)."""
    base = {"queue": queue, "channel": channel, "as_of": "2026-11-22T09:05:00.000Z", "waiting": 0,
            "agents_busy": 0, "agents_staffed": 0, "agents_available": 0, "agents_on_contact": 0,
            "agents_after_contact_work": 0, "agents_away": 0, "agents_away_by_reason": {},
            "occupancy_now": None, "agents_required": None, "agents_gap": None}
    return {**base, **fields}


def test_live_agent_gauges_from_the_merged_queue_state() -> None:
    records = [
        queue_state("billing", "voice", agents_staffed=7, agents_available=1, agents_on_contact=3,
                    agents_after_contact_work=1, agents_away=2, agents_away_by_reason={"lunch": 1, "break": 1},
                    occupancy_now=0.8, agents_required=9, agents_gap=4),
        queue_state("sales", "chat"),  # no agent data yet: counts 0, the ratios and staffing absent
    ]
    registry = CollectorRegistry()
    registry.register(QueueStateCollector(lambda: records))
    agents = samples(registry, "ccpulse_queue_agents")
    assert agents[(("channel", "voice"), ("queue", "billing"), ("state", "staffed"))] == 7
    assert agents[(("channel", "voice"), ("queue", "billing"), ("state", "after_contact_work"))] == 1
    assert agents[(("channel", "chat"), ("queue", "sales"), ("state", "away"))] == 0
    assert samples(registry, "ccpulse_queue_agents_away") == {
        (("channel", "voice"), ("queue", "billing"), ("reason", "break")): 1,
        (("channel", "voice"), ("queue", "billing"), ("reason", "lunch")): 1}
    assert samples(registry, "ccpulse_queue_occupancy") == {(("channel", "voice"), ("queue", "billing")): 0.8}
    assert samples(registry, "ccpulse_queue_agents_required") == {(("channel", "voice"), ("queue", "billing")): 9}
    assert samples(registry, "ccpulse_queue_agents_gap") == {(("channel", "voice"), ("queue", "billing")): 4}


@pytest.mark.parametrize("bad", [
    {"agents_staffed": "7"}, {"agents_away_by_reason": ["lunch"]}, {"agents_gap": True}, {"queue": None},
    {"agents_away_by_reason": {"lunch": "x"}}, {"occupancy_now": float("nan")},
])
def test_a_malformed_queue_state_record_costs_its_own_series_only(bad: dict[str, Any]) -> None:
    records = [{**queue_state("billing", "voice"), **bad}, queue_state("sales", "voice", agents_staffed=2)]
    registry = CollectorRegistry()
    registry.register(QueueStateCollector(lambda: records))
    agents = samples(registry, "ccpulse_queue_agents")
    assert agents[(("channel", "voice"), ("queue", "sales"), ("state", "staffed"))] == 2
    assert not any(dict(k).get("queue") in ("billing", None) for k in agents)


def test_the_latest_queue_state_per_key_and_only_of_owned_partitions() -> None:
    from sinks.prometheus import LatestQueueStates

    latest = LatestQueueStates()
    latest.update(0, queue_state("billing", "voice", agents_staffed=1))
    latest.update(0, queue_state("billing", "voice", agents_staffed=2))
    latest.update(1, queue_state("sales", "chat", agents_staffed=5))
    metrics = PipelineMetrics(dict)
    owned = {0, 1}
    metrics.watch_queue_state(lambda: latest.records(owned))
    got = samples(metrics.registry, "ccpulse_queue_agents")
    assert got[(("channel", "voice"), ("queue", "billing"), ("state", "staffed"))] == 2
    assert got[(("channel", "chat"), ("queue", "sales"), ("state", "staffed"))] == 5
    owned.discard(1)  # a rebalance gave partition 1 away: its queues' series go
    assert {dict(k)["queue"] for k in samples(metrics.registry, "ccpulse_queue_agents")} == {"billing"}


def test_an_agent_stage_given_the_metrics_exposes_its_seconds_there() -> None:
    """The shell builds the stage with the worker's PipelineMetrics: nothing else to wire."""
    from streams.stages.agents import AgentStage
    from tests.test_agents_stage import FACTS, settings

    metrics = PipelineMetrics(dict)
    s = AgentStage(settings(), FACTS, {}, {}, metrics=metrics)
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                clocks(at(9, 5), 1)], WALL)
    got = samples(metrics.registry, "ccpulse_queue_agent_state_seconds_total")
    assert got[(("channel", ""), ("partition", "agents-0"), ("queue", "billing"), ("state", "staffed"))] == 300


def test_watching_again_replaces_the_source() -> None:
    metrics = PipelineMetrics(dict)
    metrics.watch_queue_state(lambda: [queue_state("a", "voice", agents_staffed=1)])
    metrics.watch_queue_state(lambda: [queue_state("b", "voice", agents_staffed=2)])
    metrics.watch_agents(lambda: {})
    metrics.watch_agents(lambda: {0: {("q", "voice"): {"staffed_ms": 5000}}})
    assert {dict(k)["queue"] for k in samples(metrics.registry, "ccpulse_queue_agents")} == {"b"}
    assert list(samples(metrics.registry, "ccpulse_queue_agent_state_seconds_total").values()) == [5, 0, 0, 0, 0]
