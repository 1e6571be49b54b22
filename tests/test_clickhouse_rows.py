"""Every ClickHouse row ccpulse writes is built in one module (schemas/records.py), and what
each builder makes is what its table holds: stored in a real embedded store, every
column the table has without a default is in the row, and it reads back.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterator

import orjson
import pytest

import schemas.records as records
from ccpulse.config import Settings
from ccpulse.core.kpis import QUEUE, WindowAgg
from ccpulse.core.lifecycle import Interaction
from ccpulse.core.scorecard import scorecard_record
from ccpulse.core.sla import DEFAULT_TARGETS, Hold, QueueSla
from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import decode
from sinks.clickhouse import TABLES, ClickHouseWriter

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
RAW = orjson.dumps({"event_id": "e1", "type": "call.offered", "occurred_at": "2026-01-05T08:00:00.000Z",
                    "interaction_id": "i1", "queue": "billing", "customer_id": "+15551234567",
                    "schema_version": 1, "extra": {"kept": True}})


def window_record(scope: str = QUEUE, name: str = "billing") -> dict[str, Any]:
    agg = WindowAgg()
    agg.counts.update(offered=2, answered=2, answered_within_target=2, handled=1, handle_ms=60_000)
    return records.window_record((900, T0, scope, name, "voice"), T0 + 900_000, agg,
                                 Settings().thresholds_for(name, "voice"), version=3, final=True, now_ms=T0)


def breach() -> dict[str, Any]:
    sla, hold = QueueSla("billing", "voice"), Hold(0, 0)
    events = sla.observe({"service_level": 0.1}, T0, DEFAULT_TARGETS["voice"], hold, seq=(T0, 0), source="state")
    events += sla.observe({"service_level": 0.1}, T0 + 1000, DEFAULT_TARGETS["voice"], hold, seq=(T0 + 1000, 1),
                          source="state")
    return events[0].to_record(T0)


def interaction() -> Interaction:
    return Interaction("i1", "voice")


# table -> the rows the pipeline writes to it, built by schemas.records from real domain objects
ROWS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "raw_events": lambda: [records.raw_event_row(
        orjson.loads(orjson.dumps(records.event_message(decode(RAW, "call", T0), RAW, "calls", 0, 7))),
        CustomerIdHasher.from_secret("k" * 32))],
    "interactions": lambda: records.interaction_rows(_offered(), version=1),
    "kpi_windows": lambda: [window_record()],
    "agent_windows": lambda: [window_record("a", "agent-7")],
    "sla_breaches": lambda: [records.breach_row(breach())],
    "scorecards": lambda: [records.scorecard_row(scorecard_record(window_record(), Settings().scorecard, T0))],
}


def _offered() -> Interaction:
    inter = interaction()
    doc = orjson.loads(orjson.dumps(records.event_message(decode(RAW, "call", T0), RAW, "calls", 0, 7)))
    inter.add(records.step_from_message(doc))
    return inter


def test_every_table_written_has_its_row_builder_here() -> None:
    assert set(ROWS) == set(TABLES)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseWriter]:
    with ClickHouseWriter(f"chdb://{tmp_path_factory.mktemp('rows-store')}") as writer:
        yield writer


@pytest.mark.parametrize("table", TABLES)
def test_each_row_holds_every_column_of_its_table_and_is_stored(store: ClickHouseWriter, table: str) -> None:
    rows = ROWS[table]()
    assert rows
    required = [c for c, _type, default_kind, *_ in store.client.query(f"DESCRIBE TABLE {table}").result_rows
                if default_kind == "" and not _type.startswith("Nullable")]
    for row in rows:
        assert not set(required) - set(row), f"{table} row lacks {sorted(set(required) - set(row))}"
    assert asyncio.run(store.write(table, rows)) is True
    assert store.client.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0] == len(rows)


def test_the_raw_store_keeps_the_payload_with_the_customer_hashed(store: ClickHouseWriter) -> None:
    hasher = CustomerIdHasher.from_secret("k" * 32)
    [row] = ROWS["raw_events"]()
    assert row["customer_id"] == hasher.hash("+15551234567")
    assert orjson.loads(row["payload"])["customer_id"] == row["customer_id"]
    assert orjson.loads(row["payload"])["extra"] == {"kept": True}
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("calls", 0, 7)
