"""The dead-letter JSON Schema names every reason a stage can write (issue 14, items 1 and 2)."""

from __future__ import annotations

import re
from pathlib import Path

from ccpulse.connectors.base import CONNECTOR_REASONS
from schemas.events import REASONS
from schemas.json_schemas import load
from streams.guard import PROCESSING_ERROR
from streams.stages.validation import TOO_LONG


def test_every_dead_letter_reason_is_in_the_schema() -> None:
    enum = load("dead-letter")["properties"]["reason"]["enum"]
    assert sorted(enum) == sorted({*REASONS, PROCESSING_ERROR, TOO_LONG, *CONNECTOR_REASONS})


def test_every_reason_a_connector_raises_is_a_known_one() -> None:
    root = Path(__file__).resolve().parents[1] / "ccpulse"
    raised = {reason for path in (root / "connectors").glob("*.py")
              for reason in re.findall(r'MappingError\(\s*"([a-z_]+)"', path.read_text())}
    assert raised, "the pattern no longer finds the connectors' reasons"
    assert raised <= {*REASONS, *CONNECTOR_REASONS}, raised - {*REASONS, *CONNECTOR_REASONS}
