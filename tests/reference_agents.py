"""A brute-force model of agent time in state (METRICS.md "Agents and staffing"),
independent of ccpulse/core/agents.py: it looks at the agent every ``step_ms`` on a
grid, works its state out from scratch from all the events and contacts each time,
and adds ``step_ms`` to every window holding that instant. Slow and obvious on
purpose; correct when every event, contact time and the end lie on the grid.

Inputs are plain tuples so nothing is shared with the code under test:
- presence: (ts, event_id, kind, state, reason, queues) with kind logged_in /
  state_changed / logged_out (duplicates by event_id are dropped here);
- contacts: agent -> {(interaction_id, segment): (queue, channel, answered, ended or None)},
  the final state of each contact interval.

Rules (the contract, as METRICS.md and docs/agents.md word it): events at one instant
apply in event_id order; logged_in makes the agent staffed, available unless it gives a
state; state_changed sets the declared state (and staffed: a platform only reports the
state of someone logged in); queues, when given, replace the list; logged_out ends
staffed. Any open contact makes the agent on_contact, over every declared state and
over being logged out. Away time counts by reason ("" when none); after-contact work
counts for the queue and channel of the contact that ended last before the instant.
A contact with no end counts as ended at its answer + ``horizon_ms`` when given (the
same cap as the core's ``AgentCore.capped`` and the pipeline's expiry of a quiet
interaction): on contact at most that long, and the contact that ended last from then.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

DAY_MS = 86_400_000
AGENT_MIN_MS = 900_000


def window_starts(t: int, sizes_s: Iterable[int], day_start_hour: int) -> list[tuple[int, int]]:
    """UTC windows only: plain modular arithmetic, the day shifted by its start hour."""
    out = []
    for size in sizes_s:
        size_ms = size * 1000
        shift = day_start_hour * 3_600_000 if size_ms == DAY_MS else 0
        out.append((size, t - (t - shift) % size_ms))
    return out


def declared_at(presence: list[tuple], t: int) -> tuple[bool, str | None, str, tuple[str, ...]]:
    staffed, state, reason, queues = False, None, "", ()
    for ts, _eid, kind, st, rs, qs in sorted(presence, key=lambda p: (p[0], p[1])):
        if ts > t:
            break
        if qs is not None:
            queues = tuple(qs)
        if kind == "logged_out":
            staffed, state, reason = False, None, ""
            continue
        staffed = True
        if kind == "logged_in":
            state = st or "available"
        else:
            state = st
        reason = (rs or "") if state == "away" else ""
    return staffed, state, reason, queues


def capped(mine: dict[Any, tuple], horizon_ms: int | None) -> dict[Any, tuple]:
    """One agent's contacts, each with no end ended at its answer + ``horizon_ms``."""
    if horizon_ms is None:
        return mine
    return {key: (q, ch, ans, ans + horizon_ms if end is None else end) for key, (q, ch, ans, end) in mine.items()}


def recount(presence: dict[str, list[tuple]], contacts: dict[str, dict[Any, tuple]], start_ms: int,
            end_ms: int, step_ms: int, sizes_s: tuple[int, ...], day_start_hour: int = 0,
            horizon_ms: int | None = None) -> dict[tuple, dict[str, int]]:
    """(size, window_start, scope, name, channel) -> field -> ms, over [start_ms, end_ms).
    scope "a": per agent (windows of 15 min and more), "q": per queue; channel "" for a
    queue's figures that do not come from a contact (staffed, available, away)."""
    out: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    agents = set(presence) | set(contacts)
    unique = {a: list({p[1]: p for p in reversed(presence.get(a, []))}.values()) for a in agents}
    for agent in sorted(agents):
        mine = capped(contacts.get(agent, {}), horizon_ms)
        t = start_ms
        while t < end_ms:
            staffed, state, reason, queues = declared_at(unique[agent], t)
            open_ = {(q, ch) for q, ch, ans, end in mine.values() if ans <= t and (end is None or t < end)}
            ended = [(end, key, q, ch) for key, (q, ch, ans, end) in mine.items() if end is not None and end <= t]
            follows = max(ended)[2:] if ended else None
            items: list[tuple[str, str, str, str]] = []
            if staffed:
                items.append(("a", agent, "", "staffed_ms"))
                items += [("q", q, "", "staffed_ms") for q in queues]
            if open_:
                items.append(("a", agent, "", "on_contact_ms"))
                items += [("q", q, ch, "on_contact_ms") for q, ch in open_]
            elif staffed and state == "available":
                items.append(("a", agent, "", "available_ms"))
                items += [("q", q, "", "available_ms") for q in queues]
            elif staffed and state == "away":
                for f in ("away_ms", f"away_ms:{reason}"):
                    items.append(("a", agent, "", f))
                    items += [("q", q, "", f) for q in queues]
            elif staffed and state == "after_contact_work":
                items.append(("a", agent, "", "after_contact_work_ms"))
                if follows is not None:
                    items.append(("q", follows[0], follows[1], "after_contact_work_ms"))
            for size, wstart in window_starts(t, sizes_s, day_start_hour):
                for scope, name, channel, fname in items:
                    if scope == "a" and size * 1000 < AGENT_MIN_MS:
                        continue
                    out[(size, wstart, scope, name, channel)][fname] += step_ms
            t += step_ms
    return {k: dict(v) for k, v in out.items()}


def live_at(presence: dict[str, list[tuple]], contacts: dict[str, dict[Any, tuple]], t: int,
            horizon_ms: int | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """Agents per (queue, channel) in each state at ``t``, from scratch (channel "" for
    staffed, available, away; the contact's for on contact and after-contact work)."""
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for agent in set(presence) | set(contacts):
        mine = capped(contacts.get(agent, {}), horizon_ms)
        unique = list({p[1]: p for p in presence.get(agent, [])}.values())
        staffed, state, reason, queues = declared_at(unique, t)
        open_ = {(q, ch) for q, ch, ans, end in mine.values() if ans <= t and (end is None or t < end)}
        ended = [(end, key, q, ch) for key, (q, ch, ans, end) in mine.items() if end is not None and end <= t]
        for q in queues if staffed else ():
            out[(q, "")]["staffed"] += 1
            if not open_ and state in ("available", "away"):
                out[(q, "")][state] += 1
                if state == "away":
                    out[(q, "")][f"away:{reason}"] += 1
        for q, ch in open_:
            out[(q, ch)]["on_contact"] += 1
        if not open_ and staffed and state == "after_contact_work" and ended:
            _e, _k, q, ch = max(ended)
            out[(q, ch)]["after_contact_work"] += 1
    return {k: dict(v) for k, v in out.items()}
