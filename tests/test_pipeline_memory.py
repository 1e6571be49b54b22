"""What the pipeline stage holds per open interaction beyond the interactions table (issue 15).

tests/measure_worker_memory.py found a second map of every open interaction's key in the
compute worker: the stage's key -> partition cache (10 MB with 100,000 open: its dict and
the key bytes it kept alive). Whether a key hashes to the partition it arrived on is known
already for every interaction the table holds. Counted exactly with tracemalloc.
"""

from __future__ import annotations

import gc
import tracemalloc

from streams.stages.pipeline import PipelineStage
from tests.test_pipeline_stage import NOW, REKEY, T0, Rec, call, iid_on, settings

OPEN = 3000


def test_the_stage_keeps_nothing_per_key_beside_the_interactions_table() -> None:
    interactions: dict = {}
    stage = PipelineStage(settings(), REKEY, interactions=interactions)
    partition = 1
    stage.assign(partition)
    ids = [iid_on(partition, prefix=f"m{n}-") for n in range(OPEN)]
    # One queue and one event time: the engine's windows and live state do not grow with them.
    records = [Rec(iid.encode(), call(iid, 1, "offered", T0), offset) for offset, iid in enumerate(ids)]
    stage.on_batch("calls", partition, records[:10], NOW)
    stage.checkpoint(NOW)
    del ids
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    stage.on_batch("calls", partition, records[10:], NOW)
    stage.checkpoint(NOW)
    assert len(interactions) == OPEN
    # What the table holds goes with it: the interactions and their ids.
    interactions.clear()
    del records
    gc.collect()
    left = (tracemalloc.get_traced_memory()[0] - before) / (OPEN - 10)
    tracemalloc.stop()
    assert left < 16, f"{left:.0f} bytes per interaction stay in the stage once the table let it go"


class _Topic:
    def get_topic_name(self) -> str:
        return "t"


def test_messages_waiting_in_the_outbox_cost_their_size_not_a_page() -> None:
    """orjson 3.13 allocates every ``dumps`` result at about 4 KiB (ijl/orjson#483); the
    outbox holds each message from the stage's batch until the broker acknowledged it
    (thousands per checkpoint while a backlog is read)."""
    from types import SimpleNamespace

    import orjson

    from streams.outbox import Outbox

    outbox = Outbox(SimpleNamespace())
    topic = _Topic()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        outbox.send(topic, b"k", orjson.dumps({"interaction_id": f"i{i}", "queue": "q1"}))  # as stages do
        outbox.send(topic, b"k", {"interaction_id": f"i{i}", "queue": "q1"})  # dumped by the outbox
    per_message = (tracemalloc.get_traced_memory()[0] - before) / 4000
    tracemalloc.stop()
    assert len(outbox) == 4000
    assert per_message < 200, f"{per_message:.0f} bytes per queued message of about 40"
