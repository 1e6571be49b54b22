"""ClickHouse sink: embedded chDB (``chdb://PATH``) or a server (``http(s)://``), same code.

Each table is a batching sink (sinks/base.py): the calling agent adds rows and flushes
them as one insert, retried with capped exponential backoff until it succeeds: a
failed write is never dropped, and since the agent does not take the next batch
meanwhile, Kafka consumption stops (backpressure) instead of data piling up in memory.
Tables are ReplacingMergeTree, so a batch written twice (re-delivery after a crash)
counts once.

While writes fail the writer reports why and since when (:meth:`ClickHouseWriter.health_part`,
the ``/health`` body) and what it holds (rows, age of the oldest, current backoff: the
``ccpulse_sink_*`` gauges). Credentials never appear in its logs or errors.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlparse

import clickhouse_connect
import orjson

from ccpulse.config import masked_dsn
from sinks.base import BatchingSink, SinkBackpressureError, SinkBatch, SinkGroup

log = logging.getLogger(__name__)

# The tables the writer inserts into.
TABLES = ("raw_events", "interactions", "kpi_windows", "agent_windows", "sla_breaches", "scorecards")

# Rows go in as JSON lines that ClickHouse parses itself: its own parser reads the
# RFC 3339 times, and building the Native format row by row in Python cost the
# worker more than the store's own work. A key that is not a column is skipped
# (records carry more than their table keeps).
INSERT_SETTINGS = {
    # A replayed history batch can span more months (partitions) than ClickHouse
    # allows per insert by default (100); refused, it would be retried forever.
    "max_partitions_per_insert_block": 0,
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 1,
}


# A column DEFAULT that is a constant: a value rows may carry (a column added to an existing
# table, e.g. schemas/clickhouse/003a_*.sql, that records carry only when it is not 0).
_CONSTANT_DEFAULT = re.compile(r"-?\d+(?:\.\d*)?(?:e[+-]?\d+)?|'[^'\\]*'|NULL", re.IGNORECASE)


def insert_columns(described: Sequence[Sequence[Any]]) -> list[str]:
    """The columns an insert names, from ``DESCRIBE TABLE`` rows (name, type, default kind,
    default expression, ...): all but those the store fills itself, a DEFAULT it computes
    (raw_events.ingested_at = now64(3)), MATERIALIZED or ALIAS."""
    return [row[0] for row in described
            if row[2] == "" or (row[2] == "DEFAULT" and _CONSTANT_DEFAULT.fullmatch(row[3].strip()))]


class ClickHouseUnavailable(RuntimeError):
    """The store cannot be reached or opened (one-line message for the CLI)."""


def ddl_statements() -> list[str]:
    folder = resources.files("schemas") / "clickhouse"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


def connect(dsn: str, username: str = "", password: str = "") -> Any:
    """A clickhouse-connect client for ``chdb://PATH`` or ``http(s)://user:pass@host:port/db``.

    ``username``/``password``, when given, win over the DSN's (they come from the
    environment or a secrets file, see ClickHouseSettings).
    """
    try:
        if dsn.startswith("chdb://"):
            # clickhouse-connect reads chdb://./x as host "." + database "x"; ccpulse
            # means a path (relative or absolute), so it is passed as one.
            path = dsn[len("chdb://"):] or ":memory:"
            if path not in (":memory:", "memory"):
                Path(path).mkdir(parents=True, exist_ok=True)
                path = str(Path(path).resolve())
            return clickhouse_connect.get_client(interface="chdb", path=path)
        return clickhouse_connect.get_client(**client_kwargs(dsn, username, password))
    except Exception as exc:  # the driver raises many kinds; the CLI needs one line
        raise ClickHouseUnavailable(f"ClickHouse at {redact(dsn)} unavailable: "
                                    f"{one_line(exc, password, *_dsn_secrets(dsn))}") from None


def client_kwargs(dsn: str, username: str = "", password: str = "") -> dict[str, Any]:
    """clickhouse-connect arguments for an ``http(s)://`` DSN, explicit credentials first."""
    url = urlparse(dsn)
    database = unquote(url.path.lstrip("/")) or "default"
    return dict(
        host=url.hostname or "localhost", port=url.port or (8443 if url.scheme == "https" else 8123),
        username=username or unquote(url.username or "") or "default",
        password=password or _dsn_password(dsn),
        database=database, secure=url.scheme == "https",
        # A server that stops answering must fail the write (and be retried), not hang it.
        connect_timeout=10, send_receive_timeout=120)


def _dsn_password(dsn: str) -> str:
    return "" if dsn.startswith("chdb://") else unquote(urlparse(dsn).password or "")


def _dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The DSN's password as written (percent-encoded) and decoded: either may be echoed."""
    raw = "" if dsn.startswith("chdb://") else urlparse(dsn).password or ""
    return raw, unquote(raw)


def redact(dsn: str) -> str:
    """The DSN as it may be shown: the password masked."""
    return masked_dsn(dsn)


# Credentials a server or proxy may echo back in an error body: an Authorization value
# (Basic base64(user:password), Bearer, Digest) or ClickHouse's own key header, whoever's
# they are. A Basic value needs a digit, capital or base64 sign ("basic authentication" stays).
_ECHOED_CREDENTIALS = re.compile(
    r"\b((?i:basic)(?=\s+[A-Za-z0-9+/=]*[A-Z0-9+/=])|(?i:bearer|digest))(\s+)[A-Za-z0-9+/=._~-]+"
    r"|\b((?i:x-clickhouse-key)\s*[:=]\s*)[^\s;,]+")


def one_line(exc: BaseException, *secrets: str) -> str:
    """An error as one short line with every secret masked (drivers may echo URLs or auth).

    Masked before it is cut short: a secret cut in half would no longer be found.
    """
    text = str(exc)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _ECHOED_CREDENTIALS.sub(lambda m: f"{m[1]}{m[2]}***" if m[1] else f"{m[3]}***", text)
    return text.splitlines()[0][:200] if text.strip() else type(exc).__name__


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


class ClickHouseTable(BatchingSink):
    """One table's sink: a flush is one insert of the newest version of each row's key."""

    kind = "ClickHouse"

    def __init__(self, writer: "ClickHouseWriter", table: str) -> None:
        # The writer's callbacks are looked up at each call: a caller may set them later.
        super().__init__(table, writer.initial_backoff, writer.max_backoff,
                         on_write=lambda *args: writer.on_write(*args),
                         on_error=lambda *args: writer.on_error(*args))
        self.writer = writer

    async def write(self, batches: Sequence[SinkBatch]) -> None:
        rows = [row for batch in batches for row in batch.rows]
        try:
            await self.writer.insert(self.name, self.writer.newest(self.name, rows))
        except Exception as exc:  # any driver/engine error: the batch is kept and retried
            raise SinkBackpressureError(self.writer._one_line(exc)) from None


@dataclass
class ClickHouseWriter:
    """The store: its connection, tables and retention, and one :class:`ClickHouseTable` sink
    per table (``sink(table)``), seen together by ``/health`` and the sink gauges."""

    dsn: str
    on_write: Callable[[str, int, float], None] = lambda table, rows, seconds: None
    on_error: Callable[[str, Exception], None] = lambda table, exc: None
    max_backoff: float = 10.0
    client: Any = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _columns: dict[str, list[str]] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)
    username: str = ""
    password: str = field(default="", repr=False)
    initial_backoff: float = 0.2
    sinks: SinkGroup = field(default_factory=SinkGroup)
    _tables: dict[str, ClickHouseTable] = field(default_factory=dict)
    # table -> its sorting key columns, when its rows carry a version to keep the newest of
    _keys: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"ClickHouseWriter(dsn={redact(self.dsn)!r}, healthy={self.healthy})"

    @property
    def healthy(self) -> bool:
        return self.sinks.healthy

    def sink(self, table: str) -> ClickHouseTable:
        """The table's sink: ``add`` rows, then ``await flush(should_stop)``."""
        found = self._tables.get(table)
        if found is None:
            found = self._tables[table] = self.sinks.add(ClickHouseTable(self, table))
        return found

    def open(self) -> None:
        self.client = connect(self.dsn, self.username, self.password)
        for statement in ddl_statements():
            self.client.command(statement)
        self.apply_retention()
        for table in TABLES:
            self._columns[table] = insert_columns(self.client.query(f"DESCRIBE TABLE {table}").result_rows)
            # The batch keeps what ReplacingMergeTree would: the newest version per sorting key.
            key = self.client.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
                                    "AND name = {t:String}", parameters={"t": table}).result_rows[0][0]
            if "version" in self._columns[table]:
                self._keys[table] = tuple(column.strip() for column in key.split(","))

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
                    f"{self._one_line(exc)}") from None
            log.info("ClickHouse %s retention: TTL %s", table, ttl)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "ClickHouseWriter":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def insert_now(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        body = b"\n".join(map(orjson.dumps, rows))
        self.client.raw_insert(table, self._columns[table], body, settings=INSERT_SETTINGS, fmt="JSONEachRow")

    async def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """One insert, off the event loop; the store is opened first if it is not yet (or no longer)."""
        async with self._lock:
            if self.client is None:
                await asyncio.to_thread(self.open)
            await asyncio.to_thread(self.insert_now, table, rows)

    def newest(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Only the highest version per key within a batch: less to write and merge."""
        key = self._keys.get(table)
        if key is None:
            return rows
        best: dict[tuple, dict[str, Any]] = {}
        for row in rows:
            k = tuple(row[name] for name in key)
            if k not in best or row["version"] >= best[k]["version"]:
                best[k] = row
        return list(best.values())

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
        """Add ``rows`` to the table's sink and flush it (see BatchingSink.flush)."""
        sink = self.sink(table)
        for row in rows:
            sink.add(row)
        return await sink.flush(should_stop)

    def _one_line(self, exc: BaseException) -> str:
        return one_line(exc, self.password, *_dsn_secrets(self.dsn))

    # -- status, for /health and the sink gauges ------------------------------------

    def failing_since(self) -> float | None:
        return self.sinks.failing_since()

    def retry_backoff(self) -> float:
        return self.sinks.retry_backoff()

    def pending_rows(self) -> int:
        """Rows taken and not yet stored (at most one batch per table sink)."""
        return self.sinks.pending_rows()

    def oldest_unwritten_age(self) -> float:
        return self.sinks.oldest_unwritten_age()

    def health_part(self) -> dict[str, Any]:
        """The ``clickhouse`` part of ``/health``: ok, and while failing why and since when."""
        part: dict[str, Any] = {"ok": self.healthy, "dsn": redact(self.dsn),
                                "pending_rows": self.pending_rows()}
        since = self.failing_since()
        if since is None:
            part["detail"] = "writing"
            return part
        part.update({
            "detail": f"writes failing since {_iso(since)}, retrying (nothing is dropped; "
                      "consumption waits)",
            "failing_since": _iso(since),
            "failing_seconds": round(time.time() - since, 3),
            "failing_tables": self.sinks.failing(),
            "last_error": self.sinks.last_error(),
            "retry_backoff_seconds": self.retry_backoff(),
            "oldest_unwritten_seconds": round(self.oldest_unwritten_age(), 3),
        })
        return part


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

