"""Static checks of docker-compose.yml (no Docker engine runs here).

Images are pinned, every file it mounts exists, the Kafka version matches the
local broker's, and service names and ports agree with the configs that use them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_image_is_pinned_to_an_exact_version() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image and not image.endswith((":latest", ":main")), (name, image)
        assert re.search(r":v?\d+\.\d+\.\d+", image), (name, image)


def test_kafka_matches_the_local_broker_version() -> None:
    pom = (ROOT / "deploy/kafka/pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{version}"


def test_every_mounted_file_exists() -> None:
    mounts = [(name, volume.split(":")[0]) for name, service in SERVICES.items()
              for volume in service.get("volumes", [])]
    assert mounts
    for name, source in mounts:
        assert (ROOT / source).exists(), (name, source)


def test_the_whole_stack_is_there() -> None:
    assert {"kafka", "clickhouse", "worker", "simulator", "prometheus", "alertmanager",
            "grafana"} <= set(SERVICES)


def test_worker_settings_agree_with_the_services() -> None:
    env = SERVICES["worker"]["environment"]
    assert env["CCPULSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    ch = SERVICES["clickhouse"]["environment"]
    assert env["CCPULSE_CLICKHOUSE_DSN"] == (
        f"http://{ch['CLICKHOUSE_USER']}:{ch['CLICKHOUSE_PASSWORD']}@clickhouse:8123/{ch['CLICKHOUSE_DB']}")
    assert f"{env['CCPULSE_WEB_PORT']}:{env['CCPULSE_WEB_PORT']}" in SERVICES["worker"]["ports"]


def test_prometheus_scrapes_the_worker_and_alerts_to_alertmanager() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    port = SERVICES["worker"]["environment"]["CCPULSE_WEB_PORT"]
    assert f"worker:{port}" in targets
    am = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"] and "9093:9093" in SERVICES["alertmanager"]["ports"]
    assert prom["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert any(v.endswith(":/etc/prometheus/rules:ro") for v in SERVICES["prometheus"]["volumes"])
    assert list((ROOT / "deploy/prometheus/rules").glob("*.yml")), "no rule files to load"


def test_grafana_datasources_point_at_compose_services() -> None:
    folder = ROOT / "deploy/grafana/provisioning/datasources"
    text = "\n".join(p.read_text() for p in folder.glob("*.y*ml"))
    assert "prometheus:9090" in text and "clickhouse" in text
    assert "grafana-clickhouse-datasource" in SERVICES["grafana"]["environment"]["GF_INSTALL_PLUGINS"]


@pytest.mark.parametrize("service", ["worker", "simulator"])
def test_images_built_from_this_repo_have_a_dockerfile(service: str) -> None:
    assert SERVICES[service]["build"] == "." and (ROOT / "Dockerfile").is_file()
