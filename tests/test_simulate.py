"""The call simulator: a right queueing model, deterministic, EVENTS.md-shaped."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import hashlib
import itertools
import math
import re
import statistics
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.commands.simulate import (
    DEFAULT_START,
    Outage,
    QueueModel,
    SimulationConfig,
    add_arguments,
    config_from_args,
    encode,
    generate_call_events,
    live_start,
)
from ccpulse.commands.publish import publish
from schemas.events import Event, validate

RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CALL_TYPES = {"call.offered", "call.answered", "call.abandoned", "call.ended"}
# (events, sha256 prefix of the encoded events) of SimulationConfig(seed=7) over 900 s: the plain
# model's output, pinned so that a seed replays the same day across versions. Update deliberately.
PLAIN_SEED7_900S = (3597, "19f9f177c998f1be")


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


def erlang_c(c: int, a: float) -> float:
    """P(wait > 0) in M/M/c at a Erlangs, straight from the textbook formula."""
    term = a**c / math.factorial(c) * c / (c - a)
    return term / (sum(a**k / math.factorial(k) for k in range(c)) + term)


def batch_means(values_by_batch: list[list[float]]) -> tuple[float, float]:
    """Mean of the batch means and its standard error."""
    means = [sum(b) / len(b) for b in values_by_batch]
    return statistics.fmean(means), statistics.stdev(means) / math.sqrt(len(means))


def test_probability_of_waiting_and_mean_wait_match_erlang_c():
    """M/M/c without abandonment, flat arrivals, constant staffing: P(wait > 0) and Wq have closed forms.

    8 agents at rho = 0.85 for 4 simulated days (~117,000 calls). Waits are strongly
    autocorrelated, so the error bar comes from batch means: 20 batches of ~4.8 h,
    each ~40 relaxation times 1 / (mu (sqrt(c) - sqrt(a))^2) ~ 7 min long, so the
    batch means are nearly independent; the first is dropped as warm-up from an
    empty system. 4 standard errors is about the two-sided 99.9% quantile of
    Student's t with 18 degrees of freedom (3.92).
    """
    c, service, rho = 8, 20.0, 0.85
    a = rho * c
    rate = a / service
    p_wait = erlang_c(c, a)
    mean_wait = p_wait * service / (c - a)  # Wq = C(c, a) / (c mu - lambda)
    days, batches = 4, 20
    horizon = days * 86_400_000
    cfg = one_queue(c, rate=rate, service_mean=service, wrapup_mean=0, patience_mean=None, seed=21)
    start = ms(cfg.start.isoformat())
    offered: dict[str, int] = {}
    waits_by_batch: list[list[float]] = [[] for _ in range(batches)]
    # One extra hour so that calls offered before the cut-off have been answered.
    for ev in generate_call_events(cfg, horizon / 1000 + 3600):
        if ev["type"] == "call.offered":
            offered[ev["interaction_id"]] = ms(ev["occurred_at"]) - start
        elif ev["type"] == "call.answered":
            t0 = offered.pop(ev["interaction_id"])
            if t0 < horizon:
                waits_by_batch[t0 * batches // horizon].append((ms(ev["occurred_at"]) - start - t0) / 1000)
    assert not [t0 for t0 in offered.values() if t0 < horizon]  # nobody abandons, nobody is stuck
    kept = waits_by_batch[1:]
    assert sum(map(len, kept)) > 100_000
    wq, wq_se = batch_means(kept)
    pw, pw_se = batch_means([[w > 0 for w in b] for b in kept])
    # Precise enough to mean something: a few percent of the expected values ...
    assert wq_se < 0.12 * mean_wait and pw_se < 0.03 * p_wait, (wq_se / mean_wait, pw_se / p_wait)
    # ... and the model agrees with Erlang C.
    assert abs(pw - p_wait) < 4 * pw_se, (pw, p_wait, pw_se, wq, mean_wait, wq_se)
    assert abs(wq - mean_wait) < 4 * wq_se, (wq, mean_wait, wq_se)
    # Power: 5% more load (or one agent fewer) would have been rejected.
    a_wrong = a * 1.05
    assert abs(wq - erlang_c(c, a_wrong) * service / (c - a_wrong)) > 4 * wq_se
    assert abs(pw - erlang_c(c, a_wrong)) > 4 * pw_se
    assert abs(pw - erlang_c(c - 1, a)) > 4 * pw_se


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


# ---------------------------------------------------------------- a realistic day

# A retail bank / telco weekday (UTC hours): the curve of deploy/scenarios.toml.
BANK_PROFILE = (0.10, 0.06, 0.04, 0.04, 0.05, 0.10, 0.25, 0.55, 1.10, 1.55, 1.70, 1.60,
                1.25, 1.30, 1.50, 1.55, 1.40, 1.15, 0.85, 0.65, 0.50, 0.38, 0.25, 0.15)
ALL_CALL_TYPES = CALL_TYPES | {"call.transferred", "call.rated"}
HOUR_MS = 3_600_000


def realistic(**kw) -> SimulationConfig:
    """Every feature on: profile, schedules, an outage, lognormal times, transfers, repeats, ratings."""
    base = dict(
        rate=0.05, profile=BANK_PROFILE,
        queues=(QueueModel("billing", schedule=(2,) * 7 + (4, 6, 8, 9, 8, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 2, 2)),
                QueueModel("support", weight=1.5,
                           schedule=(1,) * 6 + (3, 5, 9, 12, 12, 11, 8, 9, 11, 11, 10, 8, 6, 5, 3, 2, 2, 1))),
        service_mean=200.0, wrapup_mean=20.0, patience_mean=90.0,
        service_distribution="lognormal", service_cv=0.8,
        transfer_probability=0.1, repeat_probability=0.15, rating_probability=0.3,
        outages=(Outage(start=3 * 3600, duration=1800, factor=0.2),), seed=17)
    base.update(kw)
    return SimulationConfig(**base)


def test_defaults_replay_the_plain_model_exactly():
    """New features off (explicitly or by default): the same events as before they existed."""
    plain = list(generate_call_events(SimulationConfig(seed=7), 900))
    explicit = SimulationConfig(seed=7, profile=None, service_distribution="exponential", transfer_probability=0,
                                repeat_probability=0, rating_probability=0, outages=(),
                                queues=tuple(QueueModel(q, 3, schedule=None) for q in ("billing", "support", "sales")))
    assert list(generate_call_events(explicit, 900)) == plain
    # A flat profile is the homogeneous process at rate x multiplier; constant schedules are constant agents.
    flat = SimulationConfig(seed=7, rate=1.0, profile=(2.0,) * 24,
                            queues=tuple(QueueModel(q, 1, schedule=(3,) * 24) for q in ("billing", "support", "sales")))
    assert list(generate_call_events(flat, 900)) == plain
    # Pinned across versions: a replay with a seed gives the events it gave before.
    digest = hashlib.sha256(b"".join(encode(ev) for ev in plain)).hexdigest()
    assert (len(plain), digest[:16]) == (PLAIN_SEED7_900S[0], PLAIN_SEED7_900S[1])


def test_realistic_model_is_deterministic_per_seed_and_valid():
    cfg = realistic()
    first = list(generate_call_events(cfg, 86_400))
    assert first == list(generate_call_events(cfg, 86_400))
    assert first != list(generate_call_events(realistic(seed=18), 86_400))
    kinds = collections.Counter()
    for ev in first:
        out = validate(ev, "call", now_ms=10**15)
        assert isinstance(out, Event), (ev, out)
        kinds[ev["type"]] += 1
        assert orjson.loads(encode(ev)) == ev and RFC3339_MS_Z.match(ev["occurred_at"])
    assert set(kinds) == ALL_CALL_TYPES
    times = [ev["occurred_at"] for ev in first]
    assert times == sorted(times)
    assert len({ev["event_id"] for ev in first}) == len(first)


def test_abandonment_rises_as_agents_are_removed():
    """Same seed, same callers (arrivals, patience, talk times): 10, 8, then 6 agents for ~8 Erlangs."""
    rates, offered = [], []
    for agents in (10, 8, 6):
        cfg = one_queue(agents, rate=8 / 200, service_mean=180.0, wrapup_mean=20.0, patience_mean=120.0, seed=33)
        events = list(generate_call_events(cfg, 86_400))
        kinds = collections.Counter(ev["type"] for ev in events)
        rates.append(kinds["call.abandoned"] / (kinds["call.abandoned"] + kinds["call.answered"]))
        offered.append([(ev["occurred_at"], ev["customer_id"]) for ev in events if ev["type"] == "call.offered"])
    assert offered[0] == offered[1] == offered[2] and len(offered[0]) > 3000
    assert rates[0] < rates[1] < rates[2], rates
    assert rates[2] > 0.1 and rates[0] < 0.1


def test_arrivals_per_hour_follow_the_profile():
    """Thinning gives a non-homogeneous Poisson process with rate(t) = rate x profile[UTC hour].

    Counts per hour of day over 30 days against rate x profile x 3600 x days:
    Pearson's chi-square on 23 positive hours (99.9% quantile of chi2(23): 49.73);
    nothing in the closed hour; and day-to-day counts are Poisson (variance = mean:
    the dispersion sum is chi2 with 23 x 30 degrees of freedom, mean 690, sd 37).
    """
    profile = BANK_PROFILE[:3] + (0.0,) + BANK_PROFILE[4:]  # closed 03:00-04:00
    rate, days = 0.02, 30
    cfg = SimulationConfig(rate=rate, profile=profile, queues=(QueueModel("q", 40),), patience_mean=30.0,
                           start=datetime(2026, 1, 5, tzinfo=timezone.utc), seed=41)
    start = ms(cfg.start.isoformat())
    counts = [[0] * 24 for _ in range(days)]
    for ev in generate_call_events(cfg, days * 86_400):
        if ev["type"] == "call.offered":
            day, hour = divmod((ms(ev["occurred_at"]) - start) // HOUR_MS, 24)
            counts[day][hour] += 1
    per_hour = [sum(day[h] for day in counts) for h in range(24)]
    assert per_hour[3] == 0
    expected = [rate * p * 3600 * days for p in profile]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(per_hour, expected) if e)
    assert chi2 < 49.73, (chi2, per_hour, expected)
    # Power: the same counts are nowhere near a flat day of the same volume.
    flat = sum(expected) / 23
    assert sum((o - flat) ** 2 / flat for o, e in zip(per_hour, expected) if e) > 1000
    dispersion = sum((day[h] - rate * profile[h] * 3600) ** 2 / (rate * profile[h] * 3600)
                     for day in counts for h in range(24) if profile[h])
    assert abs(dispersion - 690) < 4.5 * 37, dispersion


def scheduled(cfg: SimulationConfig, queue: QueueModel, t_ms: int) -> int:
    """Agents on the schedule at model time t (outages included), computed independently."""
    start = ms(cfg.start.isoformat())
    base = queue.schedule[(start + t_ms) // HOUR_MS % 24] if queue.schedule else queue.agents
    factor = 1.0
    for o in cfg.outages:
        if o.start * 1000 <= t_ms < (o.start + o.duration) * 1000 and (not o.queues or queue.name in o.queues):
            factor *= o.factor
    return math.floor(base * factor + 0.5)


def spans(cfg: SimulationConfig, events: list[dict]) -> tuple[dict, dict]:
    """Per queue: the [start, end) model-ms spans agents are busy (talk + wrap-up, or until
    they transfer) and the spans calls wait (from offered or transferred to answered or abandoned)."""
    start = ms(cfg.start.isoformat())
    busy: dict[str, list[tuple[int, float]]] = defaultdict(list)
    waiting: dict[str, list[tuple[int, float]]] = defaultdict(list)
    talking: dict[str, tuple[str, int]] = {}
    queued: dict[str, tuple[str, int]] = {}
    for ev in events:
        t, iid, kind = ms(ev["occurred_at"]) - start, ev["interaction_id"], ev["type"]
        if kind == "call.offered":
            queued[iid] = (ev["queue"], t)
        elif kind in ("call.answered", "call.abandoned"):
            q, t0 = queued.pop(iid)
            assert q == ev["queue"]
            waiting[q].append((t0, t))
            if kind == "call.answered":
                talking[iid] = (q, t)
        elif kind == "call.transferred":
            q, t0 = talking.pop(iid)
            busy[q].append((t0, t))
            queued[iid] = (ev["to_queue"], t)
        elif kind == "call.ended":
            q, t0 = talking.pop(iid)
            busy[q].append((t0, t + ev["wrapup_seconds"] * 1000))
    for q, t0 in queued.values():
        waiting[q].append((t0, math.inf))
    for q, t0 in talking.values():
        busy[q].append((t0, math.inf))
    return busy, waiting


class Occupancy:
    """How many spans cover an instant: s <= t < e."""

    def __init__(self, spans: list[tuple[int, float]]) -> None:
        self.starts = sorted(s for s, _ in spans)
        self.ends = sorted(e for _, e in spans)

    def at(self, t: int) -> int:
        return bisect.bisect_right(self.starts, t) - bisect.bisect_right(self.ends, t)


def test_staffing_schedule_and_outage_are_respected():
    """No call is answered while every scheduled agent is busy; no scheduled agent idles
    while calls wait; agents finish their calls after a drop (no preemption)."""
    cfg = realistic(rate=0.06, seed=5)
    duration = 2 * 86_400
    events = list(generate_call_events(cfg, duration))
    start = ms(cfg.start.isoformat())
    busy, waiting = spans(cfg, events)
    boundaries = list(range(HOUR_MS - start % HOUR_MS, duration * 1000, HOUR_MS))
    boundaries += [round(o.start * 1000) for o in cfg.outages] + [round((o.start + o.duration) * 1000)
                                                                   for o in cfg.outages]
    answered = 0
    finishing_after_drop = 0
    for queue in cfg.queues:
        b, w = Occupancy(busy[queue.name]), Occupancy(waiting[queue.name])
        answers = [ms(ev["occurred_at"]) - start for ev in events
                   if ev["type"] == "call.answered" and ev["queue"] == queue.name]
        for t in answers:
            assert b.at(t) <= scheduled(cfg, queue, t), ("answered with every scheduled agent busy", queue.name, t)
        answered += len(answers)
        checkpoints = {s for s, _ in busy[queue.name]} | {e for _, e in busy[queue.name]} | \
                      {s for s, _ in waiting[queue.name]} | set(boundaries)
        for t in sorted(checkpoints):
            if t < duration * 1000 and w.at(t) > 0:
                assert b.at(t) >= scheduled(cfg, queue, t), ("a scheduled agent idles while calls wait",
                                                             queue.name, t)
        for t in boundaries:
            if 0 < t < duration * 1000 and b.at(t) > scheduled(cfg, queue, t):
                finishing_after_drop += 1
    assert answered > 5000 and finishing_after_drop > 5
    # The outage shows: 3:00-3:30 after the start, calls wait far longer than in the hour before.
    queue = cfg.queues[0]
    w = Occupancy(waiting[queue.name])
    during = statistics.fmean(w.at(t) for t in range(3 * HOUR_MS, 3 * HOUR_MS + 1_800_000, 10_000))
    before = statistics.fmean(w.at(t) for t in range(2 * HOUR_MS, 3 * HOUR_MS, 10_000))
    assert during > 3 * before + 1
    # Agent ids stay within the most agents ever scheduled.
    for ev in events:
        if ev["type"] == "call.answered":
            queue = next(q for q in cfg.queues if q.name == ev["queue"])
            assert 1 <= int(ev["agent_id"].rpartition("-a")[2]) <= max(queue.schedule)


def test_staffing_rises_take_waiting_calls_at_once():
    """A queue closed at night: the callers waiting at opening time are answered at the opening instant."""
    schedule = (0,) * 8 + (3,) * 16
    cfg = SimulationConfig(rate=0.01, queues=(QueueModel("q", schedule=schedule),), patience_mean=None,
                           start=datetime(2026, 1, 5, tzinfo=timezone.utc), seed=3)
    events = list(generate_call_events(cfg, 9 * 3600))
    night = [ev for ev in events if ev["type"] == "call.offered" and ev["occurred_at"] < "2026-01-05T08"]
    assert len(night) > 100
    opening = [ev for ev in events if ev["type"] == "call.answered" and ev["occurred_at"] == "2026-01-05T08:00:00.000Z"]
    assert len(opening) == 3  # three agents log on and take the three longest waiting callers
    assert [ev["interaction_id"] for ev in opening] == [ev["interaction_id"] for ev in night[:3]]
    assert not [ev for ev in events if ev["type"] == "call.answered" and ev["occurred_at"] < "2026-01-05T08"]


def talk_times(events: list[dict]) -> list[float]:
    """Seconds from answered to ended of calls that were not transferred."""
    out = []
    for evs in by_call(events).values():
        kinds = [ev["type"] for ev in evs]
        if kinds == ["call.offered", "call.answered", "call.ended"]:
            out.append((ms(evs[2]["occurred_at"]) - ms(evs[1]["occurred_at"])) / 1000)
    return out


@pytest.mark.parametrize("distribution,cv", [("exponential", 1.0), ("lognormal", 0.6), ("lognormal", 1.5)])
def test_talk_times_have_the_configured_mean_and_spread(distribution, cv):
    cfg = SimulationConfig(rate=0.2, queues=(QueueModel("q", 200),), service_mean=120.0, wrapup_mean=0,
                           service_distribution=distribution, service_cv=cv, seed=8)
    talk = talk_times(list(generate_call_events(cfg, 86_400)))
    n = len(talk)
    assert n > 15_000
    mean = statistics.fmean(talk)
    assert abs(mean - 120.0) < 4 * cv * 120.0 / math.sqrt(n)  # 4 standard errors
    assert statistics.stdev(talk) / mean == pytest.approx(cv, rel=0.1)
    # The shape: the median of a lognormal is mean / sqrt(1 + cv^2); of an exponential, mean x ln 2.
    median = 120.0 * (math.log(2) if distribution == "exponential" else 1 / math.sqrt(1 + cv * cv))
    assert statistics.median(talk) == pytest.approx(median, rel=0.05)


def test_transfers_requeue_the_call_in_another_queue():
    cfg = realistic(rate=0.04, outages=(), seed=9)
    events = list(generate_call_events(cfg, 86_400))
    answered = transferred = abandoned_after = answered_after = 0
    for iid, evs in by_call(events).items():
        kinds = [ev["type"] for ev in evs]
        assert [ev["event_id"] for ev in evs] == [f"{iid}-{n}" for n in range(1, len(evs) + 1)]
        answered += "call.answered" in kinds
        if "call.transferred" not in kinds:
            continue
        transferred += 1
        i = kinds.index("call.transferred")
        assert kinds[: i + 1] == ["call.offered", "call.answered", "call.transferred"]
        xfer = evs[i]
        assert xfer["agent_id"] == evs[1]["agent_id"] and xfer["queue"] == evs[0]["queue"]
        assert xfer["to_queue"] != xfer["queue"] and xfer["to_queue"] in ("billing", "support")
        rest = kinds[i + 1:]
        assert rest in ([], ["call.abandoned"], ["call.answered"], ["call.answered", "call.ended"],
                        ["call.answered", "call.ended", "call.rated"]), rest
        for ev in evs[i + 1:]:
            assert ev["queue"] == xfer["to_queue"]
        abandoned_after += rest[:1] == ["call.abandoned"]
        answered_after += rest[:1] == ["call.answered"]
    # ~10% of answered calls are transferred (binomial: 4 standard errors).
    assert abs(transferred / answered - 0.1) < 4 * math.sqrt(0.09 / answered)
    assert abandoned_after and answered_after


def test_repeat_callers_come_back_within_hours():
    p = 0.2
    cfg = SimulationConfig(rate=0.05, queues=(QueueModel("q", 30),), repeat_probability=p, seed=4)
    offers = [(ms(ev["occurred_at"]), ev["customer_id"]) for ev in generate_call_events(cfg, 86_400)
              if ev["type"] == "call.offered"]
    last_seen: dict[str, int] = {}
    repeats, gaps = 0, []
    for t, customer in offers:
        if customer in last_seen and t - last_seen[customer] <= 20 * HOUR_MS:
            repeats += 1
            gaps.append(t - last_seen[customer])
        last_seen[customer] = t
    n = len(offers)
    # A repeat whenever drawn (the first call has nobody to repeat), plus the odd chance collision
    # in a population of 100,000.
    assert abs(repeats / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 0.01
    assert statistics.median(gaps) < 12 * HOUR_MS
    # Without repeats, a customer calls twice in a day only by chance.
    plain = [ev["customer_id"] for ev in generate_call_events(
        SimulationConfig(rate=0.05, queues=(QueueModel("q", 30),), seed=4), 86_400) if ev["type"] == "call.offered"]
    assert 1 - len(set(plain)) / len(plain) < 0.03


def test_ratings_follow_the_end_and_fall_with_the_wait():
    cfg = realistic(rate=0.06, rating_probability=0.5, patience_mean=600.0, seed=12)
    events = list(generate_call_events(cfg, 86_400))
    ended = rated = 0
    by_wait: dict[bool, list[int]] = {True: [], False: []}
    nps = 0
    for evs in by_call(events).values():
        kinds = [ev["type"] for ev in evs]
        if "call.rated" not in kinds:
            ended += "call.ended" in kinds
            continue
        ended += 1
        rated += 1
        assert kinds[-2:] == ["call.ended", "call.rated"]
        rating, end = evs[-1], evs[-2]
        assert rating["occurred_at"] > end["occurred_at"] and rating["agent_id"] == end["agent_id"]
        assert rating["csat"] in range(1, 6) and rating.get("nps", 0) in range(0, 11)
        nps += "nps" in rating
        offered_at = ms(evs[0]["occurred_at"])
        wait = sum(ms(b["occurred_at"]) - ms(a["occurred_at"]) for a, b in itertools.pairwise(evs)
                   if b["type"] == "call.answered")
        if "call.transferred" not in kinds:
            by_wait[wait > 60_000].append(rating["csat"])
        assert offered_at <= ms(rating["occurred_at"])
    assert abs(rated / ended - 0.5) < 0.05 and 0.3 < nps / rated < 0.5
    assert len(by_wait[True]) > 50 and len(by_wait[False]) > 500
    assert statistics.fmean(by_wait[True]) < statistics.fmean(by_wait[False]) - 0.5


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), rate=st.floats(min_value=0.005, max_value=5.0),
       schedule=st.one_of(st.none(), st.lists(st.integers(min_value=0, max_value=6), min_size=24, max_size=24)
                          .filter(any)),
       profile=st.one_of(st.none(), st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=24, max_size=24)
                         .filter(any)),
       patience=st.one_of(st.none(), st.floats(min_value=0.5, max_value=600.0)),
       lognormal=st.booleans(), p=st.floats(min_value=0.0, max_value=1.0),
       outage=st.one_of(st.none(), st.tuples(st.floats(min_value=0, max_value=3000), st.floats(min_value=1, max_value=3000),
                                             st.floats(min_value=0, max_value=1.5))),
       start_hour=st.integers(min_value=0, max_value=23))
def test_any_realistic_config_makes_valid_well_formed_events(seed, rate, schedule, profile, patience, lognormal, p,
                                                             outage, start_hour):
    cfg = SimulationConfig(
        rate=rate, profile=None if profile is None else tuple(profile), patience_mean=patience,
        queues=(QueueModel("billing", 2, schedule=None if schedule is None else tuple(schedule)), QueueModel("support", 3)),
        service_distribution="lognormal" if lognormal else "exponential", service_cv=0.5 + p,
        transfer_probability=p, repeat_probability=p, rating_probability=p,
        outages=() if outage is None else (Outage(*outage),), seed=seed,
        start=datetime(2026, 1, 5, start_hour, 30, tzinfo=timezone.utc))
    events = list(itertools.islice(generate_call_events(cfg, 3600), 3000))
    times = [ev["occurred_at"] for ev in events]
    assert times == sorted(times)
    for iid, evs in by_call(events).items():
        assert [ev["event_id"] for ev in evs] == [f"{iid}-{n}" for n in range(1, len(evs) + 1)]
        assert evs[0]["type"] == "call.offered"
    for ev in events:
        assert isinstance(validate(ev, "call", now_ms=10**15), Event), ev


@pytest.mark.parametrize("bad", [
    dict(profile=(1.0,) * 23), dict(profile=(0.0,) * 24), dict(profile=(-1.0,) + (1.0,) * 23),
    dict(profile=(math.nan,) * 24), dict(service_distribution="gamma"), dict(service_cv=0),
    dict(transfer_probability=1.5), dict(repeat_probability=-0.1), dict(rating_probability=True),
    dict(outages=(Outage(0, 60, 0.5, queues=("nope",)),)),
])
def test_invalid_realistic_config_is_rejected(bad):
    with pytest.raises(ValueError):
        SimulationConfig(**bad)


@pytest.mark.parametrize("bad", [
    dict(schedule=(1,) * 23), dict(schedule=(0,) * 24), dict(schedule=(1.5,) * 24), dict(schedule=(-1,) + (1,) * 23),
])
def test_invalid_schedule_is_rejected(bad):
    with pytest.raises(ValueError, match="schedule"):
        QueueModel("q", **bad)


@pytest.mark.parametrize("bad", [dict(start=-1, duration=60), dict(start=0, duration=0),
                                 dict(start=0, duration=60, factor=-0.5), dict(start=math.inf, duration=60)])
def test_invalid_outage_is_rejected(bad):
    with pytest.raises(ValueError, match="outage"):
        Outage(**bad)


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
