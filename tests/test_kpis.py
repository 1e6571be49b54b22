"""Queue KPI facts per segment, window aggregates and the derived figures (METRICS.md)."""

from __future__ import annotations

import calendar
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpulse.config import DEFAULT_THRESHOLDS, Thresholds
from ccpulse.core.kpis import (
    MAXIMA, SKETCH, TOP_KEPT, WAIT_BUCKETS_S, WindowAgg, agent_outcomes, bucket_index, interaction_facts,
    kpi_figures, ratio, segment_outcomes, service_level,
)
from ccpulse.core.lifecycle import Derivation, Segment
from ccpulse.core.windowing import Windowing

S = 1000
MIN = 60 * S
T0 = calendar.timegm((2026, 11, 22, 9, 0, 0)) * 1000  # 09:00:00 UTC, on the hour
DAY0 = T0 - 9 * 3600 * S  # 2026-11-22T00:00:00Z
VOICE = DEFAULT_THRESHOLDS["voice"]
Q, CH = "billing", "voice"


def sk(wait_ms: int) -> int:
    """Sketch bucket of a wait, computed independently: 0 for 0, else k + 1 with
    k the smallest integer >= 0 such that wait <= (101/99)**k."""
    if wait_ms == 0:
        return 0
    k = max(0, math.ceil(math.log(wait_ms) / math.log(101 / 99)) - 2)
    while wait_ms * 99 ** k > 101 ** k:
        k += 1
    return k + 1


def test_sketch_oracle() -> None:
    assert sk(0) == 0 and sk(1) == 1 and sk(2) == 36  # k = 35: (101/99)**34 < 2 <= (101/99)**35
    assert (101 / 99) ** 34 < 2 <= (101 / 99) ** 35


def outcomes(seg: Segment, th: Thresholds = VOICE) -> Counter:
    return Counter(segment_outcomes(seg, th)) + Counter(agent_outcomes(seg))


def answered_outcomes(left: int, wait: int, bucket: int, within: bool, immediate: bool = False) -> list:
    rows = [(left, "answered", 1), (left, "wait_answered_ms", wait), (left, "wait_answered_max_ms", wait),
            (left, SKETCH, sk(wait)), (left, f"wait_bucket_{bucket}", 1)]
    if within:
        rows.append((left, "answered_within_target", 1))
    if immediate:
        rows.append((left, "answered_immediately", 1))
    return rows


def answered_seg(wait_ms: int, entered: int = T0 + 10 * S) -> Segment:
    return Segment(Q, entered, "answered", entered + wait_ms, "a-1")


def abandoned_seg(wait_ms: int, entered: int = T0 + 10 * S) -> Segment:
    return Segment(Q, entered, "abandoned", entered + wait_ms)


def names(c: Counter) -> set[str]:
    return {row[1] for row in c}


# -- per-segment rules ----------------------------------------------------------------


def test_thresholds_defaults() -> None:
    assert (VOICE.service_level_seconds, VOICE.short_abandon_seconds, VOICE.immediate_seconds) == (20, 5, 0)


def test_answered_within_target() -> None:
    e, left = T0 + 10 * S, T0 + 25 * S
    assert outcomes(answered_seg(15 * S)) == Counter(
        [(e, "offered", 1)] + answered_outcomes(left, 15_000, bucket=3, within=True))


def test_answered_exactly_at_target_is_within() -> None:
    e, left = T0 + 10 * S, T0 + 30 * S
    assert outcomes(answered_seg(20 * S)) == Counter(
        [(e, "offered", 1)] + answered_outcomes(left, 20_000, bucket=4, within=True))


def test_answered_above_target() -> None:
    assert outcomes(answered_seg(20 * S + 1, entered=T0)) == Counter(
        [(T0, "offered", 1)] + answered_outcomes(T0 + 20_001, 20_001, bucket=5, within=False))


def test_answered_immediately_only_without_waiting() -> None:
    e = T0 + 10 * S
    assert outcomes(answered_seg(0)) == Counter(
        [(e, "offered", 1)] + answered_outcomes(e, 0, bucket=0, within=True, immediate=True))
    one_ms = outcomes(answered_seg(1))  # one millisecond of waiting is not immediate
    assert "answered_immediately" not in names(one_ms)
    assert (e + 1, "wait_bucket_1", 1) in one_ms


def test_answered_immediately_with_a_threshold() -> None:
    th = Thresholds(20.0, 5.0, 2.0)
    assert "answered_immediately" in names(outcomes(answered_seg(2000), th))
    assert "answered_immediately" not in names(outcomes(answered_seg(2001), th))


def test_short_abandon() -> None:
    # At the bound (<= short_abandon_seconds): a short abandon, counted nowhere else.
    e = T0 + 10 * S
    assert outcomes(abandoned_seg(5 * S)) == Counter([(e, "offered", 1), (e + 5 * S, "short_abandoned", 1)])
    assert outcomes(abandoned_seg(0)) == Counter([(e, "offered", 1), (e, "short_abandoned", 1)])


def test_abandon_above_short_threshold_within_target() -> None:
    e = T0 + 10 * S
    assert outcomes(abandoned_seg(5 * S + 1)) == Counter([
        (e, "offered", 1), (e + 5001, "abandoned", 1), (e + 5001, "wait_abandoned_ms", 5001),
        (e + 5001, "wait_abandoned_max_ms", 5001), (e + 5001, "abandoned_within_target", 1)])
    assert outcomes(abandoned_seg(20 * S)) == Counter([
        (e, "offered", 1), (e + 20 * S, "abandoned", 1), (e + 20 * S, "wait_abandoned_ms", 20_000),
        (e + 20 * S, "wait_abandoned_max_ms", 20_000), (e + 20 * S, "abandoned_within_target", 1)])


def test_abandon_above_target() -> None:
    assert outcomes(abandoned_seg(45 * S, entered=T0)) == Counter([
        (T0, "offered", 1), (T0 + 45 * S, "abandoned", 1), (T0 + 45 * S, "wait_abandoned_ms", 45_000),
        (T0 + 45 * S, "wait_abandoned_max_ms", 45_000)])


def test_short_abandon_seconds_zero_disables_short_abandons() -> None:
    th = Thresholds(20.0, 0.0, 0.0)
    e = T0 + 10 * S
    assert outcomes(abandoned_seg(0), th) == Counter([
        (e, "offered", 1), (e, "abandoned", 1), (e, "wait_abandoned_ms", 0), (e, "wait_abandoned_max_ms", 0),
        (e, "abandoned_within_target", 1)])
    assert "short_abandoned" not in names(outcomes(abandoned_seg(3 * S), th))


def test_chat_and_ticket_defaults() -> None:
    chat, ticket = DEFAULT_THRESHOLDS["chat"], DEFAULT_THRESHOLDS["ticket"]
    assert "short_abandoned" in names(outcomes(abandoned_seg(10 * S), chat))
    assert "abandoned" in names(outcomes(abandoned_seg(10 * S + 1), chat))
    assert "answered_within_target" in names(outcomes(answered_seg(60 * S), chat))
    assert "answered_within_target" not in names(outcomes(answered_seg(60 * S + 1), chat))
    # Tickets: no short abandons, 24 h target.
    assert "abandoned" in names(outcomes(abandoned_seg(1), ticket))
    assert "answered_within_target" in names(outcomes(answered_seg(86_400 * S), ticket))
    assert "answered_within_target" not in names(outcomes(answered_seg(86_400 * S + 1), ticket))


def test_still_waiting_only_offered() -> None:
    assert outcomes(Segment(Q, T0 + 5 * S)) == Counter([(T0 + 5 * S, "offered", 1)])


def test_transferred_out_counts_where_it_left() -> None:
    seg = Segment(Q, T0 + 50 * S, "transferred", T0 + 70 * S)
    assert outcomes(seg) == Counter([(T0 + 50 * S, "offered", 1), (T0 + 70 * S, "transferred_out", 1)])


def test_agent_transfers_and_handle_time() -> None:
    # Answered 09:01:05, transferred to agents at 09:01:30 and 09:02:10, ended 09:03:10 with
    # 10 s wrap-up: handle = 125 s + 10 s, counted when it ended; each transfer when it happened.
    seg = Segment(Q, T0 + 50 * S, "answered", T0 + 65 * S, "a-1", [T0 + 90 * S, T0 + 130 * S],
                  T0 + 190 * S, 10 * S)
    assert Counter(agent_outcomes(seg)) == Counter([
        (T0 + 90 * S, "transfers", 1), (T0 + 130 * S, "transfers", 1),
        (T0 + 190 * S, "handled", 1), (T0 + 190 * S, "handle_ms", 135_000)])


def facts(segments: list[Segment], sizes: tuple[int, ...] = (60,), channel: str = CH,
          th: Any = None) -> Counter:
    d = Derivation(segments, 0, False)
    return interaction_facts(d, channel, th or (lambda q, c: VOICE), Windowing(sizes))


def test_attribution_across_window_boundaries() -> None:
    """Offered in the 09:00 window, answered in the 09:01 one: each counted in its own."""
    f = facts([Segment(Q, T0 + 59_999, "answered", T0 + 60_000, "a-1")])
    assert f[(60, T0, "q", Q, CH, "offered", 1)] == 1
    assert f[(60, T0 + MIN, "q", Q, CH, "answered", 1)] == 1
    assert f[(60, T0 + MIN, "q", Q, CH, "wait_answered_ms", 1)] == 1
    assert {k[1] for k in f if k[5] != "offered"} == {T0 + MIN}
    assert {k[1] for k in f if k[5] == "offered"} == {T0}
    assert not any(k[5] == "answered_immediately" for k in f)


def test_handle_and_transfers_attributed_where_they_happen() -> None:
    seg = Segment(Q, T0 + 50 * S, "answered", T0 + 65 * S, "a-1", [T0 + 130 * S], T0 + 190 * S, 10 * S)
    f = facts([seg])
    q = "q"
    assert f[(60, T0, q, Q, CH, "offered", 1)] == 1
    assert f[(60, T0 + MIN, q, Q, CH, "answered", 1)] == 1
    assert f[(60, T0 + 2 * MIN, q, Q, CH, "transfers", 1)] == 1
    assert f[(60, T0 + 3 * MIN, q, Q, CH, "handled", 1)] == 1
    assert f[(60, T0 + 3 * MIN, q, Q, CH, "handle_ms", 135_000)] == 1


def test_abandon_attributed_to_the_window_it_left() -> None:
    f = facts([Segment(Q, T0 + 55 * S, "abandoned", T0 + 100 * S)])
    assert f == Counter({
        (60, T0, "q", Q, CH, "offered", 1): 1,
        (60, T0 + MIN, "q", Q, CH, "abandoned", 1): 1,
        (60, T0 + MIN, "q", Q, CH, "wait_abandoned_ms", 45_000): 1,
        (60, T0 + MIN, "q", Q, CH, "wait_abandoned_max_ms", 45_000): 1,
    })


def test_multiple_window_sizes() -> None:
    seg = Segment(Q, T0 + 14 * MIN + 50 * S, "answered", T0 + 15 * MIN + 5 * S, "a-1", [], T0 + 61 * MIN, 0)
    sizes = (60, 900, 3600, 86400)
    f = facts([seg], sizes)
    queue_facts = {k: n for k, n in f.items() if k[2] == "q"}
    # offered; answered, wait, max, sketch, bucket, within (not immediate); handled, handle
    per_size = 1 + 6 + 2
    assert len(queue_facts) == per_size * len(sizes) and sum(queue_facts.values()) == per_size * len(sizes)
    for size, offered_at, answered_at, ended_at in [
        (60, T0 + 14 * MIN, T0 + 15 * MIN, T0 + 61 * MIN),
        (900, T0, T0 + 15 * MIN, T0 + 60 * MIN),
        (3600, T0, T0, T0 + 60 * MIN),
        (86400, DAY0, DAY0, DAY0),
    ]:
        assert f[(size, offered_at, "q", Q, CH, "offered", 1)] == 1
        assert f[(size, answered_at, "q", Q, CH, "answered", 1)] == 1
        assert f[(size, answered_at, "q", Q, CH, "wait_answered_ms", 15_000)] == 1
        assert f[(size, answered_at, "q", Q, CH, SKETCH, sk(15_000))] == 1
        assert f[(size, ended_at, "q", Q, CH, "handled", 1)] == 1
        assert f[(size, ended_at, "q", Q, CH, "handle_ms", 46 * MIN - 5 * S)] == 1


def test_agent_facts_only_for_longer_windows() -> None:
    seg = Segment(Q, T0, "answered", T0 + 5 * S, "a-9", [T0 + 20 * S], T0 + 50 * S, 0)
    f = facts([seg], (60, 900))
    agent = Counter({k: n for k, n in f.items() if k[2] == "a"})
    assert agent == Counter({
        (900, T0, "a", "a-9", CH, "answered", 1): 1,
        (900, T0, "a", "a-9", CH, "transfers", 1): 1,
        (900, T0, "a", "a-9", CH, "handled", 1): 1,
        (900, T0, "a", "a-9", CH, "handle_ms", 45_000): 1,
    })


def test_interaction_facts_uses_each_queue_thresholds() -> None:
    strict = Thresholds(10.0, 5.0, 0.0)
    th = {"billing": VOICE, "sales": strict}
    segs = [Segment("billing", T0, "transferred", T0 + 15 * S),
            Segment("sales", T0 + 15 * S, "answered", T0 + 30 * S, "a-2", [], T0 + 90 * S, 0)]
    f = facts(segs, th=lambda q, c: th[q])
    assert f == Counter({
        (60, T0, "q", "billing", CH, "offered", 1): 1,
        (60, T0, "q", "billing", CH, "transferred_out", 1): 1,
        (60, T0, "q", "sales", CH, "offered", 1): 1,
        (60, T0, "q", "sales", CH, "answered", 1): 1,
        (60, T0, "q", "sales", CH, "wait_answered_ms", 15_000): 1,
        (60, T0, "q", "sales", CH, "wait_answered_max_ms", 15_000): 1,
        (60, T0, "q", "sales", CH, SKETCH, sk(15_000)): 1,
        (60, T0, "q", "sales", CH, "wait_bucket_3", 1): 1,
        # 15 s > the 10 s of sales: not within target (it would be with billing's 20 s).
        (60, T0 + MIN, "q", "sales", CH, "handled", 1): 1,
        (60, T0 + MIN, "q", "sales", CH, "handle_ms", 60_000): 1,
    })


def test_interaction_facts_multiplicity() -> None:
    """Two segments in the same queue and window count twice."""
    segs = [Segment(Q, T0, "transferred", T0 + S), Segment(Q, T0 + S, "abandoned", T0 + 2 * S)]
    assert facts(segs)[(60, T0, "q", Q, CH, "offered", 1)] == 2


# -- buckets --------------------------------------------------------------------------


@pytest.mark.parametrize("wait_ms, index", [
    (0, 0), (1, 1), (5000, 1), (5001, 2), (19_999, 4), (20_000, 4), (20_001, 5), (60_000, 7),
    (3_600_000, 14), (3_600_001, 15), (86_400_000, 16), (86_400_001, 17), (10 ** 12, 17),
])
def test_bucket_index(wait_ms: int, index: int) -> None:
    assert bucket_index(wait_ms) == index


def test_bucket_bounds() -> None:
    assert WAIT_BUCKETS_S[0] == 0.0 and WAIT_BUCKETS_S[4] == 20.0 and WAIT_BUCKETS_S[7] == 60.0
    assert WAIT_BUCKETS_S[14] == 3600.0 and WAIT_BUCKETS_S[-1] == 86400.0
    assert list(WAIT_BUCKETS_S) == sorted(WAIT_BUCKETS_S)
    # +Inf is the index after the last bound.
    assert bucket_index(int(WAIT_BUCKETS_S[-1] * 1000) + 1) == len(WAIT_BUCKETS_S)


# -- WindowAgg -------------------------------------------------------------------------


def normal(agg: WindowAgg) -> tuple[dict[str, int], dict[str, list[int]]]:
    return ({k: v for k, v in agg.counts.items() if v}, {k: v for k, v in agg.tops.items() if v})


def test_apply_and_retract_restores_the_state() -> None:
    agg = WindowAgg()
    agg.apply("offered", 1, 1)
    agg.apply("answered", 1, 1)
    agg.apply("wait_answered_ms", 15_000, 1)
    agg.apply("wait_answered_max_ms", 15_000, 1)
    agg.apply(SKETCH, 482, 1)
    before = normal(agg)
    changes = [("offered", 1), ("answered", 1), ("wait_answered_ms", 42_000), ("wait_answered_max_ms", 42_000),
               ("wait_abandoned_max_ms", 7000), ("abandoned", 1), ("wait_bucket_6", 1), (SKETCH, 482),
               (SKETCH, 530)]
    for name, value in changes:
        agg.apply(name, value, 1)
    assert agg.counts["offered"] == 2 and agg.counts["wait_answered_ms"] == 57_000
    assert agg.tops["wait_answered_max_ms"][-1] == 42_000
    assert agg.sketch() == {482: 2, 530: 1}
    rnd = random.Random(7)
    rnd.shuffle(changes)
    for name, value in changes:
        agg.apply(name, value, -1)
    assert normal(agg) == before
    assert agg.tops["wait_answered_max_ms"] == [15_000]
    assert agg.sketch() == {482: 1}


def test_maximum_after_retractions() -> None:
    agg = WindowAgg()
    for v in (10, 30, 20, 30):
        agg.apply("wait_answered_max_ms", v, 1)
    assert agg.tops["wait_answered_max_ms"] == [10, 20, 30, 30]
    agg.apply("wait_answered_max_ms", 30, -1)
    assert agg.tops["wait_answered_max_ms"][-1] == 30  # the other 30 is still there
    agg.apply("wait_answered_max_ms", 30, -1)
    assert agg.tops["wait_answered_max_ms"][-1] == 20
    agg.apply("wait_answered_max_ms", 99, -1)  # never applied: nothing to remove
    assert agg.tops["wait_answered_max_ms"] == [10, 20]
    agg.apply("wait_answered_max_ms", 20, -1)
    agg.apply("wait_answered_max_ms", 10, -1)
    assert agg.is_empty()
    assert kpi_figures(agg, VOICE)["wait_answered_max_seconds"] is None


def test_maxima_keep_only_the_largest() -> None:
    agg = WindowAgg()
    values = list(range(1, 21))
    random.Random(3).shuffle(values)
    for v in values:
        agg.apply("wait_abandoned_max_ms", v, 1)
    assert agg.tops["wait_abandoned_max_ms"] == list(range(21 - TOP_KEPT, 21))
    assert "wait_abandoned_max_ms" not in agg.counts


def test_is_empty() -> None:
    agg = WindowAgg()
    assert agg.is_empty()
    agg.apply("offered", 1, 1)
    assert not agg.is_empty()
    agg.apply("offered", 1, -1)
    assert agg.is_empty()


def test_exits() -> None:
    agg = WindowAgg({"offered": 9, "answered": 3, "abandoned": 2, "short_abandoned": 1, "transferred_out": 1,
                     "transfers": 5})
    assert agg.exits() == 7


def test_merge() -> None:
    a = WindowAgg({"offered": 3, "answered": 2, "wait_answered_ms": 30_000},
                  {"wait_answered_max_ms": [10_000, 20_000]})
    b = WindowAgg({"offered": 1, "abandoned": 1}, {"wait_answered_max_ms": [15_000],
                                                   "wait_abandoned_max_ms": [8000]})
    a.merge(b)
    assert a.counts == {"offered": 4, "answered": 2, "wait_answered_ms": 30_000, "abandoned": 1}
    assert a.tops == {"wait_answered_max_ms": [10_000, 15_000, 20_000], "wait_abandoned_max_ms": [8000]}
    assert b.counts == {"offered": 1, "abandoned": 1}  # the source is unchanged


def test_merge_equals_applying_everything_in_one() -> None:
    rnd = random.Random(11)
    items = [(rnd.choice(["offered", "answered", "handle_ms", "wait_answered_max_ms", SKETCH]),
              rnd.randrange(100_000)) for _ in range(200)]
    n_max = sum(1 for name, _ in items if name == "wait_answered_max_ms")
    assert n_max > TOP_KEPT
    whole, left, right = WindowAgg(), WindowAgg(), WindowAgg()
    for i, (name, value) in enumerate(items):
        whole.apply(name, value, 1)
        (left if i % 3 else right).apply(name, value, 1)
    left.merge(right)
    assert left.counts == whole.counts
    assert left.tops == whole.tops
    assert left.tops["wait_answered_max_ms"] == sorted(v for n, v in items if n == "wait_answered_max_ms")[-TOP_KEPT:]
    assert sum(left.sketch().values()) == sum(1 for n, _ in items if n == SKETCH)


def test_to_dict_round_trip_drops_zeros() -> None:
    agg = WindowAgg({"offered": 2, "answered": 0}, {"wait_answered_max_ms": [5]})
    doc = agg.to_dict()
    assert doc == {"counts": {"offered": 2}, "tops": {"wait_answered_max_ms": [5]}}
    back = WindowAgg.from_dict(doc)
    assert back.counts == {"offered": 2} and back.tops == {"wait_answered_max_ms": [5]}


# -- figures ----------------------------------------------------------------------------


def test_ratio() -> None:
    assert ratio(1, 0) is None and ratio(0, 0) is None
    assert ratio(0, 5) == 0.0 and ratio(1, 4) == 0.25


def test_every_ratio_is_null_on_a_window_without_exits() -> None:
    out = kpi_figures(WindowAgg({"offered": 3}), VOICE)
    for name in ("abandonment_rate", "service_level", "immediate_response_rate", "asa_seconds", "aht_seconds",
                 "transfer_rate", "wait_answered_max_seconds", "wait_abandoned_max_seconds",
                 "wait_answered_p50_seconds", "wait_answered_p90_seconds", "wait_answered_p95_seconds"):
        assert out[name] is None, name
    assert out["offered"] == 3
    for name in ("answered", "abandoned", "short_abandoned", "handled", "transfers", "transferred_out"):
        assert out[name] == 0, name
    assert out["wait_buckets"] == [0] * (len(WAIT_BUCKETS_S) + 1)
    for formula in ("answered_over_exits", "abandons_within_target_neutral",
                    "abandons_within_target_positive", "answered_only"):
        assert kpi_figures(WindowAgg({"offered": 3}), Thresholds(20, 5, 0, formula))["service_level"] is None


def test_short_abandons_are_not_exits_of_the_ratios() -> None:
    out = kpi_figures(WindowAgg({"offered": 2, "short_abandoned": 2}), VOICE)
    assert out["abandonment_rate"] is None and out["service_level"] is None
    assert out["short_abandoned"] == 2


def test_figures_on_a_hand_built_window() -> None:
    # Answered waits 0, 10, 20 and 50 s (3 within 20 s, 1 immediate); one abandon after 12 s
    # (within target); two short abandons; two contacts handled in 120 + 180 s; one transfer.
    agg = WindowAgg(
        {"offered": 9, "answered": 4, "abandoned": 1, "short_abandoned": 2, "answered_within_target": 3,
         "abandoned_within_target": 1, "answered_immediately": 1, "wait_answered_ms": 80_000,
         "wait_abandoned_ms": 12_000, "handled": 2, "handle_ms": 300_000, "transfers": 1, "transferred_out": 1,
         "wait_bucket_0": 1, "wait_bucket_2": 1, "wait_bucket_4": 1, "wait_bucket_7": 1},
        {"wait_answered_max_ms": [0, 10_000, 20_000, 50_000], "wait_abandoned_max_ms": [12_000]})
    out = kpi_figures(agg, VOICE)
    assert out["abandonment_rate"] == pytest.approx(1 / 5)
    assert out["service_level"] == pytest.approx(3 / 5)
    assert out["service_level_formula"] == "answered_over_exits"
    assert out["service_level_seconds"] == 20
    assert out["immediate_response_rate"] == pytest.approx(1 / 5)
    assert out["asa_seconds"] == pytest.approx(20.0)
    assert out["aht_seconds"] == pytest.approx(150.0)
    assert out["transfer_rate"] == pytest.approx(1 / 4)
    assert out["wait_answered_sum_seconds"] == 80.0
    assert out["wait_abandoned_sum_seconds"] == 12.0
    assert out["handle_time_sum_seconds"] == 300.0
    assert out["wait_answered_max_seconds"] == 50.0
    assert out["wait_abandoned_max_seconds"] == 12.0
    assert out["wait_buckets"][:8] == [1, 0, 1, 0, 1, 0, 0, 1] and sum(out["wait_buckets"]) == 4
    for name in ("offered", "answered", "abandoned", "short_abandoned", "answered_within_target",
                 "abandoned_within_target", "answered_immediately", "handled", "transfers", "transferred_out"):
        assert out[name] == agg.counts[name], name
    assert not any(k.endswith("_ms") for k in out)
    assert not any(name in out for name in MAXIMA)


@pytest.mark.parametrize("formula, expected", [
    ("answered_over_exits", 6 / 10),
    ("abandons_within_target_neutral", 6 / 9),
    ("abandons_within_target_positive", 7 / 10),
    ("answered_only", 6 / 8),
])
def test_service_level_formulas(formula: str, expected: float) -> None:
    # 8 answered (6 within target), 2 abandoned (1 within target), 3 short abandons (ignored).
    c = {"answered": 8, "answered_within_target": 6, "abandoned": 2, "abandoned_within_target": 1,
         "short_abandoned": 3}
    assert service_level(c, formula) == pytest.approx(expected)
    out = kpi_figures(WindowAgg(dict(c)), Thresholds(20.0, 5.0, 0.0, formula))
    assert out["service_level"] == pytest.approx(expected)
    assert out["service_level_formula"] == formula


def test_service_level_formulas_with_zero_answered() -> None:
    c = {"abandoned": 2, "abandoned_within_target": 1}
    assert service_level(c, "answered_only") is None
    assert service_level(c, "answered_over_exits") == 0.0
    assert service_level(c, "abandons_within_target_neutral") == 0.0  # 0 / (2 - 1)
    assert service_level(c, "abandons_within_target_positive") == pytest.approx(0.5)
    # Every abandon within target and nothing answered: the neutral denominator is empty.
    assert service_level({"abandoned": 1, "abandoned_within_target": 1}, "abandons_within_target_neutral") is None


def test_unknown_formula_is_an_error() -> None:
    with pytest.raises(ValueError):
        service_level({"answered": 1}, "made_up")


def test_window_from_segments_end_to_end() -> None:
    """Facts of several segments summed into a window give the hand-computed figures."""
    segs = [
        Segment(Q, T0 + 1 * S, "answered", T0 + 1 * S, "a-1", [], T0 + 50 * S, 5 * S),  # immediate, 49+5 s
        Segment(Q, T0 + 2 * S, "answered", T0 + 32 * S, "a-2"),  # 30 s: over target
        Segment(Q, T0 + 3 * S, "abandoned", T0 + 6 * S),  # 3 s: short
        Segment(Q, T0 + 4 * S, "abandoned", T0 + 14 * S),  # 10 s: within target
        Segment(Q, T0 + 5 * S),  # waiting
    ]
    agg = WindowAgg()
    for fact, n in facts(segs).items():
        assert fact[:5] == (60, T0, "q", Q, CH)
        for _ in range(n):
            agg.apply(fact[5], fact[6], 1)
    out = kpi_figures(agg, VOICE)
    assert (out["offered"], out["answered"], out["abandoned"], out["short_abandoned"]) == (5, 2, 1, 1)
    assert (out["answered_within_target"], out["abandoned_within_target"], out["answered_immediately"]) == (1, 1, 1)
    assert agg.exits() == 4
    assert out["abandonment_rate"] == pytest.approx(1 / 3)
    assert out["service_level"] == pytest.approx(1 / 3)
    assert out["immediate_response_rate"] == pytest.approx(1 / 3)
    assert out["asa_seconds"] == pytest.approx(15.0)
    assert out["aht_seconds"] == pytest.approx(54.0)
    assert out["wait_answered_max_seconds"] == 30.0
    assert out["wait_abandoned_max_seconds"] == 10.0
    assert out["wait_buckets"][0] == 1 and out["wait_buckets"][5] == 1 and sum(out["wait_buckets"]) == 2
    assert agg.sketch() == {sk(0): 1, sk(30_000): 1}
    # Two answered waits, 0 and 30 s; percentiles are lower quantiles (rank int(q * (n - 1)) = 0).
    assert out["wait_answered_p50_seconds"] == 0.0 and out["wait_answered_p95_seconds"] == 0.0


@given(st.sampled_from([(60, 900, 3600, 86400), (60, 86400), (240, 360, 86400), (86400,), (300,)]),
       st.integers(0, 23), st.integers(-10**12, 4 * 10**12))
def test_the_cached_window_starts_are_the_starts_of_each_moment(sizes: tuple[int, ...], day_start: int,
                                                                 ts: int) -> None:
    """starts() is cached per granule of time (Windowing.granule_ms): every moment of a granule
    gets what start() gives it, around every boundary."""
    w = Windowing(sizes, "UTC", day_start)
    for moment in (ts, ts - ts % 60_000, ts - ts % 60_000 - 1, ts + 1):
        w.starts(moment - 1)  # a neighbour cached first
        assert w.starts(moment) == [(size, w.start(moment, size)) for size in sizes]
