"""Chat and ticket simulators and the mixed stream: deterministic, ordered, EVENTS.md-valid, realistic."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.commands.simulate import DEFAULT_START, QueueModel, SimulationConfig, encode, generate_call_events
from ccpulse.commands.simulate_channels import (
    FAMILIES,
    ChatConfig,
    TicketConfig,
    generate_chat_events,
    generate_mixed_events,
    generate_ticket_events,
)
from ccpulse.commands.publish import publish_mixed
from schemas.events import Event, validate

RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FAR_FUTURE_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z: nothing is "in the future"
START_MS = (DEFAULT_START - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
DAY_MS = 86_400_000


def ms(ts: str) -> int:
    """Epoch milliseconds of an occurred_at, exactly (no float rounding)."""
    return (datetime.fromisoformat(ts) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def by_interaction(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        out[ev["interaction_id"]].append(ev)
    return out


def loaded_chats(**kw) -> ChatConfig:
    """Two small queues under pressure: waits, abandons, early messages and transfers all happen."""
    base = dict(rate=0.15, queues=(QueueModel("chat-billing", 3), QueueModel("chat-tech", 2, 0.5)),
                concurrency=2, patience_mean=90.0, transfer_probability=0.25, pre_message_probability=0.6,
                rating_probability=0.5, seed=5)
    base.update(kw)
    return ChatConfig(**base)


def quick_tickets(**kw) -> TicketConfig:
    """Tickets that finish within hours, so whole lifecycles fit in a short run."""
    base = dict(rate=0.1, queues=(QueueModel("tier1", 5), QueueModel("tier2", 2, 0.3)),
                first_reply_mean=600.0, solve_after_mean=600.0, close_after_solve=1800.0,
                customer_reply_mean=600.0, reopen_probability=0.3, rating_probability=0.5,
                internal_note_probability=0.4, seed=7)
    base.update(kw)
    return TicketConfig(**base)


# ---------------------------------------------------------------- determinism, order, laziness

def test_same_seed_same_events_other_seed_differs():
    for make, gen, duration in ((ChatConfig, generate_chat_events, 900),
                                (TicketConfig, generate_ticket_events, 3600)):
        first = list(gen(make(seed=3), duration))
        assert first and first == list(gen(make(seed=3), duration))
        assert first != list(gen(make(seed=4), duration))
    mixed = list(generate_mixed_events(SimulationConfig(seed=3), ChatConfig(seed=3), TicketConfig(seed=3), 600))
    assert mixed == list(generate_mixed_events(SimulationConfig(seed=3), ChatConfig(seed=3),
                                               TicketConfig(seed=3), 600))


def test_shorter_horizon_is_a_prefix_of_a_longer_one():
    for cfg, gen in ((loaded_chats(), generate_chat_events), (quick_tickets(), generate_ticket_events)):
        short = list(gen(cfg, 1200))
        long = list(gen(cfg, 2400))
        assert short and long[: len(short)] == short and len(long) > len(short)


@pytest.mark.parametrize("family", ["chat", "ticket"])
def test_events_are_time_ordered_and_inside_the_horizon(family):
    gen = generate_chat_events(loaded_chats(), 3600) if family == "chat" else \
        generate_ticket_events(quick_tickets(), 3600)
    times = [ms(ev["occurred_at"]) for ev in gen]
    assert times and times == sorted(times)
    assert times[0] >= START_MS and times[-1] < START_MS + 3600 * 1000


def test_endless_horizon_is_lazy():
    began = time.perf_counter()
    for stream in (generate_chat_events(ChatConfig(), math.inf), generate_ticket_events(TicketConfig(), math.inf),
                   generate_mixed_events(SimulationConfig(), ChatConfig(), TicketConfig(), math.inf)):
        assert len(list(itertools.islice(stream, 2000))) == 2000
    assert time.perf_counter() - began < 3.0


def test_event_and_interaction_ids_are_unique_and_never_collide_across_families():
    events = list(generate_mixed_events(SimulationConfig(seed=1), ChatConfig(seed=1), TicketConfig(seed=1), 1800))
    ids = [ev["event_id"] for _, ev in events]
    assert len(set(ids)) == len(ids)
    prefixes = {"call": "c-1-", "chat": "chat-1-", "ticket": "tkt-1-"}
    for family, ev in events:
        assert ev["interaction_id"].startswith(prefixes[family])
        assert ev["event_id"].startswith(ev["interaction_id"] + "-")


# ---------------------------------------------------------------- chats

def test_each_chat_lifecycle_is_well_formed():
    cfg = loaded_chats()
    events = list(generate_chat_events(cfg, 4 * 3600))
    queue_names = {q.name for q in cfg.queues}
    seen = Counter()
    for iid, evs in by_interaction(events).items():
        assert evs[0]["type"] == "chat.offered", iid
        assert evs[0]["queue"] in queue_names and evs[0]["customer_id"].startswith("cust-")
        assert [ev["event_id"] for ev in evs] == [f"{iid}-{n}" for n in range(1, len(evs) + 1)]
        segment_queue, state, agent, senders = evs[0]["queue"], "waiting", None, []
        prev = ms(evs[0]["occurred_at"])
        for ev in evs[1:]:
            t = ms(ev["occurred_at"])
            kind = ev["type"]
            # Strictly later, except an accept in the same millisecond as the queue entry.
            assert t > prev or (kind == "chat.answered" and t == prev), (iid, kind)
            prev = t
            assert state not in ("abandoned", "rated"), (iid, kind)  # nothing after these
            if kind == "chat.answered":
                assert state == "waiting" and ev["queue"] == segment_queue
                assert ev["agent_id"].rpartition("-a")[0] == segment_queue
                state, agent = "active", ev["agent_id"]
                seen["answered"] += 1
            elif kind == "chat.abandoned":
                assert state == "waiting" and ev["queue"] == segment_queue
                state = "abandoned"
                seen["abandoned"] += 1
            elif kind == "chat.transferred":
                assert state == "active" and ev["agent_id"] == agent and ev["queue"] == segment_queue
                assert ev["to_queue"] in queue_names
                seen["transferred_elsewhere" if ev["to_queue"] != segment_queue else "requeued"] += 1
                segment_queue, state, agent = ev["to_queue"], "waiting", None
            elif kind == "chat.message":
                senders.append(ev["sender"])
                if ev["sender"] == "agent":
                    assert state == "active" and ev["agent_id"] == agent
                else:
                    assert ev["sender"] == "customer" and "agent_id" not in ev
                    assert state == "active" or (state == "waiting" and len(senders) == 1)
                    if state == "waiting":
                        seen["typed_while_waiting"] += 1
            elif kind == "chat.ended":
                assert state == "active" and ev["agent_id"] == agent
                state = "ended"
                seen["ended"] += 1
            elif kind == "chat.rated":
                assert state == "ended" and type(ev["csat"]) is int and 1 <= ev["csat"] <= 5
                state = "rated"
                seen["rated"] += 1
            else:
                raise AssertionError(f"unexpected {kind}")
        # Alternating, customer first.
        assert senders == ["customer", "agent"] * (len(senders) // 2) + ["customer"] * (len(senders) % 2)
    for outcome in ("answered", "abandoned", "transferred_elsewhere", "typed_while_waiting", "ended", "rated"):
        assert seen[outcome] > 5, (outcome, seen)


def test_a_single_chat_queue_transfers_by_requeueing_to_another_agent():
    cfg = ChatConfig(rate=0.05, queues=(QueueModel("chat-support", 6),), transfer_probability=0.5, seed=9)
    chats = by_interaction(list(generate_chat_events(cfg, 3 * 3600)))
    requeued = 0
    for evs in chats.values():
        for i, ev in enumerate(evs):
            if ev["type"] == "chat.transferred":
                assert ev["to_queue"] == "chat-support"
                nxt = evs[i + 1] if i + 1 < len(evs) else None
                if nxt is not None and nxt["type"] == "chat.answered" and nxt["occurred_at"] == ev["occurred_at"]:
                    assert nxt["agent_id"] != ev["agent_id"]  # a transfer goes to someone else
                    requeued += 1
    assert requeued > 20


def test_an_agent_never_holds_more_chats_than_the_concurrency_and_slots_never_idle_while_chats_wait():
    cfg = ChatConfig(rate=0.2, queues=(QueueModel("q1", 3), QueueModel("q2", 2)), concurrency=2,
                     transfer_probability=0.2, seed=2)
    events = list(generate_chat_events(cfg, 3 * 3600))
    slots = {"q1": 3 * 2, "q2": 2 * 2}
    active: Counter = Counter()
    per_queue: Counter = Counter()
    offered_with_free_slot: dict[str, bool] = {}
    offered_at: dict[str, str] = {}
    peak = 0
    for ev in events:
        kind, iid = ev["type"], ev["interaction_id"]
        if kind == "chat.offered":
            offered_with_free_slot[iid] = per_queue[ev["queue"]] < slots[ev["queue"]]
            offered_at[iid] = ev["occurred_at"]
        elif kind == "chat.answered":
            active[ev["agent_id"]] += 1
            per_queue[ev["queue"]] += 1
            assert active[ev["agent_id"]] <= cfg.concurrency
            peak = max(peak, active[ev["agent_id"]])
            if iid in offered_with_free_slot:
                # Work-conserving: a free slot takes a new chat at once; a full queue makes it wait.
                assert offered_with_free_slot.pop(iid) == (ev["occurred_at"] == offered_at[iid])
        elif kind in ("chat.ended", "chat.transferred"):
            active[ev["agent_id"]] -= 1
            per_queue[ev["queue"]] -= 1
            assert active[ev["agent_id"]] >= 0
        elif kind == "chat.abandoned":
            offered_with_free_slot.pop(iid, None)
    assert peak == cfg.concurrency
    assert sum(ev["type"] == "chat.abandoned" for ev in events) > 20


def test_chat_waits_are_fifo_per_queue():
    cfg = ChatConfig(rate=0.3, queues=(QueueModel("q", 4),), patience_mean=None, transfer_probability=0.0, seed=4)
    answered = [int(ev["interaction_id"].rsplit("-", 1)[1])
                for ev in generate_chat_events(cfg, 3600) if ev["type"] == "chat.answered"]
    assert len(answered) > 100 and answered == sorted(answered)


def test_chat_defaults_are_a_healthy_center_and_the_model_follows_its_parameters():
    cfg = ChatConfig(seed=8)
    events = list(generate_chat_events(cfg, 4 * 3600))
    types = Counter(ev["type"] for ev in events)
    offered = types["chat.offered"]
    assert abs(offered - cfg.rate * 4 * 3600) < 4 * math.sqrt(cfg.rate * 4 * 3600)
    assert types["chat.abandoned"] / offered < 0.05
    assert types["chat.transferred"] / offered == pytest.approx(cfg.transfer_probability, abs=0.015)
    assert types["chat.rated"] / types["chat.ended"] == pytest.approx(cfg.rating_probability, abs=0.03)
    complaints = sum(ev.get("attributes", {}).get("complaint") is True for ev in events)
    assert complaints / offered == pytest.approx(cfg.complaint_probability, abs=0.01)
    per_chat = [sum(ev["type"] == "chat.message" for ev in evs) for evs in by_interaction(events).values()
                if evs[-1]["type"] in ("chat.ended", "chat.rated")]
    assert sum(per_chat) / len(per_chat) == pytest.approx(cfg.messages_mean, rel=0.1)
    assert min(per_chat) >= 2  # every handled chat has the customer's question and an agent's reply
    csat = [ev["csat"] for ev in events if ev["type"] == "chat.rated"]
    assert sum(c >= 4 for c in csat) / len(csat) > 0.7 and min(csat) == 1  # skewed to 4-5, not only


def test_without_patience_no_chat_is_abandoned():
    cfg = ChatConfig(rate=0.3, queues=(QueueModel("q", 3),), patience_mean=None, seed=6)
    assert not [ev for ev in generate_chat_events(cfg, 1800) if ev["type"] == "chat.abandoned"]


# ---------------------------------------------------------------- tickets

def test_each_ticket_lifecycle_is_well_formed():
    cfg = quick_tickets()
    events = list(generate_ticket_events(cfg, 8 * 3600))
    queue_names = {q.name for q in cfg.queues}
    seen = Counter()
    for iid, evs in by_interaction(events).items():
        created = evs[0]
        assert created["type"] == "ticket.created", iid
        assert created["queue"] in queue_names and created["channel"] in cfg.channels
        assert created["customer_id"].startswith("cust-")
        assert created["attributes"]["priority"] in ("normal", "high", "urgent")
        assert [ev["event_id"] for ev in evs] == [f"{iid}-{n}" for n in range(1, len(evs) + 1)]
        times = [ms(ev["occurred_at"]) for ev in evs]
        assert times == sorted(times) and len(set(times)) == len(times)
        first_response = None
        agent_replies_since_open = 0
        agent_replies = 0
        state = "open"
        for ev in evs[1:]:
            kind = ev["type"]
            assert ev["channel"] == created["channel"] and ev["queue"] == created["queue"]
            assert state != "closed", (iid, kind)  # closed is last
            if kind == "ticket.assigned":
                assert first_response is None and ev["agent_id"].rpartition("-a")[0] == created["queue"]
                seen["assigned"] += 1
            elif kind == "ticket.replied":
                assert state == "open"
                if ev["sender"] == "agent":
                    assert isinstance(ev["agent_id"], str)
                    if ev["public"]:
                        if first_response is None:
                            first_response = ms(ev["occurred_at"])
                            assert first_response > times[0]
                        agent_replies_since_open += 1
                        agent_replies += 1
                    else:
                        assert first_response is None  # an internal note is no first response
                        seen["internal_note"] += 1
                else:
                    assert ev["sender"] == "customer" and ev["public"] is True
                    assert first_response is not None
                    seen["customer_reply"] += 1
            elif kind == "ticket.solved":
                assert state == "open" and agent_replies_since_open >= 1
                seen["one_touch" if agent_replies == 1 else "multi_touch"] += 1
                state, agent_replies_since_open = "solved", 0
            elif kind == "ticket.reopened":
                assert state == "solved"
                state = "open"
                seen["reopened"] += 1
            elif kind == "ticket.rated":
                assert state == "solved"
                assert "csat" in ev or "nps" in ev
                if "csat" in ev:
                    assert type(ev["csat"]) is int and 1 <= ev["csat"] <= 5
                    seen["csat"] += 1
                if "nps" in ev:
                    assert type(ev["nps"]) is int and 0 <= ev["nps"] <= 10
                    seen["nps"] += 1
            elif kind == "ticket.closed":
                if agent_replies == 0:
                    assert state == "open"
                    seen["closed_without_reply"] += 1
                else:
                    assert state == "solved"
                state = "closed"
            else:
                raise AssertionError(f"unexpected {kind}")
    for outcome in ("assigned", "internal_note", "customer_reply", "one_touch", "multi_touch", "reopened",
                    "csat", "nps", "closed_without_reply"):
        assert seen[outcome] > 3, (outcome, seen)


def test_about_one_ticket_in_twenty_is_closed_without_a_reply():
    cfg = quick_tickets(rate=1.0, seed=11)
    events = list(generate_ticket_events(cfg, 3 * 3600))
    tickets = by_interaction(events)
    early = [evs for evs in tickets.values() if ms(evs[0]["occurred_at"]) < START_MS + 3600 * 1000]
    no_reply = [evs for evs in early if evs[-1]["type"] == "ticket.closed"
                and not any(ev["type"] == "ticket.replied" and ev["sender"] == "agent" for ev in evs)]
    assert len(early) > 3000
    assert len(no_reply) / len(early) == pytest.approx(cfg.no_reply_close_probability, abs=0.015)
    # The rest get a first public reply and are solved: both outcomes of a "ticket" occur.
    solved = [evs for evs in early if any(ev["type"] == "ticket.solved" for ev in evs)]
    assert len(solved) / len(early) > 0.9


def test_ticket_defaults_span_days_and_close_after_the_final_solve():
    cfg = TicketConfig(rate=0.02, seed=3)
    events = list(generate_ticket_events(cfg, 4 * 86400))
    assert {ev["channel"] for ev in events} == set(cfg.channels)
    for evs in by_interaction(events).values():
        solves = [ms(ev["occurred_at"]) for ev in evs if ev["type"] == "ticket.solved"]
        if evs[-1]["type"] == "ticket.closed" and solves:
            assert ms(evs[-1]["occurred_at"]) - solves[-1] == round(cfg.close_after_solve * 1000)
    frt = [next(ms(ev["occurred_at"]) for ev in evs if ev["type"] == "ticket.replied" and ev["public"])
           - ms(evs[0]["occurred_at"]) for evs in by_interaction(events).values()
           if any(ev["type"] == "ticket.replied" and ev["public"] for ev in evs)]
    # Priorities speed some tickets up: the mean first reply is below first_reply_mean.
    assert 0.5 * cfg.first_reply_mean < sum(frt) / len(frt) / 1000 < cfg.first_reply_mean


# ---------------------------------------------------------------- wire contract

def assert_valid(family: str, ev: dict, channels: tuple[str, ...] | None = None) -> Event:
    assert RFC3339_MS_Z.match(ev["occurred_at"]), ev
    assert orjson.loads(encode(ev)) == ev
    out = validate(ev, family, now_ms=FAR_FUTURE_MS)
    assert isinstance(out, Event), (out, ev)
    if family == "chat":
        assert out.channel == "chat"
    elif family == "ticket":
        assert out.channel == ev["channel"] and (channels is None or out.channel in channels)
    else:
        assert out.channel == "voice"
    if out.type.endswith(".answered"):
        assert out.agent_id
    if out.step == "offered":
        assert out.queue
    if out.step in ("message", "replied"):
        assert out.details["sender"] in ("customer", "agent")
    if out.step == "transferred":
        assert out.details["to_queue"]
    return out


def test_every_event_validates_against_the_decoder():
    chat_types, ticket_types = Counter(), Counter()
    for ev in generate_chat_events(loaded_chats(), 3 * 3600):
        chat_types[assert_valid("chat", ev).type] += 1
    cfg = quick_tickets()
    for ev in generate_ticket_events(cfg, 6 * 3600):
        ticket_types[assert_valid("ticket", ev, cfg.channels).type] += 1
    assert set(chat_types) == {"chat.offered", "chat.answered", "chat.abandoned", "chat.transferred",
                               "chat.message", "chat.ended", "chat.rated"}
    assert set(ticket_types) == {"ticket.created", "ticket.assigned", "ticket.replied", "ticket.solved",
                                 "ticket.reopened", "ticket.rated", "ticket.closed"}
    for family, ev in generate_mixed_events(SimulationConfig(), ChatConfig(), TicketConfig(), 900):
        assert_valid(family, ev)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), rate=st.floats(min_value=0.01, max_value=5.0),
       agents=st.integers(min_value=1, max_value=8), concurrency=st.integers(min_value=1, max_value=4),
       patience=st.one_of(st.none(), st.floats(min_value=0.5, max_value=600.0)),
       messages=st.floats(min_value=1.0, max_value=12.0),
       p=st.floats(min_value=0.0, max_value=1.0))
def test_any_chat_config_makes_valid_events(seed, rate, agents, concurrency, patience, messages, p):
    cfg = ChatConfig(rate=rate, queues=(QueueModel("a", agents), QueueModel("b", agents)), concurrency=concurrency,
                     patience_mean=patience, messages_mean=messages, transfer_probability=p,
                     rating_probability=p, complaint_probability=p, pre_message_probability=p, seed=seed)
    events = list(itertools.islice(generate_chat_events(cfg, 900), 1500))
    for ev in events:
        assert_valid("chat", ev)
    times = [ev["occurred_at"] for ev in events]
    assert times == sorted(times)
    active: Counter = Counter()
    for ev in events:
        if ev["type"] == "chat.answered":
            active[ev["agent_id"]] += 1
            assert active[ev["agent_id"]] <= concurrency
        elif ev["type"] in ("chat.ended", "chat.transferred"):
            active[ev["agent_id"]] -= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), rate=st.floats(min_value=0.01, max_value=5.0),
       means=st.floats(min_value=0.01, max_value=5000.0), replies=st.floats(min_value=1.0, max_value=6.0),
       close=st.floats(min_value=0.0, max_value=5000.0), p=st.floats(min_value=0.0, max_value=1.0),
       channels=st.lists(st.sampled_from(["email", "web", "social", "whatsapp"]), min_size=1, max_size=3,
                         unique=True))
def test_any_ticket_config_makes_valid_events(seed, rate, means, replies, close, p, channels):
    cfg = TicketConfig(rate=rate, channels=tuple(channels), first_reply_mean=means, solve_after_mean=means,
                       customer_reply_mean=means, replies_mean=replies, close_after_solve=close,
                       no_reply_close_probability=p, internal_note_probability=p, reopen_probability=p,
                       rating_probability=p, complaint_probability=p, seed=seed)
    events = list(itertools.islice(generate_ticket_events(cfg, 1800), 1500))
    for ev in events:
        assert_valid("ticket", ev, cfg.channels)
    times = [ev["occurred_at"] for ev in events]
    assert times == sorted(times)
    for evs in by_interaction(events).values():
        assert evs[0]["type"] == "ticket.created"
        assert all(ev["type"] != "ticket.closed" for ev in evs[:-1])


# ---------------------------------------------------------------- customers

def test_repeat_customers_give_first_contact_resolution_both_outcomes():
    events = list(generate_mixed_events(SimulationConfig(rate=0.5, seed=4), ChatConfig(seed=4),
                                        TicketConfig(seed=4), 4 * 3600))
    contacts: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for family, ev in events:
        if ev["type"] in ("call.offered", "chat.offered", "ticket.created"):
            contacts[ev["customer_id"]].append((ms(ev["occurred_at"]), family))
    starts = sum(len(v) for v in contacts.values())
    # A contact is "resolved on first contact" unless the same customer comes back within 24 h.
    repeated = sum(1 for v in contacts.values() for (t, _), (t2, _) in itertools.pairwise(v) if t2 - t <= DAY_MS)
    assert 0.05 < repeated / starts < 0.4
    assert any(len({f for _, f in v}) > 1 for v in contacts.values())  # a chat after a call, ...
    assert all(re.fullmatch(r"cust-\d{5}", c) for c in contacts)


# ---------------------------------------------------------------- mixed stream

def test_mixed_stream_is_time_ordered_routed_and_the_union_of_the_three():
    voice, chat, ticket = SimulationConfig(rate=0.5, seed=6), loaded_chats(seed=6), quick_tickets(seed=6)
    mixed = list(generate_mixed_events(voice, chat, ticket, 1800))
    times = [ms(ev["occurred_at"]) for _, ev in mixed]
    assert times == sorted(times)
    for family, ev in mixed:
        assert ev["type"].split(".", 1)[0] == family
    # Each family's sub-sequence is exactly that generator's output, in its order.
    assert [ev for f, ev in mixed if f == "call"] == list(generate_call_events(voice, 1800))
    assert [ev for f, ev in mixed if f == "chat"] == list(generate_chat_events(chat, 1800))
    assert [ev for f, ev in mixed if f == "ticket"] == list(generate_ticket_events(ticket, 1800))
    assert {f for f, _ in mixed} == set(FAMILIES)
    # Ties: calls before chats before tickets at the same millisecond.
    rank = {f: i for i, f in enumerate(FAMILIES)}
    for (f1, e1), (f2, e2) in itertools.pairwise(mixed):
        if e1["occurred_at"] == e2["occurred_at"] and f1 != f2:
            assert rank[f1] < rank[f2]


def test_mixed_stream_with_some_families_off():
    only_chat = list(generate_mixed_events(None, ChatConfig(seed=2), None, 600))
    assert only_chat and {f for f, _ in only_chat} == {"chat"}
    assert [ev for _, ev in only_chat] == list(generate_chat_events(ChatConfig(seed=2), 600))
    with pytest.raises(ValueError):
        generate_mixed_events(None, None, None, 600)
    with pytest.raises(ValueError):
        generate_mixed_events(None, ChatConfig(), None, -1)


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("bad", [
    dict(rate=0), dict(rate=math.inf), dict(queues=()), dict(concurrency=0), dict(patience_mean=0),
    dict(messages_mean=0.5), dict(agent_reply_mean=0), dict(customer_reply_mean=-1),
    dict(transfer_probability=1.5), dict(rating_probability=-0.1), dict(complaint_probability=2),
    dict(queues=(QueueModel("a"), QueueModel("a"))), dict(start=datetime(2026, 1, 1)),
])
def test_invalid_chat_config_is_rejected(bad):
    with pytest.raises(ValueError):
        ChatConfig(**bad)


@pytest.mark.parametrize("bad", [
    dict(rate=-1), dict(queues=()), dict(channels=()), dict(channels=("voice",)), dict(channels=("",)),
    dict(first_reply_mean=0), dict(no_reply_close_probability=1.1), dict(replies_mean=0.5),
    dict(solve_after_mean=0), dict(reopen_probability=-1), dict(close_after_solve=-1),
    dict(rating_probability=3), dict(start=datetime(2026, 1, 1)),
])
def test_invalid_ticket_config_is_rejected(bad):
    with pytest.raises(ValueError):
        TicketConfig(**bad)


def test_start_is_normalised_to_utc_milliseconds_and_duration_is_checked():
    start = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    for make, gen in ((ChatConfig, generate_chat_events), (TicketConfig, generate_ticket_events)):
        cfg = make(start=start)
        assert cfg.start == datetime(2026, 3, 1, 8, 0, 0, 123000, tzinfo=timezone.utc)
        assert next(gen(cfg, 600))["occurred_at"].startswith("2026-03-01T08:")
        with pytest.raises(ValueError):
            gen(cfg, -5)  # eagerly, not at the first next()


def test_publish_mixed_rejects_bad_arguments_before_connecting():
    async def run(**kw):
        args = dict(events=[], bootstrap="127.0.0.1:1", topics={"call": "calls"}, speed=None)
        args.update(kw)
        return await publish_mixed(**args)

    for kw in (dict(topics={"email": "tickets"}), dict(topics={"chat": ""}), dict(speed=0.0),
               dict(speed=math.inf), dict(batch_size=0)):
        with pytest.raises(ValueError):
            asyncio.run(run(**kw))


# ---------------------------------------------------------------- Kafka

async def _create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    finally:
        await admin.close()


async def _read(bootstrap: str, topics: list[str], expected: int, timeout: float = 30.0) -> list:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(part)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        for part in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(part)
    finally:
        await consumer.stop()
    return records


@pytest.mark.integration
def test_publish_mixed_routes_each_family_to_its_topic(kafka_bootstrap):
    tag = uuid.uuid4().hex[:8]
    topics = {"call": f"test-calls-{tag}", "chat": f"test-chats-{tag}", "ticket": f"test-tickets-{tag}"}
    stream = generate_mixed_events(SimulationConfig(rate=0.5, seed=41), ChatConfig(rate=0.5, seed=41),
                                   TicketConfig(rate=0.5, seed=41), math.inf)
    events = list(itertools.islice(stream, 300))
    expected = Counter(f for f, _ in events)
    assert set(expected) == set(FAMILIES)
    seen: list[int] = []

    async def run() -> tuple[int, list]:
        await _create_topics(kafka_bootstrap, list(topics.values()), 3)
        sent = await publish_mixed(iter(events), kafka_bootstrap, topics, None, progress=seen.append, batch_size=64)
        return sent, await _read(kafka_bootstrap, list(topics.values()), len(events))

    sent, records = asyncio.run(run())
    assert sent == len(events) == 300
    assert seen and seen[-1] == 300 and seen == sorted(seen)
    assert len(records) == 300
    family_of = {topic: family for family, topic in topics.items()}
    assert Counter(family_of[r.topic] for r in records) == expected
    for rec in records:
        doc = orjson.loads(rec.value)
        assert rec.key == doc["interaction_id"].encode()
        assert doc["type"].split(".", 1)[0] == family_of[rec.topic]
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(ev["event_id"] for _, ev in events)
    # One interaction stays on one partition, in order.
    per_interaction: dict[str, list] = defaultdict(list)
    for rec in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        per_interaction[rec.key.decode()].append((rec.partition, orjson.loads(rec.value)["event_id"]))
    for iid, items in per_interaction.items():
        assert len({p for p, _ in items}) == 1
        assert [e for _, e in items] == [f"{iid}-{n}" for n in range(1, len(items) + 1)]


@pytest.mark.integration
def test_publish_mixed_paces_event_time_and_stops_cleanly(kafka_bootstrap):
    tag = uuid.uuid4().hex[:8]
    topics = {"call": f"test-calls-{tag}", "chat": f"test-chats-{tag}", "ticket": f"test-tickets-{tag}"}
    # Endless, ~2.7 events/s of event time replayed 10x.
    stream = generate_mixed_events(SimulationConfig(rate=0.5, seed=42), ChatConfig(rate=0.3, seed=42),
                                   TicketConfig(rate=0.2, seed=42), math.inf)

    async def run() -> tuple[int, float, list]:
        await _create_topics(kafka_bootstrap, list(topics.values()), 1)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.5, stop.set)
        began = time.monotonic()
        sent = await publish_mixed(stream, kafka_bootstrap, topics, 10.0, stop=stop)
        took = time.monotonic() - began
        return sent, took, await _read(kafka_bootstrap, list(topics.values()), sent)

    sent, took, records = asyncio.run(run())
    assert took < 5.0
    assert 5 < sent < 500  # ~15 s of event time, far below "as fast as possible"
    assert len(records) == sent
    times = sorted(ms(orjson.loads(r.value)["occurred_at"]) for r in records)
    assert (times[-1] - times[0]) / 1000 < 1.5 * 10 + 2
