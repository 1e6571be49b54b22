"""A real worker on a real broker with ``CCPULSE_WEB_TOKEN`` set, probed over real HTTP:

- every route it serves (asked of the worker's own app, Faust's views included, plus
  the ones Faust is known to add) answers 401 or 404 without the token, except the
  public ``/health`` and ``/``; ``/table/fcr-customers/<key>/`` above all;
- it listens on loopback only by default (another loopback address is refused);
- a flood of requests with a 100 KB header or URL gets 4xx answers and leaves at
  most one short line in the log, no traceback;
- FCR contacts are keyed by an HMAC of the customer id whose key the workers share
  through Kafka, not by a plain SHA-256 anyone can compute from a phone number.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from ccpulse.commands import simulate
from ccpulse.commands.publish import publish_events
from ccpulse.config import Settings, load_settings
from tests.security_support import http_get
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

TOKEN = secrets.token_urlsafe(24)
PUBLIC = {"/health", "/"}
# What Faust serves on its own (faust.web.base DEFAULT/DEBUG/OPTIONAL blueprints), asked for
# even if the app no longer registers them: a later Faust must not bring them back unnoticed.
FAUST_PATHS = ("/table/", "/table/fcr-customers/", "/table/merged-windows/", "/table/sla-state/",
               "/router/", "/router/topics", "/router/fcr-customers/x/", "/graph/", "/stats/",
               "/assignment/", "/performance/", "/nothing-here")


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp: Path = tmp_path_factory.mktemp("web-exposure")
    (tmp / "ccpulse.toml").write_text("[windows]\nallowed_lateness_seconds = 0\nidle_close_seconds = 3\n")
    name = "webx" + secrets.token_hex(3)
    proc = WorkerProcess.create(kafka_bootstrap, tmp, name, CCPULSE_WEB_TOKEN=TOKEN)
    proc.start(timeout=180)
    try:
        yield proc
    finally:
        proc.stop()


def served_paths(env: dict[str, str]) -> set[str]:
    """Every route of the worker's app as built by the worker's own code, path parameters filled in."""
    from streams.app import create_app

    app = create_app(load_settings(env=env))
    app.web.init_server()
    return {re.sub(r"\{[^}]+\}", "x", route.resource.canonical) for route in app.web.web_app.router.routes()}


def contacts(worker: WorkerProcess, settings: Settings) -> list[tuple[bytes, dict[str, Any]]]:
    topic = f"{worker.prefix}{settings.app_id}-contacts"
    return [(key, json.loads(value)) for key, value in read_topic(worker.bootstrap, topic)
            if key and b"customer" in value]


@pytest.fixture(scope="module")
def published(worker: WorkerProcess) -> tuple[Settings, list[str]]:
    """Two simulated minutes of calls (repeat contacts included) through the worker."""
    settings = load_settings(env=worker.env)
    events = [("call", ev) for ev in simulate.generate_call_events(
        simulate.SimulationConfig(rate=0.5, repeat_probability=0.5, seed=3), 120)]
    customers = sorted({ev["customer_id"] for _f, ev in events if ev.get("customer_id")})
    assert customers
    assert asyncio.run(publish_events(settings, events, None)) == len(events)
    wait_until(lambda: len({k for k, _v in contacts(worker, settings)}) >= 2, 120, "contacts on the contacts topic")
    return settings, customers


def test_every_route_but_the_public_ones_wants_the_token(worker: WorkerProcess,
                                                         published: tuple[Settings, list[str]]) -> None:
    settings, customers = published
    plain = hashlib.sha256(customers[0].encode()).hexdigest()[:32]
    paths = (served_paths(worker.env) | set(FAUST_PATHS) | {f"/table/fcr-customers/{plain}/"}) - PUBLIC
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answered = {path: http_get(worker.port, path).status for path in sorted(paths)}
    open_ = {path: status for path, status in answered.items() if status not in (401, 404)}
    assert not open_, f"answered without the token: {open_}"
    for path in PUBLIC:
        response = http_get(worker.port, path)
        assert response.status == 200, path
        assert TOKEN not in response.body and not any(c in response.body for c in customers)
    assert http_get(worker.port, "/metrics", auth).status == 200  # the token still opens what it guards


def test_the_http_server_listens_on_loopback_only(worker: WorkerProcess) -> None:
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError):
        with socket.create_connection(("127.0.0.2", worker.port), timeout=5):
            pass


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_oversized_requests_leave_one_line_in_the_log(worker: WorkerProcess) -> None:
    before = worker.log_path.stat().st_size
    big = "a" * 100_000
    statuses = []
    for i in range(20):
        request = (f"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n" if i % 2 else
                   f"GET /{big} HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses.append(_raw_request(worker.port, request.encode()))
    assert all(re.match(rb"HTTP/1\.[01] 4\d\d ", s) for s in statuses), statuses
    assert http_get(worker.port, "/health").status == 200  # still serving

    def new_lines() -> list[str]:
        with open(worker.log_path, "rb") as log:
            log.seek(before)
            return log.read().decode(errors="replace").splitlines()

    wait_until(lambda: [line for line in new_lines() if "request" in line.lower()], 30,
               "the rejected requests in the log", interval=0.5)
    lines = new_lines()
    about = [line for line in lines if "request" in line.lower() or "Traceback" in line
             or line.startswith((" ", "\t")) or "LineTooLong" in line]
    assert len(about) == 1 and len(about[0]) < 400, "\n".join(about[:30])[:3000]


def test_fcr_contacts_are_keyed_by_a_shared_secret(worker: WorkerProcess,
                                                    published: tuple[Settings, list[str]]) -> None:
    settings, customers = published
    keys = {key.decode() for key, _doc in contacts(worker, settings)}
    plain = {hashlib.sha256(c.encode()).hexdigest()[:32] for c in customers}
    assert not keys & plain, f"contacts keyed by an unkeyed SHA-256 of the customer id: {sorted(keys & plain)[:3]}"
    stored = read_topic(worker.bootstrap, f"{worker.prefix}{settings.app_id}-fcr-key")
    assert stored, "no shared FCR key on the key topic"
    secret = stored[0][1]
    keyed = {hmac.new(secret, c.encode(), hashlib.sha256).hexdigest()[:32] for c in customers}
    assert keys <= keyed, sorted(keys - keyed)[:3]
