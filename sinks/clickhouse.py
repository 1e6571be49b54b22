"""ClickHouse sink: embedded chDB (``chdb://PATH``) or a server (``http(s)://``), same code.

Writes are batched by the calling agent and retried with capped exponential
backoff until they succeed: a failed write is never dropped, and since the agent
does not take the next batch meanwhile, Kafka consumption stops (backpressure)
instead of data piling up in memory. Tables are ReplacingMergeTree, so a batch
written twice (re-delivery after a crash) counts once.

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
    username: str = ""
    password: str = field(default="", repr=False)
    initial_backoff: float = 0.2
    # table -> wall-clock time its writes started failing (absent: its last write succeeded)
    _failing: dict[str, float] = field(default_factory=dict)
    _last_error: str = ""
    _backoff: dict[str, float] = field(default_factory=dict)
    # one entry per write in progress: (rows, wall-clock time it was handed over)
    _pending: dict[int, tuple[int, float]] = field(default_factory=dict)

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"ClickHouseWriter(dsn={redact(self.dsn)!r}, healthy={self.healthy})"

    def open(self) -> None:
        self.client = connect(self.dsn, self.username, self.password)
        for statement in ddl_statements():
            self.client.command(statement)
        self.apply_retention()
        for table in TABLES:
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
                    f"{self._one_line(exc)}") from None
            log.info("ClickHouse %s retention: TTL %s", table, ttl)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def insert_now(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        body = b"\n".join(map(orjson.dumps, rows))
        self.client.raw_insert(table, self._columns[table], body, settings=INSERT_SETTINGS, fmt="JSONEachRow")

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
        """Insert ``rows``; on failure retry with backoff until done. False only if stopped first.

        The caller holds ``rows`` (one batch) until this returns, and takes no other
        batch meanwhile: that, not a buffer here, is what bounds memory in an outage.
        """
        if not rows:
            return True
        token = id(rows)
        self._pending[token] = (len(rows), time.time())
        delay = self.initial_backoff
        try:
            while True:
                started = time.perf_counter()
                try:
                    async with self._lock:
                        if self.client is None:
                            await asyncio.to_thread(self.open)
                        await asyncio.to_thread(self.insert_now, table, rows)
                except Exception as exc:  # any driver/engine error: keep the batch and retry
                    self._failed(table, exc, delay)
                    if should_stop():
                        return False
                    await _sleep_unless(delay, should_stop)
                    delay = min(delay * 2, self.max_backoff)
                    continue
                self._succeeded(table)
                self.on_write(table, len(rows), time.perf_counter() - started)
                return True
        finally:
            self._pending.pop(token, None)

    def _failed(self, table: str, exc: Exception, delay: float) -> None:
        self._failing.setdefault(table, time.time())
        self._backoff[table] = delay
        self._last_error = f"{table}: {self._one_line(exc)}"
        self.healthy = False
        self.on_error(table, exc)
        log.warning("ClickHouse write to %s failed (%s); retrying in %.3gs",
                    table, self._one_line(exc), delay)

    def _succeeded(self, table: str) -> None:
        if self._failing.pop(table, None) is not None:
            log.info("ClickHouse writes to %s succeed again", table)
        self._backoff.pop(table, None)
        self.healthy = not self._failing

    def _one_line(self, exc: BaseException) -> str:
        return one_line(exc, self.password, *_dsn_secrets(self.dsn))

    # -- status, for /health and the sink gauges ------------------------------------

    def failing_since(self) -> float | None:
        """Wall-clock time the current outage began (None: every last write succeeded)."""
        return min(self._failing.values()) if self._failing else None

    def retry_backoff(self) -> float:
        """The longest current delay before a retry (0 when no write is failing)."""
        return max(self._backoff.values(), default=0.0)

    def pending_rows(self) -> int:
        """Rows handed to the writer and not yet stored (at most one batch per agent)."""
        return sum(rows for rows, _since in list(self._pending.values()))

    def oldest_unwritten_age(self) -> float:
        """Seconds since the oldest batch still unwritten was handed over (0: none)."""
        oldest = min((since for _rows, since in list(self._pending.values())), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

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
            "failing_tables": sorted(self._failing),
            "last_error": self._last_error,
            "retry_backoff_seconds": self.retry_backoff(),
            "oldest_unwritten_seconds": round(self.oldest_unwritten_age(), 3),
        })
        return part


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _sleep_unless(delay: float, should_stop: Callable[[], bool]) -> None:
    """Sleep ``delay`` seconds, waking early when the worker stops (shutdown stays prompt)."""
    deadline = time.monotonic() + delay
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.5))
