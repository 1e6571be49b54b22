"""``ccpulse demo``: broker, worker, embedded ClickHouse and simulator on one machine.

Starts what is not running yet, prints where to look and a status line every few
seconds, and on Ctrl-C (or after ``--duration``) stops exactly what it started.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterable

from ccpulse.commands import local_kafka, scenarios, simulate, simulate_channels
from ccpulse.commands.preflight import check_web_port
from ccpulse.commands.publish import publish_events
from ccpulse.config import Settings

STATUS_EVERY_SECONDS = 5.0


class DemoError(RuntimeError):
    pass


def run_demo(settings: Settings, duration: float | None, rate: float, agents: int,
             scenario: str | None = None, scenarios_file: Path | None = None) -> int:
    chosen = None
    if scenario is not None:  # a bad name fails before anything starts
        try:
            chosen = scenarios.load_scenario(scenario, scenarios_file)
        except ValueError as exc:
            print(f"ccpulse demo: {exc}", file=sys.stderr)
            return 1
    # Before the broker: a worker on a taken port fails late, and meanwhile /health
    # there answers for the other process.
    check_web_port(settings)
    state = Path(settings.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    kafka_state = state / "kafka"
    # SIGTERM (a service manager, `timeout`) cleans up like Ctrl-C: no orphan broker or worker.
    signal.signal(signal.SIGTERM, _interrupt)
    started_broker = local_kafka.status(kafka_state) is None
    worker: subprocess.Popen | None = None
    try:
        print("ccpulse demo: starting the local Kafka broker ...", flush=True)
        broker = local_kafka.start(kafka_state)
        env = dict(os.environ, CCPULSE_KAFKA_BOOTSTRAP=broker.bootstrap)
        # The broker may be on another port than configured (9092 taken): the
        # simulator must publish where the worker consumes.
        settings = replace(settings, kafka=replace(settings.kafka, bootstrap=broker.bootstrap))
        worker_log = state / "worker.log"
        print(f"ccpulse demo: starting the worker (log {worker_log}) ...", flush=True)
        with open(worker_log, "ab") as log:
            worker = subprocess.Popen([sys.executable, "-m", "ccpulse.cli", "worker", "--loglevel", "info"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://{_local_host(settings.web.bind)}:{settings.web_port}"
        _wait_healthy(worker, base, worker_log)
        _print_where_to_look(settings, broker.bootstrap, base)
        seed, start = int(time.time()), simulate.live_start()
        if chosen is not None:
            voice, chat, ticket = demo_options(*chosen.configs(seed, start))
        else:
            voice, chat, ticket = _default_configs(rate, agents, seed, start)
        events = simulate_channels.generate_mixed_events(
            voice, chat, ticket, math.inf if duration is None else duration)
        asyncio.run(_simulate_and_report(settings, base, events, duration, worker))
    except KeyboardInterrupt:
        print("\nccpulse demo: stopping ...", flush=True)
    except (local_kafka.LocalKafkaError, DemoError) as exc:
        print(f"ccpulse demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        if worker is not None:
            _stop_worker(worker)
        if started_broker:
            local_kafka.stop(kafka_state)
        print("ccpulse demo: stopped; nothing left running.", flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def demo_options(voice: simulate.SimulationConfig | None, chat: simulate_channels.ChatConfig | None,
                 ticket: simulate_channels.TicketConfig | None
                 ) -> tuple[simulate.SimulationConfig | None, simulate_channels.ChatConfig | None,
                            simulate_channels.TicketConfig | None]:
    """The configs with the agent side on, paced for a person watching: breaks every
    few minutes, holds, flow-outs after 3 minutes, callbacks."""
    if voice is not None:
        voice = replace(voice, agent_events=True, break_interval=600.0, break_duration=120.0,
                        hold_probability=0.2, max_wait=180.0, callback_probability=0.3)
    if chat is not None:
        chat = replace(chat, agent_events=True)
    return voice, chat, ticket


def _default_configs(rate: float, agents: int, seed: int, start) -> tuple:  # type: ignore[no-untyped-def]
    voice = simulate.SimulationConfig(
        rate=rate, queues=tuple(simulate.QueueModel(name, agents) for name in ("billing", "support", "sales")),
        service_mean=60.0, wrapup_mean=10.0, patience_mean=90.0, seed=seed, start=start)
    # Chats and tickets at a pace that shows their KPIs within minutes, not hours.
    chat = simulate_channels.ChatConfig(rate=rate * 0.3, seed=seed, start=start,
                                        agent_reply_mean=10.0, customer_reply_mean=15.0)
    ticket = simulate_channels.TicketConfig(rate=rate * 0.1, seed=seed, start=start,
                                            first_reply_mean=120.0, solve_after_mean=300.0,
                                            close_after_solve=600.0, customer_reply_mean=120.0)
    return demo_options(voice, chat, ticket)


def _wait_healthy(worker: subprocess.Popen, base: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            tail = log.read_bytes()[-400:].decode(errors="replace").strip().splitlines()
            raise DemoError(f"the worker exited ({worker.returncode}): {tail[-1] if tail else ''} (see {log})")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise DemoError(f"the worker did not become healthy within {timeout:.0f}s (see {log})")


def _local_host(bind: str) -> str:
    """The address this machine reaches a server bound to ``bind`` at."""
    if bind in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind


def _print_where_to_look(settings: Settings, bootstrap: str, base: str) -> None:
    dsn = settings.clickhouse.dsn
    # With a token the browser must bring it once (it is kept in a cookie): README.
    login = "  (open once with ?token=<CCPULSE_WEB_TOKEN>)" if settings.web.token else ""
    print(f"""
  Wallboard          {base}/wallboard{login}
  Worker metrics     {base}/metrics
  Worker health      {base}/health
  KPI windows (JSON) {base}/api/windows
  Kafka              {bootstrap}  (topics {settings.topics.name('calls')} -> {settings.topics.name('kpi_windows')})
  ClickHouse         {dsn}  (tables kpi_windows, interactions, raw_events;
                     the worker holds the embedded store: query it via {base}/api/windows
                     while running, or with clickhouse-connect after Ctrl-C)
  Ctrl-C stops everything.
""", flush=True)


async def _simulate_and_report(settings: Settings, base: str, events: Iterable[tuple[str, dict]],
                               duration: float | None, worker: subprocess.Popen) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    publisher = asyncio.create_task(publish_events(settings, events, 1.0, stop=stop))
    started = time.monotonic()
    consumed = 0.0
    try:
        while not stop.is_set() and not publisher.done():
            try:
                await asyncio.wait_for(stop.wait(), STATUS_EVERY_SECONDS)
            except asyncio.TimeoutError:
                pass
            if worker.poll() is not None:
                raise DemoError(f"the worker exited ({worker.returncode}); see its log")
            if duration is not None and time.monotonic() - started >= duration:
                stop.set()
            line, consumed = await asyncio.to_thread(status_line, base, time.monotonic() - started,
                                                     consumed, STATUS_EVERY_SECONDS)
            print(line, flush=True)
    finally:
        stop.set()
        await publisher


def status_line(base: str, elapsed: float, consumed_before: float, interval: float) -> tuple[str, float]:
    """One line: events/s, event-time lag, the busiest voice queue's KPIs, rows in ClickHouse."""
    try:
        with urllib.request.urlopen(f"{base}/api/windows", timeout=3) as resp:
            doc = json.loads(resp.read())
    except OSError as exc:
        return f"[{elapsed:5.0f}s] worker not answering ({exc})", consumed_before
    consumed = doc.get("events_consumed", 0.0)
    rate = (consumed - consumed_before) / interval
    lag = doc.get("event_time_lag_seconds")
    head = f"[{elapsed:5.0f}s] {rate:6.1f} events/s, lag {'-' if lag is None else f'{lag:.1f}s'}"
    queues = doc.get("queues", [])
    if not queues:
        return f"{head} | no KPI yet", consumed
    q = max((item for item in queues if item["channel"] == "voice"), key=lambda item: item["offered"],
            default=max(queues, key=lambda item: item["offered"]))
    sl = "-" if q["service_level"] is None else f"{q['service_level']:.0%}"
    ab = "-" if q["abandonment_rate"] is None else f"{q['abandonment_rate']:.0%}"
    asa = "-" if q["asa_seconds"] is None else f"{q['asa_seconds']:.0f}s"
    return (f"{head} | busiest {q['queue']}: offered {q['offered']} answered {q['answered']} "
            f"SL {sl} abandon {ab} ASA {asa} | ClickHouse kpi_windows rows "
            f"{doc.get('clickhouse_kpi_rows', '?')}", consumed)


def _stop_worker(worker: subprocess.Popen, timeout: float = 30.0) -> None:
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
