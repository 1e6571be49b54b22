"""Stage 2b: first-contact resolution, keyed by (hashed) customer.

The pipeline stage sends one contact per interaction that has a customer id to
``<app>-contacts``, keyed by a hash of the customer id (the id itself never
leaves the raw store). Here every contact of a customer meets on one partition;
a pure ``FcrEngine`` per partition decides each contact once the horizon has
passed and publishes the delayed FCR part of the contact's windows as partials,
which the merge stage folds into the same ``kpi.windows`` records.

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

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from ccpulse import kafka_security, probes
from ccpulse.config import Settings
from ccpulse.core.fcr import Contact, FcrEngine, FcrRecord, FcrSnapshot
from ccpulse.core.windowing import Windowing
from ccpulse.pseudonym import CustomerIdHasher, secret_bytes
from schemas.records import window_record_key
from streams.context import Pipeline
from streams.topics import admin_kwargs
from streams.guard import stage_guard
from streams.merge import ClockSender

EXPIRY_SCAN_SECONDS = 30.0
# A message on the contacts topic with only this field is the pipeline's clock
# ({"lifecycle/<p>": event time of partition p}), not a contact.
WATERMARK_FIELD = "watermark"
KEY_TOPIC_SUFFIX = "fcr-key"
# In a contact and in the partition's stored record: which key hashed its customers.
KEY_ID_FIELD = "kid"
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
    app, settings = pipe.app, pipe.settings
    w = settings.windows
    customers = pipe.tables["fcr_customers"]
    records = pipe.tables["fcr_records"]
    partials = pipe.topics["partials"]
    topic_name = pipe.topics["contacts"].get_topic_name()
    windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
    engines: dict[int, FcrEngine] = pipe.fcr_engines
    outbox = pipe.outbox
    put, delete = outbox.put, outbox.delete
    last_expiry = [time.monotonic()]
    merge_clock = ClockSender(outbox, partials, settings.kafka.partitions)
    guard = stage_guard(pipe)

    def customer_lists(partition: int) -> list[tuple[str, list[Contact]]]:
        return [(key, value["contacts"]) for key, value in list(customers.data.items())
                if value is not None and value["p"] == partition]

    def lookup(customer: str) -> list[Contact] | None:
        entry = customers.data.get(customer)
        return entry["contacts"] if entry is not None else None

    # partition -> id of the key its customers are hashed with ("": before keyed hashes)
    state_keys: dict[int, str] = {}
    warned: set[tuple[int, str, str]] = set()

    def record_doc(partition: int) -> dict[str, Any]:
        doc = engines[partition].record.to_dict()
        if partition in state_keys:
            doc[KEY_ID_FIELD] = state_keys[partition]
        return doc

    def check_key(partition: int, key_id: str) -> None:
        """A contact hashed with another key than the partition's state cannot meet that
        customer's earlier contacts: FCR would count repeats as resolved. Say so."""
        before = state_keys.setdefault(partition, key_id)
        if before == key_id:
            return
        state_keys[partition] = key_id
        if (partition, before, key_id) not in warned:
            warned.add((partition, before, key_id))
            log.warning("FCR partition %d: contacts hashed with customer key %s meet state hashed with %s "
                        "(the key changed, a worker has another [fcr] customer_key, or the state predates "
                        "keyed hashes): contacts of one customer before and after are not linked until "
                        "windows.fcr_horizon_seconds has passed", partition, key_id or "(none)",
                        before or "(none: unkeyed SHA-256)")

    def engine_for(partition: int) -> FcrEngine:
        engine = engines.get(partition)
        if engine is None:
            stored = records.data.get(str(partition))
            if stored:
                state_keys[partition] = stored.get(KEY_ID_FIELD, "")
            record = FcrRecord.from_dict(stored) if stored else FcrRecord()
            engine = FcrEngine(windowing, int(w.fcr_horizon_seconds * 1000),
                               int(w.allowed_lateness_seconds * 1000), record)
            engine.rebuild(customer_lists(partition))
            engines[partition] = engine
        return engine

    @app.agent(pipe.topics["contacts"], name="fcr")
    async def fcr(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            touched: set[int] = set()
            for event in batch:
                msg = event.message
                with guard.record("fcr", msg):
                    doc = orjson.loads(msg.value)
                    engine = engine_for(msg.partition)
                    touched.add(msg.partition)
                    if WATERMARK_FIELD in doc:
                        engine.observe(doc[WATERMARK_FIELD], settings.kafka.partitions, lookup)
                        continue
                    check_key(msg.partition, doc.get(KEY_ID_FIELD, ""))
                    key = doc["customer"]
                    entry = customers.data.get(key) or {"p": msg.partition, "contacts": []}
                    contact = Contact(doc["ts"], doc["interaction_id"], doc["queue"], doc["channel"])
                    if engine.add(key, entry["contacts"], contact, msg.offset):
                        put(customers, msg.partition, key, entry)
            for partition in touched:
                put(records, partition, str(partition), record_doc(partition))
            await outbox.flush()

    @app.timer(w.publish_interval_seconds, name="publish-fcr")
    async def publish_fcr() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic_name}
        for partition in owned:
            engine_for(partition)
        for partition in set(engines) - owned:  # re-created by a batch fetched before a rebalance (streams/pipeline.py)
            drop(partition)
        expire_now = time.monotonic() - last_expiry[0] >= EXPIRY_SCAN_SECONDS
        for partition, engine in list(engines.items()):
            before = engine.record.final_through
            for snap in engine.close() + engine.take_dirty():
                outbox.send(partials, window_record_key(snap.key).encode(),
                            partial(snap, partition, engine.record.watermark,
                                    windowing.end(snap.key[0], snap.key[1])))
            merge_clock.send(f"fcr-{partition}", engine.record.watermark)
            if engine.record.final_through != before:
                put(records, partition, str(partition), record_doc(partition))
        if expire_now:
            expire()
            last_expiry[0] = time.monotonic()
        await outbox.flush()

    def expire() -> None:
        for key, entry in list(customers.data.items()):
            engine = engines.get(entry["p"]) if entry is not None else None
            if engine is None:
                continue
            partition = entry["p"]
            gone = engine.expired(entry["contacts"])
            if not gone:
                continue
            entry["contacts"] = [c for c in entry["contacts"] if c not in gone]
            if entry["contacts"]:
                put(customers, partition, key, entry)
            else:
                delete(customers, partition, key)

    def drop(partition: int) -> None:
        engines.pop(partition, None)
        state_keys.pop(partition, None)
        merge_clock.forget(f"fcr-{partition}")

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        for tp in revoked:
            if tp.topic == topic_name:
                drop(tp.partition)


def partial(snap: FcrSnapshot, partition: int, watermark: int, end: int) -> dict[str, Any]:
    """An FCR partial for the merge stage: its own source, so it never replaces the KPI part."""
    return {"kind": "window", "key": list(snap.key), "partition": f"fcr-{partition}",
            "version": snap.version, "final": snap.final, "watermark": watermark,
            "end": end,
            "agg": {"counts": {"fcr_contacts": snap.contacts, "fcr_decided": snap.decided,
                               "fcr_resolved": snap.resolved}, "tops": {}}}
