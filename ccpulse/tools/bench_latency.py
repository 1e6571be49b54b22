"""End-to-end latency: probe contacts on a dedicated queue, timed until visible in each output.

While a paced background load (the simulator's mixed stream, its event times
rewritten to the wall clock) runs at a fixed rate, a ``call.offered`` probe on
queue ``probe`` is produced every 1/probe_hz s with the current time. Probe k of
a 1-minute window is visible

- on ``kpi.windows`` when a record of the probe queue's 1-minute window has
  ``offered`` >= k's rank in that window;
- on ``/metrics`` when ``sum(ccpulse_queue_offered_total{queue="probe"})`` >= k
  (scraped every ``METRICS_SCRAPE_SECONDS``);
- in ClickHouse when the consumer group that stores ``kpi.windows`` has committed
  past the ``kpi.windows`` record that first showed it. The embedded store can
  only be opened by the worker, and Faust commits only what the ClickHouse writer
  acknowledged after the write; commits come about once a second, so this is an
  upper bound (by up to the commit interval).

Counting rather than identifying probes assumes they become visible in the order
they were sent; probes 250 ms apart almost always do.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

import orjson
from aiokafka import AIOKafkaConsumer

from ccpulse.connectors.base import Mapped
from ccpulse.probes import coordinated
from ccpulse.tools.bench_kafka import partitions_of, producer, simulated_dicts
from ccpulse.tools.bench_worker import BenchApp, WorkerProc, metric_sum
from schemas.events import format_ms

PROBE_QUEUE = "probe"
WARMUP_SECONDS = 3.0
SETTLE_SECONDS = 15.0  # after the load: how long a late probe may still show up
SINKS = ("kpi.windows", "/metrics", "ClickHouse")
# A scrape renders the whole page (about 300 KB with the bench's 52 queues). At 20 Hz that
# was half the worker's CPU (py-spy), and every latency it measured, not only /metrics',
# was the bench's own load: kpi.windows p50 3.4 s at 20 Hz, 0.6 s at 5 Hz (69b3498, one
# session). 5 Hz still resolves /metrics to 0.2 s (Prometheus itself scrapes every 15 s).
METRICS_SCRAPE_SECONDS = 0.2


@dataclass
class LatencyResult:
    probes: int
    achieved_rate: float
    latencies: dict[str, list[float]]  # unseen probes included as lower bounds
    missing: dict[str, int]  # probes never seen, per sink


@dataclass
class ProbeBook:
    """Probes sent (wall time, window) and when each became visible in each sink."""

    sent_at: list[float] = field(default_factory=list)
    window_of: list[int] = field(default_factory=list)
    # window start -> indexes of the probes of that window, in sending order
    by_window: dict[int, list[int]] = field(default_factory=dict)
    seen: dict[str, dict[int, float]] = field(default_factory=lambda: {s: {} for s in SINKS})
    # probe -> (partition, offset) of the kpi.windows record that first showed it
    record_of: dict[int, tuple[int, int]] = field(default_factory=dict)

    def add(self, sent_at: float, ts_ms: int) -> int:
        k = len(self.sent_at)
        window = ts_ms // 60_000 * 60_000
        self.sent_at.append(sent_at)
        self.window_of.append(window)
        self.by_window.setdefault(window, []).append(k)
        return k

    def window_offered(self, window: int, offered: int, at: float, where: tuple[int, int]) -> None:
        """A kpi.windows record says ``offered`` probes of ``window`` are counted."""
        for k in self.by_window.get(window, [])[:offered]:
            if k not in self.seen["kpi.windows"]:
                self.seen["kpi.windows"][k] = at
                self.record_of[k] = where

    def total_offered(self, offered: int, at: float) -> None:
        """/metrics counts ``offered`` probes in all."""
        for k in range(min(offered, len(self.sent_at))):
            self.seen["/metrics"].setdefault(k, at)

    def stored_through(self, committed: dict[int, int], at: float) -> None:
        """The storing group has committed ``committed[partition]`` (next offset to read)."""
        for k, (partition, offset) in self.record_of.items():
            if k not in self.seen["ClickHouse"] and committed.get(partition, -1) > offset:
                self.seen["ClickHouse"][k] = at

    def latencies(self, until: float) -> dict[str, list[float]]:
        """Per sink, every probe's latency; a probe never seen counts as ``until`` (a lower bound)."""
        return {sink: [seen.get(k, until) - sent for k, sent in enumerate(self.sent_at)]
                for sink, seen in self.seen.items()}

    def missing(self) -> dict[str, int]:
        return {sink: len(self.sent_at) - len(seen) for sink, seen in self.seen.items()}

    def complete(self) -> bool:
        return all(len(seen) == len(self.sent_at) for seen in self.seen.values())


@dataclass
class LatencyRun:
    bootstrap: str
    app: BenchApp
    worker: WorkerProc
    store_group: str  # the consumer group whose commits on kpi.windows mean "in ClickHouse"
    rate: int
    seconds: float
    probe_hz: float
    agent_mix: bool = False  # the load includes the agent side (ccpulse bench --agent-mix)
    book: ProbeBook = field(default_factory=ProbeBook)
    sent_load: int = 0

    async def run(self) -> LatencyResult:
        from aiokafka.admin import AIOKafkaAdminClient

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        prod = producer(self.bootstrap)
        await asyncio.gather(consumer.start(), admin.start(), prod.start())
        stop = asyncio.Event()
        try:
            tps = await partitions_of(consumer, [self.app.kpi_windows_topic])
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            watchers = [asyncio.create_task(self._watch_windows(consumer, stop)),
                        asyncio.create_task(self._watch_metrics(stop)),
                        asyncio.create_task(self._watch_store(admin, stop))]
            load_started = time.monotonic()
            load = asyncio.create_task(self._load(prod, stop))
            await asyncio.sleep(WARMUP_SECONDS)
            await self._probes(prod)
            load_seconds = time.monotonic() - load_started
            load.cancel()
            try:
                await load
            except asyncio.CancelledError:
                pass
            await prod.flush()
            deadline = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < deadline and not self.book.complete():
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            stop.set()
            await asyncio.gather(consumer.stop(), admin.close(), prod.stop(), return_exceptions=True)
        return LatencyResult(len(self.book.sent_at), self.sent_load / load_seconds,
                             self.book.latencies(until=time.time()), self.book.missing())

    async def _load(self, prod: Any, stop: asyncio.Event) -> None:
        """The background load: ``rate`` events/s, each stamped with the wall clock when sent."""
        events = simulated_dicts(seed=7, agent_mix=self.agent_mix)
        topics = self.app.input_topics
        started = time.monotonic()
        pending: list[asyncio.Future] = []
        while not stop.is_set():
            due = int((time.monotonic() - started) * self.rate) - self.sent_load
            if due > 0:
                now = format_ms(int(time.time() * 1000))
                for topic, key, value in load_messages(itertools.islice(events, due), topics, now):
                    pending.append(await prod.send(topic, value, key=key))
                self.sent_load += due
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.sleep(0.005)

    async def _probes(self, prod: Any) -> None:
        topic = self.app.input_topics["call"]
        interval = 1.0 / self.probe_hz
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < self.seconds:
            ts_ms = int(time.time() * 1000)
            iid = f"probe-{k}"
            value = orjson.dumps({"event_id": f"{iid}-1", "type": "call.offered",
                                  "occurred_at": format_ms(ts_ms), "interaction_id": iid,
                                  "queue": PROBE_QUEUE, "schema_version": 1})
            self.book.add(time.time(), ts_ms)
            await prod.send(topic, value, key=iid.encode())
            k += 1
            await asyncio.sleep(max(0.0, start + k * interval - time.monotonic()))

    async def _watch_windows(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        marker = f'"{PROBE_QUEUE}"'.encode()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            at = time.time()
            for tp, records in batch.items():
                for record in records:
                    if marker not in record.value:
                        continue
                    doc = orjson.loads(record.value)
                    if doc.get("queue") != PROBE_QUEUE or doc.get("window") != "1m":
                        continue
                    window = _epoch_ms(doc["window_start"])
                    self.book.window_offered(window, int(doc.get("offered") or 0), at,
                                             (tp.partition, record.offset))

    async def _watch_metrics(self, stop: asyncio.Event) -> None:
        import aiohttp

        url = f"http://127.0.0.1:{self.worker.port}/metrics"
        label = f'queue="{PROBE_QUEUE}"'
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not stop.is_set():
                tick = time.monotonic()
                try:
                    async with session.get(url) as resp:
                        text = await resp.text()
                    at = time.time()
                    self.book.total_offered(int(metric_sum(text, "ccpulse_queue_offered_total", label)), at)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(max(0.0, tick + METRICS_SCRAPE_SECONDS - time.monotonic()))

    async def _watch_store(self, admin: Any, stop: asyncio.Event) -> None:
        topic = self.app.kpi_windows_topic
        while not stop.is_set():
            tick = time.monotonic()
            offsets = await coordinated(lambda: admin.list_consumer_group_offsets(self.store_group))
            at = time.time()
            self.book.stored_through({tp.partition: meta.offset for tp, meta in offsets.items()
                                      if tp.topic == topic}, at)
            await asyncio.sleep(max(0.0, tick + 0.1 - time.monotonic()))


def load_messages(events: Iterable[tuple[str, dict[str, Any]]], topics: Mapping[str, str], now: str
                  ) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic, key, value) of simulated events restamped ``now``, keyed as EVENTS.md asks
    (by agent on the agents topic)."""
    for family, ev in events:
        ev["occurred_at"] = now
        yield topics[family], Mapped(family, ev).key.encode(), orjson.dumps(ev)  # type: ignore[arg-type]


def _epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)

