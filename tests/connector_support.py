"""Shared by the connector tests: fixtures and the pipeline's own validation of what a mapper emits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from ccpulse.connectors.base import Mapped
from schemas.events import Rejection, validate, validate_agent

FIXTURES = Path(__file__).parent / "fixtures" / "connectors"


def fixture(source: str, name: str) -> Any:
    return json.loads((FIXTURES / source / f"{name}.json").read_text())


def assert_valid(mapped: Sequence[Mapped]) -> None:
    """Every event passes the pipeline's own validation: a mapper must not emit a dead letter."""
    now = int(time.time() * 1000)
    for m in mapped:
        result = validate_agent(m.event, now) if m.family == "agent" else validate(m.event, m.family, now)
        assert not isinstance(result, Rejection), (m.event, result)
        assert m.key == (m.event["agent_id"] if m.family == "agent" else m.event["interaction_id"])
