"""A replay's end of input: the record ``ccpulse replay`` writes to every partition of ``<app>-rekey``.

Event time moves only with events; once the input goes quiet it follows the wall clock
at 1x (``idle_close_seconds``), so a replayed day used to stay open until its midnight
had passed on the wall clock. After publishing, ``ccpulse replay`` waits until the
worker's consumer group has committed every partition of the input topics through
the ends it read then, and writes one record to every partition of ``<app>-rekey``::

    {"end_of_input": {"run": "<id>", "newest": <ms of its newest event>,
                      "sources": {"calls/0": <end offset>, ..., "tickets/3": <end offset>}}}

The owner of partition *p* moves each of its input sources (``calls/p``, ``chats/p``,
``tickets/p``) to ``min(closes_through(newest), the wall clock)``, as a source with
nothing left to read, and its next clock carries that to every engine, so every window
the replay touched becomes final within a checkpoint and a tick.

Why it is safe:

- A committed input offset means its records were applied or forwarded and every
  effect written, the forwarded copies in ``<app>-rekey`` included (offsets are
  committed only after the checkpoint's producer flush). So the end-of-input record
  lands in ``<app>-rekey/q`` behind every copy forwarded there, and no owner holds
  state about it: a restart or a rebalance between the replay and the record starts
  from committed offsets at or past the ends, and a record read again moves nothing
  (event time only grows). Waiting on the group, not on each owner's reading, is what
  leaves nothing to remember across a restart.
- An owner that has read a source short of its end is reading it again (its offsets
  were reset): that source is left alone, and its records are not made late.
- Never past the wall clock: an event a live producer stamps now is not late because
  of a replay of today (its windows close at ``end + allowed lateness``, after now,
  as long as the producer's delay is below ``allowed_lateness_seconds``; the same
  bound as the wall-clock fallback). A replay of an earlier day closes everything.
- The owner computes the close with its own windows (size, zone, day start,
  lateness), not the replay's settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from ccpulse.config import Settings
from ccpulse.core.timestamps import format_ms
from ccpulse.core.watermark import InputWatermarks
from ccpulse.core.windowing import Windowing

log = logging.getLogger(__name__)

END_OF_INPUT_FIELD = "end_of_input"


@dataclass(frozen=True)
class EndOfInput:
    run: str
    newest_ms: int  # the newest occurred_at the replay published
    sources: Mapping[str, int]  # "topic/partition" of the input -> its end offset once all was read

    def value(self) -> bytes:
        return orjson.dumps({END_OF_INPUT_FIELD: {"run": self.run, "newest": self.newest_ms,
                                                  "sources": dict(self.sources)}})

    @classmethod
    def parse(cls, doc: Any) -> "EndOfInput":
        """From the record's ``end_of_input`` field; ``ValueError`` names what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError(f"{END_OF_INPUT_FIELD}: an object expected, got {type(doc).__name__}")
        run, newest, sources = doc.get("run"), doc.get("newest"), doc.get("sources")
        if not isinstance(run, str):
            raise ValueError(f"{END_OF_INPUT_FIELD}: run must be a string")
        if not _count(newest):
            raise ValueError(f"{END_OF_INPUT_FIELD}: newest must be epoch milliseconds, got {newest!r:.40}")
        if not isinstance(sources, dict) or not all(isinstance(k, str) and _count(v) for k, v in sources.items()):
            raise ValueError(f"{END_OF_INPUT_FIELD}: sources must map topic/partition to an offset")
        return cls(run, newest, sources)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def closes_through(windowing: Windowing, lateness_ms: int, newest_ms: int) -> int:
    """Event time at which every window holding ``newest_ms`` or earlier is final: the
    latest close (end plus lateness, as ``PartitionEngine.closes_at``) of its windows."""
    return max(windowing.end(size, windowing.start(newest_ms, size)) for size in windowing.sizes) + lateness_ms


def apply_end_of_input(end: EndOfInput, partition: int, topics: Iterable[str], sources: InputWatermarks,
                       positions: Mapping[str, int], through_ms: int, now_ms: int) -> list[str]:
    """Move this partition's input sources to ``min(through_ms, now_ms)``; returns those moved.

    ``positions``: source -> one past the last offset this owner has read since it was
    assigned the partition (a source it has not read is where the group committed).
    """
    at = min(through_ms, now_ms)
    moved, behind = [], []
    for topic in topics:
        source = f"{topic}/{partition}"
        target = end.sources.get(source)
        if target is None:
            continue  # not in the replay's view of the input (fewer partitions then)
        if positions.get(source, target) < target:
            behind.append(f"{source} at {positions[source]:,} of {target:,}")
            continue
        if at > sources.newest.get(source, -1):
            # Read to its end: a source with nothing left to read, reported idle at once.
            sources.seen(source, at, now_ms - sources.idle_ms)
            moved.append(source)
    if behind:
        log.warning("end of input of replay %s: %s read again from an earlier offset; left to its events",
                    end.run, ", ".join(behind))
    if moved:
        log.info("end of input of replay %s: %s moved to %s", end.run, ", ".join(moved), format_ms(at))
    return moved


def rekey_topic(settings: Settings) -> str:
    """``<app>-rekey``, as the worker names it (streams/context.py ``Pipeline.internal``)."""
    return f"{settings.topics.prefix}{settings.app_id}-rekey"
