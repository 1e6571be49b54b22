"""The messages of ``<app>-window-partials``: one partition's part of a window, or of
a queue's live state, as the merge stage reads them (streams/merge.py)."""

from __future__ import annotations

import zlib
from typing import Any, Callable, Mapping

from ccpulse.core.engine import LiveQueue, Snapshot
from ccpulse.core.merge_clock import AGENTS_SOURCE_PREFIX
from schemas.records import window_record_key

# Open agent windows (>= 15 min: one per agent and size, thousands of them) go out at most
# this often, from every stage that has a part of them and from the merge: a source that
# sent them more often than the merge publishes them only wrote partials and changelog
# records nobody saw. Final ones go out at once. They are rollups, not the live view (a
# queue's agents by state are on kpi.queue-state every second). At 10 s they were as many
# kpi.agents records and agent_windows rows as the center had input events, and the
# ClickHouse writer, shared with the raw events, held the pipeline's checkpoints back: at
# 1,000 events/s, p50 latency on kpi.windows 1.5 to 3 s, against 0.6 s at 30 s
# (``ccpulse bench --only latency``, same session).
AGENT_WINDOW_SECONDS = 30.0
# ... a tenth of the agents at a time (``AgentRota``).
AGENT_SLICES = 10


class AgentRota:
    """Whose open agent windows are due: each agent's every ``every_ms``, one slice of
    the agents (by a stable hash of the id) at a time, the slices spread over the period.

    All at once, thousands of records went to the producer and to ClickHouse in one
    burst per period, and every stage's flush and insert queued behind it. The first
    call takes every agent (a rebuilt partition has all its windows changed); a slice's
    next turn is never sooner than ``every_ms`` after its last."""

    def __init__(self, every_ms: int = int(AGENT_WINDOW_SECONDS * 1000), slices: int = AGENT_SLICES) -> None:
        self.every_ms, self.slices = every_ms, slices
        self._next: list[int] = []  # slice -> wall clock ms of its next turn

    def due(self, now_ms: int) -> frozenset[int]:
        """The slices whose turn it is (all of them at the first call)."""
        if not self._next:
            self._next = [now_ms + self.every_ms + i * self.every_ms // self.slices for i in range(self.slices)]
            return frozenset(range(self.slices))
        due = frozenset(i for i, at in enumerate(self._next) if at <= now_ms)
        for i in due:
            while self._next[i] <= now_ms:  # late turns keep their phase: slices stay spread
                self._next[i] += self.every_ms
        return due

    def slice_of(self, agent: str) -> int:
        return zlib.crc32(agent.encode()) % self.slices

    def takes(self, slices: frozenset[int]) -> Callable[[str], bool]:
        """Whether an agent's open windows are taken this turn (``slices``: from ``due``)."""
        return lambda agent: self.slice_of(agent) in slices


def live_key(queue: str, channel: str) -> str:
    """The key of a queue x channel's live partials (also its entry in the merged table)."""
    return f"live|{queue}|{channel}"


def window_partial(partition: int, snap: Snapshot, end_ms: int, watermark: int) -> tuple[bytes, dict[str, Any]]:
    """(key, value) of one window's partial."""
    return window_record_key(snap.key).encode(), {
        "kind": "window", "key": list(snap.key), "partition": partition,
        "version": snap.version, "final": snap.final, "agg": snap.agg.to_dict(),
        "end": end_ms, "watermark": watermark,
        "waiting_at_start": snap.waiting_at_start, "waiting_at_end": snap.waiting_at_end}


def live_partial(partition: int, queue: str, channel: str, live: LiveQueue, version: int,
                 watermark: int) -> tuple[bytes, dict[str, Any]]:
    """(key, value) of one queue's live state on one partition."""
    return live_key(queue, channel).encode(), {
        "kind": "live", "queue": queue, "channel": channel, "partition": partition,
        "version": version, "watermark": watermark,
        "waiting": sum(live.waiting.values()),
        "oldest_entered": min(live.waiting) if live.waiting else None,
        "agents": sorted(live.busy), "open_tickets": live.open_tickets}




def agents_source(partition: int) -> str:
    """The merge's name of one agent-stage partition as a source (FCR's are ``fcr-<p>``):
    apart from the pipeline's partition numbers, which share the partials' topic."""
    return f"{AGENTS_SOURCE_PREFIX}{partition}"


def agents_live_partial(partition: int, queue: str, channel: str, counts: Mapping[str, int],
                        event_time: int) -> tuple[bytes, dict[str, Any]]:
    """(key, value) of the agents per state of one queue x channel on one partition of
    the agent stage (``AgentStage.live``: staffed, available, on_contact,
    after_contact_work, away, ``away:<reason>``). Versioned by the stage's event time,
    like its window partials; a queue whose agents are gone is sent once with no counts,
    so the merge drops what this partition said before."""
    return live_key(queue, channel).encode(), {
        "kind": "agents_live", "queue": queue, "channel": channel, "partition": agents_source(partition),
        "version": event_time, "watermark": event_time,
        "counts": {name: n for name, n in sorted(counts.items()) if n}}

