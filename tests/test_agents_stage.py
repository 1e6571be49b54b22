"""streams/stages/agents.py without a broker: presence and contact facts in, per-window
partials and table entries out; event time from every expected source's clock; bad
input dead-lettered; keyless presence forwarded; only changed windows sent; a restore
sends the same figures."""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ccpulse.config import Settings, WindowSettings
from ccpulse.core.agents import Contact
from streams.stages.agents import AgentStage, clock_fact, contact_fact
from streams.stages.io import Consumed
from streams.stages.pipeline import key_partition
from tests.agents_support import as_partial

FACTS = "app-agent-facts"
PARTITIONS = 2


def at(hh: int, mm: int, ss: int = 0) -> int:
    return calendar.timegm((2026, 11, 22, hh, mm, ss)) * 1000


WALL = at(10, 0)


@dataclass
class Msg:
    key: bytes | None


def settings() -> Settings:
    base = Settings()
    return replace(base, kafka=replace(base.kafka, partitions=PARTITIONS),
                   windows=replace(WindowSettings(), sizes=(60, 900), allowed_lateness_seconds=60))


AGENT = next(f"a-{i}" for i in range(100) if key_partition(f"a-{i}".encode(), PARTITIONS) == 0)
OTHER = next(f"a-{i}" for i in range(100) if key_partition(f"a-{i}".encode(), PARTITIONS) == 1)


def presence(eid: str, etype: str, ts: int, agent: str = AGENT, **extra: Any) -> bytes:
    doc = {"event_id": eid, "type": etype, "occurred_at": f"2026-11-22T{ts // 1000 % 86400 // 3600:02d}:"
           f"{ts // 60000 % 60:02d}:{ts // 1000 % 60:02d}Z", "agent_id": agent, **extra}
    return orjson.dumps(doc)


def on_agents(value: bytes, offset: int, partition: int = 0, key: bytes | None = None) -> Consumed:
    return Consumed("agents", partition, offset, value, Msg(AGENT.encode() if key is None else key))


def on_facts(value: bytes, offset: int, partition: int = 0) -> Consumed:
    return Consumed(FACTS, partition, offset, value, Msg(None))


def clocks(ts: int, offset: int = 0, partition: int = 0) -> Consumed:
    report = {f"{t}/{p}": [ts, False] for t in ("calls", "chats", "tickets", "agents") for p in range(PARTITIONS)}
    return on_facts(clock_fact(report).value, offset, partition)


def stage() -> tuple[AgentStage, dict, dict]:
    table: dict = {}
    records: dict = {}
    return AgentStage(settings(), FACTS, table, records), table, records


def partials(out: Any) -> dict[tuple, dict]:
    """Its queue partials and its agent windows (published whole) by window key."""
    got = {tuple(m.value["key"]): m.value for m in out.partials}
    got.update(as_partial(m.value, settings().windows.sizes) for m in out.agent_windows)
    return got


def test_presence_and_contacts_make_window_partials_once_event_time_allows() -> None:
    s, table, records = stage()
    out = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                      on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "voice", at(9, 1), at(9, 3))).value, 0)],
                     WALL)
    assert not out.partials  # no clock yet: event time unknown
    assert table[AGENT]["p"] == 0 and [p.key for p in out.agents] == [AGENT]
    out = s.on_batch([clocks(at(9, 5), 1)], WALL)
    got = partials(out)
    queue = got[(900, at(9, 0), "q", "billing", "voice")]
    assert queue["agg"]["counts"] == {"staffed_ms": 300_000, "available_ms": 180_000, "on_contact_ms": 120_000}
    assert queue["partition"] == "agents-0" and queue["version"] == at(9, 5) and not queue["final"]
    assert got[(900, at(9, 0), "a", AGENT, "")]["agg"]["counts"]["staffed_ms"] == 300_000
    assert got[(60, at(9, 2), "q", "billing", "voice")]["final"]  # 09:03 + 60 s lateness <= 09:05
    assert records["0"]["now"] == at(9, 5)
    # nothing changed, event time did not move: nothing sent again
    assert not s.on_tick(WALL + 1000).partials


def test_event_time_waits_for_every_expected_source() -> None:
    s, _t, _r = stage()
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["q"]), 0)], WALL)
    partial = {"calls/0": [at(9, 5), False]}
    out = s.on_batch([on_facts(clock_fact(partial).value, 0)], WALL)
    assert not out.partials and s.event_time(0) is None


def test_bad_presence_is_dead_lettered_and_the_rest_applied() -> None:
    s, table, _r = stage()
    out = s.on_batch([on_agents(b"not json", 0),
                      on_agents(presence("e1", "agent.state_changed", at(9, 0), state="busy"), 1),
                      on_agents(presence("e2", "agent.logged_in", at(9, 0), queues=["q"]), 2),
                      on_facts(b'{"what": 1}', 0)], WALL)
    reasons = [m.value["reason"] for m in out.dead_letters]
    assert reasons == ["not_json", "invalid_value"]
    assert [m.value["offset"] for m in out.dead_letters] == [0, 1]
    # a malformed internal record is the shell's to dead-letter (processing_error), once
    assert [f.message for f in out.failures] == [Msg(None)] and AGENT in table


def test_a_malformed_contact_fact_changes_nothing_and_is_reported() -> None:
    s, table, _r = stage()
    bad = [[AGENT, "c-1", 0, 1, "q", "voice", "09:00", None], [AGENT, "c-1", 0, True, "q", "voice", 1, None],
           [AGENT, "c-1", 0, 1, "q", "voice", 5, 4], [AGENT, "c-1", 0]]
    out = s.on_batch([on_facts(orjson.dumps({"contact": b}), i) for i, b in enumerate(bad)], WALL)
    assert len(out.failures) == 4 and AGENT not in table
    assert all("contact" in str(f.error) for f in out.failures)


def test_live_counts_per_queue_and_channel() -> None:
    s, _t, _r = stage()
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "voice", at(9, 1), None)).value, 0),
                clocks(at(9, 2), 1)], WALL)
    # presence_seen: billing had presence here (AgentCore.known, tests/test_agents_gap_known.py)
    assert s.live(0) == {("billing", "voice"): {"staffed": 1, "on_contact": 1, "presence_seen": 1}}


def test_presence_on_the_wrong_partition_is_forwarded_and_applied_where_its_agent_lives() -> None:
    s, table, _r = stage()
    out = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), agent=OTHER, queues=["q"]), 7,
                                partition=0, key=None)], WALL)
    assert OTHER not in table and len(out.forwards) == 1 and out.forwards[0].key == OTHER.encode()
    out = s.on_batch([on_facts(out.forwards[0].value, 0, partition=1)], WALL)
    assert table[OTHER]["p"] == 1


def test_a_queue_on_two_channels_gets_its_staffed_time_on_both_records() -> None:
    s, _t, _r = stage()
    out = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                      on_facts(clock_fact({}, {"billing": ["voice", "chat"]}).value, 0),
                      on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "chat", at(9, 1), at(9, 2))).value, 1),
                      clocks(at(9, 4), 2)], WALL)
    got = partials(out)
    assert got[(900, at(9, 0), "q", "billing", "chat")]["agg"]["counts"] == {
        "staffed_ms": 240_000, "available_ms": 180_000, "on_contact_ms": 60_000}
    assert got[(900, at(9, 0), "q", "billing", "voice")]["agg"]["counts"] == {
        "staffed_ms": 240_000, "available_ms": 180_000}


def test_a_restore_sends_the_same_figures_and_later_the_same_finals() -> None:
    script = [on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["q"]), 0),
              clocks(at(9, 3), 0),
              on_agents(presence("e2", "agent.state_changed", at(9, 3), state="away", reason="lunch"), 1),
              clocks(at(9, 20), 1)]
    whole, _t, _r = stage()
    expected: dict = {}
    for record in script:
        expected.update(partials(whole.on_batch([record], WALL)))
    first, table, records = stage()
    seen: dict = {}
    for record in script[:3]:
        seen.update(partials(first.on_batch([record], WALL)))
    snap = json.loads(json.dumps(first.snapshot(0)))
    again, _t2, _r2 = stage()
    again.restore(0, snap)
    for record in script[2:]:  # the last record read again, then the rest
        seen.update(partials(again.on_batch([record], WALL)))
    assert {k: (v["agg"], v["final"]) for k, v in seen.items()} == {
        k: (v["agg"], v["final"]) for k, v in expected.items()}
    assert seen[(900, at(9, 0), "a", AGENT, "")]["agg"]["counts"]["away_ms:lunch"] == 12 * 60_000


def test_open_windows_go_out_at_most_every_second_agent_ones_every_agent_interval_finals_at_once() -> None:
    from streams.stages.partials import AGENT_WINDOW_SECONDS
    every = int(AGENT_WINDOW_SECONDS * 1000)
    s, _t, _r = stage()
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["q"]), 0), clocks(at(9, 0, 10), 1)],
               WALL)
    out = s.on_batch([clocks(at(9, 0, 20), 2)], WALL + 500)  # event time moved, 0.5 s later
    assert not out.partials
    out = s.on_batch([clocks(at(9, 0, 30), 3)], WALL + 1000)
    scopes = {tuple(m.value["key"])[2] for m in out.partials}
    assert scopes == {"q"} and all(m.value["agg"]["counts"]["staffed_ms"] == 30_000 for m in out.partials)
    out = s.on_batch([clocks(at(9, 2), 4)], WALL + 1200)  # 09:00 closes (60 s lateness): final at once
    assert [(tuple(m.value["key"])[:2], m.value["final"]) for m in out.partials] == [((60, at(9, 0)), True)]
    assert {k[2] for k in partials(s.on_tick(WALL + 5000))} == {"q"}  # agent ones: not yet
    # The agent's turn (AgentRota): once in the next interval, an interval after its last.
    turns = [t for t in range(WALL + 6000, WALL + 2 * every + 1000, 1000)
             if "a" in {k[2] for k in partials(s.on_tick(t))}]
    assert len(turns) == 1 and WALL + every <= turns[0] < WALL + 2 * every


def test_the_rota_spreads_the_agents_over_the_period_and_keeps_each_turn_at_least_a_period_apart() -> None:
    from streams.stages.partials import AgentRota
    rota = AgentRota(10_000, slices=10)
    assert rota.due(0) == frozenset(range(10))  # the first call: everyone
    last = dict.fromkeys(range(10), 0)
    for now in range(1000, 60_000, 1000):
        due = rota.due(now)
        assert len(due) <= 1  # one slice a second, not all at once
        for i in due:
            assert now - last[i] >= 10_000
            last[i] = now
    assert all(60_000 - t <= 11_000 for t in last.values())  # nobody waits much over a period
    # A stall: the turns missed come at once, then keep their phase (spread again).
    assert rota.due(95_500) == frozenset(range(10))
    assert len(rota.due(96_000)) == 1
    agents = [f"agent-{n}" for n in range(1000)]
    per_slice = [sum(rota.slice_of(a) == i for a in agents) for i in range(10)]
    assert min(per_slice) > 60 and rota.slice_of("agent-7") == rota.slice_of("agent-7")


def test_the_pipelines_facts_of_answered_segments_reach_the_agent() -> None:
    from ccpulse.core.lifecycle import Segment
    from streams.stages.agents import segment_facts

    segments = [Segment("billing", at(8, 59), "transferred", at(9, 0)),
                Segment("sales", at(9, 0), "answered", at(9, 1), agent=AGENT, ended=at(9, 4)),
                Segment("support", at(9, 4), None)]
    facts = segment_facts("c-1", "voice", enumerate(segments), 42)
    assert [f.key for f in facts] == [AGENT.encode()]
    s, _t, _r = stage()
    out = s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["sales"]), 0),
                      on_facts(facts[0].value, 0), clocks(at(9, 5), 1)], WALL)
    assert partials(out)[(900, at(9, 0), "q", "sales", "voice")]["agg"]["counts"]["on_contact_ms"] == 180_000
    assert not s.on_batch([on_facts(facts[0].value, 2)], WALL).agents  # the same version again: nothing


def contact_clocks(ts: int, offset: int, partition: int = 0) -> Consumed:
    """The pipeline's clocks: the contact topics only."""
    report = {f"{t}/{p}": [ts, False] for t in ("calls", "chats", "tickets") for p in range(PARTITIONS)}
    return on_facts(clock_fact(report).value, offset, partition)


def test_event_time_moves_when_no_agent_events_are_sent_at_all() -> None:
    s, _t, _r = stage()
    caught_up = {("agents", p): True for p in range(PARTITIONS)}
    out = s.on_batch([on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "voice", at(9, 0), at(9, 2))).value, 0),
                      contact_clocks(at(9, 5), 1)], WALL)
    s.on_tick(WALL, caught_up)
    out = s.on_tick(WALL + 10_000, caught_up)  # past source_idle_seconds: agents/p reported idle
    assert out.clocks
    got: dict = {}
    for i, clock in enumerate(out.clocks):  # each goes to every partition of the facts topic
        got.update(partials(s.on_batch([on_facts(clock.value, 10 + i, p) for p in range(PARTITIONS)], WALL + 10_000)))
    assert got[(900, at(9, 0), "q", "billing", "voice")]["agg"]["counts"] == {"on_contact_ms": 120_000}
    assert got[(900, at(9, 0), "a", AGENT, "")]["agg"]["counts"] == {"on_contact_ms": 120_000}


def test_a_quiet_stream_closes_its_windows_with_the_wall_clock() -> None:
    s, _t, _r = stage()
    # Every source says it has nothing left to read (idle); a source still active holds
    # event time (test_agent_events_ahead_of_a_contact_source_finalise_nothing_it_can_still_change).
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["q"]), 0),
                each_source({"rest": [at(9, 1), True]})], WALL)
    idle_close = int(settings().windows.idle_close_seconds * 1000)
    out = s.on_tick(WALL + idle_close + 15 * 60_000)  # nothing read for 15 min past idle_close_seconds
    finals = {k[:2] for k, v in partials(out).items() if v["final"]}
    assert (900, at(9, 0)) in finals and (60, at(9, 10)) in finals


def test_a_malformed_clock_moves_no_source() -> None:
    s, _t, _r = stage()
    s.on_batch([clocks(at(9, 0), 0)], WALL)
    bad = orjson.dumps({"clock": {"calls/0": [at(9, 30), False], "calls/1": ["late", False]}})
    out = s.on_batch([on_facts(bad, 1)], WALL)
    assert len(out.failures) == 1 and s.parts[0].sources["calls/0"] == [at(9, 0), False]


def test_a_shift_read_in_one_batch_comes_out_final_and_exact() -> None:
    # A replay or a worker catching up: the whole shift and the clocks saying it is over
    # arrive in one batch, before this stage knew any event time.
    s, _t, _r = stage()
    wall = at(18, 0)
    idle_clock = {f"{t}/{p}": [at(17, 0), True] for t in ("calls", "chats", "tickets", "agents")
                  for p in range(PARTITIONS)}
    batch = [on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
             on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "voice", at(9, 10), at(9, 20))).value, 0),
             on_agents(presence("e2", "agent.state_changed", at(12, 0), state="away", reason="lunch"), 1),
             on_agents(presence("e3", "agent.state_changed", at(12, 30), state="available"), 2),
             on_agents(presence("e4", "agent.logged_out", at(17, 0)), 3),
             on_facts(clock_fact(idle_clock).value, 1)]
    idle_close = int(settings().windows.idle_close_seconds * 1000)
    first: dict[tuple, dict] = {}
    last: dict[tuple, dict] = {}
    for out in (s.on_batch(batch, wall), s.on_tick(wall + idle_close + 3_600_000)):
        for key, value in partials(out).items():
            first.setdefault(key, value)
            last[key] = value
    agent = {k[1]: v for k, v in last.items() if k[0] == 900 and k[2] == "a"}
    assert sorted(agent) == [at(9, 0) + i * 900_000 for i in range(32)]  # 09:00 ... 16:45, none lost
    assert all(v["final"] for v in agent.values())
    assert agent[at(9, 0)]["agg"]["counts"] == {"staffed_ms": 900_000, "available_ms": 600_000,
                                                "on_contact_ms": 300_000}
    assert agent[at(12, 15)]["agg"]["counts"] == {"staffed_ms": 900_000, "away_ms": 900_000,
                                                  "away_ms:lunch": 900_000}
    assert last[(60, at(9, 15), "q", "billing", "voice")]["agg"]["counts"] == {"staffed_ms": 60_000,
                                                                               "on_contact_ms": 60_000}
    # Past its lateness when the batch was read: sent final, never open first.
    assert all(v["final"] for k, v in first.items() if s.windowing.end(k[0], k[1]) + 60_000 <= at(17, 0))
    assert s.parts[0].core.late_events == 0 and s.parts[0].core.late_ms == 0


def each_source(report: dict[str, list]) -> Consumed:
    """A clock with ``report`` over every expected source ("rest": every one not named)."""
    rest = report.pop("rest")
    full = {f"{t}/{p}": list(rest) for t in ("calls", "chats", "tickets", "agents") for p in range(PARTITIONS)}
    return on_facts(clock_fact({**full, **report}).value, 0)


def contact_behind(s: AgentStage, behind: list, wall: int) -> None:
    """Agent events up to 17:00 read; one contact source behind (``behind``)."""
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                on_agents(presence("e2", "agent.logged_out", at(17, 0)), 1),
                each_source({"calls/1": behind, "rest": [at(17, 0), False]})], wall)


def test_agent_events_ahead_of_a_contact_source_finalise_nothing_it_can_still_change() -> None:
    # calls/1 holds event time at 09:05 (its worker is slow, or restarting). No agent
    # event moves for a long while: event time must not follow the wall clock past it.
    s, _t, _r = stage()
    wall = at(18, 0)
    contact_behind(s, [at(9, 5), False], wall)
    assert s.parts[0].core.now == at(9, 5)
    idle_close = int(settings().windows.idle_close_seconds * 1000)
    s.on_tick(wall + idle_close + 3_600_000)
    assert s.parts[0].core.now == at(9, 5)
    # The pipeline catches up: the contact at 09:10 is counted, not late.
    out = s.on_batch([on_facts(contact_fact(AGENT, "c-1", 0, Contact(1, "billing", "voice", at(9, 10),
                                                                     at(9, 12))).value, 5),
                      each_source({"rest": [at(17, 0), True]})], wall + idle_close + 3_600_000)
    assert s.parts[0].core.late_ms == 0
    assert partials(out)[(900, at(9, 0), "a", AGENT, "")]["agg"]["counts"]["on_contact_ms"] == 120_000


def test_a_contact_source_with_records_waiting_and_no_time_yet_holds_agent_event_time() -> None:
    # A replay has just begun to fill calls/1: its reader reports it active with no time
    # of its own (-1, ccpulse/core/watermark.py), as the engine takes it: it holds event time.
    s, _t, _r = stage()
    contact_behind(s, [-1, False], at(18, 0))
    assert s.event_time(0) is None and s.parts[0].core.now is None
    s.on_batch([each_source({"calls/1": [at(9, 30), False], "rest": [at(17, 0), False]})], at(18, 0))
    assert s.parts[0].core.now == at(9, 30)


def test_contacts_ahead_of_an_agent_source_finalise_nothing_its_events_can_still_change() -> None:
    # The reverse: agents/1 (a keyless producer's partition, read by a slow worker) is at
    # 09:05 while the contacts are at 17:00. Its events, forwarded here, are not late.
    s, _t, _r = stage()
    wall = at(18, 0)
    s.on_batch([on_agents(presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]), 0),
                each_source({"agents/1": [at(9, 5), False], "rest": [at(17, 0), False]})], wall)
    idle_close = int(settings().windows.idle_close_seconds * 1000)
    later = wall + idle_close + 3_600_000
    s.on_tick(later)
    assert s.parts[0].core.now == at(9, 5)
    forwarded = s.on_batch([on_agents(presence("e2", "agent.state_changed", at(9, 10), state="away",
                                               reason="lunch"), 0, partition=1, key=None)], later).forwards
    out = s.on_batch([on_facts(forwarded[0].value, 5), each_source({"rest": [at(17, 0), True]})], later)
    assert s.parts[0].core.late_events == 0 and s.parts[0].core.late_ms == 0
    assert partials(out)[(900, at(9, 0), "a", AGENT, "")]["agg"]["counts"]["away_ms:lunch"] == 300_000
