"""local_kafka with SASL: the SCRAM users, what lands on disk and on command lines, restarts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
from pathlib import Path

import pytest

from ccpulse import kafka_security
from ccpulse.commands import local_kafka
from ccpulse.config import KafkaSettings
from ccpulse.commands.local_kafka import LocalKafkaError, SaslSetup, SaslUser
from tests.security_support import free_port


def test_sasl_setup_is_validated_and_never_shows_a_password() -> None:
    setup = SaslSetup((SaslUser("ccpulse", "pw-visible-nowhere"),))
    assert "pw-visible-nowhere" not in repr(setup)
    for bad in (SaslUser("a,b", "x"), SaslUser("a]", "x"), SaslUser("", "x"), SaslUser("ok", "")):
        with pytest.raises(LocalKafkaError):
            SaslSetup((bad,))
    with pytest.raises(LocalKafkaError, match="at least one"):
        SaslSetup(())
    with pytest.raises(LocalKafkaError, match="mechanisms"):
        SaslSetup((SaslUser("u", "p"),), mechanisms=("PLAIN",))


def test_scram_credentials_are_salted_hashes_per_rfc5802() -> None:
    user = SaslUser("ccpulse", "correct horse")
    spec = local_kafka._scram_credential("SCRAM-SHA-512", user)
    assert "correct horse" not in spec
    assert spec.startswith("SCRAM-SHA-512=[name=ccpulse,iterations=4096,salt=\"")
    fields = dict(item.split("=", 1) for item in spec[len("SCRAM-SHA-512=["):-1].split(","))
    salt = base64.b64decode(fields["salt"].strip('"'))
    expected = hashlib.pbkdf2_hmac("sha512", b"correct horse", salt, 4096)
    assert base64.b64decode(fields["saltedpassword"].strip('"')) == expected


def test_without_sasl_the_listener_is_unchanged(tmp_path: Path) -> None:
    props = local_kafka._server_properties(9092, 9093, tmp_path)
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n" in props
    assert "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n" in props
    assert "sasl." not in props and "ssl." not in props
    secured = local_kafka._server_properties(9092, 9093, tmp_path, SaslSetup((SaslUser("u", "p"),)))
    assert "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT\n" in secured
    assert "CONTROLLER://127.0.0.1:9093" in secured  # the controller stays PLAINTEXT on loopback


@pytest.mark.integration
def test_restart_keeps_the_users_and_refuses_other_ones(tmp_path: Path) -> None:
    state = tmp_path / "kafka"
    setup = SaslSetup((SaslUser("ccpulse", "first-pw-0123"), SaslUser("reader", "second-pw-4567")))
    try:
        info = local_kafka.start(state, port=free_port(), fresh=True, sasl=setup)
        again = local_kafka.start(state, sasl=setup)
        assert again.pid == info.pid  # same security: the running broker is reused
        # Other users on the formatted data: refused, and the running broker is left alone.
        with pytest.raises(LocalKafkaError, match="formatted without these SASL users.*fresh"):
            local_kafka.start(state, sasl=SaslSetup((SaslUser("ccpulse", "another-pw"),)))
        assert local_kafka.status(state) is not None and local_kafka.status(state).pid == info.pid
        # Stopped and started again from the same data: both users still log in.
        local_kafka.stop(state)
        info = local_kafka.start(state, sasl=setup)
        for user in setup.users:
            k = KafkaSettings(bootstrap=info.bootstrap, security_protocol="SASL_PLAINTEXT",
                              sasl_mechanism="SCRAM-SHA-256", sasl_username=user.username,
                              sasl_password=user.password)
            assert asyncio.run(kafka_security.diagnose(k)) is None
        leaked = subprocess.run(["grep", "-rlF", "-e", "first-pw-0123", "-e", "second-pw-4567", str(state)],
                                capture_output=True, text=True, check=False).stdout
        assert leaked == ""
    finally:
        local_kafka.stop(state)
