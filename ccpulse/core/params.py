"""The values the core is parameterised by, set from the configuration.

``ccpulse.config`` reads them from the settings file and validates them; the core
only computes with them, so they are defined here, below config: the core imports
nothing above itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """Per-channel KPI thresholds (METRICS.md), overridable per queue."""

    service_level_seconds: float = 20.0
    short_abandon_seconds: float = 5.0
    immediate_seconds: float = 0.0
    service_level_formula: str = "answered_over_exits"


# Steps kept per interaction unless [limits] max_steps_per_interaction says otherwise
# (ccpulse.config.LimitSettings says why there is a limit and what bounds it).
DEFAULT_MAX_STEPS_PER_INTERACTION = 2000
