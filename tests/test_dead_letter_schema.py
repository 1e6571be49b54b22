"""The dead-letter JSON Schema names every reason a stage can write (issue 14, items 1 and 2)."""

from __future__ import annotations

from schemas.events import REASONS
from schemas.json_schemas import load
from streams.guard import PROCESSING_ERROR
from streams.stages.validation import TOO_LONG


def test_every_dead_letter_reason_is_in_the_schema() -> None:
    enum = load("dead-letter")["properties"]["reason"]["enum"]
    assert sorted(enum) == sorted({*REASONS, PROCESSING_ERROR, TOO_LONG})
