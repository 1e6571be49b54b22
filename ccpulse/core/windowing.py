"""Tumbling event-time windows: which window a timestamp falls in, and where it ends.

Windows shorter than a day follow the configured time zone's offset, so an hourly
window in a +05:30 zone runs from local hh:00 to hh:00 (with whole-hour
offsets this is the same as UTC alignment). The day window starts at
``day_start_hour`` local time: many 24-hour centres start their day at 06:00. Days
are local calendar days, so a daylight-saving change makes one 23 h and one 25 h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

DAY = 86400
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The timestamps the decoder accepts (schemas/events.py) and RFC 3339 can write.
FIRST_MS = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
# One Gregorian cycle: weekdays, leap days and so every zone's recurring rule repeat after
# it, and years 1-400 all precede the first transition of every zone. Python's datetime
# stops at years 1 and 9999, so moments within a few days of either end (a local time
# there may be in year 0 or 10000) are looked up one cycle inward and shifted back.
_CYCLE_DAYS = 146_097
_CYCLE_MS = _CYCLE_DAYS * 86_400_000
_EDGE_DAYS = 3
_SAFE_FIRST_MS = FIRST_MS + _EDGE_DAYS * 86_400_000
_SAFE_LAST_MS = LAST_MS - _EDGE_DAYS * 86_400_000


def _inward_ms(ts_ms: int) -> int:
    """How far to move ``ts_ms`` so that its local time is a Python datetime."""
    if ts_ms < _SAFE_FIRST_MS:
        return _CYCLE_MS
    if ts_ms > _SAFE_LAST_MS:
        return -_CYCLE_MS
    return 0


def _inward_days(day: int) -> int:
    if day < date(1, 1, 1).toordinal() + _EDGE_DAYS:
        return _CYCLE_DAYS
    if day > date(9999, 12, 31).toordinal() - _EDGE_DAYS:
        return -_CYCLE_DAYS
    return 0


@dataclass
class Windowing:
    sizes: tuple[int, ...]
    timezone: str = "UTC"
    day_start_hour: int = 0
    _zone: ZoneInfo = field(init=False, repr=False)
    _day_starts: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _utc: bool = field(init=False, repr=False)
    _starts: dict[int, list[tuple[int, int]]] = field(default_factory=dict, init=False, repr=False)
    # Every window boundary is a multiple of this (ms): all the moments of one granule lie in the
    # same windows, so they share one entry of the caches keyed by ``granule_of``. In UTC it is the
    # gcd of the sizes and the day's start; a zone's offset may change at any moment, so 1 there.
    granule_ms: int = field(init=False, repr=False, default=1)

    def __post_init__(self) -> None:
        self._zone = ZoneInfo(self.timezone)
        self._utc = self.timezone in ("UTC", "Etc/UTC")
        if self._utc and self.sizes:
            bounds = [size * 1000 for size in self.sizes]
            if DAY in self.sizes:
                bounds.append(self.day_start_hour * 3_600_000)
            self.granule_ms = math.gcd(*bounds)

    def granule_of(self, ts_ms: int) -> int:
        """The cache key of ``ts_ms``: equal keys, equal windows."""
        return ts_ms // self.granule_ms

    def start(self, ts_ms: int, size_s: int) -> int:
        if size_s == DAY:
            if self._utc:  # no calendar needed: every UTC day is 24 h
                shift = self.day_start_hour * 3_600_000
                return ts_ms - (ts_ms - shift) % 86_400_000
            return self._day_start(self._local_day(ts_ms))
        size_ms = size_s * 1000
        offset = 0 if self._utc else self._offset_ms(ts_ms)
        return ts_ms - (ts_ms + offset) % size_ms

    def end(self, size_s: int, start_ms: int) -> int:
        if size_s == DAY:
            if self._utc:
                return start_ms + 86_400_000
            return self._day_start(self._local_day(start_ms) + 1)
        return start_ms + size_s * 1000

    def starts(self, ts_ms: int) -> list[tuple[int, int]]:
        """(size, start) of the window of every configured size containing ``ts_ms``.

        Cached: an interaction's facts are derived again at each of its steps, from
        the same few timestamps. The returned list is shared: do not modify it.
        """
        granule = ts_ms // self.granule_ms
        cached = self._starts.get(granule)
        if cached is None:
            if len(self._starts) > 4096:
                self._starts.clear()
            cached = self._starts[granule] = [(size, self.start(ts_ms, size)) for size in self.sizes]
        return cached

    def placeable(self, ts_ms: int) -> str | None:
        """None if every window of ``ts_ms`` lies within years 1-9999 (records write
        their bounds as RFC 3339); else why not, for a dead-letter record."""
        # A window starts at most its size plus a day (a zone's offset) before its timestamps.
        margin = max(self.sizes, default=0) * 1000 + 2 * 86_400_000
        if FIRST_MS + margin <= ts_ms <= LAST_MS - margin:
            return None
        for size, start in self.starts(ts_ms):
            end = self.end(size, start)
            if start < FIRST_MS or end > LAST_MS:
                return (f"its {size} s window in {self.timezone} (day starting at "
                        f"{self.day_start_hour:02d}:00) runs outside 0001-01-01T00:00:00Z.."
                        f"9999-12-31T23:59:59.999Z")
        return None

    def _offset_ms(self, ts_ms: int) -> int:
        moment = _EPOCH + timedelta(milliseconds=ts_ms + _inward_ms(ts_ms))
        return int(moment.astimezone(self._zone).utcoffset().total_seconds() * 1000)

    def _local_day(self, ts_ms: int) -> int:
        """The proleptic Gregorian ordinal of the local day holding ``ts_ms``."""
        inward = _inward_ms(ts_ms)
        local = (_EPOCH + timedelta(milliseconds=ts_ms + inward)).astimezone(self._zone)
        return (local - timedelta(hours=self.day_start_hour)).toordinal() - inward // 86_400_000

    def _day_start(self, day: int) -> int:
        cached = self._day_starts.get(day)
        if cached is None:
            inward = _inward_days(day)
            shifted = date.fromordinal(day + inward)
            local = datetime(shifted.year, shifted.month, shifted.day, self.day_start_hour, tzinfo=self._zone)
            cached = ((local.astimezone(timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
                      - inward * 86_400_000)
            if len(self._day_starts) > 4096:  # replays span years at most; keep it bounded anyway
                self._day_starts.clear()
            self._day_starts[day] = cached
        return cached
