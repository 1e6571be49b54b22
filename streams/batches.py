"""A batch is committed only once its stage has applied it, and only by the worker that owns it.

Every agent takes its input in batches (``take_events``). Two things Faust does not
guarantee on its own, both found by ``ccpulse chaos``:

1. ``take_events`` acknowledges a batch in a ``finally``: also when the agent's work
   on it raised or was cancelled (a worker stopping while a batch is being sent or
   written). Faust then commits those offsets, and nobody ever processes the events.
   Here every message of a batch holds one more reference until the batch has been
   applied, so Faust's own acknowledgement never completes for an unfinished batch;
   its offsets stay uncommitted and are read again.

2. With ``stream_wait_empty=False`` Faust does not wait for agents at a rebalance, and
   a batch may hold events fetched before it. Applied to a partition that moved away,
   such an event re-creates state (an engine, table entries, changelog records) next
   to its new owner. Stateful stages therefore wait until the rebalance and state
   recovery are over and apply only the events of partitions still assigned to them;
   the others stay unacknowledged, and their new owner reads them from its committed
   offset. (Skipping *and* acknowledging them, as Faust's own stream does, lost events:
   right after a rebalance Faust has forgotten the committed offset and commits past them.)
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

log = logging.getLogger(__name__)

REBALANCE_POLL_SECONDS = 0.05


class NotApplied(Exception):
    """Raised in an ``applying`` block to leave its batch uncommitted without failing the agent
    (a sink stopping before its write succeeded)."""


@asynccontextmanager
async def applying(app: Any, batch: Sequence[Any], *, fenced: bool) -> AsyncIterator[Sequence[Any]]:
    """``async with applying(app, batch, fenced=...) as events:`` apply ``events``; they are
    released for commit when the block completes, never if it raises or is cancelled.
    ``fenced``: leave out (unacknowledged) the events of partitions this worker no longer owns."""
    for event in batch:
        event.message.incref()
    events = await _owned(app, batch) if fenced else batch
    try:
        yield events
    except NotApplied as exc:
        log.info("batch of %d events left uncommitted: %s", len(batch), exc)
        return
    for event in events:
        event.message.decref()


async def _owned(app: Any, batch: Sequence[Any]) -> Sequence[Any]:
    generation = app.consumer_generation_id
    if app.flow_control.is_active() and all(e.message.generation_id == generation for e in batch):
        return batch
    # Fetched before a rebalance (or one is under way): decide once it is over, when the
    # assignment is known and the state of the partitions kept is recovered.
    while app.rebalancing or not app.flow_control.is_active():
        await asyncio.sleep(REBALANCE_POLL_SECONDS)
    assigned = app.consumer.assignment()
    kept = [e for e in batch if e.message.tp in assigned]
    if len(kept) < len(batch):
        log.info("left %d events fetched before the rebalance to their partitions' new owner",
                 len(batch) - len(kept))
    return kept
