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
    assert env["CCPULSE_KAFKA_BOOTSTRAP"] == "kafka:29092"
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


def _listeners(value: str) -> dict[str, str]:
    """"NAME://host:port,..." as {NAME: "host:port"}."""
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_has_a_listener_for_the_host_and_one_for_the_other_services() -> None:
    # `ccpulse simulate` or `replay` on the host get the advertised address back from
    # the bootstrap: it must be one the host can reach (localhost), while the services
    # inside the network reach the broker by its service name.
    kafka = SERVICES["kafka"]
    env = kafka["environment"]
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(advertised) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]} == set(listeners) == set(protocols)
    host = [name for name, address in advertised.items() if address.startswith("localhost:")]
    inside = [name for name, address in advertised.items() if address.startswith("kafka:")]
    assert len(host) == 1 and len(inside) == 1, advertised
    host_port = advertised[host[0]].rsplit(":", 1)[1]
    assert listeners[host[0]].rsplit(":", 1)[1] == host_port
    assert f"{host_port}:{host_port}" in kafka["ports"]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == inside[0]
    internal = advertised[inside[0]]
    for service in ("worker", "simulator"):
        assert SERVICES[service]["environment"]["CCPULSE_KAFKA_BOOTSTRAP"] == internal, service
    # The README's host commands use the default bootstrap.
    assert advertised[host[0]] == "localhost:9092"


def test_the_worker_has_a_healthcheck_on_its_health_page() -> None:
    worker = SERVICES["worker"]
    check = worker["healthcheck"]
    command = " ".join(check["test"])
    port = worker["environment"]["CCPULSE_WEB_PORT"]
    assert f"127.0.0.1:{port}/health" in command or f"localhost:{port}/health" in command
    # The image is python:*-slim (no curl or wget): the probe is Python's own.
    assert "python" in command and "curl" not in command and "wget" not in command
    assert check.get("start_period"), "a worker joining its group takes a while: give it a start period"
    # The worker's HTTP server must be reachable from Prometheus, on another container.
    assert worker["environment"].get("CCPULSE_WEB_BIND", "0.0.0.0") == "0.0.0.0"


def test_prometheus_waits_for_a_healthy_worker() -> None:
    depends = SERVICES["prometheus"]["depends_on"]
    assert isinstance(depends, dict), "a list of names waits only for the container to start"
    assert depends["worker"] == {"condition": "service_healthy"}
    assert "alertmanager" in depends
