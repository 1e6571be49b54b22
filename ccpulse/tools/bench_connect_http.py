"""The webhook receiver under load, for ``ccpulse bench``'s ``connect-http`` scenario (issue 17).

A real ``ccpulse connect http`` process on the bench's broker (its own topic prefix)
receives signed Twilio TaskRouter callbacks (each a new task entering a queue: one
event, one Kafka ack) from ``concurrency`` clients at once. The time to acknowledge is
the platform's view: from sending the request to its 2xx. Afterwards the input topic
is read back: a 2xx counts only if the events its request maps to are on it, so a
receiver that answers before storing fails the scenario instead of looking fast.

This module measures; ``ccpulse.tools.bench`` turns an :class:`HttpRun` into the
table's rows (targets, percentiles), and is the only way to run it
(``ccpulse bench --only connect-http``): the bench owns the broker, the table and the
JSON, and this module must not import it back.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ccpulse.connectors import twilio
from ccpulse.probes import free_port

TARGET_REQUESTS_PER_SECOND = 2000.0
TARGET_P99_MS = 100.0
_TOKEN = "bench-twilio-auth-token-0123456789"


@dataclass
class HttpRun:
    """One measured load: the answers, and what of it Kafka really holds."""

    sent: int
    ok: int  # answered 2xx
    non_2xx: int  # answered otherwise, or not at all (connection refused or reset)
    seconds: float  # first request sent to last answer received
    latencies: list[float]  # seconds to 2xx of each request whose events are on the input topic
    unstored: int  # answered 2xx, but an event it maps to is not on the input topic
    stored_events: int  # distinct event ids on the input topic(s) after the run, warm-up included
    concurrency: int
    warmup: int
    statuses: dict[str, int] = field(default_factory=dict)  # answers by status ("error": none)


def callback(base_url: str, i: int, prefix: str) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """Request ``i`` of the load named ``prefix``: its form body, its headers (signed), and its parameters."""
    params = {"EventType": "task-queue.entered", "TaskSid": f"{prefix}{i:012d}", "TaskQueueSid": "WQbench",
              "TaskQueueName": "bench",
              "TaskChannelUniqueName": "voice", "Timestamp": str(int(time.time())),
              "AccountSid": "ACbench", "WorkspaceSid": "WSbench", "ResourceType": "Task"}
    signature = twilio.expected_signature(base_url, sorted(params.items()), _TOKEN)
    return urlencode(params).encode(), {"X-Twilio-Signature": signature,
                                        "Content-Type": "application/x-www-form-urlencoded"}, params


def expected_events(params: dict[str, str]) -> set[tuple[str, str]]:
    """The (family, event id) the receiver must have stored for a request: the mapper's own answer."""
    return {(m.family, m.event["event_id"]) for m in twilio.map_callback(params)}


async def _load(url: str, requests: int, concurrency: int, prefix: str
                ) -> tuple[float, list[tuple[dict[str, str], int | None, float]]]:
    """Send ``requests`` callbacks from ``concurrency`` clients; each one's (params, status, seconds)."""
    import aiohttp

    calls = [callback(url, i, prefix) for i in range(requests)]
    answers: list[tuple[dict[str, str], int | None, float]] = []
    pending = iter(calls)

    async def client(session: Any) -> None:
        for body, headers, params in pending:
            started = time.perf_counter()
            status: int | None
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                # A receiver that drops connections under load: counted, not fatal to the run.
                status = None
            answers.append((params, status, time.perf_counter() - started))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - started, answers


async def _stored_events(bootstrap: str, topics: dict[str, str]) -> set[tuple[str, str]]:
    """(family, event id) of every event on the families' topics: on its family's topic, or not at all."""
    import orjson

    from ccpulse.probes import read_topic_async

    found: set[tuple[str, str]] = set()
    for family, topic in topics.items():
        for record in await read_topic_async(bootstrap, topic, timeout=120.0):
            try:
                found.add((family, orjson.loads(record.value)["event_id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # not an event: it cannot vouch for any request
    return found


def load_and_verify(base: str, bootstrap: str, topics: dict[str, str], requests: int, concurrency: int,
                    warmup: int) -> HttpRun:
    """Load the receiver at ``base``, then check each 2xx against ``topics`` (family -> input topic).

    The task ids are new to every run, so events a topic holds from an earlier run
    (a reused topic) cannot vouch for this one's requests.
    """
    from ccpulse.connectors.base import MappingError

    url = base + "/twilio"
    run = secrets.token_hex(4)
    try:
        if not expected_events(callback(url, 0, f"WT{run}r")[2]):
            raise MappingError("maps_to_nothing", "no event")
    except MappingError as exc:
        # The receiver would dead-letter every request and answer 200: no measurement of storing.
        raise RuntimeError(f"the bench's Twilio callback no longer maps to an event ({exc}): "
                           "fix ccpulse/tools/bench_connect_http.py:callback") from None
    if warmup:
        asyncio.run(_load(url, warmup, concurrency, f"WT{run}w"))
    seconds, answers = asyncio.run(_load(url, requests, concurrency, f"WT{run}r"))
    stored = asyncio.run(_stored_events(bootstrap, topics))
    latencies: list[float] = []
    unstored = 0
    statuses: dict[str, int] = {}
    for params, status, took in answers:
        statuses[str(status or "error")] = statuses.get(str(status or "error"), 0) + 1
        if status is None or not 200 <= status < 300:
            continue
        if expected_events(params) <= stored:
            latencies.append(took)
        else:
            unstored += 1
    ok = sum(1 for _, status, _ in answers if status is not None and 200 <= status < 300)
    return HttpRun(sent=len(answers), ok=ok, non_2xx=len(answers) - ok, seconds=seconds, latencies=latencies,
                   unstored=unstored, stored_events=len(stored), concurrency=concurrency, warmup=warmup,
                   statuses=statuses)


def measure(bootstrap: str, requests: int, concurrency: int = 64, warmup: int = 1000,
            workdir: Path | None = None) -> HttpRun:
    """Start a receiver on ``bootstrap`` (its own topic prefix), load it, stop it, verify on Kafka.

    The receiver runs from this tree, also under ``bench --worker-pythonpath`` (that
    option is the workers'): its requests are checked with this tree's mapper, so
    another tree's event ids would read as not stored. ``workdir`` keeps its log and
    state (``bench --keep``); without it, a temporary directory.
    """
    from ccpulse.config import load_settings
    from ccpulse.connectors.base import FAMILY_TOPIC_ATTR

    with tempfile.TemporaryDirectory(prefix="ccpulse-bench-http-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = root / "none.toml"
        config.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
        env.update(CCPULSE_KAFKA_BOOTSTRAP=bootstrap, CCPULSE_TOPIC_PREFIX=f"benchhttp{secrets.token_hex(4)}.",
                   CCPULSE_STATE_DIR=str(root / "state"), CCPULSE_CONFIG=str(config),
                   CCPULSE_CONNECT_HTTP_PORT=str(port), CCPULSE_CONNECT_TWILIO_AUTH_TOKEN=_TOKEN)
        settings = load_settings(config, env=env)
        # The topics the receiver publishes to, named as its own publisher names them.
        topics = {family: settings.topics.name(attr) for family, attr in FAMILY_TOPIC_ATTR.items()}
        log_path = root / "receiver.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ccpulse.cli", "connect", "http"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, log_path)
            return load_and_verify(base, bootstrap, topics, requests, concurrency, warmup)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the receiver was not healthy within {timeout:g} s: "
                       f"{log.read_text(errors='replace')[-2000:]}")
