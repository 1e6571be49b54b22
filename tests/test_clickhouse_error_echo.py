"""A ClickHouse server (or a proxy in front of it) whose error echoes the request's headers.

A real HTTP server on loopback answers every request with an error whose first line
repeats the request's ``Authorization`` header (base64 of user:password), as some
servers and proxies do. The driver (clickhouse-connect, over real HTTP) turns that
into an exception: neither the CLI's one-line error, the worker's retry log, /health
nor the writer's repr may carry the credentials in any form.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from sinks.clickhouse import ClickHouseUnavailable, ClickHouseWriter, connect, one_line

USER = "alice"
PASSWORD = "Echo-S3cret-7c6d5e"


class _EchoingHandler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        # Authorization first: the one-line error keeps only the start of a long message.
        echoed = "; ".join(f"{name}: {value}" for name, value in sorted(
            self.headers.items(), key=lambda item: item[0].lower() != "authorization"))
        body = (f"Code: 516. DB::Exception: {USER}: Authentication failed ({echoed})."
                "\nsecond line").encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echoing_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _secrets() -> list[str]:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    # basic[:12] goes past "alice:" (8 characters of base64): a truncated echo still
    # gives away the start of the password.
    return [PASSWORD, basic, basic.rstrip("="), basic[:12]]


def test_an_error_echoing_the_authorization_header_is_redacted(
        echoing_server: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = f"http://127.0.0.1:{echoing_server}/kpis"
    with pytest.raises(ClickHouseUnavailable) as info:
        connect(dsn, USER, PASSWORD)
    message = str(info.value)
    assert "Authentication failed" in message, message  # the server's answer did arrive
    assert "\n" not in message

    writer = ClickHouseWriter(dsn, username=USER, password=PASSWORD, initial_backoff=0.01)
    attempts: list[str] = []
    writer.on_error = lambda table, exc: attempts.append(str(exc))
    assert asyncio.run(writer.write("raw_events", [{"event_id": "e"}], lambda: len(attempts) >= 2)) is False
    part = writer.health_part()
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sinks"))
    assert "ClickHouse write to raw_events failed" in logs
    for secret in _secrets():
        for where, text in (("error", message), ("log", logs), ("health", str(part)), ("repr", repr(writer))):
            assert secret not in text, f"{where} shows {secret!r}: {text[:300]}"
    assert "Authorization: Basic ***" in message, message


@pytest.mark.parametrize("text, shown", [
    ("Authorization: Basic YWxpY2U6cHc= rest", "Authorization: Basic *** rest"),
    ("authorization=Bearer abc.def-ghi rest", "authorization=Bearer *** rest"),
    ("X-ClickHouse-Key: hunter2; X-ClickHouse-User: alice", "X-ClickHouse-Key: ***; X-ClickHouse-User: alice"),
    ("proxy said: basic YWxpY2U6cHc=", "proxy said: basic ***"),
    ("no credentials here", "no credentials here"),
    ("Code: 516. basic authentication failed", "Code: 516. basic authentication failed"),
])
def test_credentials_in_any_header_form_are_masked(text: str, shown: str) -> None:
    # Whoever's credentials they are: not only the ones this writer was given.
    assert one_line(RuntimeError(text)) == shown
