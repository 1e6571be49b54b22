"""CPU time per event of ``PartitionEngine.apply`` on a simulated day (a plain script, not a test).

    .venv/bin/python tests/measure_engine_cpu.py [--hours 24] [--rate 0.5]

The events are the simulator's voice + chat + ticket mix (ccpulse/commands/simulate*.py), decoded
into steps the way the ingest stage does (validate, event_message, step_from_message)
before the clock starts, so only the engine is timed. The windows are closed and the
changed ones taken every 2,000 events, as the publish timer would; that is timed apart.
No assertion: the figures are printed for the issue's before/after report.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccpulse.config import Settings  # noqa: E402
from ccpulse.core.engine import PartitionEngine  # noqa: E402
from ccpulse.core.lifecycle import Interaction, Step  # noqa: E402
from ccpulse.core.windowing import Windowing  # noqa: E402
from ccpulse.commands.simulate import QueueModel, SimulationConfig  # noqa: E402
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events  # noqa: E402
from schemas.events import Event, validate  # noqa: E402
from schemas.records import event_message, step_from_message  # noqa: E402

BATCH = 2000


def day_of_steps(hours: float, rate: float) -> list[tuple[str, str, Step]]:
    """(interaction id, channel, step) of ``hours`` of the simulated mix, in arrival order."""
    voice = SimulationConfig(rate=rate, queues=tuple(QueueModel(f"voice-{i}", agents=40) for i in range(8)),
                             transfer_probability=0.05, repeat_probability=0.1, rating_probability=0.2)
    chat = ChatConfig(rate=rate * 0.3, queues=(QueueModel("chat-support", agents=30),))
    ticket = TicketConfig(rate=rate * 0.1)
    out = []
    for offset, (family, doc) in enumerate(generate_mixed_events(voice, chat, replace(ticket), hours * 3600)):
        ev = validate(doc, family, now_ms=10**15)
        assert isinstance(ev, Event), ev
        msg = event_message(ev, orjson.dumps(doc), family, 0, offset)
        out.append((ev.interaction_id, ev.channel, step_from_message(msg)))
    return out


def run(steps: list[tuple[str, str, Step]]) -> dict[str, float]:
    s = Settings()
    w = s.windows
    engine = PartitionEngine(0, Windowing(w.sizes, w.timezone, w.day_start_hour), w.allowed_lateness_seconds,
                             s.thresholds_for, w.interaction_horizon_seconds)
    interactions: dict[str, Interaction] = {}
    apply_s = publish_s = expire_s = 0.0
    clock = time.process_time
    for offset, (iid, channel, step) in enumerate(steps):
        inter = interactions.get(iid)
        if inter is None:
            inter = interactions[iid] = Interaction(iid, channel, partition=0)
        t0 = clock()
        engine.apply(inter, step, offset, "calls/0")
        apply_s += clock() - t0
        if offset % BATCH == BATCH - 1:
            t0 = clock()
            engine.close()
            engine.take_dirty()
            engine.take_live()
            publish_s += clock() - t0
        if offset % 50_000 == 49_999:
            t0 = clock()
            for key, item in list(interactions.items()):
                if engine.record.watermark - item.last_ts >= engine.lateness_ms and engine.expirable(item):
                    engine.count_expired(item)
                    del interactions[key]
            expire_s += clock() - t0
    n = len(steps)
    return {"events": n, "apply_us": apply_s / n * 1e6, "publish_us": publish_s / n * 1e6,
            "expire_us": expire_s / n * 1e6, "late": engine.record.late_events,
            "duplicates": engine.record.duplicates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate", type=float, default=0.5, help="calls per second (chats 0.3x, tickets 0.1x)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    steps = day_of_steps(args.hours, args.rate)
    for _ in range(args.repeat):
        r = run(steps)
        print(f"{r['events']:,} events: engine.apply {r['apply_us']:.1f} us/event (CPU), "
              f"close+take_dirty+take_live {r['publish_us']:.1f} us/event, expiry {r['expire_us']:.1f} us/event "
              f"(late {r['late']}, duplicates {r['duplicates']})")
    if not math.isfinite(r["apply_us"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
