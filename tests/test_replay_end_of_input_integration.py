"""``ccpulse replay`` closes what it replayed, and only that (real broker, real worker, real CLI).

Event time moves with events; once the input goes quiet it follows the wall clock at
1x, so a replayed day used to stay open until its midnight passed on the wall clock.
Here neither an idle source nor the wall-clock fallback can close anything within the
test (``source_idle_seconds`` and ``idle_close_seconds`` are an hour): only the
replay's end of input can.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from ccpulse.core.timestamps import format_ms
from ccpulse.core.windowing import Windowing
from schemas.records import window_name
from tests.worker_process import WorkerProcess, latest_windows, wait_until, worker_env

pytestmark = pytest.mark.integration

SIZES = (60, 900, 3600, 86400)
# Under the load of a 2-core machine shared with other tests; the replay has already
# waited for the worker to read everything when it returns.
CLOSE_DEADLINE_S = 20.0


def config(tmp: Path, lateness_s: float = 120.0) -> None:
    (tmp / "ccpulse.toml").write_text(
        "[windows]\nsource_idle_seconds = 3600\nidle_close_seconds = 3600\n"
        f"allowed_lateness_seconds = {lateness_s}\n")


def calls(queue: str, start_ms: int, n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` calls a minute apart: answered and ended, every third abandoned."""
    events = []
    for i in range(n):
        iid, t = f"{prefix}-{i}", start_ms + i * 60_000

        def ev(k: int, kind: str, ms: int, **extra: Any) -> None:
            events.append({"event_id": f"{iid}-{k}", "type": f"call.{kind}", "occurred_at": format_ms(ms),
                           "interaction_id": iid, "queue": queue, "schema_version": 1, **extra})
        ev(1, "offered", t)
        if i % 3 == 2:
            ev(2, "abandoned", t + 30_000)
        else:
            ev(2, "answered", t + 10_000, agent_id=f"a{i}")
            ev(3, "ended", t + 50_000, agent_id=f"a{i}")
    return events


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in events))


def run_replay(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    proc = subprocess.run([sys.executable, "-m", "ccpulse.cli", "replay", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr, time.monotonic()


def touched(events: list[dict[str, Any]], queue: str) -> set[str]:
    """kpi.windows keys of every queue window the events fall in (UTC, the default zone)."""
    from schemas.events import parse_timestamp_ms

    w = Windowing(SIZES)
    return {f"{window_name(size)}|{format_ms(start)}|{queue}|voice"
            for doc in events for size, start in w.starts(parse_timestamp_ms(doc["occurred_at"]))}


def test_a_replayed_day_is_final_within_seconds_after_the_replay_returns(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    config(tmp_path)
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "eoi-day")
    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    first = int((day + timedelta(hours=9, minutes=55)).timestamp() * 1000)  # crosses 10:00
    events = calls("billing", first, 8, "day")
    expected = touched(events, "billing")
    assert {k.split("|")[0] for k in expected} == {"1m", "15m", "1h", "1d"}
    path = tmp_path / "day.jsonl"
    write_jsonl(path, events)
    topic = f"{worker.prefix}kpi.windows"
    worker.start()
    try:
        code, err, returned = run_replay(worker.env, str(path), "--speed", "max")
        assert code == 0, err
        still_open: list[str] = []

        def all_final() -> bool:
            windows = latest_windows(kafka_bootstrap, topic)
            still_open[:] = sorted(k for k in expected if not windows.get(k, {}).get("final"))
            return not still_open

        try:
            wait_until(all_final, CLOSE_DEADLINE_S, f"every window of the replayed day final on {topic}",
                       interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: still open {still_open}; replay said: {err}") from None
        took = time.monotonic() - returned
        assert "end of input sent" in err, err
        assert f"closes through {format_ms(int((day + timedelta(days=1, minutes=2)).timestamp() * 1000))}" \
            in err, err
        windows = latest_windows(kafka_bootstrap, topic)
        day_key = f"1d|{format_ms(int(day.timestamp() * 1000))}|billing|voice"
        assert windows[day_key]["final"] and windows[day_key]["offered"] == 8, windows[day_key]
        print(f"every window final {took:.1f} s after the replay returned")
    finally:
        worker.stop()


class LiveProducer(threading.Thread):
    """Offers a call stamped now every 0.3 s, keyed by interaction, like a live system."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_now = threading.Event()
        self.sent = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            while not self.stop_now.is_set():
                iid = f"live-{self.sent}"
                doc = {"event_id": f"{iid}-1", "type": "call.offered", "interaction_id": iid,
                       "occurred_at": format_ms(int(time.time() * 1000)), "queue": "live", "schema_version": 1}
                await producer.send_and_wait(self.topic, json.dumps(doc).encode(), key=iid.encode())
                self.sent += 1
                await asyncio.sleep(0.3)
        finally:
            await producer.stop()


def test_live_windows_stay_open_when_a_replay_ends_beside_live_producers(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    # Allowed lateness 10 min: a replay of the last few minutes is not refused as late.
    config(tmp_path, lateness_s=600.0)
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "eoi-live")
    topic = f"{worker.prefix}kpi.windows"
    now = int(time.time() * 1000)
    events = calls("replayed", now - 240_000, 3, "recent")
    path = tmp_path / "recent.jsonl"
    write_jsonl(path, events)
    live = LiveProducer(kafka_bootstrap, f"{worker.prefix}calls")
    worker.start()
    live.start()
    try:
        wait_until(lambda: any("|live|" in k for k in latest_windows(kafka_bootstrap, topic)), 60,
                   "the live calls on kpi.windows")
        code, err, _ = run_replay(worker.env, str(path), "--speed", "max")
        assert code == 0, err
        assert "end of input sent" in err, err
        # The replay's day ends after now: the end of input stops at the wall clock.
        assert "wall clock" in err, err
        sent_at_marker = live.sent
        wait_until(lambda: live.sent >= sent_at_marker + 15, 30, "live calls after the end of input")
        settle = time.monotonic() + 5
        while time.monotonic() < settle:  # what the end of input would have closed shows by now
            time.sleep(0.5)
        windows = latest_windows(kafka_bootstrap, topic)
        finals = sorted(k for k, v in windows.items() if v.get("final"))
        assert not finals, finals  # nothing of today closes: every window ends after now - 10 min
        replayed = {k for k in windows if "|replayed|" in k}
        assert touched(events, "replayed") <= replayed
        late = sum(v for (name, _labels), v in worker.metrics().items() if name == "ccpulse_late_events_total")
        assert late == 0
    finally:
        live.stop_now.set()
        live.join(10)
        worker.stop()


def test_without_a_running_worker_the_replay_says_it_sent_no_end_of_input(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    env = worker_env(kafka_bootstrap, tmp_path, "eoi-none")
    path = tmp_path / "day.jsonl"
    write_jsonl(path, calls("billing", int(time.time() * 1000) - 86_400_000, 2, "none"))
    started = time.monotonic()
    code, err, returned = run_replay(env, str(path))
    assert code == 0, err
    assert "end of input not sent" in err and "no worker of app eoi-none" in err, err
    assert returned - started < 60
    code, err, _ = run_replay(env, str(path), "--no-end-of-input")
    assert code == 0 and "end of input" not in err, err
