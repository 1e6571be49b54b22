"""Event time of the input, per source partition (pure; the caller passes the clock).

Each input partition is a *source* with its own newest ``occurred_at``. The stage
that reads the input reports them all downstream; consumers take the minimum
over the active sources (see ``low_watermark``). A source that stopped
delivering for ``idle_ms`` of wall-clock time, with nothing left to read, is reported
idle, so a topic that went quiet (no chats tonight) does not stop event time for the
rest; once every source is idle, everything sent has been read and event time is the
newest seen. Silence alone is not enough: a worker that stalls (a slow store write
holding the agent while the timers tick) delivers nothing from partitions that have
records waiting, and taking them for idle moved event time to the newest partition's,
past the records they still held (a replay keyed by interaction, read by a busy worker).

After a restart the lifecycle state still holds each source as last reported, maybe
active, while this stage starts out knowing none: a source that then stays silent
was never reported again and held event time back for good. So every source this
stage is assigned counts (``assigned``): one that delivered nothing since is reported
idle once it has had nothing left to read for ``idle_ms``. One with records left to
read is reported active with no time of its own (-1), so the state from before keeps
holding event time back, and one reported idle before holds it again: a partition read
late after a restart, or one a replay has just begun to fill, does not make its events late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


def input_sources(topics: Iterable[str], partitions: int) -> frozenset[str]:
    """Every input partition ("topic/partition") of a deployment: what event time waits for.

    An engine that took the minimum over the sources it had *heard of* let a partition
    whose owner had not reported yet (a fresh start, a backlog read in another order)
    count for nothing, and an event read there later was late. So event time moves only
    once each of these has reported, with a time or as idle (``InputWatermarks``)."""
    return frozenset(f"{topic}/{p}" for topic in topics for p in range(partitions))


def lifecycle_source(partition: int) -> str:
    """A pipeline partition's own event time as a source of the stages fed by what it
    derives (FCR, the agent stage): behind it, every event it will apply was applied,
    including those that reached it through ``<app>-rekey``, which its input clock does not wait for."""
    return f"lifecycle/{partition}"


def low_watermark(sources: Iterable[list]) -> int:
    """Event time from [newest, idle] per source: the slowest active one, or the newest if all idle."""
    values = list(sources)
    active = [ts for ts, idle in values if not idle]
    return min(active) if active else max(ts for ts, _idle in values)


@dataclass
class InputWatermarks:
    idle_ms: int
    newest: dict[str, int] = field(default_factory=dict)
    arrived: dict[str, int] = field(default_factory=dict)  # source -> wall-clock ms of its last event
    # Assigned sources that delivered nothing yet -> wall-clock ms since they have had nothing to read.
    caught_up_since: dict[str, int] = field(default_factory=dict)
    # Sources with records left to read at the last look (``assigned``): not idle...
    behind: set[str] = field(default_factory=set)
    # ... unless silent this long (None: ever). A log ending in a transaction marker looks
    # unread for good (the marker is never delivered), and must not hold event time forever.
    behind_limit_ms: int | None = None
    _reported: dict[str, list] = field(default_factory=dict)

    def seen(self, source: str, ts: int, now_ms: int) -> None:
        if ts > self.newest.get(source, -1):
            self.newest[source] = ts
        self.arrived[source] = now_ms
        self.caught_up_since.pop(source, None)

    def assigned(self, source: str, now_ms: int, caught_up: bool) -> None:
        """``source`` is read by this stage; ``caught_up``: nothing is left to read in it."""
        if caught_up:
            self.behind.discard(source)
        else:
            self.behind.add(source)
        if source in self.newest:
            return
        if caught_up:
            self.caught_up_since.setdefault(source, now_ms)
        else:
            self.caught_up_since.pop(source, None)

    def forget(self, source: str) -> None:
        """The partition was given to another worker, which reports it from now on."""
        self.newest.pop(source, None)
        self.arrived.pop(source, None)
        self.caught_up_since.pop(source, None)
        self.behind.discard(source)
        self._reported.pop(source, None)

    def report(self, now_ms: int) -> dict[str, list] | None:
        """Every source's [newest event time, idle], or None when nothing changed since the last report."""
        behind, limit = self.behind, self.behind_limit_ms
        state = {}
        for source, ts in self.newest.items():
            silent = now_ms - self.arrived[source]
            state[source] = [ts, silent >= self.idle_ms and (source not in behind
                                                             or (limit is not None and silent >= limit))]
        # No event time of its own (-1): the consumer keeps the one it holds and marks it idle,
        # or active while records wait to be read (reported idle before, it held nothing back).
        state.update({source: [-1, True] for source, since in self.caught_up_since.items()
                      if now_ms - since >= self.idle_ms})
        state.update({source: [-1, False] for source in behind if source not in self.newest})
        if state == self._reported:
            return None
        self._reported = dict(state)
        return state
