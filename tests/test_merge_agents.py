"""The merge of the agent stage's outputs (issue 16): its window partials (``agents-<p>``)
give every ``kpi.windows`` / ``kpi.agents`` record the time-in-state figures, its
``agents_live`` partials give ``kpi.queue-state`` the live agent counts, occupancy now
and the staff the queue needs. No broker: a real ``AgentStage`` feeds a ``MergeStage``.
Expected seconds are worked out by hand from the scripted shift."""

from __future__ import annotations

import calendar
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from ccpulse.config import Settings, StaffingSettings, WindowSettings
from ccpulse.core.agents import Contact
from ccpulse.core.engine import LiveQueue, Snapshot
from ccpulse.core.kpis import AGENT, QUEUE, WindowAgg
from ccpulse.core.staffing import agents_required
from schemas.json_schemas import load
from streams.stages.agents import AgentStage, clock_fact, contact_fact
from streams.stages.io import Consumed
from streams.stages.merge import KPI_AGENTS, KPI_QUEUE_STATE, KPI_WINDOWS, MergeOutput, MergeStage
from streams.stages.partials import agents_live_partial, live_partial, window_partial
from streams.stages.pipeline import key_partition

PARTITIONS = 2
S = 1000
FACTS = "app-agent-facts"
WALL = calendar.timegm((2026, 11, 22, 12, 0, 0)) * 1000


def at(hh: int, mm: int, ss: int = 0) -> int:
    return calendar.timegm((2026, 11, 22, hh, mm, ss)) * 1000


def settings(**staffing: Any) -> Settings:
    base = Settings()
    return replace(base, kafka=replace(base.kafka, partitions=PARTITIONS),
                   windows=replace(WindowSettings(), sizes=(60, 900), allowed_lateness_seconds=60),
                   staffing=replace(StaffingSettings(), **staffing))


AGENT_ID = next(f"a-{i}" for i in range(100) if key_partition(f"a-{i}".encode(), PARTITIONS) == 0)


@dataclass
class Msg:
    key: bytes | None


def presence(eid: str, etype: str, ts: int, **extra: Any) -> Consumed:
    doc = {"event_id": eid, "type": etype, "occurred_at": f"2026-11-22T{ts // 3_600_000 % 24:02d}:"
           f"{ts // 60000 % 60:02d}:{ts // 1000 % 60:02d}Z", "agent_id": AGENT_ID, **extra}
    return Consumed("agents", 0, int(eid[1:]), orjson.dumps(doc), Msg(AGENT_ID.encode()))


def fact(value: bytes, offset: int) -> Consumed:
    return Consumed(FACTS, 0, offset, value, Msg(None))


def clocks(ts: int, offset: int) -> Consumed:
    report = {f"{t}/{p}": [ts, False] for t in ("calls", "chats", "tickets", "agents") for p in range(PARTITIONS)}
    return fact(clock_fact(report, {"billing": ["voice"]}).value, offset)


# The shift, 09:00-09:14 (window 09:00-09:15): logged in available; a call 09:01-09:03;
# after-contact work 09:03-09:04; available; lunch 09:10; logged out 09:14.
# staffed 840 s = available 420 (60 + 360) + on contact 120 + after-contact work 60 + away 240.
SHIFT = [presence("e1", "agent.logged_in", at(9, 0), queues=["billing"]),
         fact(contact_fact(AGENT_ID, "c-1", 0, Contact(1, "billing", "voice", at(9, 1), at(9, 3))).value, 0),
         presence("e2", "agent.state_changed", at(9, 3), state="after_contact_work"),
         presence("e3", "agent.state_changed", at(9, 4), state="available"),
         presence("e4", "agent.state_changed", at(9, 10), state="away", reason="lunch"),
         presence("e5", "agent.logged_out", at(9, 14))]
FIGURES = {"staffed_seconds": 840.0, "available_seconds": 420.0, "on_contact_seconds": 120.0,
           "after_contact_work_seconds": 60.0, "away_seconds": 240.0, "away_seconds_by_reason": {"lunch": 240.0},
           "occupancy": 180 / 600, "utilization": 180 / 840}
NONE = {"staffed_seconds": 0.0, "available_seconds": 0.0, "on_contact_seconds": 0.0,
        "after_contact_work_seconds": 0.0, "away_seconds": 0.0, "away_seconds_by_reason": {},
        "occupancy": None, "utilization": None}


def json_of(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))  # as the merge agent reads it


def shift_partials(until: int) -> list[dict[str, Any]]:
    """The agent stage's window partials of the shift, in the order it sends them, event
    time moved to 09:00 and then to ``until`` (a stage's first event time opens no window
    already closed at it)."""
    return shift(until)[0]


def shift(until: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """``shift_partials``, and the agent's own window records the stage publishes itself
    (kpi.agents key -> the newest record)."""
    stage = AgentStage(settings(), FACTS, {}, {})
    first = stage.on_batch([*SHIFT, clocks(at(9, 0), 1)], WALL)
    then = stage.on_batch([clocks(until, 2)], WALL + 1000)
    return ([json_of(m.value) for m in first.partials + then.partials],
            {m.key.decode(): json_of(m.value) for m in first.agent_windows + then.agent_windows})


def pipeline_window(start: int, size: int, *, scope: str = QUEUE, name: str = "billing", channel: str = "voice",
                    final: bool = True, **counts: int) -> dict[str, Any]:
    key = (size, start, scope, name, channel)
    _, value = window_partial(0, Snapshot(key, WindowAgg(dict(counts), {}), final, 3, 0, 0),
                              start + size * S, start + size * S)
    return json_of(value)


class Merge:
    def __init__(self, s: Settings | None = None) -> None:
        self.table: dict[str, Any] = {}
        self.stage = MergeStage(s or settings(), self.table)

    def batch(self, *partials: Any) -> MergeOutput:
        return self.stage.on_batch([Consumed("p", 0, i, p, ("origin", i)) for i, p in enumerate(partials)],
                                   generation=1, now_ms=WALL, mono=1000.0)


def published(out: MergeOutput, topic: str) -> dict[str, dict[str, Any]]:
    return {p.key.decode(): p.value for p in out.records if p.topic == topic}


def valid(record: dict[str, Any], schema: str) -> list[str]:
    return [e.message for e in Draft202012Validator(load(schema)).iter_errors(record)]


# -- windows ----------------------------------------------------------------------------


def test_the_agent_stage_s_windows_give_queue_and_agent_records_their_time_in_state() -> None:
    parts, agents = shift(at(9, 17))  # past 09:15 + 60 s lateness: final
    merge = Merge()
    out = merge.batch(pipeline_window(at(9, 0), 900, offered=2, answered=1), *parts)
    queue = published(out, KPI_WINDOWS)["15m|2026-11-22T09:00:00.000Z|billing|voice"]
    assert {k: queue[k] for k in FIGURES} == FIGURES
    # the contact side is untouched, and the agent part is a source of its own
    assert (queue["offered"], queue["answered"], queue["final"]) == (2, 1, True)
    assert set(merge.table["15m|2026-11-22T09:00:00.000Z|billing|voice"]["parts"]) == {"0", "agents-0"}
    # The agent's own window has no other source: the stage publishes it, not the merge.
    assert not published(out, KPI_AGENTS)
    agent = agents[f"15m|2026-11-22T09:00:00.000Z|{AGENT_ID}|"]
    assert {k: agent[k] for k in FIGURES} == FIGURES and agent["channel"] == "" and agent["final"]
    assert not valid(queue, "kpi-window") and not valid(agent, "agent-window")
    # The 1-minute windows split at their boundaries: 09:03 is after-contact work, 09:10 lunch.
    minute = published(out, KPI_WINDOWS)
    assert minute["1m|2026-11-22T09:03:00.000Z|billing|voice"]["after_contact_work_seconds"] == 60.0
    assert minute["1m|2026-11-22T09:10:00.000Z|billing|voice"]["away_seconds_by_reason"] == {"lunch": 60.0}


def test_an_open_agent_part_is_replaced_by_the_newer_one_and_never_added_to_it() -> None:
    merge = Merge()
    merge.batch(*shift_partials(at(9, 5)))
    out = merge.batch(*shift_partials(at(9, 17)))
    queue = published(out, KPI_WINDOWS)["15m|2026-11-22T09:00:00.000Z|billing|voice"]
    assert queue["staffed_seconds"] == 840.0 and queue["final"]
    # a re-delivered older part changes nothing
    again = merge.batch(*shift_partials(at(9, 5)))
    assert "15m|2026-11-22T09:00:00.000Z|billing|voice" not in published(again, KPI_WINDOWS)


@pytest.mark.parametrize("scope, name, schema", [(QUEUE, "billing", "kpi-window"),
                                                 (AGENT, "a-9", "agent-window")])
def test_a_window_without_agent_parts_carries_the_state_figures_as_0_empty_and_null(
        scope: str, name: str, schema: str) -> None:
    out = Merge().batch(pipeline_window(at(9, 0), 900, scope=scope, name=name, offered=1, answered=1))
    record = next(iter(published(out, KPI_WINDOWS if scope == QUEUE else KPI_AGENTS).values()))
    assert {k: record[k] for k in NONE} == NONE
    assert not valid(record, schema)


def test_old_records_without_the_state_figures_still_match_the_schemas() -> None:
    out = Merge().batch(pipeline_window(at(9, 0), 900, offered=1),
                        pipeline_window(at(9, 0), 900, scope=AGENT, name="a-9", answered=1))
    for topic, schema in ((KPI_WINDOWS, "kpi-window"), (KPI_AGENTS, "agent-window")):
        record = next(iter(published(out, topic).values()))
        for name in NONE:
            del record[name]
        assert not valid(record, schema), schema


# -- live -------------------------------------------------------------------------------


def live_part(partition: int, counts: dict[str, int], event_time: int, queue: str = "billing",
              channel: str = "voice") -> dict[str, Any]:
    return json_of(agents_live_partial(partition, queue, channel, counts, event_time)[1])


def contacts_live(queue: str = "billing", channel: str = "voice", busy: tuple[str, ...] = ("a-1",)) -> dict[str, Any]:
    return json_of(live_partial(0, queue, channel, LiveQueue(Counter({at(9, 59): 2}), Counter(busy), 0),
                                7, at(10, 0))[1])


def pipeline_minute(channel: str, queue: str = "billing", **counts: int) -> dict[str, Any]:
    return pipeline_window(at(9, 50), 60, name=queue, channel=channel, **counts)


def queue_state(out: MergeOutput, queue: str = "billing", channel: str = "voice") -> dict[str, Any]:
    return published(out, KPI_QUEUE_STATE)[f"{queue}|{channel}"]


def test_queue_state_sums_the_live_agent_counts_of_every_agent_partition() -> None:
    merge = Merge()
    out = merge.batch(
        pipeline_minute("voice", offered=90, handled=30, handle_ms=30 * 180 * S), contacts_live(),
        live_part(0, {"staffed": 4, "available": 1, "on_contact": 2, "away": 1, "away:lunch": 1}, at(10, 0)),
        live_part(1, {"staffed": 3, "available": 1, "after_contact_work": 1, "away": 1, "away:break": 1}, at(10, 0)))
    state = queue_state(out)
    assert (state["agents_staffed"], state["agents_available"], state["agents_on_contact"],
            state["agents_after_contact_work"], state["agents_away"]) == (7, 2, 2, 1, 2)
    assert state["agents_away_by_reason"] == {"break": 1, "lunch": 1}
    assert state["occupancy_now"] == 3 / 5
    # Erlang C at 90 offered in the last 15 minutes (0.1/s), AHT 180 s, voice target 80 % in 20 s
    required = agents_required(90 / 900, 180.0, 0.80, 20.0)
    assert required == 22  # 18 Erlangs; independently: SL(21) = 0.716, SL(22) = 0.822
    assert state["agents_required"] == required and state["agents_gap"] == required - (7 - 2)
    # the contact side is unchanged
    assert (state["waiting"], state["agents_busy"]) == (2, 1)
    assert not valid(state, "queue-state")


def test_a_partition_whose_agents_left_is_dropped_and_an_older_count_changes_nothing() -> None:
    merge = Merge()
    merge.batch(live_part(0, {"staffed": 2, "available": 2}, at(10, 0)),
                live_part(1, {"staffed": 1, "available": 1}, at(10, 0)))
    out = merge.batch(live_part(0, {}, at(10, 1)))
    assert queue_state(out)["agents_staffed"] == 1
    assert merge.batch(live_part(0, {"staffed": 9}, at(9, 59))) == MergeOutput()  # redelivered, older
    assert merge.table["live|billing|voice"]["parts"]["agents-0"]["counts"] == {}


def test_staffing_is_null_until_a_handle_time_is_known_and_for_tickets() -> None:
    merge = Merge()
    out = merge.batch(pipeline_minute("voice", offered=5), pipeline_minute("email", offered=5, handled=1,
                                                                           handle_ms=600 * S),
                      live_part(0, {"staffed": 2, "available": 2}, at(10, 0)),
                      live_part(0, {"staffed": 2, "available": 2}, at(10, 0), channel="email"))
    voice, email = queue_state(out), queue_state(out, channel="email")
    assert (voice["agents_required"], voice["agents_gap"]) == (None, None)
    assert (email["agents_required"], email["agents_gap"]) == (None, None)
    assert voice["occupancy_now"] == 0.0 and voice["agents_staffed"] == 2


def test_chat_staffing_divides_the_sessions_by_the_configured_concurrency() -> None:
    merge = Merge(settings(chat_sessions_per_agent=2))
    out = merge.batch(pipeline_minute("chat", offered=90, handled=30, handle_ms=30 * 180 * S),
                      live_part(0, {"staffed": 5, "available": 5}, at(10, 0), channel="chat"))
    sessions = agents_required(90 / 900, 180.0, 0.80, 60.0)  # chat: 60 s threshold
    state = queue_state(out, channel="chat")
    assert state["agents_required"] == -(-sessions // 2) and state["agents_gap"] == -(-sessions // 2) - 5


def test_a_queue_with_contacts_and_no_agent_events_publishes_zero_agents() -> None:
    state = queue_state(Merge().batch(contacts_live()))
    assert (state["agents_staffed"], state["agents_away_by_reason"], state["occupancy_now"]) == (0, {}, None)
    assert not valid(state, "queue-state")


def test_the_agent_stage_s_live_counts_reach_queue_state() -> None:
    stage = AgentStage(settings(), FACTS, {}, {})
    stage.on_batch([*SHIFT[:2], clocks(at(9, 2), 1)], WALL)  # on the call at 09:02
    parts = [live_part(0, counts, at(9, 2), queue, channel) for (queue, channel), counts in stage.live(0).items()]
    state = queue_state(Merge().batch(*parts))
    assert (state["agents_staffed"], state["agents_on_contact"], state["agents_available"]) == (1, 1, 0)
    assert state["occupancy_now"] == 1.0


@pytest.mark.parametrize("counts", [{"staffed": "two"}, {"staffed": 1.5}, {"staffed": -1}, ["staffed"], None])
def test_a_bad_agents_live_partial_fails_alone(counts: Any) -> None:
    merge = Merge()
    good = live_part(0, {"staffed": 1}, at(10, 0))
    bad = {**live_part(1, {"staffed": 1}, at(10, 0)), "counts": counts}
    out = merge.batch(bad, good)
    assert len(out.failures) == 1 and "counts" in str(out.failures[0].error)
    assert queue_state(out)["agents_staffed"] == 1


def test_same_day_accepts_the_agent_fields_a_stream_without_agent_events_gives() -> None:
    """``ccpulse same-day`` against a version before issue 16 (records with only the fields
    the schemas require): a field it lacks is accepted while 0 or null, and an empty map
    (no away reason) is as empty."""
    from ccpulse.tools.same_day import compare_keyed
    out = Merge().batch(pipeline_window(at(9, 0), 900, offered=1),
                        pipeline_window(at(9, 0), 900, scope=AGENT, name="a-9", answered=1))
    for topic, schema in ((KPI_WINDOWS, "kpi-window"), (KPI_AGENTS, "agent-window")):
        new = published(out, topic)
        required = set(load(schema)["required"])
        old = {k: {name: v for name, v in record.items() if name in required} for k, record in new.items()}
        diff = compare_keyed(topic, old, new)
        assert diff.same and NONE.keys() <= diff.added, diff.first()


def test_the_queue_s_own_service_level_target_sizes_it_and_none_gives_null() -> None:
    from ccpulse.core.sla import MIN as AT_LEAST, SlaTargets, Target
    strict = {"service_level": Target("service_level", AT_LEAST, 0.95)}
    s = settings()
    s = replace(s, targets=SlaTargets(queues={("billing", "voice"): strict, ("spare", "voice"): {}}))
    parts = [pipeline_minute("voice", queue=q, offered=90, handled=30, handle_ms=30 * 180 * S)
             for q in ("billing", "spare")]
    out = Merge(s).batch(*parts, live_part(0, {"staffed": 20}, at(10, 0)),
                         live_part(0, {"staffed": 20}, at(10, 0), queue="spare"))
    assert queue_state(out)["agents_required"] == agents_required(0.1, 180.0, 0.95, 20.0) == 25  # SL(24) = 0.934
    assert (queue_state(out, "spare")["agents_required"], queue_state(out, "spare")["agents_gap"]) == (None, None)
