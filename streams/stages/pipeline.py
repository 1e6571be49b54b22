"""The pipeline stage: one pass over the input, per partition (docs/streaming-layer.md).

For each record of ``calls``, ``chats``, ``tickets`` and ``<app>-rekey`` on partition
*p*: decode it (dead-letter what EVENTS.md refuses), then either apply it to the
engine of *p*, or, when it does not belong on *p*, forward it to ``<app>-rekey``
keyed by its ``interaction_id``, which brings it back on the right partition. Event
time is tracked per input partition (``calls/p``, ``chats/p``, ``tickets/p``) without
control records in the input topics: after the events it forwarded, each partition's
owner writes its sources' event time as a clock record to every partition of
``<app>-rekey``, and an engine's event time moves only with the clocks it reads there,
its own included. So an event forwarded before a clock is applied before that clock
moves any engine (on one worker always: one producer writes both in order), and no
partition closes a window an event on its way back from ``<app>-rekey`` belongs to,
which its own, further input partition would have it do. Event time is the slowest
active input partition everywhere, as one engine over the whole input would have it,
and it moves only once every input partition has reported (a time, or idle): one not
heard of yet may be a backlog behind all the others.
Everything to write collects in a ``Checkpoint`` that
``checkpoint()`` hands out: the Faust agent around this class writes it, then
acknowledges the envelopes it covers.

No Faust here: tests drive it with plain records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, MutableMapping, Protocol

import orjson
from aiokafka.partitioner import murmur2

from ccpulse.config import Settings
from ccpulse.core.engine import PartitionEngine, PartitionRecord
from ccpulse.core.lifecycle import STEP_ORDER, Derivation, Fold, Interaction, Step
from ccpulse.core.watermark import InputWatermarks, input_sources, lifecycle_source
from ccpulse.core.windowing import Windowing
from ccpulse.log_limit import CountedLines
from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import Event, Rejection
from schemas.records import dead_letter, event_message, step_from_message, window_label
from sinks.prometheus import PipelineMetrics
from streams.stages.agent_facts import (ANSWER_STEPS, CLOCK_AGAIN_MS, answer_of, changed_facts, clock_fact,
                                        segment_facts)
from streams.stages.end_of_input import END_OF_INPUT_FIELD, EndOfInput, apply_end_of_input, closes_through
from streams.stages.fcr import WATERMARK_FIELD, contact_message
from streams.stages.io import Message
from streams.stages.partials import AgentRota, live_partial, window_partial
from streams.stages.validation import FAMILIES, decode_event, processing_error, too_long

log = logging.getLogger(__name__)

STAGE = "pipeline"
# A record of <app>-rekey with only this field is a clock: {source: [newest event time, idle]}
# of one partition's input sources (ccpulse/core/watermark.py), not an event.
CLOCK_FIELD = "clock"
# How often on_tick looks for interactions to forget: a pass reads every one this worker
# owns, and an interaction expires hours after its last step, so seconds do not matter.
EXPIRY_SCAN_SECONDS = 10.0


class Record(Protocol):
    """A consumed record, as Faust's messages and aiokafka's records both have it."""

    key: bytes | None
    value: bytes | None
    offset: int


@dataclass
class Checkpoint:
    """What must be written before the envelopes read since the last checkpoint are acknowledged."""

    rekey: list[Message] = field(default_factory=list)  # -> <app>-rekey
    dead_letters: list[Message] = field(default_factory=list)  # -> events.dead-letter
    # Accepted events for the raw store, as schemas.records.event_message builds them.
    raw_events: list[dict[str, Any]] = field(default_factory=list)
    contacts: list[Message] = field(default_factory=list)  # -> <app>-contacts
    interactions: dict[str, Interaction] = field(default_factory=dict)  # changed: each once
    records: dict[int, PartitionRecord] = field(default_factory=dict)  # partition -> its record
    partials: list[Message] = field(default_factory=list)  # -> <app>-window-partials
    # -> EVERY partition of <app>-rekey, after ``rekey`` (they cover the events forwarded)
    clocks: list[Message] = field(default_factory=list)
    # (partition, interaction id) forgotten by on_tick: deleted from the interactions table
    # after the changelog puts above (already out of the stage's mapping)
    expired: list[tuple[int, str]] = field(default_factory=list)
    # Event time of each partition that moved since it was last reported, for the merge clock
    # (source "<p>" -> ms; streams/stages/merge.py ClockSender), after the partials it covers.
    merge_clocks: dict[str, int] = field(default_factory=dict)
    # The same as FCR's clock -> EVERY partition of <app>-contacts, after the contacts.
    fcr_clocks: list[Message] = field(default_factory=list)
    # Answered segments that changed (contact / removal facts, keyed by agent id)
    # -> <app>-agent-facts, for the agent stage (docs/agents.md, "The join")
    agent_facts: list[Message] = field(default_factory=list)
    # The input clock and the queue channels seen -> EVERY partition of <app>-agent-facts,
    # after ``agent_facts`` (they cover them)
    agent_clocks: list[Message] = field(default_factory=list)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client's, aiokafka's and kafka-python's default partitioner
    give ``key`` (aiokafka.partitioner.DefaultPartitioner)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PipelineStage:
    def __init__(self, settings: Settings, rekey_topic: str, *,
                 interactions: MutableMapping[str, Interaction] | None = None,
                 metrics: PipelineMetrics | None = None,
                 hasher: CustomerIdHasher | None = None) -> None:
        self.settings = settings
        w = settings.windows
        self.windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
        self.rekey_topic = rekey_topic
        self.partitions = settings.kafka.partitions
        self.family_of = {settings.topics.name(attr): family for attr, family in FAMILIES.items()}
        # The input partitions every engine's event time waits for (not <app>-rekey: clocks speak for it).
        self.input_sources = input_sources(self.family_of, self.partitions)
        self.max_future_ms = int(settings.max_future_seconds * 1000)
        self.idle_ms = int(w.source_idle_seconds * 1000)
        self.idle_close_ms = int(w.idle_close_seconds * 1000)
        # Every interaction this worker owns, by id (the wrapper passes its table's data).
        self.interactions: MutableMapping[str, Interaction] = {} if interactions is None else interactions
        self.metrics = metrics
        self.hasher = hasher  # contacts for FCR are sent only once it is known
        self.engines: dict[int, PartitionEngine] = {}
        self._sources: dict[int, InputWatermarks] = {}
        # partition -> wall clock ms of its last applied event: how long its input has been quiet
        self._arrival: dict[int, int] = {}
        # partition -> (wall clock ms, event time) when the input last moved it (an applied
        # event, a clock read back): a quiet stream follows the wall clock from there. Not the
        # event time at the last event alone: a backlog read before every input partition has
        # reported is all applied at event time 0, and the clocks move it only afterwards.
        self._moved: dict[int, tuple[int, int]] = {}
        # partition -> source -> one past the last offset read: their sum orders versions
        self._positions: dict[int, dict[str, int]] = {}
        # partition -> its input sources' newest report, and the one last sent as a clock
        self._report: dict[int, dict[str, list]] = {}
        self._clock_sent: dict[int, dict[str, list]] = {}
        self._touched: set[int] = set()  # partitions whose record changed since the checkpoint
        # partition -> the event time last reported to the merge and FCR (checkpoint)
        self._time_reported: dict[int, int] = {}
        # lifecycle/<p> -> [p's event time, its input idle] last sent to the agent stage; when the
        # agent clock last went out (wall clock ms)
        self._facts_sent: dict[str, list] = {}
        self._agent_clock_ms: int | None = None
        self._expiry_due_ms: int | None = None  # when on_tick next looks for interactions to forget
        # whose changed open agent windows a checkpoint sends: each agent's at most every
        # AGENT_WINDOW_SECONDS, a slice of the agents at a time (all at once was a burst
        # every stage's flush and ClickHouse insert queued behind)
        self._agent_rota = AgentRota()
        # (queue, channel) seen, and those not told to the agent stage yet (queue -> channels):
        # it puts a queue's staffed time on each channel's record (docs/agents.md)
        self._queue_channels: set[tuple[str, str]] = set()
        self._channels_new: dict[str, list[str]] = {}
        # The raw events go to the store from the checkpoint in the all-in-one role only
        # (the writer role reads them from the input): not collected otherwise.
        self.keep_raw_events = True
        self.records_since_checkpoint = 0  # events applied since the last checkpoint
        self._out = Checkpoint()
        self._late = CountedLines(log.warning, "late events (their window was already final; "
                                  "counted in ccpulse_late_events_total, not in the window)")

    # -- partitions -------------------------------------------------------------

    def assign(self, partition: int, record: PartitionRecord | None = None,
               interactions: Iterable[Interaction] = (), now_ms: int = 0) -> PartitionEngine:
        """Own ``partition`` from now on: its engine rebuilt from what was persisted."""
        w = self.settings.windows
        record = record or PartitionRecord()
        engine = PartitionEngine(partition, self.windowing, w.allowed_lateness_seconds,
                                 self.settings.thresholds_for, w.interaction_horizon_seconds, record,
                                 self.settings.limits.max_steps_per_interaction, self.input_sources)
        interactions = list(interactions)
        engine.rebuild(interactions)
        self.engines[partition] = engine
        self._resend_agent_facts(engine, interactions)
        # Records left to read hold event time back for as long as a quiet stream would
        # (idle_close_seconds): past that, a stalled agent is no likelier than a log ending
        # in a transaction marker, which looks unread for good.
        self._sources[partition] = InputWatermarks(self.idle_ms, behind_limit_ms=max(self.idle_ms, self.idle_close_ms))
        self._arrival[partition] = now_ms
        self._moved[partition] = (now_ms, record.watermark)
        self._positions[partition] = {}
        return engine

    def _resend_agent_facts(self, engine: PartitionEngine, interactions: list[Interaction]) -> None:
        """The last segment of every interaction rebuilt, again: a crash between the changelog
        and the agent facts of one checkpoint reaching Kafka would lose those facts for good
        (the steps read again are duplicates then). The same facts, with a newer version.
        Only contacts still open or ended within the lateness: an older end changes only
        final windows of the agent stage, and a partition holds hours of interactions."""
        version = engine.record.last_offset + 1
        recent = engine.record.watermark - engine.lateness_ms
        for inter in interactions:
            fold = inter.fold()
            answer = answer_of(fold.last)
            if answer is not None and (answer[2] is None or answer[2] >= recent):
                engine.record.last_offset = version
                self._out.agent_facts += segment_facts(inter.interaction_id, inter.channel,
                                                       [(fold.segments - 1, fold.last)], version)

    def revoke(self, partition: int, forget_interactions: bool = True) -> None:
        """Another worker owns ``partition`` now; its interactions go with it (unless the
        caller's store keeps them: a Faust table drops them itself after recovery, and
        does not restore what it believes it still holds when the partition comes back)."""
        self.engines.pop(partition, None)
        self._sources.pop(partition, None)
        self._arrival.pop(partition, None)
        self._moved.pop(partition, None)
        self._positions.pop(partition, None)
        self._report.pop(partition, None)
        self._clock_sent.pop(partition, None)
        self._time_reported.pop(partition, None)  # its next owner reports it; if it comes back, so do we
        self._touched.discard(partition)
        if not forget_interactions:
            return
        for iid in [iid for iid, inter in self.interactions.items() if inter.partition == partition]:
            del self.interactions[iid]

    def _engine(self, partition: int, now_ms: int) -> PartitionEngine:
        engine = self.engines.get(partition)
        return engine if engine is not None else self.assign(partition, now_ms=now_ms)

    # -- input ----------------------------------------------------------------

    def on_batch(self, topic: str, partition: int, records: Iterable[Record], now_ms: int) -> None:
        """Every record of one envelope (one partition of one topic, in offset order)."""
        engine = self._engine(partition, now_ms)
        source = f"{topic}/{partition}"
        sources = self._sources[partition]
        positions = self._positions[partition]
        rekeyed = topic == self.rekey_topic
        # Versions order a window's partials: the sum of every source's position grows
        # with each record read. Only this source moves within the batch.
        others = sum(position for name, position in positions.items() if name != source)
        n = 0
        for record in records:
            n += 1
            positions[source] = record.offset + 1
            try:
                self._one(engine, topic, partition, source, sources, rekeyed, record, now_ms,
                          others + record.offset + 1)
            except Exception as exc:  # one record's failure costs that record only (issue 14)
                self._failed(topic, partition, record, exc, now_ms)
        if n and self.metrics is not None and not rekeyed:  # once per batch: labels() takes a lock
            self.metrics.events_consumed.labels(topic).inc(n)
        # How far this source has been read, also when none of it was applied (all
        # forwarded): told to every engine by the next checkpoint's clock.
        self._note(partition, sources.report(now_ms))

    def _note(self, partition: int, report: dict[str, list] | None) -> None:
        if report is not None:
            self._report[partition] = report

    def _one(self, engine: PartitionEngine, topic: str, partition: int, source: str,
             sources: InputWatermarks, rekeyed: bool, record: Record, now_ms: int, version: int) -> None:
        raw, origin = record.value, (topic, partition, record.offset)
        if rekeyed:
            doc = orjson.loads(raw)  # type: ignore[arg-type]
            if CLOCK_FIELD in doc:  # another partition's input event time (see the module docstring)
                before = engine.record.watermark
                engine.observe(doc[CLOCK_FIELD])
                if engine.record.watermark != before:
                    self._moved[partition] = (now_ms, engine.record.watermark)
                self._touched.add(partition)
                return
            if END_OF_INPUT_FIELD in doc:  # a replay's end (streams/stages/end_of_input.py)
                self._end_of_input(engine, partition, sources, doc[END_OF_INPUT_FIELD], now_ms)
                return
            origin = (str(doc["source"][0]), int(doc["source"][1]), int(doc["source"][2]))
            raw = doc["payload"].encode("utf-8")
        result = decode_event(raw, self.family_of.get(origin[0], "call"), now_ms, self.max_future_ms,
                              self.windowing)
        if isinstance(result, Rejection):
            self._dead_letter(record.key, raw, result, origin, now_ms)
            return
        if not rekeyed:  # a forwarded event's time is its input partition's, told by clocks
            sources.seen(source, result.occurred_at_ms, now_ms)
        key = result.interaction_id.encode()
        if not rekeyed and (record.key != key or not self._belongs(result.interaction_id, key, partition)):
            # Keyless, keyed otherwise, or placed by another partitioner: the events of
            # one interaction must meet on one partition. (A re-keyed record is applied
            # where it arrives: the same partitioner over the same partition count placed it.)
            self._out.rekey.append(Message(key, orjson.dumps(
                {"source": list(origin), "payload": raw.decode("utf-8")})))  # type: ignore[union-attr]
            return
        self._apply(engine, partition, result, raw, origin, now_ms, version)  # type: ignore[arg-type]

    def _end_of_input(self, engine: PartitionEngine, partition: int, sources: InputWatermarks, doc: Any,
                      now_ms: int) -> None:
        end = EndOfInput.parse(doc)
        through = closes_through(self.windowing, engine.lateness_ms, end.newest_ms)
        # Its sources' new report goes out with the next checkpoint's clock, like any other.
        apply_end_of_input(end, partition, self.family_of, sources, self._positions[partition], through, now_ms)

    def _apply(self, engine: PartitionEngine, partition: int, event: Event, raw: bytes,
               origin: tuple[str, int, int], now_ms: int, version: int) -> None:
        doc = event_message(event, raw, *origin)
        step = step_from_message(doc)
        iid = event.interaction_id
        inter = self.interactions.get(iid)
        if inter is None:
            inter = Interaction(iid, event.channel, partition=partition)
        # Positions start from nothing after a restart or a rebalance (only what this owner
        # read counts): above the persisted last version, so a change read now outranks
        # every partial and agent fact sent before for the same thing.
        version = max(version, engine.record.last_offset + 1)
        saved = inter.save()  # the interaction before the step, for the agent facts (no copy)
        # The engine keeps the highest version (see on_batch). No source: event time
        # moves only with the clocks (see the module docstring).
        outcome = engine.apply(inter, step, version, moves_time=False)
        if outcome.too_long:
            self._dead_letter(iid.encode(), raw, too_long(iid, engine.max_steps), origin, now_ms)
            return
        self._touched.add(partition)
        if outcome.duplicate:
            return
        self._agent_facts(inter, saved, step, outcome.fold, version)
        self.interactions[iid] = inter
        self._out.interactions[iid] = inter
        if self.keep_raw_events:
            self._out.raw_events.append(doc)
        self.records_since_checkpoint += 1
        self._arrival[partition] = now_ms
        self._moved[partition] = (now_ms, engine.record.watermark)
        if outcome.late_window is not None:
            self._late.note(window_label(outcome.late_window), now_ms / 1000)
        fold = outcome.fold
        if (self.hasher is not None and fold is not None and fold.customer and fold.segments
                and (step.customer or step.step == "offered")):
            # Only the steps that can create or change the contact send it again.
            # Customers meet on the FCR partition by a keyed hash (streams/fcr.py).
            self._out.contacts.append(contact_message(self.hasher, fold.customer, iid, fold.first_entered,
                                                      fold.first_queue, inter.channel))

    def _agent_facts(self, inter: Interaction, saved: bytes, step: Step, fold: Fold | None, version: int) -> None:
        """The facts of the answered segments ``step`` changed (docs/agents.md, "The join").
        Hot path: an in-order step that cannot touch an answer costs two comparisons."""
        if fold is None:
            return
        queue = fold.queue
        if queue is not None and (queue, inter.channel) not in self._queue_channels:
            self._queue_channels.add((queue, inter.channel))
            self._channels_new.setdefault(queue, []).append(inter.channel)
        # An in-order step leaves the fold at its own time and order; a refold at a later one.
        # (A tie of both, ordered by event id, is looked at below for the steps that matter:
        # among the others a tie reorders nothing an answer depends on.)
        kind = step.step
        in_order = fold.last_ts == step.ts and fold.tail_order == STEP_ORDER.get(kind, 9)
        if in_order:
            if kind not in ANSWER_STEPS:
                return
            if kind != "transferred" and not fold.orphans:
                # An answer or an end that took: it changed the last segment, at its own time.
                # (A tie that re-ordered two such steps leaves the loser an orphan: not here.)
                answer = answer_of(fold.last)
                if answer is not None and step.ts in (answer[1], answer[2]):
                    self._out.agent_facts += segment_facts(inter.interaction_id, inter.channel,
                                                           [(fold.segments - 1, fold.last)], version)
                return
        before = Interaction(inter.interaction_id, inter.channel)
        before.restore(saved)
        if in_order:
            prior = before.fold()
            if not prior.count or before.follows(prior, step):
                # Only the segment it found open can change: the step folded again on a
                # copy says how (the engine's own code, so the same answer).
                seg, index = prior.last, prior.segments - 1
                if seg is None:
                    return
                was = {index: replace(seg)}
                prior.step(step, Derivation([], 0, False))
                self._out.agent_facts += changed_facts(inter.interaction_id, inter.channel, was, {index: seg}, version)
                return
        # Out of order: any segment may have changed, and an answer may have moved.
        old = dict(enumerate(before.derive().segments))
        self._out.agent_facts += changed_facts(inter.interaction_id, inter.channel, old,
                                               dict(enumerate(inter.derive().segments)), version)

    def _belongs(self, iid: str, key: bytes, partition: int) -> bool:
        """Whether ``key``, ``iid`` encoded, hashes to ``partition``. An interaction held for
        this partition was checked with its first event: murmur2 is pure Python (about 2% of
        a worker), and a cache of every open key beside the table cost 10 MB with 100,000
        open (tests/test_pipeline_memory.py)."""
        inter = self.interactions.get(iid)
        if inter is not None and inter.partition == partition:
            return True
        return key_partition(key, self.partitions) == partition

    def _dead_letter(self, key: bytes | None, raw: bytes | None, rejection: Rejection,
                     origin: tuple[str, int, int], now_ms: int) -> None:
        if self.metrics is not None:
            self.metrics.events_invalid.labels(rejection.reason).inc()
            self.metrics.dead_lettered.inc()
        self._out.dead_letters.append(Message(key, dead_letter(raw, rejection, *origin, now_ms)))

    def _failed(self, topic: str, partition: int, record: Record, exc: Exception, now_ms: int) -> None:
        raw, origin = record.value, (topic, partition, record.offset)
        if topic == self.rekey_topic:
            try:  # the input record behind it, when the wrapper can be read
                doc = orjson.loads(raw)  # type: ignore[arg-type]
                raw, origin = doc["payload"].encode("utf-8"), (str(doc["source"][0]), int(doc["source"][1]),
                                                                int(doc["source"][2]))
            except Exception:  # noqa: BLE001 - the record stands for itself
                pass
        self._dead_letter(record.key, raw, processing_error(STAGE, exc), origin, now_ms)
        log.error("dead-lettered %s[%d]@%d: %s", origin[0], origin[1], origin[2],
                  processing_error(STAGE, exc).detail, exc_info=exc)

    # -- time -----------------------------------------------------------------

    def reading(self, now_ms: int, caught_up: Mapping[tuple[str, int], bool]) -> None:
        """``caught_up``: every input partition (topic, partition) assigned to this worker,
        and whether it has nothing left to read. Told at each tick and before each
        checkpoint: a partition a replay has just begun to fill must be reported active in
        the same clock as the first records read on the others, or they move event time
        past its records. A partition without an engine yet (not rebuilt) is left to on_tick."""
        for (topic, partition), done in caught_up.items():
            sources = self._sources.get(partition)
            if sources is not None and topic != self.rekey_topic:  # rekey: clocks speak for it
                sources.assigned(f"{topic}/{partition}", now_ms, done)
        for partition, sources in self._sources.items():
            self._note(partition, sources.report(now_ms))

    def on_tick(self, now_ms: int, caught_up: Mapping[tuple[str, int], bool]) -> None:
        """Move event time and close windows. ``caught_up``: as ``reading`` takes it."""
        for _topic, partition in caught_up:
            self._engine(partition, now_ms)
        self.reading(now_ms, caught_up)
        self._late.flush(now_ms / 1000)
        for partition, engine in self.engines.items():
            before = (engine.record.watermark, engine.record.final_through)
            moved_at, moved_to = self._moved[partition]
            if now_ms - self._arrival[partition] >= self.idle_close_ms and moved_to and engine.input_idle():
                # Nothing applied for a while and nothing left to read anywhere: event time
                # follows the wall clock, so the last windows of a quiet stream still close.
                engine.advance(moved_to + now_ms - moved_at)
            self._close(partition, engine, self._out.partials)
            if (engine.record.watermark, engine.record.final_through) != before:
                self._touched.add(partition)
        if self._expiry_due_ms is None:
            self._expiry_due_ms = now_ms + int(EXPIRY_SCAN_SECONDS * 1000)
        elif now_ms >= self._expiry_due_ms:
            self._expiry_due_ms = now_ms + int(EXPIRY_SCAN_SECONDS * 1000)
            self._expire()

    def _expire(self) -> None:
        """Forget the interactions whose windows are all final and that went quiet."""
        for iid, inter in list(self.interactions.items()):
            engine = self.engines.get(inter.partition) if inter is not None else None
            if engine is None or engine.record.watermark - inter.last_ts < engine.lateness_ms:
                continue  # still active: the cheap test first, the derivation only if needed
            if engine.expirable(inter):
                self._end_open_contact(engine, inter)
                engine.count_expired(inter)
                del self.interactions[iid]
                self._out.expired.append((inter.partition, iid))
                self._touched.add(inter.partition)

    def _end_open_contact(self, engine: PartitionEngine, inter: Interaction) -> None:
        """An interaction forgotten while answered and not ended: its agent's contact ends
        at its answer + the horizon (the same whenever the scan runs), or the agent would
        stay on contact for good. The agent core caps an open contact there already
        (``AgentCore.upsert``), so this end changes no window it has closed since."""
        fold = inter.fold()
        answer = answer_of(fold.last)
        if answer is None or answer[2] is not None:
            return
        seg = replace(fold.last, ended=answer[1] + engine.horizon_ms)
        engine.record.last_offset += 1  # above every fact sent of it (see _apply)
        self._out.agent_facts += segment_facts(inter.interaction_id, inter.channel,
                                               [(fold.segments - 1, seg)], engine.record.last_offset)

    def _close(self, partition: int, engine: PartitionEngine, partials: list[Message]) -> None:
        """The final partials of every window the watermark has passed by its lateness."""
        for snap in engine.close():
            partials.append(Message(*window_partial(
                partition, snap, self.windowing.end(snap.key[0], snap.key[1]), engine.record.watermark)))

    # -- output ---------------------------------------------------------------

    def checkpoint(self, now_ms: int | None = None) -> Checkpoint:
        """Everything to write since the last checkpoint, each changed interaction once.
        Changed open agent windows go out at most every ``AGENT_WINDOW_SECONDS`` of
        ``now_ms``, a slice of the agents at a time (every time without it); final ones
        at once, from ``on_tick`` or here when clocks read since moved event time."""
        out, self._out = self._out, Checkpoint()
        self.records_since_checkpoint = 0
        agents = None if now_ms is None else self._agent_rota.takes(self._agent_rota.due(now_ms))
        for partition, engine in self.engines.items():
            watermark = engine.record.watermark
            if engine.record.final_through < watermark:
                # Clocks read since the tick moved event time: what they close goes out final
                # now, not open first (catching up, nearly every window; see take_dirty).
                self._close(partition, engine, out.partials)
                self._touched.add(partition)
            for snap in engine.take_dirty(agents):
                out.partials.append(Message(*window_partial(
                    partition, snap, self.windowing.end(snap.key[0], snap.key[1]), watermark)))
                self._touched.add(partition)
            for (queue, channel), live in engine.take_live():
                out.partials.append(Message(*live_partial(partition, queue, channel, live,
                                                          engine.version(False), watermark)))
        # One clock for every partition that has news: an engine computes event time once
        # per clock, and between two of them it saw one partition's new report beside the
        # other's stale one (an idle partition that has since begun to fill).
        clock: dict[str, list] = {}
        for partition, report in self._report.items():
            if self._clock_sent.get(partition) != report:
                self._clock_sent[partition] = report
                clock.update(report)
        if clock:
            out.clocks.append(Message(None, orjson.dumps({CLOCK_FIELD: clock})))
        # The agent stage waits for the same sources, and for each partition's own event time
        # (-1 before it has one), sent after the facts it covers: an input clock runs ahead of
        # the facts of the events forwarded through <app>-rekey (docs/agents.md, "The join").
        # Whole, and again once CLOCK_AGAIN_MS passed: an idle claim moves its event time only
        # as far as anything had reached where it read the claim (AgentStage.claims).
        facts = {lifecycle_source(p): [engine.record.watermark or -1, engine.input_idle()]
                 for p, engine in self.engines.items()}
        again = now_ms is not None and (self._agent_clock_ms is None
                                        or now_ms - self._agent_clock_ms >= CLOCK_AGAIN_MS)
        if clock or facts != self._facts_sent or self._channels_new or (again and facts):
            whole = {source: value for report in self._report.values() for source, value in report.items()}
            whole.update(facts)
            out.agent_clocks.append(clock_fact(whole, self._channels_new))
            self._facts_sent, self._channels_new = facts, {}
            if now_ms is not None:
                self._agent_clock_ms = now_ms
        # Taken with the partials above, which cover it (every window it closes is among
        # them): the merge forgets a final window, and FCR decides a contact, only behind it.
        for partition, engine in self.engines.items():
            watermark = engine.record.watermark
            if watermark and self._time_reported.get(partition) != watermark:
                self._time_reported[partition] = watermark
                out.merge_clocks[str(partition)] = watermark
        if out.merge_clocks:
            out.fcr_clocks.append(Message(None, orjson.dumps(
                {WATERMARK_FIELD: {lifecycle_source(int(p)): wm for p, wm in out.merge_clocks.items()}})))
        out.records = {p: self.engines[p].record for p in sorted(self._touched) if p in self.engines}
        self._touched.clear()
        return out

