"""``ccpulse replay FILE``: historical per-interaction records as EVENTS.md lifecycle events.

A contact-center export usually has one row per interaction (a call, chat or
ticket) with a few timestamps: when it entered the queue, when an agent answered,
when the customer gave up, when it ended. A *mapping file* (TOML, see
``deploy/replay/README.md``) says which columns hold what; this module reads the
file (CSV, TSV or JSON Lines), turns every row into a ``ReplayRecord``, expands
the records into lifecycle events (``call.offered`` / ``call.answered`` /
``call.abandoned`` / ``call.ended``, the ``chat.*`` equivalents, or
``ticket.created`` / ``ticket.replied`` / ``ticket.closed``), sorts them by event
time (exports are rarely sorted) and publishes them to the input topics, as fast
as possible or paced at a multiple of real time.

A JSON Lines file whose lines already are EVENTS.md events (for example a dump of
``raw_events``) needs no mapping: it is validated, sorted and published as is.

Two kinds of rows are not turned into interactions:

- *expected* ones, always skipped and counted by reason: rows with no offered
  time (the caller hung up in the voice menu, before any queue), and rows whose
  outcome the mapping lists under ``outcome.skip`` (e.g. PHANTOM calls);
- *bad records* (an unparseable time, a missing id or queue, a duplicate id, an
  unknown outcome value, a wrong number of fields, an answer before the offer...):
  ``on_error = "fail"`` (the default) stops with ``ReplayError("line N: ...")``;
  ``on_error = "skip"`` skips and counts them by kind, keeping the first messages.

Pure functions except ``replay`` (Kafka) and ``run_from_args`` (the command).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import math
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ccpulse.commands import arguments
from ccpulse.probes import coordinated

__all__ = [
    "ReplayError",
    "ReplayMapping",
    "ReplayRecord",
    "PipelineTime",
    "ReplayStats",
    "add_arguments",
    "lifecycle_events",
    "load_mapping",
    "pipeline_event_time",
    "progress_bar",
    "read_interactions",
    "read_native_events",
    "read_state_event_time",
    "replay",
    "run_from_args",
    "state_topic",
]

FORMATS = ("csv", "tsv", "jsonl")
MAX_ID_CHARS = 128
# A time of day more than this much earlier than the date's reference time is on
# the next day (a midnight crossing); a smaller backwards step is clock skew.
ROLLOVER_MS = 12 * 3600 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?\Z")
_FAMILY = {"voice": "call", "chat": "chat"}  # every other channel is a ticket channel
# Rank of each event of one interaction: event ids end in it, and ties in event
# time keep the lifecycle order.
_OFFERED, _EXIT, _ENDED = 1, 2, 3


class ReplayError(ValueError):
    """A bad mapping or a bad record; the message is one line ("line 12: ...")."""

    def __init__(self, message: str, *, line: int | None = None, kind: str = "invalid") -> None:
        super().__init__(message)
        self.line = line
        self.kind = kind


# ---------------------------------------------------------------- the mapping

@dataclass(frozen=True)
class ValueSpec:
    """Where a text value comes from: columns (joined), or a constant; optionally translated."""

    columns: tuple[str, ...] = ()
    constant: str | None = None
    values: Mapping[str, str] | None = None

    def describe(self) -> str:
        return ", ".join(self.columns) if self.columns else repr(self.constant)


@dataclass(frozen=True)
class OutcomeRule:
    column: str
    answered: frozenset[str] = frozenset()
    abandoned: frozenset[str] = frozenset()
    skip: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ReplayMapping:
    """How one export maps onto interactions (``load_mapping`` builds and checks it)."""

    id: ValueSpec
    queue: ValueSpec
    offered: tuple[str, ...]
    format: str | None = None  # None: from the file name (.csv, .tsv/.tab, .jsonl/.ndjson)
    delimiter: str | None = None  # default "," for csv, tab for tsv
    split_on_whitespace_fallback: bool = False
    encoding: str = "utf-8-sig"
    id_separator: str = "-"
    channel: ValueSpec = ValueSpec(constant="voice")
    agent: ValueSpec | None = None
    customer: ValueSpec | None = None
    answered: tuple[str, ...] = ()
    abandoned: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    # A served (answered) contact's wait in seconds, as the row gives it: where a time
    # reads like "did not happen" (0:00:00 is also midnight), the other is derived from it.
    wait: str | None = None
    # Where a served contact none of whose offered and answered columns has a time was
    # offered (answered after ``wait``): e.g. when it left the voice menu.
    served_offered: tuple[str, ...] = ()
    outcome: OutcomeRule | None = None
    timestamp_format: str = "iso"  # iso, epoch, epoch_ms or a strptime pattern
    date: str | None = None  # a date column: time columns then hold times of day
    date_format: str = "%Y-%m-%d"
    date_reference: str | None = None  # the time column the date belongs to (default: offered)
    timezone: str = "UTC"
    empty_times: frozenset[str] = frozenset()
    agent_missing: frozenset[str] = frozenset()
    customer_missing: frozenset[str] = frozenset()
    unknown_agent: str = "unknown"
    clock_skew_seconds: float = 0.0
    on_error: str = "fail"
    attributes: Mapping[str, str] = field(default_factory=dict)  # attribute -> column

    def time_columns(self) -> tuple[str, ...]:
        cols = self.offered + self.answered + self.abandoned + self.ended + self.served_offered
        return cols + ((self.date_reference,) if self.date_reference else ())

    def columns(self) -> set[str]:
        """Every column the mapping reads."""
        out = set(self.time_columns())
        for spec in (self.id, self.queue, self.channel, self.agent, self.customer):
            if spec is not None:
                out.update(spec.columns)
        if self.outcome is not None:
            out.add(self.outcome.column)
        if self.date:
            out.add(self.date)
        if self.wait:
            out.add(self.wait)
        out.update(self.attributes.values())
        return out


_KEYS = ("format", "delimiter", "split_on_whitespace_fallback", "encoding", "id", "id_separator",
         "channel", "queue", "agent", "customer", "offered", "answered", "abandoned", "ended",
         "wait", "served_offered", "outcome", "timestamp_format", "date", "date_format", "date_reference", "timezone",
         "empty_times", "agent_missing", "customer_missing", "unknown_agent", "clock_skew_seconds",
         "on_error", "attributes")


def load_mapping(path: str | Path) -> ReplayMapping:
    """Read and check a mapping file; ``ReplayError`` (a ValueError) names the bad key."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReplayError(f"mapping file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"mapping file {path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReplayError(f"mapping file {path}: not valid TOML ({exc})") from None
    try:
        return mapping_from_dict(doc)
    except ReplayError as exc:
        raise ReplayError(f"mapping file {path}: {exc}") from None


def mapping_from_dict(doc: Mapping[str, Any]) -> ReplayMapping:
    """A ``ReplayMapping`` from the parsed TOML document; ``ReplayError`` names the bad key."""
    for key in doc:
        if key not in _KEYS:
            raise ReplayError(f"{key}: unknown key (known: {', '.join(_KEYS)})")
    for key in ("id", "queue", "offered"):
        if key not in doc:
            raise ReplayError(f"{key}: required")
    fmt = doc.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ReplayError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    delimiter = doc.get("delimiter")
    if delimiter is not None:
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise ReplayError("delimiter: must be one character (\"\\t\" for a tab)")
        if fmt == "jsonl":
            raise ReplayError("delimiter: not used with format jsonl")
    on_error = doc.get("on_error", "fail")
    if on_error not in ("fail", "skip"):
        raise ReplayError(f"on_error: {on_error!r} is not 'fail' or 'skip'")
    tz = _string(doc, "timezone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReplayError(f"timezone: {tz!r} is not a known time zone (e.g. UTC, Europe/Berlin)") from None
    skew = doc.get("clock_skew_seconds", 0)
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 <= skew < 43200:
        raise ReplayError("clock_skew_seconds: must be a number of seconds from 0 to below 43200")
    ts_format = _string(doc, "timestamp_format", "iso")
    if ts_format not in ("iso", "epoch", "epoch_ms") and "%" not in ts_format:
        raise ReplayError(f"timestamp_format: {ts_format!r} is not iso, epoch, epoch_ms or a strptime "
                          "pattern such as '%d/%m/%Y %H:%M:%S'")
    date_col = doc.get("date")
    if date_col is not None and (not isinstance(date_col, str) or not date_col):
        raise ReplayError("date: must be a column name")
    date_format = _string(doc, "date_format", "%Y-%m-%d")
    if "%" not in date_format:
        raise ReplayError(f"date_format: {date_format!r} is not a strptime pattern such as '%y%m%d'")
    date_reference = doc.get("date_reference")
    if date_reference is not None:
        if not isinstance(date_reference, str) or not date_reference:
            raise ReplayError("date_reference: must be a column name")
        if date_col is None:
            raise ReplayError("date_reference: only used together with date")
    channel = _channel_spec(doc.get("channel", "voice"))
    agent = _value_spec(doc, "agent") if "agent" in doc else None
    customer = _value_spec(doc, "customer") if "customer" in doc else None
    unknown_agent = _string(doc, "unknown_agent", "unknown")
    if not 1 <= len(unknown_agent) <= MAX_ID_CHARS:
        raise ReplayError(f"unknown_agent: must be 1-{MAX_ID_CHARS} characters")
    wait = doc.get("wait")
    if wait is not None and (not isinstance(wait, str) or not wait):
        raise ReplayError("wait: must be a column name (the wait of a served contact, in seconds)")
    attributes = doc.get("attributes", {})
    if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in attributes.items()):
        raise ReplayError("attributes: must be a table of attribute name = column name")
    mapping = ReplayMapping(
        id=_value_spec(doc, "id", allow_constant=False),
        queue=_value_spec(doc, "queue"),
        offered=_columns(doc, "offered", required=True),
        format=fmt,
        delimiter=delimiter,
        split_on_whitespace_fallback=_bool(doc, "split_on_whitespace_fallback", False),
        encoding=_string(doc, "encoding", "utf-8-sig"),
        id_separator=_string(doc, "id_separator", "-", allow_empty=True),
        channel=channel,
        agent=agent,
        customer=customer,
        answered=_columns(doc, "answered"),
        abandoned=_columns(doc, "abandoned"),
        ended=_columns(doc, "ended"),
        wait=wait,
        served_offered=_columns(doc, "served_offered"),
        outcome=_outcome(doc.get("outcome")),
        timestamp_format=ts_format,
        date=date_col,
        date_format=date_format,
        date_reference=date_reference,
        timezone=tz,
        empty_times=_string_set(doc, "empty_times"),
        agent_missing=_string_set(doc, "agent_missing"),
        customer_missing=_string_set(doc, "customer_missing"),
        unknown_agent=unknown_agent,
        clock_skew_seconds=float(skew),
        on_error=on_error,
        attributes=dict(attributes),
    )
    if mapping.outcome is not None:
        if mapping.outcome.answered and not mapping.answered:
            raise ReplayError("answered: required when outcome.answered lists values")
        if mapping.outcome.abandoned and not mapping.abandoned:
            raise ReplayError("abandoned: required when outcome.abandoned lists values")
    try:
        "".encode(mapping.encoding)
    except LookupError:
        raise ReplayError(f"encoding: {mapping.encoding!r} is not a known text encoding") from None
    return mapping


def _string(doc: Mapping[str, Any], key: str, default: str, allow_empty: bool = False) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ReplayError(f"{key}: must be a {'string' if allow_empty else 'non-empty string'}")
    return value


def _bool(doc: Mapping[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise ReplayError(f"{key}: must be true or false")
    return value


def _string_set(doc: Mapping[str, Any], key: str) -> frozenset[str]:
    value = doc.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReplayError(f"{key}: must be a list of strings")
    return frozenset(value)


def _columns(doc: Mapping[str, Any], key: str, required: bool = False) -> tuple[str, ...]:
    value = doc.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ReplayError(f"{key}: must be a column name or a list of column names "
                          "(the first non-empty one wins)")
    if required and not value:
        raise ReplayError(f"{key}: at least one column is required")
    return tuple(value)


def _value_spec(doc: Mapping[str, Any], key: str, allow_constant: bool = True) -> ValueSpec:
    value = doc[key]
    if isinstance(value, str) and value:
        return ValueSpec(columns=(value,))
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return ValueSpec(columns=tuple(value))
    if isinstance(value, dict):
        return _table_spec(value, key, allow_constant)
    form = "a column name or a list of column names" + (
        ", or a table {column = ..., values = {...}} / {value = ...}" if allow_constant else "")
    raise ReplayError(f"{key}: must be {form}")


def _table_spec(table: Mapping[str, Any], key: str, allow_constant: bool) -> ValueSpec:
    known = {"column", "values", "value"} if allow_constant else {"column", "values"}
    for k in table:
        if k not in known:
            raise ReplayError(f"{key}.{k}: unknown key (known: {', '.join(sorted(known))})")
    if "value" in table:
        if "column" in table or "values" in table:
            raise ReplayError(f"{key}: either value (a constant) or column, not both")
        if not isinstance(table["value"], str) or not table["value"]:
            raise ReplayError(f"{key}.value: must be a non-empty string")
        return ValueSpec(constant=table["value"])
    column = table.get("column")
    if isinstance(column, str) and column:
        columns: tuple[str, ...] = (column,)
    elif isinstance(column, list) and column and all(isinstance(c, str) and c for c in column):
        columns = tuple(column)
    else:
        raise ReplayError(f"{key}.column: must be a column name or a list of column names")
    values = table.get("values")
    if values is not None and (not isinstance(values, dict) or not all(
            isinstance(v, str) and v for v in values.values())):
        raise ReplayError(f"{key}.values: must be a table of file value = replayed value")
    return ValueSpec(columns=columns, values=dict(values) if values is not None else None)


def _channel_spec(value: Any) -> ValueSpec:
    if isinstance(value, str):
        _check_channel(value, "channel")
        return ValueSpec(constant=value)
    if isinstance(value, dict):
        spec = _table_spec(value, "channel", allow_constant=True)
        if spec.constant is not None:
            _check_channel(spec.constant, "channel.value")
        for v in (spec.values or {}).values():
            _check_channel(v, "channel.values")
        return spec
    raise ReplayError("channel: must be a channel (voice, chat, email, web, ...) or a table "
                      "{column = ..., values = {...}}")


def _check_channel(value: str, key: str) -> None:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise ReplayError(f"{key}: {value!r} is not a channel (voice, chat, or a ticket channel "
                          "such as email, web, social)")


def _outcome(value: Any) -> OutcomeRule | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReplayError("outcome: must be a table {column = ..., answered = [...], abandoned = [...], "
                          "skip = [...]}")
    for k in value:
        if k not in ("column", "answered", "abandoned", "skip"):
            raise ReplayError(f"outcome.{k}: unknown key (known: column, answered, abandoned, skip)")
    column = value.get("column")
    if not isinstance(column, str) or not column:
        raise ReplayError("outcome.column: required, a column name")
    lists = {}
    for k in ("answered", "abandoned", "skip"):
        items = value.get(k, [])
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ReplayError(f"outcome.{k}: must be a list of values")
        lists[k] = frozenset(items)
    if not lists["answered"] and not lists["abandoned"]:
        raise ReplayError("outcome: list at least one value under answered or abandoned")
    for a, b in (("answered", "abandoned"), ("answered", "skip"), ("abandoned", "skip")):
        both = lists[a] & lists[b]
        if both:
            raise ReplayError(f"outcome.{b}: {sorted(both)[0]!r} is also listed under outcome.{a}")
    return OutcomeRule(column, lists["answered"], lists["abandoned"], lists["skip"])


# ---------------------------------------------------------------- records and stats

@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One interaction read from the file. Times are epoch milliseconds (UTC)."""

    line: int
    interaction_id: str
    channel: str
    queue: str
    offered_ms: int
    outcome: str  # "answered" | "abandoned" | "open" (still waiting at the end of the export)
    exit_ms: int | None = None  # answered or abandoned
    ended_ms: int | None = None  # answered contacts only
    agent_id: str | None = None  # answered contacts only
    customer_id: str | None = None
    attributes: Mapping[str, str] | None = None

    @property
    def family(self) -> str:
        return _FAMILY.get(self.channel, "ticket")

    def event_count(self) -> int:
        return 1 + (self.exit_ms is not None) + (self.ended_ms is not None)


@dataclass(frozen=True)
class ReplayStats:
    rows: int  # data rows read (header and blank lines excluded)
    interactions: int
    skipped: dict[str, int]  # expected quirks, by reason ("not_offered", "outcome PHANTOM")
    events: int
    invalid: dict[str, int] = field(default_factory=dict)  # bad records skipped (on_error = "skip"), by kind
    adjusted: dict[str, int] = field(default_factory=dict)  # rows kept after a documented fix-up
    examples: tuple[str, ...] = ()  # the first few bad-record messages
    families: tuple[str, ...] = ()  # event families published (call, chat, ticket)
    newest_ms: int | None = None  # the newest occurred_at published (None: nothing published)

    def summary(self) -> str:
        parts = [f"{self.rows:,} rows -> {self.interactions:,} interactions, {self.events:,} events"]
        if self.skipped:
            parts.append(f"skipped {sum(self.skipped.values()):,} ({_counts(self.skipped)})")
        if self.invalid:
            parts.append(f"invalid and skipped {sum(self.invalid.values()):,} ({_counts(self.invalid)}; "
                         f"first: {self.examples[0] if self.examples else '-'})")
        if self.adjusted:
            parts.append(f"adjusted {_counts(self.adjusted)}")
        return "; ".join(parts)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class _Tally:
    def __init__(self) -> None:
        self.rows = 0
        self.skipped: dict[str, int] = {}
        self.invalid: dict[str, int] = {}
        self.adjusted: dict[str, int] = {}
        self.examples: list[str] = []

    @staticmethod
    def bump(counts: dict[str, int], key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    def stats(self, records: list[ReplayRecord]) -> ReplayStats:
        return ReplayStats(self.rows, len(records), dict(self.skipped),
                           sum(r.event_count() for r in records), dict(self.invalid),
                           dict(self.adjusted), tuple(self.examples))


class _Skip(Exception):
    """An expected quirk: the row is skipped and counted under ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _bad(line: int, kind: str, what: str) -> ReplayError:
    return ReplayError(f"line {line}: {what}", line=line, kind=kind)


# ---------------------------------------------------------------- reading

def read_interactions(path: str | Path, mapping: ReplayMapping) -> tuple[list[ReplayRecord], ReplayStats]:
    """Every interaction of the file, in file order, and what was read, skipped or fixed up."""
    path = Path(path)
    fmt = mapping.format or _format_from_name(path)
    tally = _Tally()
    parser = _RowParser(mapping)
    records: list[ReplayRecord] = []
    seen: dict[str, int] = {}
    try:
        with open(path, encoding=mapping.encoding, newline="") as handle:
            rows = _json_rows(handle) if fmt == "jsonl" else _delimited_rows(handle, fmt, mapping)
            for line, row, notes in rows:
                tally.rows += 1
                try:
                    if isinstance(row, ReplayError):
                        raise row
                    record = parser.parse(line, row, notes)
                    first = seen.get(record.interaction_id)
                    if first is not None:
                        raise _bad(line, "duplicate_id",
                                   f"id {record.interaction_id!r} was already used on line {first}")
                    seen[record.interaction_id] = line
                    records.append(record)
                    for note in notes:  # fix-ups count only for rows that were kept
                        tally.bump(tally.adjusted, note)
                except _Skip as skip:
                    tally.bump(tally.skipped, skip.reason)
                except ReplayError as exc:
                    if mapping.on_error == "fail" or exc.line is None:
                        raise
                    tally.bump(tally.invalid, exc.kind)
                    if len(tally.examples) < 5:
                        tally.examples.append(str(exc))
    except FileNotFoundError:
        raise ReplayError(f"{path}: not found") from None
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path}: not {mapping.encoding} text ({exc.reason} at byte {exc.start}); "
                          "set encoding in the mapping (e.g. \"latin-1\")") from None
    except IsADirectoryError:
        raise ReplayError(f"{path}: is a directory") from None
    except csv.Error as exc:
        raise ReplayError(f"{path}: not readable as {fmt} ({exc})") from None
    return records, tally.stats(records)


def _format_from_name(path: Path) -> str:
    suffix = path.suffix.lower()
    fmt = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
    if fmt is None:
        raise ReplayError(f"{path}: cannot tell the format from the name; set format "
                          f"({', '.join(FORMATS)}) in the mapping")
    return fmt


_Row = tuple[int, "dict[str, Any] | ReplayError", list[str]]  # line, row (or why not), fix-ups


def _delimited_rows(handle: Any, fmt: str, mapping: ReplayMapping) -> Iterator[_Row]:
    delimiter = mapping.delimiter or ("\t" if fmt == "tsv" else ",")
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting, strict=False)
    header: list[str] | None = None
    for row in reader:
        if header is None:
            header = [name.strip() for name in row]
            if not any(header):
                raise ReplayError("line 1: the header line is empty")
            _check_columns(mapping, header)
            continue
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line is not a row
        notes = []
        if len(row) != len(header) and mapping.split_on_whitespace_fallback:
            fields = delimiter.join(row).split()
            if len(fields) == len(header):
                notes.append("split_on_whitespace")
                row = fields
        if len(row) != len(header):
            yield line, _bad(line, "wrong_field_count",
                             f"{len(row)} fields, the header has {len(header)}"), notes
            continue
        yield line, dict(zip(header, (value.strip() for value in row))), notes
    if header is None:
        raise ReplayError("the file is empty (no header line)")


def _json_rows(handle: Any) -> Iterator[_Row]:
    for line, text in enumerate(handle, 1):
        if not text.strip():
            continue
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield line, _bad(line, "not_json", f"not JSON ({exc})"), []
            continue
        if not isinstance(doc, dict):
            yield line, _bad(line, "not_object", f"a JSON {type(doc).__name__}, expected an object"), []
            continue
        yield line, doc, []


def _check_columns(mapping: ReplayMapping, header: list[str]) -> None:
    known = set(header)
    missing = sorted(mapping.columns() - known)
    if missing:
        shown = ", ".join(header[:40]) + (" ..." if len(header) > 40 else "")
        raise ReplayError(f"column {missing[0]!r} named in the mapping is not in the header "
                          f"(columns: {shown})")


class _RowParser:
    """One row (column -> value) -> one ``ReplayRecord``, or ``_Skip`` / ``ReplayError``."""

    def __init__(self, mapping: ReplayMapping) -> None:
        self.m = mapping
        self.zone = ZoneInfo(mapping.timezone)
        self.utc = mapping.timezone in ("UTC", "Etc/UTC")
        self.skew_ms = int(round(mapping.clock_skew_seconds * 1000))
        self.empty = mapping.empty_times | {""}
        self._dates: dict[str, date] = {}

    # -- values

    def text(self, row: Mapping[str, Any], column: str) -> str:
        value = row.get(column)
        if value is None:
            return ""
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def value(self, row: Mapping[str, Any], spec: ValueSpec) -> str:
        if spec.constant is not None:
            return spec.constant
        parts = [self.text(row, c) for c in spec.columns]
        if not all(parts):
            return ""
        text = self.m.id_separator.join(parts)
        if spec.values is not None:
            return spec.values.get(text, text)
        return text

    # -- times

    def first_time(self, row: Mapping[str, Any], columns: tuple[str, ...]) -> tuple[str, Any] | None:
        """(column, raw value) of the first non-empty candidate."""
        for column in columns:
            raw = row.get(column)
            if raw is None:
                continue
            if isinstance(raw, str):
                raw = raw.strip()
                if raw in self.empty:
                    continue
            elif isinstance(raw, bool):
                return column, raw  # rejected when parsed
            elif str(raw) in self.empty:
                continue
            return column, raw
        return None

    def timestamp_ms(self, line: int, column: str, raw: Any) -> int:
        fmt = self.m.timestamp_format
        try:
            if fmt in ("epoch", "epoch_ms"):
                if isinstance(raw, bool):
                    raise ValueError
                number = float(raw)
                if not math.isfinite(number):
                    raise ValueError
                return int(number * 1000) if fmt == "epoch" else int(number)
            if not isinstance(raw, str):
                raise ValueError
            moment = datetime.fromisoformat(raw) if fmt == "iso" else datetime.strptime(raw, fmt)
        except (ValueError, OverflowError):
            expected = {"iso": "an ISO 8601 timestamp", "epoch": "seconds since 1970",
                        "epoch_ms": "milliseconds since 1970"}.get(fmt, f"a time in the form {fmt}")
            raise _bad(line, "unparseable_time", f"{column} {raw!r} is not {expected}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return (moment - _EPOCH) // _MS

    def day(self, line: int, row: Mapping[str, Any]) -> date:
        column = self.m.date
        assert column is not None
        text = self.text(row, column)
        found = self._dates.get(text)
        if found is None:
            try:
                found = datetime.strptime(text, self.m.date_format).date()
            except ValueError:
                raise _bad(line, "unparseable_time",
                           f"{column} {text!r} is not a date in the form {self.m.date_format}") from None
            if len(self._dates) < 100_000:
                self._dates[text] = found
        return found

    def time_of_day_ms(self, line: int, column: str, raw: Any) -> int:
        match = _TIME_OF_DAY.match(raw) if isinstance(raw, str) else None
        if match is not None:
            h, mi, s, frac = match.groups()
            hours, minutes, seconds = int(h), int(mi), int(s or 0)
            if hours < 24 and minutes < 60 and seconds < 60:
                return ((hours * 60 + minutes) * 60 + seconds) * 1000 + int((frac or "0")[:3].ljust(3, "0"))
        raise _bad(line, "unparseable_time", f"{column} {raw!r} is not a time of day (H:MM:SS)")

    def wait_ms(self, line: int, row: Mapping[str, Any]) -> int | None:
        """The row's wait (the ``wait`` column, seconds) in ms; None when not mapped or empty."""
        if self.m.wait is None:
            return None
        text = self.text(row, self.m.wait)
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise _bad(line, "invalid_wait", f"{self.m.wait} {text!r} is not a number of seconds")
        return int(round(seconds * 1000))

    def local_ms(self, day: date, ms_of_day: int) -> int:
        base = datetime(day.year, day.month, day.day)
        if self.utc:
            return (base - datetime(1970, 1, 1)) // _MS + ms_of_day
        moment = (base + timedelta(milliseconds=ms_of_day)).replace(tzinfo=self.zone)
        return (moment - _EPOCH) // _MS

    # -- the row

    def parse(self, line: int, row: Mapping[str, Any], notes: list[str]) -> ReplayRecord:
        """The record of one row; appends the fix-ups made (see ``ReplayStats.adjusted``) to ``notes``."""
        m = self.m
        outcome = None
        if m.outcome is not None:
            value = self.text(row, m.outcome.column)
            if value in m.outcome.skip:
                raise _Skip(f"outcome {value}")
            if value in m.outcome.answered:
                outcome = "answered"
            elif value in m.outcome.abandoned:
                outcome = "abandoned"
            else:
                raise _bad(line, "unknown_outcome",
                           f"{m.outcome.column} {value!r} is not listed under outcome.answered, "
                           "outcome.abandoned or outcome.skip")
        offered = self.first_time(row, m.offered)
        if offered is None and outcome != "answered":
            raise _Skip("not_offered")

        iid = self.value(row, m.id)
        if not iid:
            raise _bad(line, "missing_id", f"no id ({m.id.describe()} empty)")
        if len(iid) > MAX_ID_CHARS:
            raise _bad(line, "invalid_id", f"id {iid[:40]!r}... is longer than {MAX_ID_CHARS} characters")
        queue = self.value(row, m.queue)
        if not queue:
            raise _bad(line, "missing_queue", f"no queue ({m.queue.describe()} empty)")
        if len(queue) > MAX_ID_CHARS:
            raise _bad(line, "invalid_queue", f"queue {queue[:40]!r}... is longer than {MAX_ID_CHARS} characters")
        channel = self.value(row, m.channel)
        if not channel or len(channel) > MAX_ID_CHARS:
            raise _bad(line, "invalid_channel", f"no channel ({m.channel.describe()} empty)")

        answered = self.first_time(row, m.answered) if outcome != "abandoned" else None
        abandoned = self.first_time(row, m.abandoned) if outcome != "answered" else None
        ended = self.first_time(row, m.ended)
        if outcome is None:
            if answered is not None and abandoned is not None:
                raise _bad(line, "conflicting_times",
                           f"both answered ({answered[0]}) and abandoned ({abandoned[0]}) times")
            if answered is not None:
                outcome = "answered"
            elif abandoned is not None:
                outcome = "abandoned"
            elif ended is not None:
                # Ended without an answer: the customer left the queue (an abandon).
                outcome, abandoned, ended = "abandoned", ended, None
            else:
                outcome = "open"
        elif outcome == "answered":
            # A served contact was offered and answered, whatever else its row says: an
            # agent served it. "No time" may be a time (0:00:00 is also midnight), so the
            # row's wait, when the mapping names it, places what the columns cannot.
            if offered is None and answered is None:
                offered = self.first_time(row, m.served_offered)
                if offered is None:
                    raise _bad(line, "missing_time", "served, but no time at which it was offered or answered ("
                                                     + ", ".join(m.offered + m.answered + m.served_offered)
                                                     + " empty)")
                notes.append("served_without_times")
            if self.wait_ms(line, row) is None:
                if answered is None:
                    raise _bad(line, "missing_time",
                               f"answered, but no answered time ({', '.join(m.answered)} empty)")
                if offered is None:
                    raise _bad(line, "missing_time", f"served, but no offered time ({', '.join(m.offered)} "
                                                     f"empty) and no wait ({m.wait or 'no wait column'})")
        elif outcome == "abandoned" and abandoned is None:
            raise _bad(line, "missing_time",
                       f"abandoned, but no abandoned time ({', '.join(m.abandoned)} empty)")
        exit_ = answered if outcome == "answered" else abandoned
        if outcome != "answered":
            ended = None  # an abandoned contact is over when it leaves the queue

        if m.date is None:
            offered_ms = self.timestamp_ms(line, *offered) if offered is not None else None
            exit_ms = self.timestamp_ms(line, *exit_) if exit_ is not None else None
            ended_ms = self.timestamp_ms(line, *ended) if ended is not None else None
        else:
            day = self.day(line, row)
            reference = self.first_time(row, (m.date_reference,)) if m.date_reference else None
            known = reference or offered or exit_
            assert known is not None  # a row without offered time is served with an answered one
            ref = self.time_of_day_ms(line, *known)

            rolled = []

            def resolve(found: tuple[str, Any]) -> int:
                ms = self.time_of_day_ms(line, *found)
                if ms < ref - ROLLOVER_MS:  # past midnight
                    rolled.append(found[0])
                    return self.local_ms(day + timedelta(days=1), ms)
                return self.local_ms(day, ms)

            offered_ms = resolve(offered) if offered is not None else None
            exit_ms = resolve(exit_) if exit_ is not None else None
            ended_ms = resolve(ended) if ended is not None else None
            if rolled:
                notes.append("after_midnight")

        wait_ms = self.wait_ms(line, row) if outcome == "answered" else None
        if wait_ms is not None:
            # The wait is the row's own figure: the answer minus the wait is when the
            # contact was offered, also where an offered column read "did not happen".
            if exit_ms is not None:
                offered_ms = exit_ms - wait_ms
            else:
                assert offered_ms is not None
                exit_ms = offered_ms + wait_ms
        assert offered_ms is not None  # checked above: a served row has one time and a wait
        exit_what = f"{exit_[0]} {exit_[1]}" if exit_ is not None else f"{m.wait} after offered"
        if exit_ms is not None and exit_ms < offered_ms:
            assert offered is not None  # a derived time is never before the one it comes from
            if offered_ms - exit_ms > self.skew_ms:
                raise _bad(line, "time_order", f"{outcome} ({exit_what}) before offered "
                                               f"({offered[0]} {offered[1]})")
            exit_ms = offered_ms
            notes.append(f"{outcome}_before_offered")
        if ended_ms is not None and exit_ms is not None and ended_ms < exit_ms:
            assert ended is not None
            if exit_ms - ended_ms > self.skew_ms:
                raise _bad(line, "time_order", f"ended ({ended[0]} {ended[1]}) before answered ({exit_what})")
            ended_ms = exit_ms
            notes.append("ended_before_answered")

        agent = None
        if outcome == "answered":
            agent = self.value(row, m.agent) if m.agent is not None else ""
            if not agent or agent in m.agent_missing:
                agent = m.unknown_agent
                notes.append("unknown_agent")
            elif len(agent) > MAX_ID_CHARS:
                raise _bad(line, "invalid_agent", f"agent {agent[:40]!r}... is longer than {MAX_ID_CHARS} characters")
        customer = self.value(row, m.customer) if m.customer is not None else ""
        if customer in m.customer_missing:
            customer = ""
        attributes = None
        if m.attributes:
            attributes = {name: v for name, column in m.attributes.items() if (v := self.text(row, column))}
        return ReplayRecord(line, iid, channel, queue, offered_ms, outcome, exit_ms, ended_ms, agent,
                            customer or None, attributes or None)


# ---------------------------------------------------------------- events

class _Clock:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds; caches the date part per day."""

    __slots__ = ("_days",)

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def format(self, ms: int) -> str:
        day, rest = divmod(ms, 86_400_000)
        prefix = self._days.get(day)
        if prefix is None:
            moment = _EPOCH + timedelta(days=day)
            prefix = self._days[day] = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        seconds, millis = divmod(rest, 1000)
        minutes, sec = divmod(seconds, 60)
        hours, minute = divmod(minutes, 60)
        return f"{prefix}{hours:02d}:{minute:02d}:{sec:02d}.{millis:03d}Z"


def event_id(interaction_id: str, n: int) -> str:
    """``replay-<interaction id>-<n>``; a hash stands in for ids too long for 128 characters."""
    eid = f"replay-{interaction_id}-{n}"
    if len(eid) > MAX_ID_CHARS:
        eid = f"replay-{hashlib.sha256(interaction_id.encode()).hexdigest()[:40]}-{n}"
    return eid


def lifecycle_events(records: Iterable[ReplayRecord],
                     mapping: ReplayMapping | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The EVENTS.md events of every record as ``(family, event)``, in event-time order.

    Voice: ``call.offered`` (queue, customer_id, attributes) -> ``call.answered``
    (agent_id) or ``call.abandoned`` -> ``call.ended`` (answered calls with an end
    time). Chat: the same ``chat.*`` types. Tickets (any other channel):
    ``ticket.created`` -> ``ticket.replied`` (sender agent, public, agent_id) ->
    ``ticket.closed``; an abandoned ticket is ``ticket.closed`` with no reply.
    Every event carries the queue. Ties in event time keep the lifecycle order.
    """
    del mapping  # everything needed is on the records; kept for the documented signature
    keyed: list[tuple[int, int, str, str, dict[str, Any]]] = []
    clock = _Clock()
    for r in records:
        family = r.family
        iid = r.interaction_id

        def event(n: int, etype: str, ms: int) -> dict[str, Any]:
            doc: dict[str, Any] = {"event_id": event_id(iid, n), "type": etype,
                                   "occurred_at": clock.format(ms), "interaction_id": iid,
                                   "queue": r.queue}
            if family == "ticket":
                doc["channel"] = r.channel
            keyed.append((ms, n, iid, family, doc))
            return doc

        first = event(_OFFERED, "ticket.created" if family == "ticket" else f"{family}.offered",
                      r.offered_ms)
        if r.customer_id:
            first["customer_id"] = r.customer_id
        if r.attributes:
            first["attributes"] = dict(r.attributes)
        first["schema_version"] = 1
        if r.exit_ms is not None:
            if r.outcome == "answered":
                if family == "ticket":
                    doc = event(_EXIT, "ticket.replied", r.exit_ms)
                    doc.update(sender="agent", public=True, agent_id=r.agent_id)
                else:
                    doc = event(_EXIT, f"{family}.answered", r.exit_ms)
                    doc["agent_id"] = r.agent_id
            else:
                doc = event(_EXIT, "ticket.closed" if family == "ticket" else f"{family}.abandoned", r.exit_ms)
            doc["schema_version"] = 1
        if r.ended_ms is not None and r.outcome == "answered":
            doc = event(_ENDED, "ticket.closed" if family == "ticket" else f"{family}.ended", r.ended_ms)
            doc["schema_version"] = 1
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [(family, doc) for _ms, _n, _iid, family, doc in keyed]


def read_native_events(path: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], ReplayStats]:
    """A JSON Lines file of EVENTS.md events (no mapping): validated, in event-time order.

    A line that breaks the contract is a ``ReplayError`` naming the line and the
    reason; ties in event time keep the file order.
    """
    from schemas.events import Rejection, TYPES, validate

    path = Path(path)
    now_ms = int(time.time() * 1000)
    keyed: list[tuple[int, int, str, dict[str, Any]]] = []
    rows = 0
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                rows += 1
                try:
                    doc = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise _bad(line, "not_json", f"not JSON ({exc})") from None
                if not isinstance(doc, dict):
                    raise _bad(line, "not_object", f"a JSON {type(doc).__name__}, expected an object")
                etype = doc.get("type")
                if not isinstance(etype, str) or etype not in TYPES:
                    raise _bad(line, "unknown_type", f"type {str(etype)[:64]!r} is not an EVENTS.md type")
                family = etype.split(".", 1)[0]
                result = validate(doc, family, now_ms)
                if isinstance(result, Rejection):
                    raise _bad(line, result.reason, f"{result.reason}: {result.detail}")
                keyed.append((result.occurred_at_ms, line, family, doc))
    except FileNotFoundError:
        raise ReplayError(f"{path}: not found") from None
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    keyed.sort(key=lambda k: (k[0], k[1]))
    events = [(family, doc) for _ms, _line, family, doc in keyed]
    interactions = len({doc["interaction_id"] for _f, doc in events})
    return events, ReplayStats(rows, interactions, {}, len(events))


def limit_events(events: list[tuple[str, dict[str, Any]]], limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The events of the first ``limit`` interactions in event time (by their first event)."""
    chosen: set[str] = set()
    for _family, doc in events:
        if len(chosen) >= limit:
            break
        chosen.add(doc["interaction_id"])
    return [(f, doc) for f, doc in events if doc["interaction_id"] in chosen]


@dataclass(frozen=True)
class ConnectorFormat:
    """``--format``: a file of a platform's own records, mapped by its connector (no mapping file)."""

    name: str  # one of CONNECTOR_FORMATS
    on_error: str = "fail"


# --format -> the connector mapper of one record (README "Connectors").
CONNECTOR_FORMATS = ("connect-ctr",)


def _json_documents(text: str) -> Iterator[tuple[int, Any]]:
    """(n, document) of JSON Lines or of JSON objects written back to back (Kinesis Firehose's
    S3 files); ``ReplayError`` at the first text that is not JSON (nothing after it can be found)."""
    import json  # orjson reads one document per call; raw_decode also says where it ended

    raw = json.JSONDecoder()
    pos, n, end = 0, 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return
        n += 1
        try:
            doc, pos = raw.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"record {n}: not JSON ({exc.msg} at character {exc.pos})",
                              kind="not_json") from None
        yield n, doc


def read_connector_file(path: str | Path, fmt: ConnectorFormat) -> tuple[list[tuple[str, dict[str, Any]]],
                                                                          ReplayStats]:
    """Every record of the file through the connector's mapper, as events in event-time order.

    A record the mapper refuses is a ``ReplayError`` (``fmt.on_error`` "fail") or skipped and
    counted by reason ("skip"); one with nothing to count (never queued) is skipped as ``not_queued``.
    """
    from ccpulse.connectors import amazon_connect
    from ccpulse.connectors.base import MappingError
    from schemas.events import parse_timestamp_ms

    if fmt.name not in CONNECTOR_FORMATS:
        raise ReplayError(f"--format {fmt.name!r}: not one of {', '.join(CONNECTOR_FORMATS)}")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReplayError(f"{path}: not found") from None
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    tally = _Tally()
    keyed: list[tuple[int, int, str, dict[str, Any]]] = []
    for n, doc in _json_documents(text):
        tally.rows += 1
        try:
            mapped = amazon_connect.contact_record(doc)
        except MappingError as exc:
            message = f"record {n}: {exc.reason}: {exc.detail}"
            if fmt.on_error == "fail":
                raise ReplayError(message, line=n, kind=exc.reason) from None
            tally.bump(tally.invalid, exc.reason)
            if len(tally.examples) < 5:
                tally.examples.append(message)
            continue
        if not mapped:
            tally.bump(tally.skipped, "not_queued")
        for m in mapped:
            keyed.append((parse_timestamp_ms(m.event["occurred_at"]) or 0, len(keyed), m.family, m.event))
    keyed.sort(key=lambda k: (k[0], k[1]))  # ties keep the file's (and each contact's lifecycle) order
    events = [(family, doc) for _ms, _n, family, doc in keyed]
    interactions = len({doc["interaction_id"] for _f, doc in events})
    return events, ReplayStats(tally.rows, interactions, dict(tally.skipped), len(events), dict(tally.invalid),
                               {}, tuple(tally.examples))


def load(path: str | Path, mapping: ReplayMapping | ConnectorFormat | None,
         limit: int | None = None) -> tuple[list[tuple[str, dict[str, Any]]], ReplayStats]:
    """Read a file (through ``mapping``, a connector's ``--format``, or as native events when it is
    None) into sorted events."""
    if mapping is None or isinstance(mapping, ConnectorFormat):
        events, stats = read_native_events(path) if mapping is None else read_connector_file(path, mapping)
        if limit is not None:
            events = limit_events(events, limit)
            stats = ReplayStats(stats.rows, len({d["interaction_id"] for _f, d in events}), stats.skipped,
                                len(events), stats.invalid, {}, stats.examples)
        return events, stats
    records, stats = read_interactions(path, mapping)
    if limit is not None and limit < len(records):
        records = sorted(records, key=lambda r: (r.offered_ms, r.line))[:limit]
        stats = ReplayStats(stats.rows, len(records), stats.skipped,
                            sum(r.event_count() for r in records), stats.invalid, stats.adjusted,
                            stats.examples)
    return lifecycle_events(records, mapping), stats


# ---------------------------------------------------------------- publishing

async def replay(path: str | Path, mapping: ReplayMapping | ConnectorFormat | None, bootstrap: str,
                 topics: Mapping[str, str],
                 speed: float | None, *, progress: Callable[[int, int], None] | None = None,
                 stop: asyncio.Event | None = None, limit: int | None = None,
                 partition: int | None = None, pipeline: PipelineTime | None = None,
                 **security: Any) -> ReplayStats:
    """Read ``path`` and publish its events to ``topics`` (family -> topic), keyed by interaction.

    ``speed`` None sends as fast as the broker takes them, 1.0 in real time, N at
    N times real time (event time measured from the first event). ``progress`` is
    called with (events acknowledged, total). ``stop`` ends the replay early.

    ``partition``: every event goes to this partition of its topic (default 0),
    so the worker reads the replay in event-time order. Event time is the newest
    ``occurred_at`` of the whole input; when a fast replay is spread over several
    partitions (``partition=None``: by the key's hash, as live producers do), the
    worker reads some partitions ahead of others and events of the lagging ones
    arrive after their window closed (late). ``security`` goes to the producer
    (security_protocol, sasl_mechanism, sasl_username, sasl_password,
    ssl_context). Returns the read statistics, ``events`` = events acknowledged.

    ``pipeline``: the event time of the pipeline the events go to; when some of
    them would be late there, nothing is published (``ReplayError``).
    """
    from schemas.events import parse_timestamp_ms

    events, stats = load(path, mapping, limit)
    if pipeline is not None:
        pipeline.refuse_late(events, path)
    families = {family for family, _ in events}
    missing = sorted(families - set(topics))
    if missing:
        raise ReplayError(f"topics: no topic for the {missing[0]} events of {path}")
    total = len(events)
    callback = None if progress is None else (lambda done: progress(done, total))
    sent = await publish(events, bootstrap, {f: topics[f] for f in families}, speed, stop=stop,
                         progress=callback, partition=partition, **security)
    # Events are in event-time order. Only a complete replay has an end of input.
    newest = parse_timestamp_ms(events[-1][1]["occurred_at"]) if events and sent == total else None
    return ReplayStats(stats.rows, stats.interactions, stats.skipped, sent, stats.invalid,
                       stats.adjusted, stats.examples, tuple(sorted(families)), newest)


async def publish(events: Iterable[tuple[str, dict[str, Any]]], bootstrap: str, topics: Mapping[str, str],
                  speed: float | None, *, stop: asyncio.Event | None = None,
                  progress: Callable[[int], None] | None = None, partition: int | None = None,
                  batch_size: int = 1000, security_protocol: str = "PLAINTEXT",
                  sasl_mechanism: str | None = None, sasl_username: str | None = None,
                  sasl_password: str | None = None, ssl_context: Any = None) -> int:
    """``ccpulse.commands.publish.publish_mixed`` with an optional fixed ``partition`` (None: by key).

    Same contract otherwise: ``(family, event)`` pairs to ``topics[family]``, keyed
    by ``interaction_id``, paced by event time at ``speed`` (None: as fast as
    possible), ``progress(acknowledged)``, ``stop``; returns how many were
    acknowledged. One producer for all topics keeps the families interleaved.
    """
    from ccpulse.commands.publish import publish_mixed

    return await publish_mixed(events, bootstrap, topics, speed, stop=stop, progress=progress,
                               batch_size=batch_size, security_protocol=security_protocol,
                               sasl_mechanism=sasl_mechanism, sasl_username=sasl_username,
                               sasl_password=sasl_password, ssl_context=ssl_context,
                               partition=partition)


# ---------------------------------------------------------------- the pipeline's event time

# Records read from the end of each input partition: the newest valid event is
# among them even when a few bad messages came last.
INPUT_TAIL = 20


@dataclass(frozen=True)
class PipelineTime:
    """The event time of the pipeline a replay goes to, and where it was read."""

    event_time_ms: int
    source: str
    lateness_ms: int

    def refuse_late(self, events: list[tuple[str, dict[str, Any]]], path: str | Path) -> None:
        """``ReplayError`` naming the fix when any event would be counted as late.

        The worker counts an event as late, in no KPI, once event time has passed its
        window's end plus the allowed lateness; older than event time minus the
        lateness is where that starts (an event's window may end up to a window
        later, so this refuses a little early rather than count anything late).
        """
        from schemas.events import parse_timestamp_ms

        from ccpulse.core.timestamps import format_ms

        cutoff = self.event_time_ms - self.lateness_ms
        late = [ms for ms in (parse_timestamp_ms(doc["occurred_at"]) for _family, doc in events)
                if ms is not None and ms < cutoff]
        if not late:
            return
        raise ReplayError(
            f"{path}: {len(late):,} of {len(events):,} events (from {format_ms(min(late))}) "
            f"would be late, counted in no KPI: the pipeline's event time is {format_ms(self.event_time_ms)} "
            f"({self.source}), and events older than it minus allowed_lateness_seconds "
            f"({self.lateness_ms / 1000:g} s) are late. Replay into a fresh pipeline (a new CCPULSE_APP_ID "
            "and CCPULSE_TOPIC_PREFIX, for the worker too), or pass --allow-late to publish them anyway",
            kind="late")


def state_topic(settings: Any) -> str:
    """The changelog of the lifecycle's ``partition-records`` table (streams/app.py).

    Faust names a table's changelog ``<app id>-<table>-changelog``, without the topic
    prefix: the state belongs to the app id.
    """
    return f"{settings.app_id}-partition-records-changelog"


async def read_state_event_time(settings: Any, timeout: float = 15.0) -> int | None:
    """The newest event time a worker of this app persisted (None: no state yet)."""
    return (await _newest_times(settings, {state_topic(settings): (1, _state_time)}, timeout)).get(
        state_topic(settings))


async def pipeline_event_time(settings: Any, timeout: float = 15.0) -> PipelineTime | None:
    """How far the pipeline's event time is, or will be once it reads its input.

    Two cheap reads of a few records at the ends of topics, no group join:

    - the lifecycle's persisted state (one record per partition, the last is the
      current one): the event time the workers judge lateness by, including its
      advance with the wall clock while the input was quiet; it outlives the
      input topics' retention and is there while no worker runs;
    - the newest events of the input topics: published but perhaps not read yet
      (no worker running), they move event time once read. Events further in the
      future than ``max_future_seconds`` are refused by the worker and ignored here.

    The pipeline's event time is the slowest input partition's, but a silent one
    stops holding it back, so the newest of either source is what a replay meets.
    """
    t = settings.topics
    now_ms = int(time.time() * 1000)
    horizon = now_ms + int(settings.max_future_seconds * 1000)

    def input_time(value: bytes) -> int | None:
        ms = _input_time(value)
        return ms if ms is not None and ms <= horizon else None

    inputs = [t.name("calls"), t.name("chats"), t.name("tickets")]
    found = await _newest_times(settings, {state_topic(settings): (1, _state_time),
                                           **{name: (INPUT_TAIL, input_time) for name in inputs}}, timeout)
    if not found:
        return None
    topic, ms = max(found.items(), key=lambda item: item[1])
    source = (f"the lifecycle state of app {settings.app_id}" if topic == state_topic(settings)
              else f"the newest event of input topic {topic}")
    return PipelineTime(ms, source, int(settings.windows.allowed_lateness_seconds * 1000))


def _state_time(value: bytes) -> int | None:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    watermark = doc.get("watermark") if isinstance(doc, dict) else None
    return watermark if isinstance(watermark, int) and watermark > 0 else None


def _input_time(value: bytes) -> int | None:
    from schemas.events import parse_timestamp_ms

    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None  # bad input: the worker dead-letters it, it moves no event time
    occurred = doc.get("occurred_at") if isinstance(doc, dict) else None
    return parse_timestamp_ms(occurred) if isinstance(occurred, str) else None


async def _newest_times(settings: Any, wanted: Mapping[str, tuple[int, Callable[[bytes], int | None]]],
                        timeout: float) -> dict[str, int]:
    """topic -> the newest time found in the last ``tail`` records of each partition.

    ``wanted``: topic -> (tail, value -> epoch ms or None). Missing or empty topics
    are left out.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ccpulse.kafka_security import client_kwargs, quiet_client_logs

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None,
                                enable_auto_commit=False, **client_kwargs(settings.kafka))
    newest: dict[str, int] = {}
    # Topics just created have no leader for a moment: aiokafka retries, logging each
    # try on stderr beside the command's own line.
    with quiet_client_logs():
        await asyncio.wait_for(consumer.start(), timeout)
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for topic in wanted
                   for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not tps:
                return newest
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > starts[tp]}
            for tp in remaining:
                consumer.seek(tp, max(starts[tp], ends[tp] - wanted[tp.topic][0]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while remaining:
                if loop.time() > deadline:
                    raise asyncio.TimeoutError(f"reading the ends of {', '.join(sorted(wanted))}")
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        ms = None if record.value is None else wanted[tp.topic][1](record.value)
                        if ms is not None:
                            newest[tp.topic] = max(ms, newest.get(tp.topic, ms))
                    if records and records[-1].offset >= ends[tp] - 1:
                        remaining.discard(tp)
                for tp in list(remaining):
                    # Compaction or a transaction marker can leave nothing to read before the end.
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
    return newest


# ---------------------------------------------------------------- the end of input

# The replay gives up waiting for the workers when their group commits nothing further
# of the input for this long: a worker that restarts is back within its session timeout
# (10 s) plus recovery.
END_OF_INPUT_STALL_SECONDS = 60.0


async def send_end_of_input(settings: Any, newest_ms: int, stall_seconds: float = END_OF_INPUT_STALL_SECONDS,
                            timeout: float = 15.0) -> str:
    """Close every window the replay touched: the line to print (streams/stages/end_of_input.py).

    Waits until the workers' consumer group (the app id) has committed every partition of
    the input topics through the ends it reads now, then writes one end-of-input record
    to every partition of ``<app>-rekey``. No worker in the group: nothing is sent (the
    line says so). ``CommandError`` when the group commits nothing further for
    ``stall_seconds``.
    """
    import uuid

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from ccpulse.commands.publish import input_topics
    from ccpulse.core.timestamps import format_ms
    from ccpulse.core.windowing import Windowing
    from ccpulse.kafka_security import client_kwargs, quiet_client_logs
    from streams.stages.end_of_input import EndOfInput, closes_through, rekey_topic

    k, group, rekey = settings.kafka, settings.app_id, rekey_topic(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=k.bootstrap, group_id=None, enable_auto_commit=False,
                                **client_kwargs(k))
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap, **client_kwargs(k))
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap, acks="all", **client_kwargs(k))
    with quiet_client_logs():
        await asyncio.wait_for(asyncio.gather(consumer.start(), admin.start(), producer.start()), timeout)
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for topic in sorted(set(input_topics(settings).values()))
                   for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            if not await _group_members(admin, group):
                return (f"end of input not sent: no worker of app {group} is running (its windows close "
                        "as event time passes them; replay with a worker running to close them at once)")
            await _wait_until_read(admin, group, {tp: end for tp, end in ends.items() if end > starts[tp]},
                                   stall_seconds)
            end = EndOfInput(uuid.uuid4().hex[:12], newest_ms,
                             {f"{tp.topic}/{tp.partition}": offset for tp, offset in sorted(ends.items())})
            partitions = sorted(await producer.partitions_for(rekey))
            for p in partitions:
                await producer.send(rekey, end.value(), partition=p)
            await producer.flush()
        finally:
            await asyncio.gather(consumer.stop(), admin.close(), producer.stop(), return_exceptions=True)
    w = settings.windows
    through = closes_through(Windowing(w.sizes, w.timezone, w.day_start_hour),
                             int(w.allowed_lateness_seconds * 1000), newest_ms)
    line = (f"end of input sent (run {end.run}) to the {len(partitions)} partitions of {rekey}, "
            f"its newest event at {format_ms(newest_ms)}: ")
    if through <= time.time() * 1000:
        return line + f"closes through {format_ms(through)} (its windows' end plus allowed_lateness_seconds)"
    return line + (f"closes through the wall clock, not past it (live windows stay open); the rest "
                   f"closes as event time reaches {format_ms(through)}")


async def _group_members(admin: Any, group: str) -> int:
    described = await coordinated(lambda: admin.describe_consumer_groups([group]))
    return sum(len(g["members"]) for response in described for g in response.to_object()["groups"]
               if g["group"] == group)


async def _wait_until_read(admin: Any, group: str, ends: Mapping[Any, int], stall_seconds: float) -> None:
    """Until ``group`` has committed every partition of ``ends`` through its end (a
    committed offset means every effect of the records before it is written)."""
    from ccpulse.commands.errors import CommandError

    loop = asyncio.get_running_loop()
    best, since = -1, loop.time()
    while True:
        offsets = await coordinated(lambda: admin.list_consumer_group_offsets(group, partitions=list(ends)))
        done = {tp: min(max(offsets[tp].offset, 0), end) if tp in offsets else 0 for tp, end in ends.items()}
        left = {tp: end - done[tp] for tp, end in ends.items() if done[tp] < end}
        if not left:
            return
        read = sum(done.values())
        if read > best:
            best, since = read, loop.time()
        elif loop.time() - since >= stall_seconds:
            behind = ", ".join(f"{tp.topic}/{tp.partition} {n:,} left" for tp, n in sorted(left.items())[:4])
            raise CommandError(f"end of input not sent: the workers of app {group} have committed nothing "
                               f"further for {stall_seconds:g} s ({behind}); is a worker stuck (see its /health)? "
                               "The replayed events are published: their windows close as event time passes them")
        await asyncio.sleep(0.5)


def progress_bar(total: int, stream: Any = None, width: int = 30) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr, redrawn in place (at most ~10 times a second)."""
    out = stream if stream is not None else sys.stderr
    started = time.monotonic()
    last = [0.0]

    def show(done: int, total_now: int | None = None) -> None:
        n = total_now if total_now is not None else total
        now = time.monotonic()
        if done < n and now - last[0] < 0.1:
            return
        last[0] = now
        share = done / n if n else 1.0
        filled = int(width * share)
        rate = done / (now - started) if now > started else 0.0
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {share:6.1%} {done:,}/{n:,} events"
                  f" {rate:,.0f}/s ")
        if done >= n:
            out.write("\n")
        out.flush()

    return show


# ---------------------------------------------------------------- command line

def _partition(text: str) -> int | None:
    if text.strip().lower() == "key":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number or 'key'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ccpulse replay`` (FILE included)."""
    parser.add_argument("file", metavar="FILE", help="the export to replay (CSV, TSV or JSON Lines)")
    parser.add_argument("--mapping", metavar="PATH", default=None,
                        help="the TOML mapping of the file's columns (deploy/replay/README.md); "
                             "not needed for a .jsonl file of EVENTS.md events")
    parser.add_argument("--format", choices=CONNECTOR_FORMATS, default=None, dest="connector_format",
                        help="a file of a platform's own records, mapped by its connector instead of a "
                             "mapping: connect-ctr = Amazon Connect contact records, JSON Lines or as "
                             "exported (README, Connectors)")
    parser.add_argument("--speed", type=arguments.speed, default=None, metavar="max|N",
                        help="event time per wall-clock time: 1 real time, 60 one hour per minute, "
                             "'max' or 0 as fast as possible (default max)")
    parser.add_argument("--limit", type=arguments.positive_int, default=None, metavar="N",
                        help="replay only the first N interactions in event time")
    parser.add_argument("--partition", type=_partition, default=None, metavar="N|key",
                        help="'key' (default): each event on its interaction id's partition, like a "
                             "live producer; N: every event on input partition N (its events then "
                             "take the pipeline's re-key hop)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default=None,
                        help="bad records: stop at the first one, or skip and count them "
                             "(default: the mapping's on_error, else fail)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and check the file, print the summary, publish nothing")
    parser.add_argument("--allow-late", action="store_true",
                        help="publish even when the pipeline's event time is past the file's events "
                             "(they are then counted as late, in no KPI)")
    parser.add_argument("--no-end-of-input", action="store_true",
                        help="do not close the replay's windows once the workers have read it (by default "
                             "the replay waits for that, then closes every window it touched, never past "
                             "the wall clock); leave them to event time, e.g. when more of the same period follows")


def run_from_args(ns: argparse.Namespace, settings: Any) -> int:
    """``ccpulse replay``: read, publish, print one summary line on stderr; 0 on success.

    Raises ``ReplayError`` (a ValueError, one line) for a bad mapping or record and
    ``ccpulse.commands.errors.CommandError`` when Kafka is unreachable.
    """
    from dataclasses import replace

    from ccpulse.commands.errors import CommandError
    from ccpulse.commands.publish import input_topics

    path = Path(ns.file)
    if getattr(ns, "connector_format", None) is not None:
        if ns.mapping is not None:
            raise ReplayError("--format and --mapping: give one (a connector's format needs no mapping)")
        mapping: ReplayMapping | ConnectorFormat | None = ConnectorFormat(ns.connector_format)
    elif ns.mapping is not None:
        mapping = load_mapping(ns.mapping)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        mapping = None  # native: one EVENTS.md event per line
    else:
        raise ReplayError(f"{path}: --mapping is required (only a .jsonl file of EVENTS.md events "
                          "needs none, or a platform's own records with --format; see deploy/replay/README.md)")
    if mapping is not None and ns.on_error is not None:
        mapping = replace(mapping, on_error=ns.on_error)
    started = time.monotonic()
    if ns.dry_run:
        _events, stats = load(path, mapping, ns.limit)
        print(f"ccpulse replay: {path} (dry run): {stats.summary()}", file=sys.stderr)
        return 0

    from streams.topics import KafkaUnavailable, ensure_topics_async

    topics = input_topics(settings)
    k = settings.kafka
    from ccpulse.kafka_security import describe, publisher_kwargs
    security = publisher_kwargs(k)
    show = progress_bar(0) if sys.stderr.isatty() else None

    async def kafka(step: Any) -> Any:
        try:
            return await step
        except (OSError, asyncio.TimeoutError) as exc:
            raise CommandError(describe(exc, k)) from None
        except Exception as exc:  # aiokafka errors: one line, not a traceback
            if type(exc).__module__.startswith("aiokafka"):
                raise CommandError(describe(exc, k)) from None
            raise

    async def run() -> ReplayStats:
        try:
            await ensure_topics_async(settings)
        except KafkaUnavailable as exc:
            raise CommandError(str(exc)) from None
        stop = asyncio.Event()
        pipeline = None if ns.allow_late else await kafka(pipeline_event_time(settings))
        return await kafka(replay(path, mapping, k.bootstrap, topics, ns.speed, progress=show,
                                  stop=stop, limit=ns.limit, partition=ns.partition, pipeline=pipeline,
                                  **security))

    stats = asyncio.run(run())
    used = ", ".join(topics[f] for f in stats.families) or "no topic"
    print(f"ccpulse replay: {path}: {stats.summary()}; published to {used} "
          f"in {time.monotonic() - started:.1f} s", file=sys.stderr)
    if not ns.no_end_of_input and stats.newest_ms is not None:
        line = asyncio.run(kafka(send_end_of_input(settings, stats.newest_ms)))
        print(f"ccpulse replay: {line}", file=sys.stderr)
    return 0
