"""``ccpulse simulate``: voice-call events from a small but honest queueing model.

Each queue is an M/M/c+M system by default: Poisson arrivals, ``agents``
servers, exponential talk time (plus an exponential after-call wrap-up during
which the agent stays busy), FIFO waiting and exponential customer patience.
It is a discrete-event simulation in event time driven by a heap, so one hour
of traffic costs milliseconds to generate and the wall clock only matters when
``ccpulse.commands.publish`` paces the output.

Everything that makes a day in a real contact center look like one is opt-in,
and with the defaults the output is exactly that of the plain model:

- ``SimulationConfig.profile``: 24 hourly multipliers of ``rate`` (the UTC hour
  of the event time), a non-homogeneous Poisson process generated exactly by
  thinning;
- ``QueueModel.schedule``: 24 hourly agent counts. When staffing drops, agents
  finish their current call (and wrap-up) and then log off, longest-idle agents
  staying; when it rises, the new agents pick up waiting calls at once.
  ``SimulationConfig.outages`` scale the staffing down for a time window (a
  telephony or CRM outage: only a share of the agents can take calls);
- ``service_distribution="lognormal"`` with ``service_cv``: talk and wrap-up
  times are lognormal with the configured means (real handle times are);
- ``transfer_probability``: an agent transfers the call to another queue
  (``call.transferred`` with ``to_queue``) where it waits, and may be abandoned,
  again; ``repeat_probability``: the caller is someone who called in the last
  hours, so first-contact resolution has both outcomes;
  ``rating_probability``: a post-call survey (``call.rated``, csat 1-5 and
  sometimes nps 0-10, worse after long waits and transfers) after ``call.ended``.

Opt-in as well, for the agent side of EVENTS.md (each off by default, so that a
seed replays the stream it always did):

- ``agent_events``: agents ``agent.logged_in`` / ``agent.logged_out`` as the
  staffing changes, declare ``after_contact_work`` for the wrap-up and then
  ``available``, and go ``away`` for a ``break`` or ``lunch`` (reason codes) about
  every ``break_interval`` seconds of work. Breaks are shrinkage: the schedule
  counts the agents who take calls, and as many more log in as cover the mean
  share of time away (the way workforce management grosses up a plan), so a
  scenario planned for its service level still meets it;
- ``hold_probability``: the agent puts the call on hold once (``call.held``, then
  ``call.resumed`` before the end; the hold is part of the talk time, so no other
  call changes);
- ``max_wait``: a caller still waiting after this many seconds in a queue flows
  out (``call.flowed_out``, reason ``timeout``);
- ``callback_probability``: a caller whose patience runs out asks for a callback
  (``call.callback_requested``) instead of abandoning; the callback is placed a
  little later as a new call (``<id>-cb``, ``attributes.callback_of``) that waits
  for the next agent and never hangs up.

Their random numbers come from generators of their own, so turning them on
keeps the same callers.

Every random number is drawn when a call arrives, whether it is used or not, so
the random stream depends on the arrivals only: the same seed with fewer agents
gives the same callers, with the same patience and talk times.

The model runs on integer milliseconds: every timestamp is exact once formatted,
so the wait an integrator computes from two ``occurred_at`` strings is exactly
the wait the model produced.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from typing import Any, Callable, Iterator

import orjson

from ccpulse.commands import arguments

__all__ = [
    "CUSTOMER_POPULATION",
    "DEFAULT_START",
    "Outage",
    "QueueModel",
    "SERVICE_DISTRIBUTIONS",
    "SimulationConfig",
    "add_arguments",
    "config_from_args",
    "encode",
    "generate_call_events",
    "live_start",
]

# A Monday morning: fixed so that a seed alone pins the whole output.
DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
DEFAULT_QUEUE_NAMES = ("billing", "support", "sales")
# Customers are drawn from a finite population so that repeat callers occur.
CUSTOMER_POPULATION = 100_000
SERVICE_DISTRIBUTIONS = ("exponential", "lognormal")
HOURS = 24
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_HOUR_MS = 3_600_000

# Repeat contacts come from callers of the last hours (inside the default 24 h
# first-contact-resolution horizon); bounded, so an endless stream stays bounded.
_REPEAT_WINDOW_MS = 20 * _HOUR_MS
_REPEAT_MEMORY = 20_000
# A transferring agent talks for this share of a normal call before the transfer.
_TRANSFER_TALK_SHARE = 0.4
# Post-call survey: answered this long after the end on average, seconds.
_RATING_DELAY_MEAN = 30.0
_NPS_SHARE = 0.4  # of the rated calls also give an NPS score
# Satisfaction falls with the wait: (total wait up to, ms) -> CSAT 1..5 and NPS 0..10 weights.
# A transferred call is rated one band worse.
_SATISFACTION_BANDS = (
    (60_000, tuple(accumulate((0.04, 0.04, 0.08, 0.30, 0.54))),
     tuple(accumulate((0.01, 0.01, 0.01, 0.02, 0.02, 0.04, 0.05, 0.11, 0.18, 0.23, 0.32)))),
    (180_000, tuple(accumulate((0.10, 0.10, 0.20, 0.32, 0.28))),
     tuple(accumulate((0.04, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.15, 0.17, 0.14, 0.14)))),
    (math.inf, tuple(accumulate((0.30, 0.22, 0.22, 0.16, 0.10))),
     tuple(accumulate((0.12, 0.08, 0.09, 0.09, 0.09, 0.10, 0.10, 0.11, 0.10, 0.06, 0.06)))),
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _probability(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a probability between 0 and 1")


def _seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be a positive number of seconds")


@dataclass(frozen=True)
class QueueModel:
    name: str
    agents: int = 3
    # Share of the total arrival rate, relative to the other queues' weights.
    weight: float = 1.0
    # Agents on shift in each UTC hour 0-23 of the event time; None: always ``agents``.
    # When set it replaces ``agents`` (0 is allowed: the queue is closed that hour).
    schedule: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 128:
            raise ValueError(f"queue name {self.name!r}: must be 1-128 characters")
        if self.agents < 1:
            raise ValueError(f"queue {self.name}: agents must be at least 1")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"queue {self.name}: weight must be a positive number")
        if self.schedule is not None:
            schedule = tuple(self.schedule)
            if len(schedule) != HOURS or not all(_is_int(n) and n >= 0 for n in schedule):
                raise ValueError(f"queue {self.name}: schedule must be 24 agent counts (integers >= 0), "
                                 "one per hour of the day")
            if not any(schedule):
                raise ValueError(f"queue {self.name}: schedule has no agents in any hour")
            object.__setattr__(self, "schedule", schedule)


@dataclass(frozen=True)
class Outage:
    """For ``duration`` seconds from ``start`` seconds after the simulation start,
    only ``factor`` of the scheduled agents (rounded) can take calls."""

    start: float
    duration: float
    factor: float = 0.2
    queues: tuple[str, ...] = ()  # the queues affected; empty: all

    def __post_init__(self) -> None:
        if isinstance(self.start, bool) or not (self.start >= 0 and math.isfinite(self.start)):
            raise ValueError("outage start: must be zero or a positive number of seconds after the start")
        if isinstance(self.duration, bool) or not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError("outage duration: must be a positive number of seconds")
        if isinstance(self.factor, bool) or not (self.factor >= 0 and math.isfinite(self.factor)):
            raise ValueError("outage factor: must be zero or a positive number (share of the agents)")
        object.__setattr__(self, "queues", tuple(self.queues))


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
    # Multipliers of ``rate`` for each UTC hour 0-23 of the event time; None: flat.
    profile: tuple[float, ...] | None = None
    # Talk and wrap-up times: "exponential" or "lognormal" (same means; coefficient of
    # variation ``service_cv``, used by lognormal only).
    service_distribution: str = "exponential"
    service_cv: float = 1.0
    transfer_probability: float = 0.0  # an answered call is transferred to another queue
    repeat_probability: float = 0.0  # the caller called in the last hours already
    rating_probability: float = 0.0  # call.rated after call.ended
    outages: tuple[Outage, ...] = ()
    # The agent side (module docstring); off by default.
    agent_events: bool = False
    break_interval: float = 7200.0  # mean seconds of work between two aways (with agent_events)
    break_duration: float = 900.0  # seconds of a break; a lunch lasts twice as long
    hold_probability: float = 0.0  # an answered call is put on hold once
    max_wait: float | None = None  # seconds in a queue before the call flows out; None: never
    callback_probability: float = 0.0  # a caller out of patience asks for a callback instead

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
        if self.profile is not None:
            profile = tuple(self.profile)
            if len(profile) != HOURS or not all(
                    not isinstance(p, bool) and isinstance(p, (int, float)) and p >= 0 and math.isfinite(p)
                    for p in profile):
                raise ValueError("profile: must be 24 multipliers (numbers >= 0), one per hour of the day")
            if not any(profile):
                raise ValueError("profile: at least one hour must have arrivals")
            object.__setattr__(self, "profile", tuple(float(p) for p in profile))
        if self.service_distribution not in SERVICE_DISTRIBUTIONS:
            raise ValueError(f"service_distribution: must be one of {', '.join(SERVICE_DISTRIBUTIONS)}, "
                             f"got {self.service_distribution!r}")
        if isinstance(self.service_cv, bool) or not (self.service_cv > 0 and math.isfinite(self.service_cv)):
            raise ValueError("service_cv: must be a positive number")
        _probability("transfer_probability", self.transfer_probability)
        _probability("repeat_probability", self.repeat_probability)
        _probability("rating_probability", self.rating_probability)
        _probability("hold_probability", self.hold_probability)
        _probability("callback_probability", self.callback_probability)
        _seconds("break_interval", self.break_interval)
        _seconds("break_duration", self.break_duration)
        if self.max_wait is not None:
            _seconds("max_wait", self.max_wait)
        if not isinstance(self.agent_events, bool):
            raise ValueError("agent_events: must be true or false")
        outages = tuple(self.outages)
        for outage in outages:
            if not isinstance(outage, Outage):
                raise ValueError("outages: each must be an Outage")
            unknown = set(outage.queues) - set(names)
            if unknown:
                raise ValueError(f"outages: unknown queue {sorted(unknown)[0]!r}")
        object.__setattr__(self, "outages", outages)


def live_start() -> datetime:
    """Now, in UTC, truncated to the model's millisecond resolution."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# Heap entry kinds, in the order they run at equal times. Staffing changes come
# first (a caller arriving exactly when agents log on is answered; an agent
# freeing exactly when staffing drops logs off); an agent frees up before a
# patience timer fires (a caller whose patience ends exactly when an agent frees
# is answered) and before a new arrival (which then finds the free agent).
_STAFF, _END, _TRANSFER, _FREE, _ABANDON, _RATE, _ARRIVAL = range(7)
# The opt-in kinds come after them, so that with the options off the heap orders
# exactly as it always did.
_HOLD, _RESUME, _FLOW_OUT, _CALLBACK, _AWAY, _BACK = range(7, 13)
# _ABANDONED: gone from the queue (abandoned, flowed out or waiting for a callback).
_WAITING, _ANSWERED, _ABANDONED = 0, 1, 2
# An away every break_interval cycles through these; a lunch lasts twice a break.
_AWAY_REASONS = ("break", "lunch", "break")
_HOLD_MEAN = 40.0  # seconds on hold, before the cut to the talk time left
_CALLBACK_DELAY_MEAN = 60.0  # seconds from the request until the callback is placed


@dataclass(slots=True, eq=False)
class _Call:
    iid: str
    queue: int
    # Everything random is drawn at arrival, whether used or not: the random
    # stream then depends on the arrival sequence only, so changing agent counts
    # keeps the same callers.
    patience_ms: int | None
    service_ms: int
    wrapup_s: int
    customer_id: str
    queued_ms: int  # when the current wait began
    transfer_ms: int = -1  # talk before the agent transfers the call; -1: no transfer
    to_queue: int = 0
    patience2_ms: int | None = None  # patience in the queue transferred to
    rating: tuple[float, float | None, int] | None = None  # (csat draw, nps draw, delay ms)
    state: int = _WAITING
    agent: int = 0  # index into the queue's agent names
    wait_ms: int = 0  # total wait of the answered segments
    abandon_ms: int = -1  # when the live patience timer fires
    emitted: int = 0  # events so far: the event id suffix
    transferred: bool = False
    hold: tuple[float, int] | None = None  # (where in the talk, share; hold ms): put on hold once
    callback_ms: int = -1  # asks for a callback this long before it is placed, instead of abandoning; -1: no
    callback_of: str | None = None  # this call is the callback of that one


@dataclass(slots=True, eq=False)
class _QueueState:
    name: str
    names: list[str]  # agent ids by agent index
    # Longest-idle agent first, the usual ACD routing rule.
    free_agents: deque[int]
    target: int  # agents scheduled now
    on_shift: int  # free + busy, including busy agents who log off after this call
    off: list[int] = field(default_factory=list)  # a heap of the agents off shift
    waiting: deque[_Call] = field(default_factory=deque)


class _Staffing:
    """Agents scheduled per queue at a model time, and when that can next change."""

    def __init__(self, cfg: SimulationConfig, start_ms: int, away_share: float = 0.0) -> None:
        self._start_ms = start_ms
        # Agents logged in per agent scheduled: the cover for the share of time away.
        self._gross = 1.0 / (1.0 - away_share)
        self._schedules = [q.schedule for q in cfg.queues]
        self._agents = [q.agents for q in cfg.queues]
        self._hourly = any(s is not None for s in self._schedules)
        windows = [(round(o.start * 1000), round((o.start + o.duration) * 1000), o.factor, set(o.queues))
                   for o in cfg.outages]
        self._outages = [[(a, b, f) for a, b, f, names in windows if not names or q.name in names]
                         for q in cfg.queues]
        self._bounds = sorted({b for a, e, _, _ in windows for b in (a, e) if b > 0})

    def target(self, queue: int, t: int) -> int:
        schedule = self._schedules[queue]
        base = self._agents[queue] if schedule is None else schedule[(self._start_ms + t) // _HOUR_MS % HOURS]
        factor = 1.0
        for a, b, f in self._outages[queue]:
            if a <= t < b:
                factor *= f
        n = base if factor == 1.0 else int(base * factor + 0.5)
        # The tolerance: 45 x 11/9 is 55.00000000000001 in floats, and 55 agents, not 56.
        return n if self._gross == 1.0 else math.ceil(n * self._gross - 1e-9)

    def next_change(self, t: int) -> float:
        nxt: float = math.inf
        if self._hourly:
            nxt = ((self._start_ms + t) // _HOUR_MS + 1) * _HOUR_MS - self._start_ms
        i = bisect_right(self._bounds, t)
        if i < len(self._bounds) and self._bounds[i] < nxt:
            nxt = self._bounds[i]
        return nxt


class _Customers:
    """Anyone from the population; with ``p``, someone who called in the last hours."""

    __slots__ = ("_rng", "_p", "_recent", "_memory")

    def __init__(self, rng: random.Random, p: float, memory: int = _REPEAT_MEMORY) -> None:
        self._rng = rng
        self._p = p
        self._memory = memory
        self._recent: deque[tuple[int, str]] = deque()

    def draw(self, now_ms: int) -> str:
        recent = self._recent
        while recent and (recent[0][0] < now_ms - _REPEAT_WINDOW_MS or len(recent) >= self._memory):
            recent.popleft()
        if recent and self._rng.random() < self._p:
            customer = recent[self._rng.randrange(len(recent))][1]
        else:
            customer = f"cust-{self._rng.randrange(CUSTOMER_POPULATION):05d}"
        recent.append((now_ms, customer))
        return customer


class _Clock:
    """Formats epoch milliseconds as RFC 3339; caches the per-minute prefix."""

    __slots__ = ("_minute", "_prefix")

    def __init__(self) -> None:
        self._minute = -1
        self._prefix = ""

    def format(self, epoch_ms: int) -> str:
        minute, ms = divmod(epoch_ms, 60_000)
        if minute != self._minute:
            self._minute = minute
            moment = _EPOCH + timedelta(minutes=minute)
            self._prefix = f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:")
        second, ms = divmod(ms, 1000)
        return f"{self._prefix}{second:02d}.{ms:03d}Z"


class _Presence:
    """Agent presence events (EVENTS.md "Agents") of the voice model: who is logged
    in, after-contact work, breaks and lunch. The queue keeps routing; this adds the
    events and takes agents away for their breaks."""

    def __init__(self, cfg: SimulationConfig, clock: _Clock, start_ms: int,
                 push: Callable[[int, int, Any], None]) -> None:
        self._rng = random.Random(f"ccpulse-agents-{cfg.seed}")  # apart from the callers' stream
        self._interval_ms = cfg.break_interval * 1000
        self._break_ms = round(cfg.break_duration * 1000)
        self._clock, self._start_ms, self._push = clock, start_ms, push
        self._prefix = f"ag-{cfg.seed}-"
        self._emitted: dict[str, int] = {}
        # By agent id: a login counter (timers of an earlier login are stale), the
        # declared state, a break due while on a call, and the aways so far.
        self._session: dict[str, int] = {}
        self._declared: dict[str, str] = {}
        self._due: set[str] = set()
        self._aways: dict[str, int] = {}

    @staticmethod
    def away_share(cfg: SimulationConfig) -> float:
        """The mean share of logged-in time away: breaks and lunches over work plus them."""
        away = cfg.break_duration * sum(2 if r == "lunch" else 1 for r in _AWAY_REASONS) / len(_AWAY_REASONS)
        return away / (cfg.break_interval + away)

    def _event(self, aid: str, kind: str, now: int) -> dict[str, Any]:
        n = self._emitted[aid] = self._emitted.get(aid, 0) + 1
        return {"event_id": f"{self._prefix}{aid}-{n}", "type": kind,
                "occurred_at": self._clock.format(self._start_ms + now), "agent_id": aid, "schema_version": 1}

    def _state(self, aid: str, state: str, now: int, reason: str | None = None) -> dict[str, Any]:
        self._declared[aid] = state
        ev = self._event(aid, "agent.state_changed", now)
        ev["state"] = state
        if reason is not None:
            ev["reason"] = reason
        return ev

    def _timer(self, q: _QueueState, agent: int, at: int, kind: int) -> None:
        aid = q.names[agent]
        self._push(at, kind, (q, agent, self._session[aid]))

    def login(self, q: _QueueState, agent: int, now: int) -> dict[str, Any]:
        aid = q.names[agent]
        self._session[aid] = self._session.get(aid, 0) + 1
        self._declared[aid] = "available"
        self._due.discard(aid)
        # The first away anywhere in the first 1.25 intervals: logins at the same hour stagger.
        self._timer(q, agent, now + max(1, round(self._rng.uniform(0.25, 1.25) * self._interval_ms)), _AWAY)
        ev = self._event(aid, "agent.logged_in", now)
        ev["queues"] = [q.name]
        return ev

    def logout(self, q: _QueueState, agent: int, now: int) -> dict[str, Any]:
        aid = q.names[agent]
        self._session[aid] += 1
        return self._event(aid, "agent.logged_out", now)

    def after_contact_work(self, q: _QueueState, agent: int, now: int) -> dict[str, Any]:
        return self._state(q.names[agent], "after_contact_work", now)

    def stale(self, timer: tuple[_QueueState, int, int]) -> bool:
        q, agent, session = timer
        return self._session[q.names[agent]] != session

    def break_due(self, q: _QueueState, agent: int, now: int) -> Iterator[dict[str, Any]]:
        """Away now if idle, else after the current call and its wrap-up."""
        if agent in q.free_agents:
            q.free_agents.remove(agent)
            yield self._away(q, agent, now)
        else:
            self._due.add(q.names[agent])

    def _away(self, q: _QueueState, agent: int, now: int) -> dict[str, Any]:
        aid = q.names[agent]
        k = self._aways[aid] = self._aways.get(aid, 0) + 1
        reason = _AWAY_REASONS[(k - 1) % len(_AWAY_REASONS)]
        self._timer(q, agent, now + self._break_ms * (2 if reason == "lunch" else 1), _BACK)
        return self._state(aid, "away", now, reason)

    def free(self, q: _QueueState, agent: int, now: int,
             answer: Callable[[_Call, _QueueState, int, int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The agent is done with a call (and its wrap-up) and stays on shift."""
        aid = q.names[agent]
        if aid in self._due:
            self._due.discard(aid)
            yield self._away(q, agent, now)
            return
        if self._declared[aid] != "available":
            yield self._state(aid, "available", now)
        yield from _next_waiting(q, agent, now, answer)

    def back(self, q: _QueueState, agent: int, now: int,
             answer: Callable[[_Call, _QueueState, int, int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Back from an away: logs off if the shift ended meanwhile, else takes calls again."""
        if q.on_shift > q.target:
            q.on_shift -= 1
            heapq.heappush(q.off, agent)
            yield self.logout(q, agent, now)
            return
        self._timer(q, agent, now + max(1, round(self._rng.uniform(0.5, 1.5) * self._interval_ms)), _AWAY)
        yield self._state(q.names[agent], "available", now)
        yield from _next_waiting(q, agent, now, answer)


def _pick(u: float, cum_weights: tuple[float, ...]) -> int:
    return min(bisect_right(cum_weights, u * cum_weights[-1]), len(cum_weights) - 1)


def generate_call_events(cfg: SimulationConfig, duration: float) -> Iterator[dict[str, Any]]:
    """Every call event with ``occurred_at < cfg.start + duration``, in event-time order.

    Per call: ``call.offered`` (customer_id) -> ``call.answered`` (agent_id) or
    ``call.abandoned`` -> with ``transfer_probability``, ``call.transferred``
    (agent_id, to_queue), then another wait in ``to_queue`` ending in
    ``call.answered`` or ``call.abandoned`` there -> ``call.ended`` (agent_id,
    wrapup_seconds) -> with ``rating_probability``, ``call.rated`` (agent_id,
    csat, sometimes nps). Event ids are the interaction id plus the event's
    1-based position in the call. With the agent-side options (module docstring)
    also ``call.held``/``call.resumed``, ``call.flowed_out``, ``call.callback_requested``
    and the callbacks' calls, and ``agent.*`` events (ids ``ag-<seed>-<agent>-<n>``).

    Lazy: ``duration=math.inf`` streams forever in bounded memory (as long as the
    model is stable or callers abandon). Calls still in progress at the horizon
    have their events up to the horizon only. Same ``cfg``, same output.
    """
    if not duration >= 0:
        raise ValueError("duration: must be zero or a positive number of seconds")
    return _call_events(cfg, math.inf if math.isinf(duration) else round(duration * 1000))


def _call_events(cfg: SimulationConfig, horizon_ms: float) -> Iterator[dict[str, Any]]:
    rng = random.Random(cfg.seed)
    random_, expovariate, lognormvariate = rng.random, rng.expovariate, rng.lognormvariate
    start_ms = (cfg.start - _EPOCH) // _MS
    clock = _Clock()
    staffing = _Staffing(cfg, start_ms, _Presence.away_share(cfg) if cfg.agent_events else 0.0)
    queues = []
    for i, qm in enumerate(cfg.queues):
        n = staffing.target(i, 0)
        queues.append(_QueueState(qm.name, [f"{qm.name}-a{k}" for k in range(1, n + 1)], deque(range(n)), n, n))
    nq = len(queues)
    cum_weights = list(accumulate(q.weight for q in cfg.queues))
    total_weight = cum_weights[-1]
    last_queue = nq - 1
    patience_rate = None if cfg.patience_mean is None else 1.0 / cfg.patience_mean
    service_rate = 1.0 / cfg.service_mean
    wrapup_rate = 1.0 / cfg.wrapup_mean if cfg.wrapup_mean > 0 else None
    lognormal = cfg.service_distribution == "lognormal"
    # Lognormal with mean m and coefficient of variation cv: sigma^2 = ln(1 + cv^2), mu = ln m - sigma^2 / 2.
    sigma = math.sqrt(math.log1p(cfg.service_cv ** 2))
    service_mu = math.log(cfg.service_mean) - sigma * sigma / 2
    wrapup_mu = math.log(cfg.wrapup_mean) - sigma * sigma / 2 if wrapup_rate is not None else 0.0
    transfer_p, rating_p = cfg.transfer_probability, cfg.rating_probability
    customers = _Customers(rng, cfg.repeat_probability) if cfg.repeat_probability > 0 else None
    prefix = f"c-{cfg.seed}-"
    # The opt-in options draw from their own generator: the callers stay the same.
    hold_p, callback_p = cfg.hold_probability, cfg.callback_probability
    extra = random.Random(f"ccpulse-calls-{cfg.seed}") if hold_p or callback_p else None
    max_wait_ms = None if cfg.max_wait is None else max(1, round(cfg.max_wait * 1000))

    rate = cfg.rate
    profile = cfg.profile
    peak = 0.0
    if profile is not None:
        peak = max(profile)
        if min(profile) == peak:  # flat after all: a homogeneous process
            rate, profile = rate * peak, None
    peak_rate = rate * peak

    heap: list[tuple[int, int, int, Any]] = []
    seq = 0
    arrival_s = 0.0  # unrounded, so rounding errors don't accumulate over the stream
    calls = 0

    def push(at_ms: int, kind: int, call: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at_ms, kind, seq, call))

    presence = _Presence(cfg, clock, start_ms, push) if cfg.agent_events else None

    def draw_hold(call: _Call) -> None:
        assert extra is not None
        if hold_p and extra.random() < hold_p:
            call.hold = (extra.random(), max(1, round(extra.expovariate(1.0 / _HOLD_MEAN) * 1000)))

    def draw_service() -> tuple[int, int]:
        """(talk ms, wrap-up s) of a callback, from the options' own generator."""
        assert extra is not None
        if lognormal:
            service = max(1, round(extra.lognormvariate(service_mu, sigma) * 1000))
            return service, 0 if wrapup_rate is None else round(extra.lognormvariate(wrapup_mu, sigma))
        service = max(1, round(extra.expovariate(service_rate) * 1000))
        return service, 0 if wrapup_rate is None else round(extra.expovariate(wrapup_rate))

    def next_arrival() -> None:
        nonlocal arrival_s, calls
        if profile is None:
            arrival_s += expovariate(rate)
        else:
            # Thinning: candidates at the peak rate, each kept with probability rate(t) / peak rate.
            while True:
                arrival_s += expovariate(peak_rate)
                p = profile[(start_ms + round(arrival_s * 1000)) // _HOUR_MS % HOURS]
                if p == peak or random_() * peak < p:
                    break
        calls += 1
        queue = min(bisect_right(cum_weights, random_() * total_weight), last_queue)
        offered = round(arrival_s * 1000)
        if customers is None:
            customer = f"cust-{rng.randrange(CUSTOMER_POPULATION):05d}"
        else:
            customer = customers.draw(offered)
        patience = None if patience_rate is None else round(expovariate(patience_rate) * 1000)
        if lognormal:
            service = max(1, round(lognormvariate(service_mu, sigma) * 1000))
            wrapup = 0 if wrapup_rate is None else round(lognormvariate(wrapup_mu, sigma))
        else:
            # At least 1 ms of talk so that call.ended is strictly after call.answered.
            service = max(1, round(expovariate(service_rate) * 1000))
            wrapup = 0 if wrapup_rate is None else round(expovariate(wrapup_rate))
        call = _Call(f"{prefix}{calls}", queue, patience, service, wrapup, customer, offered)
        if transfer_p and random_() < transfer_p:
            to = queue
            if nq > 1:
                to = rng.randrange(nq - 1)
                to += to >= queue  # any other queue
            talk = lognormvariate(service_mu, sigma) if lognormal else expovariate(service_rate)
            call.transfer_ms = max(1, round(talk * _TRANSFER_TALK_SHARE * 1000))
            call.to_queue = to
            call.patience2_ms = None if patience_rate is None else round(expovariate(patience_rate) * 1000)
        if rating_p and random_() < rating_p:
            csat = random_()
            nps = random_() if random_() < _NPS_SHARE else None
            call.rating = (csat, nps, max(1, round(expovariate(1.0 / _RATING_DELAY_MEAN) * 1000)))
        if extra is not None:
            draw_hold(call)
            if callback_p and extra.random() < callback_p:
                call.callback_ms = max(1, round(extra.expovariate(1.0 / _CALLBACK_DELAY_MEAN) * 1000))
        push(offered, _ARRIVAL, call)

    def event(call: _Call, kind: str, at_ms: int) -> dict[str, Any]:
        call.emitted += 1
        return {
            "event_id": f"{call.iid}-{call.emitted}",
            "type": kind,
            "occurred_at": clock.format(start_ms + at_ms),
            "interaction_id": call.iid,
            "queue": queues[call.queue].name,
            "schema_version": 1,
        }

    def answer(call: _Call, q: _QueueState, agent: int, now: int) -> dict[str, Any]:
        call.state = _ANSWERED
        call.agent = agent
        call.wait_ms += now - call.queued_ms
        if call.transfer_ms >= 0 and not call.transferred:
            push(now + call.transfer_ms, _TRANSFER, call)
        else:
            push(now + call.service_ms, _END, call)
            if call.hold is not None:  # strictly inside the talk: resumed before the end
                share, hold_ms = call.hold
                call.hold = None
                begin = now + 1 + int((call.service_ms - 2) * share)
                end = min(begin + hold_ms, now + call.service_ms - 1)
                if end > begin:
                    push(begin, _HOLD, call)
                    push(end, _RESUME, call)
        ev = event(call, "call.answered", now)
        ev["agent_id"] = q.names[agent]
        return ev

    def enqueue(call: _Call, q: _QueueState, now: int, patience: int | None) -> Iterator[dict[str, Any]]:
        if q.free_agents:
            yield answer(call, q, q.free_agents.popleft(), now)
        else:
            q.waiting.append(call)
            # A new wait: any timer of an earlier wait is stale from now on.
            call.abandon_ms = -1 if patience is None else now + patience
            if patience is not None:
                push(call.abandon_ms, _ABANDON, call)
            if max_wait_ms is not None and call.callback_of is None:  # a callback waits for its agent
                push(now + max_wait_ms, _FLOW_OUT, call)

    def release(q: _QueueState, agent: int, now: int) -> Iterator[dict[str, Any]]:
        """The agent is done with a call (and its wrap-up): logs off if over the schedule, else takes the next."""
        if q.on_shift > q.target:
            q.on_shift -= 1
            heapq.heappush(q.off, agent)
            if presence is not None:
                yield presence.logout(q, agent, now)
        elif presence is None:
            yield from _next_waiting(q, agent, now, answer)
        else:
            yield from presence.free(q, agent, now, answer)

    next_arrival()
    if presence is not None and horizon_ms > 0:
        for q in queues:
            for agent in range(q.on_shift):
                yield presence.login(q, agent, 0)
    first_change = staffing.next_change(0)
    if first_change < math.inf:
        push(first_change, _STAFF, None)  # type: ignore[arg-type]
    while heap[0][0] < horizon_ms:
        now, kind, _, call = heapq.heappop(heap)
        if kind == _ARRIVAL:
            next_arrival()
            ev = event(call, "call.offered", now)
            ev["customer_id"] = call.customer_id
            yield ev
            q = queues[call.queue]
            if q.free_agents:
                yield answer(call, q, q.free_agents.popleft(), now)
            else:
                q.waiting.append(call)
                if call.patience_ms is not None:
                    call.abandon_ms = now + call.patience_ms
                    push(call.abandon_ms, _ABANDON, call)
                if max_wait_ms is not None:
                    push(now + max_wait_ms, _FLOW_OUT, call)
        elif kind == _END:
            q = queues[call.queue]
            ev = event(call, "call.ended", now)
            ev["agent_id"] = q.names[call.agent]
            ev["wrapup_seconds"] = call.wrapup_s
            yield ev
            if presence is not None and call.wrapup_s:
                yield presence.after_contact_work(q, call.agent, now)
            if call.rating is not None:
                push(now + call.rating[2], _RATE, call)
            if call.wrapup_s:
                push(now + call.wrapup_s * 1000, _FREE, call)
            else:
                yield from release(q, call.agent, now)
        elif kind == _FREE:  # the agent finished wrap-up
            yield from release(queues[call.queue], call.agent, now)
        elif kind == _ABANDON:
            # Stale if the call was answered meanwhile (or the timer is from the wait
            # before a transfer); the queue entry is skipped lazily when an agent
            # next looks for work.
            if call.state == _WAITING and call.abandon_ms == now:
                call.state = _ABANDONED
                if call.callback_ms < 0:
                    yield event(call, "call.abandoned", now)
                else:
                    yield event(call, "call.callback_requested", now)
                    back = _Call(f"{call.iid}-cb", call.queue, None, *draw_service(), call.customer_id, now,
                                 callback_of=call.iid)
                    draw_hold(back)
                    push(now + call.callback_ms, _CALLBACK, back)
        elif kind == _TRANSFER:
            q = queues[call.queue]
            ev = event(call, "call.transferred", now)
            ev["agent_id"] = q.names[call.agent]
            ev["to_queue"] = queues[call.to_queue].name
            yield ev
            call.transferred = True
            yield from release(q, call.agent, now)
            call.queue = call.to_queue
            call.state = _WAITING
            call.queued_ms = now
            yield from enqueue(call, queues[call.queue], now, call.patience2_ms)
        elif kind == _RATE:
            yield _rating(call, event(call, "call.rated", now), queues[call.queue])
        elif kind == _STAFF:
            for i, q in enumerate(queues):
                n = staffing.target(i, now)
                if n != q.target:
                    yield from _restaff(q, n, now, answer, presence)
            nxt = staffing.next_change(now)
            if nxt < math.inf:
                push(nxt, _STAFF, None)  # type: ignore[arg-type]
        elif kind == _HOLD or kind == _RESUME:
            ev = event(call, "call.held" if kind == _HOLD else "call.resumed", now)
            ev["agent_id"] = queues[call.queue].names[call.agent]
            yield ev
        elif kind == _FLOW_OUT:
            # Stale unless the call still waits in the wait this timer was set for.
            if call.state == _WAITING and call.queued_ms + max_wait_ms == now:  # type: ignore[operator]
                call.state = _ABANDONED
                ev = event(call, "call.flowed_out", now)
                ev["reason"] = "timeout"
                yield ev
        elif kind == _CALLBACK:  # placed: waits for the next agent, never hangs up
            ev = event(call, "call.offered", now)
            ev["customer_id"] = call.customer_id
            ev["attributes"] = {"callback_of": call.callback_of}
            yield ev
            call.queued_ms = now
            yield from enqueue(call, queues[call.queue], now, None)
        else:  # _AWAY, _BACK: an agent's break is due, or over
            assert presence is not None
            if not presence.stale(call):
                q, agent, _ = call
                if kind == _AWAY:
                    yield from presence.break_due(q, agent, now)
                else:
                    yield from presence.back(q, agent, now, answer)


def _next_waiting(q: _QueueState, agent: int, now: int,
                  answer: Callable[[_Call, _QueueState, int, int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    while q.waiting:
        call = q.waiting.popleft()
        if call.state == _WAITING:
            yield answer(call, q, agent, now)
            return
    q.free_agents.append(agent)


def _restaff(q: _QueueState, n: int, now: int,
             answer: Callable[[_Call, _QueueState, int, int], dict[str, Any]],
             presence: _Presence | None = None) -> Iterator[dict[str, Any]]:
    """Staffing changes to ``n``: idle agents log off at once (the longest idle stay),
    busy (and away) ones after their call (or break); new agents take waiting calls at once."""
    q.target = n
    free = q.free_agents
    while q.on_shift > n and free:
        agent = free.pop()
        heapq.heappush(q.off, agent)
        q.on_shift -= 1
        if presence is not None:
            yield presence.logout(q, agent, now)
    while q.on_shift < n:
        if q.off:
            agent = heapq.heappop(q.off)
        else:
            agent = len(q.names)
            q.names.append(f"{q.name}-a{agent + 1}")
        q.on_shift += 1
        if presence is not None:
            yield presence.login(q, agent, now)
        yield from _next_waiting(q, agent, now, answer)


def _rating(call: _Call, ev: dict[str, Any], q: _QueueState) -> dict[str, Any]:
    csat_draw, nps_draw, _ = call.rating  # type: ignore[misc]
    band = 0
    while call.wait_ms > _SATISFACTION_BANDS[band][0]:
        band += 1
    if call.transferred and band < len(_SATISFACTION_BANDS) - 1:
        band += 1
    _, csat_weights, nps_weights = _SATISFACTION_BANDS[band]
    ev["agent_id"] = q.names[call.agent]
    ev["csat"] = 1 + _pick(csat_draw, csat_weights)
    if nps_draw is not None:
        ev["nps"] = _pick(nps_draw, nps_weights)
    return ev


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


# ---------------------------------------------------------------- command line

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


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return value


# The agent-side options (module docstring): off by default, so a seed replays the stream it always did.
AGENT_SIDE_OPTIONS = ("agent_events", "hold_probability", "max_wait", "callback_probability")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimulationConfig()
    # The CLI defaults are a staffed centre: 1 call/s over 3 queues at ~200 s per call
    # is ~67 Erlangs per queue, which 75 agents serve at a realistic service level.
    parser.add_argument("--rate", type=arguments.positive_float, default=1.0,
                        help="calls per second of event time, all queues together (default %(default)s)")
    parser.add_argument("--duration", type=arguments.positive_float, default=None,
                        help="seconds of event time to simulate (default: until stopped, in real time)")
    parser.add_argument("--speed", type=arguments.speed, default=1.0,
                        help="event time per wall-clock time: 1 real time, 60 one hour per minute, "
                             "0 or 'max' as fast as possible (default 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; same seed and options, same events "
                             "(default 1, or the start time in seconds for a live run)")
    parser.add_argument("--queues", type=_queues, default=_queues(",".join(DEFAULT_QUEUE_NAMES)),
                        help="comma-separated queue names, each optionally NAME:WEIGHT for its share "
                             "of the arrivals (default billing,support,sales, equal shares)")
    parser.add_argument("--agents", type=arguments.positive_int, default=75, help="agents per queue (default %(default)s)")
    parser.add_argument("--patience", type=arguments.non_negative_float, default=defaults.patience_mean,
                        help="mean caller patience in seconds before abandoning; 0: never abandon "
                             "(default %(default)s)")
    parser.add_argument("--service-mean", type=arguments.positive_float, default=defaults.service_mean,
                        help="mean talk time in seconds (default %(default)s)")
    parser.add_argument("--wrapup-mean", type=arguments.non_negative_float, default=defaults.wrapup_mean,
                        help="mean after-call work in seconds; 0: none (default %(default)s)")
    parser.add_argument("--agent-events", dest="agent_events", action="store_true",
                        help="agent events on the agents topic: agents log in and out with the staffing, "
                             "declare after-contact work for the wrap-up and take breaks and lunch "
                             "(reason codes); with --scenario, its chat agents log in too (default off)")
    parser.add_argument("--hold-rate", dest="hold_probability", type=_share, default=0.0, metavar="SHARE",
                        help="share of answered calls put on hold once (call.held, call.resumed) (default 0)")
    parser.add_argument("--max-wait", dest="max_wait", type=arguments.positive_float, default=None, metavar="S",
                        help="seconds in a queue after which a waiting call flows out (call.flowed_out, "
                             "reason timeout) (default: never)")
    parser.add_argument("--callback-share", dest="callback_probability", type=_share, default=0.0, metavar="SHARE",
                        help="share of callers out of patience who ask for a callback instead of abandoning "
                             "(call.callback_requested; the callback is a new call with "
                             "attributes.callback_of) (default 0)")
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
        **agent_side_options(ns),
    )
    return cfg, duration, speed


def agent_side_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The agent-side options given on the command line (none: the defaults)."""
    return {name: getattr(ns, name) for name in AGENT_SIDE_OPTIONS if hasattr(ns, name)}
