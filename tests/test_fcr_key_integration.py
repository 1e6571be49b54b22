"""The FCR customer key against a real broker.

- Workers starting at the same moment, each with its own state directory, end up
  with one key (the first stored on ``<app>-fcr-key``), and keep it on later starts;
  ``[fcr] customer_key`` wins without touching Kafka.
- A real worker restarted with another key over existing FCR state says so in its
  log (contacts before and after the change cannot meet) instead of silently
  counting repeat contacts as resolved.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from ccpulse.commands import simulate
from ccpulse.commands.publish import publish_events
from ccpulse.config import load_settings
from streams.fcr import KEY_TOPIC_SUFFIX, shared_key
from tests.worker_process import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration


def test_workers_racing_at_first_start_share_one_key(kafka_bootstrap: str) -> None:
    app = "fcrkey" + secrets.token_hex(3)
    settings = load_settings(env={"CCPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap, "CCPULSE_APP_ID": app,
                                  "CCPULSE_CONFIG": "/dev/null"})
    topic = f"{app}-{KEY_TOPIC_SUFFIX}"

    async def race() -> list[bytes]:
        return list(await asyncio.gather(*(shared_key(settings, topic) for _ in range(4))))

    keys = asyncio.run(race())
    assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
    assert asyncio.run(shared_key(settings, topic)) == keys[0]  # a later start
    assert read_topic(kafka_bootstrap, topic)[0][1] == keys[0]
    configured = load_settings(env={"CCPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "CCPULSE_CONFIG": "/dev/null",
                                    "CCPULSE_FCR_CUSTOMER_KEY": "c" * 32})
    assert asyncio.run(shared_key(configured, topic)) == b"c" * 32  # no broker asked (port 1)


def test_a_changed_key_over_existing_state_is_logged(kafka_bootstrap: str, tmp_path: Path) -> None:
    (tmp_path / "ccpulse.toml").write_text("[windows]\nallowed_lateness_seconds = 0\nidle_close_seconds = 3\n")
    name = "fcrchg" + secrets.token_hex(3)
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, name, CCPULSE_FCR_CUSTOMER_KEY="first-" + "k" * 20)
    settings = load_settings(env=worker.env)
    contacts_topic = f"{worker.prefix}{name}-contacts"
    events = [("call", ev) for ev in simulate.generate_call_events(
        simulate.SimulationConfig(rate=0.5, repeat_probability=0.5, seed=5), 60)]

    def stored_contacts() -> int:
        return sum(1 for _k, value in read_topic(kafka_bootstrap, contacts_topic) if b'"customer"' in value)

    worker.start(timeout=180)
    try:
        assert asyncio.run(publish_events(settings, events, None)) == len(events)
        first = wait_until(stored_contacts, 120, "contacts of the first run")
        wait_until(lambda: "FCR customer key" in worker.log_tail(200_000), 60, "the key line")
    finally:
        worker.stop()
    assert "hashed with customer key" not in worker.log_tail(200_000)

    worker.env["CCPULSE_FCR_CUSTOMER_KEY"] = "second-" + "k" * 20
    worker.start(timeout=180)
    try:
        later = [("call", ev) for ev in simulate.generate_call_events(
            simulate.SimulationConfig(rate=0.5, repeat_probability=0.5, seed=6,
                                      start=simulate.live_start()), 60)]
        assert asyncio.run(publish_events(settings, later, None)) == len(later)
        wait_until(lambda: stored_contacts() > first, 120, "contacts of the second run")
        line = wait_until(lambda: [l for l in worker.log_tail(200_000).splitlines()
                                   if "hashed with customer key" in l], 60, "the key-change warning")
        assert "WARNING" in line[0] and "not linked" in line[0], line
    finally:
        worker.stop()
