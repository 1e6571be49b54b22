"""Looking at a running pipeline from outside: for the tests, ``ccpulse chaos`` and ``ccpulse bench``.

Product code, not tooling: the worker reads its shared FCR key with ``read_topic_async``
(streams/fcr.py), and the local broker takes its port from ``free_port``.

- ``free_port``: a free loopback port for a worker's HTTP server or a broker;
- ``parse_metrics``: the Prometheus text of ``/metrics`` as {(name, sorted labels): value};
- ``read_topic``: every message of a topic up to its end at the time of the call.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

MetricKey = tuple[str, tuple[tuple[str, str], ...]]
FREE_PORT_FLOOR = 20000


def free_port() -> int:
    """A port that nothing listens on, taken below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the range it also uses for
    outgoing connections: between the probe and the worker binding it, a Kafka client
    connection could take it ("address already in use", seen in a chaos run).
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(FREE_PORT_FLOOR, low) if low > FREE_PORT_FLOOR + 1000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("", port))  # the wildcard, as a worker's HTTP server binds it
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port found between {FREE_PORT_FLOOR} and {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text format into {(name, sorted labels): value}; unparsable lines are skipped."""
    out: dict[MetricKey, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, rest = head.split("{", 1)
            labels = tuple(sorted((k, v.strip('"')) for k, v in (
                item.split("=", 1) for item in _split_labels(rest.rstrip("}")))))
        else:
            name, labels = head, ()
        try:
            out[(name, labels)] = float(value)
        except ValueError:
            continue
    return out


def _split_labels(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


async def read_topic_async(bootstrap: str, topic: str, timeout: float = 60.0,
                           **client: Any) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning to its end offsets when called.

    ``client`` takes extra AIOKafkaConsumer arguments (security). Raises TimeoutError
    when the end is not reached within ``timeout`` seconds.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=4 * 1024 * 1024, **client)
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while remaining:
            if loop.time() > deadline:
                raise TimeoutError(f"reading {topic}: not at its end after {timeout:.0f}s")
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0, **client: Any) -> list[ConsumerRecord]:
    return asyncio.run(read_topic_async(bootstrap, topic, timeout, **client))


# A cluster's first group request makes the broker create __consumer_offsets and is
# answered "coordinator not available" meanwhile (seconds); a moving coordinator, "not
# coordinator". Both pass: the replay had published everything and then failed on them.
COORDINATOR_WAIT_SECONDS = 30.0


async def coordinated(request: Callable[[], Any], timeout: float = COORDINATOR_WAIT_SECONDS) -> Any:
    """``await request()`` (an admin call about a consumer group), again while its coordinator is not ready."""
    from aiokafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await request()
        except (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError):
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.5)
