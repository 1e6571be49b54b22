"""Quantile sketch: exact bucket bounds, the 1% relative-error guarantee, additivity."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.core.sketch import (
    GAMMA, RELATIVE_ACCURACY, bucket_of, bucket_value, decode, encode, merge, quantile, quantiles, sketch_of,
    subtract,
)

A = Fraction(1, 100)
G_NUM, G_DEN = 101, 99  # gamma = (1 + a) / (1 - a), a = 1/100
DAY_MS = 86_400_000
QS = (0.5, 0.9, 0.95)

waits = st.lists(st.one_of(st.integers(0, 10**8), st.sampled_from([0, 1, 2, 1000])),
                 min_size=1, max_size=500)
waits0 = st.lists(st.integers(0, 10**8), max_size=200)


def floor_power(k: int) -> int:
    """Largest integer <= gamma**k: the last integer of bucket k + 1."""
    return G_NUM**k // G_DEN**k


def within(approx: float, exact: int) -> bool:
    return abs(approx - exact) <= RELATIVE_ACCURACY * exact


def test_constants() -> None:
    assert RELATIVE_ACCURACY == 0.01
    assert GAMMA == pytest.approx(101 / 99, rel=1e-15)


def test_zero_bucket_is_exact_and_only_for_zero() -> None:
    assert bucket_of(0) == 0
    assert bucket_value(0) == 0.0
    assert quantile(sketch_of([0, 0, 0, 5000]), 0.5) == 0.0
    assert bucket_of(1) == 1
    assert min(bucket_of(v) for v in range(1, 20_001)) == 1


def test_relative_error_every_value_up_to_20000() -> None:
    bad = [v for v in range(1, 20_001) if not within(bucket_value(bucket_of(v)), v)]
    assert bad == []


def test_relative_error_random_large_values() -> None:
    rng = random.Random(20261122)
    values = [rng.randint(1, 10**10) for _ in range(20_000)]
    values += [rng.randint(1, 2**46) for _ in range(2_000)]
    bad = [v for v in values if not within(bucket_value(bucket_of(v)), v)]
    assert bad == []


def test_bucket_bounds_exact_and_error_exact_at_every_edge_below_2_pow_46() -> None:
    # Within a bucket |rep - v| / v is largest at its first or last integer, so checking
    # both, in exact rational arithmetic, proves the guarantee for every integer below 2**46
    # ms (2,200 years; the limit documented in bucket_value). The edges are also where a
    # float logarithm would misplace a value.
    k, last = 0, 0
    checked = 0
    while last < 2**46:
        hi = floor_power(k)
        if hi > last:  # bucket k + 1 holds the integers last+1 .. hi
            lo = last + 1
            assert bucket_of(lo) == bucket_of(hi) == k + 1, (k, lo, hi)
            assert bucket_of(hi + 1) > k + 1, (k, hi)
            rep = Fraction(bucket_value(k + 1))
            for v in (lo, hi):
                assert abs(rep - v) <= A * v, (k, v, float(abs(rep - v) / v))
            checked += 1
            last = hi
        k += 1
    assert checked > 1400


def test_one_is_an_exact_power_of_gamma_and_still_within_bound() -> None:
    # 1 = gamma**0 sits exactly on a bucket's upper bound: exact error a, so the float
    # representative must not round to the far side of 0.99.
    rep = bucket_value(bucket_of(1))
    assert Fraction(rep) >= Fraction(99, 100)
    assert abs(rep - 1) <= 0.01


def test_monotonic_exhaustive_up_to_10_000() -> None:
    indices = [bucket_of(v) for v in range(0, 10_001)]
    assert all(a <= b for a, b in zip(indices, indices[1:]))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**10), st.integers(0, 10**10))
def test_monotonic_random_pairs(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert bucket_of(lo) <= bucket_of(hi)


def test_monotonic_random_sorted_values() -> None:
    rng = random.Random(7)
    values = sorted(rng.randint(0, 10**10) for _ in range(20_000))
    indices = [bucket_of(v) for v in values]
    assert all(a <= b for a, b in zip(indices, indices[1:]))


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        bucket_of(-1)
    with pytest.raises(TypeError):
        bucket_of(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bucket_value(-1)
    for q in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError):
            quantile({1: 1}, q)
    with pytest.raises(TypeError):
        decode({"3": 1.5})  # type: ignore[dict-item]


@settings(max_examples=150, deadline=None)
@given(waits)
def test_quantiles_within_relative_error_of_exact_lower_quantile(values: list[int]) -> None:
    sketch = sketch_of(values)
    ordered = sorted(values)
    for q in QS + (0.0, 1.0):
        exact = ordered[int(q * (len(values) - 1))]
        got = quantile(sketch, q)
        assert got is not None
        if exact == 0:
            assert got == 0.0
        else:
            assert within(got, exact), (q, exact, got)
        # Stronger: the rank lands in the very bucket of the exact value.
        assert got == bucket_value(bucket_of(exact))


def test_lower_quantile_rank_definition() -> None:
    sketch = sketch_of([10_000, 20_000, 30_000, 40_000])
    assert quantile(sketch, 0.5) == bucket_value(bucket_of(20_000))  # rank int(0.5 * 3) = 1
    assert quantile(sketch, 0.0) == bucket_value(bucket_of(10_000))
    assert quantile(sketch, 1.0) == bucket_value(bucket_of(40_000))
    assert quantile(sketch_of([7]), 0.95) == bucket_value(bucket_of(7))


def test_empty_sketch_has_no_quantile() -> None:
    assert quantile({}, 0.5) is None
    assert quantile({3: 0, 5: -2}, 0.9) is None
    # Non-positive buckets are ignored, not counted into ranks.
    assert quantile({0: -5, bucket_of(100): 1}, 0.0) == bucket_value(bucket_of(100))


@settings(max_examples=100, deadline=None)
@given(waits0, waits0)
def test_merge_of_sketches_is_sketch_of_concatenation(a: list[int], b: list[int]) -> None:
    sa, sb = sketch_of(a), sketch_of(b)
    sa_before, sb_before = dict(sa), dict(sb)
    assert merge(sa, sb) == sketch_of(a + b)
    assert merge(sb, sa) == sketch_of(a + b)
    assert (sa, sb) == (sa_before, sb_before)  # inputs untouched


@settings(max_examples=100, deadline=None)
@given(waits0, waits0)
def test_retraction_is_exact(a: list[int], b: list[int]) -> None:
    whole = sketch_of(a + b)
    assert subtract(whole, sketch_of(b)) == sketch_of(a)
    assert merge(whole, {i: -c for i, c in sketch_of(b).items()}) == sketch_of(a)
    for q in QS:
        assert quantile(subtract(whole, sketch_of(b)), q) == quantile(sketch_of(a), q)


def test_merge_result_is_canonical() -> None:
    # Zero counts never survive, whichever side they come from, so == compares sketches.
    assert merge({1: 0, 2: 3}, {}) == {2: 3}
    assert merge({2: 3}, {2: -3, 4: 0}) == {}


def test_windows_merge_like_minutes_into_an_hour() -> None:
    rng = random.Random(3)
    minutes = [[rng.choice([0, rng.randint(1, 600_000)]) for _ in range(rng.randint(0, 40))]
               for _ in range(60)]
    hour: dict[int, int] = {}
    for m in minutes:
        hour = merge(hour, sketch_of(m))
    assert hour == sketch_of([v for m in minutes for v in m])


@settings(max_examples=100, deadline=None)
@given(waits0)
def test_encode_decode_round_trip(values: list[int]) -> None:
    sketch = sketch_of(values)
    wire = encode(sketch)
    assert all(isinstance(k, str) for k in wire)
    assert decode(json.loads(json.dumps(wire))) == sketch


def test_encode_drops_zero_counts() -> None:
    assert encode({0: 2, 5: 0, 9: -1}) == {"0": 2, "9": -1}
    assert decode({"0": 2, "5": 0}) == {0: 2}


def test_fewer_than_1000_buckets_from_1_ms_to_7_days() -> None:
    top = 7 * DAY_MS
    distinct, v = 0, 1
    while v <= top:
        b = bucket_of(v)
        lo, hi = v, top  # binary search for the last value of bucket b (bucket_of is monotonic)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bucket_of(mid) == b:
                lo = mid
            else:
                hi = mid - 1
        distinct += 1
        v = lo + 1
    assert distinct < 1000
    assert distinct == 865  # the figure documented in ccpulse/core/sketch.py
    assert bucket_of(top) == 1012  # index span 1..1012; low ones hold no integer


@given(st.lists(st.integers(min_value=0, max_value=10**7), max_size=200),
       st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=5))
def test_quantiles_in_one_pass_equal_each_quantile(values: list[int], qs: list[float]) -> None:
    buckets = sketch_of(values)
    assert quantiles(buckets, qs) == [quantile(buckets, q) for q in qs]
