"""A 1999 replay on the wallboard (real worker, real headless Chromium), and the
worker's front page.

The header's "as of" must carry the date (a replay is not today), and the status
must not say LIVE while the board shows 1999. ``/`` must lead a new user to the
wallboard instead of answering ``{"status": "OK"}``.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from ccpulse.commands import replay
from ccpulse.commands.simulate import QueueModel, SimulationConfig
from ccpulse.commands.simulate_channels import generate_mixed_events
from tests.test_wallboard_browser import READ_DOM, Browser, chromium_binary
from tests.worker_process import WorkerProcess, wait_until

pytestmark = pytest.mark.integration

START = datetime(1999, 1, 4, 8, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    chromium_binary()  # fail early and clearly, before starting anything
    process = WorkerProcess.create(kafka_bootstrap, tmp_path_factory.mktemp("replayboard"), "replayboard")
    process.start()
    try:
        voice = SimulationConfig(rate=1.0, seed=5, start=START, queues=(QueueModel("billing", agents=5),))
        events = list(generate_mixed_events(voice, None, None, 600))
        asyncio.run(replay.publish(events, kafka_bootstrap, {"call": f"{process.prefix}calls"}, None))
        yield process
    finally:
        process.stop()


def api(worker: WorkerProcess) -> dict[str, Any]:
    status, body = worker.get("/api/wallboard")
    return json.loads(body) if status == 200 else {}


def test_the_front_page_links_to_the_wallboard(worker: WorkerProcess) -> None:
    status, body = worker.get("/")
    assert status == 200, body
    assert '"status"' not in body and "<html" in body.lower(), body[:300]
    links = set(re.findall(r'href="([^"]+)"', body))
    assert {"/wallboard", "/metrics", "/health", "/api/windows"} <= links, links


def test_a_replay_shows_its_date_and_is_not_called_live(worker: WorkerProcess, tmp_path: Path) -> None:
    wait_until(lambda: (api(worker).get("as_of") or "").startswith("1999-01-04"), 60,
               "the replay's event time on /api/wallboard", 0.5)
    browser = Browser(tmp_path)
    try:
        browser.navigate(f"http://127.0.0.1:{worker.port}/wallboard")

        def shown() -> dict[str, Any] | None:
            dom = browser.evaluate(READ_DOM)
            return dom if dom["tiles"] and dom["status"] not in ("CONNECTING", "NO DATA") else None

        dom = wait_until(shown, 20, "the page to show the replay", 0.3)
        as_of = {field: text for field, _value, text, _format in dom["header"]}["as_of"]
        assert re.fullmatch(r"1999-01-04 \d\d:\d\d:\d\d", as_of), as_of
        assert dom["status"] == "REPLAY" and not dom["stale"], dom["status"]
        assert api(worker)["mode"] == "replay"
    finally:
        browser.close()
