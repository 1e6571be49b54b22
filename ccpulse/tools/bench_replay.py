"""The bank month replayed as a user would: ``ccpulse replay FILE --speed max`` into a running worker.

Issue 15's target: at most 15 s from the first record published until every day of
January 1999 is final on ``kpi.windows`` and in ClickHouse. The harness starts one
``--role all`` worker (days in ``Asia/Jerusalem``, as the mapping asks), waits until
it is healthy, runs ``ccpulse replay`` from this tree as a subprocess (it publishes,
waits for the worker's group to read everything, then sends the end of input), and
measures

- publishing: from the first to the last input record's broker timestamp (CreateTime,
  set by the replay's producer);
- final on ``kpi.windows``: from the first input record to the ``kpi.windows`` record
  (its CreateTime, set by the worker) that made the last day window final. The day
  windows waited for are every (local day, queue) of every event the replay derives
  from the file through the mapping, plus any other day window seen on the topic;
- in ClickHouse: until the storing group (the app id) has committed past each of those
  records (the embedded store cannot be opened by a second process; Faust commits what
  the writer acknowledged after the write, about once a second: an upper bound).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer

from ccpulse.core.kpis import QUEUE
from ccpulse.probes import coordinated
from ccpulse.core.windowing import Windowing
from ccpulse.tools.bench_kafka import partitions_of
from ccpulse.tools.bench_worker import BenchApp, WorkerProc
from schemas.events import parse_timestamp_ms
from schemas.records import window_record_key

HERE = Path(__file__).resolve().parents[2]  # the checkout the replay runs from
BANK_FILE = HERE.parent / "shared" / "data" / "anonymous-bank-1999-01.tsv"
BANK_MAPPING = HERE / "deploy" / "replay" / "anonymous-bank.toml"
BANK_TIMEZONE = "Asia/Jerusalem"  # the bank's days (deploy/replay/anonymous-bank.toml)
# January 1999 without the 11th and 12th, which the data lacks.
BANK_JANUARY_DAYS = 29
DAY = 86400
TARGET_SECONDS = 15.0
_PUBLISHED = re.compile(r"published to .* in ([0-9.]+) s")


def day_window_keys(events: Iterable[tuple[str, dict[str, Any]]], windowing: Windowing) -> set[str]:
    """The ``kpi.windows`` key of the day window of every event, per queue and channel."""
    keys = set()
    for family, doc in events:
        ts = parse_timestamp_ms(doc["occurred_at"])
        assert ts is not None, doc
        channel = "voice" if family == "call" else doc.get("channel") or family
        keys.add(window_record_key((DAY, windowing.start(ts, DAY), QUEUE, doc["queue"], channel)))
    return keys


def expected_day_windows(path: Path, mapping_path: Path, limit: int | None, windowing: Windowing) -> set[str]:
    """The day windows a replay of ``path`` (its first ``limit`` interactions) touches."""
    from ccpulse.commands.replay import load, load_mapping

    events, _stats = load(path, load_mapping(mapping_path), limit)
    return day_window_keys(events, windowing)


@dataclass
class FinalBook:
    """When each day window first turned final on kpi.windows, and when that record was stored."""

    wanted: set[str]
    final: dict[str, float] = field(default_factory=dict)  # key -> CreateTime (s) of its first final record
    where: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (partition, offset) of it
    seen: set[str] = field(default_factory=set)
    stored: dict[str, float] = field(default_factory=dict)

    def saw(self, key: str, final: bool, at: float, where: tuple[int, int]) -> None:
        self.seen.add(key)
        if final and key not in self.final:
            self.final[key] = at
            self.where[key] = where

    def not_final(self) -> list[str]:
        # The days the log has, not every day window seen: the agent stage puts an
        # unended call's agent on contact up to a horizon after its answer, so a day past
        # the log can have a window that the replay's end of input (it closes what its
        # records touched) leaves open until the wall clock closes it.
        return sorted(self.wanted - self.final.keys())

    def all_final(self) -> bool:
        return not self.not_final()

    def final_at(self) -> float:
        return max(self.final.values(), default=0.0)

    def stored_through(self, committed: dict[int, int], at: float) -> None:
        """The storing group has committed ``committed[partition]`` (the next offset it reads)."""
        for key, (partition, offset) in self.where.items():
            if key not in self.stored and committed.get(partition, -1) > offset:
                self.stored[key] = at

    def all_stored(self) -> bool:
        return self.all_final() and len(self.stored) == len(self.final)

    def stored_at(self) -> float:
        return max(self.stored.values(), default=0.0)


@dataclass
class ReplayResult:
    first_ms: int  # CreateTime of the first input record
    last_ms: int  # ... and of the last
    records: int  # input records published
    book: FinalBook
    gave_up_at: float  # wall time the watch stopped (the figure's lower bound when not complete)
    replay_seconds: float  # the replay process, start to exit
    replay_lines: list[str]
    timeline: list[tuple[float, int, int, int]]  # (s since the replay started, consumed, final, stored)

    def final_seconds(self) -> float:
        at = self.book.final_at() if self.book.all_final() else self.gave_up_at
        return at - self.first_ms / 1000

    def replay_reported_seconds(self) -> float | None:
        """What the replay itself printed: reading the file and publishing (its "in N s")."""
        for line in self.replay_lines:
            found = _PUBLISHED.search(line)
            if found:
                return float(found.group(1))
        return None

    def stored_seconds(self) -> float:
        at = self.book.stored_at() if self.book.all_stored() else self.gave_up_at
        return at - self.first_ms / 1000


@dataclass
class ReplayRun:
    bootstrap: str
    app: BenchApp
    worker: WorkerProc
    store_group: str
    wanted: set[str]
    limit: int | None
    timeout: float
    say: Callable[[str], None]
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)

    async def run(self) -> ReplayResult:
        from aiokafka.admin import AIOKafkaAdminClient

        book = FinalBook(set(self.wanted))
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await asyncio.gather(consumer.start(), admin.start())
        stop = asyncio.Event()
        try:
            tps = await partitions_of(consumer, [self.app.kpi_windows_topic])
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            watchers = [asyncio.create_task(self._watch_windows(consumer, book, stop)),
                        asyncio.create_task(self._watch_store(admin, book, stop))]
            started = time.monotonic()
            timeline = asyncio.create_task(self._timeline(book, started))
            lines, replay_seconds = await self._replay()
            deadline = started + self.timeout
            told = time.monotonic()
            while not book.all_stored() and time.monotonic() < deadline:
                if not self.worker.alive():
                    raise RuntimeError(f"worker exited during the replay: {self.worker.log_tail()}")
                if time.monotonic() - told >= 15:
                    told = time.monotonic()
                    self.say(f"  ... {time.monotonic() - started:.0f}s: {len(book.not_final()):,} day windows "
                             f"not final, {len(book.final) - len(book.stored):,} not yet stored")
                await asyncio.sleep(0.2)
            timeline.cancel()
            gave_up_at = time.time()
            stop.set()
            await asyncio.gather(*watchers)
            first_ms, last_ms, records = await self._input_span()
        finally:
            stop.set()
            await asyncio.gather(consumer.stop(), admin.close(), return_exceptions=True)
        return ReplayResult(first_ms, last_ms, records, book, gave_up_at, replay_seconds, lines, self.timeline)

    async def _timeline(self, book: FinalBook, started: float) -> None:
        """Every 2 s: input events the worker consumed, day windows final and stored."""
        while True:
            consumed = await asyncio.to_thread(self.worker.consumed)
            self.timeline.append((round(time.monotonic() - started, 1), int(consumed), len(book.final),
                                  len(book.stored)))
            await asyncio.sleep(2.0)

    async def _replay(self) -> tuple[list[str], float]:
        """``ccpulse replay FILE --speed max`` as a user runs it, with the worker's config."""
        args = [sys.executable, "-m", "ccpulse.cli", "replay", str(BANK_FILE), "--mapping", str(BANK_MAPPING),
                "--speed", "max"]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
        env.update({"CCPULSE_CONFIG": str(self.app.config_path), "PYTHONPATH": str(HERE)})
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=HERE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        seconds = time.monotonic() - started
        lines = out.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0:
            raise RuntimeError(f"ccpulse replay exited with {proc.returncode}: {' | '.join(lines[-5:])}")
        for line in lines:
            self.say(f"  {line}")
        return lines, seconds

    async def _watch_windows(self, consumer: AIOKafkaConsumer, book: FinalBook, stop: asyncio.Event) -> None:
        marker = b'"1d"'
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=10000)
            for tp, records in batch.items():
                for record in records:
                    if marker not in record.value:
                        continue
                    doc = orjson.loads(record.value)
                    if doc.get("window") != "1d":
                        continue
                    book.saw(record.key.decode(), bool(doc.get("final")), record.timestamp / 1000,
                             (tp.partition, record.offset))

    async def _watch_store(self, admin: Any, book: FinalBook, stop: asyncio.Event) -> None:
        topic = self.app.kpi_windows_topic
        while not stop.is_set():
            tick = time.monotonic()
            offsets = await coordinated(lambda: admin.list_consumer_group_offsets(self.store_group))
            book.stored_through({tp.partition: meta.offset for tp, meta in offsets.items()
                                 if tp.topic == topic}, time.time())
            await asyncio.sleep(max(0.0, tick + 0.1 - time.monotonic()))

    async def _input_span(self) -> tuple[int, int, int]:
        """CreateTime of the first and last input record and how many there are (every input topic)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = await partitions_of(consumer, list(self.app.input_topics.values()))
            consumer.assign(tps)
            starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            stamps, count = [], 0
            for tp in tps:
                if ends[tp] <= starts[tp]:
                    continue
                count += ends[tp] - starts[tp]
                for offset in (starts[tp], ends[tp] - 1):
                    consumer.seek(tp, offset)
                    batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
                    if not batch.get(tp):
                        raise RuntimeError(f"cannot read {tp.topic}[{tp.partition}]@{offset} within 10 s")
                    stamps.append(batch[tp][0].timestamp)
        finally:
            await consumer.stop()
        if not stamps:
            raise RuntimeError("the replay published nothing")
        return min(stamps), max(stamps), count
