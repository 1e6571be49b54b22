"""Stage 2b: first-contact resolution, keyed by (hashed) customer.

The lifecycle stage sends one contact per interaction that has a customer id to
``<app>-contacts``, keyed by a hash of the customer id (the id itself never
leaves the raw store). Here every contact of a customer meets on one partition;
a pure ``FcrEngine`` per partition decides each contact once the horizon has
passed and publishes the delayed FCR part of the contact's windows as partials,
which the merge stage folds into the same ``kpi.windows`` records.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ccpulse.core.fcr import Contact, FcrEngine, FcrRecord, FcrSnapshot
from ccpulse.core.windowing import Windowing
from schemas.records import window_record_key
from streams.app import Pipeline
from streams.ingest import WATERMARK_FIELD
from streams.merge import ClockSender

EXPIRY_SCAN_SECONDS = 30.0


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

    def customer_lists(partition: int) -> list[tuple[str, list[Contact]]]:
        return [(key, value["contacts"]) for key, value in list(customers.data.items())
                if value is not None and value["p"] == partition]

    def lookup(customer: str) -> list[Contact] | None:
        entry = customers.data.get(customer)
        return entry["contacts"] if entry is not None else None

    def engine_for(partition: int) -> FcrEngine:
        engine = engines.get(partition)
        if engine is None:
            stored = records.data.get(str(partition))
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
                doc = orjson.loads(msg.value)
                engine = engine_for(msg.partition)
                touched.add(msg.partition)
                if WATERMARK_FIELD in doc:
                    engine.observe(doc[WATERMARK_FIELD], settings.kafka.partitions, lookup)
                    continue
                key = doc["customer"]
                entry = customers.data.get(key) or {"p": msg.partition, "contacts": []}
                contact = Contact(doc["ts"], doc["interaction_id"], doc["queue"], doc["channel"])
                if engine.add(key, entry["contacts"], contact, msg.offset):
                    put(customers, msg.partition, key, entry)
            for partition in touched:
                put(records, partition, str(partition), engines[partition].record.to_dict())
            await outbox.flush()

    @app.timer(w.publish_interval_seconds, name="publish-fcr")
    async def publish_fcr() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic_name}
        for partition in owned:
            engine_for(partition)
        for partition in set(engines) - owned:  # see streams/lifecycle.py
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
                put(records, partition, str(partition), engine.record.to_dict())
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
