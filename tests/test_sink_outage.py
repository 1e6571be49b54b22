"""The ClickHouse writer under failing writes, in process: capped backoff, one batch held,
health and gauges saying why and since when, and catch-up with no loss or duplicate.

The real store is made unwritable with ccpulse.tools.fault_injection (chattr +i); the backoff
sequence is checked against a client that fails a known number of times.
The end-to-end version with a worker process is tests/test_sink_outage_integration.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ccpulse.tools.fault_injection import (FaultInjectionUnavailable, make_store_unwritable,
                                     store_unwritable_unsupported)
from sinks.clickhouse import ClickHouseWriter
from sinks.prometheus import PipelineMetrics


def raw_row(i: int, month: str = "2026-01") -> dict[str, Any]:
    return {"event_id": f"e{i}", "type": "call.offered", "channel": "voice",
            "occurred_at": f"{month}-05T08:00:00.000Z", "interaction_id": f"i{i}", "queue": "q",
            "agent_id": None, "customer_id": None, "schema_version": 1, "source_topic": "calls",
            "source_partition": 0, "source_offset": i, "payload": "{}"}


class FlakyClient:
    """Fails the first ``failures`` inserts, then stores rows in a list."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rows: list[list[Any]] = []

    def raw_insert(self, table: str, column_names: list[str], insert_block: bytes, settings: Any = None,
                   fmt: str = "") -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Connection refused")
        assert fmt == "JSONEachRow"
        self.rows.extend([row[c] for c in column_names] for row in map(orjson.loads, insert_block.split(b"\n")))


def test_backoff_doubles_up_to_the_cap_and_the_batch_is_written_once() -> None:
    delays: list[float] = []
    writer = ClickHouseWriter("http://h:1", initial_backoff=0.01, max_backoff=0.05)
    writer.on_error = lambda table, exc: delays.append(writer.retry_backoff())
    writer.client = FlakyClient(failures=6)
    writer._columns["raw_events"] = list(raw_row(0))
    rows = [raw_row(i) for i in range(3)]
    assert asyncio.run(writer.write("raw_events", rows)) is True
    assert delays == [0.01, 0.02, 0.04, 0.05, 0.05, 0.05]
    assert [r[0] for r in writer.client.rows] == ["e0", "e1", "e2"]
    assert writer.healthy and writer.failing_since() is None and writer.retry_backoff() == 0
    assert writer.pending_rows() == 0 and writer.oldest_unwritten_age() == 0


def test_a_stopping_worker_gives_up_the_batch_unacknowledged() -> None:
    writer = ClickHouseWriter("http://h:1", initial_backoff=5, max_backoff=5)
    writer.client = FlakyClient(failures=100)
    writer._columns["raw_events"] = list(raw_row(0))
    stop = {"now": False}

    async def run() -> bool:
        task = asyncio.create_task(writer.write("raw_events", [raw_row(1)], lambda: stop["now"]))
        await asyncio.sleep(0.3)
        stop["now"] = True
        return await asyncio.wait_for(task, 3)  # woken from its 5 s backoff, not after it

    assert asyncio.run(run()) is False
    assert writer.client.rows == []


def test_one_table_failing_keeps_the_writer_unhealthy_until_it_succeeds() -> None:
    class OneTableDown(FlakyClient):
        def raw_insert(self, table: str, *args: Any, **kwargs: Any) -> None:
            if table == "kpi_windows" and self.failures:
                self.failures -= 1
                raise ConnectionError("Connection refused")
            self.rows.append([table])

    writer = ClickHouseWriter("http://h:1", initial_backoff=0.01)
    writer.client = OneTableDown(failures=100)
    writer._columns.update(raw_events=["event_id"], kpi_windows=["queue"])

    async def run() -> None:
        assert await writer.write("kpi_windows", [{"queue": "q"}], lambda: True) is False
        assert await writer.write("raw_events", [{"event_id": "e"}])

    asyncio.run(run())
    part = writer.health_part()
    assert not writer.healthy and part["failing_tables"] == ["kpi_windows"] and part["pending_rows"] == 1
    assert part["last_error"] == "kpi_windows: Connection refused"
    writer.client.failures = 0
    assert asyncio.run(writer.sink("kpi_windows").flush())  # the held row, written now
    assert writer.client.rows == [["raw_events"], ["kpi_windows"]]
    assert writer.healthy and writer.health_part() == {"ok": True, "dsn": "http://h:1",
                                                       "pending_rows": 0, "detail": "writing"}


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with ClickHouseWriter(f"chdb://{tmp_path / 'store'}", initial_backoff=0.05, max_backoff=0.2) as writer:
        yield writer


def test_a_batch_keeps_the_newest_version_of_each_key_as_the_table_would(store: ClickHouseWriter) -> None:
    # The key is the table's own sorting key, read from the store (not a second copy of the DDL).
    inserted: list[list[dict[str, Any]]] = []
    insert_now = store.insert_now
    store.insert_now = lambda table, rows: (inserted.append(list(rows)), insert_now(table, rows))[1]
    sink = store.sink("interactions")
    for segment, version, outcome in ((0, 1, "waiting"), (1, 1, "waiting"), (0, 3, "answered"), (0, 2, "waiting")):
        sink.add({"interaction_id": "i1", "segment": segment, "channel": "voice", "queue": "q",
                  "offered_at": "2026-01-05T08:00:00.000Z", "outcome": outcome, "version": version})
    assert asyncio.run(sink.flush()) is True
    assert sorted((r["segment"], r["version"]) for r in inserted[0]) == [(0, 3), (1, 1)]
    rows = store.client.query("SELECT segment, outcome FROM interactions FINAL ORDER BY segment").result_rows
    assert rows == [(0, "answered"), (1, "waiting")]
    # raw events carry no version: every row goes in (the table keeps one per event_id)
    store.insert_now = insert_now
    assert asyncio.run(store.write("raw_events", [raw_row(1), raw_row(1)]))
    assert store.client.query("SELECT count() FROM raw_events FINAL").result_rows[0][0] == 1


def test_history_batch_spanning_many_months_is_stored(store: ClickHouseWriter) -> None:
    # 150 monthly partitions in one insert: ClickHouse refuses more than 100 by default,
    # and a refused batch would be retried forever (a replay would never finish).
    rows = [raw_row(m, f"{2000 + m // 12:04d}-{m % 12 + 1:02d}") for m in range(150)]
    assert asyncio.run(store.write("raw_events", rows)) is True
    assert store.client.query("SELECT count() FROM raw_events FINAL").result_rows[0][0] == 150


def test_unwritable_store_then_recovery(store: ClickHouseWriter, tmp_path: Path) -> None:
    reason = store_unwritable_unsupported(tmp_path)
    if reason:
        pytest.skip(f"cannot make a store unwritable here: {reason}")
    metrics = PipelineMetrics(dict)
    metrics.watch_sink("clickhouse", lambda: store.healthy, store.failing_since, store.retry_backoff,
                       store.pending_rows, store.oldest_unwritten_age)

    def gauge(name: str) -> float:
        value = metrics.registry.get_sample_value(name, {"sink": "clickhouse"})
        assert value is not None, name
        return value

    assert asyncio.run(store.write("raw_events", [raw_row(0)]))
    assert gauge("ccpulse_sink_up") == 1
    restore = make_store_unwritable(store.dsn[len("chdb://"):])
    observed: dict[str, Any] = {}

    async def run() -> bool:
        before = time.time()
        task = asyncio.create_task(store.write("raw_events", [raw_row(i) for i in range(1, 11)]))
        while store.healthy or store.retry_backoff() < 0.2:  # failing, backoff at its cap
            await asyncio.sleep(0.05)
            assert not task.done(), "the write finished although the store is unwritable"
        await asyncio.sleep(0.3)
        observed.update(part=store.health_part(), up=gauge("ccpulse_sink_up"),
                        since=gauge("ccpulse_sink_failing_since_seconds"), before=before,
                        pending=gauge("ccpulse_sink_pending_rows"),
                        age=gauge("ccpulse_sink_oldest_unwritten_seconds"),
                        backoff=gauge("ccpulse_sink_retry_backoff_seconds"))
        restore()
        return await asyncio.wait_for(task, 10)

    try:
        assert asyncio.run(run()) is True
    finally:
        restore()
    part = observed["part"]
    assert part["ok"] is False and part["failing_tables"] == ["raw_events"]
    assert "Operation not permitted" in part["last_error"] and part["failing_since"].endswith("Z")
    assert part["pending_rows"] == 10 and part["retry_backoff_seconds"] == 0.2
    assert observed["up"] == 0 and observed["since"] >= observed["before"] - 1
    assert observed["pending"] == 10 and observed["age"] >= 0.3 and observed["backoff"] == 0.2
    assert store.healthy and gauge("ccpulse_sink_up") == 1 and gauge("ccpulse_sink_pending_rows") == 0
    rows = store.client.query("SELECT event_id, count() FROM raw_events GROUP BY event_id").result_rows
    assert sorted(rows) == sorted((f"e{i}", 1) for i in range(11))  # every row, each once


def test_fault_injection_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(FaultInjectionUnavailable):
        make_store_unwritable(tmp_path / "nothing-here")


class _ListedThenRemoved:
    """A scandir iterator over entries listed before one of them was removed."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self.entries = iter(entries)

    def __enter__(self) -> "_ListedThenRemoved":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> "_ListedThenRemoved":
        return self

    def __next__(self) -> os.DirEntry[str]:
        return next(self.entries)


def test_fault_injection_ignores_a_part_directory_removed_while_it_walks(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The chaos run's sink-outage once failed with FileNotFoundError on a tmp_insert_*
    directory: chDB removed it between the walk listing it and reading it."""
    reason = store_unwritable_unsupported(tmp_path)
    if reason:
        pytest.skip(f"cannot make a store unwritable here: {reason}")
    root = tmp_path / "store"
    (root / "part_1").mkdir(parents=True)
    (root / "tmp_insert_2" / "inner").mkdir(parents=True)
    real_scandir = os.scandir
    listed: list[os.DirEntry[str]] = []

    def scandir(path: Any) -> Any:
        """Every listing of the root names tmp_insert_2, which is gone once listed."""
        if isinstance(path, int) or Path(path) != root:
            return real_scandir(path)
        if not listed:
            with real_scandir(path) as it:
                listed.extend(it)
            shutil.rmtree(root / "tmp_insert_2")
        return _ListedThenRemoved(listed)

    monkeypatch.setattr(os, "scandir", scandir)
    restore = make_store_unwritable(root)
    monkeypatch.undo()
    try:
        with pytest.raises(OSError):
            (root / "part_2").mkdir()
        with pytest.raises(OSError):
            (root / "part_1" / "x").touch()
    finally:
        restore()
    (root / "part_2").mkdir()  # writable again, the directory listed after the vanished one too
    (root / "part_1" / "x").touch()
