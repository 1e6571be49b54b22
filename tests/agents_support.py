"""Builders the stage-level agent tests share: calls as the input topics carry them, and
interaction ids that land on a chosen partition."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from ccpulse.config import Settings, WindowSettings
from ccpulse.core.timestamps import format_ms
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
