"""What ``ccpulse chaos`` counts: comparing a faulted run's KPI windows with a clean run's.

Definitions (printed by the command and used for PASS/FAIL):

- a window is identified by (window, window_start, queue, channel); both runs
  must have the same windows, every one of them final;
- for each window of the smallest size and each integer counter (offered,
  answered, handled, solved, csat_responses, ...):
  ``lost`` = sum of max(0, reference - faulted) and
  ``counted twice`` = sum of max(0, faulted - reference); a window missing
  from the faulted run counts all its counters as lost, an extra one as twice;
- ``mismatched`` = every other KPI field (ratios, sums, percentiles, sketches,
  waiting_at_start, fcr_*, final) of every window size that differs at all;
  bookkeeping fields (version, published_at) are ignored;
- for raw events: lost = event ids accepted (sent minus expected rejects) that
  are not in ``raw_events``; counted twice = rows of ``raw_events FINAL``
  beyond one per event id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

IGNORED_FIELDS = frozenset({"version", "published_at", "window_start_ms"})
WindowId = tuple[str, int, str, str]


@dataclass
class WindowDiff:
    windows: int = 0            # windows in the reference
    counter_total: int = 0      # sum of the reference's counters (smallest size)
    lost: int = 0
    twice: int = 0
    missing: list[WindowId] = field(default_factory=list)
    extra: list[WindowId] = field(default_factory=list)
    not_final: list[WindowId] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "window/start/queue/channel field: ref != got"

    @property
    def exact(self) -> bool:
        return not (self.lost or self.twice or self.missing or self.extra or self.not_final or self.mismatched)

    def summary(self, limit: int = 8) -> list[str]:
        lines = []
        for label, items in (("missing", self.missing), ("extra", self.extra), ("not final", self.not_final)):
            if items:
                lines.append(f"{label} windows ({len(items)}): " + ", ".join("/".join(map(str, w)) for w in items[:limit]))
        if self.mismatched:
            lines.append(f"differing fields ({len(self.mismatched)}): " + "; ".join(self.mismatched[:limit]))
        return lines


def to_ms(value: Any) -> int:
    """window_start from Kafka (RFC 3339 text) or from the store (ISO text via JSON)."""
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).replace("Z", "+00:00").replace(" ", "T", 1)
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def closed_by_sentinel(records: Iterable[Mapping[str, Any]], sentinel_queue: str,
                       lateness_ms: int) -> list[Mapping[str, Any]]:
    """The records of windows the sentinel closes, the sentinel's own left out.

    The sentinel is at or after its newest window's start; a window ending a lateness
    before that is closed by it. Later windows exist only because event time moved
    there: the agent stage counts the agents of calls the workload left open as on
    contact up to event time, and no event comes to close those windows. Before any
    sentinel window is read, every record is kept (nothing closed them yet)."""
    records = list(records)
    starts = [to_ms(r["window_start"]) for r in records if r.get("queue") == sentinel_queue]
    kept = [r for r in records if r.get("queue") != sentinel_queue]
    if not starts:
        return kept
    return [r for r in kept if ends_by(r, max(starts) - lateness_ms)]


def ends_by(record: Mapping[str, Any], cutoff_ms: int) -> bool:
    """Whether the record's window ends at or before ``cutoff_ms``: the one test both
    chaos and same-day use for "a window the closing sentinel closes" (a record with no
    window, e.g. an FCR part keyed apart, always is)."""
    return "window_end" not in record or to_ms(record["window_end"]) <= cutoff_ms


def index_windows(records: Iterable[Mapping[str, Any]], exclude_queues: frozenset[str]) -> dict[WindowId, dict[str, Any]]:
    out: dict[WindowId, dict[str, Any]] = {}
    for record in records:
        if record.get("queue") in exclude_queues:
            continue
        start = record.get("window_start_ms", record["window_start"])
        out[(record["window"], to_ms(start), record["queue"], record["channel"])] = dict(record)
    return out


def _is_counter(name: str, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not name.startswith("waiting_")


def compare_windows(reference: Mapping[WindowId, Mapping[str, Any]],
                    got: Mapping[WindowId, Mapping[str, Any]], counted_size: str) -> WindowDiff:
    """Compare two runs' windows (see the module docstring for the definitions)."""
    diff = WindowDiff(windows=len(reference))
    for wid in sorted(set(reference) | set(got)):
        ref, mine = reference.get(wid), got.get(wid)
        if mine is not None and not mine.get("final"):
            diff.not_final.append(wid)
        if ref is None or mine is None:
            (diff.missing if mine is None else diff.extra).append(wid)
        if wid[0] == counted_size:
            for name, value in (ref or mine or {}).items():
                if name not in IGNORED_FIELDS and _is_counter(name, value):
                    r = int((ref or {}).get(name) or 0)
                    g = int((mine or {}).get(name) or 0)
                    diff.counter_total += r
                    diff.lost += max(0, r - g)
                    diff.twice += max(0, g - r)
        if ref is None or mine is None:
            continue
        for name in sorted(set(ref) | set(mine)):
            if name in IGNORED_FIELDS:
                continue
            if _norm(ref.get(name)) != _norm(mine.get(name)):
                diff.mismatched.append(f"{'/'.join(map(str, wid))} {name}: {ref.get(name)!r} != {mine.get(name)!r}")
    return diff


def _norm(value: Any) -> Any:
    # The store returns maps as dicts and arrays as lists, Kafka the same via JSON;
    # sketches may list their buckets in any order.
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    return value


@dataclass
class RawCheck:
    expected: int
    stored_distinct: int
    rows_final: int
    lost: int
    twice: int


def check_raw(expected_ids: set[str], store: Mapping[str, Any]) -> RawCheck:
    stored = set(store["raw_ids"])
    rows_final = int(store["raw"]["rows_final"])
    distinct = int(store["raw"]["distinct_ids"])
    return RawCheck(expected=len(expected_ids), stored_distinct=len(stored & expected_ids),
                    rows_final=rows_final, lost=len(expected_ids - stored), twice=max(0, rows_final - distinct))


# Faust logs each assignment a worker takes as a table of topics, after this line.
ASSIGNED = "Setting newly assigned partitions"


def unassigned_changelogs(name: str, log: str, changelogs: Iterable[str]) -> list[str]:
    """Which of ``changelogs`` worker ``name``'s last assignment (in its ``log``) left out.
    Every worker of the group is assigned every changelog partition (its own as active,
    the others as standby); a group leader whose metadata lacked one ("Ignoring missing
    topic") assigned it to nobody, and that table was never recovered."""
    at = log.rfind(ASSIGNED)
    if at < 0:
        return [f"worker {name} logged no assignment"]
    table = log[at:].split(" for group ", 1)[0]
    names = {cell.strip() for line in table.splitlines() if line.startswith("|")
             for cell in line.split("|")[1:2]}
    missing = sorted(set(changelogs) - names)
    return [f"worker {name}'s last assignment has no partition of {', '.join(missing)}: "
            "its table is not recovered"] if missing else []
