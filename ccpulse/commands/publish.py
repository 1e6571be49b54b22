"""Publishing events to Kafka: for ``simulate``, ``replay`` and ``demo``.

- :func:`publish_mixed`: ``(family, event)`` pairs to each family's topic, paced by
  event time or as fast as the broker takes them;
- :func:`publish`: the same for one family (voice calls);
- :func:`publish_events`: the configured input topics of ``Settings``, created first,
  with the configured Kafka security; a failure is one ``CommandError`` line.

Apart from the generators so that they stay pure (events in memory, no Kafka).
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

from ccpulse.commands.errors import CommandError
from ccpulse.commands.simulate import encode
from ccpulse.connectors.base import FAMILY_TOPIC_ATTR, Mapped
from ccpulse.config import Settings

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def input_topics(settings: Settings) -> dict[str, str]:
    """Contact family -> the configured input topic it is published to (what a replay
    waits for the workers to read)."""
    return {"call": settings.topics.name("calls"), "chat": settings.topics.name("chats"),
            "ticket": settings.topics.name("tickets")}


def publish_topics(settings: Settings) -> dict[str, str]:
    """Every family the simulators produce -> its topic: the contacts' and ``agents``."""
    return {family: settings.topics.name(attr) for family, attr in FAMILY_TOPIC_ATTR.items()}


async def publish_events(settings: Settings, events: Iterable[tuple[str, dict[str, Any]]], speed: float | None,
                         stop: asyncio.Event | None = None) -> int:
    """Publish (family, event) pairs to the configured input topics, creating them first."""
    from aiokafka.errors import KafkaError

    from ccpulse.kafka_security import describe, publisher_kwargs
    from streams.topics import KafkaUnavailable, ensure_topics_async

    try:
        await ensure_topics_async(settings)
    except KafkaUnavailable as exc:
        raise CommandError(str(exc)) from None
    topics = publish_topics(settings)
    k = settings.kafka
    try:
        return await publish_mixed(events, k.bootstrap, topics, speed, stop=stop, **publisher_kwargs(k))
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        # E.g. the broker went away, or an ACL forbids writing a topic: one line, no traceback.
        raise CommandError(describe(exc, k)) from None


async def publish(
    events: Iterable[dict[str, Any]],
    bootstrap: str,
    topic: str,
    speed: float | None,
    *,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    ssl_context: Any = None,
    progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    batch_size: int = 1000,
) -> int:
    """Send ``events`` to ``topic`` keyed by ``interaction_id``; returns how many were acknowledged.

    ``speed=None`` sends as fast as the broker takes them; otherwise event time is
    replayed at ``speed`` times the wall clock, measured from the first event.
    ``progress`` gets the running total of acknowledged messages after each
    batch. Setting ``stop`` ends the run cleanly: what was sent is flushed and
    counted. ``events`` is consumed lazily, so an endless generator is fine.
    """
    # One publisher for every generator: publish_mixed, one family.
    return await publish_mixed((("call", event) for event in events), bootstrap, {"call": topic}, speed,
                               stop=stop, progress=progress, batch_size=batch_size,
                               security_protocol=security_protocol, sasl_mechanism=sasl_mechanism,
                               sasl_username=sasl_username, sasl_password=sasl_password,
                               ssl_context=ssl_context)


async def publish_mixed(
    events: Iterable[tuple[str, dict[str, Any]]],
    bootstrap: str,
    topics: Mapping[str, str],
    speed: float | None,
    *,
    stop: asyncio.Event | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 1000,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    ssl_context: Any = None,
    partition: int | None = None,
) -> int:
    """Send each ``(family, event)`` to ``topics[family]`` keyed by ``interaction_id``
    (``agent_id`` for the ``agent`` family, EVENTS.md).

    Same contract as :func:`publish` (pacing by event time at
    ``speed``, or as fast as possible for ``None``; ``progress``; ``stop``;
    security options; returns how many were acknowledged), with one producer for
    all topics so the families stay interleaved in event time. A family missing
    from ``topics`` raises ``ValueError`` when its first event comes up.
    """
    from aiokafka import AIOKafkaProducer

    for family, topic in topics.items():
        if family not in FAMILY_TOPIC_ATTR:
            raise ValueError(f"topics: unknown family {family!r}, expected one of {tuple(FAMILY_TOPIC_ATTR)}")
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topics: the {family} topic must be a non-empty string")
    if speed is not None and not (speed > 0 and math.isfinite(speed)):
        raise ValueError("speed: must be a positive number, or None for as fast as possible")
    if batch_size < 1:
        raise ValueError("batch_size: must be at least 1")
    if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int)
                                  or partition < 0):
        raise ValueError("partition: must be a partition number (0, 1, ...) or None")
    if security_protocol in ("SSL", "SASL_SSL") and ssl_context is None:
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        security_protocol=security_protocol,
        ssl_context=ssl_context,
        sasl_mechanism=sasl_mechanism or "PLAIN",
        sasl_plain_username=sasl_username or None,
        sasl_plain_password=sasl_password or None,
    )
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[Any]] = []
    acked = 0

    async def drain() -> None:
        nonlocal acked
        if not pending:
            return
        await asyncio.gather(*pending)  # the first delivery error propagates: never count a failed send
        acked += len(pending)
        pending.clear()
        if progress is not None:
            progress(acked)

    try:
        await producer.start()
        if partition is not None:  # pinned (replay): the partition must exist everywhere
            for topic in set(topics.values()):
                known = await producer.partitions_for(topic)
                if partition not in known:
                    raise ValueError(f"partition: {topic} has partitions {sorted(known)}, not {partition}")
        wall0: float | None = None
        event0 = 0
        for family, ev in events:
            if stop is not None and stop.is_set():
                break
            topic = topics.get(family)
            if topic is None:
                raise ValueError(f"topics: no topic for the {family!r} family")
            if speed is not None:
                t = _event_ms(ev["occurred_at"])
                if wall0 is None:
                    wall0, event0 = loop.time(), t
                due = wall0 + (t - event0) / 1000 / speed
                if due > loop.time():
                    await drain()
                    delay = due - loop.time()
                    if delay > 0 and await _sleep_or_stop(delay, stop):
                        break
            key = Mapped(family, ev).key.encode()  # type: ignore[arg-type]  # family checked above
            pending.append(await producer.send(topic, encode(ev), key=key, partition=partition))
            if len(pending) >= batch_size:
                await drain()
        await producer.flush()
        await drain()
    finally:
        await producer.stop()
    return acked


def _event_ms(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // _MS


async def _sleep_or_stop(delay: float, stop: asyncio.Event | None) -> bool:
    """Sleeps ``delay`` seconds; True when ``stop`` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True
