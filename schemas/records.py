"""Records ccpulse publishes and stores: built here, in one place, from domain objects.

Pure functions; the JSON Schemas in ``schemas/json/`` describe the same shapes.
"""

from __future__ import annotations

import base64
from typing import Any

from ccpulse.config import Thresholds
from ccpulse.core.kpis import WindowAgg, WindowKey, kpi_figures
from ccpulse.core.lifecycle import Interaction
from schemas.events import Event, Rejection, format_ms

WINDOW_NAMES = {60: "1m", 900: "15m", 3600: "1h", 86400: "1d"}


def window_name(size_s: int) -> str:
    return WINDOW_NAMES.get(size_s, f"{size_s}s")


def window_record_key(key: WindowKey) -> str:
    size, start, queue, channel = key
    return f"{window_name(size)}|{format_ms(start)}|{queue}|{channel}"


def window_record(key: WindowKey, agg: WindowAgg, th: Thresholds, version: int,
                  final: bool, now_ms: int) -> dict[str, Any]:
    """The ``kpi.windows`` value (and the ClickHouse ``kpi_windows`` row)."""
    size, start, queue, channel = key
    record: dict[str, Any] = {
        "window": window_name(size),
        "window_start": format_ms(start),
        "window_end": format_ms(start + size * 1000),
        "queue": queue,
        "channel": channel,
    }
    record.update(kpi_figures(agg, th))
    record.update({"version": version, "final": final, "published_at": format_ms(now_ms)})
    return record


def event_message(ev: Event, raw: bytes, topic: str, partition: int, offset: int) -> dict[str, Any]:
    """A valid event as forwarded (keyed by interaction) to the lifecycle stage and raw store."""
    return {
        "event_id": ev.event_id, "type": ev.type, "step": ev.step, "channel": ev.channel,
        "ts": ev.occurred_at_ms, "interaction_id": ev.interaction_id, "queue": ev.queue,
        "agent_id": ev.agent_id, "customer_id": ev.customer_id,
        "schema_version": ev.schema_version, "details": ev.details,
        "source": [topic, partition, offset],
        # The original payload, unknown fields included, for the raw store.
        "payload": raw.decode("utf-8"),
    }


def dead_letter(raw: bytes | None, rejection: Rejection, topic: str, partition: int,
                offset: int, now_ms: int) -> dict[str, Any]:
    """The ``events.dead-letter`` value: the original bytes (base64) and why they were refused."""
    return {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": format_ms(now_ms),
        "value_base64": base64.b64encode(raw or b"").decode("ascii"),
    }


def interaction_rows(inter: Interaction, version: int) -> list[dict[str, Any]]:
    """One row per queue segment of an interaction (most have one)."""
    rows = []
    derivation = inter.derive()
    for index, seg in enumerate(derivation.segments):
        rows.append({
            "interaction_id": inter.interaction_id,
            "segment": index,
            "channel": inter.channel,
            "queue": seg.queue,
            "offered_at": format_ms(seg.entered),
            "outcome": seg.exit or "waiting",
            "left_queue_at": None if seg.left is None else format_ms(seg.left),
            "wait_ms": seg.wait_ms,
            "agent_id": seg.agent,
            "transfers": len(seg.transfer_times),
            "ended_at": None if seg.ended is None else format_ms(seg.ended),
            "wrapup_ms": seg.wrapup_ms,
            "handle_ms": seg.handle_ms,
            "version": version,
        })
    return rows
