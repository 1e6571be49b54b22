"""The ClickHouse store stage (streams/stages/store.py) without Kafka or ClickHouse: a fake
sink, small objects for the consumed records. Rows under their record's partition, a record
whose row cannot be built fails alone, a store that pushes back keeps the batch (nothing
acknowledged until it is written), and the raw-event rows are the pipeline's decoding."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import orjson

from ccpulse.config import Settings
from ccpulse.core.sla import DEFAULT_TARGETS, Hold, QueueSla
from ccpulse.core.timestamps import format_ms
from ccpulse.core.windowing import Windowing
from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import parse_timestamp_ms
from schemas.records import breach_row, event_message, raw_event_row
from sinks.base import BatchingSink, SinkBackpressureError, SinkBatch
from streams.stages.io import Consumed
from streams.stages.store import RawEventRows, StoreStage, of_value
from streams.stages.validation import decode_event

T0 = parse_timestamp_ms("2026-01-05T08:00:00Z")
NOW = T0 + 60_000
DAY_MS = 86_400_000  # max_future_seconds by default


class FakeStore(BatchingSink):
    """Pushes back the first ``failures`` writes, then keeps every row it was handed."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__("kpi_windows", initial_backoff=0.001, max_backoff=0.002)
        self.failures = failures
        self.written: list[tuple[int, Any]] = []
        self.attempts = 0

    async def write(self, batches: Sequence[SinkBatch]) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise SinkBackpressureError("store down")
        self.written += [(b.partition, row) for b in batches for row in b.rows]


def rec(value: Any, partition: int = 0, offset: int = 0, topic: str = "kpi.windows") -> Consumed:
    return Consumed(topic, partition, offset, value, message=(topic, partition, offset))


def test_each_row_goes_to_the_sink_under_its_partition_and_is_written_at_flush() -> None:
    sink = FakeStore()
    stage = StoreStage("store-kpi-windows", sink, of_value(lambda v: v))
    failures = stage.on_batch([rec({"n": 1}, 1), rec({"n": 2}, 0, 1), rec({"n": 3}, 1, 2)])
    assert failures == [] and sink.written == [] and sink.pending_rows() == 3
    assert asyncio.run(stage.flush(lambda: False)) is True
    assert sink.written == [(0, {"n": 2}), (1, {"n": 1}), (1, {"n": 3})]


def test_a_record_without_a_row_is_skipped_and_one_that_raises_fails_alone() -> None:
    sink = FakeStore()
    stage = StoreStage("store-sla-breaches", sink, of_value(breach_row))
    sla, hold = QueueSla("billing", "voice"), Hold(0, 0)
    good = [b.to_record(T0) for at in (T0, T0 + 1000) for b in sla.observe(
        {"service_level": 0.1}, at, DEFAULT_TARGETS["voice"], hold, seq=(at, 0), source="state")]
    failures = stage.on_batch([rec({"breach_id": "x"}), rec(good[0], offset=1)])
    assert [(f.message, type(f.error)) for f in failures] == [(("kpi.windows", 0, 0), KeyError)]
    asyncio.run(stage.flush(lambda: False))
    assert sink.written == [(0, breach_row(good[0]))]
    nothing = StoreStage("store-x", FakeStore(), lambda r: None)
    assert nothing.on_batch([rec({"n": 1})]) == [] and nothing.sink.pending_rows() == 0


def test_a_store_that_pushes_back_keeps_the_batch_until_it_is_written() -> None:
    sink = FakeStore(failures=3)
    stage = StoreStage("store-kpi-windows", sink, of_value(lambda v: v))
    stage.on_batch([rec({"n": i}, i % 2, i) for i in range(4)])
    assert asyncio.run(stage.flush(lambda: False)) is True
    assert sink.attempts == 4
    assert sink.written == [(0, {"n": 0}), (0, {"n": 2}), (1, {"n": 1}), (1, {"n": 3})]  # once each, by partition


def test_a_stop_during_an_outage_returns_unwritten_with_the_rows_still_held() -> None:
    sink = FakeStore(failures=1)
    stage = StoreStage("store-kpi-windows", sink, of_value(lambda v: v))
    stage.on_batch([rec({"n": 1})])
    assert asyncio.run(stage.flush(lambda: True)) is False
    assert sink.written == [] and sink.pending_rows() == 1 and not sink.healthy
    stage.on_batch([rec({"n": 2}, offset=1)])
    assert asyncio.run(stage.flush(lambda: False)) is True
    assert sink.written == [(0, {"n": 1}), (0, {"n": 2})] and sink.healthy


def call(n: int, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "type": "call.offered", "occurred_at": format_ms(T0),
                         "interaction_id": f"i{n}", "queue": "billing", **extra})


def test_raw_event_rows_are_the_events_the_pipeline_accepts() -> None:
    settings = Settings()
    rows = RawEventRows(settings, None, now_ms=lambda: NOW)
    calls = settings.topics.name("calls")
    raw = call(1)
    w = settings.windows
    expected = raw_event_row(event_message(
        decode_event(raw, "call", NOW, int(settings.max_future_seconds * 1000),
                     Windowing(w.sizes, w.timezone, w.day_start_hour)), raw, calls, 2, 7))  # type: ignore[arg-type]
    assert rows(rec(raw, 2, 7, topic=calls)) == expected
    assert (expected["source_topic"], expected["source_partition"], expected["source_offset"]) == (calls, 2, 7)
    # Refused events are the pipeline's to dead-letter: no row, no failure.
    assert rows(rec(b"{not json", 0, 8, topic=calls)) is None
    assert rows(rec(call(2, occurred_at=format_ms(NOW + DAY_MS + 60_000)), 0, 9, topic=calls)) is None  # future
    stage = StoreStage("store-raw-events", FakeStore(), rows)
    failures = stage.on_batch([rec(raw, topic="unknown-topic")])
    assert [type(f.error) for f in failures] == [KeyError]


def test_raw_event_rows_hash_the_customer_id_when_configured() -> None:
    settings = Settings()
    hasher = CustomerIdHasher.from_secret("s3cret")
    rows = RawEventRows(settings, hasher, now_ms=lambda: NOW)
    row = rows(rec(call(1, customer_id="alice"), topic=settings.topics.name("calls")))
    assert row is not None and row["customer_id"] == hasher.hash("alice")
    assert "alice" not in row["payload"]


def test_the_wall_clock_is_read_per_record_for_the_future_limit() -> None:
    # A writer catching up reads events stamped after it started: each is judged at its read.
    settings = Settings()
    clock = [T0 - DAY_MS - 60_000]
    rows = RawEventRows(settings, None, now_ms=lambda: int(clock[0]))
    calls = settings.topics.name("calls")
    assert rows(rec(call(1), topic=calls)) is None
    clock[0] = NOW
    assert rows(rec(call(1), topic=calls)) is not None
