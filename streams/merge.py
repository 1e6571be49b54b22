"""The Faust shell around the merge stage (streams/stages/merge.py): its agent over
``<app>-window-partials``, its publish timer and nothing else.

Each batch (and each tick) hands ``MergeStage`` what it needs and writes what it
returns through the outbox: dead letters, then the merged table's changelog, then the
records, then the table's deletes; the flush comes before the next batch is taken,
which is when Faust acknowledges this one.
"""

from __future__ import annotations

import time

from streams.context import Pipeline
from streams.guard import stage_guard
from streams.stages.io import Consumed
from sinks.prometheus import LatestQueueStates
from streams.stages.merge import KPI_QUEUE_STATE, PUBLISH_SECONDS, STAGE, MergeOutput, MergeStage
from streams.stages.partials import live_key
from streams.stages.pipeline import key_partition


def register(pipe: Pipeline) -> None:
    app, outbox = pipe.app, pipe.outbox
    merged = pipe.tables.merged
    stage = MergeStage(pipe.settings, merged.data, metrics=pipe.metrics)
    guard = stage_guard(pipe)
    # The live agent gauges of /metrics read the newest queue-state record of each queue
    # this worker merges (a queue's live partials are keyed by live_key: its partition).
    queue_states = LatestQueueStates()
    partials_topic, partitions = pipe.internal("window-partials"), pipe.settings.kafka.partitions
    pipe.metrics.watch_queue_state(lambda: queue_states.records(
        tp.partition for tp in app.assignor.assigned_actives() if tp.topic == partials_topic))

    def write(out: MergeOutput) -> None:
        for failure in out.failures:
            guard.record_failed(STAGE, failure.message, failure.error)
        for put in out.puts:
            outbox.put(merged, put.partition, put.key, put.value)
        for record in out.records:
            outbox.send(pipe.topics.named(record.topic), record.key, record.value)
            if record.topic == KPI_QUEUE_STATE:
                queue_states.update(key_partition(live_key(record.value["queue"], record.value["channel"]).encode(),
                                                  partitions), record.value)
        for delete in out.deletes:
            outbox.delete(merged, delete.partition, delete.key)

    @app.agent(pipe.topics.partials, name="merge")
    async def merge(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(2000, within=0.05):
            mono = time.monotonic()
            write(stage.on_batch([Consumed.of(e) for e in batch],
                                 generation=app.consumer_generation_id, now_ms=int(time.time() * 1000),
                                 mono=mono, publish=stage.publish_due(mono)))
            await outbox.flush()

    @app.timer(PUBLISH_SECONDS, name="merge-flush")
    async def flush_merged() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        write(stage.on_flush(generation=app.consumer_generation_id, now_ms=int(time.time() * 1000),
                             mono=time.monotonic()))
        await outbox.flush()

    @app.timer(pipe.settings.windows.publish_interval_seconds, name="publish-merged")
    async def publish_merged() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return  # recovery is rewriting the table: the next generation publishes it all again
        write(stage.on_tick(generation=app.consumer_generation_id, now_ms=int(time.time() * 1000),
                            mono=time.monotonic()))
        await outbox.flush()
