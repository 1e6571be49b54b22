"""The FCR stage: first-contact resolution, keyed by (hashed) customer (docs/streaming-layer.md).

The pipeline stage sends one contact per interaction that has a customer id to
``<app>-contacts``, keyed by a hash of the customer id, so every contact of a customer
meets on one partition. A pure ``FcrEngine`` per partition (ccpulse/core/fcr.py)
decides each contact once the horizon has passed, in the pipeline's event time (its
clock records on the same topic), and publishes the delayed FCR part of the contact's
windows as partials, which the merge stage folds into the same ``kpi.windows`` records.

State lives in two tables, handed in as plain mappings: each customer's contacts
(``CustomerEntry``, changed here in place, since deciding reads them back) and one
record per partition (``FcrRecord`` as a dict, with the id of the key its customers
are hashed with). ``on_batch`` and ``on_tick`` return the ``FcrWrites`` the Faust
shell (streams/fcr.py) writes before it acknowledges the records behind them.

No Faust here: tests drive it with plain records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, MutableMapping, Protocol, TypedDict

import orjson

from ccpulse.config import Settings
from ccpulse.core.fcr import Contact, FcrEngine, FcrRecord, FcrSnapshot
from ccpulse.core.merge_clock import fcr_source
from ccpulse.core.windowing import Windowing
from ccpulse.pseudonym import CustomerIdHasher
from schemas.records import window_record_key
from streams.stages.io import Failure, Message, TablePut

# A contact sent by the pipeline is re-checked for expiry this often (monotonic seconds).
EXPIRY_SCAN_SECONDS = 30.0
# A message on the contacts topic with only this field is the pipeline's clock
# ({"lifecycle/<p>": event time of partition p}), not a contact.
WATERMARK_FIELD = "watermark"
# In a contact and in the partition's stored record: which key hashed its customers.
KEY_ID_FIELD = "kid"

log = logging.getLogger(__name__)


class CustomerEntry(TypedDict):
    """A customer's value in the fcr-customers table (its codec: streams/codecs.py)."""

    p: int  # the partition of <app>-contacts the customer's key is on
    contacts: list[Contact]


class ContactRecord(Protocol):
    """A consumed record of ``<app>-contacts``, as Faust's messages have it (the shell
    passes the messages themselves: a failed one is dead-lettered as it was read)."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class FcrWrites:
    """What must be written before the records behind it are acknowledged."""

    # fcr-customers, each changed customer once, as the mapping holds it now (value None:
    # deleted); already applied to the mapping, since deciding reads it back
    customers: list[TablePut] = field(default_factory=list)
    records: list[TablePut] = field(default_factory=list)  # fcr-records: str(partition) -> its record
    partials: list[Message] = field(default_factory=list)  # -> <app>-window-partials
    # merge clock source ("fcr-<p>") -> its watermark: sent after ``partials``, which it covers
    clocks: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)  # dead-lettered by the shell (streams/guard.py)


def contact_message(hasher: CustomerIdHasher, customer_id: str, interaction_id: str, ts: int,
                    queue: str | None, channel: str) -> Message:
    """The pipeline's contact for this stage, keyed by the hashed customer (the only form
    of the customer id that leaves the pipeline)."""
    customer = hasher.hash(customer_id)
    return Message(customer.encode(), orjson.dumps(
        {"customer": customer, KEY_ID_FIELD: hasher.key_id, "interaction_id": interaction_id,
         "ts": ts, "queue": queue, "channel": channel}))


def fcr_partial(snap: FcrSnapshot, partition: int, watermark: int, end: int) -> Message:
    """An FCR partial for the merge stage: its own source, so it never replaces the KPI part."""
    return Message(window_record_key(snap.key).encode(), {
        "kind": "window", "key": list(snap.key), "partition": fcr_source(partition),
        "version": snap.version, "final": snap.final, "watermark": watermark,
        "end": end,
        "agg": {"counts": {"fcr_contacts": snap.contacts, "fcr_decided": snap.decided,
                           "fcr_resolved": snap.resolved}, "tops": {}}})


class FcrStage:
    def __init__(self, settings: Settings, customers: MutableMapping[str, CustomerEntry | None],
                 records: MutableMapping[str, dict[str, Any] | None], now: float = 0.0) -> None:
        """``customers`` and ``records``: the tables' data. ``now``: monotonic seconds at
        start; the first expiry scan is ``EXPIRY_SCAN_SECONDS`` later."""
        w = settings.windows
        self.windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
        self.horizon_ms = int(w.fcr_horizon_seconds * 1000)
        self.lateness_ms = int(w.allowed_lateness_seconds * 1000)
        self.partitions = settings.kafka.partitions  # the pipeline partitions whose clocks count
        self.customers = customers
        self.records = records
        self.engines: dict[int, FcrEngine] = {}
        # partition -> id of the key its customers are hashed with ("": before keyed hashes)
        self._state_keys: dict[int, str] = {}
        self._warned: set[tuple[int, str, str]] = set()
        self._last_expiry = now

    # -- partitions -------------------------------------------------------------

    def assign(self, partition: int) -> FcrEngine:
        """Own ``partition``: its engine rebuilt from the tables (windows are derived, never stored)."""
        stored = self.records.get(str(partition))
        if stored:
            self._state_keys[partition] = stored.get(KEY_ID_FIELD, "")
        engine = FcrEngine(self.windowing, self.horizon_ms, self.lateness_ms,
                           FcrRecord.from_dict(stored) if stored else FcrRecord())
        engine.rebuild([(key, entry["contacts"]) for key, entry in list(self.customers.items())
                        if entry is not None and entry["p"] == partition])
        self.engines[partition] = engine
        return engine

    def revoke(self, partition: int) -> None:
        """Another worker owns ``partition`` now (its customers stay in the table: Faust drops them)."""
        self.engines.pop(partition, None)
        self._state_keys.pop(partition, None)

    def _engine(self, partition: int) -> FcrEngine:
        engine = self.engines.get(partition)
        return engine if engine is not None else self.assign(partition)

    # -- input ----------------------------------------------------------------

    def on_batch(self, records: Iterable[ContactRecord]) -> FcrWrites:
        """Contacts and clocks of ``<app>-contacts``, each partition's in offset order."""
        out = FcrWrites()
        touched: set[int] = set()
        changed: dict[str, int] = {}  # customer -> its partition, in the order first changed
        for record in records:
            try:
                self._one(record, touched, changed)
            except Exception as exc:  # one record's failure costs that record only (issue 14)
                out.failures.append(Failure(record, exc))
        out.customers = [TablePut(partition, key, self.customers.get(key)) for key, partition in changed.items()]
        out.records = [self._record_put(partition) for partition in sorted(touched)]
        return out

    def _one(self, record: ContactRecord, touched: set[int], changed: dict[str, int]) -> None:
        doc = orjson.loads(record.value)  # type: ignore[arg-type]
        engine = self._engine(record.partition)
        touched.add(record.partition)
        if WATERMARK_FIELD in doc:
            engine.observe(doc[WATERMARK_FIELD], self.partitions, self._lookup)
            return
        # Everything read before any state changes: a malformed contact changes nothing.
        key: str = doc["customer"]
        contact = Contact(doc["ts"], doc["interaction_id"], doc["queue"], doc["channel"])
        self._check_key(record.partition, doc.get(KEY_ID_FIELD, ""))
        entry = self.customers.get(key) or CustomerEntry(p=record.partition, contacts=[])
        if engine.add(key, entry["contacts"], contact, record.offset):
            self.customers[key] = entry
            changed.setdefault(key, record.partition)

    def _lookup(self, customer: str) -> list[Contact] | None:
        entry = self.customers.get(customer)
        return entry["contacts"] if entry is not None else None

    def _check_key(self, partition: int, key_id: str) -> None:
        """A contact hashed with another key than the partition's state cannot meet that
        customer's earlier contacts: FCR would count repeats as resolved. Say so."""
        before = self._state_keys.setdefault(partition, key_id)
        if before == key_id:
            return
        self._state_keys[partition] = key_id
        if (partition, before, key_id) not in self._warned:
            self._warned.add((partition, before, key_id))
            log.warning("FCR partition %d: contacts hashed with customer key %s meet state hashed with %s "
                        "(the key changed, a worker has another [fcr] customer_key, or the state predates "
                        "keyed hashes): contacts of one customer before and after are not linked until "
                        "windows.fcr_horizon_seconds has passed", partition, key_id or "(none)",
                        before or "(none: unkeyed SHA-256)")

    def _record_put(self, partition: int) -> TablePut:
        doc = self.engines[partition].record.to_dict()
        if partition in self._state_keys:
            doc[KEY_ID_FIELD] = self._state_keys[partition]
        return TablePut(partition, str(partition), doc)

    # -- time -----------------------------------------------------------------

    def on_tick(self, now: float, owned: Iterable[int]) -> FcrWrites:
        """The publish timer: own the ``owned`` partitions, publish what was decided or
        became final, and (every ``EXPIRY_SCAN_SECONDS`` of monotonic ``now``) forget the
        contacts no window needs any more."""
        out = FcrWrites()
        for partition in owned:
            self._engine(partition)
        for partition, engine in self.engines.items():
            before = engine.record.final_through
            for snap in engine.close() + engine.take_dirty():
                out.partials.append(fcr_partial(snap, partition, engine.record.watermark,
                                                self.windowing.end(snap.key[0], snap.key[1])))
            out.clocks[fcr_source(partition)] = engine.record.watermark
            if engine.record.final_through != before:
                out.records.append(self._record_put(partition))
        if now - self._last_expiry >= EXPIRY_SCAN_SECONDS:
            self._expire(out)
            self._last_expiry = now
        return out

    def _expire(self, out: FcrWrites) -> None:
        for key, entry in list(self.customers.items()):
            engine = self.engines.get(entry["p"]) if entry is not None else None
            if engine is None or entry is None:
                continue
            gone = engine.expired(entry["contacts"])
            if not gone:
                continue
            entry["contacts"] = [c for c in entry["contacts"] if c not in gone]
            if entry["contacts"]:
                out.customers.append(TablePut(entry["p"], key, entry))
            else:
                del self.customers[key]
                out.customers.append(TablePut(entry["p"], key, None))
