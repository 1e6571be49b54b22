"""PipelineStage (streams/stages/pipeline.py) without Kafka: re-key only what needs it,
dead-letter what breaks, event time per source partition, windows closing, one
changelog per changed interaction, and the same windows as the old ingest+lifecycle path.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from ccpulse.config import Settings, WindowSettings
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.kpis import WindowAgg
from ccpulse.core.lifecycle import Interaction
from ccpulse.core.timestamps import format_ms
from ccpulse.core.windowing import Windowing
from schemas.events import Rejection, parse_timestamp_ms
from schemas.records import event_message, step_from_message
from streams.stages.pipeline import Checkpoint, PipelineStage, key_partition
from streams.stages.validation import decode_event

PARTITIONS = 4
REKEY = "ccpulse-rekey"
T0 = parse_timestamp_ms("2026-01-05T08:00:00Z")
NOW = T0 + 3_600_000


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    offset: int


def settings(**windows: Any) -> Settings:
    base = Settings()
    return replace(base, kafka=replace(base.kafka, partitions=PARTITIONS),
                   windows=replace(WindowSettings(), **windows))


def call(iid: str, n: int, kind: str, ts: int, **extra: Any) -> bytes:
    doc = {"event_id": f"{iid}-{n}", "type": f"call.{kind}", "occurred_at": format_ms(ts),
           "interaction_id": iid, **extra}
    if kind == "offered":
        doc.setdefault("queue", "billing")
    if kind == "answered":
        doc.setdefault("agent_id", "a1")
    return orjson.dumps(doc)


def iid_on(partition: int, prefix: str = "i") -> str:
    """An interaction id whose murmur2 partition is ``partition``."""
    n = 0
    while key_partition(f"{prefix}{n}".encode(), PARTITIONS) != partition:
        n += 1
    return f"{prefix}{n}"


def back_from_rekey(stage: PipelineStage, out: Checkpoint, now_ms: int = NOW) -> None:
    """What <app>-rekey brings back: each message on its key's partition."""
    offsets: dict[int, int] = {}
    for message in out.rekey:
        p = key_partition(message.key, PARTITIONS)
        stage.on_batch(REKEY, p, [Rec(message.key, message.value, offsets.get(p, 0))], now_ms)
        offsets[p] = offsets.get(p, 0) + 1


INPUT_TOPICS = ("calls", "chats", "tickets")
EVERY = {(topic, p): True for topic in (*INPUT_TOPICS, REKEY) for p in range(PARTITIONS)}


def idle_everywhere(stage: PipelineStage, now_ms: int = NOW) -> None:
    """A worker owning every partition, its input read to the end for ``source_idle_seconds``
    by ``now_ms``: every input partition reported idle, as before new input comes in."""
    stage.on_tick(now_ms - stage.idle_ms, EVERY)
    stage.on_tick(now_ms, EVERY)
    clocks_back(stage, stage.checkpoint(), now_ms)


def clocks_back(stage: PipelineStage, out: Checkpoint, now_ms: int = NOW) -> None:
    """The checkpoint's clocks, read back from every partition of <app>-rekey."""
    for clock in out.clocks:
        for p in list(stage.engines):
            stage.on_batch(REKEY, p, [Rec(None, clock.value, 0)], now_ms)


def test_keyless_and_miskeyed_go_to_rekey_and_keyed_on_partition_are_applied() -> None:
    stage = PipelineStage(settings(), REKEY)
    right, elsewhere = iid_on(0), iid_on(1)
    stage.on_batch("calls", 0, [
        Rec(right.encode(), call(right, 1, "offered", T0), 0),          # applied here
        Rec(None, call(elsewhere, 1, "offered", T0), 1),                 # keyless
        Rec(b"customer-7", call(right, 2, "answered", T0 + 5000), 2),    # keyed otherwise
        Rec(elsewhere.encode(), call(elsewhere, 2, "answered", T0 + 5000), 3),  # another partition's
    ], NOW)
    out = stage.checkpoint()
    assert set(out.interactions) == {right}
    assert [m.key for m in out.rekey] == [elsewhere.encode(), right.encode(), elsewhere.encode()]
    assert json.loads(out.rekey[0].value)["source"] == ["calls", 0, 1]
    assert [doc["source"] for doc in out.raw_events] == [["calls", 0, 0]]
    back_from_rekey(stage, out)
    again = stage.checkpoint()
    assert set(again.interactions) == {right, elsewhere}
    assert again.interactions[right].partition == 0 and again.interactions[elsewhere].partition == 1
    # The store gets each event once, with the input record it came from.
    assert sorted(doc["source"][2] for doc in again.raw_events) == [1, 2, 3]
    assert not again.rekey and not again.dead_letters


def test_a_bad_record_is_dead_lettered_and_the_rest_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = PipelineStage(settings(), REKEY)
    iid = iid_on(0)
    real_apply = PartitionEngine.apply

    def apply(self: PartitionEngine, inter: Interaction, step: Any, offset: int, source: str = "",
              moves_time: bool = True) -> Any:
        if step.event_id == f"{iid}-2":
            raise ZeroDivisionError("boom")
        return real_apply(self, inter, step, offset, source, moves_time)
    monkeypatch.setattr(PartitionEngine, "apply", apply)
    stage.on_batch("calls", 0, [
        Rec(iid.encode(), call(iid, 1, "offered", T0), 10),
        Rec(iid.encode(), call(iid, 2, "answered", T0 + 1000), 11),  # makes the stage raise
        Rec(iid.encode(), b"{not json", 12),
        Rec(iid.encode(), call(iid, 3, "abandoned", T0 + 2000), 13),
    ], NOW)
    out = stage.checkpoint()
    letters = [m.value for m in out.dead_letters]
    assert [(d["reason"], d["offset"]) for d in letters] == [("processing_error", 11), ("not_json", 12)]
    assert letters[0]["detail"] == "pipeline: ZeroDivisionError: boom"
    assert base64.b64decode(letters[0]["value_base64"]) == call(iid, 2, "answered", T0 + 1000)
    assert [s.event_id for s in out.interactions[iid].steps] == [f"{iid}-1", f"{iid}-3"]


def test_event_time_is_the_slowest_active_input_partition_everywhere_until_it_goes_idle() -> None:
    stage = PipelineStage(settings(source_idle_seconds=5.0), REKEY)
    a, b = iid_on(0, "a"), iid_on(0, "b")
    stage.on_batch("chats", 0, [Rec(b"x", orjson.dumps({
        "event_id": "c1", "type": "chat.offered", "occurred_at": format_ms(T0), "interaction_id": b,
        "queue": "web"}), 0)], NOW)  # mis-keyed: forwarded, but chats/0 has been read that far
    stage.on_batch("calls", 0, [Rec(a.encode(), call(a, 1, "offered", T0 + 60_000), 0)], NOW)
    stage.on_batch("calls", 1, [Rec(None, call(b, 1, "offered", T0 + 600_000), 0)], NOW)  # another partition's
    assigned = {(t, p): True for t in ("calls", "chats", "tickets", REKEY) for p in range(PARTITIONS)}
    stage.on_tick(NOW - 5_000, assigned)  # the input partitions without events: idle by NOW
    stage.on_tick(NOW, assigned)
    # Event time moves only with the clocks read back from <app>-rekey.
    assert stage.engines[0].record.watermark == stage.engines[1].record.watermark == 0
    clocks_back(stage, stage.checkpoint())
    # chats/0 is behind every other input partition, on both engines.
    assert stage.engines[0].record.watermark == stage.engines[1].record.watermark == T0
    stage.on_batch("calls", 0, [Rec(a.encode(), call(a, 2, "answered", T0 + 61_000), 1)], NOW + 3_000)
    stage.on_batch("calls", 1, [Rec(None, call(b, 2, "answered", T0 + 601_000), 1)], NOW + 3_000)
    stage.on_tick(NOW + 5_000, assigned)  # chats/0 silent for source_idle_seconds: idle
    out = stage.checkpoint()
    clocks_back(stage, out, NOW + 5_000)
    assert stage.engines[0].record.watermark == stage.engines[1].record.watermark == T0 + 61_000
    assert out.records.keys() | stage.checkpoint().records.keys() == set(range(PARTITIONS))


def test_windows_close_and_the_final_partials_go_at_the_checkpoint() -> None:
    stage = PipelineStage(settings(allowed_lateness_seconds=60.0), REKEY)
    idle_everywhere(stage)
    iid, later = iid_on(2, "w"), iid_on(2, "x")
    stage.on_batch("calls", 2, [Rec(iid.encode(), call(iid, 1, "offered", T0 + 1000), 0),
                                Rec(iid.encode(), call(iid, 2, "abandoned", T0 + 9000), 1)], NOW)
    first = stage.checkpoint()
    assert {(m.value["key"][0], m.value["final"]) for m in first.partials if m.value["kind"] == "window"} \
        == {(60, False), (900, False), (3600, False), (86400, False)}
    # The 08:00 minute closes once event time passes its end plus the lateness.
    stage.on_batch("calls", 2, [Rec(later.encode(), call(later, 1, "offered", T0 + 121_000), 2)], NOW)
    clocks_back(stage, stage.checkpoint())
    stage.on_tick(NOW, {("calls", 2): True})
    out = stage.checkpoint()
    finals = [m for m in out.partials if m.value["kind"] == "window" and m.value["final"]]
    assert [(m.key, m.value["agg"]["counts"]["offered"]) for m in finals] == \
        [(b"1m|2026-01-05T08:00:00.000Z|billing|voice", 1)]
    assert out.records[2].final_through == T0 + 121_000


def rekey_topic(out: Checkpoint, log: dict[int, list[Rec]]) -> None:
    """What the Faust shell writes to <app>-rekey at a checkpoint, appended per partition:
    the forwarded events on their key's partition, then each clock on every partition."""
    for message in out.rekey:
        p = key_partition(message.key, PARTITIONS)
        log.setdefault(p, []).append(Rec(message.key, message.value, len(log.get(p, []))))
    for clock in out.clocks:
        for p in range(PARTITIONS):
            log.setdefault(p, []).append(Rec(None, clock.value, len(log.get(p, []))))


def test_an_event_back_from_rekey_is_not_late_when_its_partition_had_moved_on() -> None:
    # Keyless D is read on calls/0 at 08:00:30; calls/1, D's partition, is already at
    # 08:10. Partition 1 must not close 08:00 before D comes back over <app>-rekey,
    # however long <app>-rekey/1 had nothing to read.
    stage = PipelineStage(settings(source_idle_seconds=5.0, allowed_lateness_seconds=60.0), REKEY)
    d, t = iid_on(1, "d"), iid_on(1, "t")
    every = {(topic, p): True for topic in ("calls", "chats", "tickets", REKEY) for p in range(PARTITIONS)}
    stage.on_tick(NOW, every)
    later = NOW + 6_000  # every source idle: nothing to read anywhere
    stage.on_tick(later, every)
    topic: dict[int, list[Rec]] = {}
    rekey_topic(stage.checkpoint(), topic)
    stage.on_batch("calls", 0, [Rec(None, call(d, 1, "offered", T0 + 30_000), 0)], later)
    stage.on_batch("calls", 1, [Rec(t.encode(), call(t, 1, "offered", T0 + 600_000), 0)], later)
    stage.on_tick(later, {k: v for k, v in every.items() if k[1] != 1 or k[0] == REKEY})
    first = stage.checkpoint()
    rekey_topic(first, topic)
    for p, records in topic.items():
        stage.on_batch(REKEY, p, records, later)
    stage.on_tick(later + 1_000, every)
    out = stage.checkpoint()
    assert stage.engines[1].record.late_events == 0
    assert d in out.interactions and out.interactions[d].partition == 1
    minute = b"1m|2026-01-05T08:00:00.000Z|billing|voice"
    parts = [m.value for m in first.partials + out.partials if m.key == minute and m.value["partition"] == 1]
    assert parts and parts[-1]["agg"]["counts"]["offered"] == 1


def test_a_checkpoint_holds_each_changed_interaction_once() -> None:
    stage = PipelineStage(settings(), REKEY)
    iid, other = iid_on(3, "c"), iid_on(3, "d")
    stage.on_batch("calls", 3, [Rec(iid.encode(), call(iid, 1, "offered", T0), 0),
                                Rec(iid.encode(), call(iid, 2, "answered", T0 + 1000), 1)], NOW)
    stage.on_batch("calls", 3, [Rec(iid.encode(), call(iid, 3, "ended", T0 + 9000), 2),
                                Rec(iid.encode(), call(iid, 3, "ended", T0 + 9000), 3),  # duplicate
                                Rec(other.encode(), call(other, 1, "offered", T0), 4)], NOW)
    out = stage.checkpoint()
    assert list(out.interactions) == [iid, other]
    assert len(out.interactions[iid].steps) == 3
    assert len(out.raw_events) == 4  # the duplicate is not stored again
    assert list(out.records) == [3] and out.records[3].duplicates == 1
    assert not stage.checkpoint().interactions  # nothing changed since


# -- the same windows as the old path


def old_path(raws: list[tuple[str, int, int, bytes]], s: Settings) -> dict[int, PartitionEngine]:
    """streams/ingest.py then streams/lifecycle.py, minus Kafka: decode, key by interaction,
    apply on the interaction's partition of <app>-events in the order ingest forwarded it."""
    w = s.windows
    windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
    engines = {p: PartitionEngine(p, windowing, w.allowed_lateness_seconds, s.thresholds_for,
                                  w.interaction_horizon_seconds) for p in range(PARTITIONS)}
    interactions: dict[str, Interaction] = {}
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for topic, partition, offset, raw in raws:
        result = decode_event(raw, "call", NOW, int(s.max_future_seconds * 1000), windowing)
        if isinstance(result, Rejection):
            continue
        p = key_partition(result.interaction_id.encode(), PARTITIONS)
        doc = event_message(result, raw, topic, partition, offset)
        inter = interactions.setdefault(result.interaction_id,
                                        Interaction(result.interaction_id, result.channel, partition=p))
        engines[p].apply(inter, step_from_message(doc), offsets[p], f"{topic}/{partition}")
        offsets[p] += 1
    return engines


def agg(doc: dict[str, Any]) -> dict[str, Any]:
    """A window's aggregate without empty entries: a maximum taken back (an event that
    came later in one path) may leave an empty list behind, which means the same."""
    return {part: {k: v for k, v in values.items() if v} if isinstance(values, dict) else values
            for part, values in doc.items()}


def open_windows(engines: dict[int, PartitionEngine]) -> dict[tuple, Any]:
    """The open windows as the old path published them: one take_dirty at the end."""
    return {(p, snap.key): (agg(snap.agg.to_dict()), snap.waiting_at_start, snap.waiting_at_end)
            for p, engine in engines.items() for snap in engine.take_dirty() if not snap.agg.is_empty()}


def published(checkpoints: list[Checkpoint]) -> dict[tuple, Any]:
    """The open windows as the stage's partials left them: the last one per window."""
    out: dict[tuple, Any] = {}
    for cp in checkpoints:
        for m in cp.partials:
            v = m.value
            if v["kind"] == "window":
                out[(v["partition"], tuple(v["key"]))] = (agg(v["agg"]), v["waiting_at_start"], v["waiting_at_end"])
    empty = agg(WindowAgg().to_dict())
    return {k: v for k, v in out.items() if v[0] != empty}


def finals(engines: dict[int, PartitionEngine]) -> dict[tuple, Any]:
    out = {}
    for p, engine in engines.items():
        engine.advance(T0 + 30 * 86_400_000)
        for snap in engine.close():
            out[(p, snap.key)] = (agg(snap.agg.to_dict()), snap.waiting_at_start, snap.waiting_at_end)
    return out


STEPS = st.sampled_from([("answered", 1), ("abandoned", 1), ("answered_ended", 2), ("transferred", 1), ("none", 0)])


@st.composite
def traffic(draw: Any) -> list[tuple[str, int, int, bytes, bytes | None]]:
    """Interactions' events as producers might key and place them: (topic, partition, offset, value, key)."""
    events = []
    for i in range(draw(st.integers(1, 25))):
        iid = f"p{i}"
        start = T0 + draw(st.integers(0, 7200)) * 1000
        wait = draw(st.integers(0, 400)) * 1000
        kind, _ = draw(STEPS)
        seq = [call(iid, 1, "offered", start, queue=draw(st.sampled_from(["billing", "sales"])))]
        if kind == "answered" or kind == "answered_ended":
            seq.append(call(iid, 2, "answered", start + wait))
        if kind == "answered_ended":
            seq.append(call(iid, 3, "ended", start + wait + draw(st.integers(1, 900)) * 1000))
        if kind == "abandoned":
            seq.append(call(iid, 2, "abandoned", start + wait))
        if kind == "transferred":
            seq.append(call(iid, 2, "transferred", start + wait, to_queue="sales"))
        for value in seq:
            placement = draw(st.sampled_from(["keyed", "keyless", "miskeyed", "elsewhere"]))
            right = key_partition(iid.encode(), PARTITIONS)
            key = {"keyed": iid.encode(), "keyless": None, "miskeyed": b"cust"}.get(placement, iid.encode())
            partition = (right + 1) % PARTITIONS if placement == "elsewhere" else \
                (right if placement == "keyed" else draw(st.integers(0, PARTITIONS - 1)))
            events.append((partition, value, key))
        if draw(st.booleans()):  # a duplicate delivery
            events.append(events[-1])
    order = draw(st.permutations(range(len(events))))
    counters = dict.fromkeys(range(PARTITIONS), 0)
    out = []
    for index in order:
        partition, value, key = events[index]
        out.append(("calls", partition, counters[partition], value, key))
        counters[partition] += 1
    return out


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic(), st.integers(1, 5))
def test_the_stage_gives_the_windows_the_old_ingest_and_lifecycle_path_gives(
        records: list[tuple[str, int, int, bytes, bytes | None]], batch: int) -> None:
    # Lateness past every event: which events are late depends on when each path
    # closes windows, not on what they count; closing comes after, on both.
    s = settings(allowed_lateness_seconds=10 * 86400.0)
    stage = PipelineStage(s, REKEY)
    by_partition: dict[int, list[Any]] = {}
    for topic, partition, offset, value, key in records:
        by_partition.setdefault(partition, []).append(Rec(key, value, offset))
    for partition, recs in sorted(by_partition.items()):
        for i in range(0, len(recs), batch):
            stage.on_batch("calls", partition, recs[i:i + batch], NOW)
    checkpoints = [stage.checkpoint()]
    back_from_rekey(stage, checkpoints[0])
    checkpoints.append(stage.checkpoint())
    assert not checkpoints[1].rekey  # a re-keyed record is never forwarded again
    old = old_path([(t, p, o, v) for t, p, o, v, _k in records], s)
    assert published(checkpoints) == open_windows(old)
    assert finals(stage.engines) == finals(old)


def test_open_agent_windows_go_out_at_most_every_agent_interval_queue_windows_every_checkpoint() -> None:
    from streams.stages.partials import AGENT_WINDOW_SECONDS

    def kinds(out: Checkpoint) -> set[str]:
        return {orjson.loads(m.value)["key"][2] if isinstance(m.value, bytes) else m.value["key"][2]
                for m in out.partials if (orjson.loads(m.value) if isinstance(m.value, bytes) else m.value)
                .get("kind") == "window"}

    stage = PipelineStage(settings(), REKEY)
    p = 0
    iid = iid_on(p)
    interval = int(AGENT_WINDOW_SECONDS * 1000)
    stage.on_batch("calls", p, [Rec(iid.encode(), call(iid, 1, "offered", T0), 0),
                                Rec(iid.encode(), call(iid, 2, "answered", T0 + 5_000), 1)], NOW)
    first = stage.checkpoint(NOW)
    assert kinds(first) == {"q", "a"}  # the first checkpoint sends both
    stage.on_batch("calls", p, [Rec(iid.encode(), call(iid, 3, "ended", T0 + 60_000), 2)], NOW + 200)
    soon = stage.checkpoint(NOW + 200)
    assert kinds(soon) == {"q"}  # the agent's windows changed too, but wait for the interval
    # ... and then go out, with what changed meanwhile, at the agent's turn (AgentRota:
    # once in the next interval, never sooner than an interval after the last)
    turns = [t for t in range(NOW + 400, NOW + 2 * interval + 1, 200) if kinds(stage.checkpoint(t)) == {"a"}]
    assert len(turns) == 1 and NOW + interval <= turns[0] < NOW + 2 * interval
    assert kinds(stage.checkpoint(NOW + 3 * interval)) == set()  # nothing changed since


def test_raw_events_are_kept_for_the_checkpoint_only_when_asked_and_events_are_counted() -> None:
    stage = PipelineStage(settings(), REKEY)
    iid = iid_on(0)
    stage.on_batch("calls", 0, [Rec(iid.encode(), call(iid, 1, "offered", T0), 0)], NOW)
    assert stage.records_since_checkpoint == 1
    assert len(stage.checkpoint().raw_events) == 1 and stage.records_since_checkpoint == 0
    stage.keep_raw_events = False  # compute role: the writer reads the raw events from the input
    stage.on_batch("calls", 0, [Rec(iid.encode(), call(iid, 2, "answered", T0 + 1000), 1)], NOW)
    out = stage.checkpoint()
    assert out.raw_events == [] and iid in out.interactions


def test_a_partition_that_has_not_reported_yet_holds_event_time_back() -> None:
    # Fresh start, a backlog: calls/1 (08:10) is read and checkpointed before calls/0,
    # which holds keyless D (08:00:30, interaction on partition 1). Nothing was idle yet.
    stage = PipelineStage(settings(source_idle_seconds=5.0, allowed_lateness_seconds=60.0), REKEY)
    d, t = iid_on(1, "d"), iid_on(1, "t")
    topic: dict[int, list[Rec]] = {}
    stage.on_batch("calls", 1, [Rec(t.encode(), call(t, 1, "offered", T0 + 600_000), 0)], NOW)
    rekey_topic(stage.checkpoint(), topic)
    for p, records in topic.items():
        stage.on_batch(REKEY, p, records, NOW)
    topic.clear()
    stage.on_batch("calls", 0, [Rec(None, call(d, 1, "offered", T0 + 30_000), 0)], NOW)
    rekey_topic(stage.checkpoint(), topic)
    for p, records in topic.items():
        stage.on_batch(REKEY, p, records, NOW)
    stage.checkpoint()
    assert stage.engines[1].record.late_events == 0


def test_a_worker_that_has_not_reported_holds_the_others_back_also_across_a_rebalance() -> None:
    # Two workers: A owns partitions 0 and 1 and has read all of its input; B owns 2 and 3,
    # started later, with a backlog. B's keyless D (08:00:30) belongs on partition 1.
    s = settings(source_idle_seconds=5.0, allowed_lateness_seconds=60.0)
    a, b = PipelineStage(s, REKEY), PipelineStage(s, REKEY)
    owner = {0: a, 1: a, 2: b, 3: b}
    topic: dict[int, list[Rec]] = {}
    read = dict.fromkeys(range(PARTITIONS), 0)

    def owned(stage: PipelineStage, caught_up: bool) -> dict[tuple[str, int], bool]:
        return {(t, p): caught_up for t in (*INPUT_TOPICS, REKEY) for p, o in owner.items() if o is stage}

    def round_trip(now_ms: int) -> None:
        """Each worker's checkpoint to <app>-rekey, then each reads its partitions of it."""
        for stage in (a, b):
            rekey_topic(stage.checkpoint(), topic)
        for p, records in topic.items():
            owner[p].on_batch(REKEY, p, records[read[p]:], now_ms)
            read[p] = len(records)

    a.on_tick(NOW - 5_000, owned(a, True))
    a.on_tick(NOW, owned(a, True))
    b.on_tick(NOW, owned(b, False))
    d, t = iid_on(1, "d"), iid_on(1, "t")
    a.on_batch("calls", 1, [Rec(t.encode(), call(t, 1, "offered", T0 + 600_000), 0)], NOW)
    round_trip(NOW)
    assert a.engines[1].record.watermark == 0  # B's partitions have not reported: held back
    # Partition 3 moves to A before B reported anything of it: nobody ever reported calls/3.
    record = b.engines[3].record
    b.revoke(3)
    owner[3] = a
    a.assign(3, record, now_ms=NOW)
    b.on_batch("calls", 2, [Rec(None, call(d, 1, "offered", T0 + 30_000), 0)], NOW + 1_000)
    b.on_tick(NOW + 1_000, owned(b, True))
    b.on_tick(NOW + 6_000, owned(b, True))
    for _ in range(2):
        round_trip(NOW + 6_000)
    # Everything of B is in; calls/3 (and chats/3, tickets/3) still unreported by A.
    assert {e.record.watermark for e in (*a.engines.values(), *b.engines.values())} == {0}
    a.on_tick(NOW + 6_000, owned(a, True))
    a.on_tick(NOW + 11_000, owned(a, True))
    for _ in range(2):
        round_trip(NOW + 11_000)
    assert {e.record.watermark for e in (*a.engines.values(), *b.engines.values())} == {T0 + 600_000}
    assert a.engines[1].record.late_events == 0
    assert a.engines[1].record.totals["billing|voice"]["offered"] == 1  # D, counted in the final 08:00
    assert a.interactions[d].partition == 1


# -- expiry and the clocks of the merge and FCR (decided here; streams/pipeline.py writes them)


def test_on_tick_expires_quiet_interactions_every_scan_interval_and_the_checkpoint_deletes_them() -> None:
    from streams.stages.pipeline import EXPIRY_SCAN_SECONDS

    stage = PipelineStage(settings(allowed_lateness_seconds=60.0), REKEY)
    idle_everywhere(stage)  # its first tick (NOW - idle) starts the scan interval
    done, waiting, later = iid_on(0, "e"), iid_on(0, "w"), iid_on(0, "m")
    stage.on_batch("calls", 0, [Rec(done.encode(), call(done, 1, "offered", T0), 0),
                                Rec(done.encode(), call(done, 2, "abandoned", T0 + 3_000), 1),
                                Rec(waiting.encode(), call(waiting, 1, "offered", T0 + 1_000), 2),
                                # event time to the next morning: the 5 Jan day window is final
                                Rec(later.encode(), call(later, 1, "offered", T0 + 17 * 3_600_000), 3)], NOW)
    clocks_back(stage, stage.checkpoint(NOW))
    due = NOW - stage.idle_ms + int(EXPIRY_SCAN_SECONDS * 1000)
    stage.on_tick(due - 1, EVERY)
    assert stage.checkpoint(due - 1).expired == [] and done in stage.interactions
    stage.on_tick(due, EVERY)
    out = stage.checkpoint(due)
    # Ended and every window final: forgotten. Still waiting (the horizon), or open: kept.
    assert out.expired == [(0, done)]
    assert done not in stage.interactions and {waiting, later} <= set(stage.interactions)
    assert out.records[0].expired == 1
    stage.on_tick(due + 1_000, EVERY)
    assert stage.checkpoint(due + 1_000).expired == []  # the next scan is an interval later


def test_the_checkpoint_reports_each_partitions_event_time_to_the_merge_and_fcr_once_it_moved() -> None:
    stage = PipelineStage(settings(), REKEY)
    idle_everywhere(stage)  # every engine, no event time yet: nothing to report
    out = stage.checkpoint(NOW)
    assert out.merge_clocks == {} and out.fcr_clocks == []
    iid = iid_on(1)
    stage.on_batch("calls", 1, [Rec(iid.encode(), call(iid, 1, "offered", T0), 0)], NOW)
    clocks_back(stage, stage.checkpoint(NOW))  # the clocks read back move every engine to T0
    out = stage.checkpoint(NOW)
    assert out.merge_clocks == {str(p): T0 for p in range(PARTITIONS)}
    assert [m.key for m in out.fcr_clocks] == [None]
    assert orjson.loads(out.fcr_clocks[0].value) == {"watermark": {f"lifecycle/{p}": T0 for p in range(PARTITIONS)}}
    again = stage.checkpoint(NOW)
    assert again.merge_clocks == {} and again.fcr_clocks == []  # nothing moved since
    record = stage.engines[2].record
    stage.revoke(2, forget_interactions=False)
    stage.assign(2, record, now_ms=NOW)  # given back, from its stored record: reported again
    assert stage.checkpoint(NOW).merge_clocks == {"2": T0}


def test_a_partition_with_records_left_to_read_is_not_idle_however_long_it_delivered_nothing() -> None:
    # A replay keyed by interaction, read by a worker that stalls (a slow ClickHouse write
    # holds the agent while the timers tick): calls/1 delivered up to 08:00:30 with more
    # fetched behind it, calls/0 is at 10:00. Silent for source_idle_seconds, calls/1 must
    # still hold event time back: "idle" by silence alone made its next records late.
    stage = PipelineStage(settings(source_idle_seconds=5.0, allowed_lateness_seconds=60.0), REKEY)
    idle_everywhere(stage)
    a, b, c = iid_on(0, "a"), iid_on(1, "b"), iid_on(1, "c")
    stage.on_batch("calls", 0, [Rec(a.encode(), call(a, 1, "offered", T0 + 7_200_000), 0)], NOW)
    stage.on_batch("calls", 1, [Rec(b.encode(), call(b, 1, "offered", T0 + 30_000), 0)], NOW)
    behind = {**EVERY, ("calls", 1): False}  # calls/1: records fetched, not yet delivered
    for at in range(NOW, NOW + 12_000, 1_000):
        stage.on_tick(at, behind)
        clocks_back(stage, stage.checkpoint(at), at)
    assert {e.record.watermark for e in stage.engines.values()} == {T0 + 30_000}
    stage.on_batch("calls", 1, [Rec(c.encode(), call(c, 1, "offered", T0 + 40_000), 1)], NOW + 12_000)
    assert stage.engines[1].record.late_events == 0
    # Read to its end, it goes idle like any other once silent for source_idle_seconds.
    for at in range(NOW + 12_000, NOW + 19_000, 1_000):
        stage.on_tick(at, EVERY)
        clocks_back(stage, stage.checkpoint(at), at)
    assert {e.record.watermark for e in stage.engines.values()} == {T0 + 7_200_000}


def test_a_partition_a_replay_has_begun_to_fill_holds_event_time_before_it_delivers() -> None:
    # A running worker, every input partition idle; a replay keyed by interaction starts.
    # calls/0's first records are read, calls/1's are there but not delivered yet: its old
    # idle report must not let calls/0 move event time past them.
    stage = PipelineStage(settings(source_idle_seconds=5.0, allowed_lateness_seconds=60.0), REKEY)
    idle_everywhere(stage)
    a, b = iid_on(0, "a"), iid_on(1, "b")
    stage.on_batch("calls", 0, [Rec(a.encode(), call(a, 1, "offered", T0 + 7_200_000), 0)], NOW)
    stage.reading(NOW, {**EVERY, ("calls", 1): False})  # what the shell tells before each checkpoint
    clocks_back(stage, stage.checkpoint(NOW))
    assert {e.record.watermark for e in stage.engines.values()} == {0}
    stage.on_batch("calls", 1, [Rec(b.encode(), call(b, 1, "offered", T0 + 30_000), 0)], NOW + 200)
    stage.reading(NOW + 200, EVERY)
    clocks_back(stage, stage.checkpoint(NOW + 200), NOW + 200)
    assert {e.record.watermark for e in stage.engines.values()} == {T0 + 30_000}
    assert stage.engines[1].record.late_events == 0


def test_a_partition_that_looks_unread_for_good_stops_holding_event_time_after_idle_close() -> None:
    # A transactional producer's log ends in a commit marker the consumer never delivers:
    # calls/1 looks behind for good. It holds event time back as long as a quiet stream
    # would (idle_close_seconds), not forever.
    stage = PipelineStage(settings(source_idle_seconds=5.0, idle_close_seconds=30.0), REKEY)
    idle_everywhere(stage)
    a, b = iid_on(0, "a"), iid_on(1, "b")
    stage.on_batch("calls", 0, [Rec(a.encode(), call(a, 1, "offered", T0 + 7_200_000), 0)], NOW)
    stage.on_batch("calls", 1, [Rec(b.encode(), call(b, 1, "offered", T0 + 30_000), 0)], NOW)
    behind = {**EVERY, ("calls", 1): False}
    for at in range(NOW, NOW + 31_000, 1_000):
        stage.on_tick(at, behind)
        clocks_back(stage, stage.checkpoint(at), at)
        expected = T0 + 30_000 if at < NOW + 30_000 else T0 + 7_200_000
        assert {e.record.watermark for e in stage.engines.values()} == {expected}, at - NOW
