"""MergeIndex.rolling_agg: the last-15-minutes sum of a queue's 1-minute windows, reusing the
sum of its final windows between calls, equals summing every window again, whatever was written
(a final window merged again with new counts included)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from ccpulse.core.kpis import QUEUE, WindowAgg
from streams.merge_index import MergeIndex
from streams.merged import merged_agg

MIN = 60_000


def window(start_min: int, finals: list[bool], n: int, top: int) -> tuple[str, dict[str, Any]]:
    parts = {str(i): {"final": f, "version": 1,
                      "agg": {"counts": {"offered": n + i, "wait_answered_ms": 7 * n}, "tops": {"wait_max_ms": [top + i]}}}
             for i, f in enumerate(finals)}
    return f"1m|{start_min}|billing|voice", {"kind": "window", "key": [60, start_min * MIN, QUEUE, "billing", "voice"],
                                             "end": (start_min + 1) * MIN, "parts": parts, "partition": 0}


ops = st.lists(st.tuples(st.sampled_from(["put", "delete", "read"]), st.integers(0, 30),
                         st.lists(st.booleans(), min_size=1, max_size=3), st.integers(0, 9), st.integers(0, 99),
                         st.integers(0, 31)), max_size=60)


def scan(data: dict[str, Any], since: int) -> WindowAgg:
    total = WindowAgg()
    for entry in data.values():
        if entry["end"] > since:
            total.merge(merged_agg(entry))
    return total


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_rolling_sum_equals_a_full_sum(steps: list[tuple[str, int, list[bool], int, int, int]]) -> None:
    data: dict[str, Any] = {}
    index = MergeIndex(60)
    for op, start, finals, n, top, since_min in steps:
        key, entry = window(start, finals, n, top)
        if op == "put":
            data[key] = entry
            index.put(key, entry)
        elif op == "delete":
            index.delete(key, data.pop(key, None))
        got = index.rolling_agg(data, "billing", "voice", since_min * MIN)
        want = scan(data, since_min * MIN)
        assert (got.counts, got.tops) == ({k: v for k, v in want.counts.items()}, want.tops)


def test_a_final_window_deleted_unseen_and_written_again_is_summed_anew() -> None:
    data: dict[str, Any] = {}
    index = MergeIndex(60)
    key, entry = window(0, [True], 1, 5)
    data[key] = entry
    index.put(key, entry)
    assert index.rolling_agg(data, "billing", "voice", 0).counts["offered"] == 1
    index.delete(key, None)  # as the expiry does for a key recovery already removed
    key, entry = window(0, [True], 4, 5)
    data[key] = entry
    index.put(key, entry)
    assert index.rolling_agg(data, "billing", "voice", 0).counts["offered"] == 4


def test_the_sum_handed_out_is_not_the_cached_one() -> None:
    data: dict[str, Any] = {}
    index = MergeIndex(60)
    for start in (0, 1):
        key, entry = window(start, [True], 1, 5)
        data[key] = entry
        index.put(key, entry)
    first = index.rolling_agg(data, "billing", "voice", 0)
    first.merge(WindowAgg({"offered": 100}, {}))
    assert index.rolling_agg(data, "billing", "voice", 0).counts["offered"] == 2
