"""Builders the stage-level agent tests share: calls as the input topics carry them, and
interaction ids that land on a chosen partition."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from ccpulse.config import Settings, WindowSettings
from ccpulse.core.timestamps import format_ms
from schemas.events import parse_timestamp_ms
from schemas.records import window_name
from streams.stages.pipeline import key_partition


def iid_on(partition: int, partitions: int, prefix: str = "i") -> str:
    """The first ``<prefix><n>`` whose key lands on ``partition`` of ``partitions``."""
    n = 0
    while key_partition(f"{prefix}{n}".encode(), partitions) != partition:
        n += 1
    return f"{prefix}{n}"


def call(iid: str, n: int, kind: str, ts: int, **extra: Any) -> bytes:
    """``call.<kind>`` number ``n`` of ``iid`` at ``ts`` (epoch ms); an offer to billing."""
    doc = {"event_id": f"{iid}-{n}", "type": f"call.{kind}", "occurred_at": format_ms(ts),
           "interaction_id": iid, **extra}
    if kind == "offered":
        doc.setdefault("queue", "billing")
    return orjson.dumps(doc)


def stage_settings(partitions: int, **windows: Any) -> Settings:
    """Default settings with ``partitions`` and these ``[windows]`` values."""
    base = Settings()
    return replace(base, kafka=replace(base.kafka, partitions=partitions),
                   windows=replace(WindowSettings(), **windows))


STATE_FIELDS = ("staffed", "available", "on_contact", "after_contact_work", "away")


def as_partial(record: dict[str, Any], sizes: tuple[int, ...]) -> tuple[tuple, dict[str, Any]]:
    """(window key, the partial it stands for) of a ``kpi.agents`` record the agent stage
    publishes itself: its counters back in milliseconds, as its queue partials carry them."""
    size = next(s for s in sizes if window_name(s) == record["window"])
    counts = {f"{name}_ms": round(record[f"{name}_seconds"] * 1000) for name in STATE_FIELDS}
    counts.update({f"away_ms:{reason}": round(seconds * 1000)
                   for reason, seconds in record["away_seconds_by_reason"].items()})
    key = (size, parse_timestamp_ms(record["window_start"]), "a", record["agent_id"], record["channel"])
    return key, {"key": list(key), "version": record["version"], "final": record["final"],
                 "agg": {"counts": {k: v for k, v in counts.items() if v}, "tops": {}}}
