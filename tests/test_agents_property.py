"""The agent core (ccpulse/core/agents.py) equals a brute-force recount (tests/reference_agents.py)
under shuffling within the lateness, duplicates, and a crash mid-run (snapshot, restore,
the tail delivered again), with input read in batches of any size (event time moves
after a batch only; a cold start may read the whole input, or a large prefix, before
event time is known, then jump past many windows): every window's figures, exactly, in
milliseconds, and the live counts per queue at the end."""

from __future__ import annotations

import calendar
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpulse.core.agents import LOGGED_IN, LOGGED_OUT, STATE_CHANGED, AgentCore, Contact, Presence
from ccpulse.core.windowing import Windowing
from tests.reference_agents import live_at, recount

GRID = 15_000  # every time lies on it, so the reference's 15 s steps are exact
LATE = 120_000
T0 = calendar.timegm((2026, 11, 22, 5, 30, 0)) * 1000  # the 06:00 day start is crossed
QUEUES = ("billing", "sales", "support")
CHANNELS = ("voice", "chat")


@st.composite
def agent_script(draw: Any, agent: str) -> tuple[list[tuple[int, Any]], dict, list]:
    """(emission time, item) of one agent, its presence events, its contacts' final state."""
    items: list[tuple[int, Any]] = []
    presence = []
    t = T0
    for i in range(draw(st.integers(0, 10))):
        # Now and then an hour or two of nothing: event time jumps past many windows.
        t += GRID * draw(st.one_of(st.integers(0, 30), st.integers(0, 30), st.integers(200, 500)))
        kind = draw(st.sampled_from((LOGGED_IN, STATE_CHANGED, STATE_CHANGED, LOGGED_OUT)))
        queues = tuple(draw(st.lists(st.sampled_from(QUEUES), min_size=1, max_size=2, unique=True)))
        state = draw(st.sampled_from(("available", "away", "after_contact_work", "after_contact_work")))
        reason = draw(st.sampled_from((None, "break", "lunch")))
        if kind == LOGGED_IN:
            p = Presence(t, f"{agent}-e{i}", kind, draw(st.sampled_from((None, state))), reason, queues)
        elif kind == STATE_CHANGED:
            p = Presence(t, f"{agent}-e{i}", kind, state, reason, draw(st.sampled_from((None, queues))))
        else:
            p = Presence(t, f"{agent}-e{i}", kind)
        presence.append((p.ts, p.event_id, p.kind, p.state, p.reason, p.queues))
        items.append((t, ("p", agent, p)))
    contacts = {}
    for i in range(draw(st.integers(0, 8))):
        answered = T0 + GRID * draw(st.integers(0, 150))
        length = draw(st.one_of(st.none(), st.integers(0, 20), st.integers(0, 20)))
        ended = None if length is None else answered + GRID * length
        queue, channel = draw(st.sampled_from(QUEUES)), draw(st.sampled_from(CHANNELS))
        key = (f"{agent}-c{i}", draw(st.integers(0, 1)))
        if key in contacts:
            continue
        items.append((answered, ("c", agent, key, Contact(1, queue, channel, answered, None))))
        if ended is not None:
            items.append((ended, ("c", agent, key, Contact(2, queue, channel, answered, ended))))
        if draw(st.integers(0, 5)) == 0:  # a retraction: the answer went to another agent
            items.append((answered, ("r", agent, key, 3, answered)))
            contacts[key] = None
        else:
            contacts[key] = (queue, channel, answered, ended)
    return items, presence, [(k, v) for k, v in contacts.items() if v is not None]


@st.composite
def scenario(draw: Any) -> dict[str, Any]:
    agents = [f"a{i}" for i in range(draw(st.integers(1, 3)))]
    items: list[tuple[int, Any]] = []
    presence, contacts = {}, {}
    for agent in agents:
        mine, pres, cont = draw(agent_script(agent))
        items += mine
        presence[agent] = pres
        contacts[agent] = dict(cont)
    # Arrival: emission time plus a delay below the lateness; some items twice.
    arrivals = []
    for e, item in items:
        for _ in range(draw(st.sampled_from((1, 1, 1, 2)))):
            arrivals.append((e + draw(st.integers(0, LATE - 1)), e, item))
    arrivals.sort(key=lambda a: a[0])
    n = len(arrivals)
    crash = draw(st.integers(0, n))
    again = draw(st.integers(0, crash))
    sizes = draw(st.sampled_from(((60, 900, 3600, 86400), (60, 900))))
    # An open contact counts at most the horizon after its answer; longer than any contact
    # that ends here (20 steps), as the interaction horizon is longer than a contact.
    horizon = draw(st.sampled_from((GRID * 21, GRID * 100, None)))
    # Figures read (accrued) after some deliveries only: event time moves in between.
    reads = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    # Batches: event time moves after the last record of a batch only (the stage advances
    # once per batch); the first batch, a cold start's backlog, may hold all the input.
    first = draw(st.sampled_from((1, n, n // 2, draw(st.integers(1, max(1, n))))))
    ends = [i + 1 == first or (i + 1 > first and draw(st.booleans())) for i in range(n)]
    return {"arrivals": [(e, item) for _k, e, item in arrivals], "reads": reads, "ends": ends, "crash": crash,
            "again": again, "presence": presence, "contacts": contacts, "sizes": sizes,
            "horizon": horizon}


def deliver(core: AgentCore, arrivals: list, reads: list[bool], ends: list[bool], seen: dict,
            newest: int | None) -> int | None:
    for (e, item), read, end in zip(arrivals, reads, ends):
        if item[0] == "p":
            core.apply(item[1], item[2])
        elif item[0] == "c":
            core.upsert(item[1], item[2], item[3])
        else:
            core.remove(item[1], item[2], item[3], item[4])
        newest = e if newest is None else max(newest, e)
        if not end:
            continue
        core.advance(newest)  # event time: the newest emission read (the stage takes it from clocks)
        if read:
            seen.update({change.key: change.counters for change in core.take()})
    seen.update({change.key: change.counters for change in core.take()})  # before a snapshot, as the stage
    return newest


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario())
def test_core_equals_the_brute_force_recount(s: dict[str, Any]) -> None:
    windowing = Windowing(s["sizes"], "UTC", 6)
    arrivals = s["arrivals"]
    seen: dict = {}
    first = AgentCore(windowing, LATE, s["horizon"])
    newest = deliver(first, arrivals[:s["crash"]], s["reads"], s["ends"], seen, None)
    # The crash: the state as last written, the input again from an earlier offset.
    restored = AgentCore.restore(windowing, LATE, json.loads(json.dumps(first.snapshot())), s["horizon"])
    newest = deliver(restored, arrivals[s["again"]:], s["reads"][s["again"]:], s["ends"][s["again"]:], seen, newest)
    end = max([e for e, _ in arrivals], default=T0)
    restored.advance(end)
    seen.update({change.key: change.counters for change in restored.take()})
    expected = recount(s["presence"], s["contacts"], T0, end, GRID, s["sizes"], 6, s["horizon"])
    got = {k: v for k, v in seen.items() if v}
    assert got == {k: v for k, v in expected.items() if v}
    assert restored.late_ms == 0
    assert {k: dict(v) for k, v in restored.live().items() if v} == live_at(s["presence"], s["contacts"], end,
                                                                                   s["horizon"])
