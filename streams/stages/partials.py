"""The messages of ``<app>-window-partials``: one partition's part of a window, or of
a queue's live state, as the merge stage reads them (streams/merge.py)."""

from __future__ import annotations

from typing import Any, Mapping

from ccpulse.core.engine import LiveQueue, Snapshot
from ccpulse.core.merge_clock import AGENTS_SOURCE_PREFIX
from schemas.records import window_record_key

# Open agent windows (>= 15 min: one per agent and size, thousands of them) go out at most
# this often, from every stage that has a part of them and from the merge: a source that
# sent them more often than the merge publishes them only wrote partials and changelog
# records nobody saw. Final ones go out at once.
AGENT_WINDOW_SECONDS = 10.0


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

