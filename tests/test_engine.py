"""The partition engine: retractions, lateness, finality, totals and recovery."""

from __future__ import annotations

import calendar
import math
import random
from typing import Any, Iterable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpulse.config import DEFAULT_THRESHOLDS
from ccpulse.core.engine import Outcome, PartitionEngine, PartitionRecord
from ccpulse.core.kpis import WindowAgg
from ccpulse.core.lifecycle import Interaction, Step
from ccpulse.core.windowing import Windowing

S = 1000
MIN = 60 * S
T0 = calendar.timegm((2026, 11, 22, 9, 0, 0)) * 1000  # 09:00:00 UTC
W0, W1, W2 = T0, T0 + MIN, T0 + 2 * MIN
VOICE = DEFAULT_THRESHOLDS["voice"]


def thresholds(queue: str, channel: str) -> Any:
    return VOICE


def make_engine(sizes: tuple[int, ...] = (60,), lateness_s: float = 120, horizon_s: float = 3600,
                record: PartitionRecord | None = None) -> PartitionEngine:
    return PartitionEngine(0, Windowing(sizes), lateness_s, thresholds, horizon_s, record)


OK, LATE, DUP = (False, False), (False, True), (True, False)


def flags(outcome: Outcome) -> tuple[bool, bool]:
    return outcome.duplicate, outcome.late


class Feed:
    """Drives an engine like the lifecycle agent does: one Interaction per id."""

    def __init__(self, engine: PartitionEngine) -> None:
        self.engine = engine
        self.inters: dict[str, Interaction] = {}
        self.offset = -1

    def __call__(self, iid: str, step: Step, offset: int | None = None) -> Outcome:
        inter = self.inters.get(iid)
        if inter is None:
            inter = self.inters[iid] = Interaction(iid, "voice", partition=0)
        self.offset = self.offset + 1 if offset is None else offset
        return self.engine.apply(inter, step, self.offset)


def normal(agg: WindowAgg) -> tuple[dict[str, int], dict[str, list[int]]]:
    return ({k: v for k, v in agg.counts.items() if v}, {k: sorted(v) for k, v in agg.tops.items() if v})


def normal_windows(windows: dict[Any, WindowAgg]) -> dict[Any, Any]:
    return {k: normal(a) for k, a in windows.items() if not a.is_empty()}


def normal_totals(totals: Iterable[tuple[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out = {k: {n: v for n, v in c.items() if v} for k, c in totals}
    return {k: c for k, c in out.items() if c}


def plain(counts: dict[str, int]) -> dict[str, int]:
    """Counters without the wait sketch's buckets (checked separately: they are the sketch's business)."""
    return {k: v for k, v in counts.items() if v and not k.startswith("wait_sk:")}


def plain_totals(engine: PartitionEngine) -> dict[str, dict[str, int]]:
    return {k: plain(c) for k, c in normal_totals(engine.record.totals.items()).items()}


def sketch_size(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("wait_sk:"))


def qkey(start: int, queue: str = "billing", size: int = 60) -> tuple:
    return (size, start, "q", queue, "voice")


def win(engine: PartitionEngine, start: int, queue: str = "billing", size: int = 60) -> dict[str, int]:
    agg = engine.windows.get(qkey(start, queue, size))
    if agg is None:
        return {}
    counts = normal(agg)[0]
    # Every answered wait is in the sketch, once.
    assert sketch_size(counts) == counts.get("answered", 0)
    return plain(counts)


def off(ts: int, eid: str, queue: str = "billing") -> Step:
    return Step(ts, "offered", eid, queue)


def ans(ts: int, eid: str, agent: str = "a-1") -> Step:
    return Step(ts, "answered", eid, agent=agent)


def aba(ts: int, eid: str) -> Step:
    return Step(ts, "abandoned", eid)


def end(ts: int, eid: str, wrapup_ms: int = 0) -> Step:
    return Step(ts, "ended", eid, wrapup_ms=wrapup_ms)


def xfer(ts: int, eid: str, to_queue: str | None = None) -> Step:
    return Step(ts, "transferred", eid, to_queue=to_queue)


# The scripted scenario: (interaction, step) in delivery order.
SCENARIO: list[tuple[str, Step]] = [
    ("A", off(T0 + 5 * S, "A1")), ("A", ans(T0 + 5 * S, "A2")),  # immediate
    ("B", off(T0 + 10 * S, "B1")), ("B", ans(T0 + 40 * S, "B2")),  # 30 s: over target
    ("C", off(T0 + 20 * S, "C1")), ("C", aba(T0 + 23 * S, "C2")),  # 3 s: short abandon
    ("D", off(T0 + 30 * S, "D1")), ("D", aba(T0 + 45 * S, "D2")),  # 15 s: abandon within target
    ("E", ans(T0 + 65 * S, "E2")), ("E", off(T0 + 50 * S, "E1")),  # answer before offer; 15 s, in W1
    ("F", off(T0 + 55 * S, "F1")),
    ("G", off(T0 + 61 * S, "G1")),
    ("A", xfer(T0 + 62 * S, "A3")),  # to another agent: a transfer in W1
    ("A", end(T0 + 70 * S, "A4", wrapup_ms=10 * S)),  # handle 65 s + 10 s, in W1
    ("G", xfer(T0 + 70 * S, "G2", to_queue="sales")),  # leaves billing waiting: transferred_out
    ("G", ans(T0 + 80 * S, "G3")),  # answered in sales after 10 s
    ("H", off(T0 + 90 * S, "H1")),  # still waiting
    ("F", aba(T0 + 100 * S, "F2")),  # 45 s, in W1: not within target
]

EXPECTED_W0_BILLING = {
    "offered": 6, "answered": 2, "abandoned": 1, "short_abandoned": 1, "answered_within_target": 1,
    "abandoned_within_target": 1, "answered_immediately": 1, "wait_answered_ms": 30_000,
    "wait_abandoned_ms": 15_000, "wait_bucket_0": 1, "wait_bucket_5": 1,
}
EXPECTED_W0_TOPS = {"wait_answered_max_ms": [0, 30_000], "wait_abandoned_max_ms": [15_000]}
EXPECTED_W1_BILLING = {
    "offered": 2, "answered": 1, "abandoned": 1, "answered_within_target": 1, "wait_answered_ms": 15_000,
    "wait_abandoned_ms": 45_000, "wait_bucket_3": 1, "transferred_out": 1, "transfers": 1,
    "handled": 1, "handle_ms": 75_000,
}
EXPECTED_W1_SALES = {
    "offered": 1, "answered": 1, "answered_within_target": 1, "wait_answered_ms": 10_000, "wait_bucket_2": 1,
}


def run_scenario(engine: PartitionEngine) -> Feed:
    feed = Feed(engine)
    for iid, step in SCENARIO:
        outcome = feed(iid, step)
        assert flags(outcome) == OK, (iid, step)
    return feed


def test_scripted_scenario_windows() -> None:
    engine = make_engine()
    run_scenario(engine)
    assert win(engine, W0) == EXPECTED_W0_BILLING
    assert normal(engine.windows[qkey(W0)])[1] == EXPECTED_W0_TOPS
    # W1 billing: A's agent transfer is a transfer; G, moved to sales while waiting, is transferred_out.
    assert win(engine, W1) == EXPECTED_W1_BILLING
    assert normal(engine.windows[qkey(W1)])[1] == {
        "wait_answered_max_ms": [15_000], "wait_abandoned_max_ms": [45_000]}
    assert win(engine, W1, "sales") == EXPECTED_W1_SALES
    assert set(normal_windows(engine.windows)) == {qkey(W0), qkey(W1),
                                                   qkey(W1, "sales")}
    rec = engine.record
    assert rec.watermark == T0 + 100 * S
    assert rec.last_offset == len(SCENARIO) - 1
    assert (rec.late_events, rec.duplicates, rec.final_through, rec.totals) == (0, 0, 0, {})


def test_scenario_with_a_second_window_size() -> None:
    engine = make_engine(sizes=(60, 900))
    run_scenario(engine)
    both = {k: EXPECTED_W0_BILLING.get(k, 0) + EXPECTED_W1_BILLING.get(k, 0)
            for k in set(EXPECTED_W0_BILLING) | set(EXPECTED_W1_BILLING)}
    assert win(engine, T0, size=900) == both
    assert win(engine, T0, "sales", size=900) == EXPECTED_W1_SALES
    assert win(engine, W0) == EXPECTED_W0_BILLING


def test_close_finalizes_after_lateness_and_moves_totals() -> None:
    engine = make_engine()
    run_scenario(engine)
    assert engine.close() == []  # W0 closes at 09:01 + 2 min; the watermark is 09:01:40
    assert engine.record.final_through == T0 + 100 * S
    engine.advance(W1 + 2 * MIN - 1)
    assert engine.close() == []
    engine.advance(W1 + 2 * MIN)  # exactly end + lateness
    finals = engine.close()
    assert [s.key for s in finals] == [qkey(W0)]
    assert finals[0].final and plain(normal(finals[0].agg)[0]) == EXPECTED_W0_BILLING
    assert finals[0].version == engine.version(final=True)
    assert qkey(W0) not in engine.windows
    assert plain_totals(engine) == {"billing|voice": EXPECTED_W0_BILLING}
    assert engine.record.final_through == W1 + 2 * MIN
    engine.advance(W2 + 2 * MIN)
    finals = engine.close()
    assert {s.key for s in finals} == {qkey(W1), qkey(W1, "sales")}
    billing = {k: EXPECTED_W0_BILLING.get(k, 0) + EXPECTED_W1_BILLING.get(k, 0)
               for k in set(EXPECTED_W0_BILLING) | set(EXPECTED_W1_BILLING)}
    assert plain_totals(engine) == {"billing|voice": billing, "sales|voice": EXPECTED_W1_SALES}
    assert engine.windows == {}


def test_totals_count_only_the_smallest_size() -> None:
    engine = make_engine(sizes=(60, 900))
    run_scenario(engine)
    engine.advance(T0 + 900 * S + 2 * MIN)
    finals = engine.close()
    assert {s.key[0] for s in finals} == {60, 900}
    assert {s.key[2] for s in finals} == {"q", "a"}  # agent windows exist for 15 min, never in totals
    billing = {k: EXPECTED_W0_BILLING.get(k, 0) + EXPECTED_W1_BILLING.get(k, 0)
               for k in set(EXPECTED_W0_BILLING) | set(EXPECTED_W1_BILLING)}
    assert plain_totals(engine) == {"billing|voice": billing, "sales|voice": EXPECTED_W1_SALES}


def test_reconciliation_of_waiting_contacts() -> None:
    """waiting_at_start + offered = answered + abandoned + short_abandoned + transferred_out + waiting_at_end."""
    engine = make_engine()
    run_scenario(engine)
    snaps = {s.key: (s.waiting_at_start, s.waiting_at_end) for s in engine.take_dirty()}
    # W0 billing: 6 offered; A, B answered, C short, D abandoned: E and F still wait at 09:01.
    # W1 billing: G and H offered; E answered, F abandoned, G transferred out: H still waits.
    assert snaps == {qkey(W0): (0, 2), qkey(W1): (2, 1), qkey(W1, "sales"): (0, 0)}
    engine.advance(W1 + 2 * MIN)
    finals = engine.close()
    assert [(s.key, s.waiting_at_start, s.waiting_at_end) for s in finals] == [(qkey(W0), 0, 2)]
    # With W0 final, W1 still starts from the two contacts W0 left waiting.
    engine.dirty.add(qkey(W1))
    snaps = {s.key: (s.waiting_at_start, s.waiting_at_end) for s in engine.take_dirty()}
    assert snaps[qkey(W1)] == (2, 1)


def test_duplicates_change_nothing() -> None:
    engine = make_engine()
    feed = run_scenario(engine)
    before = normal_windows(engine.windows)
    held = {iid: i.to_bytes() for iid, i in feed.inters.items()}
    for n, (iid, step) in enumerate(SCENARIO[::3]):
        assert flags(feed(iid, step)) == DUP
        assert engine.record.duplicates == n + 1
    # A retry with the same id but another time (a buggy producer) is still the same event.
    assert flags(feed("B", ans(T0 + 90 * S, "B2"))) == DUP
    assert engine.record.duplicates == len(SCENARIO[::3]) + 1
    assert normal_windows(engine.windows) == before
    assert {iid: i.to_bytes() for iid, i in feed.inters.items()} == held
    assert engine.record.watermark == T0 + 100 * S
    assert engine.record.late_events == 0


def test_retraction_when_an_earlier_step_arrives() -> None:
    """An abandon read first, then an earlier answer: the abandon is retracted."""
    engine = make_engine()
    feed = Feed(engine)
    feed("X", off(T0, "X1"))
    feed("X", aba(T0 + 30 * S, "X3"))
    assert win(engine, W0) == {"offered": 1, "abandoned": 1, "wait_abandoned_ms": 30_000}
    assert normal(engine.windows[qkey(W0)])[1] == {"wait_abandoned_max_ms": [30_000]}
    feed("X", ans(T0 + 10 * S, "X2"))  # the caller was answered; the later abandon is an orphan
    assert win(engine, W0) == {"offered": 1, "answered": 1, "answered_within_target": 1,
                               "wait_answered_ms": 10_000, "wait_bucket_2": 1}
    assert normal(engine.windows[qkey(W0)])[1] == {"wait_answered_max_ms": [10_000]}
    assert engine.record.late_events == 0


def test_late_event_after_close_is_refused() -> None:
    engine = make_engine()
    feed = run_scenario(engine)
    engine.advance(W1 + 2 * MIN)
    engine.close()
    totals = normal_totals(engine.record.totals.items())
    open_windows = normal_windows(engine.windows)
    # An offer in W0, which is final: refused, counted as late, nothing changes.
    outcome = feed("I", off(T0 + 30 * S, "I1"))
    assert flags(outcome) == LATE
    assert engine.record.late_events == 1
    assert normal_totals(engine.record.totals.items()) == totals
    assert normal_windows(engine.windows) == open_windows
    assert qkey(W0) not in engine.windows
    # A late abandon of a W0 contact whose exit falls in W0 as well.
    assert flags(feed("I", aba(T0 + 40 * S, "I2"))) == LATE
    assert engine.record.late_events == 2
    assert normal_totals(engine.record.totals.items()) == totals
    assert normal_windows(engine.windows) == open_windows


def test_partly_late_interaction() -> None:
    """Offer in a final window, answer in an open one: the open part counts, the final one is kept."""
    engine = make_engine()
    feed = run_scenario(engine)
    engine.advance(W1 + 2 * MIN)
    engine.close()
    totals = normal_totals(engine.record.totals.items())
    assert flags(feed("J", ans(W2 + 30 * S, "J2"))) == OK  # an orphan for now: no facts
    assert flags(feed("J", off(T0 + 50 * S, "J1"))) == LATE
    assert engine.record.late_events == 1
    assert win(engine, W2) == {"answered": 1, "wait_answered_ms": 100_000, "wait_bucket_9": 1}
    assert normal_totals(engine.record.totals.items()) == totals
    # Later steps of the same interaction, on time and changing no final window, are not late.
    assert flags(feed("J", end(W2 + 50 * S, "J3"))) == OK
    assert flags(feed("J", Step(W2 + 55 * S, "rated", "J4"))) == OK
    assert engine.record.late_events == 1
    assert win(engine, W2) == {"answered": 1, "wait_answered_ms": 100_000, "wait_bucket_9": 1,
                               "handled": 1, "handle_ms": 20_000}


def test_steps_after_a_refused_change_are_not_late() -> None:
    engine = make_engine(lateness_s=0)
    feed = Feed(engine)
    feed("K", off(T0, "K1"))
    feed("K", ans(T0 + 5 * S, "K2"))
    engine.advance(W1)
    engine.close()
    assert flags(feed("K", end(T0 + 50 * S, "K3"))) == LATE  # its handle time belongs to W0
    assert engine.record.late_events == 1
    for n in range(3):
        assert flags(feed("K", Step(W1 + n * S, "rated", f"K-r{n}"))) == OK
    assert engine.record.late_events == 1
    assert engine.windows == {}


def test_watermark_only_moves_forward() -> None:
    engine = make_engine()
    feed = Feed(engine)
    feed("A", off(T0 + 50 * S, "A1"))
    feed("B", off(T0 + 10 * S, "B1"))
    assert engine.record.watermark == T0 + 50 * S
    engine.advance(T0)
    assert engine.record.watermark == T0 + 50 * S
    engine.advance(T0 + 70 * S)
    assert engine.record.watermark == T0 + 70 * S


def crash_and_recover(engine: PartitionEngine, inters: dict[str, Interaction]) -> tuple[PartitionEngine,
                                                                                       dict[str, Interaction]]:
    """What survives a crash: the record and the interactions, through their JSON changelog form."""
    record = PartitionRecord.from_dict(orjson.loads(orjson.dumps(engine.record.to_dict())))
    copies = {iid: Interaction.from_dict(orjson.loads(orjson.dumps(i.to_dict()))) for iid, i in inters.items()}
    fresh = PartitionEngine(0, Windowing(engine.sizes), engine.lateness_ms / 1000, thresholds,
                            engine.horizon_ms / 1000, record)
    fresh.rebuild(copies.values())
    return fresh, copies


def test_rebuild_reproduces_the_open_windows() -> None:
    engine = make_engine(sizes=(60, 900))
    feed = run_scenario(engine)
    engine.advance(W1 + 2 * MIN)
    engine.close()  # W0 (1 min) is final, its facts are still in the interactions
    feed("I", off(T0 + 30 * S, "I1"))  # late: refused
    feed("X", off(W2 + 5 * S, "X1"))
    feed("X", aba(W2 + 30 * S, "X2"))
    feed("X", ans(W2 + 20 * S, "X3"))  # retracts the abandon
    fresh, copies = crash_and_recover(engine, feed.inters)
    assert normal_windows(fresh.windows) == normal_windows(engine.windows)
    assert qkey(W0) not in fresh.windows
    assert qkey(T0, size=900) in fresh.windows
    assert fresh.dirty == set(fresh.windows)
    assert fresh.record == engine.record
    # Both continue identically.
    feed2 = Feed(fresh)
    feed2.inters, feed2.offset = copies, feed.offset
    for f in (feed, feed2):
        f("X", end(W2 + 80 * S, "X4"))
        f("H", ans(W2 + 40 * S, "H2"))
        f.engine.advance(T0 + 900 * S + 2 * MIN)
    assert [(s.key, normal(s.agg)) for s in fresh.close()] == [(s.key, normal(s.agg)) for s in engine.close()]
    assert fresh.record == engine.record


def test_rebuild_replaces_whatever_was_there() -> None:
    engine = make_engine()
    feed = run_scenario(engine)
    expected = normal_windows(engine.windows)
    engine.windows[qkey(T0 - MIN, "ghost")] = WindowAgg({"offered": 9})
    engine.rebuild(feed.inters.values())
    assert normal_windows(engine.windows) == expected


# -- expiry -------------------------------------------------------------------------------


def test_expirable_ended_vs_unfinished() -> None:
    engine = make_engine(lateness_s=120, horizon_s=3600)
    feed = run_scenario(engine)
    inters = feed.inters
    # Nothing is final yet: nothing may be forgotten.
    assert not any(engine.expirable(i) for i in inters.values())
    feed("A", Step(T0 + 200 * S, "rated", "A5"))  # A's last step: 09:03:20
    engine.advance(W2 + 2 * MIN)  # 09:04: W0 and W1 final
    engine.close()
    # Ended (A, after its rating) or abandoned (C, D, F): forgotten once quiet for the lateness.
    assert not engine.expirable(inters["A"])  # quiet for 40 s only
    assert engine.expirable(inters["C"]) and engine.expirable(inters["D"]) and engine.expirable(inters["F"])
    # Answered and never ended (B, E, G) or still waiting (H): kept up to the horizon.
    for iid in "BEGH":
        assert not engine.expirable(inters[iid]), iid
    engine.advance(T0 + 320 * S)
    assert engine.expirable(inters["A"])  # 120 s after its last step
    engine.advance(T0 + 90 * S + 3600 * S - 1)
    engine.close()
    assert not engine.expirable(inters["H"])
    engine.advance(T0 + 90 * S + 3600 * S)  # exactly the horizon after H's offer
    assert engine.expirable(inters["H"])
    assert all(engine.expirable(i) for i in inters.values())


def test_not_expirable_while_a_window_is_open() -> None:
    engine = make_engine(lateness_s=0, horizon_s=60)
    feed = Feed(engine)
    feed("A", off(T0, "A1"))
    feed("A", end(T0 + 5 * S, "A2"))
    engine.advance(T0 + 10 * MIN)  # quiet far past lateness and horizon, but W0 was never closed
    assert not engine.expirable(feed.inters["A"])
    engine.close()
    assert engine.expirable(feed.inters["A"])


def test_orphans_expire_at_the_horizon() -> None:
    engine = make_engine(lateness_s=120, horizon_s=3600)
    feed = Feed(engine)
    feed("O", ans(T0, "O1"))
    assert engine.facts(feed.inters["O"]) == {}
    engine.advance(T0 + 3600 * S - 1)
    engine.close()
    assert not engine.expirable(feed.inters["O"])
    engine.advance(T0 + 3600 * S)
    assert engine.expirable(feed.inters["O"])


def test_count_expired_kinds() -> None:
    engine = make_engine()
    feed = run_scenario(engine)
    feed("O", end(T0 + 5 * S, "O1"))  # an orphan
    inters = feed.inters
    for iid in ("A", "C", "D", "O", "H", "B"):
        engine.count_expired(inters[iid])
    rec = engine.record
    assert rec.expired == 6
    assert rec.expired_orphans == 1  # O
    assert rec.expired_unfinished == 2  # H (waiting), B (answered, never ended)
    # Completed: A (ended), C and D (abandoned): 6 - 1 - 2.


# -- running totals and versions -------------------------------------------------------------


def test_running_totals_are_totals_plus_open_windows() -> None:
    engine = make_engine(sizes=(60, 900))
    run_scenario(engine)
    billing_all = {k: EXPECTED_W0_BILLING.get(k, 0) + EXPECTED_W1_BILLING.get(k, 0)
                   for k in set(EXPECTED_W0_BILLING) | set(EXPECTED_W1_BILLING)}

    def running() -> dict[str, dict[str, int]]:
        rows = list(engine.running_totals())
        assert len({(q, c) for q, c, _ in rows}) == len(rows)
        return {k: plain(c) for k, c in normal_totals((f"{q}|{c}", x) for q, c, x in rows).items()}

    expected = {"billing|voice": billing_all, "sales|voice": EXPECTED_W1_SALES}
    assert running() == expected  # all open (the 900 s window is not added on top)
    engine.advance(W1 + 2 * MIN)
    engine.close()
    assert plain_totals(engine) == {"billing|voice": EXPECTED_W0_BILLING}
    assert running() == expected  # W0 final, W1 open
    engine.advance(W2 + 2 * MIN)
    engine.close()
    assert running() == expected  # all final (the 900 s window still open)
    assert plain_totals(engine) == expected
    assert all(k[0] == 900 for k in engine.windows)


def test_running_totals_count_queues_only() -> None:
    engine = make_engine(sizes=(900,))
    run_scenario(engine)
    assert any(k[2] == "a" for k in engine.windows)  # per-agent windows exist at 15 minutes...
    # ... but the cumulative counters are per queue only.
    assert sorted((q, c) for q, c, _ in engine.running_totals()) == [("billing", "voice"), ("sales", "voice")]
    billing = {k: EXPECTED_W0_BILLING.get(k, 0) + EXPECTED_W1_BILLING.get(k, 0)
               for k in set(EXPECTED_W0_BILLING) | set(EXPECTED_W1_BILLING)}
    totals = {f"{q}|{c}": plain(x) for q, c, x in engine.running_totals()}
    assert totals == {"billing|voice": billing, "sales|voice": EXPECTED_W1_SALES}


def test_running_totals_do_not_modify_the_record() -> None:
    engine = make_engine()
    run_scenario(engine)
    engine.advance(W1 + 2 * MIN)
    engine.close()
    before = {k: dict(v) for k, v in engine.record.totals.items()}
    list(engine.running_totals())
    list(engine.running_totals())
    assert engine.record.totals == before


def test_version_grows_with_the_offset_and_final_wins() -> None:
    engine = make_engine()
    feed = Feed(engine)
    assert engine.version(final=False) == 0 and engine.version(final=True) == 1
    feed("A", off(T0, "A1"), offset=41)
    assert engine.record.last_offset == 41
    assert engine.version(final=False) == 84 and engine.version(final=True) == 85
    feed("A", ans(T0 + S, "A2"), offset=10)  # an older offset never lowers it
    assert engine.record.last_offset == 41
    feed("A", ans(T0 + S, "A2"), offset=42)  # a duplicate still advances the offset
    assert engine.version(final=False) == 86
    assert engine.version(final=False) > 85  # a later open snapshot outranks an earlier final one
    snaps = engine.take_dirty()
    assert [s.key for s in snaps] == [qkey(W0)]
    assert (snaps[0].agg, snaps[0].final, snaps[0].version) == (engine.windows[qkey(W0)], False, 86)
    assert engine.take_dirty() == []
    engine.advance(W1 + 2 * MIN)
    finals = engine.close()
    assert finals[0].final and finals[0].version == 87


def test_record_round_trip() -> None:
    engine = make_engine()
    run_scenario(engine)
    engine.advance(W1 + 2 * MIN)
    engine.close()
    engine.record.late_events, engine.record.duplicates, engine.record.expired = 3, 4, 5
    back = PartitionRecord.from_dict(orjson.loads(orjson.dumps(engine.record.to_dict())))
    assert back == engine.record


# -- properties: delivery order does not matter ----------------------------------------------

QUEUES = ["billing", "sales"]


@st.composite
def call_steps(draw: st.DrawFn, iid: str) -> list[Step]:
    """A well-formed call of up to three queue segments starting in the first five minutes."""
    steps: list[Step] = []
    n = iter(range(100))

    def eid() -> str:
        return f"{iid}-{next(n)}"

    t = T0 + draw(st.integers(0, 300)) * S + draw(st.integers(0, 999))
    steps.append(off(t, eid(), draw(st.sampled_from(QUEUES))))
    for segment in range(3):
        t += draw(st.integers(0 if segment == 0 else 1, 80_000))
        exit_ = draw(st.sampled_from(["answered", "answered", "abandoned", "hangup", "transferred", "waiting"]))
        if exit_ == "waiting":
            break
        if exit_ == "abandoned":
            steps.append(aba(t, eid()))
            break
        if exit_ == "hangup":
            steps.append(end(t, eid()))
            break
        if exit_ == "transferred":
            steps.append(xfer(t, eid(), draw(st.sampled_from(QUEUES))))
            continue
        steps.append(ans(t, eid()))
        if draw(st.booleans()):
            t += draw(st.integers(1, 60_000))
            steps.append(xfer(t, eid()))
        after = draw(st.sampled_from(["ended", "ended", "requeue", "talking"]))
        if after == "talking":
            break
        t += draw(st.integers(1, 200_000))
        if after == "ended" or segment == 2:
            steps.append(end(t, eid(), draw(st.sampled_from([0, 12_000]))))
            break
        steps.append(xfer(t, eid(), draw(st.sampled_from(QUEUES))))
    return steps


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, Step]], list[tuple[str, Step]], int]:
    """(in event-time order, shuffled with duplicates, number of duplicates)."""
    events: list[tuple[str, Step]] = []
    for k in range(draw(st.integers(1, 5))):
        iid = f"i{k}"
        events += [(iid, s) for s in draw(call_steps(iid))]
    in_order = sorted(events, key=lambda e: (e[1].ts, e[1].event_id))
    if draw(st.booleans()):
        shuffled = draw(st.permutations(events))  # any order: the lateness must cover the whole span
    else:  # bounded disorder, as from real producers: windows also close during the delivery
        jitter = draw(st.sampled_from([2_000, 10_000, 45_000, 120_000]))
        delays = draw(st.lists(st.integers(0, jitter), min_size=len(events), max_size=len(events)))
        shuffled = [e for _, e in sorted(zip(delays, events), key=lambda p: p[1][1].ts + p[0])]
    dups = draw(st.lists(st.tuples(st.integers(0, len(events) - 1), st.integers(0, len(events))), max_size=6))
    shuffled = list(shuffled)
    for source, position in dups:
        shuffled.insert(position, events[source])
    return in_order, shuffled, len(dups)


def lag_ms(delivery: list[tuple[str, Step]]) -> int:
    """How far behind the newest event time seen so far a first delivery can be."""
    seen: set[str] = set()
    newest, lag = -(10 ** 18), 0
    for _iid, step in delivery:
        if step.event_id in seen:
            continue
        seen.add(step.event_id)
        newest = max(newest, step.ts)
        lag = max(lag, newest - step.ts)
    return lag


def deliver(delivery: list[tuple[str, Step]], sizes: tuple[int, ...], lateness_s: float,
            crash_at: int | None = None) -> tuple[PartitionEngine, dict[Any, Any]]:
    engine = make_engine(sizes=sizes, lateness_s=lateness_s, horizon_s=86_400)
    feed = Feed(engine)
    finals: dict[Any, Any] = {}
    for n, (iid, step) in enumerate(delivery):
        if n == crash_at:
            fresh, copies = crash_and_recover(engine, feed.inters)
            assert normal_windows(fresh.windows) == normal_windows(engine.windows)
            assert fresh.record == engine.record
            engine = feed.engine = fresh
            feed.inters = copies
        feed(iid, step)
        for snap in engine.close():
            assert snap.key not in finals  # a window is final once
            if not snap.agg.is_empty():
                finals[snap.key] = normal(snap.agg)
    engine.advance(T0 + 86_400 * S)
    for snap in engine.close():
        assert snap.key not in finals
        if not snap.agg.is_empty():
            finals[snap.key] = normal(snap.agg)
    assert engine.windows == {}
    return engine, finals


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.sampled_from([(60,), (60, 300), (60, 900)]))
def test_shuffled_delivery_equals_in_order_delivery(delivery: Any, sizes: tuple[int, ...]) -> None:
    in_order, shuffled, n_dups = delivery
    assert lag_ms(in_order) == 0
    # Lateness just large enough for this shuffle, so windows also close during delivery.
    lateness_s = math.ceil(lag_ms(shuffled) / 1000)
    ref, ref_finals = deliver(in_order, sizes, lateness_s)
    got, got_finals = deliver(shuffled, sizes, lateness_s)
    assert got_finals == ref_finals
    assert normal_totals(got.record.totals.items()) == normal_totals(ref.record.totals.items())
    assert got.record.late_events == ref.record.late_events == 0
    assert got.record.duplicates == n_dups and ref.record.duplicates == 0
    # The totals are the sum of the smallest windows.
    summed: dict[str, dict[str, int]] = {}
    for (size, _start, scope, queue, channel), (counts, _tops) in ref_finals.items():
        if size == sizes[0] and scope == "q":
            into = summed.setdefault(f"{queue}|{channel}", {})
            for name, value in counts.items():
                into[name] = into.get(name, 0) + value
    assert normal_totals(ref.record.totals.items()) == normal_totals(summed.items())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_shuffled_open_windows_equal_in_order_ones(delivery: Any) -> None:
    """With a lateness larger than the whole history nothing closes: compare the open windows."""
    in_order, shuffled, n_dups = delivery
    engines = []
    for d in (in_order, shuffled):
        engine = make_engine(sizes=(60, 900), lateness_s=3600)
        feed = Feed(engine)
        for iid, step in d:
            feed(iid, step)
            assert engine.close() == []
        engines.append(engine)
    ref, got = engines
    assert normal_windows(got.windows) == normal_windows(ref.windows)
    assert got.record.watermark == ref.record.watermark
    assert got.record.duplicates == n_dups
    assert normal_totals((f"{q}|{c}", x) for q, c, x in got.running_totals()) == \
        normal_totals((f"{q}|{c}", x) for q, c, x in ref.running_totals())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.data())
def test_crash_and_rebuild_mid_stream_changes_nothing(delivery: Any, data: st.DataObject) -> None:
    _in_order, shuffled, _n = delivery
    lateness_s = math.ceil(lag_ms(shuffled) / 1000)
    crash_at = data.draw(st.integers(0, len(shuffled) - 1))
    ref, ref_finals = deliver(shuffled, (60, 900), lateness_s)
    got, got_finals = deliver(shuffled, (60, 900), lateness_s, crash_at=crash_at)
    assert got_finals == ref_finals
    # Totals may differ only by explicit zeros (a counter retracted back to 0 before its window closed).
    assert normal_totals(got.record.totals.items()) == normal_totals(ref.record.totals.items())
    got.record.totals = ref.record.totals = {}
    assert got.record == ref.record


def test_lag_helper() -> None:
    a, b, c = off(T0, "a"), off(T0 + 5 * S, "b"), off(T0 + 2 * S, "c")
    assert lag_ms([("x", a), ("x", b), ("x", c)]) == 3 * S
    assert lag_ms([("x", a), ("x", c), ("x", b)]) == 0
    assert lag_ms([("x", b), ("x", a), ("x", a)]) == 5 * S


@pytest.mark.parametrize("seed", range(5))
def test_random_late_deliveries_never_double_count(seed: int) -> None:
    """Whatever the order and lateness: every fact is counted at most once (final or open)."""
    rnd = random.Random(seed)
    engine = make_engine(sizes=(60,), lateness_s=rnd.choice([0, 5, 30]))
    feed = Feed(engine)
    events = []
    for k in range(30):
        t = T0 + rnd.randrange(600) * S
        events += [(f"r{k}", off(t, f"r{k}-1")),
                   (f"r{k}", ans(t + rnd.randrange(60) * S, f"r{k}-2")),
                   (f"r{k}", end(t + (60 + rnd.randrange(300)) * S, f"r{k}-3"))]
    rnd.shuffle(events)
    for iid, step in events:
        feed(iid, step)
        engine.close()
    engine.advance(T0 + 86_400 * S)
    engine.close()
    totals = engine.record.totals.get("billing|voice", {})
    assert totals.get("offered", 0) <= 30
    assert totals.get("answered", 0) <= 30
    assert totals.get("handled", 0) <= 30
    assert all(v >= 0 for v in totals.values())
    assert engine.record.late_events <= len(events)
