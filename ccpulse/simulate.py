"""``ccpulse simulate``: voice-call events from a small but honest queueing model.

Each queue is an M/M/c+M system: Poisson arrivals, ``agents`` servers,
exponential talk time (plus an exponential after-call wrap-up during which the
agent stays busy), FIFO waiting and exponential customer patience. It is a
discrete-event simulation in event time driven by a heap, so one hour of
traffic costs milliseconds to generate and the wall clock only matters when
``publish`` paces the output.

The model runs on integer milliseconds: every timestamp is exact once formatted,
so the wait an integrator computes from two ``occurred_at`` strings is exactly
the wait the model produced.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import random
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from typing import Any, Callable, Iterable, Iterator

import orjson

__all__ = [
    "DEFAULT_START",
    "QueueModel",
    "SimulationConfig",
    "add_arguments",
    "config_from_args",
    "encode",
    "generate_call_events",
    "live_start",
    "publish",
]

# A Monday morning: fixed so that a seed alone pins the whole output.
DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
DEFAULT_QUEUE_NAMES = ("billing", "support", "sales")
# Customers are drawn from a finite population so that repeat callers occur.
CUSTOMER_POPULATION = 100_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class QueueModel:
    name: str
    agents: int = 3
    # Share of the total arrival rate, relative to the other queues' weights.
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 128:
            raise ValueError(f"queue name {self.name!r}: must be 1-128 characters")
        if self.agents < 1:
            raise ValueError(f"queue {self.name}: agents must be at least 1")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"queue {self.name}: weight must be a positive number")


@dataclass(frozen=True)
class SimulationConfig:
    rate: float = 2.0  # calls per second (event time), all queues together
    queues: tuple[QueueModel, ...] = tuple(QueueModel(name) for name in DEFAULT_QUEUE_NAMES)
    service_mean: float = 180.0  # talk time, seconds
    wrapup_mean: float = 20.0  # after-call work, seconds; 0 disables
    patience_mean: float | None = 60.0  # None: callers never hang up
    seed: int = 1
    # Normalised to UTC with millisecond precision, the model's resolution.
    start: datetime = DEFAULT_START

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError("rate: must be a positive number of calls per second")
        if not self.queues:
            raise ValueError("queues: at least one queue is needed")
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ValueError(f"queues: names must be unique, got {names}")
        if not (self.service_mean > 0 and math.isfinite(self.service_mean)):
            raise ValueError("service_mean: must be a positive number of seconds")
        if not (self.wrapup_mean >= 0 and math.isfinite(self.wrapup_mean)):
            raise ValueError("wrapup_mean: must be zero or a positive number of seconds")
        if self.patience_mean is not None and not (self.patience_mean > 0 and math.isfinite(self.patience_mean)):
            raise ValueError("patience_mean: must be a positive number of seconds, or None")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("start: must be timezone-aware")
        start = self.start.astimezone(timezone.utc)
        object.__setattr__(self, "start", start.replace(microsecond=start.microsecond // 1000 * 1000))


def live_start() -> datetime:
    """Now, in UTC, truncated to the model's millisecond resolution."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# Heap entry kinds. At equal times an agent frees up before a patience timer
# fires (a caller whose patience ends exactly when an agent frees is answered)
# and before a new arrival (which then finds the free agent).
_END, _FREE, _ABANDON, _ARRIVAL = 0, 1, 2, 3
_WAITING, _ANSWERED, _ABANDONED = 0, 1, 2


@dataclass(slots=True)
class _Call:
    n: int
    queue: int
    offered_ms: int
    # Drawn at arrival, whether used or not: the random stream then depends on
    # the arrival sequence only, so changing agent counts keeps the same callers.
    patience_ms: int | None
    service_ms: int
    wrapup_s: int
    customer_id: str
    state: int = _WAITING
    agent: str = ""


@dataclass(slots=True)
class _QueueState:
    name: str
    # Longest-idle agent first, the usual ACD routing rule.
    free_agents: deque[str]
    waiting: deque[_Call] = field(default_factory=deque)


class _Clock:
    """Formats epoch milliseconds as RFC 3339; caches the per-second prefix."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, epoch_ms: int) -> str:
        second, ms = divmod(epoch_ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = (_EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{ms:03d}Z"


def generate_call_events(cfg: SimulationConfig, duration: float) -> Iterator[dict[str, Any]]:
    """Every call event with ``occurred_at < cfg.start + duration``, in event-time order.

    Lazy: ``duration=math.inf`` streams forever in bounded memory (as long as the
    model is stable or callers abandon). Calls still in progress at the horizon
    have their events up to the horizon only. Same ``cfg``, same output.
    """
    if not duration >= 0:
        raise ValueError("duration: must be zero or a positive number of seconds")
    rng = random.Random(cfg.seed)
    horizon_ms = math.inf if math.isinf(duration) else round(duration * 1000)
    start_ms = (cfg.start - _EPOCH) // _MS
    clock = _Clock()
    queues = [
        _QueueState(q.name, deque(f"{q.name}-a{i}" for i in range(1, q.agents + 1)))
        for q in cfg.queues
    ]
    cum_weights = list(accumulate(q.weight for q in cfg.queues))
    total_weight = cum_weights[-1]
    last_queue = len(queues) - 1
    patience_rate = None if cfg.patience_mean is None else 1.0 / cfg.patience_mean
    service_rate = 1.0 / cfg.service_mean
    wrapup_rate = 1.0 / cfg.wrapup_mean if cfg.wrapup_mean > 0 else None
    seed = cfg.seed

    heap: list[tuple[int, int, int, _Call]] = []
    seq = 0
    arrival_s = 0.0  # unrounded, so rounding errors don't accumulate over the stream
    calls = 0

    def push(at_ms: int, kind: int, call: _Call) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at_ms, kind, seq, call))

    def next_arrival() -> None:
        nonlocal arrival_s, calls
        arrival_s += rng.expovariate(cfg.rate)
        calls += 1
        queue = min(bisect_right(cum_weights, rng.random() * total_weight), last_queue)
        customer = f"cust-{rng.randrange(CUSTOMER_POPULATION):05d}"
        patience = None if patience_rate is None else round(rng.expovariate(patience_rate) * 1000)
        # At least 1 ms of talk so that call.ended is strictly after call.answered.
        service = max(1, round(rng.expovariate(service_rate) * 1000))
        wrapup = 0 if wrapup_rate is None else round(rng.expovariate(wrapup_rate))
        offered = round(arrival_s * 1000)
        push(offered, _ARRIVAL, _Call(calls, queue, offered, patience, service, wrapup, customer))

    def event(call: _Call, n: int, kind: str, at_ms: int) -> dict[str, Any]:
        iid = f"c-{seed}-{call.n}"
        return {
            "event_id": f"{iid}-{n}",
            "type": kind,
            "occurred_at": clock.format(start_ms + at_ms),
            "interaction_id": iid,
            "queue": queues[call.queue].name,
            "schema_version": 1,
        }

    def answer(call: _Call, agent: str, now: int) -> dict[str, Any]:
        call.state = _ANSWERED
        call.agent = agent
        push(now + call.service_ms, _END, call)
        ev = event(call, 2, "call.answered", now)
        ev["agent_id"] = agent
        return ev

    next_arrival()
    while heap[0][0] < horizon_ms:
        now, kind, _, call = heapq.heappop(heap)
        q = queues[call.queue]
        if kind == _ARRIVAL:
            next_arrival()
            ev = event(call, 1, "call.offered", now)
            ev["customer_id"] = call.customer_id
            yield ev
            if q.free_agents:
                yield answer(call, q.free_agents.popleft(), now)
            else:
                q.waiting.append(call)
                if call.patience_ms is not None:
                    push(now + call.patience_ms, _ABANDON, call)
        elif kind == _ABANDON:
            # Stale timer if the call was answered meanwhile; the queue entry is
            # skipped lazily when an agent next looks for work.
            if call.state == _WAITING:
                call.state = _ABANDONED
                yield event(call, 2, "call.abandoned", now)
        elif kind == _END:
            ev = event(call, 3, "call.ended", now)
            ev["agent_id"] = call.agent
            ev["wrapup_seconds"] = call.wrapup_s
            yield ev
            if call.wrapup_s:
                push(now + call.wrapup_s * 1000, _FREE, call)
            else:
                yield from _next_waiting(q, call.agent, now, answer)
        else:  # _FREE: the agent finished wrap-up
            yield from _next_waiting(q, call.agent, now, answer)


def _next_waiting(q: _QueueState, agent: str, now: int,
                  answer: Callable[[_Call, str, int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    while q.waiting:
        call = q.waiting.popleft()
        if call.state == _WAITING:
            yield answer(call, agent, now)
            return
    q.free_agents.append(agent)


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["occurred_at"]).timestamp()


async def publish(
    events: Iterable[dict[str, Any]],
    bootstrap: str,
    topic: str,
    speed: float | None,
    *,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    ssl_context: Any = None,
    progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    batch_size: int = 1000,
) -> int:
    """Send ``events`` to ``topic`` keyed by ``interaction_id``; returns how many were acknowledged.

    ``speed=None`` sends as fast as the broker takes them; otherwise event time is
    replayed at ``speed`` times the wall clock, measured from the first event.
    ``progress`` gets the running total of acknowledged messages after each
    batch. Setting ``stop`` ends the run cleanly: what was sent is flushed and
    counted. ``events`` is consumed lazily, so an endless generator is fine.
    """
    from aiokafka import AIOKafkaProducer

    if speed is not None and not (speed > 0 and math.isfinite(speed)):
        raise ValueError("speed: must be a positive number, or None for as fast as possible")
    if batch_size < 1:
        raise ValueError("batch_size: must be at least 1")
    if security_protocol in ("SSL", "SASL_SSL") and ssl_context is None:
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context()  # system CAs: what managed Kafka needs
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        # Events are ~200 bytes; the 16 KiB default would cap a batch at ~80.
        max_batch_size=256 * 1024,
        security_protocol=security_protocol,
        ssl_context=ssl_context,
        sasl_mechanism=sasl_mechanism or "PLAIN",
        sasl_plain_username=sasl_username or None,
        sasl_plain_password=sasl_password or None,
    )
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[Any]] = []
    acked = 0

    async def drain() -> None:
        nonlocal acked
        if not pending:
            return
        # gather raises the first delivery error: a failed send must not be counted.
        await asyncio.gather(*pending)
        acked += len(pending)
        pending.clear()
        if progress is not None:
            progress(acked)

    try:
        # Inside the try: a failed bootstrap must still close the producer.
        await producer.start()
        wall0: float | None = None
        event0 = 0.0
        for ev in events:
            if stop is not None and stop.is_set():
                break
            if speed is not None:
                t = _event_time(ev)
                if wall0 is None:
                    wall0, event0 = loop.time(), t
                due = wall0 + (t - event0) / speed
                if due > loop.time():
                    # Idle anyway: settle what is in flight so progress is current.
                    await drain()
                    delay = due - loop.time()
                    if delay > 0 and await _sleep_or_stop(delay, stop):
                        break
            pending.append(await producer.send(topic, encode(ev), key=ev["interaction_id"].encode()))
            if len(pending) >= batch_size:
                await drain()
        await producer.flush()
        await drain()
    finally:
        await producer.stop()
    return acked


async def _sleep_or_stop(delay: float, stop: asyncio.Event | None) -> bool:
    """Sleeps ``delay`` seconds; True when ``stop`` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True


# ---------------------------------------------------------------- command line

def _speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be positive, 0 or 'max'")
    return None if value == 0 else value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or a positive number")
    return value


def _agents(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _start(text: str) -> datetime | str:
    if text.strip().lower() == "now":
        return "now"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 timestamp or 'now'") from None
    # A bare timestamp means UTC, the timezone of every event on the wire.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _queues(text: str) -> tuple[tuple[str, float], ...]:
    out: list[tuple[str, float]] = []
    for item in text.split(","):
        name, _, weight = item.strip().partition(":")
        if not name:
            raise argparse.ArgumentTypeError(f"{text!r}: empty queue name")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: weight is not a number") from None
        if not (w > 0 and math.isfinite(w)):
            raise argparse.ArgumentTypeError(f"{item!r}: weight must be positive")
        out.append((name, w))
    if len({name for name, _ in out}) != len(out):
        raise argparse.ArgumentTypeError(f"{text!r}: queue names must be unique")
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimulationConfig()
    # The CLI defaults are a staffed centre: 1 call/s over 3 queues at ~200 s per call
    # is ~67 Erlangs per queue, which 75 agents serve at a realistic service level.
    parser.add_argument("--rate", type=_positive, default=1.0,
                        help="calls per second of event time, all queues together (default %(default)s)")
    parser.add_argument("--duration", type=_positive, default=None,
                        help="seconds of event time to simulate (default: until stopped, in real time)")
    parser.add_argument("--speed", type=_speed, default=1.0,
                        help="event time per wall-clock time: 1 real time, 60 one hour per minute, "
                             "0 or 'max' as fast as possible (default 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; same seed and options, same events "
                             "(default 1, or the start time in seconds for a live run)")
    parser.add_argument("--queues", type=_queues, default=_queues(",".join(DEFAULT_QUEUE_NAMES)),
                        help="comma-separated queue names, each optionally NAME:WEIGHT for its share "
                             "of the arrivals (default billing,support,sales, equal shares)")
    parser.add_argument("--agents", type=_agents, default=75, help="agents per queue (default %(default)s)")
    parser.add_argument("--patience", type=_non_negative, default=defaults.patience_mean,
                        help="mean caller patience in seconds before abandoning; 0: never abandon "
                             "(default %(default)s)")
    parser.add_argument("--service-mean", type=_positive, default=defaults.service_mean,
                        help="mean talk time in seconds (default %(default)s)")
    parser.add_argument("--wrapup-mean", type=_non_negative, default=defaults.wrapup_mean,
                        help="mean after-call work in seconds; 0: none (default %(default)s)")
    parser.add_argument("--start", type=_start, default=None,
                        help="event time of the first instant, ISO 8601 or 'now' (default: now when "
                             f"--speed is 1 or slower, else {DEFAULT_START.isoformat()})")


def config_from_args(ns: argparse.Namespace) -> tuple[SimulationConfig, float, float | None]:
    """(config, duration in seconds, speed) from ``add_arguments``' options; ValueError if inconsistent."""
    duration = math.inf if ns.duration is None else float(ns.duration)
    speed: float | None = ns.speed
    if math.isinf(duration) and speed is None:
        raise ValueError("--speed max needs a --duration (otherwise it floods the topic forever)")
    # Paced at or below real time the events should be "now" so that live
    # windows fill; faster than real time, now-based event time would run
    # into the future, so a fixed past day is replayed instead.
    live = ns.start == "now" or (ns.start is None and speed is not None and speed <= 1.0)
    start = live_start() if live else (ns.start or DEFAULT_START)
    # Event ids derive from the seed; a fixed default would make every live run
    # repeat the previous run's ids and have them dropped as duplicates.
    seed = ns.seed if ns.seed is not None else (int(start.timestamp()) if live else 1)
    cfg = SimulationConfig(
        rate=ns.rate,
        queues=tuple(QueueModel(name, ns.agents, weight) for name, weight in ns.queues),
        service_mean=ns.service_mean,
        wrapup_mean=ns.wrapup_mean,
        patience_mean=ns.patience or None,
        seed=seed,
        start=start,
    )
    return cfg, duration, speed
