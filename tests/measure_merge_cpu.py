"""CPU time of ``MergeStage`` per partial and per published record (a plain script, not a test).

    .venv/bin/python tests/measure_merge_cpu.py [--hours 2] [--rate 2] [--profile]

The partials are the real ones: the simulator's voice + chat + ticket mix
(ccpulse/commands/simulate*.py) applied to one engine per partition, the changed
windows and live queues taken every ``--checkpoint`` events of a partition (as the
pipeline's checkpoint does) with a merge clock per partition, all encoded and decoded
as JSON before the clock starts. Only ``on_batch`` (``--batch`` partials at a time, what
reaches the agent within its 50 ms) and ``on_tick`` (every ``--tick`` batches) are timed.
A digest of every record published (``published_at`` fixed) shows that a change to the
stage left its output as it was. No assertion: the figures are for the report.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path
from zlib import crc32

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccpulse.commands.simulate import QueueModel, SimulationConfig  # noqa: E402
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events  # noqa: E402
from ccpulse.config import Settings  # noqa: E402
from ccpulse.core.engine import PartitionEngine  # noqa: E402
from ccpulse.core.lifecycle import Interaction  # noqa: E402
from ccpulse.core.windowing import Windowing  # noqa: E402
from schemas.events import Event, validate  # noqa: E402
from schemas.records import event_message, step_from_message  # noqa: E402
from streams.stages.io import Consumed  # noqa: E402
from streams.stages.merge import MergeStage  # noqa: E402
from streams.stages.partials import live_partial, window_partial  # noqa: E402

AGENT_BATCH = 2000  # the merge agent's take_events: the most it takes at once


def partial_batches(settings: Settings, hours: float, rate: float, checkpoint: int,
                    batch: int) -> list[list[tuple[int, bytes]]]:
    """The merge agent's batches for ``hours`` of the simulated mix over the configured partitions."""
    w = settings.windows
    partitions = settings.kafka.partitions
    windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
    engines = [PartitionEngine(p, windowing, w.allowed_lateness_seconds, settings.thresholds_for,
                               w.interaction_horizon_seconds) for p in range(partitions)]
    voice = SimulationConfig(rate=rate, queues=tuple(QueueModel(f"voice-{i}", agents=40) for i in range(8)),
                             transfer_probability=0.05, repeat_probability=0.1, rating_probability=0.2)
    chat = ChatConfig(rate=rate * 0.3, queues=(QueueModel("chat-support", agents=30),))
    interactions: dict[str, Interaction] = {}
    since = [0] * partitions
    stream: list[tuple[int, bytes, bytes]] = []  # (merge partition, key, value) in the order produced
    for offset, (family, doc) in enumerate(generate_mixed_events(voice, chat, replace(TicketConfig(rate=rate * 0.1)),
                                                                 hours * 3600)):
        ev = validate(doc, family, now_ms=10**15)
        assert isinstance(ev, Event), ev
        p = crc32(ev.interaction_id.encode()) % partitions
        inter = interactions.setdefault(ev.interaction_id, Interaction(ev.interaction_id, ev.channel, partition=p))
        engine = engines[p]
        engine.apply(inter, step_from_message(event_message(ev, orjson.dumps(doc), family, p, offset)), offset,
                     f"calls/{p}")
        since[p] += 1
        if since[p] < checkpoint:
            continue
        since[p] = 0
        watermark = engine.record.watermark
        messages = [window_partial(p, snap, windowing.end(snap.key[0], snap.key[1]), watermark)
                    for snap in engine.close() + engine.take_dirty()]
        messages += [live_partial(p, q, c, live, engine.version(False), watermark)
                     for (q, c), live in engine.take_live()]
        for key, value in messages:
            stream.append((crc32(key) % partitions, key, orjson.dumps(value)))
        for merge_partition in range(partitions):
            for source in (str(p), f"fcr-{p}"):
                stream.append((merge_partition, b"", orjson.dumps(
                    {"kind": "clock", "source": source, "watermark": watermark})))
    # The agent reads its partitions interleaved, in batches of what arrived within 50 ms.
    return [[(mp, value) for mp, _, value in stream[i:i + batch]] for i in range(0, len(stream), batch)]


def run(settings: Settings, encoded: list[list[tuple[int, bytes]]], tick_every: int) -> dict[str, float | str | int]:
    # Decoded afresh each run, as the agent gets them: the stage may keep what it is given.
    topic = "ccpulse-window-partials"
    batches = [[Consumed(topic, mp, 0, orjson.loads(value)) for mp, value in batch] for batch in encoded]
    stage = MergeStage(settings, {})
    digest = hashlib.sha256()
    spent = 0.0
    records = partials = 0
    now_ms, mono = 1_767_600_000_000, 0.0
    clock = time.process_time
    for n, batch in enumerate(batches):
        mono += 0.2
        t0 = clock()
        out = stage.on_batch(batch, generation=1, now_ms=now_ms, mono=mono)
        spent += clock() - t0
        outs = [out]
        if n % tick_every == tick_every - 1:
            t0 = clock()
            outs.append(stage.on_tick(generation=1, now_ms=now_ms, mono=mono))
            spent += clock() - t0
        partials += len(batch)
        for o in outs:
            assert not o.failures, o.failures[:1]
            records += len(o.records)
            for r in o.records:
                digest.update(r.topic.encode() + r.key + orjson.dumps(r.value, option=orjson.OPT_SORT_KEYS))
            for put in o.puts:
                digest.update(b"put" + put.key.encode() + orjson.dumps(put.value))
            for d in o.deletes:
                digest.update(b"del" + d.key.encode())
    return {"partials": partials, "records": records, "entries": len(stage.merged),
            "us_per_partial": spent / partials * 1e6, "us_per_record": spent / max(records, 1) * 1e6,
            "digest": digest.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=2.0, help="calls per second (chats 0.3x, tickets 0.1x)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--checkpoint", type=int, default=300, help="events of a partition per checkpoint")
    parser.add_argument("--batch", type=int, default=250,
                        help=f"partials per merge batch (at most {AGENT_BATCH}, what arrived within 50 ms)")
    parser.add_argument("--tick", type=int, default=5, help="batches per publish tick")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of one run")
    args = parser.parse_args()
    base = Settings()
    settings = replace(base, kafka=replace(base.kafka, partitions=args.partitions))
    batches = partial_batches(settings, args.hours, args.rate, args.checkpoint, min(args.batch, AGENT_BATCH))
    for _ in range(args.repeat):
        r = run(settings, batches, args.tick)
        print(f"{r['partials']:,} partials -> {r['records']:,} records ({r['entries']:,} entries left): "
              f"{r['us_per_partial']:.1f} us/partial, {r['us_per_record']:.1f} us/record (CPU); "
              f"output digest {r['digest']}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, settings, batches, args.tick)  # decoding included: see orjson.loads
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
