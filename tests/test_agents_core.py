"""ccpulse/core/agents.py: time in state split at window boundaries, METRICS.md's
attribution per queue, live counts, de-duplication, lateness and folding. Pure: no services."""

from __future__ import annotations

import calendar
import json

import pytest

from ccpulse.core.agents import (
    ACW_MS, ANY_CHANNEL, AVAILABLE_MS, AWAY_MS, LOGGED_IN, LOGGED_OUT, ON_CONTACT_MS, STAFFED,
    STATE_CHANGED, AgentCore, Contact, Presence,
)
from ccpulse.core.kpis import AGENT, QUEUE, occupancy, utilization
from ccpulse.core.windowing import Windowing

SIZES = (60, 900, 3600, 86400)
LATE = 120_000
H9 = calendar.timegm((2026, 11, 22, 9, 0, 0)) * 1000  # 09:00:00Z


def at(hh: int, mm: int, ss: int = 0) -> int:
    return calendar.timegm((2026, 11, 22, hh, mm, ss)) * 1000


def core(sizes: tuple[int, ...] = SIZES, tz: str = "UTC", day_start: int = 0) -> AgentCore:
    return AgentCore(Windowing(sizes, tz, day_start), LATE)


def figures(c: AgentCore) -> dict:
    """Every window the core reported, the last report of each."""
    out: dict = {}
    for change in c.take():
        out[change.key] = change.counters
    return out


def login(ts: int, eid: str, *queues: str, state: str | None = None, reason: str | None = None) -> Presence:
    return Presence(ts, eid, LOGGED_IN, state, reason, tuple(queues))


def change(ts: int, eid: str, state: str, reason: str | None = None, queues: tuple[str, ...] | None = None) -> Presence:
    return Presence(ts, eid, STATE_CHANGED, state, reason, queues)


def test_the_boundary_split_of_metrics_md() -> None:
    # available 08:59:30-09:00:45 adds 30 s to 08:59 and 45 s to 09:00
    c = core()
    c.advance(at(8, 59, 0))
    c.apply("a-1", login(at(8, 59, 30), "e1", "billing"))
    c.apply("a-1", change(at(9, 0, 45), "e2", "away", "break"))
    c.advance(at(9, 0, 45))
    f = figures(c)
    assert f[(60, at(8, 59), QUEUE, "billing", ANY_CHANNEL)][AVAILABLE_MS] == 30_000
    assert f[(60, at(9, 0), QUEUE, "billing", ANY_CHANNEL)][AVAILABLE_MS] == 45_000
    assert f[(900, at(8, 45), AGENT, "a-1", ANY_CHANNEL)][AVAILABLE_MS] == 30_000
    assert f[(900, at(9, 0), AGENT, "a-1", ANY_CHANNEL)] == {STAFFED: 45_000, AVAILABLE_MS: 45_000}
    c.advance(at(9, 2, 0))
    f = figures(c)
    assert f[(60, at(9, 1), QUEUE, "billing", ANY_CHANNEL)] == {STAFFED: 60_000, AWAY_MS: 60_000,
                                                                "away_ms:break": 60_000}


def test_the_split_follows_the_day_start_and_time_zone() -> None:
    # Kolkata +05:30, day starting 06:00 local = 00:30Z: 00:29:30Z-00:30:45Z crosses the day.
    c = core(tz="Asia/Kolkata", day_start=6)
    c.advance(at(0, 0))
    c.apply("a-1", login(at(0, 29, 30), "e1", "q"))
    c.apply("a-1", Presence(at(0, 30, 45), "e2", LOGGED_OUT))
    c.advance(at(0, 31))
    f = figures(c)
    day = [(k, v) for k, v in f.items() if k[0] == 86400 and k[2] == AGENT]
    assert sorted((k[1], v[STAFFED]) for k, v in day) == [(at(0, 30) - 86_400_000, 30_000), (at(0, 30), 45_000)]
    # the 1 h windows follow the +05:30 offset: they start at hh:30Z
    hours = sorted((k[1], v[STAFFED]) for k, v in f.items() if k[0] == 3600 and k[2] == AGENT)
    assert hours == [(at(23, 30) - 86_400_000, 30_000), (at(0, 30), 45_000)]


def test_on_contact_wins_and_counts_for_the_contacts_queue_and_channel() -> None:
    c = core()
    c.advance(at(9, 0))
    c.apply("a-1", login(at(9, 0), "e1", "billing", "sales"))
    c.upsert("a-1", ("c-1", 0), Contact(1, "support", "voice", at(9, 1), at(9, 3)))
    c.apply("a-1", change(at(9, 3), "e2", "after_contact_work"))
    c.apply("a-1", change(at(9, 4), "e3", "available"))
    c.advance(at(9, 5))
    hour = {k[3:]: v for k, v in figures(c).items() if k[0] == 3600}
    assert hour[("a-1", ANY_CHANNEL)] == {STAFFED: 300_000, AVAILABLE_MS: 120_000, ON_CONTACT_MS: 120_000,
                                         ACW_MS: 60_000}
    # staffed and available: every queue served; on contact and ACW: the contact's queue x channel
    for q in ("billing", "sales"):
        assert hour[(q, ANY_CHANNEL)] == {STAFFED: 300_000, AVAILABLE_MS: 120_000}
    assert hour[("support", "voice")] == {ON_CONTACT_MS: 120_000, ACW_MS: 60_000}


def test_acw_counts_for_the_contact_that_ended_last() -> None:
    c = core()
    c.advance(at(9, 0))
    c.apply("a-1", login(at(9, 0), "e1", "q"))
    c.upsert("a-1", ("c-1", 0), Contact(1, "billing", "voice", at(9, 0), at(9, 2)))
    c.upsert("a-1", ("c-2", 0), Contact(1, "sales", "chat", at(9, 1), at(9, 3)))
    c.apply("a-1", change(at(9, 3), "e2", "after_contact_work"))
    c.advance(at(9, 4))
    hour = {k[3:]: v for k, v in figures(c).items() if k[0] == 3600 and k[2] == QUEUE}
    assert hour[("sales", "chat")] == {ON_CONTACT_MS: 120_000, ACW_MS: 60_000}
    assert hour[("billing", "voice")] == {ON_CONTACT_MS: 120_000}


def test_an_agent_without_presence_events_is_only_on_contact() -> None:
    c = core()
    c.advance(at(9, 0))
    c.upsert("a-9", ("c-1", 0), Contact(1, "billing", "voice", at(9, 0), at(9, 1)))
    c.advance(at(9, 30))
    agent = figures(c)[(900, at(9, 0), AGENT, "a-9", ANY_CHANNEL)]
    assert agent == {ON_CONTACT_MS: 60_000}
    assert utilization(agent.get(ON_CONTACT_MS, 0), 0, agent.get(STAFFED, 0)) is None
    assert c.instant("a-9").state is None  # type: ignore[union-attr]


def test_occupancy_and_utilization() -> None:
    assert occupancy(30, 10, 40) == 0.5
    assert occupancy(0, 0, 0) is None
    assert utilization(30, 10, 80) == 0.5
    assert utilization(5, 0, 0) is None


def test_out_of_order_within_lateness_equals_in_order_and_duplicates_count_once() -> None:
    events = [login(at(9, 0), "e1", "q"), change(at(9, 1, 10), "e2", "away", "lunch"),
              change(at(9, 2, 20), "e3", "available"), Presence(at(9, 3), "e4", LOGGED_OUT)]
    ordered, shuffled = core(), core()
    for c, seq in ((ordered, events), (shuffled, [events[2], events[0], events[3], events[2], events[1]])):
        c.advance(at(9, 0))
        for i, p in enumerate(seq):
            c.apply("a-1", p)
            c.advance(at(9, 0) + 30_000 * (i + 1))
        c.advance(at(9, 10))
    assert figures(ordered) == figures(shuffled) != {}
    assert shuffled.duplicates == 1


def test_a_later_contact_version_replaces_and_a_removal_retracts() -> None:
    c = core()
    c.advance(at(9, 0))
    c.apply("a-1", login(at(9, 0), "e1", "q"))
    c.upsert("a-1", ("c-1", 0), Contact(1, "q", "voice", at(9, 1), None))
    c.advance(at(9, 2))
    c.upsert("a-1", ("c-1", 0), Contact(3, "q", "voice", at(9, 1), at(9, 1, 30)))
    assert not c.upsert("a-1", ("c-1", 0), Contact(2, "q", "voice", at(9, 1), None))  # older: ignored
    c.advance(at(9, 3))
    assert figures(c)[(900, at(9, 0), AGENT, "a-1", ANY_CHANNEL)][ON_CONTACT_MS] == 30_000
    c.remove("a-1", ("c-1", 0), 4, at(9, 1))  # the answer moved to another agent
    c.advance(at(9, 4))
    assert ON_CONTACT_MS not in figures(c)[(900, at(9, 0), AGENT, "a-1", ANY_CHANNEL)]
    assert not c.upsert("a-1", ("c-1", 0), Contact(3, "q", "voice", at(9, 1), at(9, 1, 30)))


def test_late_changes_leave_final_windows_alone() -> None:
    c = core()
    c.advance(at(9, 0))
    c.apply("a-1", login(at(9, 0), "e1", "q"))
    c.advance(at(9, 10))
    first = figures(c)
    final_minute = (60, at(9, 5), QUEUE, "q", ANY_CHANNEL)
    assert first[final_minute] == {STAFFED: 60_000, AVAILABLE_MS: 60_000}
    c.apply("a-1", Presence(at(9, 5), "e2", LOGGED_OUT))  # 5 min late: its minute is final
    assert c.late_events == 1 and c.late_ms > 0
    after = figures(c)
    assert final_minute not in after  # not sent again
    assert after[(900, at(9, 0), AGENT, "a-1", ANY_CHANNEL)][STAFFED] == 300_000  # open: corrected


def test_final_windows_are_reported_once_and_memory_is_folded() -> None:
    c = core(sizes=(60, 900))
    c.advance(at(9, 0))
    c.apply("a-1", login(at(9, 0), "e1", "q"))
    for i in range(12):
        c.apply("a-1", change(at(9, 5 * i + 1), f"s{i}", "away" if i % 2 else "available", "break"))
        c.upsert("a-1", (f"c-{i}", 0), Contact(1, "q", "voice", at(9, 5 * i + 2), at(9, 5 * i + 3)))
    c.advance(at(10, 30))
    changes = c.take()
    finals = [ch.key for ch in changes if ch.final]
    assert len(finals) == len(set(finals))
    timeline = c.agents["a-1"]
    assert not timeline.events and len(timeline.contacts) == 1  # only the last ended contact stays
    assert c.instant("a-1").state == "away"  # type: ignore[union-attr]
    # an event folded away arrives again: nothing changes
    assert not c.apply("a-1", change(at(9, 1), "s0", "available"))


def test_live_counts_per_queue() -> None:
    c = core()
    c.advance(at(9, 0))
    c.apply("a-1", login(at(9, 0), "e1", "billing", "sales"))
    c.apply("a-2", login(at(9, 0), "e2", "billing", state="away", reason="lunch"))
    c.apply("a-3", login(at(9, 0), "e3", "billing"))
    c.upsert("a-3", ("c-1", 0), Contact(1, "billing", "voice", at(9, 1), None))
    c.apply("a-4", login(at(9, 0), "e4", "sales"))
    c.upsert("a-4", ("c-2", 0), Contact(1, "sales", "chat", at(9, 1), at(9, 2)))
    c.apply("a-4", change(at(9, 2), "e5", "after_contact_work"))
    c.advance(at(9, 3))
    live = c.live()
    assert live[("billing", ANY_CHANNEL)] == {"staffed": 3, "available": 1, "away": 1, "away:lunch": 1}
    assert live[("sales", ANY_CHANNEL)] == {"staffed": 2, "available": 1}
    assert live[("billing", "voice")] == {"on_contact": 1}
    assert live[("sales", "chat")] == {"after_contact_work": 1}


@pytest.mark.parametrize("cut", [1, 3, 5])
def test_snapshot_restore_and_the_redelivered_tail_give_the_same_figures(cut: int) -> None:
    w = Windowing(SIZES)
    script = [("p", login(at(9, 0), "e1", "q")), ("t", at(9, 1)),
              ("c", Contact(1, "q", "voice", at(9, 1, 30), None)), ("t", at(9, 2)),
              ("c", Contact(2, "q", "voice", at(9, 1, 30), at(9, 3))), ("p", change(at(9, 3), "e2", "away", "x")),
              ("t", at(9, 4)), ("p", Presence(at(9, 5), "e3", LOGGED_OUT)), ("t", at(9, 20))]

    def feed(c: AgentCore, steps: list) -> dict:
        out: dict = {}
        for kind, item in steps:
            if kind == "p":
                c.apply("a-1", item)
            elif kind == "c":
                c.upsert("a-1", ("c-1", 0), item)
            else:
                c.advance(item)
            out.update({ch.key: ch.counters for ch in c.take()})
        return out

    whole = feed(AgentCore(w, LATE), script)
    first = AgentCore(w, LATE)
    seen = feed(first, script[:cut + 2])
    restored = AgentCore.restore(w, LATE, json.loads(json.dumps(first.snapshot())))
    seen.update(feed(restored, script[cut:]))
    assert seen == whole


def test_moving_event_time_costs_nothing_per_agent_until_figures_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import ccpulse.core.agents as agents

    c = core()
    c.advance(at(9, 0))
    for i in range(50):
        c.apply(f"a-{i}", login(at(9, 0), f"e{i}", "q"))
    c.take()
    calls = []
    real = agents.time_in_state
    monkeypatch.setattr(agents, "time_in_state", lambda *a: calls.append(1) or real(*a))
    for ms in range(1000, 50_000, 1000):  # 49 moves within one minute: no window closes
        c.advance(at(9, 0) + ms)
    assert not calls
    f = {ch.key: ch.counters for ch in c.take()}  # reading them accrues every agent once
    assert len(calls) == 50 and f[(60, at(9, 0), QUEUE, "q", ANY_CHANNEL)][STAFFED] == 50 * 49_000
    calls.clear()
    c.advance(at(9, 3))  # the 09:00 minute closes: every agent accrues once, first
    assert len(calls) == 50
    assert [ch for ch in c.take() if ch.final][0].counters[STAFFED] == 50 * 60_000


def test_published_figures_in_seconds_with_the_ratios() -> None:
    from ccpulse.core.agents import state_figures

    counts = {STAFFED: 3_600_000, AVAILABLE_MS: 900_000, ON_CONTACT_MS: 1_800_000, ACW_MS: 300_000,
              AWAY_MS: 600_000, "away_ms:lunch": 450_000, "away_ms:": 150_000, "handled": 4}
    f = state_figures(counts)
    assert f == {"staffed_seconds": 3600.0, "available_seconds": 900.0, "on_contact_seconds": 1800.0,
                 "after_contact_work_seconds": 300.0, "away_seconds": 600.0,
                 "away_seconds_by_reason": {"": 150.0, "lunch": 450.0},
                 "occupancy": 2_100_000 / 3_000_000, "utilization": 2_100_000 / 3_600_000}
    empty = state_figures({ON_CONTACT_MS: 1000})
    assert empty["staffed_seconds"] == 0 and empty["utilization"] is None and empty["occupancy"] == 1.0
    assert state_figures({})["occupancy"] is None and state_figures({})["away_seconds_by_reason"] == {}


def shift(c: AgentCore) -> None:
    """A whole shift of two agents, 09:00-17:00, as a backlog read in one go."""
    c.apply("a-1", login(at(9, 0), "e1", "billing", "sales"))
    c.upsert("a-1", ("c-1", 0), Contact(2, "billing", "voice", at(9, 10), at(9, 20)))
    c.apply("a-1", change(at(9, 20), "e2", "after_contact_work"))
    c.apply("a-1", change(at(9, 22), "e3", "available"))
    c.apply("a-1", change(at(12, 0), "e4", "away", "lunch"))
    c.apply("a-1", change(at(12, 30), "e5", "available"))
    c.upsert("a-1", ("c-2", 1), Contact(2, "sales", "chat", at(16, 50), at(17, 5)))
    c.apply("a-1", Presence(at(17, 0), "e6", LOGGED_OUT))
    c.apply("a-2", login(at(10, 0), "f1", "sales", state="away", reason="training"))
    c.upsert("a-2", ("c-3", 0), Contact(1, "sales", "voice", at(13, 0), None))


def shift_reference(now: int, sizes: tuple[int, ...]) -> dict:
    from tests.reference_agents import recount

    presence = {"a-1": [(at(9, 0), "e1", LOGGED_IN, None, None, ("billing", "sales")),
                        (at(9, 20), "e2", STATE_CHANGED, "after_contact_work", None, None),
                        (at(9, 22), "e3", STATE_CHANGED, "available", None, None),
                        (at(12, 0), "e4", STATE_CHANGED, "away", "lunch", None),
                        (at(12, 30), "e5", STATE_CHANGED, "available", None, None),
                        (at(17, 0), "e6", LOGGED_OUT, None, None, None)],
                "a-2": [(at(10, 0), "f1", LOGGED_IN, "away", "training", ("sales",))]}
    contacts = {"a-1": {("c-1", 0): ("billing", "voice", at(9, 10), at(9, 20)),
                        ("c-2", 1): ("sales", "chat", at(16, 50), at(17, 5))},
                "a-2": {("c-3", 0): ("sales", "voice", at(13, 0), None)}}
    return recount(presence, contacts, at(8, 0), now, 60_000, sizes)


@pytest.mark.parametrize("sizes", [SIZES, (60, 900)], ids=["with a day", "15 min longest"])
@pytest.mark.parametrize("warm", [False, True], ids=["cold start", "worker behind"])
def test_a_backlog_read_in_one_go_gives_every_window_final_and_exact(warm: bool, sizes: tuple[int, ...]) -> None:
    # A replay, a connector's --from-start, a worker catching up: the whole shift is
    # read before event time moves, then event time jumps past hundreds of windows.
    c = core(sizes)
    if warm:
        c.advance(at(8, 0))  # event time known, far behind what the batch carries
    shift(c)
    now = at(17, 30)
    c.advance(now)
    changes = c.take()
    got = {ch.key: ch.counters for ch in changes}
    expected = {k: v for k, v in shift_reference(now, sizes).items() if v}
    assert got == expected
    w = c.windowing
    for ch in changes:  # past its lateness: sent final, never open first
        assert ch.final == (w.end(ch.key[0], ch.key[1]) + LATE <= now), ch.key
    assert got[(900, at(9, 0), AGENT, "a-1", ANY_CHANNEL)] == {
        STAFFED: 900_000, AVAILABLE_MS: 600_000, ON_CONTACT_MS: 300_000}
    assert c.late_events == 0 and c.late_ms == 0  # read before any of it was final: none late
    # Once final, an event for 17:10 IS late: its window was final before it was read.
    c.apply("a-1", change(at(17, 10), "e9", "away", "x"))
    assert c.late_events == 1 and c.late_ms > 0


def test_an_open_contact_counts_at_most_the_horizon_after_its_answer() -> None:
    # Answered at 09:00, never ended, horizon 1 h: on contact 09:00-10:00 only, and the
    # windows after 10:00 become final with nothing (the pipeline's expiry ends it there too).
    c = AgentCore(Windowing(SIZES), LATE, horizon_ms=3_600_000)
    c.advance(at(8, 59))
    c.upsert("a-1", ("i1", 0), Contact(1, "billing", "voice", H9, None))
    c.advance(at(12, 0))
    f = figures(c)
    assert f[(3600, at(9, 0), AGENT, "a-1", ANY_CHANNEL)] == {ON_CONTACT_MS: 3_600_000}
    assert f[(3600, at(9, 0), QUEUE, "billing", "voice")] == {ON_CONTACT_MS: 3_600_000}
    for hh in (10, 11):
        assert not f.get((3600, at(hh, 0), AGENT, "a-1", ANY_CHANNEL))
        assert not f.get((900, at(hh, 30), AGENT, "a-1", ANY_CHANNEL))
    assert c.instant("a-1").state is None
    # The expiry's end, when it comes, changes nothing; nor does a restore.
    c.upsert("a-1", ("i1", 0), Contact(2, "billing", "voice", H9, H9 + 3_600_000))
    c.advance(at(13, 0))
    assert c.late_ms == 0
    figures(c)
    assert c.windows[(86400, at(0, 0), AGENT, "a-1", ANY_CHANNEL)] == {ON_CONTACT_MS: 3_600_000}
    again = AgentCore(Windowing(SIZES), LATE)  # a snapshot stored without the cap
    again.advance(at(8, 59))
    again.upsert("a-1", ("i1", 0), Contact(1, "billing", "voice", H9, None))
    restored = AgentCore.restore(Windowing(SIZES), LATE, json.loads(json.dumps(again.snapshot())),
                                 horizon_ms=3_600_000)
    restored.advance(at(13, 0))
    figures(restored)
    assert restored.windows[(86400, at(0, 0), AGENT, "a-1", ANY_CHANNEL)] == {ON_CONTACT_MS: 3_600_000}
