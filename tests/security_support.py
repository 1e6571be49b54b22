"""Helpers for the security tests: a SASL broker, secured topic reads, HTTP with headers."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ccpulse import kafka_security, probes
from ccpulse.commands import local_kafka
from ccpulse.probes import free_port
from ccpulse.config import KafkaSettings

SASL_USER = "ccpulse"
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SaslBroker:
    bootstrap: str
    username: str
    password: str
    state_dir: Path

    def env(self, password: str | None = None, mechanism: str = MECHANISM) -> dict[str, str]:
        """The CCPULSE_KAFKA_* environment of a client of this broker (``password`` to get it wrong)."""
        return {
            "CCPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CCPULSE_KAFKA_SASL_MECHANISM": mechanism,
            "CCPULSE_KAFKA_SASL_USERNAME": self.username,
            "CCPULSE_KAFKA_SASL_PASSWORD": self.password if password is None else password,
        }

    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism=MECHANISM, sasl_username=self.username, sasl_password=self.password)


def start_sasl_broker(state_dir: Path) -> Iterator[SaslBroker]:
    """A fresh local broker whose only listener wants SCRAM; stopped when the generator closes."""
    password = "pw-" + secrets.token_hex(12)
    setup = local_kafka.SaslSetup((local_kafka.SaslUser(SASL_USER, password),))
    try:
        info = local_kafka.start(state_dir, port=free_port(), fresh=True, sasl=setup)
        assert info.security_protocol == "SASL_PLAINTEXT"
        yield SaslBroker(info.bootstrap, SASL_USER, password, state_dir)
    finally:
        local_kafka.stop(state_dir)


def read_topic(kafka: KafkaSettings, topic: str, timeout: float = 20.0) -> list[tuple[bytes | None, bytes]]:
    """Every message of a topic up to its end, read over the secured listener."""
    return [(r.key, r.value) for r in probes.read_topic(kafka.bootstrap, topic, timeout,
                                                          **kafka_security.client_kwargs(kafka))]


def latest_windows(kafka: KafkaSettings, topic: str) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for key, value in read_topic(kafka, topic):
        record = json.loads(value)
        k = (key or b"").decode()
        if k not in best or record["version"] >= best[k]["version"]:
            best[k] = record
    return best


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """GET without following redirects; errors come back as responses, not exceptions."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with opener.open(request, timeout=10) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers.items()), exc.read().decode())
