"""Bytes per open interaction in the core, and per changelog record (a plain script, not a test).

    .venv/bin/python tests/measure_core_memory.py [--interactions 100000] [--queues 1000]

Builds ``--interactions`` open interactions on ``--queues`` queues through one
``PartitionEngine``, each from JSON events decoded as the ingest stage does (validate,
event_message, step_from_message: fresh strings, as from the wire), and measures what
stays allocated with tracemalloc: the interactions (held in a dict keyed by id, as the
table holds them), the engine's open windows and live state. The mix is the bench's
memory scenario (``open_contacts``: calls offered, never answered) widened to what a
contact center holds open: calls answered and not ended, calls waiting, transferred
calls, chats in conversation, tickets at every stage before closing.

It prints the total per interaction, the part the dict and its keys take, and the
average size of one changelog record as ``streams/codecs.py`` writes it.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccpulse.config import Settings  # noqa: E402
from ccpulse.core.engine import PartitionEngine  # noqa: E402
from ccpulse.core.lifecycle import Interaction  # noqa: E402
from ccpulse.core.windowing import Windowing  # noqa: E402
from schemas.events import Event, format_ms, validate  # noqa: E402
from schemas.records import event_message, step_from_message  # noqa: E402

AGENTS_PER_QUEUE = 40


def open_interaction(i: int, queues: int, start_ms: int, rnd: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events so far of open interaction ``i``: (family, event document)."""
    queue = f"q{i % queues:04d}"
    t = start_ms + rnd.randrange(600_000)
    kind = rnd.random()
    n = 0

    def ev(family: str, step: str, ts: int, **fields: Any) -> tuple[str, dict[str, Any]]:
        nonlocal n
        n += 1
        iid = f"{family}-{i}"
        return family, {"event_id": f"{iid}-{n}", "type": f"{family}.{step}", "occurred_at": format_ms(ts),
                        "interaction_id": iid, "schema_version": 1, **fields}

    agent = f"{queue}-a{rnd.randrange(AGENTS_PER_QUEUE)}"
    customer = f"cust-{rnd.randrange(10**7):07d}"
    if kind < 0.50:  # calls: 30% answered, 15% waiting, 5% transferred and waiting again
        yield ev("call", "offered", t, queue=queue, customer_id=customer)
        if kind < 0.30:
            yield ev("call", "answered", t + rnd.randrange(60_000), queue=queue, agent_id=agent)
        elif kind >= 0.45:
            yield ev("call", "answered", t + 5_000, queue=queue, agent_id=agent)
            yield ev("call", "transferred", t + 60_000, to_queue=f"q{(i + 1) % queues:04d}")
    elif kind < 0.75:  # chats: offered, answered, a few messages
        yield ev("chat", "offered", t, queue=queue, customer_id=customer)
        yield ev("chat", "answered", t + rnd.randrange(30_000), queue=queue, agent_id=agent)
        for m in range(rnd.randrange(1, 6)):
            yield ev("chat", "message", t + 40_000 + m * 20_000, sender="agent" if m % 2 else "customer")
    else:  # tickets: created, maybe a note, a public reply, a customer reply
        yield ev("ticket", "created", t, queue=queue, channel="email", customer_id=customer)
        if rnd.random() < 0.5:
            yield ev("ticket", "replied", t + 60_000, channel="email", sender="agent", agent_id=agent)
            if rnd.random() < 0.5:
                yield ev("ticket", "replied", t + 120_000, channel="email", sender="customer")


def build(count: int, queues: int) -> tuple[dict[str, Interaction], PartitionEngine]:
    s = Settings()
    w = s.windows
    engine = PartitionEngine(0, Windowing(w.sizes, w.timezone, w.day_start_hour), w.allowed_lateness_seconds,
                             s.thresholds_for, w.interaction_horizon_seconds)
    interactions: dict[str, Interaction] = {}
    rnd = random.Random(1)
    start = int(time.time() * 1000) - 900_000
    offset = 0
    for i in range(count):
        for family, doc in open_interaction(i, queues, start, rnd):
            raw = orjson.dumps(doc)
            ev = validate(orjson.loads(raw), family, now_ms=start + 10**9)
            assert isinstance(ev, Event), ev
            # Through JSON, as the stage reads it: every string is a fresh object.
            msg = orjson.loads(orjson.dumps(event_message(ev, raw, family, 0, offset)))
            inter = interactions.get(msg["interaction_id"])
            if inter is None:
                inter = interactions[msg["interaction_id"]] = Interaction(msg["interaction_id"], msg["channel"],
                                                                          partition=0)
            engine.apply(inter, step_from_message(msg), offset, f"{family}/0")
            offset += 1
    return interactions, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=1000)
    args = parser.parse_args()
    n = args.interactions
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    interactions, engine = build(n, args.queues)
    engine.take_dirty()
    engine.take_live()
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - before
    # What the table's dict and its keys cost on their own (the same ids, fresh strings).
    keys_before = tracemalloc.get_traced_memory()[0]
    keys = {k.encode().decode(): None for k in interactions}
    keys_cost = tracemalloc.get_traced_memory()[0] - keys_before
    del keys
    from streams.codecs import InteractionCodec
    codec = InteractionCodec()
    sizes = [len(codec._dumps(inter) or b"") for inter in interactions.values()]
    steps = sum(len(inter.steps) for inter in interactions.values())
    gc.collect()
    with_interactions = tracemalloc.get_traced_memory()[0]
    # The engine's open windows and live state are per queue, agent and window, not
    # per interaction: what is left once the interactions are gone.
    interactions.clear()
    gc.collect()
    per_interaction = with_interactions - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"{n:,} open interactions on {args.queues:,} queues, {steps / n:.2f} steps each, "
          f"{len(engine.windows):,} open windows")
    print(f"core: {total / n:.0f} bytes per open interaction in all: {per_interaction / n:.0f} the interactions "
          f"(of which the dict and its id keys {keys_cost / n:.0f}), {(total - per_interaction) / n:.0f} "
          f"the engine's open windows and live state")
    print(f"changelog record: {sum(sizes) / n:.0f} bytes on average, {max(sizes)} at most")


if __name__ == "__main__":
    main()
