"""Queue KPI counters (METRICS.md) per queue x channel x window.

An interaction's contribution to the windows is a multiset of *facts*
``(size_s, window_start_ms, queue, channel, field, value)``. Facts are derived
from its segments; when a late-arriving step changes the derivation, the engine
retracts the facts that disappeared and applies the new ones. Counters are
integers (times in ms), so retraction is exact and sums never drift.

Attribution: ``offered`` counts in the window of queue entry; every other queue
outcome in the window in which the contact left the queue; handle time in the
window in which the contact ended; an agent transfer in the window it happened.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ccpulse.config import Thresholds
from ccpulse.core.lifecycle import Segment

Fact = tuple[int, int, str, str, str, int]
WindowKey = tuple[int, int, str, str]  # (size_s, window_start_ms, queue, channel)

ADDITIVE = (
    "offered", "answered", "abandoned", "short_abandoned", "answered_within_target",
    "abandoned_within_target", "answered_immediately", "wait_answered_ms", "wait_abandoned_ms",
    "transferred_out", "transfers", "handled", "handle_ms",
)
MAXIMA = ("wait_answered_max_ms", "wait_abandoned_max_ms")
# Answered-wait histogram bounds (seconds) for Prometheus: the default service-level
# targets (20 s voice, 60 s chat) are bounds, so PromQL can compute them exactly.
WAIT_BUCKETS_S = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
                  600.0, 1200.0, 3600.0)
_BUCKETS_MS = tuple(int(b * 1000) for b in WAIT_BUCKETS_S)
# Retractions are rare (contradictory or out-of-order exits), so keeping the few
# largest values is enough to keep the maximum exact after one.
TOP_KEPT = 16


def window_start(ts_ms: int, size_s: int) -> int:
    size_ms = size_s * 1000
    return ts_ms - ts_ms % size_ms


def bucket_index(wait_ms: int) -> int:
    """Index of the first bucket whose bound is >= wait (len(bounds) for +Inf)."""
    for i, bound in enumerate(_BUCKETS_MS):
        if wait_ms <= bound:
            return i
    return len(_BUCKETS_MS)


def segment_facts(seg: Segment, channel: str, th: Thresholds, sizes: Iterable[int]) -> list[Fact]:
    """Every fact one queue segment contributes, for every window size."""
    base: list[tuple[int, str, int]] = [(seg.entered, "offered", 1)]
    wait = seg.wait_ms
    if seg.exit == "answered" and wait is not None:
        base += [(seg.left, "answered", 1), (seg.left, "wait_answered_ms", wait),
                 (seg.left, "wait_answered_max_ms", wait),
                 (seg.left, f"wait_bucket_{bucket_index(wait)}", 1)]
        if wait <= th.service_level_seconds * 1000:
            base.append((seg.left, "answered_within_target", 1))
        if wait <= th.immediate_seconds * 1000:
            base.append((seg.left, "answered_immediately", 1))
    elif seg.exit == "abandoned" and wait is not None:
        if th.short_abandon_seconds > 0 and wait <= th.short_abandon_seconds * 1000:
            base.append((seg.left, "short_abandoned", 1))
        else:
            base += [(seg.left, "abandoned", 1), (seg.left, "wait_abandoned_ms", wait),
                     (seg.left, "wait_abandoned_max_ms", wait)]
            if wait <= th.service_level_seconds * 1000:
                base.append((seg.left, "abandoned_within_target", 1))
    elif seg.exit == "transferred":
        base.append((seg.left, "transferred_out", 1))
    for ts in seg.transfer_times:
        base.append((ts, "transfers", 1))
    handle = seg.handle_ms
    if handle is not None:
        base += [(seg.ended, "handled", 1), (seg.ended, "handle_ms", handle)]
    return [(size, window_start(ts, size), seg.queue, channel, name, value)
            for size in sizes for ts, name, value in base]


def interaction_facts(segments: Iterable[Segment], channel: str,
                      thresholds: Callable[[str, str], Thresholds], sizes: Iterable[int]) -> Counter:
    sizes = tuple(sizes)
    facts: Counter = Counter()
    for seg in segments:
        facts.update(segment_facts(seg, channel, thresholds(seg.queue, channel), sizes))
    return facts


@dataclass(slots=True)
class WindowAgg:
    """The counters of one queue x channel x window (a partial or a merged one)."""

    counts: dict[str, int] = field(default_factory=dict)
    tops: dict[str, list[int]] = field(default_factory=dict)  # ascending, at most TOP_KEPT

    def apply(self, name: str, value: int, sign: int) -> None:
        if name in MAXIMA:
            top = self.tops.setdefault(name, [])
            if sign > 0:
                insort(top, value)
                if len(top) > TOP_KEPT:
                    del top[0]
            elif value in top:
                top.remove(value)
            return
        self.counts[name] = self.counts.get(name, 0) + sign * value

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not any(self.tops.values())

    def merge(self, other: "WindowAgg") -> None:
        for name, value in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        for name, values in other.tops.items():
            self.tops[name] = sorted(self.tops.get(name, []) + values)[-TOP_KEPT:]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {k: v for k, v in self.counts.items() if v}, "tops": self.tops}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "WindowAgg":
        return cls(dict(doc["counts"]), {k: list(v) for k, v in doc["tops"].items()})


def ratio(numerator: int, denominator: int) -> float | None:
    """A ratio with an empty denominator is null, never 0 or NaN (METRICS.md)."""
    return None if denominator <= 0 else numerator / denominator


def service_level(c: dict[str, int], formula: str) -> float | None:
    within = c.get("answered_within_target", 0)
    answered, abandoned = c.get("answered", 0), c.get("abandoned", 0)
    ab_within = c.get("abandoned_within_target", 0)
    if formula == "answered_over_exits":
        return ratio(within, answered + abandoned)
    if formula == "abandons_within_target_neutral":
        return ratio(within, answered + abandoned - ab_within)
    if formula == "abandons_within_target_positive":
        return ratio(within + ab_within, answered + abandoned)
    if formula == "answered_only":
        return ratio(within, answered)
    raise ValueError(f"unknown service level formula {formula!r}")


def kpi_figures(agg: WindowAgg, th: Thresholds) -> dict[str, Any]:
    """Counters plus derived figures, in the units of the published record (seconds)."""
    c = agg.counts
    answered, abandoned = c.get("answered", 0), c.get("abandoned", 0)
    exits = answered + abandoned
    out: dict[str, Any] = {name: c.get(name, 0) for name in ADDITIVE
                           if not name.endswith("_ms")}
    out["wait_answered_sum_seconds"] = c.get("wait_answered_ms", 0) / 1000
    out["wait_abandoned_sum_seconds"] = c.get("wait_abandoned_ms", 0) / 1000
    out["handle_time_sum_seconds"] = c.get("handle_ms", 0) / 1000
    for name in MAXIMA:
        top = agg.tops.get(name)
        out[name.replace("_max_ms", "_max_seconds")] = top[-1] / 1000 if top else None
    asa = ratio(c.get("wait_answered_ms", 0), answered)
    out["asa_seconds"] = None if asa is None else asa / 1000
    aht = ratio(c.get("handle_ms", 0), c.get("handled", 0))
    out["aht_seconds"] = None if aht is None else aht / 1000
    out["abandonment_rate"] = ratio(abandoned, exits)
    out["service_level"] = service_level(c, th.service_level_formula)
    out["service_level_formula"] = th.service_level_formula
    out["service_level_seconds"] = th.service_level_seconds
    out["immediate_response_rate"] = ratio(c.get("answered_immediately", 0), exits)
    out["transfer_rate"] = ratio(c.get("transfers", 0), answered)
    out["wait_buckets"] = [c.get(f"wait_bucket_{i}", 0) for i in range(len(_BUCKETS_MS) + 1)]
    return out
