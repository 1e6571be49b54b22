"""MergeIndex answers exactly what a full scan of the merged table would, after any writes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from ccpulse.core.kpis import QUEUE, WindowAgg
from streams.merge_index import MergeIndex, merged_agg

QUEUES = ["q1", "q2"]
CHANNELS = ["voice", "chat"]


def window(size: int, start: int, scope: str, name: str, channel: str, finals: list[bool], n: int) -> dict[str, Any]:
    parts = {str(i): {"final": f, "version": 1, "agg": {"counts": {"offered": n + i}, "tops": {}}}
             for i, f in enumerate(finals)}
    return {"kind": "window", "key": [size, start, scope, name, channel], "end": start + size * 1000,
            "parts": parts, "partition": 0}


def live(queue: str, channel: str, waiting: list[int]) -> dict[str, Any]:
    return {"kind": "live", "queue": queue, "channel": channel,
            "parts": {str(i): {"waiting": w} for i, w in enumerate(waiting)}}


entries = st.one_of(
    st.builds(lambda size, start, scope, q, c, finals, n: (f"{size}|{start}|{scope}|{q}|{c}",
                                                         window(size, start * 60000, scope, q, c, finals, n)),
              st.sampled_from([60, 300]), st.integers(0, 20), st.sampled_from([QUEUE, "a"]),
              st.sampled_from(QUEUES), st.sampled_from(CHANNELS), st.lists(st.booleans(), min_size=1, max_size=3),
              st.integers(0, 5)),
    st.builds(lambda q, c, w: (f"live|{q}|{c}", live(q, c, w)),
              st.sampled_from(QUEUES), st.sampled_from(CHANNELS), st.lists(st.integers(0, 2), min_size=1, max_size=3)),
)


def scan_rolling(data: dict[str, Any], queue: str, channel: str, since: int) -> set[str]:
    return {k for k, e in data.items() if e["kind"] == "window" and e["key"][0] == 60 and e["key"][2] == QUEUE
            and (e["key"][3], e["key"][4]) == (queue, channel) and e["end"] > since}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), entries), max_size=80), st.integers(0, 25))
def test_index_matches_a_full_scan(ops: list[tuple[bool, tuple[str, dict[str, Any]]]], since_min: int) -> None:
    data: dict[str, Any] = {}
    index = MergeIndex(60)
    index.rebuild(data, 1)
    for is_delete, (key, entry) in ops:
        if is_delete:
            index.delete(key, data.pop(key, None))
        else:
            data[key] = entry
            index.put(key, entry)
        if key in data and data[key]["kind"] == "window":
            assert index.agg(key, data[key]).counts == merged_agg(data[key]).counts
    since = since_min * 60000
    assert index.waiting() == {k for k, e in data.items()
                               if e["kind"] == "live" and any(p["waiting"] for p in e["parts"].values())}
    assert set(index.final()) == {k for k, e in data.items()
                                  if e["kind"] == "window" and all(p["final"] for p in e["parts"].values())}
    for q in QUEUES:
        for c in CHANNELS:
            assert {k for k, _ in index.rolling(data, q, c, since)} == scan_rolling(data, q, c, since)
    rebuilt = MergeIndex(60)
    rebuilt.rebuild(data, 2)
    assert rebuilt.waiting() == index.waiting() and set(rebuilt.final()) == set(index.final())


def test_a_changed_window_is_merged_again() -> None:
    index = MergeIndex(60)
    entry = window(60, 0, QUEUE, "q1", "voice", [False], 1)
    index.put("k", entry)
    assert index.agg("k", entry).counts == {"offered": 1}
    entry["parts"]["0"]["agg"] = {"counts": {"offered": 7}, "tops": {}}
    index.put("k", entry)
    assert index.agg("k", entry).counts == {"offered": 7}
    assert isinstance(index.agg("k", entry), WindowAgg)
