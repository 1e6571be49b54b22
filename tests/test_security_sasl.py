"""Against a real local broker whose only listener wants SASL/SCRAM:

- a ``ccpulse worker`` with the right credentials becomes healthy and turns
  published events into kpi.windows; with a wrong password ``ccpulse worker`` and
  ``ccpulse simulate`` exit non-zero at once with one line on stderr;
- with ``CCPULSE_WEB_TOKEN`` the worker's pages want the bearer token (``/health`` does not);
- customer ids (distinctive ones, repeat contacts on every channel) reach neither
  /metrics, the JSON APIs, the aggregate topics nor the worker's log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from ccpulse import kafka_security
from ccpulse.commands import simulate, simulate_channels
from ccpulse.commands.publish import publish_events
from ccpulse.config import KafkaSettings, Settings, load_settings
from tests.security_support import (MECHANISM, SaslBroker, http_get, latest_windows, read_topic,
                                    start_sasl_broker)
from tests.worker_process import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.integration

TOKEN = secrets.token_urlsafe(24)
OFFER_TYPES = ("call.offered", "chat.offered", "ticket.created")
AGGREGATE_TOPICS = ("kpi.windows", "kpi.agents", "kpi.queue-state", "sla.breaches", "kpi.scorecards")
# Every aggregate topic must get records in a short run: 1-minute windows close
# without lateness, breaches open at once, and 1-minute windows get scorecards.
CONFIG = """
[windows]
allowed_lateness_seconds = 0
idle_close_seconds = 3

[targets.hold]
open_seconds = 0
resolve_seconds = 0

[scorecard]
min_window_seconds = 60
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    yield from start_sasl_broker(tmp_path_factory.mktemp("sasl-kafka"))


def scenario() -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Four simulated minutes of calls, chats and tickets, half of them repeat contacts
    (what FCR keys on), with every customer id replaced by a distinctive random one."""
    voice = simulate.SimulationConfig(rate=0.4, repeat_probability=0.5, seed=7)
    chat = simulate_channels.ChatConfig(rate=0.3, repeat_probability=0.5, transfer_probability=0.0, seed=7)
    ticket = simulate_channels.TicketConfig(rate=0.2, repeat_probability=0.5, first_reply_mean=60,
                                            solve_after_mean=60, close_after_solve=120,
                                            customer_reply_mean=60, seed=7)
    events = list(simulate_channels.generate_mixed_events(voice, chat, ticket, 240))
    marker = "zqx" + secrets.token_hex(3)
    renamed: dict[str, str] = {}
    for _family, ev in events:
        if "customer_id" in ev:
            ev["customer_id"] = renamed.setdefault(ev["customer_id"], f"{marker}-{secrets.token_hex(8)}")
    return events, sorted(renamed.values())


@dataclass
class Run:
    worker: WorkerProcess
    settings: Settings
    events: list[tuple[str, dict[str, Any]]]
    customer_ids: list[str]
    offered: int
    windows: dict[str, dict[str, Any]]

    def topic(self, name: str) -> str:
        return f"{self.worker.prefix}{name}"


@pytest.fixture(scope="module")
def run(broker: SaslBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp: Path = tmp_path_factory.mktemp("sasl-worker")
    (tmp / "ccpulse.toml").write_text(CONFIG)
    worker = WorkerProcess.create(broker.bootstrap, tmp, "sec", **broker.env(), CCPULSE_WEB_TOKEN=TOKEN)
    events, customer_ids = scenario()
    offered = sum(1 for _f, ev in events if ev["type"] in OFFER_TYPES)
    worker.start(timeout=180)
    try:
        settings = load_settings(env=worker.env)
        assert settings.kafka.security_protocol == "SASL_PLAINTEXT"
        assert asyncio.run(publish_events(settings, events, None)) == len(events)

        def complete() -> dict[str, dict[str, Any]] | None:
            windows = latest_windows(settings.kafka, f"{worker.prefix}kpi.windows")
            days = [w for w in windows.values() if w["window"] == "1d"]
            return windows if sum(w["offered"] for w in days) == offered else None

        windows = wait_until(complete, 180, "every offered contact in the 1d kpi.windows", interval=2.0)
        for name in ("sla.breaches", "kpi.scorecards"):
            wait_until(lambda: read_topic(settings.kafka, f"{worker.prefix}{name}"), 120, f"records on {name}",
                       interval=2.0)
        yield Run(worker, settings, events, customer_ids, offered, windows)
    finally:
        worker.stop()


def test_worker_with_the_right_credentials_turns_events_into_kpi_windows(run: Run) -> None:
    expected: Counter[str] = Counter()
    for _family, ev in run.events:
        if ev["type"] in OFFER_TYPES:
            expected[ev.get("channel") or ev["type"].split(".")[0].replace("call", "voice")] += 1
    days: Counter[str] = Counter()
    for w in run.windows.values():
        if w["window"] == "1d":
            days[w["channel"]] += w["offered"]
    assert days == expected and len(expected) >= 4, (days, expected)
    # 1-minute windows close (lateness 0, idle close 3 s): the worker finalises over SASL too.
    # Read again until then: the fixture's snapshot is taken when the day windows hold every
    # contact, which on a loaded machine came before the idle close (a fresh clone's run).
    def closed() -> bool:
        windows = latest_windows(run.settings.kafka, f"{run.worker.prefix}kpi.windows")
        return any(w["final"] for w in windows.values() if w["window"] == "1m")

    wait_until(closed, 60, "a final 1-minute window", interval=1.0)
    status, body = run.worker.get("/health")
    assert status == 200 and json.loads(body)["parts"]["kafka"]["ok"] is True


def test_a_plaintext_reader_gets_nothing_from_the_sasl_listener(run: Run) -> None:
    plain = KafkaSettings(bootstrap=run.settings.kafka.bootstrap)
    line = asyncio.run(kafka_security.diagnose(plain, timeout=10))
    assert line == f"Kafka at {plain.bootstrap} closed the connection during the handshake " \
                   "(the listener may require SASL or TLS)"


@pytest.mark.parametrize("command", [["worker"], ["simulate", "--duration", "60"]])
def test_a_wrong_password_is_refused_with_one_line(broker: SaslBroker, tmp_path: Path, command: list[str]) -> None:
    wrong = "not-" + secrets.token_hex(6)
    env = worker_env(broker.bootstrap, tmp_path, "refused", **broker.env(password=wrong))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ccpulse.cli", *command], env=env, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert lines == [f"ccpulse {command[0]}: Kafka at {broker.bootstrap} refused the credentials "
                     f"(SASL {MECHANISM} authentication failed for user '{broker.username}')"], proc.stderr
    assert wrong not in proc.stderr + proc.stdout
    assert elapsed < 30, f"took {elapsed:.1f}s"


def test_both_scram_mechanisms_and_only_the_right_password(broker: SaslBroker) -> None:
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        right = KafkaSettings(bootstrap=broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mech,
                              sasl_username=broker.username, sasl_password=broker.password)
        assert asyncio.run(kafka_security.diagnose(right)) is None
        wrong = KafkaSettings(bootstrap=broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mech,
                              sasl_username=broker.username, sasl_password=broker.password + "x")
        assert "refused the credentials" in (asyncio.run(kafka_security.diagnose(wrong)) or "")
    plain = KafkaSettings(bootstrap=broker.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                          sasl_username=broker.username, sasl_password=broker.password)
    assert asyncio.run(kafka_security.diagnose(plain)) == (
        f"Kafka at {broker.bootstrap} does not offer SASL mechanism PLAIN; "
        "set kafka.sasl_mechanism / CCPULSE_KAFKA_SASL_MECHANISM")


# --- the web token ----------------------------------------------------------------

GUARDED = ("/metrics", "/api/windows", "/api/wallboard", "/wallboard")


def test_pages_want_the_bearer_token(run: Run) -> None:
    port = run.worker.port
    for path in GUARDED:
        missing = http_get(port, path)
        assert missing.status == 401, path
        assert json.loads(missing.body)["error"] == "missing_token"
        assert missing.headers["WWW-Authenticate"].startswith('Bearer realm="ccpulse"')
        wrong = http_get(port, path, {"Authorization": f"Bearer {TOKEN[:-1]}x"})
        assert wrong.status == 401 and json.loads(wrong.body)["error"] == "invalid_token", path
        basic = http_get(port, path, {"Authorization": f"Basic {TOKEN}"})
        assert basic.status == 401, path
        ok = http_get(port, path, {"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200, (path, ok.body[:200])
    assert "ccpulse_events_consumed_total" in http_get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"}).body


def test_health_stays_open_and_tells_no_secret(run: Run, broker: SaslBroker) -> None:
    health = http_get(run.worker.port, "/health")
    assert health.status == 200
    assert TOKEN not in health.body and broker.password not in health.body
    assert broker.username not in health.body and broker.bootstrap not in health.body


def test_the_wallboard_page_logs_in_through_its_url_once(run: Run) -> None:
    port = run.worker.port
    assert http_get(port, f"/wallboard?token={TOKEN[:-1]}x").status == 401
    login = http_get(port, f"/wallboard?token={TOKEN}")
    assert login.status == 303 and login.headers["Location"] == "/wallboard"
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    page = http_get(port, "/wallboard", jar)
    assert page.status == 200 and "/api/wallboard" in page.body
    api = http_get(port, "/api/wallboard", jar)  # what the page's fetch() sends
    assert api.status == 200 and json.loads(api.body)["queues"]


# --- customer ids ---------------------------------------------------------------------


def _leaks(text: str, run: Run) -> list[str]:
    marker = run.customer_ids[0].split("-", 1)[0]
    needles = [marker, *run.customer_ids, *(cid.split("-", 1)[1] for cid in run.customer_ids)]
    return [needle for needle in needles if needle in text]


def test_customer_ids_never_leave_the_raw_store(run: Run) -> None:
    kafka = run.settings.kafka
    # The search finds them where they belong: the input topics.
    raw = b"".join(value for _k, value in read_topic(kafka, run.topic("chats"))).decode()
    assert _leaks(raw, run), "the input topic should hold the customer ids (is the search broken?)"
    repeated = Counter(ev["customer_id"] for _f, ev in run.events if ev["type"] in OFFER_TYPES
                       and "customer_id" in ev)
    assert max(repeated.values()) >= 3, "the scenario needs repeat contacts for FCR"

    auth = {"Authorization": f"Bearer {TOKEN}"}
    places: dict[str, str] = {}
    for path in ("/metrics", "/api/windows", "/api/wallboard"):
        response = http_get(run.worker.port, path, auth)
        assert response.status == 200
        places[path] = response.body
    for name in AGGREGATE_TOPICS:
        records = read_topic(kafka, run.topic(name))
        places[name] = "\n".join((key or b"").decode(errors="replace") + " " + value.decode(errors="replace")
                                 for key, value in records)
    assert all(places[name] for name in AGGREGATE_TOPICS), [name for name in AGGREGATE_TOPICS if not places[name]]
    places["worker log"] = run.worker.log_path.read_text(errors="replace")
    assert "INFO" in places["worker log"] or "[^" in places["worker log"], "the worker should log at info"
    found = {where: _leaks(text, run)[:3] for where, text in places.items() if _leaks(text, run)}
    assert not found, f"customer ids leaked: {found}"
    assert run.settings.kafka.sasl_password not in places["worker log"]


def test_the_wallboard_works_in_a_browser_with_a_token(run: Run, tmp_path: Path) -> None:
    """A real headless Chromium: the page opened with ?token= renders tiles from /api/wallboard."""
    from tests.test_wallboard_browser import Browser

    browser = Browser(tmp_path)
    try:
        base = f"http://127.0.0.1:{run.worker.port}"
        browser.navigate(f"{base}/wallboard")
        assert "missing_token" in browser.evaluate("document.body.innerText")
        browser.navigate(f"{base}/wallboard?token={TOKEN}")
        assert browser.evaluate("location.pathname + location.search") == "/wallboard"  # token left the URL
        tiles = wait_until(lambda: browser.evaluate("document.querySelectorAll('#tiles .tile').length"), 30,
                           "wallboard tiles", interval=0.5)
        assert tiles >= 3
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: scripts can't read the token
    finally:
        browser.close()
