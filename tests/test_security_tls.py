"""SASL_SSL end to end: a local broker with a certificate made by openssl at test time,
a ``ccpulse worker`` and ``ccpulse simulate`` talking to it over TLS + SCRAM, and the
one-line refusals for an untrusted CA and for a client that does not speak TLS."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from ccpulse import kafka_security
from ccpulse.commands import local_kafka
from ccpulse.config import KafkaSettings
from tests.security_support import free_port, latest_windows
from tests.tls_certs import Certs, make_certs
from tests.worker_process import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.integration

USER = "ccpulse"
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str
    password: str
    certs: Certs

    def env(self, cafile: Path | None = None, protocol: str = "SASL_SSL") -> dict[str, str]:
        return {"CCPULSE_KAFKA_SECURITY_PROTOCOL": protocol, "CCPULSE_KAFKA_SASL_MECHANISM": MECHANISM,
                "CCPULSE_KAFKA_SASL_USERNAME": USER, "CCPULSE_KAFKA_SASL_PASSWORD": self.password,
                "CCPULSE_KAFKA_SSL_CAFILE": str(cafile or self.certs.ca)}

    def kafka(self, **changes: str) -> KafkaSettings:
        base = dict(bootstrap=self.bootstrap, security_protocol="SASL_SSL", sasl_mechanism=MECHANISM,
                    sasl_username=USER, sasl_password=self.password, ssl_cafile=str(self.certs.ca))
        return KafkaSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    certs = make_certs(tmp_path_factory.mktemp("tls-certs"))
    state = tmp_path_factory.mktemp("tls-kafka")
    password = "pw-" + secrets.token_hex(12)
    try:
        info = local_kafka.start(
            state, port=free_port(), fresh=True,
            sasl=local_kafka.SaslSetup((local_kafka.SaslUser(USER, password),)),
            tls=local_kafka.TlsSetup(certs.server_cert, certs.server_key, certs.ca))
        assert info.security_protocol == "SASL_SSL"
        yield TlsBroker(info.bootstrap, password, certs)
    finally:
        local_kafka.stop(state)


def test_the_right_ca_and_password_get_in(broker: TlsBroker) -> None:
    assert asyncio.run(kafka_security.diagnose(broker.kafka())) is None


def test_refusals_are_one_clear_line(broker: TlsBroker) -> None:
    untrusted = asyncio.run(kafka_security.diagnose(broker.kafka(ssl_cafile=str(broker.certs.other_ca))))
    assert untrusted is not None
    assert untrusted.startswith(f"Kafka at {broker.bootstrap}: TLS certificate not trusted (")
    no_tls = asyncio.run(kafka_security.diagnose(broker.kafka(security_protocol="SASL_PLAINTEXT"), timeout=5))
    assert no_tls is not None and no_tls.startswith(f"Kafka at {broker.bootstrap} ")
    wrong = asyncio.run(kafka_security.diagnose(broker.kafka(sasl_password="nope")))
    assert wrong == (f"Kafka at {broker.bootstrap} refused the credentials "
                     f"(SASL {MECHANISM} authentication failed for user '{USER}')")


def test_worker_with_an_untrusted_ca_exits_with_one_line(broker: TlsBroker, tmp_path: Path) -> None:
    env = worker_env(broker.bootstrap, tmp_path, "tls-bad", **broker.env(cafile=broker.certs.other_ca))
    proc = subprocess.run([sys.executable, "-m", "ccpulse.cli", "worker"], env=env, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"ccpulse worker: Kafka at {broker.bootstrap}: TLS certificate not trusted (")


def test_worker_and_simulate_over_sasl_ssl(broker: TlsBroker, tmp_path: Path) -> None:
    worker = WorkerProcess.create(broker.bootstrap, tmp_path, "tls", **broker.env())
    worker.start(timeout=180)
    try:
        sim = subprocess.run([sys.executable, "-m", "ccpulse.cli", "simulate", "--duration", "120", "--speed",
                              "max", "--rate", "0.5", "--seed", "3"],
                             env=worker.env, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        assert sim.returncode == 0, sim.stderr
        sent = int(sim.stderr.split("published ", 1)[1].split()[0])
        assert sent > 0
        kafka = broker.kafka()
        # kpi.windows is a stream of per-window updates: merge publishes each batch of
        # partials as it comes (one channel's windows may land a checkpoint before
        # another's), so wait for both channels, not for the first window.
        def channels() -> set[str]:
            return {w["channel"] for w in latest_windows(kafka, f"{worker.prefix}kpi.windows").values()}

        wait_until(lambda: channels() >= {"voice", "chat"} or None, 120,
                   "voice and chat windows on kpi.windows over SASL_SSL", interval=1.0)
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert broker.password not in log and "Authenticated as ccpulse via SCRAM-SHA-512" in log
