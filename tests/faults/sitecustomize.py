"""Faults injected into a real worker process by the integration tests (never installed).

A test puts this directory on the worker's PYTHONPATH; Python imports
``sitecustomize`` at start-up, before the worker imports its stages, so the stages
bind the wrapped functions. ``CCPULSE_TEST_FAULTS`` picks the faults (comma-separated):

- ``poison-step``: deriving the step of event id ``poison`` raises (one record's processing);
- ``crash-rows``: building the interaction rows of interaction ``crash-me`` raises once
  per process, outside any one record's processing: the pipeline's checkpoint fails.
"""

from __future__ import annotations

import os
from typing import Any

_FAULTS = set(filter(None, os.environ.get("CCPULSE_TEST_FAULTS", "").split(",")))

if _FAULTS:
    import schemas.records as records

    if "poison-step" in _FAULTS:
        _step = records.step_from_message

        def step_from_message(doc: dict[str, Any]) -> Any:
            if doc.get("event_id") == "poison":
                raise ValueError("injected fault for event poison")
            return _step(doc)

        records.step_from_message = step_from_message

    if "crash-rows" in _FAULTS:
        _rows = records.interaction_rows
        _crashed = []

        def interaction_rows(inter: Any, version: int) -> Any:
            if inter.interaction_id == "crash-me" and not _crashed:
                _crashed.append(True)
                raise RuntimeError("injected crash outside the record loop")
            return _rows(inter, version)

        records.interaction_rows = interaction_rows
