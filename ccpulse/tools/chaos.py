"""``ccpulse chaos``: fault injection against the real broker, with the figures that matter.

Each scenario runs real ``ccpulse worker`` processes on a deterministic simulated
workload (voice + chat + tickets, fixed seeds, published in event-time order at
a paced rate), injects its fault, waits until every window is final, and
compares the KPI windows -- the latest record per key on ``kpi.windows`` and
``kpi_windows FINAL`` in the embedded ClickHouse store -- with an uninterrupted
reference run of the same events under another app id and topic prefix.
``ccpulse/tools/chaos_checks.py`` defines "lost" and "counted twice".

- crash: kill -9 the worker's process group at random moments, restart it;
- sink-outage: the embedded store made unwritable for a while, then restored
  (``ccpulse.tools.fault_injection``): /health must say 503 meanwhile, 200 after;
- broker-restart: the local broker stopped for a while and started again on the
  same port and data (the publisher pauses meanwhile: producers are not under test);
- rebalance: 2 compute workers + 1 writer, a third compute worker added and one
  stopped mid-run; each worker's /metrics must carry only its own partitions;
- bad-input: the malformed corpus of ``ccpulse.tools.bad_input`` interleaved with the
  workload: each on the dead-letter topic with its reason, valid events once;
- soak (not in --short): >= 1M events, some interactions never ending; worker RSS
  and table sizes sampled every ~10 s must stay flat.

Windows close when event time passes their end plus the allowed lateness. After
the workload, one "sentinel" contact far in the future (queue ``chaos-sentinel``,
excluded from the comparison) is published on every input partition, so every
window closes by event time alone in both runs (idle-close, a wall-clock rule,
is set out of reach so it cannot make the runs differ).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ccpulse.tools import chaos_checks
from ccpulse.tools.chaos_worker import (ChaosWorker, committed, dump_store, end_offsets, group_lag, kill_all,
                                  latest_by_key, read_topic)
from ccpulse.probes import free_port

SCENARIOS = ("crash", "sink-outage", "broker-restart", "rebalance", "bad-input", "soak")
START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
SENTINEL_QUEUE = "chaos-sentinel"
FAMILY_TOPICS = {"call": "calls", "chat": "chats", "ticket": "tickets"}
COUNTED_SIZE = "1m"


class ChaosError(RuntimeError):
    """The harness itself could not run a scenario (not a pipeline failure)."""


@dataclass(frozen=True)
class Profile:
    duration: float          # event-time seconds of the workload
    speed: float             # event time / wall time while publishing
    kills: int               # crash: kill -9 count
    partitions: int
    outage_seconds: float    # sink-outage: how long the store is unwritable
    broker_down_seconds: float
    final_timeout: float     # how long windows may take to become final after the input ends
    recover_timeout: float   # how long a worker may take to recover from one fault (they take 5-25 s)


SHORT = Profile(duration=240, speed=6, kills=2, partitions=6, outage_seconds=10, broker_down_seconds=10,
                final_timeout=240, recover_timeout=120)
FULL = Profile(duration=720, speed=4, kills=6, partitions=6, outage_seconds=20, broker_down_seconds=15,
               final_timeout=420, recover_timeout=300)


def worker_config(partitions: int, *, lateness: float = 120.0, idle_close: float = 86400.0,
                  horizon: float = 86400.0, fcr_horizon: float = 300.0, sizes: tuple[int, ...] = (60, 300)) -> str:
    return (f"[kafka]\npartitions = {partitions}\n\n"
            f"[windows]\nsizes = [{', '.join(map(str, sizes))}]\n"
            f"allowed_lateness_seconds = {lateness}\nidle_close_seconds = {idle_close}\n"
            f"interaction_horizon_seconds = {horizon}\nfcr_horizon_seconds = {fcr_horizon}\n"
            "publish_interval_seconds = 1.0\n")


# ---------------------------------------------------------------- workload

@dataclass
class Workload:
    events: list[tuple[str, dict[str, Any]]]
    sentinel_ms: int

    @property
    def ids(self) -> set[str]:
        return {ev["event_id"] for _, ev in self.events}


# Just past the last close: the largest window (300 s) + FCR horizon (300 s) + lateness (120 s)
# + a minute. A much larger jump (--sentinel-gap 10800) exposes the merge-expiry race in the report.
SENTINEL_GAP_SECONDS = 780.0


def make_workload(duration: float, sentinel_gap: float = SENTINEL_GAP_SECONDS) -> Workload:
    from ccpulse.commands.simulate import SimulationConfig
    from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events

    voice = SimulationConfig(rate=2.5, seed=61, start=START, rating_probability=0.2, transfer_probability=0.05,
                             repeat_probability=0.2)
    chat = ChatConfig(rate=0.6, seed=62, start=START)
    # Short ticket delays so tickets are replied to and solved inside the run.
    ticket = TicketConfig(rate=0.3, seed=63, start=START, first_reply_mean=60, solve_after_mean=60,
                          customer_reply_mean=60, close_after_solve=120)
    events = list(generate_mixed_events(voice, chat, ticket, duration))
    last = max(_ms(ev["occurred_at"]) for _, ev in events)
    return Workload(events, last + int(sentinel_gap * 1000))


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sentinel_events(family: str, partition: int, at_ms: int, iid: str | None = None) -> list[dict[str, Any]]:
    """A contact that starts and ends at ``at_ms``: moves event time, leaves nothing open.

    ``iid``: another contact than the closing one of this partition (same-day's warm-up)."""
    iid = iid or f"chaos-sentinel-{family}-{partition}"
    first, last = {"call": ("call.offered", "call.abandoned"), "chat": ("chat.offered", "chat.abandoned"),
                   "ticket": ("ticket.created", "ticket.closed")}[family]
    base = {"occurred_at": _iso(at_ms), "interaction_id": iid, "queue": SENTINEL_QUEUE, "schema_version": 1}
    if family == "ticket":
        base["channel"] = "email"
    return [dict(base, event_id=f"{iid}-1", type=first), dict(base, event_id=f"{iid}-2", type=last)]


def input_topics(prefix: str) -> dict[str, str]:
    return {family: f"{prefix}{attr}" for family, attr in FAMILY_TOPICS.items()}


async def _publish_sentinels(bootstrap: str, prefix: str, at_ms: int) -> list[str]:
    from aiokafka import AIOKafkaProducer

    from ccpulse.commands.simulate import encode

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    ids = []
    try:
        for family, topic in input_topics(prefix).items():
            for partition in sorted(await producer.partitions_for(topic)):
                for ev in sentinel_events(family, partition, at_ms):
                    await producer.send_and_wait(topic, encode(ev), key=ev["interaction_id"].encode(),
                                                 partition=partition)
                    ids.append(ev["event_id"])
    finally:
        await producer.stop()
    return ids


class Publisher(threading.Thread):
    """Publishes a workload to one or more apps' input topics (same pacing), then the sentinels.

    ``pause()`` / ``resume()`` stop and restart publishing without losing the
    position (used around a broker restart); ``acked`` counts per prefix.
    """

    def __init__(self, bootstrap: str, prefixes: list[str], workload: Workload, speed: float | None,
                 sentinels: bool = True) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.prefixes, self.workload, self.speed = bootstrap, prefixes, workload, speed
        self.sentinels = sentinels
        self.acked = {p: 0 for p in prefixes}
        self.live = {p: 0 for p in prefixes}  # acknowledged so far, while a publish call runs
        self.sentinel_ids: dict[str, list[str]] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.paused = threading.Event()
        self._resume = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.started_at = 0.0
        self.finished_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the scenario that owns the publisher
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    async def _main(self) -> None:
        from ccpulse.commands.publish import publish_mixed

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        events = self.workload.events

        async def one(prefix: str) -> None:
            while self.acked[prefix] < len(events):
                base = self.acked[prefix]

                def progress(n: int, prefix: str = prefix, base: int = base) -> None:
                    self.live[prefix] = base + n
                sent = await publish_mixed(events[base:], self.bootstrap, input_topics(prefix),
                                           self.speed, stop=self._stop, progress=progress)
                self.acked[prefix] += sent
                if self._stop.is_set():
                    self.paused.set()
                    await asyncio.to_thread(self._resume.wait)
        await asyncio.gather(*(one(p) for p in self.prefixes))
        if self.sentinels:
            for prefix in self.prefixes:
                self.sentinel_ids[prefix] = await _publish_sentinels(self.bootstrap, prefix,
                                                                     self.workload.sentinel_ms)

    def pause(self, timeout: float = 60.0) -> None:
        assert self._loop is not None and self._stop is not None
        self._resume.clear()
        self._loop.call_soon_threadsafe(self._stop.set)
        if not self.paused.wait(timeout) and not self.done.is_set():
            raise ChaosError("the publisher did not pause")

    def resume(self) -> None:
        assert self._loop is not None and self._stop is not None
        self.paused.clear()
        self._loop.call_soon_threadsafe(self._stop.clear)
        self._resume.set()

    def fraction(self, prefix: str) -> float:
        return max(self.acked[prefix], self.live[prefix]) / max(1, len(self.workload.events))

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise ChaosError(f"publishing did not finish within {timeout:.0f}s")
        if self.error is not None:
            raise ChaosError(f"publishing failed: {type(self.error).__name__}: {self.error}")

    def sent(self, prefix: str) -> int:
        return self.acked[prefix] + len(self.sentinel_ids.get(prefix, []))


# ---------------------------------------------------------------- results

@dataclass
class ScenarioResult:
    name: str
    sent: int = 0
    accepted: int = 0
    dead_lettered: int = 0
    lost: int = 0
    twice: int = 0
    recover_seconds: list[float] = field(default_factory=list)
    passed: bool = False
    skipped: str = ""
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")

    def recover_text(self) -> str:
        if not self.recover_seconds:
            return "-"
        if len(self.recover_seconds) == 1:
            return f"{self.recover_seconds[0]:.1f}s"
        return (f"max {max(self.recover_seconds):.1f}s, median {statistics.median(self.recover_seconds):.1f}s "
                f"(n={len(self.recover_seconds)})")


def print_table(results: list[ScenarioResult], out: Any = sys.stdout) -> None:
    header = f"{'scenario':<15}{'sent':>9}{'accepted':>10}{'dead-lettered':>15}{'lost':>7}{'twice':>7}  " \
             f"{'time to recover':<34}result"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        print(f"{r.name:<15}{r.sent:>9}{r.accepted:>10}{r.dead_lettered:>15}{r.lost:>7}{r.twice:>7}  "
              f"{r.recover_text():<34}{r.status}", file=out)


# ---------------------------------------------------------------- shared steps

@dataclass
class Outcome:
    """What one app produced: latest kpi.windows on Kafka, the store, the dead letters."""

    kafka: dict[chaos_checks.WindowId, dict[str, Any]]
    store: dict[chaos_checks.WindowId, dict[str, Any]]
    store_dump: dict[str, Any]
    dead_letters: list[dict[str, Any]]


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# What the sentinel closes (chaos_checks.closed_by_sentinel): the largest lateness any
# scenario's worker config uses.
LATENESS_MS = 120_000


def closed_windows(records: Any) -> list[Any]:
    return chaos_checks.closed_by_sentinel(records, SENTINEL_QUEUE, LATENESS_MS)


def non_sentinel_windows(bootstrap: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The windows the sentinel closes, by key (the sentinel's own left out)."""
    latest = latest_by_key(bootstrap, f"{prefix}kpi.windows")
    kept = {id(v) for v in closed_windows(latest.values())}
    return {k: v for k, v in latest.items() if id(v) in kept}


def wait_final(bootstrap: str, workers: list[ChaosWorker], timeout: float) -> float:
    """Wait until every window is final on kpi.windows, the consumer groups have nothing
    left on the topics that feed the KPIs and the store, and that holds for a few seconds."""
    prefix, app = workers[0].prefix, workers[0].app
    inputs = [f"{prefix}{attr}" for attr in FAMILY_TOPICS.values()]
    watched = inputs + [f"{prefix}{app}-rekey", f"{prefix}{app}-window-partials", f"{prefix}{app}-contacts"]
    # The writer stores raw events from the input topics themselves (streams/storage.py).
    stored = [f"{prefix}kpi.windows", f"{prefix}{app}-interactions"] + inputs
    groups = {w.group: (stored if w.role == "writer" else watched + (stored if w.role == "all" else []))
              for w in workers}
    started = time.monotonic()
    deadline = started + timeout
    stable_since: float | None = None
    last_state: Any = None
    reason = "nothing read yet"
    while time.monotonic() < deadline:
        for w in workers:
            if w.process is not None and w.process.poll() is not None:
                raise ChaosError(f"{w.app} {w.role} worker exited with {w.process.returncode}: {w.log_tail()}")
        windows = non_sentinel_windows(bootstrap, prefix)
        open_ = [k for k, v in windows.items() if not v.get("final") or v.get("fcr_final") is False]
        lag_detail = {g: group_lag(bootstrap, g, topics) for g, topics in groups.items()}
        lags = {g: lag.total for g, lag in lag_detail.items()}
        state = (len(windows), tuple(sorted((k, v.get("version")) for k, v in windows.items())))
        if windows and not open_ and not any(lags.values()):
            if state != last_state or stable_since is None:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= 4:
                return time.monotonic() - started
        else:
            stable_since = None
            reason = (f"{len(open_)} of {len(windows)} windows not final, lag "
                      f"{ {g: lag.by_topic for g, lag in lag_detail.items()} }")
        last_state = state
        time.sleep(2)
    stuck = [f"{w.workdir.name}: {stall_report(bootstrap, w, {})}" for w in workers
             if w.process is not None and w.process.poll() is None]
    raise ChaosError(f"{app}: windows not final within {timeout:.0f}s ({reason})\n" + "\n".join(stuck))


def collect(bootstrap: str, workers: list[ChaosWorker], store_owner: ChaosWorker) -> Outcome:
    """Stop the app's workers (gracefully) and read what it produced."""
    for w in workers:
        w.stop()
    prefix = workers[0].prefix
    kafka = chaos_checks.index_windows(closed_windows(latest_by_key(bootstrap, f"{prefix}kpi.windows").values()),
                                       frozenset({SENTINEL_QUEUE}))
    dump = dump_store(store_owner.store_path)
    store = chaos_checks.index_windows(closed_windows(dump["kpi_windows"]), frozenset({SENTINEL_QUEUE}))
    dead = [json.loads(v) for _, v, _ in read_topic(bootstrap, f"{prefix}events.dead-letter")]
    outcome = Outcome(kafka, store, dump, dead)
    # Kept for the evidence when a comparison fails.
    (store_owner.workdir / "outcome.json").write_text(json.dumps(
        {"kafka": list(kafka.values()), "store": list(store.values()), "raw": dump["raw"]}, default=str))
    return outcome


def judge(result: ScenarioResult, reference: Outcome, got: Outcome, expected_ids: set[str]) -> None:
    """Fill lost / twice / accepted from the comparison; PASS unless something differs."""
    by_kafka = chaos_checks.compare_windows(reference.kafka, got.kafka, COUNTED_SIZE)
    by_store = chaos_checks.compare_windows(reference.store, got.store, COUNTED_SIZE)
    raw = chaos_checks.check_raw(expected_ids, got.store_dump)
    result.accepted = raw.stored_distinct
    result.dead_lettered = len(got.dead_letters)
    result.lost = max(by_kafka.lost, by_store.lost) + raw.lost
    result.twice = max(by_kafka.twice, by_store.twice) + raw.twice
    result.figures.update({
        "windows_compared": by_kafka.windows, "counters_compared": by_kafka.counter_total,
        "kafka": {"lost": by_kafka.lost, "twice": by_kafka.twice, "missing": len(by_kafka.missing),
                  "extra": len(by_kafka.extra), "not_final": len(by_kafka.not_final),
                  "mismatched_fields": len(by_kafka.mismatched)},
        "store": {"lost": by_store.lost, "twice": by_store.twice, "missing": len(by_store.missing),
                  "extra": len(by_store.extra), "not_final": len(by_store.not_final),
                  "mismatched_fields": len(by_store.mismatched)},
        "raw_events": asdict(raw)})
    result.notes.append(f"{by_kafka.windows} windows, {by_kafka.counter_total} counter units (1m windows) "
                        f"compared; raw_events: {raw.stored_distinct}/{raw.expected} ids, "
                        f"{raw.rows_final} rows after FINAL")
    for where, diff in (("kafka", by_kafka), ("store", by_store)):
        result.notes.extend(f"{where}: {line}" for line in diff.summary())
        result.figures[where]["differences"] = diff.mismatched[:500]
    result.passed = by_kafka.exact and by_store.exact and raw.lost == 0 and raw.twice == 0 \
        and by_kafka.windows > 0 and by_store.windows > 0


def caught_up(bootstrap: str, worker: ChaosWorker, targets: dict[Any, int]) -> bool:
    done = committed(bootstrap, worker.group)
    return all(done.get(tp, 0) >= end for tp, end in targets.items())


def input_ends(bootstrap: str, prefix: str) -> dict[Any, int]:
    return end_offsets(bootstrap, list(input_topics(prefix).values()))


def wait_recovered(bootstrap: str, worker: ChaosWorker, since: float, targets: dict[Any, int],
                   timeout: float, extra: Callable[[], bool] = lambda: True,
                   phases: dict[str, float] | None = None) -> float:
    """Seconds from ``since`` until /health is 200 and the group has committed past ``targets``
    (``phases["healthy_s"]``: until /health first answered 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process is not None and worker.process.poll() is not None:
            raise ChaosError(f"{worker.app} worker exited with {worker.process.returncode}: {worker.log_tail()}")
        try:
            healthy = worker.health()[0] == 200
            if healthy and phases is not None and "healthy_s" not in phases:
                phases["healthy_s"] = round(time.monotonic() - since, 1)
            if healthy and caught_up(bootstrap, worker, targets) and extra():
                return time.monotonic() - since
        except Exception:  # a probe failing while the broker is away is expected
            pass
        time.sleep(0.5)
    raise ChaosError(f"{worker.app} {worker.role} worker did not recover within {timeout:.0f}s; "
                     + stall_report(bootstrap, worker, targets))


def stall_report(bootstrap: str, worker: ChaosWorker, targets: dict[Any, int]) -> str:
    """What a stuck worker was doing: its health, the partitions behind, and a dump of its
    threads and asyncio tasks (mode's worker writes one to its log on SIGUSR1)."""
    try:
        done = committed(bootstrap, worker.group)
        behind = {f"{tp.topic}/{tp.partition}": f"{done.get(tp, 0)}<{end}"
                  for tp, end in targets.items() if done.get(tp, 0) < end}
    except Exception as exc:  # the report must not hide the stall it describes
        behind = {"error": repr(exc)}
    status, body = worker.health()
    stacks = ""
    if worker.pid is not None:
        before = worker.log_path.stat().st_size
        os.kill(worker.pid, signal.SIGUSR1)
        time.sleep(3.0)
        with open(worker.log_path, "rb") as f:
            f.seek(before)
            dump = f.read().decode(errors="replace").splitlines()
        # Thread and task names with their frames; the threads' variable dumps are left out.
        stacks = "\n".join(line for line in dump if line.startswith(("THREAD", "  TASK"))
                           or line.lstrip().startswith("File ") or line.startswith("    "))[-8000:]
    return (f"/health {status} {json.dumps(body)[:800]}; committed<end: {behind}; "
            f"stacks (full dump in {worker.log_path}):\n{stacks}")


# ---------------------------------------------------------------- the run

@dataclass
class Run:
    bootstrap: str
    workdir: Path
    profile: Profile
    seed: int
    broker_state: Path | None       # set when chaos started the broker itself
    run_id: str
    workload: Workload
    reference: Outcome | None = None
    reference_sent: int = 0

    def app(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def worker(self, name: str, role: str = "all", config: str | None = None) -> ChaosWorker:
        return ChaosWorker.create(self.bootstrap, self.workdir / name, self.app(name),
                                  config or worker_config(self.profile.partitions), role)

    def expected_ids(self, publisher: Publisher, prefix: str) -> set[str]:
        return self.workload.ids | set(publisher.sentinel_ids.get(prefix, []))

    @staticmethod
    def settings(worker: ChaosWorker) -> Any:
        from ccpulse.config import load_settings

        return load_settings(worker.env["CCPULSE_CONFIG"], env=worker.env)

    def ensure_topics(self, worker: ChaosWorker) -> None:
        from streams.topics import ensure_topics

        ensure_topics(self.settings(worker))

    def changelogs(self, worker: ChaosWorker) -> list[str]:
        """The changelog topic of every table of ``worker``'s app."""
        from streams.topics import TABLES, changelog_topic

        settings = self.settings(worker)
        return [changelog_topic(settings, table) for table in TABLES]


def with_reference(run: Run, scenario: ChaosWorker, body: Callable[[Publisher], None],
                   start: list[ChaosWorker] | None = None) -> Publisher:
    """Start ``start`` (default: ``scenario``), then run ``body`` while publishing to ``scenario``'s
    app and, the first time, the reference app too (same events, same pacing); finish the reference."""
    ref = None
    first = list(start if start is not None else [scenario])
    if run.reference is None:
        ref = run.worker("reference")
        run.ensure_topics(ref)
        first.append(ref)
    run.ensure_topics(scenario)
    for w in first:
        w.spawn()
    for w in first:
        w.wait_healthy(240)
    prefixes = [scenario.prefix] + ([ref.prefix] if ref else [])
    publisher = Publisher(run.bootstrap, prefixes, run.workload, run.profile.speed)
    publisher.start()
    try:
        body(publisher)
        publisher.wait(run.profile.duration / run.profile.speed * 4 + 300)
        if ref is not None:
            log("reference: waiting for final windows")
            wait_final(run.bootstrap, [ref], run.profile.final_timeout)
            run.reference = collect(run.bootstrap, [ref], ref)
            run.reference_sent = publisher.sent(ref.prefix)
            ref_ids = run.expected_ids(publisher, ref.prefix)
            raw = chaos_checks.check_raw(ref_ids, run.reference.store_dump)
            if raw.lost or raw.twice or not run.reference.kafka or not run.reference.store:
                raise ChaosError(f"the reference run itself is incomplete: raw {asdict(raw)}, "
                                 f"{len(run.reference.kafka)} windows on Kafka, {len(run.reference.store)} stored")
            not_final = [k for k, v in run.reference.kafka.items() if not v.get("final")]
            if not_final:
                raise ChaosError(f"the reference run has {len(not_final)} windows not final")
            log(f"reference: {len(run.reference.kafka)} windows, {raw.stored_distinct} events stored")
    finally:
        if ref is not None:
            ref.kill9()
    return publisher


def ensure_reference(run: Run) -> None:
    """The reference alone (used before a scenario that cannot share the broker with it)."""
    if run.reference is not None:
        return
    ref = run.worker("reference")
    run.ensure_topics(ref)
    ref.start()
    publisher = Publisher(run.bootstrap, [ref.prefix], run.workload, run.profile.speed)
    publisher.start()
    try:
        publisher.wait(run.profile.duration / run.profile.speed * 4 + 300)
        wait_final(run.bootstrap, [ref], run.profile.final_timeout)
        run.reference = collect(run.bootstrap, [ref], ref)
        run.reference_sent = publisher.sent(ref.prefix)
    finally:
        ref.kill9()


# ---------------------------------------------------------------- scenarios

def scenario_crash(run: Run) -> ScenarioResult:
    result = ScenarioResult("crash")
    worker = run.worker("crash")
    rng = random.Random(run.seed)
    kills: list[dict[str, Any]] = []

    def body(publisher: Publisher) -> None:
        publish_s = run.profile.duration / run.profile.speed
        for i in range(run.profile.kills):
            # Spread the kills over the publishing time and the catch-up after it;
            # every third one hits a worker still recovering from the previous kill.
            during_recovery = i % 3 == 2
            time.sleep(rng.uniform(1.0, 4.0) if during_recovery else rng.uniform(2.0, max(3.0, publish_s / run.profile.kills)))
            worker.kill9()
            at = time.monotonic() - publisher.started_at
            downtime = rng.uniform(0.5, 3.0)
            time.sleep(downtime)
            targets = input_ends(run.bootstrap, worker.prefix)
            since = worker.spawn()
            record = {"kill": i + 1, "at_s": round(at, 1), "published": max(publisher.acked[worker.prefix], publisher.live[worker.prefix]),
                      "down_s": round(downtime, 1), "during_recovery": during_recovery}
            next_during = (i + 1) % 3 == 2 and i + 1 < run.profile.kills
            if not next_during:
                record["recover_s"] = round(wait_recovered(run.bootstrap, worker, since, targets,
                                                           run.profile.recover_timeout,
                                                           phases=record), 1)
                result.recover_seconds.append(record["recover_s"])
            kills.append(record)
            log(f"crash: kill -9 #{i + 1} at {at:.0f}s ({record['published']} events published), "
                + (f"recovered in {record['recover_s']}s (/health 200 after {record.get('healthy_s', '-')}s)"
                 if "recover_s" in record else "not waited for: the next kill hits the recovery"))

    publisher = with_reference(run, worker, body)
    assert run.reference is not None
    wait_final(run.bootstrap, [worker], run.profile.final_timeout)
    got = collect(run.bootstrap, [worker], worker)
    result.sent = publisher.sent(worker.prefix)
    judge(result, run.reference, got, run.expected_ids(publisher, worker.prefix))
    result.figures["kills"] = kills
    if len(kills) < run.profile.kills:
        result.passed = False
    result.notes.append(f"{len(kills)} kill -9 of the worker's process group; time to recover = restart "
                        "to /health 200 and the group's committed input offsets past the input's end at restart")
    return result


def _fault_injection() -> Any:
    try:
        from ccpulse.tools import fault_injection
    except ImportError:
        return None
    return fault_injection if hasattr(fault_injection, "make_store_unwritable") else None


def scenario_sink_outage(run: Run) -> ScenarioResult:
    result = ScenarioResult("sink-outage")
    faults = _fault_injection()
    if faults is None:
        result.skipped = "ccpulse.tools.fault_injection.make_store_unwritable is not available"
        return result
    worker = run.worker("sink-outage")
    unsupported = faults.store_unwritable_unsupported(run.workdir)
    if unsupported:
        result.skipped = f"cannot make a store unwritable here: {unsupported}"
        return result
    seen: dict[str, Any] = {}

    def body(publisher: Publisher) -> None:
        _wait_for(lambda: publisher.fraction(worker.prefix) >= 0.3 or publisher.done.is_set(), 600)
        restore = faults.make_store_unwritable(worker.store_path)
        began = time.monotonic()
        unhealthy_after = None
        try:
            while time.monotonic() - began < run.profile.outage_seconds:
                status, body_ = worker.health()
                if status == 503 and unhealthy_after is None:
                    unhealthy_after = time.monotonic() - began
                    seen["health_body"] = body_
                time.sleep(0.5)
            # The pipeline's checkpoint waits for the store: the input is held back.
            inputs = [f"{worker.prefix}{attr}" for attr in FAMILY_TOPICS.values()]
            seen["input_lag_at_end_of_outage"] = group_lag(run.bootstrap, worker.group, inputs).total
            errors = sum(v for (name, _), v in worker.metrics().items() if name == "ccpulse_sink_write_errors_total")
            seen["sink_write_errors"] = errors
        finally:
            targets = input_ends(run.bootstrap, worker.prefix)
            restore()
            restored = time.monotonic()
        seen["unhealthy_after_s"] = unhealthy_after
        result.recover_seconds.append(round(wait_recovered(run.bootstrap, worker, restored, targets,
                                                           run.profile.recover_timeout), 1))
        log(f"sink-outage: 503 after {unhealthy_after}s, recovered {result.recover_seconds[-1]}s after restore")

    publisher = with_reference(run, worker, body)
    assert run.reference is not None
    wait_final(run.bootstrap, [worker], run.profile.final_timeout)
    got = collect(run.bootstrap, [worker], worker)
    result.sent = publisher.sent(worker.prefix)
    judge(result, run.reference, got, run.expected_ids(publisher, worker.prefix))
    result.figures.update(seen)
    if seen.get("unhealthy_after_s") is None:
        result.passed = False
        result.notes.append("FAIL: /health never answered 503 while the store was unwritable")
    if not seen.get("sink_write_errors"):
        result.passed = False
        result.notes.append("FAIL: ccpulse_sink_write_errors_total did not grow during the outage")
    result.notes.append(f"store unwritable {run.profile.outage_seconds:.0f}s: /health 503 after "
                        f"{seen.get('unhealthy_after_s')}s, {seen.get('sink_write_errors')} failed writes, "
                        f"input lag at the end of the outage {seen.get('input_lag_at_end_of_outage')} "
                        "(consumption held back, not dropped); recover = restore to /health 200 and caught up")
    return result


def scenario_broker_restart(run: Run) -> ScenarioResult:
    from ccpulse.commands import local_kafka

    result = ScenarioResult("broker-restart")
    if run.broker_state is None:
        result.skipped = "needs the broker chaos starts itself (no --bootstrap)"
        return result
    ensure_reference(run)
    worker = run.worker("broker-restart")
    port = int(run.bootstrap.rsplit(":", 1)[1])
    state = run.broker_state

    def body(publisher: Publisher) -> None:
        _wait_for(lambda: publisher.fraction(worker.prefix) >= 0.3 or publisher.done.is_set(), 600)
        publisher.pause()
        targets = input_ends(run.bootstrap, worker.prefix)
        local_kafka.stop(state)
        down_at = time.monotonic()
        health_during, kafka_up_during = set(), set()
        while time.monotonic() - down_at < run.profile.broker_down_seconds:
            status = worker.health()[0]
            health_during.add(status)
            if status == 503 and "unhealthy_after_s" not in result.figures:
                result.figures["unhealthy_after_s"] = round(time.monotonic() - down_at, 1)
            kafka_up_during.update(v for (name, _), v in worker.metrics().items() if name == "ccpulse_kafka_up")
            time.sleep(0.5)
        local_kafka.start(state, port=port, fresh=False)
        back = time.monotonic()
        result.figures["broker_down_s"] = round(back - down_at, 1)
        result.figures["health_during_outage"] = sorted(health_during)
        result.figures["kafka_up_during_outage"] = sorted(kafka_up_during)
        publisher.resume()
        result.recover_seconds.append(round(wait_recovered(run.bootstrap, worker, back, targets,
                                                           run.profile.recover_timeout), 1))
        log(f"broker-restart: broker down {back - down_at:.0f}s, worker recovered "
            f"{result.recover_seconds[-1]}s after the broker was back")

    publisher = with_reference(run, worker, body)
    wait_final(run.bootstrap, [worker], run.profile.final_timeout)
    got = collect(run.bootstrap, [worker], worker)
    result.sent = publisher.sent(worker.prefix)
    judge(result, run.reference, got, run.expected_ids(publisher, worker.prefix))
    result.notes.append(f"broker stopped {result.figures.get('broker_down_s')}s and restarted on the same port "
                        "and data; recover = broker back to worker /health 200 and caught up")
    if 503 not in result.figures.get("health_during_outage", []) \
            or 0.0 not in result.figures.get("kafka_up_during_outage", []):
        result.passed = False
        result.notes.append(f"FAIL: while the broker was down /health answered "
                            f"{result.figures.get('health_during_outage')} and ccpulse_kafka_up was "
                            f"{result.figures.get('kafka_up_during_outage')} (expected a 503 and a 0)")
    else:
        result.notes.append(f"/health 503 and ccpulse_kafka_up 0 {result.figures.get('unhealthy_after_s')}s "
                            "after the broker stopped")
    return result


def partition_labels(worker: ChaosWorker) -> tuple[set[str], set[str]]:
    """Partitions on the worker's KPI series: pipeline partitions, and those of the stages
    with topics of their own ("fcr-N", "agents-N": owned apart from the pipeline's)."""
    kpi, fcr = set(), set()
    for (name, labels), _ in worker.metrics().items():
        if not name.startswith("ccpulse_"):
            continue
        for key, value in labels:
            if key == "partition":
                (fcr if value.startswith(("fcr-", "agents-")) else kpi).add(value)
    return kpi, fcr


def health_partitions(worker: ChaosWorker, healthy_only: bool = True, attempts: int = 3) -> set[str]:
    """The partitions ``worker``'s /health names; none while it is unhealthy (a rebalance)
    unless not ``healthy_only``. A request left unanswered (5 s, a loaded machine) is made
    again: read as "none", it made a worker look as if it had given up every partition."""
    for _ in range(attempts):
        status, body = worker.health()
        if "partitions" in body:
            return {str(p) for p in body["partitions"]} if status == 200 or not healthy_only else set()
    return set()


def scenario_rebalance(run: Run) -> ScenarioResult:
    result = ScenarioResult("rebalance")
    writer = run.worker("rebalance", role="writer")
    a = writer.sibling(run.workdir / "rebalance-a", "compute")
    b = writer.sibling(run.workdir / "rebalance-b", "compute")
    c = writer.sibling(run.workdir / "rebalance-c", "compute")
    everyone = [writer, a, b, c]
    every_partition = {str(p) for p in range(run.profile.partitions)}
    checks: list[str] = []
    last_owned: list[str] = []  # /health partitions per worker at the last ownership check

    def settled(live: list[ChaosWorker]) -> Callable[[], bool]:
        # Every partition owned exactly once and every live worker busy: a worker that has
        # joined but not been given work yet (or one still holding a revoked partition)
        # does not count as settled.
        def check() -> bool:
            owned = [health_partitions(w) for w in live]
            last_owned[:] = [f"{w.workdir.name}={sorted(o)}" for w, o in zip(live, owned)]
            return set().union(*owned) == every_partition and sum(map(len, owned)) == len(every_partition) \
                and all(owned)
        return check

    def body(publisher: Publisher) -> None:
        _wait_for(settled([a, b]), 120)
        before = {"a": health_partitions(a, healthy_only=False), "b": health_partitions(b, healthy_only=False)}
        _wait_for(lambda: publisher.fraction(writer.prefix) >= 0.3 or publisher.done.is_set(), 600)
        targets = input_ends(run.bootstrap, writer.prefix)
        since = c.spawn()
        result.recover_seconds.append(round(wait_recovered(run.bootstrap, c, since, targets,
                                                           run.profile.recover_timeout,
                                                           extra=settled([a, b, c])), 1))
        moves = []
        for name, w in (("a", a), ("b", b)):
            after = health_partitions(w, healthy_only=False)
            given_up = before[name] - after
            kpi, _ = partition_labels(w)
            result.figures[f"{name}_partitions_before_after_c"] = [sorted(before[name]), sorted(after)]
            if given_up:
                moves.append(f"{name} gave up {sorted(given_up)}")
            if given_up & kpi:
                checks.append(f"worker {name} still exposes series of partitions it gave up: "
                              f"{sorted(given_up & kpi)}")
        if not moves:
            checks.append("adding worker c moved no partition: the revocation check did not run")
        result.figures["gave_up_when_c_joined"] = moves
        log(f"rebalance: c joined, settled in {result.recover_seconds[-1]}s; {'; '.join(moves)}; "
            f"their /metrics checked")
        _wait_for(lambda: publisher.fraction(writer.prefix) >= 0.65 or publisher.done.is_set(), 600)
        targets = input_ends(run.bootstrap, writer.prefix)
        stopping = time.monotonic()
        a.stop()
        result.recover_seconds.append(round(wait_recovered(run.bootstrap, b, stopping, targets,
                                                           run.profile.recover_timeout,
                                                           extra=settled([b, c])), 1))
        log(f"rebalance: a stopped (SIGTERM), settled in {result.recover_seconds[-1]}s")

    try:
        publisher = with_reference(run, writer, body, start=[writer, a, b])
    except ChaosError as exc:
        raise ChaosError(f"{exc}; partitions per worker (/health): {', '.join(last_owned)}") from None
    assert run.reference is not None
    wait_final(run.bootstrap, [writer, b, c], run.profile.final_timeout)
    # After the last rebalance: each live worker's series = its own partitions, none shared.
    owned = {}
    for name, w in (("b", b), ("c", c)):
        mine = health_partitions(w)
        kpi, fcr = partition_labels(w)
        owned[name] = {"health": sorted(mine), "kpi_series": sorted(kpi), "fcr_series": sorted(fcr)}
        if not kpi <= mine:
            checks.append(f"worker {name} exposes series of partitions it does not own: {sorted(kpi - mine)}")
    fcr_b, fcr_c = set(owned["b"]["fcr_series"]), set(owned["c"]["fcr_series"])
    if fcr_b & fcr_c:
        checks.append(f"workers b and c both expose FCR series of {sorted(fcr_b & fcr_c)}")
    result.figures["owned_at_end"] = owned
    changelogs = run.changelogs(b)
    for name, w in (("a", a), ("b", b), ("c", c)):
        checks += chaos_checks.unassigned_changelogs(name, w.log_path.read_text(errors="replace"), changelogs)
    got = collect(run.bootstrap, [b, c, writer], writer)
    for w in everyone:
        w.kill9()
    result.sent = publisher.sent(writer.prefix)
    judge(result, run.reference, got, run.expected_ids(publisher, writer.prefix))
    result.notes.extend(f"FAIL: {c_}" for c_ in checks)
    result.passed = result.passed and not checks
    result.notes.append(f"compute a+b, writer; c added at 30%, a stopped at 65% of the input; at the end "
                        f"b={owned['b']['health']} c={owned['c']['health']}, /metrics partition labels match; "
                        "recover = change to all partitions owned once and caught up")
    return result


def scenario_bad_input(run: Run) -> ScenarioResult:
    from ccpulse.tools.bad_input import bad_input_corpus

    result = ScenarioResult("bad-input")
    worker = run.worker("bad-input")
    corpus = bad_input_corpus(include_oversize=False)
    expected = Counter((f"{worker.prefix}{item.topic_attr}", base64.b64encode(item.value or b"").decode(), item.reason)
                       for item in corpus)

    def body(publisher: Publisher) -> None:
        publish_s = run.profile.duration / run.profile.speed

        async def send_bad() -> None:
            from aiokafka import AIOKafkaProducer
            producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, acks="all", enable_idempotence=True)
            await producer.start()
            try:
                for item in corpus:  # spread over the publishing time, between valid events
                    await asyncio.sleep(publish_s * 0.9 / len(corpus))
                    await producer.send_and_wait(f"{worker.prefix}{item.topic_attr}", item.value, key=item.key)
            finally:
                await producer.stop()
        asyncio.run(send_bad())

    publisher = with_reference(run, worker, body)
    assert run.reference is not None
    wait_final(run.bootstrap, [worker], run.profile.final_timeout)
    got = collect(run.bootstrap, [worker], worker)
    result.sent = publisher.sent(worker.prefix) + len(corpus)
    judge(result, run.reference, got, run.expected_ids(publisher, worker.prefix))
    seen = Counter((d.get("topic"), d.get("value_base64"), d.get("reason")) for d in got.dead_letters)
    missing = expected - seen
    unexpected = seen - expected
    by_reason_expected = Counter(item.reason for item in corpus)
    by_reason_got = Counter(d.get("reason") for d in got.dead_letters)
    result.figures["dead_letters_by_reason"] = {r: [by_reason_expected.get(r, 0), by_reason_got.get(r, 0)]
                                                for r in sorted(set(by_reason_expected) | set(by_reason_got))}
    result.lost += sum(missing.values())
    result.twice += sum(unexpected.values())
    if missing or unexpected:
        result.passed = False
        result.notes.append(f"FAIL: {sum(missing.values())} bad messages not dead-lettered with their reason, "
                            f"{sum(unexpected.values())} unexpected dead letters: "
                            + ", ".join(f"{r}" for _, _, r in list(missing)[:8]))
    result.notes.append(f"{len(corpus)} malformed messages ({len(by_reason_expected)} reasons) interleaved; "
                        "dead letters by reason (expected, got): "
                        + ", ".join(f"{r} {e}/{g}" for r, (e, g) in result.figures["dead_letters_by_reason"].items()))
    return result


def _wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise ChaosError(f"timed out after {timeout:.0f}s")


# ---------------------------------------------------------------- soak

def soak_workload(target_events: int, never_end_share: float, offered_only_share: float,
                  seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``target_events`` events of a busy center, some interactions never ending:
    ``never_end_share`` lose their answer/end events, ``offered_only_share`` keep only the offer."""
    from ccpulse.commands.simulate import QueueModel, SimulationConfig
    from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events

    voice = SimulationConfig(rate=60.0, seed=seed, start=START,
                             queues=tuple(QueueModel(f"q{i}", agents=60) for i in range(8)))
    chat = ChatConfig(rate=8.0, seed=seed + 1, start=START, queues=(QueueModel("chat-support", agents=150),))
    ticket = TicketConfig(rate=4.0, seed=seed + 2, start=START, first_reply_mean=300, solve_after_mean=300,
                          customer_reply_mean=300, close_after_solve=600)
    rng = random.Random(seed)
    fate: dict[str, str] = {}
    ending = ("answered", "ended", "abandoned", "solved", "closed", "transferred", "rated", "message", "replied",
              "assigned", "reopened")
    count = 0
    # Generous duration: the generator is lazy and stops being read at the target.
    for family, ev in generate_mixed_events(voice, chat, ticket, 10 * 86400):
        iid = ev["interaction_id"]
        kind = fate.get(iid)
        if kind is None:
            u = rng.random()
            kind = "offered-only" if u < offered_only_share else "never-end" if u < offered_only_share + never_end_share else "ok"
            fate[iid] = kind
        step = ev["type"].split(".", 1)[1]
        if kind == "offered-only" and step not in ("offered", "created"):
            continue
        if kind == "never-end" and step in ("ended", "abandoned", "solved", "closed"):
            continue
        if step in ("ended", "closed") and kind == "ok":
            fate.pop(iid, None)  # bounded memory in the generator too
        yield family, ev
        count += 1
        if count >= target_events:
            return


# Watermark ticks and merge clocks keep trickling through the internal topics: a
# backlog this small is the pipeline at rest.
SOAK_SETTLED_LAG = 500


def scenario_soak(run: Run, target_events: int) -> ScenarioResult:
    result = ScenarioResult("soak")
    horizon = 600.0
    config = worker_config(run.profile.partitions, lateness=60, idle_close=30, horizon=horizon, fcr_horizon=600,
                           sizes=(60, 900))
    worker = run.worker("soak", config=config)
    run.ensure_topics(worker)
    worker.start()
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sent = [0]
    error: list[BaseException] = []
    lag_limit = 30000

    def publish() -> None:
        from ccpulse.commands.publish import publish_mixed

        events = soak_workload(target_events, never_end_share=0.03, offered_only_share=0.01, seed=run.seed)
        try:
            while not stop.is_set():
                chunk = [e for _, e in zip(range(20000), events)]
                if not chunk:
                    return
                sent[0] += asyncio.run(publish_mixed(chunk, run.bootstrap, input_topics(worker.prefix), None))
                # As fast as the worker keeps up: hold back while any stage is far behind
                # (the pipeline, then the merge and the store, each have their own lag).
                while not stop.is_set() and group_lag(run.bootstrap, worker.group).total > lag_limit:
                    time.sleep(1)
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        while True:
            samples.append(_soak_sample(run, worker, started, sent[0]))
            s = samples[-1]
            log(f"soak: {s['t_s']:.0f}s sent {s['sent']} consumed {s['consumed']} lag {s['pipeline_lag']} "
                f"rss {s['rss_mib']} MiB "
                f"tables {s['tables']}")
            if error:
                raise ChaosError(f"soak publishing failed: {error[0]}")
            # Done when every stage has caught up, not only the first: the FCR and
            # merge stages may still be working through a backlog when the input is read.
            if not thread.is_alive() and s["input_lag"] == 0 and 0 <= s["pipeline_lag"] <= SOAK_SETTLED_LAG:
                break
            time.sleep(10)
    finally:
        stop.set()
        thread.join(30)
        worker.kill9()
    result.sent = sent[0]
    result.accepted = int(samples[-1]["consumed"])
    # Flat = the peak of the last third is within 25% (plus a little slack) of the peak of
    # the middle third: expiry runs in scans, so single samples saw-tooth.
    third = max(1, len(samples) // 3)
    middle, last = samples[third:2 * third] or samples, samples[2 * third:] or samples
    series = {"rss_mib": lambda s: s["rss_mib"]}
    for table in sorted({t for s in samples for t in s["tables"]}):
        series[table] = lambda s, t=table: s["tables"].get(t, 0)
    verdicts = {}
    for name, get in series.items():
        peak_mid, peak_end = max(map(get, middle)), max(map(get, last))
        slack = 64 if name == "rss_mib" else 1000
        verdicts[name] = {"middle_peak": peak_mid, "end_peak": peak_end,
                          "flat": peak_end <= 1.25 * peak_mid + slack}
    result.figures.update({"samples": samples, "flatness": verdicts, "horizon_s": horizon})
    result.passed = sent[0] >= target_events and all(v["flat"] for v in verdicts.values())
    mid = samples[len(samples) // 2]
    for label, s in (("start", samples[min(1, len(samples) - 1)]), ("middle", mid), ("end", samples[-1])):
        result.notes.append(f"{label:>6} t={s['t_s']:.0f}s sent={s['sent']} consumed={s['consumed']} "
                            f"rss={s['rss_mib']} MiB tables={s['tables']}")
    result.notes.append("peaks middle third -> last third: " + ", ".join(
        f"{n} {v['middle_peak']}->{v['end_peak']} {'flat' if v['flat'] else 'GROWING'}" for n, v in verdicts.items()))
    result.notes.append(f"interaction horizon {horizon:.0f}s of event time; {len(samples)} samples every ~10s")
    return result


def _soak_sample(run: Run, worker: ChaosWorker, started: float, sent: int) -> dict[str, Any]:
    metrics = worker.metrics()
    tables: dict[str, float] = {}
    consumed = 0.0
    for (name, labels), value in metrics.items():
        if name == "ccpulse_table_entries":
            table = dict(labels).get("table", "?")
            tables[table] = tables.get(table, 0) + value
        elif name == "ccpulse_events_consumed_total":
            consumed += value
    try:
        lag = group_lag(run.bootstrap, worker.group, list(input_topics(worker.prefix).values())).total
        pipeline_lag = group_lag(run.bootstrap, worker.group).total  # every topic it has committed on
    except Exception:
        lag = pipeline_lag = -1
    rss = worker.rss_kib()
    return {"t_s": round(time.monotonic() - started, 1), "sent": sent, "consumed": int(consumed),
            "input_lag": lag, "pipeline_lag": pipeline_lag, "rss_mib": round((rss or 0) / 1024, 1),
            "tables": {k: int(v) for k, v in sorted(tables.items())}}


# ---------------------------------------------------------------- command

def run_chaos(scenarios: list[str], short: bool, bootstrap: str | None, workdir: Path | None,
              seed: int, soak_events: int, sentinel_gap: float = SENTINEL_GAP_SECONDS) -> list[ScenarioResult]:
    from ccpulse.commands import local_kafka

    profile = SHORT if short else FULL
    base = workdir or Path(tempfile.mkdtemp(prefix="ccpulse-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    broker_state = None
    if bootstrap is None:
        broker_state = base / "kafka"
        log(f"starting a local broker in {broker_state}")
        bootstrap = local_kafka.start(broker_state, port=free_port(), fresh=True).bootstrap
    run = Run(bootstrap, base, profile, seed, broker_state, f"chaos{int(time.time())}",
              make_workload(profile.duration, sentinel_gap))
    log(f"broker {bootstrap}, work dir {base}, workload {len(run.workload.events)} events over "
        f"{profile.duration:.0f}s of event time at {profile.speed}x")
    results: list[ScenarioResult] = []
    runners: dict[str, Callable[[], ScenarioResult]] = {
        "crash": lambda: scenario_crash(run),
        "sink-outage": lambda: scenario_sink_outage(run),
        "broker-restart": lambda: scenario_broker_restart(run),
        "rebalance": lambda: scenario_rebalance(run),
        "bad-input": lambda: scenario_bad_input(run),
        "soak": lambda: scenario_soak(run, soak_events),
    }
    try:
        for name in scenarios:
            log(f"scenario {name}")
            began = time.monotonic()
            try:
                result = runners[name]()
            except Exception as exc:  # one scenario's harness failure must not hide the others
                result = ScenarioResult(name, notes=[f"FAIL: {type(exc).__name__}: {exc}"[:2000]])
            finally:
                kill_all()  # a failed scenario must not leave its workers running into the next
            result.seconds = round(time.monotonic() - began, 1)
            results.append(result)
            log(f"scenario {name}: {result.status} in {result.seconds:.0f}s")
    finally:
        kill_all()
        if broker_state is not None:
            local_kafka.stop(broker_state)
    return results


def cmd_chaos(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else \
        [s for s in SCENARIOS if not (args.short and s == "soak")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"--scenarios: {','.join(unknown) or 'nothing'} is not one of {','.join(SCENARIOS)}")
    if args.short and "soak" in names:
        raise ValueError("--short: the soak has no short form; leave it out of --scenarios")
    from ccpulse.commands.errors import CommandError
    from ccpulse.commands.local_kafka import LocalKafkaError

    try:
        results = run_chaos(names, args.short, args.bootstrap, Path(args.workdir) if args.workdir else None,
                            args.seed, args.soak_events, args.sentinel_gap)
    except LocalKafkaError as exc:
        raise CommandError(str(exc)) from None
    print_table(results)
    for r in results:
        for note in ([r.skipped] if r.skipped else []) + r.notes:
            print(f"  {r.name}: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"status": r.status} for r in results], indent=2,
                                              default=str))
    return 0 if all(r.status != "FAIL" for r in results) else 1


def add_parser(subparsers: Any) -> None:
    """``ccpulse chaos``: registered by ccpulse/cli.py."""
    p = subparsers.add_parser("chaos", help="fault injection against a real broker: crash, outages, "
                              "rebalance, bad input, soak; prints lost / counted twice per scenario")
    p.add_argument("--short", action="store_true", help="every scenario but the soak, in a few minutes (CI)")
    p.add_argument("--scenarios", default=None,
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default: all; --short: all but soak)")
    p.add_argument("--bootstrap", default=None,
                   help="an existing broker (default: start a local one on a free port, stop it at the end; "
                        "broker-restart needs the local one)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--workdir", default=None, help="where workers keep state and logs (default: a temp dir)")
    p.add_argument("--seed", type=int, default=7, help="seed of the kill schedule (default %(default)s)")
    p.add_argument("--soak-events", type=int, default=1_000_000, help="events of the soak (default %(default)s)")
    p.add_argument("--sentinel-gap", type=float, default=SENTINEL_GAP_SECONDS, metavar="SECONDS",
                   help="event time from the last event to the closing sentinel (default %(default)s)")
    p.set_defaults(func=cmd_chaos)
