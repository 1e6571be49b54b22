"""The benchmark's Kafka side: input events, the plain-consumer ceiling, and progress by offsets.

Everything here is neutral with respect to the worker: it only talks to the
broker, so the same measurement applies to any version of the worker code.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ccpulse.connectors.base import Mapped
from ccpulse.probes import coordinated
from ccpulse.commands.simulate import QueueModel, SimulationConfig, encode
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events

# A mid-sized contact center: 8 voice queues of 300 agents, a 200-agent chat
# desk and a ticket desk, so per-agent windows, FCR, SLA and scorecards all
# have real work (the simulator's defaults have 3 agents per queue).
VOICE = SimulationConfig(rate=10.0, queues=tuple(QueueModel(f"voice-{i}", agents=300) for i in range(8)),
                         transfer_probability=0.05, repeat_probability=0.1, rating_probability=0.2)
CHAT = ChatConfig(rate=3.0, queues=(QueueModel("chat-support", agents=200),))
TICKET = TicketConfig(rate=1.0)


def simulated_events(count: int, seed: int = 1, agent_mix: bool = False) -> list[tuple[str, bytes]]:
    """``count`` (family, encoded event) pairs of the mixed voice + chat + ticket simulation
    (``agent_mix``: with the agent side, see ``simulated_dicts``)."""
    stream = simulated_dicts(seed, agent_mix)
    return [(family, encode(ev)) for family, ev in itertools.islice(stream, count)]


def simulated_dicts(seed: int, agent_mix: bool = False) -> Iterator[tuple[str, dict]]:
    """The same simulation as dicts, endless (the paced latency load rewrites their times).

    ``agent_mix`` turns the agent side on as ``ccpulse demo`` does (its ``demo_options``:
    presence on the ``agent`` family, breaks, after-contact work, holds, flow-outs,
    callbacks), so the bench measures the demo's mix with the bench's staffing.
    """
    from dataclasses import replace

    voice, chat, ticket = replace(VOICE, seed=seed), replace(CHAT, seed=seed), replace(TICKET, seed=seed)
    if agent_mix:
        from ccpulse.commands.demo import demo_options

        voice, chat, ticket = demo_options(voice, chat, ticket)
    return generate_mixed_events(voice, chat, ticket, math.inf)


def type_counts(events: Iterable[tuple[str, bytes]]) -> dict[str, int]:
    """Events per ``type``, commonest first: what a mix holds."""
    counts = Counter(orjson.loads(value)["type"] for _family, value in events)
    return dict(counts.most_common())


def producer(bootstrap: str) -> AIOKafkaProducer:
    # Batching producer: sends are queued and acknowledged in bulk, never awaited one by one.
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5,
                            max_batch_size=512 * 1024, compression_type=None)


async def produce_all(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]],
                      window: int = 20000) -> int:
    """Send (topic, key, value) as fast as the broker takes them; returns how many were acknowledged."""
    prod = producer(bootstrap)
    await prod.start()
    sent = 0
    try:
        pending: list[asyncio.Future] = []
        for topic, key, value in messages:
            pending.append(await prod.send(topic, value, key=key))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending.clear()
        await prod.flush()
        await asyncio.gather(*pending)
        sent += len(pending)
    finally:
        await prod.stop()
    return sent


def event_messages(events: Iterable[tuple[str, bytes]], topics: Mapping[str, str]
                   ) -> Iterator[tuple[str, bytes | None, bytes]]:
    for family, value in events:
        # Keyed as ccpulse simulate publishes: by interaction, by agent on the agents topic.
        yield topics[family], Mapped(family, orjson.loads(value)).key.encode(), value  # type: ignore[arg-type]


@dataclass
class CeilingResult:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def ceiling(bootstrap: str, topics: list[str], expected: int, timeout: float = 300.0) -> CeilingResult:
    """A plain aiokafka consumer that reads every message of ``topics`` and JSON-decodes it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topics)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        count = 0
        # From the first fetch on: the consumer prefetches in the background, so
        # timing from the first batch returned would leave fetching out.
        started = time.monotonic()
        deadline = started + timeout
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10000)
            for tp, records in batch.items():
                for record in records:
                    orjson.loads(record.value)
                count += len(records)
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        if remaining:
            raise RuntimeError(f"ceiling consumer read {count} of {expected} events within {timeout}s")
        return CeilingResult(count, time.monotonic() - started)
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    out = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        out.extend(TopicPartition(topic, p) for p in sorted(parts))
    return out


STEADY_SECONDS = 2.5


@dataclass
class GroupTopics:
    """A consumer group and every topic its agents consume."""

    group: str
    topics: list[str]


@dataclass
class OffsetWatch:
    """Committed offsets of the workers' groups against the topics' end offsets.

    Faust commits about once a second and only what every agent has acknowledged
    (the ClickHouse writers acknowledge after the write), so "every group has
    committed the end of every topic it consumes" means every stage is done.
    """

    bootstrap: str
    groups: list[GroupTopics]
    # Topics the worker re-publishes on a timer even with no input (kpi.queue-state
    # refreshes every queue with contacts waiting each tick): they never stay at lag
    # 0, so they count as done when the group is within what arrived in the last
    # ``STEADY_SECONDS``.
    steady: frozenset[str] = frozenset()
    # When given, every other topic is steady too: once the input is exhausted, event
    # time follows the wall clock (idle close) and the stages keep publishing window
    # closes and watermark ticks for a while, so internal topics trickle as well.
    inputs: frozenset[str] = frozenset()
    admin: AIOKafkaAdminClient | None = None
    consumer: AIOKafkaConsumer | None = None
    history: list[tuple[float, dict[TopicPartition, int]]] = field(default_factory=list)

    async def start(self) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False)
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.admin is not None:
            await self.admin.close()

    async def lag(self) -> int:
        """Messages not yet committed, summed over every group and partition it consumes
        (the steady topics only beyond what they received in the last ``STEADY_SECONDS``)."""
        assert self.admin is not None and self.consumer is not None
        topics = sorted({t for g in self.groups for t in g.topics})
        tps = await partitions_of(self.consumer, topics)
        ends = await self.consumer.end_offsets(tps)
        now = time.monotonic()
        self.history.append((now, ends))
        while len(self.history) > 1 and self.history[1][0] <= now - STEADY_SECONDS:
            self.history.pop(0)
        before = self.history[0][1]
        total = 0
        for g in self.groups:
            committed = await coordinated(lambda: self.admin.list_consumer_group_offsets(g.group))
            for tp in tps:
                if tp.topic not in g.topics:
                    continue
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                # A steady topic is done when the group has read what it held a moment ago.
                steady = tp.topic in self.steady or bool(self.inputs) and tp.topic not in self.inputs
                head = min(ends[tp], before.get(tp, 0)) if steady else ends[tp]
                total += max(0, head - done)
        return total

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed offset per partition of ``topic`` (missing: nothing committed)."""
        assert self.admin is not None
        offsets = await coordinated(lambda: self.admin.list_consumer_group_offsets(group))
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    async def wait_done(self, quiet: float = 3.0, timeout: float = 900.0, interval: float = 0.5,
                        progress: Callable[[int], None] | None = None, every: float = 15.0) -> float:
        """Block until the lag is 0 and stays 0 for ``quiet`` s; returns when it first reached 0.

        ``progress`` is told the lag every ``every`` seconds, so a slow run shows it is alive.
        """
        deadline = time.monotonic() + timeout
        zero_since: float | None = None
        last = -1
        told = time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            last = await self.lag()
            if progress is not None and now - told >= every:
                progress(last)
                told = now
            if last == 0:
                zero_since = now if zero_since is None else zero_since
                if now - zero_since >= quiet:
                    return zero_since
            else:
                zero_since = None
            await asyncio.sleep(interval)
        raise RuntimeError(f"workers did not catch up within {timeout}s (still {last} messages behind)")
