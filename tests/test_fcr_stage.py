"""FcrStage (streams/stages/fcr.py) without Kafka: contacts stored per customer, event
time from the pipeline's clocks, decided and final FCR windows as partials, a record
that fails costing that record only, the customer key check, partitions rebuilt from
the tables, and expiry of the contacts no window needs any more.

The tables are plain dicts; ``write`` does what the Faust shell does with the outbox.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest

from ccpulse.config import Settings, WindowSettings
from ccpulse.core.fcr import Contact
from schemas.events import parse_timestamp_ms
from schemas.records import window_record_key
from streams.stages.fcr import EXPIRY_SCAN_SECONDS, FcrStage, FcrWrites
from streams.stages.io import TablePut

PARTITIONS = 2
T0 = parse_timestamp_ms("2026-01-05T08:00:00Z")
MIN = 60_000
HORIZON_S, LATENESS_S = 300, 60
# A contact at ts is decided at ts + horizon + lateness; the window of [T0, T0+1min) is
# final once event time passes its end + horizon + lateness.
FIRST_WINDOW_FINAL = T0 + MIN + (HORIZON_S + LATENESS_S) * 1000


@dataclass
class Rec:
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    topic: str = "ccpulse-contacts"


def settings() -> Settings:
    base = Settings()
    return replace(base, kafka=replace(base.kafka, partitions=PARTITIONS),
                   windows=replace(WindowSettings(), sizes=(60,), fcr_horizon_seconds=HORIZON_S,
                                   allowed_lateness_seconds=LATENESS_S))


def contact(customer: str, iid: str, ts: int, kid: str = "k1", queue: str = "billing",
            channel: str = "voice") -> bytes:
    return orjson.dumps({"customer": customer, "kid": kid, "interaction_id": iid, "ts": ts,
                         "queue": queue, "channel": channel})


def clock(ts: int, partitions: range = range(PARTITIONS)) -> bytes:
    """The pipeline's event time, as every lifecycle partition sends it."""
    return orjson.dumps({"watermark": {f"lifecycle/{p}": ts for p in partitions}})


class Tables:
    def __init__(self) -> None:
        self.customers: dict[str, Any] = {}
        self.records: dict[str, Any] = {}

    def stage(self, now: float = 0.0) -> FcrStage:
        return FcrStage(settings(), self.customers, self.records, now=now)

    def write(self, out: FcrWrites) -> FcrWrites:
        """What the shell's outbox does with the table writes."""
        for put in out.customers:
            if put.value is None:
                self.customers.pop(put.key, None)
            else:
                self.customers[put.key] = put.value
        for put in out.records:
            self.records[put.key] = put.value
        return out

    @staticmethod
    def record(out: FcrWrites, partition: int) -> dict[str, Any]:
        [put] = [put for put in out.records if put.partition == partition]
        assert put.key == str(partition)
        return put.value


def window_key(start: int) -> tuple[int, int, str, str, str]:
    return (60, start, "q", "billing", "voice")


def test_a_contact_is_stored_under_its_customer_and_the_record_names_the_key() -> None:
    tables = Tables()
    stage = tables.stage()
    out = tables.write(stage.on_batch([Rec(1, 5, contact("c1", "i1", T0))]))
    entry = {"p": 1, "contacts": [Contact(T0, "i1", "billing", "voice")]}
    assert out.customers == [TablePut(1, "c1", entry)] and tables.customers == {"c1": entry}
    assert tables.record(out, 1)["kid"] == "k1" and tables.record(out, 1)["last_offset"] == 5
    assert out.partials == [] and out.clocks == {} and out.failures == []
    assert set(stage.engines) == {1}
    # The same contact again (a re-delivery) changes no customer; the record notes the offset.
    again = tables.write(stage.on_batch([Rec(1, 6, contact("c1", "i1", T0))]))
    assert again.customers == [] and tables.record(again, 1)["last_offset"] == 6


def test_a_repeat_within_the_horizon_is_not_resolved_and_a_window_becomes_final() -> None:
    tables = Tables()
    stage = tables.stage()
    first = tables.write(stage.on_batch([Rec(0, 0, contact("c1", "i1", T0)),
                                         Rec(0, 1, contact("c2", "i3", T0 + 10_000)),
                                         Rec(0, 2, contact("c1", "i2", T0 + 100_000))]))
    assert [put.key for put in first.customers] == ["c1", "c2"]  # each changed customer once
    assert [c.interaction_id for c in first.customers[0].value["contacts"]] == ["i1", "i2"]
    # One lifecycle partition of two has reported: event time does not move.
    tables.write(stage.on_batch([Rec(0, 3, clock(FIRST_WINDOW_FINAL + 10_000, range(1)))]))
    held = tables.write(stage.on_tick(1.0, {0}))
    assert [(m.value["key"][1], m.value["final"]) for m in held.partials] == [(T0, False), (T0 + MIN, False)]
    assert held.clocks == {"fcr-0": 0} and held.records == []  # (a clock at 0 is never sent)

    tables.write(stage.on_batch([Rec(0, 4, clock(FIRST_WINDOW_FINAL + 10_000))]))
    out = tables.write(stage.on_tick(2.0, {0}))
    [final] = out.partials  # the other window did not change
    assert final.key == window_record_key(window_key(T0)).encode()
    assert final.value == {
        "kind": "window", "key": list(window_key(T0)), "partition": "fcr-0", "version": 3 * 2 + 1,  # 3: past the last contact
        "final": True, "watermark": FIRST_WINDOW_FINAL + 10_000, "end": T0 + MIN,
        # i1 has a repeat (i2, 100 s later): decided, not resolved; i3 is resolved
        "agg": {"counts": {"fcr_contacts": 2, "fcr_decided": 2, "fcr_resolved": 1}, "tops": {}}}
    assert out.clocks == {"fcr-0": FIRST_WINDOW_FINAL + 10_000}
    assert tables.record(out, 0)["final_through"] == FIRST_WINDOW_FINAL + 10_000
    assert tables.record(out, 0)["totals"] == {"billing|voice": [2, 2, 1]}
    # Nothing changed since: nothing to send (the shell's ClockSender sends a clock once).
    quiet = stage.on_tick(3.0, {0})
    assert quiet.partials == [] and quiet.records == [] and quiet.clocks == {"fcr-0": FIRST_WINDOW_FINAL + 10_000}
    # i2 is decided at its ts + horizon + lateness, before its window is final: resolved.
    decided_at = T0 + 100_000 + (HORIZON_S + LATENESS_S) * 1000
    tables.write(stage.on_batch([Rec(0, 5, clock(decided_at))]))
    [still_open] = tables.write(stage.on_tick(4.0, {0})).partials
    assert still_open.value["key"] == list(window_key(T0 + MIN)) and still_open.value["final"] is False
    assert still_open.value["agg"]["counts"] == {"fcr_contacts": 1, "fcr_decided": 1, "fcr_resolved": 1}


def test_a_record_that_fails_costs_that_record_only(caplog: pytest.LogCaptureFixture) -> None:
    tables = Tables()
    stage = tables.stage()
    # The second one has no key id either: failing, it must not change the partition's key.
    bad = [Rec(0, 0, b"{not json"), Rec(0, 1, orjson.dumps({"customer": "c1"})), Rec(0, 2, None)]
    with caplog.at_level(logging.WARNING, logger="streams.stages.fcr"):
        out = tables.write(stage.on_batch([*bad, Rec(0, 3, contact("c1", "i1", T0))]))
    assert not [r for r in caplog.records if "customer key" in r.getMessage()]
    assert [failure.message for failure in out.failures] == bad
    assert all(isinstance(failure.error, Exception) for failure in out.failures)
    assert [put.key for put in out.customers] == ["c1"] and tables.customers["c1"]["contacts"][0].interaction_id == "i1"
    assert tables.record(out, 0)["last_offset"] == 3


def test_contacts_hashed_with_another_key_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    tables = Tables()
    stage = tables.stage()
    tables.write(stage.on_batch([Rec(0, 0, contact("c1", "i1", T0, kid="k1"))]))
    with caplog.at_level(logging.WARNING, logger="streams.stages.fcr"):
        out = tables.write(stage.on_batch([Rec(0, 1, contact("c2", "i2", T0, kid="k2")),
                                           Rec(0, 2, contact("c3", "i3", T0, kid="k2"))]))
        tables.write(stage.on_batch([Rec(0, 3, contact("c4", "i4", T0, kid="k1")),
                                     Rec(0, 4, contact("c5", "i5", T0, kid="k2"))]))
    warnings = [r.getMessage() for r in caplog.records if "customer key" in r.getMessage()]
    assert len(warnings) == 2  # k1 -> k2, k2 -> k1; k1 -> k2 again repeats the first line: not logged
    assert tables.record(out, 0)["kid"] == "k2"


def test_a_partition_is_rebuilt_from_the_tables(caplog: pytest.LogCaptureFixture) -> None:
    tables = Tables()
    first = tables.stage()
    tables.write(first.on_batch([Rec(0, 0, contact("c1", "i1", T0)), Rec(0, 1, contact("c1", "i2", T0 + 100_000)),
                                 Rec(0, 2, clock(FIRST_WINDOW_FINAL + 10_000))]))
    before = tables.write(first.on_tick(1.0, {0}))
    # Another worker (or this one after a restart) owns partition 0 now: same tables.
    second = tables.stage()
    after = tables.write(second.on_tick(1.0, {0}))
    assert before.partials[0].value["final"] is True and after.partials == before.partials[1:]
    assert second.engines[0].record == first.engines[0].record
    # The key its customers were hashed with came back too.
    with caplog.at_level(logging.WARNING, logger="streams.stages.fcr"):
        second.on_batch([Rec(0, 3, contact("c9", "i9", T0 + 200_000, kid="k2"))])
    assert any("customer key k2" in r.getMessage() for r in caplog.records)


def test_on_tick_owns_the_partitions_it_is_given_and_revoke_forgets_one() -> None:
    tables = Tables()
    stage = tables.stage()
    tables.write(stage.on_batch([Rec(1, 0, contact("c1", "i1", T0))]))
    tables.write(stage.on_tick(1.0, {0, 1}))
    assert set(stage.engines) == {0, 1}
    stage.revoke(1)
    assert set(stage.engines) == {0}
    # The customers stay in the table: Faust drops a revoked partition's keys itself.
    assert "c1" in tables.customers
    assert tables.write(stage.on_batch([Rec(1, 1, contact("c1", "i1", T0))])).customers == []
    assert set(stage.engines) == {0, 1}


def test_contacts_no_window_needs_expire_every_scan_interval() -> None:
    tables = Tables()
    stage = tables.stage(now=100.0)
    late = T0 + 20 * MIN
    tables.write(stage.on_batch([Rec(0, 0, contact("c1", "i1", T0)), Rec(0, 1, contact("c2", "i2", T0)),
                                 Rec(0, 2, contact("c2", "i3", late))]))
    done = late - 1000  # past the first contacts' windows and decisions, not the late one's
    tables.write(stage.on_batch([Rec(0, 3, clock(done))]))
    early = tables.write(stage.on_tick(100.0 + EXPIRY_SCAN_SECONDS - 1, {0}))
    assert early.customers == [] and set(tables.customers) == {"c1", "c2"}
    out = tables.write(stage.on_tick(100.0 + EXPIRY_SCAN_SECONDS, {0}))
    assert out.customers == [TablePut(0, "c1", None),
                             TablePut(0, "c2", {"p": 0, "contacts": [Contact(late, "i3", "billing", "voice")]})]
    assert set(tables.customers) == {"c2"}
    # The next scan is an interval later.
    tables.write(stage.on_batch([Rec(0, 4, clock(late + 2 * (HORIZON_S + LATENESS_S) * 1000))]))
    assert tables.write(stage.on_tick(100.0 + 2 * EXPIRY_SCAN_SECONDS - 1, {0})).customers == []
    assert tables.write(stage.on_tick(100.0 + 2 * EXPIRY_SCAN_SECONDS, {0})).customers == [TablePut(0, "c2", None)]
