"""Stage 3: merge the partition-local partials of a window into one ``kpi.windows`` record.

Partials are full snapshots, so merging is idempotent: the newest snapshot per
source partition replaces the older one, and a re-delivered or replayed
snapshot (lower or equal version) changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from ccpulse.core.kpis import WindowAgg
from schemas.records import window_record, window_record_key
from streams.app import Pipeline
from streams.tables import delete, put

# A final merged window is kept this long (wall clock) after it was published,
# so a straggling partial is still merged rather than starting a fresh record.
FINAL_RETENTION_SECONDS = 600.0


def merged_record(entry: dict[str, Any], pipe: Pipeline, now_ms: int) -> dict[str, Any]:
    parts = entry["parts"]
    agg = WindowAgg()
    for part in parts.values():
        agg.merge(WindowAgg.from_dict(part["agg"]))
    size, start, queue, channel = entry["key"]
    final = all(part["final"] for part in parts.values())
    version = sum(part["version"] for part in parts.values())
    return window_record((size, start, queue, channel), agg,
                         pipe.settings.thresholds_for(queue, channel), version, final, now_ms)


def register(pipe: Pipeline) -> None:
    app = pipe.app
    merged = pipe.tables["merged"]
    out = pipe.topics["kpi_windows"]
    primed: list[bool] = []

    @app.agent(pipe.topics["partials"], name="merge")
    async def merge(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            for event in batch:
                partial = event.value
                key = window_record_key(tuple(partial["key"]))
                entry = merged.data.get(key) or {"key": partial["key"], "parts": {},
                                                 "partition": event.message.partition}
                source = str(partial["partition"])
                current = entry["parts"].get(source)
                if current is not None and current["version"] >= partial["version"]:
                    continue
                entry["parts"][source] = {"version": partial["version"], "final": partial["final"],
                                          "agg": partial["agg"]}
                entry.pop("published_final_at", None)
                put(merged, event.message.partition, key, entry)
                pipe.merged_dirty.add(key)

    @app.timer(pipe.settings.windows.publish_interval_seconds, name="publish-merged")
    async def publish_merged() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        if not primed:
            # A crash may have come between a table write and its publication.
            pipe.merged_dirty.update(merged.data.keys())
            primed.append(True)
        now = time.time()
        now_ms = int(now * 1000)
        dirty, pipe.merged_dirty = pipe.merged_dirty, set()
        for key in sorted(dirty):
            entry = merged.data.get(key)
            if entry is None:
                continue
            record = merged_record(entry, pipe, now_ms)
            await out.send(key=key.encode(), value=record)
            if record["final"]:
                entry["published_final_at"] = now
        for key, entry in list(merged.data.items()):
            done = entry.get("published_final_at")
            if done is not None and now - done > FINAL_RETENTION_SECONDS:
                delete(merged, entry["partition"], key)
