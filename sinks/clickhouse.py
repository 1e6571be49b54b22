"""ClickHouse sink: embedded chDB (``chdb://PATH``) or a server (``http(s)://``), same code.

Writes are batched by the calling agent and retried with backoff until they
succeed: a failed write is never dropped, and since the agent does not take the
next batch meanwhile, Kafka consumption stops (backpressure) instead of data
piling up in memory. Tables are ReplacingMergeTree, so a batch written twice
(re-delivery after a crash) counts once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlparse

import clickhouse_connect

log = logging.getLogger(__name__)

# Columns that arrive as RFC 3339 strings and are DateTime64 in ClickHouse.
TIME_COLUMNS = {
    "raw_events": ("occurred_at",),
    "interactions": ("offered_at", "left_queue_at", "ended_at", "transfer_times"),
    "kpi_windows": ("window_start", "window_end", "published_at"),
    "agent_windows": ("window_start", "window_end", "published_at"),
    "sla_breaches": ("violating_since", "opened_at", "resolved_at", "as_of", "published_at"),
    "scorecards": ("window_start", "window_end", "published_at"),
}


class ClickHouseUnavailable(RuntimeError):
    """The store cannot be reached or opened (one-line message for the CLI)."""


def ddl_statements() -> list[str]:
    folder = resources.files("schemas") / "clickhouse"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


def connect(dsn: str) -> Any:
    """A clickhouse-connect client for ``chdb://PATH`` or ``http(s)://user:pass@host:port/db``."""
    try:
        if dsn.startswith("chdb://"):
            # clickhouse-connect reads chdb://./x as host "." + database "x"; ccpulse
            # means a path (relative or absolute), so it is passed as one.
            path = dsn[len("chdb://"):] or ":memory:"
            if path not in (":memory:", "memory"):
                Path(path).mkdir(parents=True, exist_ok=True)
                path = str(Path(path).resolve())
            return clickhouse_connect.get_client(interface="chdb", path=path)
        url = urlparse(dsn)
        database = unquote(url.path.lstrip("/")) or "default"
        return clickhouse_connect.get_client(
            host=url.hostname or "localhost", port=url.port or (8443 if url.scheme == "https" else 8123),
            username=unquote(url.username or "default"), password=unquote(url.password or ""),
            database=database, secure=url.scheme == "https")
    except Exception as exc:  # the driver raises many kinds; the CLI needs one line
        raise ClickHouseUnavailable(f"ClickHouse at {redact(dsn)} unavailable: "
                                    f"{str(exc).splitlines()[0][:200]}") from exc


def redact(dsn: str) -> str:
    url = urlparse(dsn)
    if url.password:
        return dsn.replace(f":{url.password}@", ":***@")
    return dsn


def _to_datetime(value: Any) -> Any:
    if isinstance(value, list):
        return [_to_datetime(item) for item in value]
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


@dataclass(frozen=True)
class Retention:
    """Days to keep rows, applied as table TTLs by :meth:`ClickHouseWriter.open`.

    0 means "not managed by ccpulse": that table's TTL is left as it is (none when
    ccpulse created the table), so a TTL an operator set by hand survives restarts.
    """

    raw_days: int = 0           # raw_events, by occurred_at
    interactions_days: int = 0  # interactions, by offered_at
    windows_days: int = 0       # kpi_windows and agent_windows shorter than a day
    daily_days: int = 0         # 1-day windows: the source of the trend rollups (kpi_daily, ...)

    def ttl_clauses(self) -> dict[str, str]:
        """table -> TTL expression, written the way ClickHouse shows it in system.tables."""
        out: dict[str, str] = {}
        if self.raw_days:
            out["raw_events"] = f"toDateTime(occurred_at) + toIntervalDay({int(self.raw_days)})"
        if self.interactions_days:
            out["interactions"] = f"toDateTime(offered_at) + toIntervalDay({int(self.interactions_days)})"
        rules = []
        if self.windows_days:
            rules.append(f"toDateTime(window_start) + toIntervalDay({int(self.windows_days)}) WHERE window != '1d'")
        if self.daily_days:
            rules.append(f"toDateTime(window_start) + toIntervalDay({int(self.daily_days)}) WHERE window = '1d'")
        if rules:
            out["kpi_windows"] = out["agent_windows"] = ", ".join(rules)
        return out


def current_ttl(client: Any, table: str) -> str:
    """The table's TTL expression as ClickHouse reports it ("" when it has none)."""
    rows = client.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                        "AND name = {t:String}", parameters={"t": table}).result_rows
    match = re.search(r" TTL (.*?)(?: SETTINGS |$)", rows[0][0] if rows else "")
    return match.group(1).strip() if match else ""


@dataclass
class ClickHouseWriter:
    dsn: str
    on_write: Callable[[str, int, float], None] = lambda table, rows, seconds: None
    on_error: Callable[[str, Exception], None] = lambda table, exc: None
    max_backoff: float = 10.0
    client: Any = None
    healthy: bool = True
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _columns: dict[str, list[str]] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)

    def open(self) -> None:
        self.client = connect(self.dsn)
        for statement in ddl_statements():
            self.client.command(statement)
        self.apply_retention()
        for table in TIME_COLUMNS:
            described = self.client.query(f"DESCRIBE TABLE {table}").result_rows
            self._columns[table] = [row[0] for row in described if row[2] != "DEFAULT"]

    def apply_retention(self) -> None:
        """Set the configured TTLs; a table whose TTL is already the configured one is left alone
        (MODIFY TTL rewrites the parts of existing data, so it is not repeated at every start)."""
        for table, ttl in self.retention.ttl_clauses().items():
            if current_ttl(self.client, table) == ttl:
                continue
            try:
                self.client.command(f"ALTER TABLE {table} MODIFY TTL {ttl}")
            except Exception as exc:  # e.g. a user without ALTER: one line for the CLI
                raise ClickHouseUnavailable(
                    f"ClickHouse at {redact(self.dsn)}: cannot set the retention of {table}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
            log.info("ClickHouse %s retention: TTL %s", table, ttl)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def insert_now(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        columns = self._columns[table]
        times = TIME_COLUMNS[table]
        data = [[_to_datetime(row.get(c)) if c in times else row.get(c) for c in columns]
                for row in rows]
        self.client.insert(table, data, column_names=columns)

    async def count(self, table: str) -> int | None:
        """Rows of a table (latest versions), or None while the store is failing."""
        try:
            async with self._lock:
                result = await asyncio.to_thread(self.client.query, f"SELECT count() FROM {table} FINAL")
            return int(result.result_rows[0][0])
        except Exception:  # a status probe must never take the worker down
            return None

    async def write(self, table: str, rows: Sequence[dict[str, Any]],
                    should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Insert ``rows``; on failure retry with backoff until done. False only if stopped first."""
        if not rows:
            return True
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                async with self._lock:
                    if self.client is None:
                        await asyncio.to_thread(self.open)
                    await asyncio.to_thread(self.insert_now, table, rows)
            except Exception as exc:  # any driver/engine error: keep the batch and retry
                self.healthy = False
                self.on_error(table, exc)
                log.warning("ClickHouse write to %s failed (%s); retrying in %.1fs",
                            table, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, delay)
                if should_stop():
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.healthy = True
            self.on_write(table, len(rows), time.perf_counter() - started)
            return True
