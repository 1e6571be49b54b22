"""KPI counters (METRICS.md) per scope x window: queues, and agents for longer windows.

An interaction's contribution to the windows is a multiset of *facts*
``(size_s, window_start_ms, scope, name, channel, field, value)`` where scope is
``"q"`` (name = queue) or ``"a"`` (name = agent id). Facts are derived from its
lifecycle; when a late-arriving step changes the derivation, the engine retracts
the facts that disappeared and applies the new ones. Every counter is an integer
(times in ms, sketch buckets as counts), so retraction is exact, sums never
drift, and 1-minute windows add up exactly to longer ones.

Attribution: ``offered`` counts in the window of queue entry; every other queue
outcome in the window in which the contact left the queue; handle time in the
window in which the contact ended; transfers, messages, solves, reopens, ratings
and complaints in the window in which they happened; a flow-out or a callback request
(a queue exit) in the window of the exit; each hold in the window in which it ended,
and ``held`` (a segment put on hold at least once) with its first hold.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ccpulse.core import sketch
from ccpulse.core.lifecycle import Derivation, Rating, Response, Segment, Solve, is_ticket
from ccpulse.core.params import Thresholds
from ccpulse.core.windowing import Windowing

Fact = tuple[int, int, str, str, str, str, int]
WindowKey = tuple[int, int, str, str, str]  # (size_s, window_start_ms, scope, name, channel)
QUEUE, AGENT = "q", "a"
AGENT_MIN_WINDOW_S = 900  # per-agent rollups for windows of 15 minutes and longer

# Exits of a queue segment: what leaves the waiting line (reconciliation).
EXITS = ("answered", "abandoned", "short_abandoned", "transferred_out", "flowed_out", "callbacks_requested")
ADDITIVE = (
    "offered", "answered", "abandoned", "short_abandoned", "answered_within_target",
    "abandoned_within_target", "answered_immediately", "transferred_out", "transfers", "handled",
    "wait_answered_ms", "wait_abandoned_ms", "handle_ms",
    "first_responses", "first_response_ms", "agent_responses", "agent_response_ms",
    "solved", "reopened", "one_touch", "resolution_ms",
    "csat_responses", "csat_satisfied", "nps_responses", "nps_promoters", "nps_detractors",
    "complaints", "flowed_out", "callbacks_requested", "held", "hold_ms",
)
MAXIMA = ("wait_answered_max_ms", "wait_abandoned_max_ms")
_KEPT_MAXIMA = frozenset(MAXIMA)
SKETCH = "wait_sk"  # value = sketch bucket of an answered wait
# Answered-wait histogram bounds (seconds) for Prometheus: the default service-level
# targets (20 s voice, 60 s chat) are bounds, so PromQL can compute them exactly.
WAIT_BUCKETS_S = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
                  600.0, 1200.0, 3600.0, 14400.0, 86400.0)
_BUCKETS_MS = tuple(int(b * 1000) for b in WAIT_BUCKETS_S)
# Counters that a fact adds its value to as it is (not a kept maximum, not a sketch bucket).
PLAIN_COUNTERS = frozenset(ADDITIVE) | {f"wait_bucket_{i}" for i in range(len(_BUCKETS_MS) + 1)}
# Retractions are rare (contradictory or out-of-order exits), so keeping the few
# largest values is enough to keep the maximum exact after one.
TOP_KEPT = 16


def bucket_index(wait_ms: int) -> int:
    """Index of the first bucket whose bound is >= wait (len(bounds) for +Inf)."""
    for i, bound in enumerate(_BUCKETS_MS):
        if wait_ms <= bound:
            return i
    return len(_BUCKETS_MS)


def segment_outcomes(seg: Segment, th: Thresholds) -> list[tuple[int, str, int]]:
    """(time, field, value) of one queue segment, before windowing."""
    out: list[tuple[int, str, int]] = [(seg.entered, "offered", 1)]
    wait = seg.wait_ms
    if seg.exit == "answered" and wait is not None:
        out += [(seg.left, "answered", 1), (seg.left, "wait_answered_ms", wait),
                (seg.left, "wait_answered_max_ms", wait), (seg.left, SKETCH, sketch.bucket_of(wait)),
                (seg.left, f"wait_bucket_{bucket_index(wait)}", 1)]
        if wait <= th.service_level_seconds * 1000:
            out.append((seg.left, "answered_within_target", 1))
        if wait <= th.immediate_seconds * 1000:
            out.append((seg.left, "answered_immediately", 1))
    elif seg.exit == "abandoned" and wait is not None:
        if th.short_abandon_seconds > 0 and wait <= th.short_abandon_seconds * 1000:
            out.append((seg.left, "short_abandoned", 1))
        else:
            out += [(seg.left, "abandoned", 1), (seg.left, "wait_abandoned_ms", wait),
                    (seg.left, "wait_abandoned_max_ms", wait)]
            if wait <= th.service_level_seconds * 1000:
                out.append((seg.left, "abandoned_within_target", 1))
    elif seg.exit == "transferred":
        out.append((seg.left, "transferred_out", 1))
    elif seg.exit == "flowed_out":
        out.append((seg.left, "flowed_out", 1))
    elif seg.exit == "callback_requested":
        out.append((seg.left, "callbacks_requested", 1))
    return out


def agent_outcomes(seg: Segment) -> list[tuple[int, str, int]]:
    out: list[tuple[int, str, int]] = [(ts, "transfers", 1) for ts in seg.transfer_times]
    if seg.holds:  # rare: no call for it on most segments
        first_end = seg.holds[0][1]
        out.append((first_end, "held", 1))
        out += [(end, "hold_ms", end - start) for start, end in seg.holds]
    handle = seg.handle_ms
    if handle is not None:
        out += [(seg.ended, "handled", 1), (seg.ended, "handle_ms", handle)]
    return out


def rating_outcomes(csat: int | None, nps: int | None, ts: int) -> list[tuple[int, str, int]]:
    out: list[tuple[int, str, int]] = []
    if csat is not None:
        out.append((ts, "csat_responses", 1))
        if csat >= 4:
            out.append((ts, "csat_satisfied", 1))
    if nps is not None:
        out.append((ts, "nps_responses", 1))
        if nps >= 9:
            out.append((ts, "nps_promoters", 1))
        elif nps <= 6:
            out.append((ts, "nps_detractors", 1))
    return out


# What an element of a derivation contributes, before windowing: (scope, name, (ts, field, value)).
Item = tuple[str, str, tuple[int, str, int]]


def segment_items(seg: Segment, first: bool, channel: str, th: Thresholds) -> list[Item]:
    """One queue segment's items (``first``: the interaction's first segment)."""
    items: list[Item] = [(QUEUE, seg.queue, o) for o in segment_outcomes(seg, th)]
    mine = agent_outcomes(seg)
    items += [(QUEUE, seg.queue, o) for o in mine]
    if seg.agent:
        items += [(AGENT, seg.agent, o) for o in mine]
        if seg.exit == "answered":
            items.append((AGENT, seg.agent, (seg.left, "answered", 1)))
    if first and seg.exit == "answered" and is_ticket(channel):
        # A ticket's first response is its answer: created -> first public agent reply.
        items += [(QUEUE, seg.queue, (seg.left, "first_responses", 1)),
                  (QUEUE, seg.queue, (seg.left, "first_response_ms", seg.wait_ms))]
    return items


def response_items(r: Response) -> list[Item]:
    items: list[Item] = [(QUEUE, r.queue, (r.ts, "agent_responses", 1)),
                         (QUEUE, r.queue, (r.ts, "agent_response_ms", r.response_ms))]
    if r.first:
        items += [(QUEUE, r.queue, (r.ts, "first_responses", 1)),
                  (QUEUE, r.queue, (r.ts, "first_response_ms", r.response_ms))]
    return items


def solve_items(s: Solve) -> list[Item]:
    items: list[Item] = [(QUEUE, s.queue, (s.ts, "solved", 1)), (QUEUE, s.queue, (s.ts, "resolution_ms", s.resolution_ms))]
    if s.one_touch:
        items.append((QUEUE, s.queue, (s.ts, "one_touch", 1)))
    return items


def rating_items(rating: Rating) -> list[Item]:
    outcomes = rating_outcomes(rating.csat, rating.nps, rating.ts)
    items: list[Item] = [(QUEUE, rating.queue, o) for o in outcomes]
    if rating.agent:
        items += [(AGENT, rating.agent, o) for o in outcomes]
    return items


def created_items(d: Derivation) -> list[Item]:
    """The items of the responses, solves, reopens and ratings of ``d`` (not its segments
    nor its complaint: those can still change while the interaction goes on)."""
    items: list[Item] = []
    for r in d.responses:
        items += response_items(r)
    for s in d.solves:
        items += solve_items(s)
    items += [(QUEUE, queue, (ts, "reopened", 1)) for ts, queue in d.reopens]
    for rating in d.ratings:
        items += rating_items(rating)
    return items


def complaint_items(complaint: tuple[int, str] | None) -> list[Item]:
    if complaint is None or not complaint[1]:
        return []
    return [(QUEUE, complaint[1], (complaint[0], "complaints", 1))]


def window_facts(items: Iterable[Item], channel: str, windowing: Windowing) -> Counter:
    """The facts of ``items``: one per window of every size each falls in."""
    return windowed(Counter(items), channel, windowing)


def windowed(items: Counter, channel: str, windowing: Windowing) -> Counter:
    """The facts of counted items (a negative count retracts), zero counts left out."""
    facts: Counter = Counter()
    for (scope, name, (ts, fname, value)), n in items.items():
        if not n:
            continue
        for size, start in windowing.starts(ts):
            if scope == AGENT and size < AGENT_MIN_WINDOW_S:
                continue
            facts[(size, start, scope, name, channel, fname, value)] += n
    return facts


def interaction_facts(d: Derivation, channel: str, thresholds: Callable[[str, str], Thresholds],
                      windowing: Windowing) -> Counter:
    """Every fact of one interaction's derivation, for every window size."""
    items: list[Item] = []
    for index, seg in enumerate(d.segments):
        items += segment_items(seg, index == 0, channel, thresholds(seg.queue, channel))
    items += created_items(d)
    items += complaint_items(d.complaint)
    return window_facts(items, channel, windowing)


@dataclass(slots=True)
class WindowAgg:
    """The counters of one scope x channel x window (a partial or a merged one)."""

    counts: dict[str, int] = field(default_factory=dict)
    tops: dict[str, list[int]] = field(default_factory=dict)  # ascending, at most TOP_KEPT

    def apply(self, name: str, value: int, sign: int) -> None:
        if name in _KEPT_MAXIMA:
            top = self.tops.setdefault(name, [])
            if sign > 0:
                insort(top, value)
                if len(top) > TOP_KEPT:
                    del top[0]
            elif value in top:
                top.remove(value)
            return
        if name == SKETCH:
            name, value = f"{SKETCH}:{value}", 1
        self.counts[name] = self.counts.get(name, 0) + sign * value

    def add(self, name: str, value: int, n: int) -> None:
        """``apply(name, value, 1)`` ``n`` times (n > 0), a counter in one update."""
        if name in PLAIN_COUNTERS:
            self.counts[name] = self.counts.get(name, 0) + n * value
            return
        for _ in range(n):
            self.apply(name, value, 1)

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not any(self.tops.values())

    def merge(self, other: "WindowAgg") -> None:
        for name, value in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        for name, values in other.tops.items():
            self.tops[name] = sorted(self.tops.get(name, []) + values)[-TOP_KEPT:]

    def sketch(self) -> dict[int, int]:
        prefix = f"{SKETCH}:"
        return {int(k[len(prefix):]): v for k, v in self.counts.items() if k.startswith(prefix) and v}

    def exits(self) -> int:
        return sum(self.counts.get(name, 0) for name in EXITS)

    def to_dict(self) -> dict[str, Any]:
        # Copies: an open window keeps changing after its snapshot was taken.
        return {"counts": {k: v for k, v in self.counts.items() if v},
                "tops": {k: list(v) for k, v in self.tops.items()}}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "WindowAgg":
        return cls(dict(doc["counts"]), {k: list(v) for k, v in doc["tops"].items()})


def ratio(numerator: int, denominator: int) -> float | None:
    """A ratio with an empty denominator is null, never 0 or NaN (METRICS.md)."""
    return None if denominator <= 0 else numerator / denominator


def occupancy(on_contact: int, after_contact_work: int, available: int) -> float | None:
    """(on contact + after-contact work) / (those + available): of the time an agent could
    take contacts, the share spent on them (METRICS.md "Agents and staffing")."""
    busy = on_contact + after_contact_work
    return ratio(busy, busy + available)


def utilization(on_contact: int, after_contact_work: int, staffed: int) -> float | None:
    """(on contact + after-contact work) / staffed; null for an agent never logged in."""
    return ratio(on_contact + after_contact_work, staffed)


def mean_seconds(total_ms: int, count: int) -> float | None:
    value = ratio(total_ms, count)
    return None if value is None else value / 1000


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


COUNT_FIELDS = ("offered", "answered", "abandoned", "short_abandoned", "answered_within_target",
                "abandoned_within_target", "answered_immediately", "transferred_out", "transfers",
                "handled", "first_responses", "agent_responses", "solved", "reopened", "one_touch",
                "csat_responses", "csat_satisfied", "nps_responses", "nps_promoters",
                "nps_detractors", "complaints", "flowed_out", "callbacks_requested", "held")
def kpi_figures(agg: WindowAgg, th: Thresholds) -> dict[str, Any]:
    """Counters plus derived figures, in the units of the published record (seconds)."""
    c = agg.counts
    answered, abandoned = c.get("answered", 0), c.get("abandoned", 0)
    exits = answered + abandoned
    out: dict[str, Any] = {name: c.get(name, 0) for name in COUNT_FIELDS}
    out["wait_answered_sum_seconds"] = c.get("wait_answered_ms", 0) / 1000
    out["wait_abandoned_sum_seconds"] = c.get("wait_abandoned_ms", 0) / 1000
    out["handle_time_sum_seconds"] = c.get("handle_ms", 0) / 1000
    out["hold_seconds"] = c.get("hold_ms", 0) / 1000
    out["avg_hold_seconds"] = mean_seconds(c.get("hold_ms", 0), c.get("held", 0))
    for name in MAXIMA:
        top = agg.tops.get(name)
        out[name.replace("_max_ms", "_max_seconds")] = top[-1] / 1000 if top else None
    waits = agg.sketch()
    for label, value in zip(("p50", "p90", "p95"), sketch.quantiles(waits, (0.5, 0.9, 0.95))):
        out[f"wait_answered_{label}_seconds"] = None if value is None else value / 1000
    out["wait_sketch"] = sketch.encode(waits)
    out["asa_seconds"] = mean_seconds(c.get("wait_answered_ms", 0), answered)
    out["aht_seconds"] = mean_seconds(c.get("handle_ms", 0), c.get("handled", 0))
    out["abandonment_rate"] = ratio(abandoned, exits)
    out["service_level"] = service_level(c, th.service_level_formula)
    out["service_level_formula"] = th.service_level_formula
    out["service_level_seconds"] = th.service_level_seconds
    out["immediate_response_rate"] = ratio(c.get("answered_immediately", 0), exits)
    out["transfer_rate"] = ratio(c.get("transfers", 0), answered)
    out["first_response_sum_seconds"] = c.get("first_response_ms", 0) / 1000
    out["first_response_avg_seconds"] = mean_seconds(c.get("first_response_ms", 0), c.get("first_responses", 0))
    out["agent_response_sum_seconds"] = c.get("agent_response_ms", 0) / 1000
    out["agent_response_avg_seconds"] = mean_seconds(c.get("agent_response_ms", 0), c.get("agent_responses", 0))
    out["resolution_sum_seconds"] = c.get("resolution_ms", 0) / 1000
    out["resolution_avg_seconds"] = mean_seconds(c.get("resolution_ms", 0), c.get("solved", 0))
    out["reopen_rate"] = ratio(c.get("reopened", 0), c.get("solved", 0))
    out["one_touch_rate"] = ratio(c.get("one_touch", 0), c.get("solved", 0))
    out["csat"] = ratio(c.get("csat_satisfied", 0), c.get("csat_responses", 0))
    nps_n = c.get("nps_responses", 0)
    nps = ratio(c.get("nps_promoters", 0) - c.get("nps_detractors", 0), nps_n)
    out["nps"] = None if nps is None else 100 * nps
    out["fcr_contacts"] = c.get("fcr_contacts", 0)
    out["fcr_decided"] = c.get("fcr_decided", 0)
    out["fcr_resolved"] = c.get("fcr_resolved", 0)
    out["fcr_rate"] = ratio(c.get("fcr_resolved", 0), c.get("fcr_decided", 0))
    out["wait_buckets"] = [c.get(f"wait_bucket_{i}", 0) for i in range(len(_BUCKETS_MS) + 1)]
    return out
