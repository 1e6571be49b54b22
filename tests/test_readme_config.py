"""The README's config file example is a valid config, and sets what it says.

A user copies the documented syntax ([targets], [scorecard], [web], [topics],
[clickhouse], ...): it must load, every section of the settings must be in it,
and its values must arrive where the README says they go.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from ccpulse.config import load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def config_example() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"The config file:\n\n```toml\n(.*?)```", text, re.S)
    assert found, "README: no ```toml block after 'The config file:'"
    return found.group(1)


def test_the_readme_config_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "ccpulse.toml"
    path.write_text(config_example())
    s = load_settings(path, env={})
    assert s.targets.kinds["voice"]["service_level"].value == 0.80
    assert s.targets.kinds["voice"]["abandonment_rate"].severity == "critical"
    assert "longest_wait_seconds" not in s.targets.kinds["voice"]
    assert s.targets.queues[("vip", "voice")]["service_level"].value == 0.90
    assert s.scorecard.weights == {"aht_seconds": 0.4, "fcr_rate": 0.3, "csat": 0.3}
    assert s.web.bind == "127.0.0.1" and s.topics.name("kpi_windows") == "kpi.windows"
    assert s.clickhouse.batch_size == 5000 and s.queue_thresholds[("vip", "voice")].service_level_seconds == 10


def test_every_section_of_the_settings_is_documented() -> None:
    doc = tomllib.loads(config_example())
    for section in ("windows", "channels", "queues", "limits", "targets", "scorecard", "web", "topics",
                    "clickhouse"):
        assert section in doc, f"README config example: no [{section}]"
