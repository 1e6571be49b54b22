"""The agent stage: agent presence joined with contacts, per partition (docs/agents.md).

It reads two co-partitioned topics, both keyed by ``agent_id``:

- ``agents``: presence events (EVENTS.md "Agents"), decoded with ``decode_agent``; a
  refused one is dead-lettered with its reason. One not keyed by its agent id, or not on
  that key's partition, is forwarded to ``<app>-agent-facts`` keyed by it (as the
  pipeline forwards to ``<app>-rekey``), so every fact of an agent meets on one partition.
- ``<app>-agent-facts``: what the pipeline says about agents (``contact_fact`` /
  ``removal_fact``: one versioned upsert per answered segment, sent when it is answered,
  ended or retracted), forwarded presence events, and clocks (``clock_fact``: input
  partitions' event time, every partition's own sources, as the pipeline's clocks).

Event time is the slowest active source among all the clocks read, once every expected
source (each partition of the input topics and of ``agents``) has reported, and behind
each pipeline partition's own event time (``lifecycle/<p>``): no window closes while a
pipeline partition may still send a contact for it. An idle claim counts only as of
where it was read (``claims``).

One ``AgentCore`` (ccpulse/core/agents.py) per partition holds the timelines. ``on_batch``
and ``on_tick`` return an ``AgentOutput``: the changed agents (one table entry each,
``Timeline.to_doc``), the partition record (event time, sources, queue channels), and a
partial per changed window for the merge stage, versioned by event time (a final one is
sent after every open one of its window, also after a restore). No Faust here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, MutableMapping

import orjson

from ccpulse.config import Settings
from ccpulse.core.agents import (ANY_CHANNEL, PRESENCE_SEEN, AgentCore, Contact, Presence, Timeline, WindowChange,
                                 WindowKey)
from ccpulse.core.kpis import AGENT, QUEUE, WindowAgg, kpi_figures
from ccpulse.core.watermark import InputWatermarks, input_sources, lifecycle_source, low_watermark
from ccpulse.core.windowing import Windowing
from schemas.events import AgentEvent, Rejection, decode_agent
from schemas.records import dead_letter, window_record, window_record_key
from sinks.prometheus import PipelineMetrics
from streams.stages.agent_facts import (CHANNELS_FIELD, CLOCK_AGAIN_MS, CLOCK_FIELD, CONTACT_FIELD, FACTS_FIELD,
                                        PRESENCE_FIELD,
                                        REMOVED_FIELD, clock_fact, contact_fact, removal_fact, segment_facts)
from streams.stages.io import Consumed, Failure, Message, TablePut
from streams.stages.partials import AgentRota, agents_live_partial, agents_source
from streams.stages.pipeline import key_partition
from streams.stages.validation import FAMILIES

STAGE = "agents"
# Open queue windows go out at most this often (wall clock ms), as the merge publishes
# them (once a second per key, METRICS.md); an agent's open windows every
# AGENT_WINDOW_SECONDS, a slice of the agents at a time (AgentRota).
QUEUE_OPEN_EVERY_MS = 1000
# Live counts are looked at (every agent's situation) at most this often (wall clock ms):
# kpi.queue-state changes at most once a second per key (METRICS.md).
LIVE_EVERY_MS = 1000


@dataclass
class AgentOutput:
    """What must be written before the records behind it are acknowledged, in this order."""

    forwards: list[Message] = field(default_factory=list)  # -> <app>-agent-facts
    dead_letters: list[Message] = field(default_factory=list)  # -> events.dead-letter
    agents: list[TablePut] = field(default_factory=list)  # agent -> {"p", "t"}, each changed agent once
    records: list[TablePut] = field(default_factory=list)  # str(partition) -> its record
    partials: list[Message] = field(default_factory=list)  # queue windows -> <app>-window-partials
    # Its own agents' windows, whole records -> kpi.agents (``_partials``: no other stage has
    # a part of them, so they do not go through the merge)
    agent_windows: list[Message] = field(default_factory=list)
    live: list[Message] = field(default_factory=list)  # agents_live partials -> <app>-window-partials
    clocks: list[Message] = field(default_factory=list)  # -> EVERY partition of <app>-agent-facts
    failures: list[Failure] = field(default_factory=list)


@dataclass
class _Partition:
    core: AgentCore
    own: InputWatermarks  # this partition of `agents`, as a source of event time
    sources: dict[str, list] = field(default_factory=dict)  # every clock read: source -> [newest, idle]
    channels: dict[str, set[str]] = field(default_factory=dict)  # queue -> channels seen
    changed: set[str] = field(default_factory=set)  # agents changed since the last output
    touched: bool = False
    queue_sent_ms: int = -QUEUE_OPEN_EVERY_MS  # wall clock of the last send of open queue windows
    rota: AgentRota = field(default_factory=AgentRota)
    # (wall clock ms, event time) when input last moved event time or changed an agent
    active: tuple[int, int | None] = (0, None)
    # (queue, channel) -> the live counts last sent (None: sent before a restore, not known)
    live_sent: dict[tuple[str, str], dict[str, int] | None] = field(default_factory=dict)
    live_ms: int = -LIVE_EVERY_MS  # wall clock of the last look at the live counts
    # source -> the newest time any source waited for had reached in this partition's clocks
    # when the source was last said: how far its idle claim lets event time go (``claims``).
    # In memory only: a claim stored before a restore lets it go no further than its own time.
    licence: dict[str, int] = field(default_factory=dict)
    reported: dict[str, list] = field(default_factory=dict)  # `own`'s last report


class AgentStage:
    def __init__(self, settings: Settings, facts_topic: str,
                 agents: MutableMapping[str, dict[str, Any] | None],
                 records: MutableMapping[str, dict[str, Any] | None],
                 metrics: PipelineMetrics | None = None) -> None:
        """``agents``, ``records``: the agent table's and the partition records' data."""
        self.metrics = metrics
        # Its agent windows hold time in state only: their contact figures (0 and null)
        # are the same for every record (``_partials``).
        self._agent_thresholds = settings.thresholds_for("", ANY_CHANNEL)
        self._agent_figures = kpi_figures(WindowAgg(), self._agent_thresholds)
        w = settings.windows
        self.windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
        self.lateness_ms = int(w.allowed_lateness_seconds * 1000)
        # An open contact counts at most this long after its answer (AgentCore.capped).
        self.horizon_ms = int(w.interaction_horizon_seconds * 1000)
        self.idle_ms = int(w.source_idle_seconds * 1000)
        self.idle_close_ms = int(w.idle_close_seconds * 1000)
        self.max_future_ms = int(settings.max_future_seconds * 1000)
        self.partitions = settings.kafka.partitions
        self.agents_topic = settings.topics.name("agents")
        self.facts_topic = facts_topic
        # Event time waits for every partition of the contact topics and of `agents`.
        inputs = [settings.topics.name(attr) for attr in FAMILIES] + [self.agents_topic]
        self.expected = input_sources(inputs, self.partitions)
        # And for each pipeline partition's own event time: the facts of the events it applies
        # from <app>-rekey come after their input clock said they were read (docs/agents.md).
        # Waited for once reported: the pipeline sends it in the clock with its first input report.
        self.pipelines = frozenset(lifecycle_source(p) for p in range(self.partitions))
        self.table = agents
        self.records = records
        self.parts: dict[int, _Partition] = {}
        self.clock_ms = 0  # wall clock of the last clock of `agents` sent
        if metrics is not None:
            # /metrics reads the seconds in each state from the cores at scrape time.
            metrics.watch_agents(self.state_totals)

    # -- partitions -------------------------------------------------------------

    def assign(self, partition: int) -> AgentCore:
        """Own ``partition``: its core rebuilt from the tables (windows are derived)."""
        stored = self.records.get(str(partition)) or {}
        core = AgentCore.restore(self.windowing, self.lateness_ms, {
            "now": stored.get("now"), "totals": stored.get("totals", []), "known": stored.get("known", []),
            "agents": {a: e["t"] for a, e in list(self.table.items()) if e is not None and e["p"] == partition}},
            self.horizon_ms)
        self.parts[partition] = _Partition(
            # Records left to read hold event time for as long as the pipeline lets them
            # (a log ending in a transaction marker looks unread for good).
            core, InputWatermarks(self.idle_ms, behind_limit_ms=max(self.idle_ms, self.idle_close_ms)),
            dict(stored.get("sources", {})),
            {q: set(chs) for q, chs in stored.get("channels", {}).items()},
            live_sent={(q, ch): None for q, ch in stored.get("live", [])})
        return core

    def revoke(self, partition: int) -> None:
        self.parts.pop(partition, None)

    def _part(self, partition: int) -> _Partition:
        part = self.parts.get(partition)
        if part is None:
            self.assign(partition)
            part = self.parts[partition]
        return part

    # -- input ----------------------------------------------------------------

    def on_batch(self, records: Iterable[Consumed], now_ms: int) -> AgentOutput:
        """Records of ``agents`` and ``<app>-agent-facts``, each partition's in offset order.
        ``now_ms``: the wall clock (the future bound of EVENTS.md, idle sources)."""
        out = AgentOutput()
        for record in records:
            try:
                self._one(record, now_ms, out)
            except Exception as exc:  # one record's failure costs that record only (issue 14)
                out.failures.append(Failure(record.message, exc))  # dead-lettered by the shell
        if self.metrics is not None and out.dead_letters:
            self.metrics.dead_lettered.inc(len(out.dead_letters))
        return self._output(out, now_ms)

    def _one(self, record: Consumed, now_ms: int, out: AgentOutput) -> None:
        part = self._part(record.partition)
        if record.topic == self.agents_topic:
            self._presence(part, record, record.value, (record.topic, record.partition, record.offset),
                           now_ms, out, forwarded=False)
            return
        doc = orjson.loads(record.value)
        if CLOCK_FIELD in doc:
            # Read whole before anything changes: a malformed clock moves no source.
            report = {str(source): _fields(f"{CLOCK_FIELD}[{source!r}]", value, (int, bool))
                      for source, value in doc[CLOCK_FIELD].items()}
            channels = {str(q): [str(ch) for ch in chs] for q, chs in doc.get(CHANNELS_FIELD, {}).items()}
            for source, (ts, idle) in report.items():
                held = part.sources.get(source)
                part.sources[source] = [max(ts, held[0]) if held else ts, idle]
            newest = self._newest(part)  # one clock is one snapshot of its sender's sources
            for source in report:
                part.licence[source] = newest
            for queue, names in channels.items():
                self._channels(part, queue, names)
            part.touched = True
        elif FACTS_FIELD in doc:  # the pipeline's facts of one checkpoint for this partition
            facts = doc[FACTS_FIELD]
            if not isinstance(facts, list):
                raise ValueError(f"{FACTS_FIELD}: a list of facts expected")
            failed: Exception | None = None
            for fact in facts:  # one fact's failure costs that fact (the message is dead-lettered once)
                try:
                    if not isinstance(fact, dict) or not self._fact(part, fact):
                        raise ValueError(f"{FACTS_FIELD}: each fact needs one of {CONTACT_FIELD}, {REMOVED_FIELD}")
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the others
                    failed = failed or exc
            if failed is not None:
                raise failed
        elif self._fact(part, doc):
            pass
        elif PRESENCE_FIELD in doc:
            source = doc[PRESENCE_FIELD]["source"]
            self._presence(part, record, doc[PRESENCE_FIELD]["payload"].encode(), tuple(source),  # type: ignore[arg-type]
                           now_ms, out, forwarded=True)
        else:
            raise ValueError(f"an {self.facts_topic} message needs one of {CONTACT_FIELD}, {REMOVED_FIELD}, "
                             f"{PRESENCE_FIELD}, {CLOCK_FIELD}")

    def _fact(self, part: _Partition, doc: dict[str, Any]) -> bool:
        """A contact or removal fact applied; False if ``doc`` is neither."""
        if CONTACT_FIELD in doc:
            agent, iid, seg, contact = _contact(doc[CONTACT_FIELD])
            self._channels(part, contact.queue, [contact.channel])
            if part.core.upsert(agent, (iid, seg), contact):
                part.changed.add(agent)
            return True
        if REMOVED_FIELD in doc:
            agent, iid, seg, version, answered = _fields(REMOVED_FIELD, doc[REMOVED_FIELD], (str, str, int, int, int))
            if part.core.remove(agent, (iid, seg), version, answered):
                part.changed.add(agent)
            return True
        return False

    def _presence(self, part: _Partition, record: Consumed, raw: bytes, origin: tuple[str, int, int],
                  now_ms: int, out: AgentOutput, forwarded: bool) -> None:
        event = decode_agent(raw, now_ms, self.max_future_ms)
        if isinstance(event, Rejection):
            if self.metrics is not None:
                self.metrics.events_invalid.labels(event.reason).inc()
            out.dead_letters.append(Message(record.message.key if record.message is not None else None,
                                            dead_letter(raw, event, *origin, now_ms)))
            return
        if not forwarded:
            part.own.seen(f"{record.topic}/{record.partition}", event.occurred_at_ms, now_ms)
            key = event.agent_id.encode()
            given = getattr(record.message, "key", key) if record.message is not None else key
            if given != key or key_partition(key, self.partitions) != record.partition:
                out.forwards.append(Message(key, orjson.dumps(
                    {PRESENCE_FIELD: {"source": list(origin), "payload": raw.decode("utf-8")}})))
                return
        known = len(part.core.known)
        if part.core.apply(event.agent_id, presence(event)):
            part.changed.add(event.agent_id)
        if len(part.core.known) != known:
            part.touched = True  # the partition record keeps the queues known

    def _channels(self, part: _Partition, queue: str, channels: Iterable[str]) -> None:
        known = part.channels.setdefault(queue, set())
        new = set(channels) - known
        if new:
            known |= new
            part.touched = True
            # Open windows of the queue go out again, on the new channel too.
            part.core.mark_queue(queue)

    # -- time -----------------------------------------------------------------

    def on_tick(self, now_ms: int, caught_up: Mapping[tuple[str, int], bool] | None = None) -> AgentOutput:
        """The wall clock: own sources' idleness, and event time from every clock read.
        ``caught_up``: every partition of ``agents`` assigned here, and whether it has
        nothing left to read (one that never delivers is reported idle, as the pipeline's
        sources are: without it, a center sending no agent events would stop event time)."""
        for (topic, partition), done in (caught_up or {}).items():
            if topic == self.agents_topic:
                self._part(partition).own.assigned(f"{topic}/{partition}", now_ms, done)
        return self._output(AgentOutput(), now_ms)

    def event_time(self, partition: int) -> int | None:
        """The slowest active source of ``partition``'s clocks, once every expected one reported.
        As the engine takes them (``PartitionEngine.observe``): an active source with records
        waiting and no time of its own (-1: a replay just began to fill it) holds event
        time where it is, and a name no longer expected (another config) holds nothing.
        Dropping the -1 ones let agent events run ahead of contacts still unread."""
        part = self.parts[partition]
        if not self.expected <= part.sources.keys():
            return None
        value = low_watermark(self.claims(part).values())
        return value if value >= 0 else None

    def _waited(self, part: _Partition) -> list[str]:
        """The sources event time waits for: the expected ones and the pipeline partitions' own."""
        return [s for s in self.expected | (self.pipelines & part.sources.keys()) if s in part.sources]

    def _newest(self, part: _Partition) -> int:
        return max((part.sources[source][0] for source in self._waited(part)), default=-1)

    def claims(self, part: _Partition) -> dict[str, list]:
        """[newest, idle] of every source event time waits for. "Nothing left to read" is
        true when said, by a sender that has not seen what came since: it lets event time go
        only as far as any source had reached when it was said (its licence); past that, the
        source counts as active at its licence. Agent events read ahead of calls produced a
        moment later, or a claim stored before a restart, let event time pass those calls
        before the pipeline said it had them. Each sender says its clock again about every
        ``CLOCK_AGAIN_MS``, which moves the licence on."""
        newest = self._newest(part)
        out = {}
        for source in self._waited(part):
            ts, idle = part.sources[source]
            licence = part.licence.get(source, -1)
            out[source] = [ts, True] if idle and newest <= licence else [max(ts, licence) if idle else ts, False]
        return out

    def _all_idle(self, part: _Partition) -> bool:
        """Every source waited for said idle, as of now: nothing more is coming from any of them."""
        claims = self.claims(part)
        return self.expected <= claims.keys() and all(idle for _ts, idle in claims.values())

    # -- output ---------------------------------------------------------------

    def _output(self, out: AgentOutput, now_ms: int) -> AgentOutput:
        # Every owned partition of `agents` in one clock, whole, and again at least every
        # CLOCK_AGAIN_MS: a reader takes an idle claim only as of where it read it (``claims``).
        whole: dict[str, list] = {}
        news = False
        for part in self.parts.values():
            report = part.own.report(now_ms)
            if report is not None:
                part.reported, news = report, True
            whole.update(part.reported)
        if whole and (news or now_ms - self.clock_ms >= CLOCK_AGAIN_MS):
            self.clock_ms = now_ms
            out.clocks.append(clock_fact(whole))
        for partition, part in self.parts.items():
            event_time = self.event_time(partition)
            if event_time is not None and (part.core.now is None or event_time > part.core.now):
                part.core.advance(event_time)
                part.touched = True
                part.active = (now_ms, part.core.now)
            elif part.changed:
                part.active = (now_ms, part.core.now)
            else:
                moved_at, then = part.active
                quiet = now_ms - moved_at
                if then is not None and quiet >= self.idle_close_ms and self._all_idle(part):
                    # Nothing read for a while: event time follows the wall clock, as the
                    # pipeline's does, so the last windows of a quiet stream still close.
                    # Only once every source waited for says it has nothing left: one still
                    # active (a pipeline worker slow or restarting) may send contacts for
                    # these windows, and its own windows do not close either.
                    part.core.advance(then + quiet)
                    part.touched = True
            self._partials(partition, part, self._due(part, now_ms), now_ms, out)
            out.live += self._live(partition, part, now_ms)
            for agent in sorted(part.changed):
                out.agents.append(TablePut(partition, agent, {"p": partition, "t": part.core.agents[agent].to_doc()}))
            part.changed.clear()
            if part.touched:
                out.records.append(TablePut(partition, str(partition), self.record(partition)))
                part.touched = False
        for put in out.agents:
            self.table[put.key] = put.value
        for put in out.records:
            self.records[put.key] = put.value
        return out

    def record(self, partition: int) -> dict[str, Any]:
        part = self.parts[partition]
        return {"now": part.core.now, "sources": dict(part.sources),
                "channels": {q: sorted(chs) for q, chs in part.channels.items()},
                "totals": part.core.totals_doc(),
                "known": sorted(part.core.known),  # AgentCore.known: a gap is null until then
                # the queues whose live counts this partition said were not zero: a new owner
                # sends them again, zero if they are gone (the merge keeps what a source said)
                "live": sorted(list(key) for key in part.live_sent)}

    def _live(self, partition: int, part: _Partition, now_ms: int) -> list[Message]:
        """An ``agents_live`` partial per queue x channel whose counts changed since sent,
        once more with no counts when they went to zero."""
        if part.core.now is None or now_ms - part.live_ms < LIVE_EVERY_MS:
            return []
        part.live_ms = now_ms
        current = self.live(partition)
        out = [Message(*agents_live_partial(partition, queue, channel, current.get((queue, channel), {}),
                                            part.core.now))
               for queue, channel in sorted(current.keys() | part.live_sent.keys())
               if part.live_sent.get((queue, channel)) != current.get((queue, channel), {})]
        if current.keys() != part.live_sent.keys():
            part.touched = True
        part.live_sent = {key: counts for key, counts in current.items() if counts}
        return out

    def _due(self, part: _Partition, now_ms: int) -> list[WindowChange]:
        """Finals at once; open queue windows at most every ``QUEUE_OPEN_EVERY_MS``, an
        agent's open windows at most every ``AGENT_WINDOW_SECONDS``, a slice of the agents
        at a time (``AgentRota``). Reading open figures accrues every agent's time, so it
        is done only then (event time moves at every batch, and with it every staffed
        agent's current windows)."""
        if part.core.now is None:  # no event time yet: nothing is open, no turn is spent
            return part.core.take_finals()
        scopes = {QUEUE} if now_ms - part.queue_sent_ms >= QUEUE_OPEN_EVERY_MS else set()
        slices = part.rota.due(now_ms)
        if slices:
            scopes.add(AGENT)
        if not scopes:
            return part.core.take_finals()
        due = part.core.take(frozenset(scopes), part.rota.takes(slices))
        if any(not change.final and change.key[2] == QUEUE for change in due):
            part.queue_sent_ms = now_ms
        return due

    def _partials(self, partition: int, part: _Partition, changes: list[WindowChange], now_ms: int,
                  out: AgentOutput) -> None:
        """One partial per changed queue record key, to the merge, and one ``kpi.agents``
        record per changed agent window, published here. An agent window (channel
        ``ANY_CHANNEL``) has no other source: the pipeline's agent windows are per channel,
        and every fact of an agent meets on its one partition here. Through the merge, each
        was a partial, a changelog record of the merged table and a record, for a merge
        of one part (issue 16: a third of what a worker wrote for a center's agents).

        An agent serves a queue, not one of its channels: a queue's staffed, available and
        away time go on its record of every channel it is known on (on ANY_CHANNEL while
        none is), each with that channel's own on-contact and after-contact-work time: one
        partial holds both, since a partial replaces the source's previous one of its key."""
        changed = {change.key: change for change in changes}

        def counters(key: WindowKey) -> dict[str, int]:
            change = changed.get(key)
            held = change.counters if change is not None else part.core.windows.get(key, {})
            return {k: v for k, v in held.items() if v}

        outputs: dict[WindowKey, bool] = {}  # record key -> final
        for change in changes:
            size, start, scope, name, channel = change.key
            if scope == QUEUE and channel == ANY_CHANNEL:
                for ch in sorted(part.channels.get(name, ())) or [ANY_CHANNEL]:
                    outputs[(size, start, scope, name, ch)] = change.final
            else:
                outputs[change.key] = change.final
        now = part.core.now or 0
        for key, final in outputs.items():
            size, start, scope, name, channel = key
            counts = counters(key)
            end = self.windowing.end(size, start)
            if scope == AGENT:
                out.agent_windows.append(Message(window_record_key(key).encode(), window_record(
                    key, end, WindowAgg(counts), self._agent_thresholds, version=now, final=final,
                    now_ms=now_ms, figures=self._agent_figures)))
                continue
            if channel != ANY_CHANNEL:
                counts.update(counters((size, start, scope, name, ANY_CHANNEL)))
            out.partials.append(Message(window_record_key(key).encode(), {
                "kind": "window", "key": list(key), "partition": agents_source(partition), "version": now,
                "final": final, "watermark": now, "end": end,
                "agg": {"counts": counts, "tops": {}}}))

    def live(self, partition: int) -> dict[tuple[str, str], dict[str, int]]:
        """Agents per queue x channel in each state at ``partition``'s event time (the
        queue-level counts on every channel the queue is known on, as the windows), and
        ``PRESENCE_SEEN`` on every queue a presence event ever named here."""
        part = self.parts[partition]
        counts = part.core.live()
        for queue in part.core.known:
            counts.setdefault((queue, ANY_CHANNEL), Counter())[PRESENCE_SEEN] = 1
        out: dict[tuple[str, str], dict[str, int]] = {}
        for (queue, channel), c in counts.items():
            targets = [channel] if channel != ANY_CHANNEL else sorted(part.channels.get(queue, ())) or [ANY_CHANNEL]
            for ch in targets:
                out.setdefault((queue, ch), {}).update({k: v for k, v in c.items() if v})
        return out

    def state_totals(self) -> dict[int, dict[tuple[str, str], dict[str, int]]]:
        """Per owned partition, cumulative milliseconds per queue x channel and counter
        (``AgentCore.running_totals``), a queue's staffed, available and away time on
        every channel it is known on, as its window records carry them."""
        out: dict[int, dict[tuple[str, str], dict[str, int]]] = {}
        for partition, part in list(self.parts.items()):
            mine = out[partition] = {}
            for (queue, channel), counters in part.core.running_totals().items():
                targets = [channel] if channel != ANY_CHANNEL else sorted(part.channels.get(queue, ())) or [ANY_CHANNEL]
                for ch in targets:
                    into = mine.setdefault((queue, ch), {})
                    for name, ms in counters.items():
                        into[name] = into.get(name, 0) + ms
        return out

    # -- state ----------------------------------------------------------------

    def snapshot(self, partition: int) -> dict[str, Any]:
        """Everything ``restore`` needs: the partition record and every agent's timeline."""
        part = self.parts[partition]
        return {"record": self.record(partition),
                "agents": {a: t.to_doc() for a, t in part.core.agents.items()}}

    def restore(self, partition: int, snap: dict[str, Any]) -> None:
        self.records[str(partition)] = snap["record"]
        for agent, doc in snap["agents"].items():
            self.table[agent] = {"p": partition, "t": doc}
        self.assign(partition)


def _fields(name: str, values: Any, types: tuple[type, ...]) -> list[Any]:
    """``values`` checked against ``types`` (bools are not ints), read whole before any
    state changes: a malformed fact changes nothing and names what is wrong."""
    if not isinstance(values, list) or len(values) != len(types):
        raise ValueError(f"{name}: a list of {len(types)} values expected")
    for i, (value, kind) in enumerate(zip(values, types)):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{name}[{i}]: {kind.__name__} expected, got {type(value).__name__}")
    return values


def _contact(values: Any) -> tuple[str, str, int, Contact]:
    agent, iid, seg, version, queue, channel, answered, ended = _fields(
        CONTACT_FIELD, values, (str, str, int, int, str, str, int, object))
    if ended is not None and (not isinstance(ended, int) or isinstance(ended, bool) or ended < answered):
        raise ValueError(f"{CONTACT_FIELD}[7]: ended must be null or epoch ms not before answered")
    return agent, iid, seg, Contact(version, queue, channel, answered, ended)


def presence(event: AgentEvent) -> Presence:
    kind = event.type.split(".", 1)[1]
    return Presence(event.occurred_at_ms, event.event_id, kind, event.state, event.reason, event.queues)


__all__ = ["AgentStage", "AgentOutput", "Timeline", "contact_fact", "removal_fact", "clock_fact", "presence",
           "segment_facts"]
