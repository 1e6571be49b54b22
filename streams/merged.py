"""The merged table's entries, in one place: their keys, their counters summed over their
parts and the ``kpi.windows`` / ``kpi.agents`` record published from them.

An entry gathers the partials of one window (``kind: window``) or of one queue's live
state (``kind: live``) sent by every source partition (``parts``: source -> its newest
partial). The merge stage (streams/stages/merge.py) writes the entries; its index, the
wallboard and ``/api/windows`` read them with these helpers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Protocol

from ccpulse.config import Settings
from ccpulse.core.kpis import QUEUE, WindowAgg
from schemas.records import queue_state_record, window_record, window_record_key
from ccpulse.core.merge_clock import AGENTS_SOURCE_PREFIX, FCR_SOURCE_PREFIX
from streams.stages.partials import live_key

Entry = dict[str, Any]
# An agent window's entry key: its record key behind this (record keys of queues and agents may meet).
AGENT_PREFIX = "agent|"
# The rolling view of kpi.queue-state (its last_15m, and the load agents_required is sized for).
ROLLING_WINDOW_MS = 15 * 60 * 1000
# Live partials of a queue x channel: the pipeline's (kind "live") and the agent stage's
# ("agents_live", from its sources AGENTS_SOURCE_PREFIX + partition) share its entry.
LIVE_KINDS = ("live", "agents_live")


class WithSettings(Protocol):
    """Whatever carries the settings: the pipeline context (/api/windows) or the merge stage."""

    settings: Settings


def live_queue(key: str) -> tuple[str, str]:
    """(queue, channel) of a live key; queue names never hold '|' (the config's name rule)."""
    _, queue, channel = key.split("|", 2)
    return queue, channel


def entry_key(partial: dict[str, Any]) -> tuple[str, Entry]:
    """A live or window partial's key in the merged table, and the fields a new entry starts with."""
    if partial.get("kind") in LIVE_KINDS:
        return (live_key(partial["queue"], partial["channel"]),
                {"kind": "live", "queue": partial["queue"], "channel": partial["channel"]})
    key = window_record_key(tuple(partial["key"]))
    key = key if partial["key"][2] == QUEUE else AGENT_PREFIX + key
    return key, {"kind": "window", "key": partial["key"], "end": partial["end"]}


def record_key(key: str) -> str:
    """The ``kpi.windows`` / ``kpi.agents`` key of a window entry's key (see ``entry_key``)."""
    return key[len(AGENT_PREFIX):] if key.startswith(AGENT_PREFIX) else key


def merged_agg(entry: Entry) -> WindowAgg:
    """A window entry's counters summed over its parts."""
    agg = WindowAgg()
    for part in entry["parts"].values():
        doc = part["agg"]
        agg.merge(WindowAgg(doc["counts"], doc["tops"]))  # read only: no copy (WindowAgg.from_dict)
    return agg


def merged_record(entry: Entry, pipe: WithSettings, now_ms: int, agg: WindowAgg | None = None) -> dict[str, Any]:
    """The record a window entry publishes; ``agg``: its merged counters when already at hand."""
    parts = entry["parts"]
    size, start, scope, name, channel = entry["key"]
    queue = name if scope == QUEUE else ""
    # The FCR part is a delayed window: it does not hold back `final` of the rest.
    kpi_parts = [p for source, p in parts.items() if not source.startswith(FCR_SOURCE_PREFIX)]
    fcr_parts = [p for source, p in parts.items() if source.startswith(FCR_SOURCE_PREFIX)]
    record = window_record(
        (size, start, scope, name, channel), entry["end"], agg if agg is not None else merged_agg(entry),
        pipe.settings.thresholds_for(queue, channel),
        version=sum(part["version"] for part in parts.values()),
        final=all(part["final"] for part in kpi_parts or fcr_parts), now_ms=now_ms,
        waiting_at_start=sum(part.get("waiting_at_start", 0) for part in kpi_parts),
        waiting_at_end=sum(part.get("waiting_at_end", 0) for part in kpi_parts))
    if scope == QUEUE:
        record["fcr_final"] = all(part["final"] for part in fcr_parts) if fcr_parts else None
    return record


def queue_state(pipe: WithSettings, queue: str, channel: str, parts: Mapping[str, dict[str, Any]], as_of: int,
                last15: WindowAgg, now_ms: int) -> dict[str, Any]:
    """The ``kpi.queue-state`` record of a live entry's parts (source -> part; none yet: {}):
    waiting and busy agents from the pipeline's parts, agents per state summed over the
    agent stage's, and ``last15`` the rolling view's counters."""
    contacts = [p for source, p in parts.items() if not source.startswith(AGENTS_SOURCE_PREFIX)]
    agents: Counter[str] = Counter()
    for source, part in parts.items():
        if source.startswith(AGENTS_SOURCE_PREFIX):
            agents.update(part["counts"])
    oldest = [p["oldest_entered"] for p in contacts if p["oldest_entered"] is not None]
    busy = set().union(*(p["agents"] for p in contacts))
    target = pipe.settings.targets.for_queue(queue, channel).get("service_level")
    return queue_state_record(
        queue, channel, as_of, sum(p["waiting"] for p in contacts), min(oldest) if oldest else None, len(busy),
        sum(p["open_tickets"] for p in contacts), last15, pipe.settings.thresholds_for(queue, channel), now_ms,
        agent_counts=agents, service_level_target=None if target is None else target.value,
        last15_seconds=ROLLING_WINDOW_MS / 1000,
        chat_sessions_per_agent=pipe.settings.staffing.chat_sessions_per_agent)
