"""The weighted scorecard (ccpulse/core/scorecard.py) and its [scorecard] config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ccpulse.config import ConfigError, load_settings
from ccpulse.core.scorecard import (
    HIGHER, LOWER, SCORE_KPIS, ScorecardSettings, attainment, eligible, score, scorecard_key,
    scorecard_record,
)
from schemas.json_schemas import load

DEFAULT = ScorecardSettings()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    import os
    for var in list(os.environ):
        if var.startswith("CCPULSE_"):
            monkeypatch.delenv(var)


def scorecard_from(tmp_path: Path, text: str) -> ScorecardSettings:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env={}).scorecard


def window(**values: Any) -> dict[str, Any]:
    record = {"window": "15m", "window_start": "2026-01-05T08:00:00.000Z",
              "window_end": "2026-01-05T08:15:00.000Z", "queue": "billing", "channel": "voice",
              "aht_seconds": None, "fcr_rate": None, "csat": None, "final": True, "fcr_final": True,
              "version": 7}
    record.update(values)
    return record


def test_defaults_from_metrics_md() -> None:
    s = load_settings(env={}).scorecard
    assert dict(s.weights) == {"aht_seconds": 0.4, "fcr_rate": 0.3, "csat": 0.3}
    assert dict(s.targets) == {"aht_seconds": 300.0, "fcr_rate": 0.7, "csat": 0.85}
    assert s.min_window_seconds == 900


def test_attainment_per_direction() -> None:
    assert SCORE_KPIS["aht_seconds"] == LOWER and SCORE_KPIS["csat"] == HIGHER
    assert attainment("aht_seconds", 600, 300) == 0.5
    assert attainment("aht_seconds", 200, 300) == 1.0
    assert attainment("aht_seconds", 0, 300) == 1.0
    assert attainment("csat", 0.425, 0.85) == pytest.approx(0.5)
    assert attainment("csat", 0.95, 0.85) == 1.0
    assert attainment("fcr_rate", 0.0, 0.7) == 0.0


def test_weighted_score_and_components() -> None:
    value, parts = score({"aht_seconds": 600.0, "fcr_rate": 0.7, "csat": 0.425}, DEFAULT)
    assert value == pytest.approx(0.4 * 0.5 + 0.3 * 1.0 + 0.3 * 0.5)
    assert parts["aht_seconds"] == {"weight": 0.4, "effective_weight": pytest.approx(0.4), "target": 300.0,
                                    "better": "lower", "observed": 600.0, "attainment": 0.5}


def test_a_missing_kpi_has_its_weight_redistributed() -> None:
    value, parts = score({"aht_seconds": 600.0, "fcr_rate": None, "csat": 0.425}, DEFAULT)
    # aht 0.4 and csat 0.3 share the whole weight: 4/7 and 3/7.
    assert parts["fcr_rate"]["effective_weight"] == 0 and parts["fcr_rate"]["attainment"] is None
    assert parts["aht_seconds"]["effective_weight"] == pytest.approx(4 / 7)
    assert value == pytest.approx(4 / 7 * 0.5 + 3 / 7 * 0.5)
    assert score({"aht_seconds": None}, DEFAULT)[0] is None


def test_record_key_eligibility_and_schema() -> None:
    record = window(aht_seconds=150.0, fcr_rate=None, csat=0.9, fcr_final=False, version=12)
    assert eligible(record, DEFAULT)
    assert not eligible(window(final=False), DEFAULT)
    assert not eligible(window(window="1m", window_end="2026-01-05T08:01:00.000Z"), DEFAULT)
    assert eligible(window(window="1d", window_end="2026-01-06T08:00:00.000Z"), DEFAULT)
    assert not eligible({k: v for k, v in window().items() if k != "queue"}, DEFAULT)  # an agent window
    card = scorecard_record(record, DEFAULT, 1_767_600_000_000)
    assert card["score"] == 1.0 and card["version"] == 12
    assert card["final"] is False  # the FCR part is not decided yet
    assert scorecard_record(window(csat=0.9), DEFAULT, 0)["final"] is True
    without_fcr = ScorecardSettings({"aht_seconds": 0.5, "csat": 0.5}, {"aht_seconds": 300, "csat": 0.8})
    assert scorecard_record(record, without_fcr, 0)["final"] is True
    assert scorecard_key(card) == "15m|2026-01-05T08:00:00.000Z|billing|voice"
    validator = Draft202012Validator(load("scorecard"))
    for r in (card, scorecard_record(window(), DEFAULT, 0)):
        assert not list(validator.iter_errors(r)), r


def test_config_file(tmp_path: Path) -> None:
    s = scorecard_from(tmp_path, """
[scorecard]
weights = { aht_seconds = 0.5, service_level = 0.25, csat = 0.25 }
targets = { aht_seconds = 240, service_level = 0.8, csat = 0.9 }
min_window_seconds = 3600
""")
    assert dict(s.weights) == {"aht_seconds": 0.5, "service_level": 0.25, "csat": 0.25}
    assert s.targets["aht_seconds"] == 240 and s.min_window_seconds == 3600
    # New weights over KPIs with default targets keep those targets.
    s = scorecard_from(tmp_path, "[scorecard]\nweights = { aht_seconds = 0.5, csat = 0.5 }\n")
    assert dict(s.targets) == {"aht_seconds": 300.0, "csat": 0.85}


@pytest.mark.parametrize("text,key", [
    ("weights = { aht_seconds = 0.5, csat = 0.3 }", "scorecard.weights"),
    ("weights = { aht_seconds = 0.5, speed = 0.5 }", "scorecard.weights.speed"),
    ("weights = { aht_seconds = 1.5, csat = -0.5 }", "scorecard.weights.csat"),
    ("weights = { aht_seconds = 'a lot' }", "scorecard.weights.aht_seconds"),
    ("weights = {}", "scorecard.weights"),
    ("weights = 1", "scorecard.weights"),
    ("targets = { aht_seconds = -300, fcr_rate = 0.7, csat = 0.85 }", "scorecard.targets.aht_seconds"),
    ("targets = { aht_seconds = 300, fcr_rate = 0.7 }", "scorecard.targets.csat"),
    ("targets = { aht_seconds = 300, fcr_rate = 0.7, csat = 0.8, nps = 1 }", "scorecard.targets.nps"),
    ("targets = { aht_seconds = 300, fcr_rate = 0.7, csat = 0.8, asa_seconds = 1 }",
     "scorecard.targets.asa_seconds"),
    ("weights = { aht_seconds = 0.5, asa_seconds = 0.5 }", "scorecard.targets.asa_seconds"),
    ("min_window_seconds = 0", "scorecard.min_window_seconds"),
    ("colour = 'red'", "scorecard.colour"),
])
def test_every_scorecard_error_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        scorecard_from(tmp_path, "[scorecard]\n" + text + "\n")
    assert str(info.value).startswith(key + ":") and "\n" not in str(info.value)


values = st.one_of(st.none(), st.floats(0, 2000, allow_nan=False))
rates = st.one_of(st.none(), st.floats(0, 1, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(values, rates, rates)
def test_score_properties(aht: float | None, fcr: float | None, csat: float | None) -> None:
    kpis = {"aht_seconds": aht, "fcr_rate": fcr, "csat": csat}
    value, parts = score(kpis, DEFAULT)
    present = [k for k, v in kpis.items() if v is not None]
    if not present:
        assert value is None
        return
    assert 0 <= value <= 1
    assert sum(p["effective_weight"] for p in parts.values()) == pytest.approx(1)
    # 1 when every present KPI meets its target; else short of 1 by the missed share.
    missed = [parts[k]["effective_weight"] * (1 - parts[k]["attainment"]) for k in present]
    assert value == pytest.approx(1 - sum(missed))
    if not any(missed):
        assert value == pytest.approx(1)
    # Improving one KPI never lowers the score.
    if aht is not None and aht > 0:
        assert score({**kpis, "aht_seconds": aht / 2}, DEFAULT)[0] >= value - 1e-12
    if csat is not None:
        assert score({**kpis, "csat": min(1.0, csat + 0.1)}, DEFAULT)[0] >= value - 1e-12
