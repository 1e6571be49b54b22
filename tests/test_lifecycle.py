"""The interaction lifecycle: steps sorted by event time, segments derived from them."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.config import DEFAULT_THRESHOLDS
from ccpulse.core.kpis import interaction_facts
from ccpulse.core.lifecycle import Interaction, Segment, Step
from ccpulse.core.windowing import Windowing

S = 1000  # ms per second


def offered(ts: int, eid: str, queue: str = "billing") -> Step:
    return Step(ts, "offered", eid, queue)


def answered(ts: int, eid: str, agent: str = "a-1") -> Step:
    return Step(ts, "answered", eid, agent=agent)


def abandoned(ts: int, eid: str) -> Step:
    return Step(ts, "abandoned", eid)


def ended(ts: int, eid: str, wrapup_ms: int = 0) -> Step:
    return Step(ts, "ended", eid, wrapup_ms=wrapup_ms)


def transferred(ts: int, eid: str, to_queue: str | None = None, agent: str | None = None) -> Step:
    return Step(ts, "transferred", eid, agent=agent, to_queue=to_queue)


def build(*steps: Step, channel: str = "voice") -> Interaction:
    inter = Interaction("i-1", channel)
    for s in steps:
        assert inter.add(s)
    return inter


def thresholds(queue: str, channel: str) -> Any:
    return DEFAULT_THRESHOLDS["voice"]


def test_offered_answered_ended() -> None:
    d = build(offered(0, "e1"), answered(15 * S, "e2", "a-7"), ended(75 * S, "e3", wrapup_ms=10 * S)).derive()
    assert d.orphan_steps == 0 and d.ended
    assert d.segments == [Segment("billing", 0, "answered", 15 * S, "a-7", [], 75 * S, 10 * S)]
    seg = d.segments[0]
    assert seg.wait_ms == 15 * S
    assert seg.handle_ms == 60 * S + 10 * S  # talk plus wrap-up


def test_answered_not_ended_has_no_handle_time() -> None:
    d = build(offered(0, "e1"), answered(4 * S, "e2")).derive()
    assert not d.ended
    assert d.segments[0].wait_ms == 4 * S and d.segments[0].handle_ms is None
    assert d.segments[0].ended is None


def test_still_waiting() -> None:
    d = build(offered(1000, "e1")).derive()
    assert d.segments == [Segment("billing", 1000)]
    assert d.segments[0].exit is None and d.segments[0].wait_ms is None
    assert not d.ended and d.orphan_steps == 0


def test_offered_abandoned() -> None:
    d = build(offered(10 * S, "e1"), abandoned(40 * S, "e2")).derive()
    assert d.segments == [Segment("billing", 10 * S, "abandoned", 40 * S)]
    assert d.segments[0].wait_ms == 30 * S
    assert d.segments[0].handle_ms is None
    assert d.orphan_steps == 0
    assert d.ended  # the customer left: nothing more will happen to this contact


def test_ended_while_waiting_is_an_abandon() -> None:
    d = build(offered(0, "e1"), ended(12 * S, "e2", wrapup_ms=5 * S)).derive()
    assert d.segments == [Segment("billing", 0, "abandoned", 12 * S)]
    assert d.segments[0].handle_ms is None  # no agent ever had it: wrap-up is ignored
    assert d.ended and d.orphan_steps == 0


def test_out_of_order_equals_in_order() -> None:
    steps = [offered(0, "e1"), answered(15 * S, "e2"), ended(75 * S, "e3", 3 * S)]
    in_order = build(*steps)
    reordered = build(steps[1], steps[2], steps[0])
    assert reordered.steps == in_order.steps == steps
    assert reordered.derive() == in_order.derive()
    assert reordered.last_ts == in_order.last_ts == 75 * S
    # An answer seen before its offer is an orphan only until the offer arrives.
    early = build(answered(15 * S, "e2"))
    assert early.derive().orphan_steps == 1 and early.derive().segments == []
    assert early.add(offered(0, "e1"))
    assert early.derive() == build(*steps[:2]).derive()


def test_ties_are_broken_by_lifecycle_order() -> None:
    """Offered and answered at the same millisecond: an immediate answer, whatever the arrival order."""
    a = build(answered(5 * S, "z-answer"), offered(5 * S, "a-offer"))
    b = build(offered(5 * S, "a-offer"), answered(5 * S, "z-answer"))
    assert a.steps == b.steps
    assert a.steps[0].step == "offered"
    assert a.derive() == b.derive()
    assert a.derive().segments[0].wait_ms == 0


def test_duplicate_event_id_is_refused() -> None:
    inter = build(offered(0, "e1"), answered(5 * S, "e2"))
    before = inter.derive()
    assert not inter.add(answered(5 * S, "e2"))
    # Same id, different content: still a duplicate; the first one wins.
    assert not inter.add(answered(9 * S, "e2", "a-9"))
    assert not inter.add(abandoned(1 * S, "e1"))
    assert len(inter.steps) == 2
    assert inter.derive() == before
    assert inter.last_ts == 5 * S


def test_transfer_while_waiting() -> None:
    d = build(offered(0, "e1", "billing"), transferred(10 * S, "e2", to_queue="sales"),
              answered(25 * S, "e3", "a-2"), ended(85 * S, "e4")).derive()
    assert d.segments == [
        Segment("billing", 0, "transferred", 10 * S),
        Segment("sales", 10 * S, "answered", 25 * S, "a-2", [], 85 * S, 0),
    ]
    assert [s.wait_ms for s in d.segments] == [10 * S, 15 * S]
    assert [s.handle_ms for s in d.segments] == [None, 60 * S]
    assert d.ended and d.orphan_steps == 0


def test_transfer_while_waiting_then_abandon_in_the_new_queue() -> None:
    d = build(offered(0, "e1", "billing"), transferred(10 * S, "e2", to_queue="sales"),
              abandoned(70 * S, "e3")).derive()
    assert d.segments == [Segment("billing", 0, "transferred", 10 * S),
                          Segment("sales", 10 * S, "abandoned", 70 * S)]
    assert d.segments[1].wait_ms == 60 * S


def test_transfer_after_answer_to_a_queue() -> None:
    d = build(offered(0, "e1", "billing"), answered(5 * S, "e2", "a-1"),
              transferred(65 * S, "e3", to_queue="sales"), answered(80 * S, "e4", "a-2"),
              ended(200 * S, "e5", wrapup_ms=7 * S)).derive()
    assert d.segments == [
        Segment("billing", 0, "answered", 5 * S, "a-1", [65 * S], 65 * S, 0),
        Segment("sales", 65 * S, "answered", 80 * S, "a-2", [], 200 * S, 7 * S),
    ]
    # The first agent's handling ends at the transfer; the contact waits again with its own wait.
    assert d.segments[0].handle_ms == 60 * S
    assert d.segments[1].wait_ms == 15 * S
    assert d.segments[1].handle_ms == 120 * S + 7 * S
    assert d.ended and d.orphan_steps == 0


def test_transfer_after_answer_to_an_agent_only() -> None:
    d = build(offered(0, "e1"), answered(5 * S, "e2", "a-1"), transferred(30 * S, "e3", agent="a-1"),
              transferred(50 * S, "e4"), ended(90 * S, "e5")).derive()
    assert d.segments == [Segment("billing", 0, "answered", 5 * S, "a-1", [30 * S, 50 * S], 90 * S, 0)]
    assert d.segments[0].handle_ms == 85 * S
    assert d.ended


def test_later_events_inherit_the_queue() -> None:
    d = build(offered(0, "e1", "billing"), Step(3 * S, "answered", "e2", None, "a-1")).derive()
    assert d.segments[0].queue == "billing"


def test_orphans_are_counted_without_segments() -> None:
    for steps, orphans in [
        ([answered(5 * S, "e2")], 1),
        ([ended(9 * S, "e3")], 1),
        ([abandoned(9 * S, "e3")], 1),
        ([transferred(9 * S, "e3", to_queue="sales")], 1),
        ([answered(5 * S, "e2"), ended(9 * S, "e3", 1000)], 2),
        ([answered(5 * S, "e2"), transferred(7 * S, "e4"), ended(9 * S, "e3")], 3),
    ]:
        d = build(*steps).derive()
        assert d.segments == [], steps
        assert d.orphan_steps == orphans, steps
        assert not d.ended, steps


def test_an_offer_without_a_queue_opens_nothing() -> None:
    d = build(Step(0, "offered", "e1")).derive()
    assert d.segments == []


def test_second_offer_while_waiting_is_ignored() -> None:
    d = build(offered(0, "e1", "billing"), offered(5 * S, "e2", "billing"), offered(6 * S, "e3", "sales"),
              answered(10 * S, "e4")).derive()
    assert d.segments == [Segment("billing", 0, "answered", 10 * S, "a-1")]
    assert d.orphan_steps == 2  # counted as steps that placed nothing, but no new segment


def test_offer_while_an_agent_has_the_contact_is_an_orphan() -> None:
    d = build(offered(0, "e1"), answered(5 * S, "e2"), offered(8 * S, "e3"), ended(20 * S, "e4")).derive()
    assert d.segments == [Segment("billing", 0, "answered", 5 * S, "a-1", [], 20 * S)]
    assert d.orphan_steps == 1


def test_answer_after_abandon_is_an_orphan() -> None:
    d = build(offered(0, "e1"), abandoned(5 * S, "e2"), answered(8 * S, "e3")).derive()
    assert d.segments == [Segment("billing", 0, "abandoned", 5 * S)]
    assert d.orphan_steps == 1


def test_a_new_offer_after_an_abandon_opens_a_new_segment() -> None:
    d = build(offered(0, "e1"), abandoned(5 * S, "e2"), offered(60 * S, "e3"), answered(70 * S, "e4")).derive()
    assert d.segments == [Segment("billing", 0, "abandoned", 5 * S),
                          Segment("billing", 60 * S, "answered", 70 * S, "a-1")]


def test_a_new_offer_uses_its_own_queue() -> None:
    d = build(offered(0, "e1", "billing"), abandoned(5 * S, "e2"), offered(60 * S, "e3", "sales")).derive()
    assert [(seg.queue, seg.entered) for seg in d.segments] == [("billing", 0), ("sales", 60 * S)]


def test_other_steps_do_not_change_the_segments() -> None:
    base = build(offered(0, "e1"), answered(5 * S, "e2"), ended(20 * S, "e3")).derive()
    more = build(offered(0, "e1"), answered(5 * S, "e2"), ended(20 * S, "e3"), Step(30 * S, "rated", "e4"),
                 Step(10 * S, "message", "e5")).derive()
    assert (more.segments, more.orphan_steps, more.ended) == (base.segments, base.orphan_steps, base.ended)


def test_to_dict_from_dict_round_trip() -> None:
    inter = Interaction("c-81734", "voice", partition=3)
    for s in (Step(0, "offered", "e1", "billing", customer="cust-1"), answered(5 * S, "e2", "a-1"),
              transferred(65 * S, "e3", to_queue="sales", agent="a-1"), ended(200 * S, "e5", wrapup_ms=7500),
              Step(230 * S, "rated", "e6", csat=4, nps=9, complaint=True),
              Step(20 * S, "message", "e7", sender="customer", public=False)):
        inter.add(s)
    doc = orjson.loads(orjson.dumps(inter.to_dict()))  # through real JSON, as the changelog stores it
    for back in (Interaction.from_dict(doc), Interaction.from_bytes(inter.to_bytes())):
        assert back == inter
        assert back.steps == inter.steps and facts(back) == facts(inter)
        assert back.partition == 3 and back.last_ts == 230 * S and back.channel == "voice"
        assert back.steps[-1] == Step(230 * S, "rated", "e6", csat=4, nps=9, complaint=True)
        assert back.derive() == inter.derive()
        # It keeps refusing the ids it had.
        assert not back.add(answered(5 * S, "e2"))


def test_from_dict_defaults() -> None:
    back = Interaction.from_dict({"id": "x", "ch": "chat", "last": 5, "steps": [[5, "offered", "e", "q"]]})
    assert back.partition == -1
    assert back.steps == [Step(5, "offered", "e", "q")]


# -- properties ---------------------------------------------------------------------

KINDS = ["offered", "answered", "abandoned", "transferred", "ended", "rated", "message"]


@st.composite
def random_histories(draw: st.DrawFn) -> list[Step]:
    """Arbitrary (even nonsensical) step lists of one voice interaction."""
    n = draw(st.integers(1, 9))
    steps = []
    for i in range(n):
        kind = draw(st.sampled_from(KINDS))
        ts = draw(st.integers(0, 240)) * 500  # coarse grid: frequent ties at the same ms
        steps.append(Step(ts, kind, f"e{draw(st.integers(0, 99))}-{i}",
                          draw(st.sampled_from([None, "billing", "sales"])),
                          draw(st.sampled_from([None, "a-1", "a-2"])),
                          draw(st.sampled_from([None, None, "sales", "support"])) if kind == "transferred" else None,
                          draw(st.sampled_from([0, 0, 4000])),
                          sender=draw(st.sampled_from(["customer", "agent"])) if kind == "message" else None,
                          csat=draw(st.sampled_from([None, 2, 5])) if kind == "rated" else None,
                          nps=draw(st.sampled_from([None, 0, 7, 10])) if kind == "rated" else None,
                          complaint=draw(st.booleans()) if kind == "rated" else False,
                          customer=draw(st.sampled_from([None, "c-1"]))))
    return steps


WINDOWS = Windowing((60, 900))


def facts(inter: Interaction) -> Any:
    return interaction_facts(inter.derive(), inter.channel, thresholds, WINDOWS)


@settings(max_examples=300, deadline=None)
@given(random_histories(), st.randoms(use_true_random=False), st.sampled_from(["voice", "chat"]))
def test_every_insertion_order_gives_the_same_result(steps: list[Step], rnd: random.Random, channel: str) -> None:
    reference = build(*sorted(steps, key=Step.sort_key), channel=channel)
    expected_derivation = reference.derive()
    expected_facts = facts(reference)
    for _ in range(4):
        order = steps[:]
        rnd.shuffle(order)
        inter = build(*order, channel=channel)
        assert inter.steps == reference.steps
        assert inter.derive() == expected_derivation
        assert facts(inter) == expected_facts
        assert inter.last_ts == max(s.ts for s in steps)


@st.composite
def voice_calls(draw: st.DrawFn) -> tuple[list[Step], list[Segment], bool]:
    """A well-formed call and, built alongside, the segments it must derive to."""
    steps: list[Step] = []
    segments: list[Segment] = []
    counter = iter(range(1000))

    def eid() -> str:
        return f"{draw(st.sampled_from('abcxyz'))}{next(counter)}"

    t = draw(st.integers(0, 120)) * S
    queue = draw(st.sampled_from(["billing", "sales", "support"]))
    steps.append(Step(t, "offered", eid(), queue))
    seg = Segment(queue, t)
    segments.append(seg)
    first = True
    while True:
        t += draw(st.integers(0 if first else 1, 90_000))  # the wait
        first = False
        exit_ = draw(st.sampled_from(["answered", "answered", "abandoned", "hangup", "transferred", "waiting"]))
        if exit_ == "waiting":
            return steps, segments, False
        if exit_ in ("abandoned", "hangup"):
            steps.append(Step(t, "abandoned" if exit_ == "abandoned" else "ended", eid()))
            seg.exit, seg.left = "abandoned", t
            return steps, segments, True
        if exit_ == "transferred":
            queue = draw(st.sampled_from(["billing", "sales", "support"]))
            steps.append(Step(t, "transferred", eid(), to_queue=queue))
            seg.exit, seg.left = "transferred", t
            seg = Segment(queue, t)
            segments.append(seg)
            continue
        agent = draw(st.sampled_from(["a-1", "a-2", "a-3"]))
        steps.append(Step(t, "answered", eid(), agent=agent))
        seg.exit, seg.left, seg.agent = "answered", t, agent
        for _ in range(draw(st.integers(0, 2))):  # transfers to another agent
            t += draw(st.integers(1, 60_000))
            steps.append(Step(t, "transferred", eid(), agent=agent))
            seg.transfer_times.append(t)
        after = draw(st.sampled_from(["ended", "ended", "requeue", "talking"]))
        if after == "talking":
            return steps, segments, False
        t += draw(st.integers(1, 300_000))
        if after == "ended":
            wrapup = draw(st.sampled_from([0, 0, 15_000]))
            steps.append(Step(t, "ended", eid(), wrapup_ms=wrapup))
            seg.ended, seg.wrapup_ms = t, wrapup
            if draw(st.booleans()):
                steps.append(Step(t + draw(st.integers(1, 60_000)), "rated", eid()))
            return steps, segments, True
        queue = draw(st.sampled_from(["billing", "sales", "support"]))
        steps.append(Step(t, "transferred", eid(), to_queue=queue))
        seg.transfer_times.append(t)
        seg.ended = t
        seg = Segment(queue, t)
        segments.append(seg)


@settings(max_examples=300, deadline=None)
@given(voice_calls(), st.randoms(use_true_random=False))
def test_well_formed_calls_derive_to_the_reference_model(call: tuple[list[Step], list[Segment], bool],
                                                         rnd: random.Random) -> None:
    steps, segments, is_ended = call
    order = steps[:]
    rnd.shuffle(order)
    inter = build(*order)
    d = inter.derive()
    assert (d.segments, d.orphan_steps, d.ended) == (segments, 0, is_ended)
    # Each segment's wait is exactly its time in that queue.
    for seg in segments:
        if seg.left is not None:
            assert inter.derive().segments[segments.index(seg)].wait_ms == seg.left - seg.entered
