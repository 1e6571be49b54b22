"""The real engine against the independent batch reference (tests/reference_kpis.py).

Random event histories across voice, chat and tickets (realistic lifecycles plus
orphans, transfers, flow-outs (to a queue or not), callback requests, holds (ended by a
resume, by the call's end or a transfer), chat conversations, ticket replies/solves/reopens, ratings,
complaints, zero waits, waits exactly at thresholds, waits across window
boundaries) are validated and fed to a ``PartitionEngine`` in a shuffled order
with re-sent duplicates; every final window must equal the reference exactly.
"""

from __future__ import annotations

import calendar
import math
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpulse.config import SERVICE_LEVEL_FORMULAS, Thresholds
from ccpulse.core import kpis, sketch
from ccpulse.core.engine import PartitionEngine, PartitionRecord, Snapshot
from ccpulse.core.kpis import kpi_figures
from ccpulse.core.lifecycle import Interaction
from ccpulse.core.windowing import Windowing
from schemas.events import Event, validate
from schemas.records import event_message, step_from_message
from tests import reference_kpis as ref_mod
from tests.reference_kpis import AGENT, QUEUE, SIZES, format_ms

S = 1000
MIN = 60 * S
HOUR = 60 * MIN
T0 = calendar.timegm((2026, 1, 5, 7, 50, 0)) * 1000  # 2026-01-05T07:50:00Z
FAR = T0 + 5 * 365 * 86400 * S  # past every window of every test
NOW = 10**15
QUEUES = ("billing", "support", "sales")
AGENTS = ("a-1", "a-2", "a-3")
TOPIC = {"call": "calls", "chat": "chats", "ticket": "tickets"}

BASE = {
    "voice": Thresholds(20.0, 5.0, 0.0),
    "chat": Thresholds(60.0, 10.0, 0.0),
    "ticket": Thresholds(86400.0, 0.0, 0.0),
}
OVERRIDES = {
    ("sales", "voice"): Thresholds(30.0, 0.0, 5.0, "answered_only"),
    ("support", "chat"): Thresholds(45.0, 15.0, 10.0, "abandons_within_target_positive"),
    ("billing", "ticket"): Thresholds(3600.0, 60.0, 600.0, "abandons_within_target_neutral"),
}


@dataclass(frozen=True)
class ThresholdConfig:
    """thresholds(queue, channel): per channel kind, optionally overridden per queue."""

    per_queue: bool

    def __call__(self, queue: str, channel: str) -> Thresholds:
        kind = ref_mod.channel_kind(channel)
        if self.per_queue and (queue, kind) in OVERRIDES:
            return OVERRIDES[(queue, kind)]
        return BASE[kind]


DEFAULT_TH = ThresholdConfig(False)
OVERRIDE_TH = ThresholdConfig(True)

# CCPULSE_PROPERTY_SCALE=10 runs ten times as many examples per property (a long hunt).
SCALE = float(os.environ.get("CCPULSE_PROPERTY_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


# Generated-example counters, printed at the end of the session (pytest -s) and kept
# for the report.
EXAMPLES: Counter = Counter()


# -- history generation -------------------------------------------------------


def rfc3339(ms: int, offset_min: int) -> str:
    """``occurred_at`` text of an instant, in UTC (``Z``) or with a numeric offset."""
    if offset_min == 0:
        return format_ms(ms)
    local = format_ms(ms + offset_min * MIN)[:-1]
    sign = "+" if offset_min > 0 else "-"
    return f"{local}{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


class Builder:
    """Collects one interaction's event documents, with sequential event ids."""

    def __init__(self, iid: str, family: str, channel: str | None = None,
                 offset_min: int = 0) -> None:
        self.iid, self.family, self.channel = iid, family, channel
        self.offset_min = offset_min  # producers may write local time with an offset
        self.docs: list[tuple[str, dict[str, Any]]] = []

    def add(self, kind: str, ts: int, **fields: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "event_id": f"{self.iid}-e{len(self.docs):02d}",
            "type": f"{self.family}.{kind}",
            "occurred_at": rfc3339(ts, self.offset_min),
            "interaction_id": self.iid,
        }
        if self.channel:
            doc["channel"] = self.channel
        doc.update({k: v for k, v in fields.items() if v is not None})
        self.docs.append((self.family, doc))
        return doc


OFFSETS = st.sampled_from([0, 0, 0, 60, -300, 330])
REASON_CODES = st.sampled_from(["timeout", "no_agents", "overflow", "voicemail"])


def gap(draw: Any) -> int:
    """A delay between two events: often 0 or whole seconds, sometimes odd milliseconds."""
    return draw(st.one_of(
        st.just(0),
        st.integers(0, 120).map(lambda s: s * S),
        st.integers(0, 20 * MIN),
        st.integers(0, 90).map(lambda m: m * MIN),
    ))


def wait_ms(draw: Any, th: Thresholds, ticket: bool) -> int:
    """A queue wait: zero, exactly at / around a threshold, or anything."""
    specials = {0, 1}
    for seconds in (th.service_level_seconds, th.short_abandon_seconds, th.immediate_seconds):
        ms = int(seconds * 1000)
        specials |= {ms, ms + 1, max(0, ms - 1)}
    upper = 8 * HOUR if ticket else 20 * MIN
    return draw(st.one_of(st.sampled_from(sorted(specials)), st.integers(0, upper),
                          st.integers(0, 180).map(lambda s: s * S)))


def start_time(draw: Any) -> int:
    base = T0 + draw(st.integers(0, 3 * 3600)) * S
    return base + draw(st.one_of(st.just(0), st.integers(0, 999)))


def maybe_queue(draw: Any, queue: str) -> str | None:
    """Later events may repeat the queue or (mostly) inherit it."""
    return draw(st.sampled_from([None, None, queue]))


def rating_fields(draw: Any) -> dict[str, int]:
    which = draw(st.sampled_from(["csat", "nps", "both"]))
    out: dict[str, int] = {}
    if which in ("csat", "both"):
        out["csat"] = draw(st.integers(1, 5))
    if which in ("nps", "both"):
        out["nps"] = draw(st.integers(0, 10))
    return out


def noise(draw: Any, b: Builder, lo: int, hi: int, queues: tuple[str, ...]) -> None:
    """0-2 random events of the family at random times: orphans and odd states."""
    kinds = (["offered", "answered", "abandoned", "ended", "transferred", "rated", "flowed_out",
              "callback_requested"]
             + (["message"] if b.family == "chat" else ["held", "resumed", "held"]))
    if b.family == "ticket":
        kinds = ["created", "replied", "assigned", "solved", "reopened", "closed", "rated"]
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(kinds))
        ts = draw(st.integers(lo, hi))
        fields: dict[str, Any] = {"queue": draw(st.sampled_from((None,) + queues))}
        if kind in ("offered", "created"):
            fields["queue"] = draw(st.sampled_from(queues))
        if kind == "answered" or draw(st.integers(0, 3)) == 0:
            fields["agent_id"] = draw(st.sampled_from(AGENTS))
        if kind == "flowed_out":
            fields["reason"] = draw(REASON_CODES)
            fields["to_queue"] = draw(st.sampled_from((None, None) + queues))
        if kind == "transferred":
            if draw(st.booleans()):
                fields["to_queue"] = draw(st.sampled_from(queues))
            else:
                fields["to_agent"] = draw(st.sampled_from(AGENTS))
        if kind in ("message", "replied"):
            fields["sender"] = draw(st.sampled_from(["customer", "agent"]))
            if kind == "replied":
                fields["public"] = draw(st.booleans())
        if kind == "rated":
            fields.update(rating_fields(draw))
        if kind == "ended" and draw(st.booleans()):
            fields["wrapup_seconds"] = draw(st.integers(0, 120))
        b.add(kind, ts, **fields)


def holds(draw: Any, b: Builder, t: int) -> int:
    """0-2 holds of an answered call; the last one may stay open (ended by what follows)."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        t += gap(draw) // 4
        b.add("held", t)
        if draw(st.integers(0, 3)):
            t += draw(st.one_of(st.just(0), st.integers(0, 90 * S)))
            b.add("resumed", t)
    return t


def chat_messages(draw: Any, b: Builder, t: int, senders: list[str], queue: str) -> int:
    for sender in senders:
        t += gap(draw) // 4
        b.add("message", t, sender=sender, queue=maybe_queue(draw, queue))
    return t


def flag_complaint(draw: Any, b: Builder) -> None:
    """Flag 0-2 events (only the first true flag of an interaction counts)."""
    if not b.docs or draw(st.integers(0, 2)):
        return
    for _ in range(draw(st.integers(1, 2))):
        _, doc = b.docs[draw(st.integers(0, len(b.docs) - 1))]
        doc["attributes"] = {"complaint": draw(st.sampled_from([True, True, "yes", False])),
                             "category": "billing"}


@st.composite
def voice_or_chat(draw: Any, iid: str, channel: str, queues: tuple[str, ...],
                  th_fn: Callable[[str, str], Thresholds]) -> list[tuple[str, dict[str, Any]]]:
    b = Builder(iid, "call" if channel == "voice" else "chat", offset_min=draw(OFFSETS))
    chat = channel == "chat"
    start = t = start_time(draw)
    queue = draw(st.sampled_from(queues))
    if chat and draw(st.integers(0, 3)) == 0:  # a customer message before the offer
        b.add("message", t - draw(st.integers(0, 30 * S)), sender="customer")
    if draw(st.integers(0, 9)):  # else: an orphan history with no offer
        b.add("offered", t, queue=queue)
    for hop in range(3):
        th = th_fn(queue, channel)
        wait = wait_ms(draw, th, False)
        if chat:
            senders = draw(st.lists(st.just("customer"), max_size=2))
            chat_messages(draw, b, t, senders, queue)
        outcome = draw(st.sampled_from(
            ["answered"] * 5 + ["abandoned", "abandoned", "ended", "transfer_q", "transfer_a", "none",
                                "flowed_out", "flowed_out_q", "callback"]))
        t += wait
        if outcome == "answered":
            agent = draw(st.sampled_from(AGENTS))
            b.add("answered", t, agent_id=agent, queue=maybe_queue(draw, queue))
            if chat:
                senders = draw(st.lists(st.sampled_from(["customer", "agent", "agent"]), max_size=5))
                t = chat_messages(draw, b, t, senders, queue)
            else:
                t = holds(draw, b, t)
            action = draw(st.sampled_from(["end", "end", "end", "transfer_q", "transfer_a", "none"]))
            t += gap(draw)
            if action == "transfer_a":
                b.add("transferred", t, to_agent=draw(st.sampled_from(AGENTS)),
                      queue=maybe_queue(draw, queue))
                t += gap(draw)
                action = draw(st.sampled_from(["end", "none"]))
            if action == "transfer_q" and hop < 2:
                queue = draw(st.sampled_from(queues))
                b.add("transferred", t, to_queue=queue,
                      to_agent=draw(st.sampled_from([None, "a-9"])))
                continue
            if action == "end":
                wrapup = draw(st.sampled_from([None, 0, 15, 30, 2.5]))
                b.add("ended", t, wrapup_seconds=wrapup, queue=maybe_queue(draw, queue))
        elif outcome in ("abandoned", "ended"):
            b.add(outcome, t, queue=maybe_queue(draw, queue))
        elif outcome == "transfer_q" and hop < 2:
            queue = draw(st.sampled_from(queues))
            b.add("transferred", t, to_queue=queue)
            continue
        elif outcome == "flowed_out_q" and hop < 2:
            queue = draw(st.sampled_from(queues))
            b.add("flowed_out", t, reason=draw(REASON_CODES), to_queue=queue)
            continue
        elif outcome in ("flowed_out", "flowed_out_q"):
            b.add("flowed_out", t, reason=draw(REASON_CODES), queue=maybe_queue(draw, queue))
        elif outcome == "callback":
            b.add("callback_requested", t, queue=maybe_queue(draw, queue))
        elif outcome == "transfer_a":
            b.add("transferred", t, to_agent=draw(st.sampled_from(AGENTS)))
        break
    if draw(st.integers(0, 2)) == 0:
        t += gap(draw)
        b.add("rated", t, **rating_fields(draw))
    noise(draw, b, start - 5 * MIN, t + 5 * MIN, queues)
    flag_complaint(draw, b)
    return b.docs


@st.composite
def ticket(draw: Any, iid: str, queues: tuple[str, ...],
           th_fn: Callable[[str, str], Thresholds]) -> list[tuple[str, dict[str, Any]]]:
    channel_field = draw(st.sampled_from([None, "email", "web", "social"]))
    channel = channel_field or "email"
    b = Builder(iid, "ticket", channel_field, offset_min=draw(OFFSETS))
    start = t = start_time(draw)
    queue = draw(st.sampled_from(queues))
    if draw(st.integers(0, 9)):
        b.add("created", t, queue=queue)
    answered = False
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from([
            "reply_public", "reply_public", "reply_private", "reply_customer", "assigned",
            "solved", "solved", "reopened", "closed", "closed", "rated", "created"]))
        if action == "reply_public" and not answered:
            t += wait_ms(draw, th_fn(queue, channel), True)
        else:
            t += gap(draw)
        if action == "reply_public":
            answered = True
            b.add("replied", t, sender="agent", agent_id=draw(st.sampled_from(AGENTS + (None,))),
                  queue=maybe_queue(draw, queue), **({} if draw(st.booleans()) else {"public": True}))
        elif action == "reply_private":
            b.add("replied", t, sender="agent", public=False, agent_id=draw(st.sampled_from(AGENTS)))
        elif action == "reply_customer":
            b.add("replied", t, sender="customer", public=draw(st.booleans()))
        elif action == "assigned":
            b.add("assigned", t, agent_id=draw(st.sampled_from(AGENTS)),
                  queue=draw(st.sampled_from((None,) + queues)))
        elif action == "rated":
            b.add("rated", t, **rating_fields(draw))
        elif action == "created":
            queue = draw(st.sampled_from(queues))
            answered = False
            b.add("created", t, queue=queue)
        else:
            b.add(action, t, queue=maybe_queue(draw, queue))
    noise(draw, b, start - 5 * MIN, t + 5 * MIN, queues)
    flag_complaint(draw, b)
    return b.docs


@st.composite
def histories(draw: Any, th_fn: Callable[[str, str], Thresholds]) -> list[tuple[str, dict[str, Any]]]:
    queues = QUEUES[: draw(st.integers(2, 3))]
    docs: list[tuple[str, dict[str, Any]]] = []
    for n in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["voice", "voice", "chat", "chat", "ticket", "ticket", "orphan"]))
        if kind == "voice":
            docs += draw(voice_or_chat(f"v{n}", "voice", queues, th_fn))
        elif kind == "chat":
            docs += draw(voice_or_chat(f"c{n}", "chat", queues, th_fn))
        elif kind == "ticket":
            docs += draw(ticket(f"t{n}", queues, th_fn))
        else:  # a lone orphan: an answer with no offer, a rating with nothing else, ...
            family = draw(st.sampled_from(["call", "chat", "ticket"]))
            b = Builder(f"o{n}", family)
            t = start_time(draw)
            noise(draw, b, t, t + 10 * MIN, queues)
            if not b.docs:
                b.add("rated", t, csat=5)
            docs += b.docs
    return docs


def ts_of(item: tuple[str, dict[str, Any]]) -> int:
    return ref_mod.parse_ms(item[1]["occurred_at"])


@st.composite
def deliveries(draw: Any, history: list[tuple[str, dict[str, Any]]], max_shift_ms: int,
               max_duplicates: int = 3) -> list[tuple[str, dict[str, Any]]]:
    """The sorted history, each event delivered up to ``max_shift_ms`` of event time late,
    plus re-sent duplicates (same document, later)."""
    rnd = draw(st.randoms(use_true_random=False))
    keyed = sorted(history, key=lambda item: ts_of(item) + rnd.randint(0, max_shift_ms))
    out = list(keyed)
    for _ in range(draw(st.integers(0, max_duplicates))):
        if not keyed:
            break
        i = rnd.randrange(len(out))
        out.insert(rnd.randint(i + 1, len(out)), out[i])
    return out


# -- driving the engine -------------------------------------------------------


@dataclass
class Run:
    finals: dict[tuple, Snapshot]
    snapshots: list[Snapshot]
    engine: PartitionEngine


def new_engine(th_fn: Callable[[str, str], Thresholds], lateness_s: float,
               windowing: Windowing | None = None, record: PartitionRecord | None = None) -> PartitionEngine:
    return PartitionEngine(0, windowing or Windowing(sizes=SIZES), lateness_s, th_fn, 10**9,
                           *([record] if record is not None else []))


def to_event(family: str, doc: dict[str, Any]) -> Event:
    ev = validate(doc, family, now_ms=NOW)
    assert isinstance(ev, Event), (doc, ev)
    return ev


def run_engine(delivery: list[tuple[str, dict[str, Any]]], th_fn: Callable[[str, str], Thresholds],
               lateness_s: float = 3600, close_after: set[int] = frozenset(),
               crash_at: int | None = None, windowing: Windowing | None = None) -> Run:
    engine = new_engine(th_fn, lateness_s, windowing)
    interactions: dict[str, Interaction] = {}
    finals: dict[tuple, Snapshot] = {}
    snapshots: list[Snapshot] = []

    def collect(snaps: list[Snapshot]) -> None:
        for snap in snaps:
            # An open snapshot's agg is the live window (it changes with later events):
            # check the reconciliation identity now, as a publisher serializing it would.
            assert_identity(snap)
            snapshots.append(snap)
            if snap.final:
                assert snap.key not in finals, f"two final snapshots of {snap.key}"
                finals[snap.key] = snap

    for offset, (family, doc) in enumerate(delivery):
        ev = to_event(family, doc)
        msg = event_message(ev, orjson.dumps(doc), TOPIC[family], 0, offset)
        step = step_from_message(orjson.loads(orjson.dumps(msg)))
        inter = interactions.setdefault(ev.interaction_id,
                                        Interaction(ev.interaction_id, ev.channel, partition=0))
        outcome = engine.apply(inter, step, offset)
        assert not outcome.late, (offset, doc)
        if offset in close_after:
            collect(engine.close())
            collect(engine.take_dirty())
        if offset == crash_at:
            # Crash: all that survives is the interactions table and the partition record
            # (both through JSON, as in the changelog); the open windows are rebuilt.
            saved = {iid: orjson.loads(orjson.dumps(i.to_dict())) for iid, i in interactions.items()}
            record = PartitionRecord.from_dict(orjson.loads(orjson.dumps(engine.record.to_dict())))
            engine = new_engine(th_fn, lateness_s, windowing, record)
            interactions = {iid: Interaction.from_dict(d) for iid, d in saved.items()}
            engine.rebuild(interactions.values())
    collect(engine.take_dirty())
    engine.advance(FAR)
    collect(engine.close())
    assert not engine.windows
    assert engine.record.late_events == 0
    return Run(finals, snapshots, engine)


def safe_close_points(delivery: list[tuple[str, dict[str, Any]]], lateness_ms: int) -> set[int]:
    """Offsets after which close() finalizes nothing a later event could still change.

    Every fact of an interaction lies at or after its earliest event, so closing at
    watermark wm is safe when every interaction with an event still to come started
    at or after wm - lateness.
    """
    first_ts: dict[str, int] = {}
    for _, doc in delivery:
        iid = doc["interaction_id"]
        first_ts[iid] = min(first_ts.get(iid, 1 << 62), ref_mod.parse_ms(doc["occurred_at"]))
    suffix_min = [1 << 62] * (len(delivery) + 1)
    for i in range(len(delivery) - 1, -1, -1):
        suffix_min[i] = min(suffix_min[i + 1], first_ts[delivery[i][1]["interaction_id"]])
    out, wm = set(), 0
    for i, item in enumerate(delivery):
        wm = max(wm, ts_of(item))
        if wm - lateness_ms <= suffix_min[i + 1]:
            out.add(i)
    return out


# -- comparing ----------------------------------------------------------------


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def close_to(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def assert_identity(snap: Snapshot) -> None:
    if snap.key[2] != QUEUE:
        return
    c = snap.agg.counts
    assert (snap.waiting_at_start + c.get("offered", 0)
            == c.get("answered", 0) + c.get("abandoned", 0) + c.get("short_abandoned", 0)
            + c.get("transferred_out", 0) + c.get("flowed_out", 0) + c.get("callbacks_requested", 0)
            + snap.waiting_at_end), snap


def assert_matches(reference: ref_mod.Reference, run: Run,
                   th_fn: Callable[[str, str], Thresholds]) -> None:
    for key, snap in run.finals.items():
        size, _start, scope, name, channel = key
        got = nonzero(snap.agg.counts)
        want = reference.nonzero(key)
        assert got == want, (key, sorted(set(got.items()) ^ set(want.items())))
        for field_name in ref_mod.MAXIMA:
            top = snap.agg.tops.get(field_name)
            assert (top[-1] if top else None) == reference.maxima.get(key, {}).get(field_name), (key, field_name)
        if scope == AGENT:
            assert size >= 900, key
            continue
        assert (snap.waiting_at_start, snap.waiting_at_end) == reference.waiting_at(key), key
        th = th_fn(name, channel)
        figures = kpi_figures(snap.agg, th)
        for ratio_name, value in ref_mod.ratios(want).items():
            assert close_to(figures[ratio_name], value), (key, ratio_name, figures[ratio_name], value)
        assert close_to(figures["service_level"], ref_mod.service_level(want, th.service_level_formula))
        for formula in SERVICE_LEVEL_FORMULAS:
            assert close_to(kpis.service_level(snap.agg.counts, formula),
                            ref_mod.service_level(want, formula)), (key, formula)
            figs = kpi_figures(snap.agg, replace(th, service_level_formula=formula))
            assert close_to(figs["service_level"], ref_mod.service_level(want, formula)), (key, formula)
        waits = reference.waits.get(key, [])
        for q in (0.5, 0.9, 0.95):
            estimate = sketch.quantile(snap.agg.sketch(), q)
            if not waits:
                assert estimate is None, key
                continue
            exact = ref_mod.lower_quantile(waits, q)
            assert abs(estimate - exact) <= 0.01 * exact + 1e-9, (key, q, estimate, exact)
    missing = reference.keys() - set(run.finals)
    assert not missing, f"reference windows without a snapshot: {sorted(missing)}"


def reference_of(delivery: list[tuple[str, dict[str, Any]]],
                 th_fn: Callable[[str, str], Thresholds]) -> ref_mod.Reference:
    return ref_mod.compute([doc for _, doc in delivery], th_fn)


def comparable(run: Run) -> dict[tuple, Any]:
    """Final windows with content. A window that only held facts later retracted (an
    out-of-order delivery) still gets an empty final snapshot, overwriting whatever
    open snapshot was published for it; an in-order run never creates it."""
    return {k: (nonzero(s.agg.counts), {n: v[-1] for n, v in s.agg.tops.items() if v},
                s.waiting_at_start, s.waiting_at_end)
            for k, s in run.finals.items() if nonzero(s.agg.counts) or any(s.agg.tops.values())}


# -- properties ---------------------------------------------------------------

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def known_divergence(history: list[tuple[str, dict[str, Any]]]) -> bool:
    """The history meets a rule the engine is known to read differently (each pinned by
    an xfail test below); kept out of the broad properties so they check everything else."""
    ref = ref_mod.compute([doc for _, doc in history], DEFAULT_TH)
    return any(r.notes for r in ref.interactions.values())


@st.composite
def scenario(draw: Any, max_shift_ms: int = 45 * MIN) -> tuple[Any, list, list]:
    th_fn = draw(st.sampled_from([DEFAULT_TH, OVERRIDE_TH]))
    history = draw(histories(th_fn))
    delivery = draw(deliveries(history, max_shift_ms))
    return th_fn, history, delivery


@settings(max_examples=examples(400), **COMMON)
@given(scenario())
def test_engine_matches_reference(case: tuple[Any, list, list]) -> None:
    """Shuffled delivery with duplicates, windows closed at the end: exactly the reference."""
    th_fn, _history, delivery = case
    EXAMPLES["engine_matches_reference"] += 1
    run = run_engine(delivery, th_fn)
    assert_matches(reference_of(delivery, th_fn), run, th_fn)


@settings(max_examples=examples(150), **COMMON)
@given(scenario(max_shift_ms=10 * MIN))
def test_progressive_close_matches_reference(case: tuple[Any, list, list]) -> None:
    """Windows finalized along the way (never one a later event could change)."""
    th_fn, _history, delivery = case
    EXAMPLES["progressive_close"] += 1
    lateness_s = 1800
    closes = safe_close_points(delivery, lateness_s * 1000)
    run = run_engine(delivery, th_fn, lateness_s=lateness_s, close_after=closes)
    assert_matches(reference_of(delivery, th_fn), run, th_fn)


@settings(max_examples=examples(120), **COMMON)
@given(scenario())
def test_in_order_equals_shuffled(case: tuple[Any, list, list]) -> None:
    th_fn, history, delivery = case
    EXAMPLES["in_order_equals_shuffled"] += 1
    in_order = sorted(history, key=ts_of)
    assert comparable(run_engine(in_order, th_fn)) == comparable(run_engine(delivery, th_fn))


@settings(max_examples=examples(120), **COMMON)
@given(scenario(max_shift_ms=10 * MIN), st.data())
def test_crash_and_rebuild_equals_uninterrupted(case: tuple[Any, list, list], data: Any) -> None:
    th_fn, _history, delivery = case
    EXAMPLES["crash_rebuild"] += 1
    lateness_s = 1800
    closes = safe_close_points(delivery, lateness_s * 1000)
    crash_at = data.draw(st.integers(0, max(0, len(delivery) - 1)))
    # At-least-once: after the restart a few already-processed events come again.
    replay = data.draw(st.integers(0, 3))
    resumed = delivery[: crash_at + 1] + delivery[max(0, crash_at + 1 - replay): crash_at + 1] \
        + delivery[crash_at + 1:]
    shifted_closes = {i if i <= crash_at else i + (len(resumed) - len(delivery)) for i in closes}
    plain = run_engine(delivery, th_fn, lateness_s=lateness_s, close_after=closes)
    crashed = run_engine(resumed, th_fn, lateness_s=lateness_s, close_after=shifted_closes,
                         crash_at=crash_at)
    assert comparable(crashed) == comparable(plain)
    assert_matches(reference_of(delivery, th_fn), crashed, th_fn)


def test_print_example_counts() -> None:
    """Not a check: prints how many histories each property generated in this session."""
    print(f"\ngenerated histories per property: {dict(EXAMPLES)}")


# -- hand-checked examples ----------------------------------------------------


def utc(*parts: int, ms: int = 0) -> int:
    return calendar.timegm(parts + (0,) * (6 - len(parts))) * 1000 + ms


def call(iid: str, n: int, kind: str, ts: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    doc = {"event_id": f"{iid}-{n}", "type": f"call.{kind}", "occurred_at": format_ms(ts),
           "interaction_id": iid, **fields}
    return ("call", doc)


def test_rfc3339_offsets_round_trip() -> None:
    ts = utc(2026, 1, 5, 7, 50, ms=7)
    assert rfc3339(ts, 330) == "2026-01-05T13:20:00.007+05:30"
    assert rfc3339(ts, -300) == "2026-01-05T02:50:00.007-05:00"
    for offset in (0, 60, -300, 330):
        assert ref_mod.parse_ms(rfc3339(ts, offset)) == ts
        assert to_event("call", {"event_id": "e", "type": "call.rated", "csat": 5, "interaction_id": "i",
                                 "occurred_at": rfc3339(ts, offset)}).occurred_at_ms == ts


def test_histogram_bounds_match_engine() -> None:
    assert tuple(float(b) for b in ref_mod.HISTOGRAM_BOUNDS_S) == kpis.WAIT_BUCKETS_S


def test_reference_hand_example_and_engine() -> None:
    """A call across 08:00 answered at exactly the 20 s target, transferred, handled in the
    second queue, rated; a short abandon; an orphan answer. Expected values by hand."""
    t = utc(2026, 1, 5, 7, 59, 50)
    events = [
        call("x", 1, "offered", t, queue="billing"),
        call("x", 2, "answered", t + 20 * S, agent_id="a-1"),          # 08:00:10, wait 20 s
        call("x", 3, "transferred", t + 80 * S, to_queue="sales"),      # 08:01:10, handle 60 s
        call("x", 4, "answered", t + 95 * S, agent_id="a-2"),          # wait 15 s in sales
        call("x", 5, "ended", t + 155 * S, wrapup_seconds=10),         # handle 60 + 10 s
        call("x", 6, "rated", t + 160 * S, csat=4, nps=6),
        call("y", 1, "offered", t, queue="billing"),
        call("y", 2, "abandoned", t + 5 * S),                          # short abandon (<= 5 s)
        call("z", 1, "answered", t, agent_id="a-3", queue="billing"),  # orphan
    ]
    ref = reference_of(events, DEFAULT_TH)
    hour = (3600, utc(2026, 1, 5, 8), QUEUE, "billing", "voice")
    assert ref.nonzero(hour) == {
        "answered": 1, "wait_answered_ms": 20_000, "answered_within_target": 1,
        f"wait_sk:{sketch.bucket_of(20_000)}": 1, "wait_bucket_4": 1,
        "transfers": 1, "handled": 1, "handle_ms": 60_000}
    before = (3600, utc(2026, 1, 5, 7), QUEUE, "billing", "voice")
    assert ref.nonzero(before) == {"offered": 2, "short_abandoned": 1}
    assert ref.waiting_at(before) == (0, 1)
    assert ref.waiting_at(hour) == (1, 0)
    sales = (3600, utc(2026, 1, 5, 8), QUEUE, "sales", "voice")
    assert ref.nonzero(sales) == {
        "offered": 1, "answered": 1, "wait_answered_ms": 15_000, "answered_within_target": 1,
        f"wait_sk:{sketch.bucket_of(15_000)}": 1, "wait_bucket_3": 1, "handled": 1,
        "handle_ms": 70_000, "csat_responses": 1, "csat_satisfied": 1, "nps_responses": 1,
        "nps_detractors": 1}
    agent2 = (3600, utc(2026, 1, 5, 8), AGENT, "a-2", "voice")
    assert ref.nonzero(agent2) == {"answered": 1, "handled": 1, "handle_ms": 70_000,
                                   "csat_responses": 1, "csat_satisfied": 1, "nps_responses": 1,
                                   "nps_detractors": 1}
    assert (60, utc(2026, 1, 5, 8), AGENT, "a-1", "voice") not in ref.keys()
    assert ref.interactions["z"].orphans == 1 and not ref.interactions["z"].segments
    run = run_engine(events, DEFAULT_TH)
    assert_matches(ref, run, DEFAULT_TH)


def test_chat_and_ticket_hand_example() -> None:
    t = utc(2026, 1, 5, 9)
    chat = [
        ("chat", {"event_id": "c-0", "type": "chat.message", "sender": "customer",
                  "occurred_at": format_ms(t - 10 * S), "interaction_id": "c"}),
        ("chat", {"event_id": "c-1", "type": "chat.offered", "queue": "support",
                  "occurred_at": format_ms(t), "interaction_id": "c"}),
        ("chat", {"event_id": "c-2", "type": "chat.answered", "agent_id": "a-1",
                  "occurred_at": format_ms(t + 30 * S), "interaction_id": "c"}),
        ("chat", {"event_id": "c-3", "type": "chat.message", "sender": "customer",
                  "occurred_at": format_ms(t + 35 * S), "interaction_id": "c"}),
        ("chat", {"event_id": "c-4", "type": "chat.message", "sender": "agent",
                  "occurred_at": format_ms(t + 40 * S), "interaction_id": "c"}),
        ("chat", {"event_id": "c-5", "type": "chat.message", "sender": "agent",
                  "occurred_at": format_ms(t + 45 * S), "interaction_id": "c",
                  "attributes": {"complaint": True}}),
    ]
    tk = [
        ("ticket", {"event_id": "t-1", "type": "ticket.created", "queue": "billing",
                    "channel": "web", "occurred_at": format_ms(t), "interaction_id": "t"}),
        ("ticket", {"event_id": "t-2", "type": "ticket.replied", "sender": "agent", "public": False,
                    "channel": "web", "occurred_at": format_ms(t + HOUR), "interaction_id": "t"}),
        ("ticket", {"event_id": "t-3", "type": "ticket.replied", "sender": "agent", "agent_id": "a-2",
                    "channel": "web", "occurred_at": format_ms(t + 2 * HOUR), "interaction_id": "t"}),
        ("ticket", {"event_id": "t-4", "type": "ticket.solved",
                    "channel": "web", "occurred_at": format_ms(t + 3 * HOUR), "interaction_id": "t"}),
        ("ticket", {"event_id": "t-5", "type": "ticket.reopened",
                    "channel": "web", "occurred_at": format_ms(t + 4 * HOUR), "interaction_id": "t"}),
        ("ticket", {"event_id": "t-6", "type": "ticket.closed",
                    "channel": "web", "occurred_at": format_ms(t + 5 * HOUR), "interaction_id": "t"}),
    ]
    ref = reference_of(chat + tk, DEFAULT_TH)
    day_chat = (86400, utc(2026, 1, 5), QUEUE, "support", "chat")
    c = ref.nonzero(day_chat)
    assert c["agent_responses"] == 2 and c["agent_response_ms"] == 50_000 + 5_000
    assert c["first_responses"] == 1 and c["first_response_ms"] == 50_000
    assert c["complaints"] == 1 and c["answered_within_target"] == 1
    day_t = (86400, utc(2026, 1, 5), QUEUE, "billing", "web")
    c = ref.nonzero(day_t)
    assert c["first_responses"] == 1 and c["first_response_ms"] == 2 * HOUR
    assert c["solved"] == 1 and c["resolution_ms"] == 3 * HOUR and c["one_touch"] == 1
    assert c["reopened"] == 1 and c["handled"] == 1 and c["handle_ms"] == 3 * HOUR
    assert c["answered"] == 1 and c["answered_within_target"] == 1
    run = run_engine(chat + tk, DEFAULT_TH)
    assert_matches(ref, run, DEFAULT_TH)


BERLIN = Windowing(sizes=SIZES, timezone="Europe/Berlin", day_start_hour=6)


@pytest.mark.parametrize("ts, size, start, end", [
    # Spring forward, 2026-03-29 01:00Z (02:00 CET -> 03:00 CEST): the 2026-03-28 day
    # (06:00 CET = 05:00Z) is 23 h long and ends 2026-03-29 06:00 CEST = 04:00Z.
    (utc(2026, 3, 28, 12), 86400, utc(2026, 3, 28, 5), utc(2026, 3, 29, 4)),
    (utc(2026, 3, 29, 3, 59, 59, ms=999), 86400, utc(2026, 3, 28, 5), utc(2026, 3, 29, 4)),
    (utc(2026, 3, 29, 4), 86400, utc(2026, 3, 29, 4), utc(2026, 3, 30, 4)),
    (utc(2026, 3, 29, 0, 30), 86400, utc(2026, 3, 28, 5), utc(2026, 3, 29, 4)),
    (utc(2026, 3, 29, 0, 30), 3600, utc(2026, 3, 29, 0), utc(2026, 3, 29, 1)),   # 01:30 CET
    (utc(2026, 3, 29, 1, 30), 3600, utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)),   # 03:30 CEST
    (utc(2026, 3, 29, 1, 44, 59), 900, utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 45)),
    # Fall back, 2025-10-26 01:00Z (03:00 CEST -> 02:00 CET): the 2025-10-25 day
    # (06:00 CEST = 04:00Z) is 25 h long and ends 2025-10-26 06:00 CET = 05:00Z.
    (utc(2025, 10, 26, 4, 59, 59), 86400, utc(2025, 10, 25, 4), utc(2025, 10, 26, 5)),
    (utc(2025, 10, 26, 5), 86400, utc(2025, 10, 26, 5), utc(2025, 10, 27, 5)),
    (utc(2025, 10, 25, 3, 59), 86400, utc(2025, 10, 24, 4), utc(2025, 10, 25, 4)),
    # The repeated local hour 02:00-03:00: once in CEST (00:xxZ), once in CET (01:xxZ).
    (utc(2025, 10, 26, 0, 30), 3600, utc(2025, 10, 26, 0), utc(2025, 10, 26, 1)),
    (utc(2025, 10, 26, 1, 30), 3600, utc(2025, 10, 26, 1), utc(2025, 10, 26, 2)),
    (utc(2025, 10, 26, 1, 30, 30), 60, utc(2025, 10, 26, 1, 30), utc(2025, 10, 26, 1, 31)),
])
def test_berlin_windows_around_dst(ts: int, size: int, start: int, end: int) -> None:
    assert BERLIN.start(ts, size) == start
    assert BERLIN.end(size, start) == end
    # The reference's own local-time computation agrees with the hand values.
    assert ref_mod.local_window(ts, size, "Europe/Berlin", 6) == (start, end)


def test_half_hour_zone_aligns_sub_day_windows_on_local_time() -> None:
    kolkata = Windowing(sizes=SIZES, timezone="Asia/Kolkata", day_start_hour=0)
    ts = T0  # 07:50Z = 13:20 IST
    assert kolkata.start(ts, 3600) == utc(2026, 1, 5, 7, 30)   # 13:00 IST
    assert kolkata.start(ts, 900) == utc(2026, 1, 5, 7, 45)    # 13:15 IST
    assert kolkata.start(ts, 60) == utc(2026, 1, 5, 7, 50)
    assert kolkata.start(ts, 86400) == utc(2026, 1, 4, 18, 30)  # 00:00 IST
    assert kolkata.end(86400, utc(2026, 1, 4, 18, 30)) == utc(2026, 1, 5, 18, 30)


def test_engine_windows_in_berlin_with_day_start() -> None:
    """A call straddling the 23-hour spring day's end, through the engine: window keys by hand."""
    t = utc(2026, 3, 29, 3, 59, 50)  # 05:59:50 CEST, day 2026-03-28 (starts 05:00Z)
    events = [call("b", 1, "offered", t, queue="billing"),
              call("b", 2, "answered", t + 15 * S, agent_id="a-1"),   # 06:00:05 CEST: next day
              call("b", 3, "ended", t + 75 * S)]
    run = run_engine(events, DEFAULT_TH, windowing=BERLIN)
    days = {k[1]: nonzero(s.agg.counts) for k, s in run.finals.items()
            if k[0] == 86400 and k[2] == QUEUE}
    assert set(days) == {utc(2026, 3, 28, 5), utc(2026, 3, 29, 4)}
    assert days[utc(2026, 3, 28, 5)] == {"offered": 1}
    assert days[utc(2026, 3, 29, 4)]["answered"] == 1
    first_day = run.finals[(86400, utc(2026, 3, 28, 5), QUEUE, "billing", "voice")]
    assert (first_day.waiting_at_start, first_day.waiting_at_end) == (0, 1)


# -- targeted checks of single rules (minimal examples) -------------------------


def test_fractional_wrapup_seconds_are_exact_milliseconds() -> None:
    """wrapup_seconds = 1.005 is 1005 ms of wrap-up (times are integer ms)."""
    t = utc(2026, 1, 5, 9)
    events = [call("w", 1, "offered", t, queue="billing"),
              call("w", 2, "answered", t + S, agent_id="a-1"),
              call("w", 3, "ended", t + 61 * S, wrapup_seconds=1.005)]
    run = run_engine(events, DEFAULT_TH)
    key = (3600, utc(2026, 1, 5, 9), QUEUE, "billing", "voice")
    assert reference_of(events, DEFAULT_TH).nonzero(key)["handle_ms"] == 61_005
    assert run.finals[key].agg.counts["handle_ms"] == 61_005



def ticket_event(n: int, kind: str, ts: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return ("ticket", {"event_id": f"t-{n}", "type": f"ticket.{kind}", "occurred_at": format_ms(ts),
                       "interaction_id": "t", **fields})


def test_reply_before_creation_does_not_count_for_one_touch() -> None:
    t = utc(2026, 1, 5, 9)
    events = [ticket_event(1, "replied", t, sender="agent", agent_id="a-1"),  # before creation
              ticket_event(2, "created", t + 1, queue="billing"),
              ticket_event(3, "solved", t + 2)]
    ref = reference_of(events, DEFAULT_TH)
    key = (3600, utc(2026, 1, 5, 9), QUEUE, "billing", "email")
    assert ref.nonzero(key) == {"offered": 1, "solved": 1, "resolution_ms": 1}
    assert known_divergence(events)
    run = run_engine(events, DEFAULT_TH)
    assert nonzero(run.finals[key].agg.counts) == ref.nonzero(key)  # engine adds one_touch: 1


def test_rating_goes_to_the_last_answering_agent_only() -> None:
    t = utc(2026, 1, 5, 9)
    events = [ticket_event(1, "created", t, queue="billing"),
              ticket_event(2, "replied", t + MIN, sender="agent", agent_id="a-1"),
              ticket_event(3, "closed", t + 2 * MIN),
              ticket_event(4, "created", t + 3 * MIN, queue="billing"),   # a second contact
              ticket_event(5, "replied", t + 4 * MIN, sender="agent"),   # answered, agent unknown
              ticket_event(6, "rated", t + 5 * MIN, csat=5)]
    ref = reference_of(events, DEFAULT_TH)
    agent_hour = (3600, utc(2026, 1, 5, 9), AGENT, "a-1", "email")
    assert ref.nonzero(agent_hour) == {"answered": 1, "handled": 1, "handle_ms": MIN}
    run = run_engine(events, DEFAULT_TH)
    assert_matches(ref, run, DEFAULT_TH)  # engine: a-1 also gets csat_responses/satisfied 1
