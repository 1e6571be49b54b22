"""Keep events fetched before a rebalance away from state the worker may no longer own.

With ``stream_wait_empty=False`` Faust does not wait for agents at revocation, and
``take_events`` may still hold events it buffered before the rebalance. Processed
after it, such an event would re-create a partition engine (or table entry) that now
belongs to another worker: a zombie that publishes partials and changelog records
for that partition next to its real owner. Faust's own stream skips these events
(``message.generation_id`` older than the consumer's, or flow control suspended);
the batch agents apply the same test.

A skipped event must also never be acknowledged. ``take_events`` acknowledges its
whole batch afterwards, and right after a rebalance Faust has forgotten the
partition's committed offset, so an acknowledged stale event can be committed
before Faust seeks back to the committed offset -- and then nobody processes it
(``ccpulse chaos --scenarios rebalance`` lost events that way). Marked as already
acknowledged, it stays uncommitted, and the partition's owner -- this worker or
another -- fetches it again from the committed offset.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)


def current_events(app: Any, batch: Sequence[Any]) -> Sequence[Any]:
    """The events of ``batch`` fetched in the consumer's current generation; the others are
    withheld from processing and from the offsets Faust commits."""
    if not app.flow_control.is_active():
        stale: Sequence[Any] = batch
        kept: Sequence[Any] = ()
    else:
        generation = app.consumer_generation_id
        if all(event.message.generation_id == generation for event in batch):
            return batch
        kept = [event for event in batch if event.message.generation_id == generation]
        stale = [event for event in batch if event.message.generation_id != generation]
    for event in stale:
        # Message.ack() does nothing for a message already marked acknowledged, so the
        # consumer never records the offset as safe to commit.
        event.message.acked = True
    if stale:
        log.info("withheld %d events fetched before the rebalance (fetched again from the committed offset)",
                 len(stale))
    return kept
