"""The weighted scorecard (pure): one score per queue x channel x window.

    score = sum over the configured KPIs of  effective_weight x attainment

- attainment of a "lower is better" KPI (aht_seconds, asa_seconds, ...) =
  min(1, target / observed), and 1 when observed is 0;
- attainment of a "higher is better" KPI (fcr_rate, csat, service_level, ...) =
  min(1, observed / target);
- a KPI without a value in the window (null: no handled contact, no survey, FCR
  not decided yet, ...) is left out and its weight is redistributed over the KPIs
  that have one, in proportion to their weights: effective_weight = weight / (sum
  of the weights of the present KPIs). With none present the score is null.

So a score is between 0 and 1, and 1 means every present KPI met its target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ccpulse.core.sla import format_ms

LOWER, HIGHER = "lower", "higher"

# KPI (a field of a kpi.windows record) -> which direction is better.
SCORE_KPIS: dict[str, str] = {
    "aht_seconds": LOWER,
    "asa_seconds": LOWER,
    "abandonment_rate": LOWER,
    "transfer_rate": LOWER,
    "reopen_rate": LOWER,
    "first_response_avg_seconds": LOWER,
    "agent_response_avg_seconds": LOWER,
    "resolution_avg_seconds": LOWER,
    "fcr_rate": HIGHER,
    "csat": HIGHER,
    "service_level": HIGHER,
    "immediate_response_rate": HIGHER,
    "one_touch_rate": HIGHER,
}
WEIGHT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ScorecardSettings:
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"aht_seconds": 0.4, "fcr_rate": 0.3, "csat": 0.3})
    targets: Mapping[str, float] = field(
        default_factory=lambda: {"aht_seconds": 300.0, "fcr_rate": 0.7, "csat": 0.85})
    # Windows shorter than this get no scorecard (1-minute windows are too noisy).
    min_window_seconds: int = 900


def parse_scorecard(doc: Mapping[str, Any]) -> ScorecardSettings:
    """``[scorecard]``; raises ``ValueError`` whose message starts with the offending key."""
    if not isinstance(doc, Mapping):
        raise ValueError("scorecard: must be a table")
    base = ScorecardSettings()
    known = ("weights", "targets", "min_window_seconds")
    for key in doc:
        if key not in known:
            raise ValueError(f"scorecard.{key}: unknown setting (known: {', '.join(known)})")
    weights = _numbers(doc["weights"], "scorecard.weights") if "weights" in doc else dict(base.weights)
    targets = _numbers(doc["targets"], "scorecard.targets") if "targets" in doc else dict(base.targets)
    if "weights" in doc and "targets" not in doc:
        # New weights keep the default targets of the KPIs they share.
        targets = {k: v for k, v in targets.items() if k in weights}
    minimum = doc.get("min_window_seconds", base.min_window_seconds)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum <= 0:
        raise ValueError(f"scorecard.min_window_seconds: {minimum!r} is not a positive integer")
    for kpi, weight in weights.items():
        if weight <= 0:
            raise ValueError(f"scorecard.weights.{kpi}: must be positive (leave the KPI out instead)")
    if not weights:
        raise ValueError("scorecard.weights: at least one KPI is needed")
    total = sum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"scorecard.weights: must sum to 1, not {total:g}")
    for kpi, target in targets.items():
        if target <= 0:
            raise ValueError(f"scorecard.targets.{kpi}: must be positive")
        if kpi not in weights:
            raise ValueError(f"scorecard.targets.{kpi}: has no weight in scorecard.weights")
    for kpi in weights:
        if kpi not in targets:
            raise ValueError(f"scorecard.targets.{kpi}: missing (every weighted KPI needs a target)")
    return ScorecardSettings(weights, targets, minimum)


def _numbers(table: Any, where: str) -> dict[str, float]:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table like {{ aht_seconds = 0.4, ... }}")
    out = {}
    for kpi, value in table.items():
        if kpi not in SCORE_KPIS:
            raise ValueError(f"{where}.{kpi}: unknown KPI (known: {', '.join(SCORE_KPIS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}.{kpi}: {value!r} is not a number")
        out[kpi] = float(value)
    return out


def attainment(kpi: str, observed: float, target: float) -> float:
    if SCORE_KPIS[kpi] == LOWER:
        return 1.0 if observed <= 0 else min(1.0, target / observed)
    return max(0.0, min(1.0, observed / target))


def score(values: Mapping[str, float | None], settings: ScorecardSettings) -> tuple[float | None, dict[str, Any]]:
    """(score, components) for one window's KPI values."""
    present = {k: float(values[k]) for k in settings.weights if values.get(k) is not None}
    total = sum(settings.weights[k] for k in present)
    components: dict[str, Any] = {}
    result = 0.0
    for kpi, weight in settings.weights.items():
        observed = present.get(kpi)
        att = None if observed is None else attainment(kpi, observed, settings.targets[kpi])
        effective = 0.0 if observed is None or total <= 0 else weight / total
        if att is not None:
            result += effective * att
        components[kpi] = {"weight": weight, "effective_weight": effective,
                           "target": settings.targets[kpi], "better": SCORE_KPIS[kpi],
                           "observed": observed, "attainment": att}
    if not present:
        return None, components
    return min(1.0, max(0.0, result)), components


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def eligible(record: Mapping[str, Any], settings: ScorecardSettings) -> bool:
    """A final queue window at least ``min_window_seconds`` long."""
    if not record.get("final") or "queue" not in record:
        return False
    return _ms(record["window_end"]) - _ms(record["window_start"]) >= settings.min_window_seconds * 1000


def scorecard_record(record: Mapping[str, Any], settings: ScorecardSettings, now_ms: int) -> dict[str, Any]:
    """The ``kpi.scorecards`` value for one final ``kpi.windows`` record.

    ``version`` is the window record's, so the newest (e.g. after the delayed FCR
    part was decided) wins; ``final`` is true once every weighted KPI is final
    (fcr_rate only after ``fcr_final``).
    """
    value, components = score(record, settings)
    fcr_final = record.get("fcr_final")
    final = bool(record.get("final")) and not ("fcr_rate" in settings.weights and fcr_final is False)
    return {
        "window": record["window"], "window_start": record["window_start"],
        "window_end": record["window_end"], "queue": record["queue"], "channel": record["channel"],
        "score": value, "components": components, "final": final, "fcr_final": fcr_final,
        "version": record["version"], "published_at": format_ms(now_ms),
    }


def scorecard_key(record: Mapping[str, Any]) -> str:
    """The same key as the window: ``window|window_start|queue|channel``."""
    return f"{record['window']}|{record['window_start']}|{record['queue']}|{record['channel']}"
