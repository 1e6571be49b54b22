"""The call simulator: a right queueing model, deterministic, EVENTS.md-shaped."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import re
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.simulate import (
    DEFAULT_START,
    QueueModel,
    SimulationConfig,
    add_arguments,
    config_from_args,
    encode,
    generate_call_events,
    live_start,
    publish,
)

RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CALL_TYPES = {"call.offered", "call.answered", "call.abandoned", "call.ended"}


def ms(ts: str) -> int:
    """Epoch milliseconds of an occurred_at, exactly (no float rounding)."""
    return (datetime.fromisoformat(ts) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def by_call(events: list[dict]) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        calls[ev["interaction_id"]].append(ev)
    return calls


def waits(events: list[dict]) -> list[int]:
    """Wait in ms of every answered call, from the formatted timestamps."""
    out = []
    for evs in by_call(events).values():
        times = {ev["type"]: ms(ev["occurred_at"]) for ev in evs}
        if "call.answered" in times:
            out.append(times["call.answered"] - times["call.offered"])
    return out


def one_queue(agents: int, **kw) -> SimulationConfig:
    return SimulationConfig(queues=(QueueModel("q", agents),), **kw)


def test_same_seed_same_events_other_seed_differs():
    cfg = SimulationConfig(seed=7)
    first = list(generate_call_events(cfg, 900))
    assert first == list(generate_call_events(cfg, 900))
    assert first != list(generate_call_events(SimulationConfig(seed=8), 900))


def test_shorter_horizon_is_a_prefix_of_a_longer_one():
    cfg = SimulationConfig(rate=0.5, seed=3)
    short = list(generate_call_events(cfg, 600))
    long = list(generate_call_events(cfg, 1200))
    assert short and long[: len(short)] == short
    assert len(long) > len(short)


def test_events_are_time_ordered_and_inside_the_horizon():
    cfg = SimulationConfig(seed=11)
    events = list(generate_call_events(cfg, 1800))
    times = [ms(ev["occurred_at"]) for ev in events]
    assert times == sorted(times)
    start = ms(DEFAULT_START.isoformat())
    assert times[0] >= start and times[-1] < start + 1800 * 1000


def test_each_call_lifecycle_is_well_formed():
    cfg = SimulationConfig(rate=0.1, queues=(QueueModel("billing", 4), QueueModel("sales", 2)), seed=5)
    events = list(generate_call_events(cfg, 4 * 3600))
    agents = {"billing": 4, "sales": 2}
    outcomes = defaultdict(int)
    for iid, evs in by_call(events).items():
        types = [ev["type"] for ev in evs]
        assert types[0] == "call.offered"
        assert types in (
            ["call.offered"],  # still waiting at the horizon
            ["call.offered", "call.abandoned"],
            ["call.offered", "call.answered"],  # still talking at the horizon
            ["call.offered", "call.answered", "call.ended"],
        ), (iid, types)
        outcomes[types[1] if len(types) > 1 else "waiting"] += 1
        assert len({ev["queue"] for ev in evs}) == 1
        assert [ev["event_id"] for ev in evs] == [f"{iid}-{n}" for n in range(1, len(evs) + 1)]
        t = {ev["type"]: ms(ev["occurred_at"]) for ev in evs}
        if "call.answered" in t:
            assert t["call.answered"] >= t["call.offered"]
            answered = evs[1]
            queue, _, number = answered["agent_id"].rpartition("-a")
            assert queue == answered["queue"] and 1 <= int(number) <= agents[queue]
        if "call.abandoned" in t:
            assert t["call.abandoned"] >= t["call.offered"]
        if "call.ended" in t:
            assert t["call.ended"] > t["call.answered"]
            assert evs[2]["agent_id"] == evs[1]["agent_id"]
            assert isinstance(evs[2]["wrapup_seconds"], int) and evs[2]["wrapup_seconds"] >= 0
    assert outcomes["call.answered"] and outcomes["call.abandoned"]


def test_an_agent_handles_one_call_at_a_time_including_wrapup():
    cfg = SimulationConfig(rate=0.2, seed=2)
    events = list(generate_call_events(cfg, 3 * 3600))
    busy: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for evs in by_call(events).values():
        if len(evs) == 3 and evs[1]["type"] == "call.answered":
            end = ms(evs[2]["occurred_at"]) + evs[2]["wrapup_seconds"] * 1000
            busy[evs[1]["agent_id"]].append((ms(evs[1]["occurred_at"]), end))
    assert busy
    for spans in busy.values():
        spans.sort()
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            assert nxt >= end


def test_queues_are_fifo():
    cfg = SimulationConfig(rate=0.2, patience_mean=None, seed=4)
    events = list(generate_call_events(cfg, 3600))
    answered_order: dict[str, list[int]] = defaultdict(list)
    for ev in events:
        if ev["type"] == "call.answered":
            answered_order[ev["queue"]].append(int(ev["interaction_id"].rsplit("-", 1)[1]))
    for order in answered_order.values():
        assert order == sorted(order)


def test_without_patience_nobody_abandons():
    cfg = SimulationConfig(rate=1.0, patience_mean=None, seed=9)
    events = list(generate_call_events(cfg, 1800))
    assert not [ev for ev in events if ev["type"] == "call.abandoned"]
    assert max(waits(events)) > 0


def test_few_agents_and_high_rate_make_abandons_and_waits():
    cfg = one_queue(1, rate=0.5, seed=12)
    events = list(generate_call_events(cfg, 1800))
    assert sum(ev["type"] == "call.abandoned" for ev in events) > 100
    assert any(w > 0 for w in waits(events))


def test_many_agents_answer_immediately():
    # 0.5 calls/s * 200 s handle time = 100 Erlangs over 3 * 200 agents.
    cfg = SimulationConfig(rate=0.5, queues=tuple(QueueModel(q, 200) for q in ("a", "b", "c")), seed=6)
    events = list(generate_call_events(cfg, 3600))
    w = waits(events)
    assert not [ev for ev in events if ev["type"] == "call.abandoned"]
    assert len(w) > 1000 and sum(x == 0 for x in w) / len(w) > 0.99
    offered = [ev for ev in events if ev["type"] == "call.offered"]
    answered = {ev["interaction_id"]: ev for ev in events if ev["type"] == "call.answered"}
    assert all(answered[ev["interaction_id"]]["occurred_at"] == ev["occurred_at"] for ev in offered)


def test_probability_of_waiting_matches_erlang_c():
    """M/M/c without abandonment: P(wait > 0) and mean wait have closed forms."""
    c, rate, service = 5, 0.4, 10.0
    a = rate * service  # offered load in Erlangs
    term = a**c / math.factorial(c) * c / (c - a)
    erlang_c = term / (sum(a**k / math.factorial(k) for k in range(c)) + term)
    mean_wait = erlang_c / (c / service - rate)
    cfg = one_queue(c, rate=rate, service_mean=service, wrapup_mean=0, patience_mean=None, seed=21)
    w = waits(list(generate_call_events(cfg, 250_000)))
    assert len(w) > 90_000
    assert sum(x > 0 for x in w) / len(w) == pytest.approx(erlang_c, abs=0.03)
    assert sum(w) / len(w) / 1000 == pytest.approx(mean_wait, rel=0.15)


def test_arrivals_follow_the_rate():
    rate, duration = 2.0, 20_000.0
    cfg = SimulationConfig(rate=rate, seed=13)
    n = sum(ev["type"] == "call.offered" for ev in generate_call_events(cfg, duration))
    # Poisson: variance = mean.
    assert abs(n - rate * duration) < 4 * math.sqrt(rate * duration)


def test_weights_split_the_arrivals():
    cfg = SimulationConfig(rate=1.0, queues=(QueueModel("big", 3, 3.0), QueueModel("small", 3, 1.0)), seed=8)
    offered = [ev["queue"] for ev in generate_call_events(cfg, 20_000) if ev["type"] == "call.offered"]
    share = offered.count("big") / len(offered)
    assert share == pytest.approx(0.75, abs=0.02)


def test_event_ids_are_unique():
    events = list(generate_call_events(SimulationConfig(seed=14), 3600))
    assert len({ev["event_id"] for ev in events}) == len(events)


def test_endless_horizon_is_lazy():
    began = time.perf_counter()
    head = list(itertools.islice(generate_call_events(SimulationConfig(seed=15), math.inf), 1000))
    assert len(head) == 1000
    assert time.perf_counter() - began < 2.0


def test_start_is_normalised_to_utc_milliseconds():
    start = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    cfg = SimulationConfig(start=start)
    assert cfg.start == datetime(2026, 3, 1, 8, 0, 0, 123000, tzinfo=timezone.utc)
    first = next(generate_call_events(cfg, 60))
    assert first["occurred_at"].startswith("2026-03-01T08:00:")
    with pytest.raises(ValueError):
        SimulationConfig(start=datetime(2026, 3, 1))
    now = live_start()
    assert now.tzinfo == timezone.utc and now.microsecond % 1000 == 0


@pytest.mark.parametrize("bad", [
    dict(rate=0), dict(rate=math.inf), dict(queues=()), dict(service_mean=0),
    dict(wrapup_mean=-1), dict(patience_mean=0), dict(queues=(QueueModel("a"), QueueModel("a"))),
])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        SimulationConfig(**bad)


def test_encode_is_compact_json():
    ev = next(generate_call_events(SimulationConfig(), 60))
    assert orjson.loads(encode(ev)) == ev
    assert isinstance(encode(ev), bytes)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), rate=st.floats(min_value=0.01, max_value=20.0),
       agents=st.integers(min_value=1, max_value=20),
       patience=st.one_of(st.none(), st.floats(min_value=0.5, max_value=600.0)))
def test_every_event_has_the_events_md_envelope(seed, rate, agents, patience):
    cfg = SimulationConfig(rate=rate, queues=(QueueModel("billing", agents), QueueModel("support", agents)),
                           patience_mean=patience, seed=seed)
    events = list(itertools.islice(generate_call_events(cfg, 600), 2000))
    for ev in events:
        assert isinstance(ev["event_id"], str) and 1 <= len(ev["event_id"]) <= 128
        assert ev["type"] in CALL_TYPES
        assert isinstance(ev["occurred_at"], str) and RFC3339_MS_Z.match(ev["occurred_at"])
        assert datetime.fromisoformat(ev["occurred_at"]).tzinfo is not None
        assert isinstance(ev["interaction_id"], str) and 1 <= len(ev["interaction_id"]) <= 128
        assert isinstance(ev["queue"], str) and ev["queue"] in ("billing", "support")
        assert type(ev["schema_version"]) is int and ev["schema_version"] == 1
        if ev["type"] == "call.answered":
            assert isinstance(ev["agent_id"], str) and ev["agent_id"]
        if "customer_id" in ev:
            assert isinstance(ev["customer_id"], str)
        if ev["type"] == "call.ended":
            assert type(ev["wrapup_seconds"]) is int
        assert orjson.loads(encode(ev)) == ev


# ---------------------------------------------------------------- command line

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_defaults_run_live_in_real_time():
    before = live_start()
    cfg, duration, speed = config_from_args(parse())
    assert math.isinf(duration) and speed == 1.0
    assert cfg.start >= before
    assert cfg.seed == int(cfg.start.timestamp())  # a fresh id space per live run
    assert [q.name for q in cfg.queues] == ["billing", "support", "sales"]
    # A staffed centre by default (1 call/s, 75 agents per queue), not a collapsing one.
    assert all(q.agents == 75 for q in cfg.queues) and cfg.rate == 1.0
    assert cfg.patience_mean == 60.0 and cfg.service_mean == 180.0


def test_cli_options():
    cfg, duration, speed = config_from_args(parse(
        "--rate", "5", "--duration", "3600", "--speed", "max", "--seed", "42", "--queues", "a:2,b",
        "--agents", "7", "--patience", "0", "--service-mean", "90"))
    assert duration == 3600.0 and speed is None
    assert cfg.rate == 5.0 and cfg.seed == 42 and cfg.start == DEFAULT_START
    assert cfg.queues == (QueueModel("a", 7, 2.0), QueueModel("b", 7, 1.0))
    assert cfg.patience_mean is None and cfg.service_mean == 90.0
    assert config_from_args(parse("--speed", "0", "--duration", "10"))[2] is None
    assert config_from_args(parse("--speed", "60", "--duration", "10"))[2] == 60.0
    cfg, _, _ = config_from_args(parse("--start", "2026-02-01T12:00:00Z", "--duration", "10"))
    assert cfg.start == datetime(2026, 2, 1, 12, tzinfo=timezone.utc) and cfg.seed == 1


def test_cli_rejects_nonsense():
    with pytest.raises(ValueError, match="--duration"):
        config_from_args(parse("--speed", "max"))
    for argv in (["--speed", "-1"], ["--rate", "0"], ["--agents", "0"], ["--queues", "a,a"],
                 ["--patience", "x"], ["--start", "yesterday"]):
        with pytest.raises(SystemExit):
            parse(*argv)


# ---------------------------------------------------------------- Kafka

async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def _read(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        for part in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(part)
    finally:
        await consumer.stop()
    return records


@pytest.mark.integration
def test_publish_as_fast_as_possible_round_trips(kafka_bootstrap):
    topic = f"test-simulate-{uuid.uuid4().hex[:8]}"
    events = list(itertools.islice(generate_call_events(SimulationConfig(seed=31), math.inf), 200))
    seen: list[int] = []

    async def run() -> tuple[int, list]:
        await _create_topic(kafka_bootstrap, topic, 3)
        sent = await publish(iter(events), kafka_bootstrap, topic, None, progress=seen.append, batch_size=64)
        return sent, await _read(kafka_bootstrap, topic, len(events))

    sent, records = asyncio.run(run())
    assert sent == len(events) == 200
    assert seen and seen[-1] == 200 and seen == sorted(seen)
    assert len(records) == len(events)
    for rec in records:
        assert rec.key == orjson.loads(rec.value)["interaction_id"].encode()
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(e["event_id"] for e in events)
    # One interaction stays on one partition, in order.
    per_call: dict[str, list] = defaultdict(list)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_call[rec.key.decode()].append((rec.partition, orjson.loads(rec.value)["event_id"]))
    for iid, items in per_call.items():
        assert len({p for p, _ in items}) == 1
        assert [e for _, e in items] == [f"{iid}-{n}" for n in range(1, len(items) + 1)]


@pytest.mark.integration
def test_publish_paces_event_time_and_stops_cleanly(kafka_bootstrap):
    topic = f"test-simulate-{uuid.uuid4().hex[:8]}"
    # Endless, 2 calls/s of event time replayed 10x: ~20 calls per wall second.
    events = generate_call_events(SimulationConfig(seed=32), math.inf)

    async def run() -> tuple[int, float, list]:
        await _create_topic(kafka_bootstrap, topic, 1)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.5, stop.set)
        began = time.monotonic()
        sent = await publish(events, kafka_bootstrap, topic, 10.0, stop=stop)
        took = time.monotonic() - began
        return sent, took, await _read(kafka_bootstrap, topic, sent)

    sent, took, records = asyncio.run(run())
    assert took < 5.0
    # 1.5 s at 10x is ~15 s of event time: ~30 calls, ~60 events. Far below "as fast as possible".
    assert 10 < sent < 300
    assert len(records) == sent
    times = [ms(orjson.loads(r.value)["occurred_at"]) for r in records]
    assert times == sorted(times)
    assert (times[-1] - times[0]) / 1000 < 1.5 * 10 + 2
