"""The incremental core (issue 15, item 2) and the compact interaction record (item 3, core half).

- An in-order step costs the same however long its interaction is: the windows it
  touches are placed from the step's own effects, not from a derivation of every step.
  Work is counted (calls of ``Windowing.starts``, which every fact goes through), not timed.
- The incremental path and the full derive-and-diff path give exactly the same windows,
  live state, late and duplicate counts and kept interactions on random deliveries
  (in order, shuffled within and beyond the lateness, duplicates, transfers, every channel).
- The changelog record is small, round-trips every step field, and ``has`` stays exact
  when an event id's text also appears in another field.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.config import Settings, Thresholds
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.lifecycle import Fold, Interaction, Step
from ccpulse.core.windowing import Windowing
from schemas.records import event_message, step_from_message
from tests.test_engine_vs_reference import COMMON, MIN, TOPIC, deliveries, histories, to_event
from tests.test_engine_vs_reference import DEFAULT_TH, OVERRIDE_TH

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
S = 1000


def engine(cls: type[PartitionEngine] = PartitionEngine, lateness_s: float | None = None,
           th: Callable[[str, str], Thresholds] | None = None) -> PartitionEngine:
    s = Settings()
    w = s.windows
    return cls(0, Windowing(w.sizes, w.timezone, w.day_start_hour),
               w.allowed_lateness_seconds if lateness_s is None else lateness_s,
               th or s.thresholds_for, w.interaction_horizon_seconds)


class FullPathEngine(PartitionEngine):
    """Every step through the derive-and-diff path, as an out-of-order step goes."""

    def _in_order(self, inter: Interaction, fold: Fold, step: Step) -> bool:
        return False


class Placements:
    """Counts the timestamps placed in windows (every fact is placed through ``starts``)."""

    def __init__(self, eng: PartitionEngine) -> None:
        self.calls = 0
        original = eng.windowing.starts

        def starts(ts_ms: int) -> list[tuple[int, int]]:
            self.calls += 1
            return original(ts_ms)

        eng.windowing.starts = starts  # type: ignore[method-assign]


def chat(messages: int, iid: str = "c") -> list[Step]:
    """A chat offered, answered, then ``messages`` alternating customer/agent messages a minute apart."""
    steps = [Step(T0, "offered", f"{iid}-o", "support", customer="cust-1"),
             Step(T0 + S, "answered", f"{iid}-a", "support", "ag-1")]
    steps += [Step(T0 + 2 * S + i * 61 * S, "message", f"{iid}-m{i}",
                   sender="agent" if i % 2 else "customer") for i in range(messages)]
    return steps


def placements_of_next_step(history: list[Step], step: Step) -> int:
    eng = engine()
    inter = Interaction("c", "chat", partition=0)
    for offset, s in enumerate(history):
        eng.apply(inter, s, offset)
    counter = Placements(eng)
    assert not eng.apply(inter, step, len(history)).duplicate
    return counter.calls


def test_an_in_order_step_costs_the_same_however_long_the_interaction() -> None:
    short, long = chat(11), chat(401)
    # The next message (an agent's answer to the last customer message) and the end.
    for make in (lambda h: Step(h[-1].ts + 61 * S, "message", "next", sender="agent"),
                 lambda h: Step(h[-1].ts + 61 * S, "ended", "end", wrapup_ms=5000)):
        short_calls = placements_of_next_step(short[:-1], make(short[:-1]))
        long_calls = placements_of_next_step(long[:-1], make(long[:-1]))
        assert long_calls == short_calls, (short_calls, long_calls)
        assert long_calls <= 30


def test_a_transfer_moves_an_unplaced_complaint_in_order() -> None:
    """A complaint flagged before any queue counts in the last queue: a transfer moves it,
    on the incremental path too (the one fact of a derivation that changes afterwards)."""
    steps = [Step(T0, "message", "m", sender="customer", complaint=True),
             Step(T0 + S, "offered", "o", "billing"),
             Step(T0 + 2 * S, "answered", "a", agent="ag"),
             Step(T0 + 3 * S, "transferred", "t", to_queue="sales")]
    eng = engine()
    inter = Interaction("i", "chat", partition=0)
    for offset, s in enumerate(steps):
        eng.apply(inter, s, offset)
    complaints = {k[3]: agg.counts.get("complaints", 0) for k, agg in eng.windows.items() if k[0] == 60}
    assert complaints == {"billing": 0, "sales": 1}


# -- incremental == full path --------------------------------------------------------


def live_of(eng: PartitionEngine) -> dict[tuple[str, str], Any]:
    return {k: (dict(v.waiting), dict(v.busy), v.open_tickets) for k, v in eng.live.items() if not v.is_empty()}


def windows_of(eng: PartitionEngine) -> dict[tuple, Any]:
    return {k: ({n: v for n, v in agg.counts.items() if v}, {n: list(v) for n, v in agg.tops.items() if v})
            for k, agg in eng.windows.items()}


@settings(max_examples=200, **COMMON)
@given(st.sampled_from([DEFAULT_TH, OVERRIDE_TH]), st.data(), st.sampled_from([600, 1800, 3600]),
       st.integers(0, 90 * MIN), st.integers(1, 25))
def test_incremental_path_equals_full_path(th: Any, data: Any, lateness_s: int, shift: int, every: int) -> None:
    history = data.draw(histories(th))
    delivery = data.draw(deliveries(history, shift, max_duplicates=5))
    fast, full = engine(lateness_s=lateness_s, th=th), engine(FullPathEngine, lateness_s=lateness_s, th=th)
    mine: dict[str, Interaction] = {}
    theirs: dict[str, Interaction] = {}
    for offset, (family, doc) in enumerate(delivery):
        ev = to_event(family, doc)
        step = step_from_message(orjson.loads(orjson.dumps(event_message(ev, orjson.dumps(doc), TOPIC[family],
                                                                         0, offset))))
        outcomes = []
        for eng, held in ((fast, mine), (full, theirs)):
            inter = held.setdefault(ev.interaction_id, Interaction(ev.interaction_id, ev.channel, partition=0))
            outcomes.append(eng.apply(inter, step, offset, "calls/0"))
        a, b = outcomes
        assert (a.duplicate, a.late, a.too_long) == (b.duplicate, b.late, b.too_long), doc
        kept, again = mine[ev.interaction_id], theirs[ev.interaction_id]
        assert kept.to_bytes() == again.to_bytes()
        # The kept fold is what folding the sorted steps from the start gives.
        assert kept.fold().encode() == Interaction("x", kept.channel, kept.steps).fold().encode()
        if offset % every == 0:  # windows finalized along the way: later events may be late
            # (Windows of one start close in the order they were opened, which the paths may differ in.)
            assert sorted(s.key for s in fast.close()) == sorted(s.key for s in full.close())
        assert windows_of(fast) == windows_of(full)
        assert live_of(fast) == live_of(full)
        assert fast.record.to_dict() == full.record.to_dict()
    assert ([(s.key, s.agg.counts, s.waiting_at_start, s.waiting_at_end) for s in fast.take_dirty()]
            == [(s.key, s.agg.counts, s.waiting_at_start, s.waiting_at_end) for s in full.take_dirty()])


# -- the changelog record ---------------------------------------------------------------


def test_the_changelog_record_of_an_open_interaction_is_compact() -> None:
    from streams.codecs import InteractionCodec
    codec = InteractionCodec()
    eng = engine()
    call = Interaction("c-81734", "voice", partition=3)
    for offset, s in enumerate([Step(T0, "offered", "c-81734-1", "billing", customer="cust-0042"),
                                Step(T0 + 12 * S, "answered", "c-81734-2", "billing", "agent-007")]):
        eng.apply(call, s, offset)
    talk = Interaction("c", "chat", partition=3)
    for offset, s in enumerate(chat(6)):
        eng.apply(talk, s, offset)
    sizes = [len(codec._dumps(call) or b""), len(codec._dumps(talk) or b"")]
    assert sizes[0] <= 150 and sizes[1] <= 250, sizes
    assert codec._loads(codec._dumps(call) or b"") == call


NAMES = st.sampled_from(["billing", "sales", "a-1", "x", "c-1", "e1", "\"e1\"", "q\\", "ü-ß", "e\x00"])
IDS = st.one_of(st.sampled_from(["e1", "e2", "\"e1\"", "x", "c-1", "[1,0,\"e1\"]", "e\x00"]),
                st.text(min_size=1, max_size=128))


@st.composite
def any_steps(draw: st.DrawFn) -> list[Step]:
    """Steps with every field, at any time, with names and ids that overlap each other's text."""
    out = []
    for eid in draw(st.lists(IDS, min_size=1, max_size=12, unique=True)):
        out.append(Step(draw(st.integers(-10**13, 10**14)),
                        draw(st.sampled_from(["offered", "answered", "abandoned", "transferred", "ended",
                                              "message", "replied", "assigned", "solved", "reopened",
                                              "closed", "rated", "flowed_out", "callback_requested",
                                              "held", "resumed", "not-a-kind"])),
                        eid, draw(st.none() | NAMES), draw(st.none() | NAMES), draw(st.none() | NAMES),
                        draw(st.sampled_from([0, 0, 1, 15_000, 2500])), draw(st.sampled_from([None, "agent", "customer"])),
                        draw(st.booleans()), draw(st.none() | st.integers(1, 5)), draw(st.none() | st.integers(0, 10)),
                        draw(st.booleans()), draw(st.none() | NAMES), draw(st.none() | NAMES)))
    return out


@settings(max_examples=300, deadline=None)
@given(any_steps(), st.sampled_from(["voice", "chat", "email"]), st.integers(-1, 63), st.data())
def test_the_changelog_record_round_trips(steps: list[Step], channel: str, partition: int, data: Any) -> None:
    from streams.codecs import InteractionCodec
    codec = InteractionCodec()
    inter = Interaction("i\"d", channel, partition=partition)
    order = data.draw(st.permutations(steps))
    for s in order:
        assert inter.add(s)
    back = codec._loads(codec._dumps(inter) or b"")
    assert (back.interaction_id, back.channel, back.partition) == ("i\"d", channel, partition)
    assert back.steps == inter.steps == sorted(steps, key=Step.sort_key)
    assert back.derive() == inter.derive()
    assert back.fold().encode() == inter.fold().encode()
    assert Interaction.from_dict(orjson.loads(orjson.dumps(inter.to_dict()))).steps == inter.steps
    # Duplicates are told exactly, whatever text the other fields hold.
    ids = {s.event_id for s in steps}
    for eid in ["e1", "e2", "\"e1\"", "x", "c-1", "billing", "a-1", "q\\", "e\x00", *ids]:
        assert back.has(Step(0, "offered", eid)) == (eid in ids), eid
