"""Publishing what a connector mapped: every ``ccpulse connect`` sub-command goes through here.

A connector acknowledges its source (an HTTP 2xx, a queue_log position saved, a
Kafka offset committed) only after :meth:`ConnectorPublisher.publish` returned, so
nothing it accepted can be lost; a batch that failed is sent again whole, and the
copies that had gone through are deduplicated by their deterministic event ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Sequence

from ccpulse.commands.errors import CommandError
from ccpulse.commands.simulate import encode
from ccpulse.config import Settings
from ccpulse.connectors.base import FAMILY_TOPIC_ATTR, Mapped

log = logging.getLogger("ccpulse.connect")


class PublishError(CommandError):
    """Kafka did not take (all of) a batch, or cannot be reached: one line, naming the broker."""


async def until_stored(step: Callable[[], Awaitable[Any]], stop: asyncio.Event,
                       error: type[Exception] = PublishError) -> None:
    """Retry ``step`` (publish one batch) until Kafka took it, or give up when ``stop`` is set.

    The caller acknowledges its source (position saved, offsets committed) only after this
    returned: given up, the batch is read from the source again at the next start.
    """
    backoff = 0.5
    while True:
        try:
            await step()
            return
        except error as exc:
            log.warning("Kafka did not take the batch, retrying in %.1f s: %s", backoff, exc)
        try:
            await asyncio.wait_for(stop.wait(), backoff)
            raise CommandError("stopped before Kafka took the last batch; it is read again at the next start")
        except asyncio.TimeoutError:
            backoff = min(backoff * 2, 10.0)


class ConnectorPublisher:
    """One idempotent, ``acks=all`` producer to the input topics and the dead-letter topic."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source
        self._producer: Any = None
        self._topics = {family: settings.topics.name(attr) for family, attr in FAMILY_TOPIC_ATTR.items()}
        self._dead_letter_topic = settings.topics.name("dead_letter")

    async def start(self) -> None:
        """Create the topics that are missing, then connect; a failure is one ``PublishError`` line."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from ccpulse.kafka_security import KafkaSecurityError, client_kwargs, describe, quiet_client_logs
        from streams.topics import INPUT_MESSAGE_MAX_BYTES, KafkaUnavailable, PartitionMismatch, ensure_topics_async

        k = self.settings.kafka
        try:
            await ensure_topics_async(self.settings)
            producer = AIOKafkaProducer(
                bootstrap_servers=k.bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                # What the input topics take, so an oversized event reaches the pipeline's
                # too_large dead letter instead of failing here (streams.topics).
                max_request_size=INPUT_MESSAGE_MAX_BYTES, **client_kwargs(k))
        except (KafkaUnavailable, PartitionMismatch, KafkaSecurityError) as exc:
            raise PublishError(str(exc)) from None
        try:
            with quiet_client_logs():
                await producer.start()
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            await producer.stop()
            raise PublishError(describe(exc, k)) from None
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close the producer (what was sent and not yet acknowledged is awaited)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, mapped: Sequence[Mapped]) -> None:
        """Send every event to its family's topic keyed by ``Mapped.key``; return once all are acknowledged.

        All are sent before any acknowledgement is awaited (one round trip per
        batch, not per event). Raises ``PublishError`` if any failed; the caller
        then sends the whole batch again: the ones that did land dedup by event id.
        """
        await self._send_all([(self._topics[m.family], m.key.encode("utf-8"), encode(m.event)) for m in mapped])

    async def dead_letter(self, raw: bytes, reason: str, detail: str) -> None:
        """One ``events.dead-letter`` record for input this connector could not map; awaits its ack.

        Shaped as the pipeline's own (``schemas.records.dead_letter``), with
        ``topic`` = ``connect:<source>`` and partition/offset -1: it was never on Kafka.
        """
        from schemas.events import Rejection
        from schemas.records import dead_letter

        record = dead_letter(raw, Rejection(reason, detail), f"connect:{self.source}", -1, -1,
                             int(time.time() * 1000))
        await self._send_all([(self._dead_letter_topic, self.source.encode("utf-8"), encode(record))])

    async def _send_all(self, messages: list[tuple[str, bytes, bytes]]) -> None:
        from aiokafka.errors import KafkaError

        from ccpulse.kafka_security import describe

        if self._producer is None:
            raise PublishError("the connector's Kafka producer is not started")
        sent: list[asyncio.Future[Any]] = []
        failure: BaseException | None = None
        for topic, key, value in messages:
            try:
                sent.append(await self._producer.send(topic, value=value, key=key))
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                # E.g. no metadata for the topic in time: what was sent is still awaited below.
                failure = exc
                break
        results = await asyncio.gather(*sent, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failure is not None or failed:
            first = failure if failure is not None else failed[0]
            acked = len(results) - len(failed)
            raise PublishError(f"{describe(first, self.settings.kafka)} ({acked} of {len(messages)} "
                               "messages acknowledged; the batch is not confirmed)")
