"""The messages of ``<app>-window-partials``: one partition's part of a window, or of
a queue's live state, as the merge stage reads them (streams/merge.py)."""

from __future__ import annotations

from typing import Any

from ccpulse.core.engine import LiveQueue, Snapshot
from schemas.records import window_record_key


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
