"""Agent events far ahead of the calls in a backlog close no agent window early (issue 16:
"a crash or a rebalance changes no figure"; the figures must not depend on how far apart
the topics are read). No broker: a real ``PipelineStage`` and a real ``AgentStage``, their
outputs carried the way the topics deliver them (rekey and agent-facts partitions in
order, clocks to every partition), the finals compared with a brute-force recount
(tests/reference_agents.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ccpulse.config import Settings
from ccpulse.core.timestamps import format_ms
from schemas.events import parse_timestamp_ms
from streams.stages.agents import AgentOutput, AgentStage, clock_fact
from streams.stages.io import Consumed, Message
from streams.stages.pipeline import Checkpoint, PipelineStage, key_partition
from tests.agents_support import as_partial, call, stage_settings
from tests.agents_support import iid_on as support_iid_on
from tests.reference_agents import recount

PARTITIONS = 2
REKEY, FACTS = "ccpulse-rekey", "ccpulse-agent-facts"
T0 = parse_timestamp_ms("2026-01-05T08:00:00Z")
HOUR, MIN = 3_600_000, 60_000
NOW = T0 + 6 * HOUR  # the wall clock: the backlog is hours old
LATENESS_MS = 60_000
SIZES = (60, 900)
INPUTS = ("calls", "chats", "tickets")


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    offset: int


def settings() -> Settings:
    return stage_settings(PARTITIONS, sizes=SIZES, allowed_lateness_seconds=LATENESS_MS / 1000,
                          interaction_horizon_seconds=3600)


def iid_on(partition: int, prefix: str) -> str:
    return support_iid_on(partition, PARTITIONS, prefix)


def agent_event(eid: str, kind: str, ts: int, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": eid, "type": f"agent.{kind}", "occurred_at": format_ms(ts),
                         "agent_id": "ann", **extra})


class Topics:
    """The pipeline and the agent stage, with <app>-rekey and <app>-agent-facts between
    them as Kafka delivers them; every partial the agent stage sends, in order."""

    def __init__(self) -> None:
        self.pipeline = PipelineStage(settings(), REKEY)
        self.table: dict[str, Any] = {}
        self.records: dict[str, Any] = {}
        self.agents = AgentStage(settings(), FACTS, self.table, self.records)
        self.offsets: dict[tuple[str, int], int] = {}
        self.rekey: dict[int, list[Rec]] = {p: [] for p in range(PARTITIONS)}
        self.sent: list[dict[str, Any]] = []

    def _next(self, topic: str, p: int) -> int:
        n = self.offsets.get((topic, p), 0)
        self.offsets[topic, p] = n + 1
        return n

    def facts(self, keyed: list[Message], everywhere: list[Message], now: int) -> None:
        records = [Consumed(FACTS, p, self._next(FACTS, p), m.value)
                   for m in keyed for p in [key_partition(m.key, PARTITIONS)]]
        records += [Consumed(FACTS, p, self._next(FACTS, p), m.value) for m in everywhere for p in range(PARTITIONS)]
        self.collect(self.agents.on_batch(records, now), now)

    def collect(self, out: AgentOutput, now: int) -> None:
        self.sent += [m.value for m in out.partials]
        self.sent += [as_partial(m.value, self.agents.windowing.sizes)[1] for m in out.agent_windows]
        if out.forwards or out.clocks:  # the agent stage's own clock comes back through the topic
            self.facts(out.forwards, out.clocks, now)

    def read_agents(self, events: list[bytes], now: int) -> None:
        p = key_partition(b"ann", PARTITIONS)
        records = [Consumed("agents", p, self._next("agents", p), raw, Rec(b"ann", raw, 0)) for raw in events]
        self.collect(self.agents.on_batch(records, now), now)
        self.agents_tick(now)

    def agents_tick(self, now: int) -> None:
        self.collect(self.agents.on_tick(now, {("agents", p): True for p in range(PARTITIONS)}), now)

    def checkpoint(self, now: int) -> Checkpoint:
        """The pipeline's checkpoint written: rekey (forwards, then clocks), agent facts, then their clocks."""
        out = self.pipeline.checkpoint(now)
        for m in out.rekey:
            p = key_partition(m.key, PARTITIONS)
            self.rekey[p].append(Rec(m.key, m.value, self._next(REKEY, p)))
        for m in out.clocks:
            for p in range(PARTITIONS):
                self.rekey[p].append(Rec(None, m.value, self._next(REKEY, p)))
        self.facts(out.agent_facts, out.agent_clocks, now)
        return out

    def read_rekey(self, now: int) -> None:
        for p in range(PARTITIONS):
            records, self.rekey[p] = self.rekey[p], []
            self.pipeline.on_batch(REKEY, p, records, now)

    def inputs_caught_up(self, now: int) -> None:
        self.pipeline.reading(now, {(t, p): True for t in INPUTS for p in range(PARTITIONS)})

    def restart_agents(self) -> None:
        """The agent stage's worker restarted (or its partitions moved): rebuilt from its tables."""
        self.agents = AgentStage(settings(), FACTS, self.table, self.records)
        for p in range(PARTITIONS):
            self.agents.assign(p)

    def settle(self, now: int, seconds: int = 10) -> int:
        """Both sides tick once a second with nothing new to read; the wall clock after."""
        for _ in range(seconds):
            now += 1000
            self.pipeline.on_tick(now, {(t, p): True for t in INPUTS for p in range(PARTITIONS)})
            self.checkpoint(now)
            self.read_rekey(now)
            self.checkpoint(now)
            self.agents_tick(now)
        return now

    def ann(self) -> Any:
        return self.agents.parts[key_partition(b"ann", PARTITIONS)].core


def test_agent_events_hours_ahead_close_no_window_a_forwarded_contact_still_changes() -> None:
    # The agent side of the backlog is read to 12:00 before the contact side has its facts
    # out: ann's call 08:02-08:06 was produced without a key on calls/0, so the pipeline
    # forwards it through <app>-rekey to the partition its interaction lives on, which
    # applies it (and sends its facts) only once it reads <app>-rekey. calls/0 and calls/1
    # were read to 10:00 meanwhile: their input clocks say so before those facts exist.
    t = Topics()
    t.read_agents([agent_event("a1", "logged_in", T0, queues=["billing"]),
                   agent_event("a2", "state_changed", T0 + 30 * MIN, state="away", reason="lunch"),
                   agent_event("a3", "state_changed", T0 + 90 * MIN, state="available"),
                   agent_event("a4", "logged_out", T0 + 4 * HOUR)], NOW)
    x, y, z = iid_on(1, "x"), iid_on(0, "y"), iid_on(1, "z")
    t.pipeline.on_batch("calls", 0, [Rec(None, call(x, 1, "offered", T0 + 1 * MIN), 0),
                                     Rec(None, call(x, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1),
                                     Rec(None, call(x, 3, "ended", T0 + 6 * MIN), 2),
                                     Rec(y.encode(), call(y, 1, "offered", T0 + 2 * HOUR), 3)], NOW)
    t.pipeline.on_batch("calls", 1, [Rec(z.encode(), call(z, 1, "offered", T0 + 2 * HOUR), 0)], NOW)
    idle_ms = int(settings().windows.source_idle_seconds * 1000)
    t.inputs_caught_up(NOW)
    t.inputs_caught_up(NOW + idle_ms)  # chats and tickets: nothing to read, reported idle
    t.checkpoint(NOW + idle_ms)
    t.agents_tick(NOW + idle_ms)
    before_facts = len(t.sent)
    # Now the pipeline reads <app>-rekey: the call is applied on partition 1, its facts go out.
    t.read_rekey(NOW + idle_ms)
    t.checkpoint(NOW + idle_ms)
    t.read_rekey(NOW + idle_ms)
    t.checkpoint(NOW + idle_ms)
    t.agents_tick(NOW + idle_ms + 1000)

    core = t.agents.parts[key_partition(b"ann", PARTITIONS)].core
    event_time = core.now
    assert event_time is not None and event_time >= T0 + 2 * HOUR - 1000
    early = [tuple(p["key"]) for p in t.sent[:before_facts]
             if p["final"] and p["key"][1] < T0 + 6 * MIN and p["key"][1] + p["key"][0] * 1000 > T0 + 2 * MIN]
    assert early == [], f"published final before the call's facts were read: {early[:4]}"
    assert (core.late_events, core.late_ms) == (0, 0)

    # Every final window equals a recount from scratch of what was sent.
    presence = {"ann": [(T0, "a1", "logged_in", None, None, ("billing",)),
                        (T0 + 30 * MIN, "a2", "state_changed", "away", "lunch", None),
                        (T0 + 90 * MIN, "a3", "state_changed", "available", None, None),
                        (T0 + 4 * HOUR, "a4", "logged_out", None, None, None)]}
    contacts = {"ann": {(x, 0): ("billing", "voice", T0 + 2 * MIN, T0 + 6 * MIN)}}
    expected = recount(presence, contacts, T0, event_time, 1000, SIZES)
    finals = {tuple(p["key"]): p for p in t.sent if p["final"]}
    assert finals, "no window went final"
    for key, partial in finals.items():
        size, start, scope, name, channel = key
        want = dict(expected.get(key, {}))
        if scope == "q":  # a queue's staffed, available, away time go on each channel's record
            want.update(expected.get((size, start, scope, name, ""), {}))
        assert partial["agg"]["counts"] == want, (format_ms(start), key)
    assert finals[(900, T0, "a", "ann", "")]["agg"]["counts"]["on_contact_ms"] == 4 * MIN


def finals_match_a_recount(t: Topics, presence: list[tuple], contacts: dict[Any, tuple]) -> None:
    """Every final window sent equals a recount from scratch, and none was sent twice differently."""
    expected = recount({"ann": presence}, {"ann": contacts}, T0, t.ann().now, 1000, SIZES)
    finals: dict[tuple, dict[str, Any]] = {}
    for partial in t.sent:
        key = tuple(partial["key"])
        if key in finals:
            assert partial["agg"] == finals[key]["agg"], ("a final window changed", key)
        if partial["final"]:
            finals[key] = partial
    assert finals, "no window went final"
    for key, partial in finals.items():
        size, start, scope, name, channel = key
        want = dict(expected.get(key, {}))
        if scope == "q":
            want.update(expected.get((size, start, scope, name, ""), {}))
        assert partial["agg"]["counts"] == want, (format_ms(start), key)


SHIFT = [(T0, "a1", "logged_in", None, None, ("billing",)),
         (T0 + 6 * MIN, "a2", "state_changed", "away", "lunch", None),
         (T0 + 10 * MIN, "a3", "state_changed", "available", None, None),
         (T0 + 14 * MIN, "a4", "logged_out", None, None, None)]


def shift_events(rows: list[tuple]) -> list[bytes]:
    out = []
    for ts, eid, kind, state, reason, queues in rows:
        extra = {k: v for k, v in (("state", state), ("reason", reason), ("queues", queues)) if v is not None}
        out.append(agent_event(eid, kind, ts, **extra))
    return out


def test_an_idle_claim_older_than_the_agent_events_closes_nothing_before_the_calls_are_read() -> None:
    # Every input idle, and said so once, long ago. Then a burst: the agent events of
    # 08:00-08:14 are read, and the calls of the same minutes, produced a moment later,
    # are read by the pipeline after that. The claim "calls/0 has nothing to read" was
    # made before the agent events moved event time: it may not let it pass them.
    t = Topics()
    idle_ms = int(settings().windows.source_idle_seconds * 1000)
    wall = t.settle(NOW + idle_ms)
    t.read_agents(shift_events(SHIFT), wall)
    before = len(t.sent)
    c, tick = iid_on(0, "c"), iid_on(1, "t")
    t.pipeline.on_batch("calls", 0, [Rec(c.encode(), call(c, 1, "offered", T0 + 1 * MIN), 0),
                                     Rec(c.encode(), call(c, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1),
                                     Rec(c.encode(), call(c, 3, "ended", T0 + 5 * MIN), 2)], wall)
    t.pipeline.on_batch("calls", 1, [Rec(tick.encode(), call(tick, 1, "offered", T0 + 40 * MIN), 0)], wall)
    t.inputs_caught_up(wall)
    t.checkpoint(wall)
    early = [tuple(p["key"]) for p in t.sent[:before] if p["final"]]
    assert early == [], f"final before the calls were read: {early[:4]}"
    t.settle(wall)
    core = t.ann()
    assert core.now is not None and core.now >= T0 + 30 * MIN
    assert (core.late_events, core.late_ms) == (0, 0)
    finals_match_a_recount(t, SHIFT, {(c, 0): ("billing", "voice", T0 + 2 * MIN, T0 + 5 * MIN)})


def test_after_a_restart_the_idle_claims_read_before_it_hold_until_said_again() -> None:
    # The first minutes read and reported by both sides, all quiet; the agent stage's
    # worker restarts (its partitions rebuilt from the tables, with the sources as they
    # were). Its agent backlog is read first; the call of the same minutes is read by the
    # pipeline after. The stored "calls/0 idle" is from before the restart.
    t = Topics()
    idle_ms = int(settings().windows.source_idle_seconds * 1000)
    wall = NOW
    t.read_agents(shift_events(SHIFT[:1]), wall)
    c, tick = iid_on(0, "c"), iid_on(1, "t")
    t.pipeline.on_batch("calls", 1, [Rec(tick.encode(), call(tick, 1, "offered", T0 + 3 * MIN), 0)], wall)
    wall = t.settle(wall + idle_ms)
    stored = t.ann().now
    assert stored is not None and T0 < stored < T0 + 4 * MIN
    t.restart_agents()
    t.read_agents(shift_events(SHIFT[1:]), wall)
    before = len(t.sent)
    t.pipeline.on_batch("calls", 0, [Rec(c.encode(), call(c, 1, "offered", T0 + 4 * MIN), 0),
                                     Rec(c.encode(), call(c, 2, "answered", T0 + 7 * MIN, agent_id="ann"), 1),
                                     Rec(c.encode(), call(c, 3, "ended", T0 + 9 * MIN), 2)], wall)
    t.pipeline.on_batch("calls", 1, [Rec(tick.encode(), call(tick, 2, "abandoned", T0 + 40 * MIN), 1)], wall)
    t.inputs_caught_up(wall)
    t.checkpoint(wall)
    early = [tuple(p["key"]) for p in t.sent[:before] if p["final"] and p["key"][1] >= T0 + 4 * MIN]
    assert early == [], f"final before the call was read: {early[:4]}"
    t.settle(wall)
    core = t.ann()
    assert core.now is not None and core.now >= T0 + 30 * MIN
    assert (core.late_events, core.late_ms) == (0, 0)
    finals_match_a_recount(t, SHIFT, {(c, 0): ("billing", "voice", T0 + 7 * MIN, T0 + 9 * MIN)})


def test_a_quiet_night_with_both_senders_saying_their_clocks_again_moves_event_time_on() -> None:
    # Everything idle; the pipeline's partitions follow the wall clock (lifecycle/p moves a
    # second a tick), the agent stage says its idle `agents` clock again each tick, and the
    # two land in the same order every time (agents first). An idle claim lets event time go
    # as far as anything had reached when it was said: it moves on, a tick behind.
    s = AgentStage(settings(), FACTS, {}, {})
    start = T0 + HOUR

    def clock(report: dict[str, list], offset: int) -> Consumed:
        return Consumed(FACTS, 0, offset, clock_fact(report).value)

    agents = {f"agents/{p}": [start, True] for p in range(PARTITIONS)}
    inputs = {f"{t}/{p}": [start, True] for t in INPUTS for p in range(PARTITIONS)}
    offset = 0
    for second in range(10):
        pipeline = {**inputs, **{f"lifecycle/{p}": [start + second * 1000, True] for p in range(PARTITIONS)}}
        s.on_batch([clock(agents, offset), clock(pipeline, offset + 1)], NOW + second * 1000)
        offset += 2
    assert s.parts[0].core.now == start + 8 * 1000
