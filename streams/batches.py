"""A batch is committed only once its stage has applied it.

Every agent takes its input in batches (``take_events``), and ``take_events``
acknowledges a batch in a ``finally``: also when the agent's work on it raised or
was cancelled (a worker stopping while a batch is being sent or written). Faust
then commits those offsets and nobody ever processes the events -- ``ccpulse
chaos`` lost events that way when a worker was stopped mid-run. Here every message
of a batch holds one more reference until the batch has been applied, so Faust's
acknowledgement never completes for an unfinished batch; its offsets stay
uncommitted and the events are read again (by this worker after a restart, or by
the partition's next owner). A reference, unlike marking the message acknowledged,
also works when several agents read the same topic.

A batch fetched before a rebalance may still be applied after it, to a partition
this worker no longer owns; its effects are idempotent (event ids, snapshot
versions), and the stages drop the engines of partitions they no longer own at
their next publish tick (streams/lifecycle.py, streams/fcr.py).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

log = logging.getLogger(__name__)


class NotApplied(Exception):
    """Raised in an ``applying`` block to leave its batch uncommitted without failing the agent
    (a sink stopping before its write succeeded)."""


@asynccontextmanager
async def applying(batch: Sequence[Any]) -> AsyncIterator[Sequence[Any]]:
    """``async with applying(batch) as events:`` apply ``events``; they are released for
    commit when the block completes, never if it raises or is cancelled."""
    for event in batch:
        event.message.incref()
    try:
        yield batch
    except NotApplied as exc:
        log.info("batch of %d events left uncommitted: %s", len(batch), exc)
        return
    for event in batch:
        event.message.decref()
