"""The ClickHouse store stage: one per table (the Faust shell: streams/storage.py).

``on_batch`` adds each record's row (schemas/records.py) to the table's sink under the
record's partition; ``flush`` writes them, retrying while the store pushes back
(sinks/base.py), and the shell acknowledges the batch only after it returned, so a
committed offset always means "stored". A record whose row cannot be built is returned
as a ``Failure`` (the shell dead-letters it, processing_error), the rest stored.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from ccpulse.config import Settings
from ccpulse.core.windowing import Windowing
from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import Rejection
from schemas.records import event_message, raw_event_row
from sinks.base import BatchingSink
from streams.stages.io import Consumed, Failure
from streams.stages.validation import FAMILIES, decode_event

Row = dict[str, Any]
RowOf = Callable[[Consumed], Row | None]  # a record's row, None when it has none


def of_value(build: Callable[[Any], Row]) -> RowOf:
    """The row of a record of a JSON topic: built from its decoded value."""
    return lambda record: build(record.value)


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class RawEventRows:
    """The raw_events row of an input record (writer role): decoded with the pipeline's own
    ``decode_event``, so exactly the events the pipeline accepted are stored; the refused
    ones are the pipeline's to dead-letter, and have no row here."""

    def __init__(self, settings: Settings, hasher: CustomerIdHasher | None,
                 now_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.family_of = {settings.topics.name(attr): family for attr, family in FAMILIES.items()}
        self.max_future_ms = int(settings.max_future_seconds * 1000)
        w = settings.windows
        self.windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
        self.hasher = hasher
        self.now_ms = now_ms

    def __call__(self, record: Consumed) -> Row | None:
        raw = record.value
        event = decode_event(raw, self.family_of[record.topic], self.now_ms(), self.max_future_ms,
                             self.windowing)
        if isinstance(event, Rejection):
            return None
        return raw_event_row(event_message(event, raw, record.topic, record.partition, record.offset),
                             self.hasher)


class StoreStage:
    def __init__(self, name: str, sink: BatchingSink, row: RowOf) -> None:
        self.name = name  # the agent's: dead letters name it
        self.sink = sink
        self.row = row

    def on_batch(self, records: Iterable[Consumed]) -> list[Failure]:
        failures: list[Failure] = []
        for record in records:
            try:
                built = self.row(record)
            except Exception as exc:  # one record's failure costs that record only (issue 14)
                failures.append(Failure(record.message, exc))
                continue
            if built is not None:
                self.sink.add(built, record.partition)
        return failures

    async def flush(self, should_stop: Callable[[], bool]) -> bool:
        """Write what ``on_batch`` added; False only if the worker began stopping first
        (the rows are then still held)."""
        return await self.sink.flush(should_stop)
