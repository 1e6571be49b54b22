"""Mergeable wait-time quantile sketch (DDSketch-style) as additive integer counters.

A sketch is a plain ``{bucket_index: count}`` mapping. That shape is the whole
point: the engine keeps every KPI as integer counters, so a sketch merges into a
longer window by adding counts and a retracted fact is removed by subtracting
its count, both exactly, in any order.

Buckets (a = ``RELATIVE_ACCURACY`` = 0.01, gamma = (1 + a) / (1 - a) = 101/99):

* index 0 holds the value 0 only; immediate answers are common and must come
  out as exactly 0, which a logarithmic bucket cannot represent;
* index ``k + 1`` (k >= 0) holds the values v with gamma**(k-1) < v <= gamma**k,
  i.e. k = ceil(log_gamma(v)). Its representative (1 - a) * gamma**k, which equals
  2 * gamma**k / (gamma + 1), is within relative error a of every value in it.

A quantile is the representative of the bucket holding the requested rank, so
it is within relative error a of the exact value of that rank. Integer values
from 1 ms to 7 days fall into 865 distinct buckets (index span 1..1012: below
about 50 ms the buckets are narrower than 1 ms and most hold no integer).

Bucket membership is decided exactly: the floating-point logarithm only
proposes the index, and a value within rounding distance of a bucket bound is
settled by integer arithmetic against the exact rational gamma. So bucket_of is
monotonic and the same on every platform, which matters because bucket indices
are persisted and merged across processes.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

RELATIVE_ACCURACY: float = 0.01
# Exact twin of RELATIVE_ACCURACY (parsed from its decimal text, so 1/100, not the
# binary float): bucket bounds are powers of this rational gamma, checked in integers.
_A = Fraction(str(RELATIVE_ACCURACY))
_GAMMA = (1 + _A) / (1 - _A)
_G_NUM, _G_DEN = _GAMMA.numerator, _GAMMA.denominator
_REP = 1 - _A  # 2 / (gamma + 1), exactly
GAMMA: float = float(_GAMMA)
_LOG_GAMMA = math.log(_G_NUM) - math.log(_G_DEN)
ZERO_BUCKET = 0
# The float index x = log(v) / log(gamma) is off by a few ulps (relative ~1e-15), yet
# from about 1.5e10 ms on some integers lie closer than that to a bound and the float
# alone misplaces them; a slack of 1e-9 * (1 + x) sends all such values to the exact check.
_NEAR_BOUND = 1e-9


def _at_most_power(value: int, k: int) -> bool:
    """value <= gamma**k (k >= 0), in exact integer arithmetic."""
    return value * _G_DEN**k <= _G_NUM**k


def bucket_of(value_ms: int) -> int:
    """Bucket index of a wait time; non-decreasing in the value."""
    if not isinstance(value_ms, int) or isinstance(value_ms, bool):
        raise TypeError(f"wait must be an int number of ms, got {value_ms!r}")
    if value_ms < 0:
        raise ValueError(f"wait must be >= 0 ms, got {value_ms}")
    if value_ms == 0:
        return ZERO_BUCKET
    x = math.log(value_ms) / _LOG_GAMMA
    k = math.ceil(x)
    slack = _NEAR_BOUND * (1.0 + x)
    if k - x <= slack or x - (k - 1) <= slack:
        # Within rounding distance of gamma**k or gamma**(k-1) (e.g. v = 1 = gamma**0):
        # the float could land on either side, so find the smallest k with v <= gamma**k.
        k = max(k, 0)
        while not _at_most_power(value_ms, k):
            k += 1
        while k > 0 and _at_most_power(value_ms, k - 1):
            k -= 1
    return k + 1  # shifted past the zero bucket


def bucket_value(index: int) -> float:
    """Representative value (ms) of a bucket, within RELATIVE_ACCURACY of all its values.

    Holds for every integer below 2**46 ms (checked exhaustively by the tests);
    far beyond that a float's spacing no longer always fits inside a bucket's margin.
    """
    if index == ZERO_BUCKET:
        return 0.0
    if index < 0:
        raise ValueError(f"no bucket has a negative index: {index}")
    k = index - 1
    num = _REP.numerator * _G_NUM**k
    den = _REP.denominator * _G_DEN**k
    rep = num / den  # int / int: correctly rounded
    n, d = rep.as_integer_ratio()
    if n * den < num * d:
        # Round up, towards the bucket's upper bound: that bound belongs to the bucket
        # (v = 1 = gamma**0 sits exactly at relative error a), the lower bound does not.
        rep = math.nextafter(rep, math.inf)
    return rep


def sketch_of(values_ms: Iterable[int]) -> dict[int, int]:
    return dict(Counter(bucket_of(v) for v in values_ms))


def quantile(buckets: Mapping[int, int], q: float) -> float | None:
    """Lower quantile: the value at 0-based rank int(q * (n - 1)), within RELATIVE_ACCURACY.

    Buckets with a count <= 0 are ignored (a transiently over-retracted window must
    not shift ranks). None for an empty sketch.
    """
    return quantiles(buckets, (q,))[0]


def quantiles(buckets: Mapping[int, int], qs: Sequence[float]) -> list[float | None]:
    """``quantile`` of each of ``qs`` (in any order), sorting the buckets once."""
    for q in qs:
        if not 0.0 <= q <= 1.0:  # also rejects NaN
            raise ValueError(f"quantile must be in [0, 1], got {q!r}")
    live = sorted((i, c) for i, c in buckets.items() if c > 0)
    n = sum(c for _, c in live)
    if n == 0:
        return [None] * len(qs)
    # Same expression as sorted(values)[int(q * (n - 1))], so the float rounding matches too.
    out: list[float | None] = [None] * len(qs)
    pending = sorted((int(q * (n - 1)), k) for k, q in enumerate(qs))
    seen = 0
    at = 0
    for index, count in live:
        seen += count
        while at < len(pending) and pending[at][0] < seen:
            out[pending[at][1]] = bucket_value(index)
            at += 1
        if at == len(pending):
            return out
    raise AssertionError("unreachable: rank < n")


def merge(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    """Counts added; zero counts dropped so equal sketches compare equal."""
    out = {i: c for i, c in a.items() if c}
    for i, c in b.items():
        total = out.get(i, 0) + c
        if total:
            out[i] = total
        else:
            out.pop(i, None)
    return out


def subtract(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    """Retraction: a minus b, exact because counts are integers."""
    return merge(a, {i: -c for i, c in b.items()})


def encode(buckets: Mapping[int, int]) -> dict[str, int]:
    # JSON objects need string keys; sorted so equal sketches serialize identically.
    return {str(i): c for i, c in sorted(buckets.items()) if c}


def decode(data: Mapping[str, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, count in data.items():
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"bucket {key!r}: count must be an int, got {count!r}")
        index = int(key)
        if index < 0:
            raise ValueError(f"no bucket has a negative index: {key!r}")
        if count:
            out[index] = out.get(index, 0) + count
    return out
