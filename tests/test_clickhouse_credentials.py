"""ClickHouse credentials: from the DSN, the environment or a secrets file; never shown.

No server is needed: the client arguments are checked as built, and a connection to
a closed port (nothing listens) is made to fail for real while every log record is captured.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest

from ccpulse.config import ConfigError, load_settings, masked_dsn
from sinks.clickhouse import ClickHouseUnavailable, ClickHouseWriter, client_kwargs, connect
from tests.worker_process import free_port

DSN_SECRET = "dsn-pa:ss@word"   # ':' and '@' percent-encoded in the DSN below
ENV_SECRET = "env-S3cret-9f8e7d"
FILE_SECRET = "file-S3cret-1a2b3c"


def dsn(port: int = 8123) -> str:
    return f"http://alice:dsn-pa%3Ass%40word@127.0.0.1:{port}/kpis"


def test_credentials_from_the_dsn() -> None:
    kwargs = client_kwargs(dsn())
    assert (kwargs["username"], kwargs["password"]) == ("alice", DSN_SECRET)
    assert (kwargs["host"], kwargs["port"], kwargs["database"], kwargs["secure"]) == ("127.0.0.1", 8123, "kpis", False)
    assert client_kwargs("https://ch.example:9440")["username"] == "default"
    assert client_kwargs("https://ch.example")["port"] == 8443


def test_explicit_credentials_win_over_the_dsn() -> None:
    kwargs = client_kwargs(dsn(), "bob", ENV_SECRET)
    assert (kwargs["username"], kwargs["password"]) == ("bob", ENV_SECRET)


def test_credentials_from_the_environment() -> None:
    s = load_settings(env={"CCPULSE_CLICKHOUSE_DSN": "http://ch:8123", "CCPULSE_CLICKHOUSE_USER": "bob",
                           "CCPULSE_CLICKHOUSE_PASSWORD": ENV_SECRET})
    assert (s.clickhouse.user, s.clickhouse.password) == ("bob", ENV_SECRET)
    assert ENV_SECRET not in repr(s) and ENV_SECRET not in str(s)


def test_password_from_a_secrets_file(tmp_path: Path) -> None:
    secret = tmp_path / "ch-password"
    secret.write_text(FILE_SECRET + "\n")  # mounted secrets end with a newline
    s = load_settings(env={"CCPULSE_CLICKHOUSE_PASSWORD_FILE": str(secret)})
    assert s.clickhouse.password == FILE_SECRET
    assert FILE_SECRET not in repr(s)
    with pytest.raises(ConfigError, match="set only one"):
        load_settings(env={"CCPULSE_CLICKHOUSE_PASSWORD_FILE": str(secret), "CCPULSE_CLICKHOUSE_PASSWORD": "x"})
    with pytest.raises(ConfigError, match="clickhouse.password_file: cannot read") as info:
        load_settings(env={"CCPULSE_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "missing")})
    assert FILE_SECRET not in str(info.value)


def test_the_settings_repr_masks_the_dsn_password() -> None:
    s = load_settings(env={"CCPULSE_CLICKHOUSE_DSN": dsn()})
    assert "dsn-pa" not in repr(s) and "alice:***@127.0.0.1" in repr(s)
    assert s.clickhouse.dsn == dsn()  # only shown masked, still used as given


@pytest.mark.parametrize("given, shown", [
    ("http://alice:secret@h:8123/db", "http://alice:***@h:8123/db"),
    ("https://alice:p%40ss%3Aw@h/db", "https://alice:***@h/db"),
    ("http://alice:p@ss@h:8123", "http://alice:***@h:8123"),  # an unencoded '@' in the password
    ("http://:secret@h", "http://:***@h"),
    ("http://alice@h:8123", "http://alice@h:8123"),
    ("http://h:8123/db", "http://h:8123/db"),
    ("chdb://./.ccpulse/clickhouse", "chdb://./.ccpulse/clickhouse"),
])
def test_masked_dsn(given: str, shown: str) -> None:
    assert masked_dsn(given) == shown


def _all_logs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + caplog.text


def test_a_failing_connection_never_shows_a_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 and clickhouse-connect debug output included
    port = free_port()  # nothing listens there: connection refused
    secrets = [DSN_SECRET, "dsn-pa%3Ass%40word", ENV_SECRET,
               base64.b64encode(f"bob:{ENV_SECRET}".encode()).decode()]
    with pytest.raises(ClickHouseUnavailable) as info:
        connect(dsn(port), "bob", ENV_SECRET)
    message = str(info.value)
    assert "alice:***@127.0.0.1" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__context__ is not None  # cause hidden from tracebacks

    # The worker's retry loop logs every failure: none of them may carry a secret either.
    writer = ClickHouseWriter(dsn(port), username="bob", password=ENV_SECRET, initial_backoff=0.01)
    attempts: list[str] = []
    writer.on_error = lambda table, exc: attempts.append(str(exc))
    assert asyncio.run(writer.write("raw_events", [{"event_id": "e"}], lambda: len(attempts) >= 2)) is False
    part = writer.health_part()
    logs = _all_logs(caplog)
    assert "ClickHouse write to raw_events failed" in logs and part["ok"] is False
    for secret in secrets:
        assert secret not in message, secret
        assert secret not in logs, secret
        assert secret not in str(part), secret
        assert secret not in repr(writer), secret


def test_errors_echoing_a_password_are_masked() -> None:
    from sinks.clickhouse import one_line
    exc = RuntimeError(f"auth failed for alice with password {ENV_SECRET}\nsecond line")
    assert one_line(exc, ENV_SECRET) == "auth failed for alice with password ***"
