"""Stage 2b: first-contact resolution, keyed by (hashed) customer.

The stage's logic is ``FcrStage`` (streams/stages/fcr.py); here are its Faust agent,
publish timer and rebalance hook, and the customer key every worker hashes with. The
pipeline sends contacts keyed by a hash of the customer id (the id itself never
leaves the raw store), so every contact of a customer meets on one partition.

The hash is an HMAC (``ccpulse.pseudonym``): a plain SHA-256 of a phone number can
be computed by anyone who knows the number. Its key is ``[fcr] customer_key``, or,
when that is empty, one generated at first start and kept on ``<app>-fcr-key``:
every worker of the app must hash with the same key, or a customer's contacts
would meet on different keys and repeat contacts would go unseen.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from ccpulse import kafka_security, probes
from ccpulse.config import Settings
from ccpulse.core.merge_clock import fcr_source
from ccpulse.pseudonym import CustomerIdHasher, secret_bytes
from streams.context import Pipeline
from streams.guard import stage_guard
from streams.stages.merge import ClockSender
from streams.stages.fcr import FcrStage, FcrWrites
from streams.topics import admin_kwargs

KEY_TOPIC_SUFFIX = "fcr-key"
KEY_RETRY_MAX_SECONDS = 30.0

log = logging.getLogger(__name__)


async def shared_key(settings: Settings, topic: str, timeout: float = 30.0) -> bytes:
    """The app's FCR customer key: ``[fcr] customer_key``, else the first key stored on ``topic``.

    The topic has one partition and each worker writes its candidate under its own
    message key (compaction keeps them all): the lowest offset wins, so workers racing
    at first start still agree, and so does every later start.
    """
    if settings.fcr.customer_key:
        return secret_bytes(settings.fcr.customer_key)
    client = kafka_security.client_kwargs(settings.kafka)
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            # Answered with a per-topic error, not raised, when another worker was first.
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    stored = await probes.read_topic_async(settings.kafka.bootstrap, topic, timeout, **client)
    if not stored:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", **client)
        await producer.start()
        try:
            await producer.send_and_wait(topic, secrets.token_hex(32).encode(), key=uuid.uuid4().hex.encode(),
                                         partition=0)
        finally:
            await producer.stop()
        stored = await probes.read_topic_async(settings.kafka.bootstrap, topic, timeout, **client)
    if not stored:
        raise KafkaError(f"{topic}: the key just written is not there")
    return min(stored, key=lambda r: (r.partition, r.offset)).value


async def customer_hasher(pipe: Pipeline) -> CustomerIdHasher:
    """The FCR customer hasher, fetched once per process; retried while Kafka cannot give it,
    since no contact may be sent before it is known."""
    topic = pipe.internal(KEY_TOPIC_SUFFIX)
    delay = 1.0
    while pipe.fcr_hasher is None:
        try:
            pipe.fcr_hasher = CustomerIdHasher.from_secret(await shared_key(pipe.settings, topic))
        except (KafkaError, OSError, asyncio.TimeoutError, kafka_security.KafkaSecurityError) as exc:
            log.warning("FCR customer key: cannot read or store it on %s (%s); retrying in %.0fs", topic,
                        kafka_security.describe(exc, pipe.settings.kafka), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, KEY_RETRY_MAX_SECONDS)
            continue
        where = "[fcr] customer_key" if pipe.settings.fcr.customer_key else topic
        log.info("FCR customer key %s (from %s)", pipe.fcr_hasher.key_id, where)
    return pipe.fcr_hasher


def register(pipe: Pipeline) -> None:
    """The Faust shell around ``FcrStage``: its agent, publish timer and rebalance hook."""
    app, settings = pipe.app, pipe.settings
    customers, records = pipe.tables.fcr_customers, pipe.tables.fcr_records
    partials = pipe.topics.partials
    topic_name = pipe.topics.contacts.get_topic_name()
    outbox = pipe.outbox
    stage = FcrStage(settings, customers.data, records.data, now=time.monotonic())
    pipe.fcr_engines = stage.engines  # /metrics reads the stage's engines
    merge_clock = ClockSender(outbox, partials, settings.kafka.partitions)
    guard = stage_guard(pipe)

    async def write(out: FcrWrites) -> None:
        for failure in out.failures:
            guard.record_failed("fcr", failure.message, failure.error)
        for m in out.partials:
            outbox.send(partials, m.key, m.value)
        for source, watermark in out.clocks.items():  # after the partials they cover
            merge_clock.send(source, watermark)
        for put in out.records:
            outbox.put(records, put.partition, put.key, put.value)
        for put in out.customers:
            if put.value is None:
                outbox.delete(customers, put.partition, put.key)
            else:
                outbox.put(customers, put.partition, put.key, put.value)
        await outbox.flush()

    def drop(partition: int) -> None:
        stage.revoke(partition)
        merge_clock.forget(fcr_source(partition))

    @app.agent(pipe.topics.contacts, name="fcr")
    async def fcr(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            await write(stage.on_batch([event.message for event in batch]))

    @app.timer(settings.windows.publish_interval_seconds, name="publish-fcr")
    async def publish_fcr() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic_name}
        for partition in set(stage.engines) - owned:  # re-created by a batch fetched before a rebalance
            drop(partition)
        await write(stage.on_tick(time.monotonic(), owned))

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        for tp in revoked:
            if tp.topic == topic_name:
                drop(tp.partition)
