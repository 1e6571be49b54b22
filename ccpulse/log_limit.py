"""Log lines that bad or late input could repeat thousands of times a second, rate-limited.

Pure: the caller passes the clock (seconds, e.g. ``time.monotonic()``) and the
function that writes a line, so the limits are tested without a logger or sleeps.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable


class LogLimiter:
    """At most one line per ``interval_s``; what it held back is counted for the next line."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next_at: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """None: do not write the line (it is counted). Otherwise write it, and say how
        many lines were held back since the previous one (the returned number)."""
        if self._next_at is not None and now < self._next_at:
            self.suppressed += 1
            return None
        self._next_at = now + self.interval_s
        held, self.suppressed = self.suppressed, 0
        return held


class CountedLines:
    """Occurrences by key, written as one summary line at most every ``interval_s``.

    The first occurrence after a quiet spell is written at once; later ones are
    counted and written by ``flush`` (call it on a timer) once the interval has passed,
    so a burst ends up in one line with its counts instead of vanishing.
    """

    def __init__(self, write: Callable[[str], None], what: str, interval_s: float = 10.0,
                 shown: int = 5) -> None:
        self._write, self._what, self._shown = write, what, shown
        self._limiter = LogLimiter(interval_s)
        self._counts: Counter[str] = Counter()

    def note(self, key: str, now: float) -> None:
        self._counts[key] += 1
        self.flush(now)

    def flush(self, now: float) -> None:
        if not self._counts or self._limiter.allow(now) is None:
            return
        total = sum(self._counts.values())
        top = self._counts.most_common(self._shown)
        more = len(self._counts) - len(top)
        listed = "; ".join(f"{key}: {n}" for key, n in top)
        self._write(f"{total} {self._what}: {listed}" + (f" (and {more} more)" if more else ""))
        self._counts.clear()
