"""Kafka security and web-token settings: env mapping, validation, masking, and the
settings -> ssl context / aiokafka kwargs / Faust credentials mapping (TLS proved with a
real handshake against certificates made by openssl)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import errors
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from ccpulse import kafka_security
from ccpulse.config import ConfigError, KafkaSettings, load_settings
from streams import web_auth
from tests.tls_certs import Certs, make_certs

SASL = {"CCPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CCPULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CCPULSE_KAFKA_SASL_USERNAME": "ccpulse", "CCPULSE_KAFKA_SASL_PASSWORD": "s3cr3t-pw"}
TOKEN = "tok-" + "a1b2c3d4" * 4


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


def load(env: dict[str, str], tmp_path: Path) -> Any:
    config = tmp_path / "empty.toml"
    config.write_text("")
    return load_settings(config, env=env)


# --- environment and files -----------------------------------------------------------


def test_every_security_variable_reaches_its_setting(tmp_path: Path, certs: Certs) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {**SASL, "CCPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CCPULSE_KAFKA_SSL_CAFILE": str(certs.ca),
           "CCPULSE_KAFKA_SSL_CERTFILE": str(certs.client_cert), "CCPULSE_KAFKA_SSL_KEYFILE": str(certs.client_key),
           "CCPULSE_KAFKA_SSL_KEY_PASSWORD": certs.key_password, "CCPULSE_KAFKA_SSL_CHECK_HOSTNAME": "false",
           "CCPULSE_WEB_TOKEN_FILE": str(tmp_path / "token")}
    s = load(env, tmp_path)
    k = s.kafka
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username, k.sasl_password) == \
        ("SASL_SSL", "SCRAM-SHA-512", "ccpulse", "s3cr3t-pw")
    assert (k.ssl_cafile, k.ssl_certfile, k.ssl_keyfile) == (str(certs.ca), str(certs.client_cert),
                                                             str(certs.client_key))
    assert k.ssl_key_password == certs.key_password and k.ssl_check_hostname is False
    assert s.web.token == TOKEN  # the file's trailing newline is not part of it


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    env = {k: v for k, v in SASL.items() if k != "CCPULSE_KAFKA_SASL_PASSWORD"}
    s = load({**env, "CCPULSE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw")}, tmp_path)
    assert s.kafka.sasl_password == "from-a-file"
    toml = tmp_path / "c.toml"
    toml.write_text(f'[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_username = "u"\n'
                    f'sasl_password_file = "{tmp_path / "pw"}"\n[web]\ntoken = "{TOKEN}"\n')
    s = load_settings(toml, env={})
    assert s.kafka.sasl_password == "from-a-file" and s.web.token == TOKEN


@pytest.mark.parametrize("env, message", [
    ({"CCPULSE_KAFKA_SECURITY_PROTOCOL": "SASL"}, "kafka.security_protocol: 'SASL' is not one of"),
    ({**SASL, "CCPULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"}, "kafka.sasl_mechanism: 'SCRAM-SHA-1' is not one of"),
    ({**SASL, "CCPULSE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka.sasl_mechanism: 'GSSAPI'"),
    ({**SASL, "CCPULSE_KAFKA_SASL_USERNAME": ""}, "kafka.sasl_username: required with security_protocol"),
    ({**SASL, "CCPULSE_KAFKA_SASL_PASSWORD": ""}, "kafka.sasl_password: required with security_protocol"),
    ({**SASL, "CCPULSE_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"},
     "kafka.sasl_password and kafka.sasl_password_file: set only one"),
    ({"CCPULSE_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"},
     "kafka.sasl_password_file: cannot read /nonexistent/pw (No such file or directory)"),
    ({"CCPULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "CCPULSE_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
     "kafka.ssl_cafile: cannot read /nonexistent/ca.pem"),
    ({"CCPULSE_KAFKA_SSL_KEYFILE": "/x.key"}, "kafka.ssl_keyfile: needs kafka.ssl_certfile"),
    ({"CCPULSE_WEB_TOKEN": "short"}, "web.token: must be at least 16 characters"),
    ({"CCPULSE_WEB_TOKEN": "has space in the token!!"}, "web.token: must be"),
    ({"CCPULSE_WEB_TOKEN_FILE": "/nonexistent/token"}, "web.token_file: cannot read /nonexistent/token"),
    ({"CCPULSE_WEB_TOKEN": TOKEN, "CCPULSE_WEB_TOKEN_FILE": "/t"}, "web.token and web.token_file: set only one"),
])
def test_invalid_security_settings_name_the_key(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(env, tmp_path)
    assert message in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match="web.token_file: .* is empty"):
        load({"CCPULSE_WEB_TOKEN_FILE": str(tmp_path / "token")}, tmp_path)


def test_unusable_tls_material_fails_at_load(tmp_path: Path, certs: Certs) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    base = {"CCPULSE_KAFKA_SECURITY_PROTOCOL": "SSL"}
    with pytest.raises(ConfigError, match="kafka.ssl_cafile: .*junk.pem is not a usable CA bundle"):
        load({**base, "CCPULSE_KAFKA_SSL_CAFILE": str(tmp_path / "junk.pem")}, tmp_path)
    with pytest.raises(ConfigError, match="kafka.ssl_certfile: cannot load the client certificate"):
        load({**base, "CCPULSE_KAFKA_SSL_CERTFILE": str(certs.client_cert),
              "CCPULSE_KAFKA_SSL_KEYFILE": str(certs.client_key), "CCPULSE_KAFKA_SSL_KEY_PASSWORD": "wrong"},
             tmp_path)
    # The same files under PLAINTEXT are only checked for readability: TLS is not used.
    load({"CCPULSE_KAFKA_SSL_CAFILE": str(tmp_path / "junk.pem")}, tmp_path)


def test_repr_masks_every_secret(tmp_path: Path, certs: Certs) -> None:
    s = load({**SASL, "CCPULSE_KAFKA_SSL_KEY_PASSWORD": certs.key_password, "CCPULSE_WEB_TOKEN": TOKEN}, tmp_path)
    text = repr(s) + str(s) + repr(s.kafka) + repr(s.web)
    assert "s3cr3t-pw" not in text and certs.key_password not in text and TOKEN not in text
    assert "sasl_password='***'" in text and "sasl_username='ccpulse'" in text
    assert "ssl_key_password=''" in repr(KafkaSettings())  # unset stays visibly unset


# --- settings -> clients ---------------------------------------------------------------------


def kafka(**changes: Any) -> KafkaSettings:
    return KafkaSettings(**changes)


def test_plaintext_needs_nothing() -> None:
    k = kafka()
    assert kafka_security.client_kwargs(k) == {"security_protocol": "PLAINTEXT"}
    assert kafka_security.publisher_kwargs(k) == {"security_protocol": "PLAINTEXT"}
    assert kafka_security.broker_credentials(k) == {}


def test_sasl_plaintext_maps_to_the_same_kwargs_for_every_client() -> None:
    k = kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
              sasl_password="p")
    expected = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert kafka_security.client_kwargs(k) == expected
    assert kafka_security.publisher_kwargs(k) == {"security_protocol": "SASL_PLAINTEXT",
                                                  "sasl_mechanism": "SCRAM-SHA-256",
                                                  "sasl_username": "u", "sasl_password": "p"}
    creds = kafka_security.broker_credentials(k)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    # What Faust hands aiokafka equals what ccpulse's own clients get.
    assert dict(credentials_to_aiokafka_auth(creds)) == {**expected, "ssl_context": None}
    assert "p" not in repr(creds).replace("SASLCredentials", "")  # Faust shows the user only
    assert kafka_security.client_kwargs(kafka(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                                              sasl_password="p"))["sasl_mechanism"] == "PLAIN"


def test_sasl_ssl_and_ssl_carry_the_configured_context(certs: Certs) -> None:
    k = kafka(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p",
              ssl_cafile=str(certs.ca), ssl_check_hostname=False)
    kwargs = kafka_security.client_kwargs(k)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ccpulse test ca"),),)]
    auth = dict(credentials_to_aiokafka_auth(kafka_security.broker_credentials(k)["broker_credentials"]))
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    ssl_only = kafka(security_protocol="SSL", ssl_cafile=str(certs.ca))
    assert set(kafka_security.client_kwargs(ssl_only)) == {"security_protocol", "ssl_context"}
    auth = dict(credentials_to_aiokafka_auth(kafka_security.broker_credentials(ssl_only)["broker_credentials"]))
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"].check_hostname is True


async def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext,
                     server_hostname: str) -> str:
    """A real TLS handshake on loopback; returns the client certificate's CN the server saw."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        seen.extend(value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName")
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context,
                                                       server_hostname=server_hostname)
        assert await reader.read() == b"ok"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return seen[0] if seen else ""


def _server_context(certs: Certs) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.load_verify_locations(certs.ca)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as a broker with ssl.client.auth=required
    return context


def test_the_context_does_mutual_tls_with_the_configured_files(certs: Certs) -> None:
    k = kafka(security_protocol="SSL", ssl_cafile=str(certs.ca), ssl_certfile=str(certs.client_cert),
              ssl_keyfile=str(certs.client_key), ssl_key_password=certs.key_password)
    client = kafka_security.ssl_context(k)
    assert asyncio.run(_handshake(_server_context(certs), client, "localhost")) == "ccpulse"


def test_hostname_check_and_trust_are_enforced(certs: Certs) -> None:
    k = kafka(security_protocol="SSL", ssl_cafile=str(certs.ca), ssl_certfile=str(certs.client_cert),
              ssl_keyfile=str(certs.client_key), ssl_key_password=certs.key_password)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        asyncio.run(_handshake(_server_context(certs), kafka_security.ssl_context(k), "kafka.example.com"))
    assert "Hostname mismatch" in info.value.verify_message
    relaxed = kafka(**{**k.__dict__, "ssl_check_hostname": False})
    assert asyncio.run(_handshake(_server_context(certs), kafka_security.ssl_context(relaxed),
                                  "kafka.example.com")) == "ccpulse"
    untrusted = kafka(**{**k.__dict__, "ssl_cafile": str(certs.other_ca)})
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        asyncio.run(_handshake(_server_context(certs), kafka_security.ssl_context(untrusted), "localhost"))
    line = kafka_security.describe(info.value, untrusted, "127.0.0.1:9093")
    assert line.startswith("Kafka at 127.0.0.1:9093: TLS certificate not trusted (")
    assert "CCPULSE_KAFKA_SSL_CAFILE" in line


# --- failures as one line ---------------------------------------------------------------


def test_failures_are_described_without_the_password() -> None:
    k = kafka(bootstrap="b:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="bob",
              sasl_password="hunter2")
    cases = {
        errors.SaslAuthenticationFailed("Authentication failed ... invalid credentials"):
            "Kafka at b:1 refused the credentials (SASL SCRAM-SHA-512 authentication failed for user 'bob')",
        errors.UnsupportedSaslMechanismError("Kafka broker does not support SCRAM-SHA-512 sasl mechanism. "
                                             "Enabled mechanisms are: ['PLAIN']"):
            "Kafka at b:1 does not offer SASL mechanism SCRAM-SHA-512 (it offers ['PLAIN']); "
            "set kafka.sasl_mechanism / CCPULSE_KAFKA_SASL_MECHANISM",
        ConnectionResetError(104, "Connection reset by peer"):
            "Kafka at b:1: TLS handshake failed (Connection reset by peer); is the listener TLS "
            "(security_protocol SASL_SSL)?",
        ConnectionRefusedError(111, "Connection refused"): "Kafka at b:1 unreachable (connection refused)",
        asyncio.TimeoutError(): "Kafka at b:1 did not answer in time; does the listener speak SASL_SSL?",
        errors.KafkaConnectionError("Unable to bootstrap from [('b', 1)]"):
            "Kafka at b:1 unreachable: KafkaConnectionError: Unable to bootstrap from [('b', 1)]",
        errors.TopicAuthorizationFailedError():
            "Kafka at b:1 denied user 'bob' (TopicAuthorizationFailedError): check the broker's ACLs",
        errors.RequestTimedOutError():
            "Kafka at b:1: [Error 7] RequestTimedOutError",
    }
    for exc, line in cases.items():
        assert kafka_security.describe(exc, k) == line
        assert "hunter2" not in line


def test_diagnose_names_a_broker_that_is_down(tmp_path: Path) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = asyncio.run(kafka_security.diagnose(kafka(bootstrap=f"127.0.0.1:{port}"), timeout=5))
    assert line == f"Kafka at 127.0.0.1:{port} unreachable (connection refused)"


# --- the web token (unit; the real worker is in test_security_sasl.py) ---------------------


class FakeRequest:
    def __init__(self, headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None,
                 query: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        self.cookies = cookies or {}
        self.query = query or {}
        self.secure = False


@pytest.mark.parametrize("request_, allowed", [
    (FakeRequest(), False),
    (FakeRequest({"Authorization": f"Bearer {TOKEN}"}), True),
    (FakeRequest({"Authorization": f"bearer {TOKEN}"}), True),  # the scheme is case-insensitive
    (FakeRequest({"Authorization": f"Bearer {TOKEN}x"}), False),
    (FakeRequest({"Authorization": f"Bearer {TOKEN[:-1]}"}), False),
    (FakeRequest({"Authorization": TOKEN}), False),
    (FakeRequest({"Authorization": f"Basic {TOKEN}"}), False),
    (FakeRequest({"Authorization": "Bearer ünïcode"}), False),
    (FakeRequest(cookies={web_auth.COOKIE: TOKEN}), True),
    (FakeRequest(cookies={web_auth.COOKIE: "nope"}), False),
    (FakeRequest(query={"token": TOKEN}), False),  # only /wallboard's login turns a query into a cookie
])
def test_authorized(request_: FakeRequest, allowed: bool) -> None:
    assert web_auth.authorized(request_, TOKEN) is allowed
    assert web_auth.authorized(request_, "") is True  # no token configured: open


def test_guarded_is_a_no_op_without_a_token() -> None:
    async def page(web: Any, request: Any) -> str:
        return "page"
    assert web_auth.guarded("")(page) is page
    assert web_auth.guarded(TOKEN)(page) is not page
