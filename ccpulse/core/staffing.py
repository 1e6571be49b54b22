"""How many agents a queue needs now: Erlang C (M/M/c), METRICS.md "Agents and staffing".

``agents_required`` is the smallest number of agents ``c`` for which an M/M/c queue
at the offered load meets the service-level target within the threshold:

    SL(c) = 1 - C(c, A) * exp(-(c - A) * threshold / AHT),   A = arrival rate * AHT

where ``C(c, A)`` is the Erlang C probability that a contact waits. ``C`` comes from
the Erlang B recursion ``B(k) = A B(k-1) / (k + A B(k-1))``, ``C = c B / (c - A (1 - B))``:
every term stays in [0, 1], so it is exact to float precision for thousands of
agents, where ``A^c / c!`` overflows at a few hundred. The search starts at the
first stable ``c`` (``c > A``; with fewer agents the queue grows without bound and
no positive target is met) and steps ``B`` along, so it costs O(c) in all.

Decisions (the wallboard, ``kpi.queue-state`` and the Prometheus gauge show them):

- no handle time known yet (``aht_s`` None or 0): None, "not known", not 0;
- a known handle time and no arrivals: 0 agents;
- a load that would need more than ``AGENTS_REQUIRED_CAP`` agents reports the cap:
  read it as "at least that many" (no queue staffs ten thousand agents on one
  skill; such a figure usually means a wrong handle time). The cap also bounds the
  work of one call, whatever the inputs;
- chat: an agent holds ``concurrency`` sessions, so the servers of the model are
  sessions and the agents are ``ceil(sessions / concurrency)``; tickets: None
  (no queueing model fits a backlog worked over days).

Arguments no count of events can produce (negative or non-finite rates and times,
a target outside [0, 1]) raise ValueError naming the argument: a caller's bug.
"""

from __future__ import annotations

import math

__all__ = [
    "AGENTS_REQUIRED_CAP",
    "agents_for_load",
    "agents_gap",
    "agents_required",
    "agents_required_for_kind",
    "erlang_c",
    "service_level",
]

AGENTS_REQUIRED_CAP = 10_000


def erlang_c(agents: int, load: float) -> float:
    """Probability that a contact waits in M/M/``agents`` at ``load`` Erlangs (1.0 if unstable)."""
    if load <= 0:
        return 0.0
    if agents <= load:
        return 1.0
    b = 1.0
    for k in range(1, agents + 1):
        b = load * b / (k + load * b)
    return _c_from_b(agents, load, b)


def _c_from_b(agents: int, load: float, b: float) -> float:
    return agents * b / (agents - load * (1.0 - b))


def service_level(agents: int, load: float, aht_s: float, threshold_s: float) -> float:
    """Share of contacts answered within ``threshold_s`` in M/M/``agents`` (0.0 if unstable)."""
    if load <= 0:
        return 1.0
    if agents <= load:
        return 0.0
    return 1.0 - erlang_c(agents, load) * math.exp(-(agents - load) * threshold_s / aht_s)


def agents_for_load(load: float, aht_s: float, target_service_level: float, threshold_s: float) -> int:
    """The fewest agents for which Erlang C answers ``target_service_level`` of the contacts
    within ``threshold_s`` at ``load`` Erlangs; at most ``AGENTS_REQUIRED_CAP``."""
    if load <= 0:
        return 0
    agents = max(1, math.floor(load) + 1)
    if agents >= AGENTS_REQUIRED_CAP:
        return AGENTS_REQUIRED_CAP
    b = 1.0
    for k in range(1, agents + 1):
        b = load * b / (k + load * b)
    while True:
        waits = _c_from_b(agents, load, b)
        if 1.0 - waits * math.exp(-(agents - load) * threshold_s / aht_s) >= target_service_level:
            return agents
        if agents >= AGENTS_REQUIRED_CAP:
            return AGENTS_REQUIRED_CAP
        agents += 1
        b = load * b / (agents + load * b)


def agents_required(arrival_rate_per_s: float, aht_s: float | None, target_service_level: float,
                    threshold_s: float, concurrency: int = 1) -> int | None:
    """Agents needed now for the target (see the module docstring); None while the handle time is unknown."""
    _check(arrival_rate_per_s >= 0 and math.isfinite(arrival_rate_per_s), "arrival_rate_per_s",
           "must be a finite number >= 0 (contacts per second)")
    if aht_s is not None:
        _check(aht_s >= 0 and math.isfinite(aht_s), "aht_s", "must be a finite number >= 0 (seconds), or None")
    _check(0.0 <= target_service_level <= 1.0, "target_service_level", "must be a share between 0 and 1")
    _check(threshold_s >= 0 and math.isfinite(threshold_s), "threshold_s", "must be a finite number >= 0 (seconds)")
    _check(not isinstance(concurrency, bool) and isinstance(concurrency, int) and concurrency >= 1, "concurrency",
           "must be an integer >= 1 (sessions one agent handles at once)")
    if not aht_s:
        return None
    servers = agents_for_load(arrival_rate_per_s * aht_s, aht_s, target_service_level, threshold_s)
    return -(-servers // concurrency)


def agents_required_for_kind(kind: str, arrival_rate_per_s: float, aht_s: float | None,
                             target_service_level: float, threshold_s: float, *,
                             chat_sessions_per_agent: int) -> int | None:
    """``agents_required`` for a channel kind (``ccpulse.config.channel_kind``): voice one
    contact per agent, chat ``chat_sessions_per_agent``, tickets None."""
    if kind == "voice":
        return agents_required(arrival_rate_per_s, aht_s, target_service_level, threshold_s)
    if kind == "chat":
        return agents_required(arrival_rate_per_s, aht_s, target_service_level, threshold_s,
                               concurrency=chat_sessions_per_agent)
    return None


def agents_gap(required: int | None, staffed: int, away: int) -> int | None:
    """``required - (staffed - away)``: positive means short of agents now; None without a requirement."""
    if required is None:
        return None
    return required - (staffed - away)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")
