"""The wallboard page in a real headless Chromium against a real worker fed with live events.

Chromium is driven over the DevTools protocol (its websocket, with aiohttp, which
Faust already depends on): one page stays open for the whole test, as on a TV, so
the test sees it update in place. Chromium comes from Debian (`chromium`); without
it the test fails, it does not skip.

The test checks that every number on the page is the JSON API's, that they grow
as more events arrive, that the agent tiles (staffed, available, on contact,
after-contact work, away with its top reasons, required, the gap) show the live
agent events and the gap is red where the queue is short, that the header turns
stale when the worker stops, and writes the 1920x1080 screenshot ``docs/wallboard.png``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from ccpulse.commands.simulate import QueueModel, SimulationConfig, live_start
from ccpulse.commands.publish import publish_mixed
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events
from tests.worker_process import WorkerProcess, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "wallboard.png"
WIDTH, HEIGHT = 1920, 1080
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- Chromium over the DevTools protocol ---------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed: the wallboard browser test needs Debian's chromium "
                "(apt-get install -y chromium chromium-driver; `make test` installs it)", pytrace=False)


class Browser:
    """A headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, tmp: Path) -> None:
        profile = tmp / "chromium-profile"
        profile.mkdir()
        self.log = open(tmp / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "--force-device-scale-factor=1",
             "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "TZ": "UTC"})
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not start: {(tmp / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
            targets = json.loads(resp.read())
        self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets
                           if t["type"] == "page" and t["url"] == "about:blank")

    def cdp(self, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Send DevTools commands in order over one session; their results."""
        async def run() -> list[dict[str, Any]]:
            out = []
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                    for n, (method, params) in enumerate(calls, 1):
                        await ws.send_json({"id": n, "method": method, "params": params})
                        while True:
                            msg = await asyncio.wait_for(ws.receive_json(), 30)
                            if msg.get("id") == n:
                                break
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        out.append(msg["result"])
            return out
        return asyncio.run(run())

    def evaluate(self, expression: str) -> Any:
        [result] = self.cdp(("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                  "awaitPromise": True}))
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.cdp(("Page.navigate", {"url": url}))
        wait_until(lambda: self.evaluate("document.readyState") == "complete", 15, f"{url} to load", 0.2)

    def screenshot(self, path: Path) -> None:
        _, shot = self.cdp(
            ("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                                                    "mobile": False}),
            ("Page.captureScreenshot", {"format": "png"}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


# What the page shows: every [data-field] with its raw JSON value and its text.
READ_DOM = """(() => ({
  reloaded: window.__probe !== 'set-by-test',
  stale: document.body.classList.contains('stale'),
  status: document.getElementById('status').textContent,
  header: [...document.querySelectorAll('header [data-field]')].map(
    e => [e.dataset.field, e.dataset.value ?? null, e.textContent, e.dataset.format]),
  tiles: [...document.querySelectorAll('#tiles .tile')].map(t => ({
    queue: t.dataset.queue, channel: t.dataset.channel, probe: t.dataset.probe ?? null,
    sl_status: t.querySelector('.sl').dataset.status,
    gap_short: t.querySelector('.gap').dataset.short ?? null,
    gap_red: getComputedStyle(t.querySelector('.gap')).backgroundColor === 'rgb(220, 38, 38)',
    fields: [...t.querySelectorAll('[data-field]')].map(
      e => [e.dataset.field, e.dataset.value ?? null, e.textContent, e.dataset.format])})),
}))()"""


# -- the page's number formats (streams/wallboard.html fmt()), for the text check -------


def js_round(x: float) -> int:
    return math.floor(x + 0.5)  # JavaScript's Math.round: halves go up


def fmt(value: Any, form: str) -> str:
    if value is None:
        return "\u2014"  # an em dash: no value is never shown as 0
    if form == "int":
        return str(js_round(value))
    if form == "signed":
        return ("+" if value > 0 else "") + str(js_round(value))
    if form == "reasons":
        return "\n".join(f"{reason or 'no reason'} {n}" for reason, n in value)
    if form == "pct":
        return f"{js_round(value * 100)}%"
    if form == "dur":
        s = js_round(value)
        if s < 60:
            return f"{s}s"
        if s < 3600:
            return f"{s // 60}:{s % 60:02d}"
        minutes = (s % 3600) // 60
        return f"{s // 3600}h{minutes:02d}" if minutes else f"{s // 3600}h"
    if form in ("time", "datetime"):  # the browser runs with TZ=UTC
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.strftime("%H:%M:%S" if form == "time" else "%Y-%m-%d %H:%M:%S")
    return str(value)


def lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if obj is None:
            return None
        obj = obj.get(part)
    return obj


def differences(dom: dict[str, Any], api: dict[str, Any]) -> list[str]:
    """Everything the page shows that is not what the API says."""
    diffs: list[str] = []

    def check(where: str, fields: list[list[Any]], source: dict[str, Any]) -> None:
        for path, raw, text, form in fields:
            want = lookup(source, path)
            got = None if raw is None else json.loads(raw)
            if got != want:
                diffs.append(f"{where} {path}: page value {got!r} != API {want!r}")
            elif text != fmt(want, form):
                diffs.append(f"{where} {path}: page text {text!r} != {fmt(want, form)!r}")

    check("header", dom["header"], api)
    order = [(t["queue"], t["channel"]) for t in dom["tiles"]]
    want_order = [(q["queue"], q["channel"]) for q in api["queues"]]
    if order != want_order:
        return diffs + [f"tiles {order} != API queues {want_order}"]
    for tile, row in zip(dom["tiles"], api["queues"]):
        where = f"{tile['queue']}|{tile['channel']}"
        check(where, tile["fields"], row)
        if tile["sl_status"] != row["last_15m"]["service_level_status"]:
            diffs.append(f"{where}: SL colour {tile['sl_status']} != {row['last_15m']['service_level_status']}")
        short = row["agents_gap"] is not None and row["agents_gap"] > 0
        if (tile["gap_short"], tile["gap_red"]) != (str(short).lower(), short):
            diffs.append(f"{where}: gap {row['agents_gap']} shown red={tile['gap_red']}")
    return diffs


# -- live events ----------------------------------------------------------------------


class LiveEvents:
    """Simulated calls, chats and tickets from ``backlog`` seconds ago; publishes the ones already
    due (the backlog at once, then in real time)."""

    def __init__(self, worker: WorkerProcess, seconds: float = 120, backlog: float = 600) -> None:
        start = live_start() - timedelta(seconds=backlog)
        seconds += backlog
        # Agent events on: agents log in, wrap up, and take breaks with reasons every minute or so.
        # The backlog gives the last 15 minutes their load and handle time (agents_required's
        # arrival rate is offered / 900 s): support, 3 agents for 0.5 calls/s x 15 s, is short.
        voice = SimulationConfig(rate=2.0, queues=(QueueModel("billing", agents=20, weight=2),
                                                   QueueModel("support", agents=2),
                                                   QueueModel("sales", agents=1)),
                                 service_mean=15, wrapup_mean=1, patience_mean=8, seed=11, start=start,
                                 agent_events=True, break_interval=60.0, break_duration=20.0, hold_probability=0.3)
        chat = ChatConfig(rate=0.5, queues=(QueueModel("chat-support", agents=3),), concurrency=2,
                          patience_mean=20, messages_mean=4, agent_reply_mean=2, customer_reply_mean=2,
                          rating_probability=0.9, transfer_probability=0, seed=11, start=start, agent_events=True)
        ticket = TicketConfig(rate=0.5, queues=(QueueModel("tier1", agents=4),), channels=("email", "web"),
                              first_reply_mean=6, solve_after_mean=8, close_after_solve=20,
                              customer_reply_mean=8, rating_probability=0.5, seed=11, start=start)
        self.events = generate_mixed_events(voice, chat, ticket, seconds)
        self.pending: tuple[str, dict[str, Any]] | None = None
        self.worker = worker
        self.offered: Counter = Counter()  # (queue, channel, day) -> offers published
        self.published = 0

    def publish_due(self) -> int:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        batch: list[tuple[str, dict[str, Any]]] = []
        if self.pending is not None:
            if self.pending[1]["occurred_at"] > now:
                return 0
            batch.append(self.pending)
            self.pending = None
        for item in self.events:
            if item[1]["occurred_at"] > now:
                self.pending = item
                break
            batch.append(item)
        for family, ev in batch:
            if ev["type"] in ("call.offered", "chat.offered", "ticket.created"):
                channel = {"call": "voice", "chat": "chat"}.get(family) or ev["channel"]
                self.offered[(ev["queue"], channel, ev["occurred_at"][:10])] += 1
        prefix = self.worker.prefix
        topics = {"call": f"{prefix}calls", "chat": f"{prefix}chats", "ticket": f"{prefix}tickets",
                  "agent": f"{prefix}agents"}
        if batch:
            asyncio.run(publish_mixed(batch, self.worker.bootstrap, topics, None))
        self.published += len(batch)
        return len(batch)

    def stream(self, seconds: float) -> None:
        """Publish what is due once a second, for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tick = time.monotonic()
            self.publish_due()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))

    def offered_on(self, day: str) -> dict[tuple[str, str], int]:
        return {(q, c): n for (q, c, d), n in self.offered.items() if d == day}


CONFIG = """
[channels.chat]
service_level_seconds = 10

[queues.support.voice]
service_level_seconds = 4

[queues.sales.voice]
service_level_seconds = 2

[queues.sales.targets.voice]
service_level = { min = 0.95 }
"""


# -- the test --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    chromium_binary()  # fail early and clearly, before starting anything
    tmp: Path = tmp_path_factory.mktemp("wallboard")
    # Tight per-queue service-level targets, so a few seconds of live traffic give every colour.
    (tmp / "ccpulse.toml").write_text(CONFIG)
    process = WorkerProcess.create(kafka_bootstrap, tmp, "wallboard")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium_binary()
    b = Browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield b
    finally:
        b.close()


def test_chromium_is_installed() -> None:
    assert Path(chromium_binary()).exists()


def api(worker: WorkerProcess) -> dict[str, Any]:
    status, body = worker.get("/api/wallboard")
    assert status == 200, f"GET /api/wallboard answered {status}"
    return json.loads(body)


def page_equals_api(browser: Browser, worker: WorkerProcess, attempts: int = 8) -> tuple[dict, dict]:
    """The DOM, then the API right after it, until they agree (the page refreshes once a second)."""
    diffs: list[str] = []
    for _ in range(attempts):
        dom = browser.evaluate(READ_DOM)
        body = api(worker)
        diffs = differences(dom, body)
        if not diffs:
            return dom, body
        time.sleep(0.35)
    raise AssertionError("the page does not show the API's numbers:\n  " + "\n  ".join(diffs[:20]))


def settled(worker: WorkerProcess, events: LiveEvents) -> dict[str, Any] | None:
    """The API body once every published offer is in today's totals."""
    body = api(worker)
    # Live once event time is within minutes of the wall clock: the backlog published first
    # starts it 10 minutes back, and every input partition must report before it moves.
    if not body["queues"] or body["mode"] != "live":
        return None
    day = body["queues"][0]["today"]["window_start"][:10]
    want = events.offered_on(day)
    got = {(q["queue"], q["channel"]): q["today"]["offered"] for q in body["queues"]}
    return body if got == {k: want.get(k, 0) for k in got} and set(want) <= set(got) else None


def short_of_agents(body: dict[str, Any]) -> bool:
    """Support (3 agents for 0.5 calls/s of 15 s) short, once a handle time is known."""
    return any((q["queue"], q["channel"]) == ("support", "voice") and (q["agents_gap"] or 0) > 0
               for q in body["queues"])


def today_offered(dom: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(t["queue"], t["channel"]): json.loads(dict((f[0], f[1]) for f in t["fields"])["today.offered"])
            for t in dom["tiles"]}


def test_wallboard_page_shows_the_api_numbers_live(worker: WorkerProcess, browser: Browser) -> None:
    started = time.monotonic()
    status, html = worker.get("/wallboard")
    assert status == 200, (f"GET /wallboard answered {status}: is streams.wallboard.register(pipe) "
                           "called in streams/app.py create_app()?")
    assert "<title>ccpulse wallboard</title>" in html

    browser.navigate(f"http://127.0.0.1:{worker.port}/wallboard")
    browser.evaluate("window.__probe = 'set-by-test'")
    events = LiveEvents(worker)

    # 1. Live traffic for a while; once it is all counted the page must show exactly the API.
    events.stream(8)
    wait_until(lambda: settled(worker, events), 30, "every published offer in today's totals", 0.5)
    first, body = page_equals_api(browser, worker)
    assert not first["reloaded"] and not first["stale"] and first["status"] == "LIVE"
    kinds = [q["channel_kind"] for q in body["queues"]]
    assert {"voice", "chat", "ticket"} <= set(kinds), kinds
    assert kinds == sorted(kinds, key=["voice", "chat", "ticket"].index), kinds  # voice, chat, tickets
    assert sum(q["waiting"] for q in body["queues"]) + sum(q["today"]["answered"] for q in body["queues"]) > 0
    # Each tile is judged against its queue's [targets]: sales' own, the others the default.
    shown = {(t["queue"], t["channel"]): dict((f[0], f[2]) for f in t["fields"])["last_15m.service_level_target"]
             for t in first["tiles"]}
    assert shown[("sales", "voice")] == "95%" and shown[("support", "voice")] == "80%", shown
    assert all(text == "\u2014" for (_q, channel), text in shown.items() if channel not in ("voice", "chat")), shown
    before = today_offered(first)
    assert sum(before.values()) > 0
    browser.evaluate("document.querySelectorAll('#tiles .tile').forEach(t => t.dataset.probe = 'kept')")

    # 2. More traffic: the same page (no reload, same tile elements) shows the new totals.
    events.stream(7)
    wait_until(lambda: settled(worker, events), 30, "the second burst in today's totals", 0.5)
    second, body = page_equals_api(browser, worker)
    assert not second["reloaded"], "the page reloaded instead of updating in place"
    assert all(t["probe"] == "kept" for t in second["tiles"] if (t["queue"], t["channel"]) in before)
    after = today_offered(second)
    assert sum(after.values()) > sum(before.values())
    assert all(after[k] >= n for k, n in before.items())
    assert sum(after.values()) == sum(events.offered_on(body["queues"][0]["today"]["window_start"][:10]).values())

    # The agent tiles: the agent events reached them (logged in, per state), and support is short
    # of agents: its gap is red and signed.
    wait_until(lambda: short_of_agents(api(worker)), 30, "a queue short of agents in /api/wallboard", 0.5)
    third, body = page_equals_api(browser, worker)
    tiles = {(t["queue"], t["channel"]): dict((f[0], f[2]) for f in t["fields"]) for t in third["tiles"]}
    rows = {(q["queue"], q["channel"]): q for q in body["queues"]}
    assert rows[("billing", "voice")]["agents_staffed"] > 0 and rows[("chat-support", "chat")]["agents_staffed"] == 3
    for t in third["tiles"]:
        key, q = (t["queue"], t["channel"]), rows[(t["queue"], t["channel"])]
        if q["channel_kind"] != "ticket":  # ticket agents send no presence: only ever on contact
            assert q["agents_staffed"] == sum(q[f"agents_{s}"] for s in (
                "available", "on_contact", "after_contact_work", "away")), (key, q)
        if q["agents_gap"] is not None and q["agents_gap"] > 0:
            assert t["gap_red"] and tiles[key]["agents_gap"] == f"+{q['agents_gap']}", (key, q["agents_gap"])
        else:
            assert not t["gap_red"], (key, q["agents_gap"])
        if q["channel_kind"] == "ticket":  # no queueing model for a backlog: no value, not 0
            assert (tiles[key]["agents_required"], tiles[key]["agents_gap"]) == ("\u2014", "\u2014"), key
    assert next(t for t in third["tiles"] if (t["queue"], t["channel"]) == ("support", "voice"))["gap_red"]
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 20_000
    assert SCREENSHOT.read_bytes()[16:24] == WIDTH.to_bytes(4, "big") + HEIGHT.to_bytes(4, "big")

    # 3. The worker goes away: the numbers stay, the header says they are stale.
    worker.stop()
    wait_until(lambda: browser.evaluate(READ_DOM)["stale"], 10, "the stale indicator", 0.5)
    stale = browser.evaluate(READ_DOM)
    assert stale["status"].startswith("STALE"), stale["status"]
    assert today_offered(stale) == after
    print(f"wallboard browser test: {events.published} events, {len(after)} tiles, "
          f"{time.monotonic() - started:.1f}s")
