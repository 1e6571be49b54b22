"""The JSON Schemas of the aggregate topics, shipped with the package (schemas/json/)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

TOPIC_SCHEMAS = {
    "kpi.windows": "kpi-window",
    "kpi.agents": "agent-window",
    "kpi.queue-state": "queue-state",
    "events.dead-letter": "dead-letter",
    "sla.breaches": "sla-breach",
    "kpi.scorecards": "scorecard",
}


def load(name: str) -> dict[str, Any]:
    """A schema by file stem, e.g. ``load("kpi-window")``."""
    return json.loads((resources.files("schemas") / "json" / f"{name}.schema.json").read_text("utf-8"))
