"""Prometheus ``/metrics``: KPI counters and wait histograms, plus pipeline health.

KPI series are *read from the engines' state* at scrape time rather than
incremented per event: a restarted or newly assigned worker exposes the same
cumulative values the previous owner did (nothing counted twice after a replay),
and a partition this worker gave up simply stops being collected. Each series
carries ``partition`` so ``sum without (instance, partition)`` aggregates across
workers; labels never carry customer or interaction ids.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ccpulse.core.agents import ACW_MS, AVAILABLE_MS, AWAY_MS, ON_CONTACT_MS, STAFFED
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.kpis import WAIT_BUCKETS_S

log = logging.getLogger(__name__)

# The ``state`` label of the agent series -> the agent core's millisecond counter.
AGENT_STATES = {"staffed": STAFFED, "available": AVAILABLE_MS, "on_contact": ON_CONTACT_MS,
                "after_contact_work": ACW_MS, "away": AWAY_MS}

# counter name suffix -> (state field, scale, help)
KPI_COUNTERS = {
    "offered": ("offered", 1, "Contacts that entered the queue"),
    "answered": ("answered", 1, "Contacts answered by an agent"),
    "abandoned": ("abandoned", 1, "Contacts that left before an answer, short abandons excluded"),
    "short_abandoned": ("short_abandoned", 1, "Abandons within short_abandon_seconds"),
    "answered_within_target": ("answered_within_target", 1, "Answered with wait <= service_level_seconds"),
    "abandoned_within_target": ("abandoned_within_target", 1, "Abandoned (not short) within service_level_seconds"),
    "answered_immediately": ("answered_immediately", 1, "Answered with wait <= immediate_seconds"),
    "transferred_out": ("transferred_out", 1, "Contacts transferred out of the queue while waiting"),
    "flowed_out": ("flowed_out", 1, "Contacts the system took out of the queue (timeout, no agents, "
                                    "voicemail, ...): neither answered nor abandoned"),
    "callbacks_requested": ("callbacks_requested", 1, "Contacts that left the queue asking for a callback"),
    "held": ("held", 1, "Answered contacts put on hold at least once (with their first hold's end)"),
    "hold_time_seconds": ("hold_ms", 1000, "Time on hold, each hold counted when it ended"),
    "transfers": ("transfers", 1, "Transfers made by agents after answering"),
    "handled": ("handled", 1, "Contacts ended after being answered"),
    "handle_time_seconds": ("handle_ms", 1000, "Handle time of handled contacts (answer to end, plus wrap-up)"),
    "abandon_wait_seconds": ("wait_abandoned_ms", 1000, "Time to abandon of abandoned contacts"),
    "first_responses": ("first_responses", 1, "First responses (chat: first customer message to first agent message; tickets: created to first public agent reply)"),
    "first_response_seconds": ("first_response_ms", 1000, "Sum of first response times"),
    "agent_responses": ("agent_responses", 1, "Customer messages answered by an agent message (chat)"),
    "agent_response_seconds": ("agent_response_ms", 1000, "Sum of agent response times (chat)"),
    "solved": ("solved", 1, "Tickets solved (re-solves included)"),
    "reopened": ("reopened", 1, "Tickets reopened"),
    "one_touch": ("one_touch", 1, "Tickets solved after a single public agent reply"),
    "resolution_seconds": ("resolution_ms", 1000, "Sum of ticket resolution times (created to solved)"),
    "csat_responses": ("csat_responses", 1, "CSAT survey answers"),
    "csat_satisfied": ("csat_satisfied", 1, "CSAT answers of 4 or 5"),
    "nps_responses": ("nps_responses", 1, "NPS survey answers"),
    "nps_promoters": ("nps_promoters", 1, "NPS answers of 9 or 10"),
    "nps_detractors": ("nps_detractors", 1, "NPS answers of 0 to 6"),
    "complaints": ("complaints", 1, "Interactions flagged as complaints"),
}


class PipelineMetrics:
    """Process-level health metrics, in a registry owned by the app (no global state)."""

    def __init__(self, engines: Callable[[], Mapping[int, PartitionEngine]],
                 fcr_engines: Callable[[], Mapping[int, Any]] = dict,
                 tables: Callable[[], Mapping[str, Any]] = dict) -> None:
        self.registry = CollectorRegistry()
        self._watched: dict[str, Collector] = {}  # watch_agents/watch_queue_state sources
        self.events_consumed = Counter(
            "ccpulse_events_consumed", "Input messages consumed", ["topic"], registry=self.registry)
        self.events_invalid = Counter(
            "ccpulse_events_invalid", "Input messages refused, by reason (each is on the dead-letter topic)",
            ["reason"], registry=self.registry)
        self.dead_lettered = Counter(
            "ccpulse_dead_letter_messages", "Messages written to the dead-letter topic", registry=self.registry)
        self.sink_write_seconds = Histogram(
            "ccpulse_sink_write_duration_seconds", "Duration of successful sink batch writes",
            ["sink", "table"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.sink_rows = Counter(
            "ccpulse_sink_rows_written", "Rows written by sinks", ["sink", "table"], registry=self.registry)
        self.sink_errors = Counter(
            "ccpulse_sink_write_errors", "Failed sink writes (each retried)", ["sink", "table"],
            registry=self.registry)
        # Sink health, read from the writer at scrape time (see watch_sink).
        self.sink_up = Gauge(
            "ccpulse_sink_up", "1 while the sink's writes succeed, 0 while they fail and are retried",
            ["sink"], registry=self.registry)
        self.sink_failing_since = Gauge(
            "ccpulse_sink_failing_since_seconds", "Unix time the sink's writes began failing (0: they succeed)",
            ["sink"], registry=self.registry)
        self.sink_retry_backoff = Gauge(
            "ccpulse_sink_retry_backoff_seconds", "Current delay before the next retry of a failed write",
            ["sink"], registry=self.registry)
        self.sink_pending_rows = Gauge(
            "ccpulse_sink_pending_rows", "Rows taken from Kafka and not yet written (one batch per writer agent at most)",
            ["sink"], registry=self.registry)
        self.sink_oldest_unwritten = Gauge(
            "ccpulse_sink_oldest_unwritten_seconds", "Age of the oldest batch taken from Kafka and not yet written",
            ["sink"], registry=self.registry)
        self.merge_redelivered = Counter(
            "ccpulse_merge_redelivered_parts", "Window parts re-sent for windows already merged, final and "
            "forgotten (after a crash); skipped", registry=self.registry)
        self.consumer_refetches = Counter(
            "ccpulse_consumer_refetches", "Partitions re-fetched from the offset expected next: a record "
            "arrived past it, or records fetched were not delivered (streams/kafka_consumer.py); normal "
            "around restarts and rebalances",
            registry=self.registry)
        self.stage_crashes = Counter(
            "ccpulse_stage_crashes", "Agents that died on an exception outside one record's processing "
            "(streams/guard.py): from the first, the worker commits no offsets and /health answers 503",
            ["stage"], registry=self.registry)
        # Broker reachability, read from the worker's probe at scrape time (streams/broker_health.py).
        self.kafka_up = Gauge(
            "ccpulse_kafka_up", "1 while the Kafka cluster answers metadata requests, 0 while it does not",
            registry=self.registry)
        self.kafka_failing_since = Gauge(
            "ccpulse_kafka_unreachable_since_seconds",
            "Unix time the Kafka cluster stopped answering (0: it answers)", registry=self.registry)
        self.registry.register(KpiCollector(engines, fcr_engines))
        self.registry.register(TableSizeCollector(tables))

    def watch_agents(self, totals: Callable[[], Mapping[int, Mapping[tuple[str, str], Mapping[str, int]]]]) -> None:
        """Expose the agent stage's seconds in each state (``AgentStage.state_totals``), read at
        scrape time. Called again, it replaces the source (one agent stage per worker)."""
        self._watch("agents", AgentStateCollector(totals))

    def watch_queue_state(self, records: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Expose the live agent gauges of the merged ``kpi.queue-state`` records this worker
        owns. Called again, it replaces the source."""
        self._watch("queue_state", QueueStateCollector(records))

    def _watch(self, name: str, collector: Collector) -> None:
        # A second registration of the same series would raise at start: replace instead.
        if name in self._watched:
            self.registry.unregister(self._watched[name])
        self._watched[name] = collector
        self.registry.register(collector)

    def watch_producer(self, failed: Callable[[], Mapping[str, int]], failing: Callable[[], bool]) -> None:
        """Expose the outbox's delivery failures (streams/outbox.py), read at scrape time."""
        self.registry.register(ProducerCollector(failed, failing))

    def watch_sink(self, sink: str, up: Callable[[], bool], failing_since: Callable[[], float | None],
                   backoff: Callable[[], float], pending_rows: Callable[[], int],
                   oldest_unwritten: Callable[[], float]) -> None:
        """Expose a sink's health gauges; only workers that own the sink get the series."""
        self.sink_up.labels(sink).set_function(lambda: 1.0 if up() else 0.0)
        self.sink_failing_since.labels(sink).set_function(lambda: failing_since() or 0.0)
        self.sink_retry_backoff.labels(sink).set_function(backoff)
        self.sink_pending_rows.labels(sink).set_function(pending_rows)
        self.sink_oldest_unwritten.labels(sink).set_function(oldest_unwritten)


class ProducerCollector(Collector):
    def __init__(self, failed: Callable[[], Mapping[str, int]], failing: Callable[[], bool]) -> None:
        self._failed, self._failing = failed, failing

    def collect(self) -> Iterable:
        failures = CounterMetricFamily(
            "ccpulse_produce_failures", "Messages the producer could not deliver (each re-sent until "
            "delivered; input offsets are not committed meanwhile), by topic", labels=["topic"])
        for topic, n in sorted(dict(self._failed()).items()):
            failures.add_metric([topic], n)
        yield failures
        yield GaugeMetricFamily(
            "ccpulse_produce_failing", "1 while messages the producer failed to deliver wait to be "
            "delivered (offsets held, /health 503), else 0", value=1.0 if self._failing() else 0.0)


class KpiCollector(Collector):
    def __init__(self, engines: Callable[[], Mapping[int, PartitionEngine]],
                 fcr_engines: Callable[[], Mapping[int, Any]] = dict,
                 tables: Callable[[], Mapping[str, Any]] = dict) -> None:
        self._engines = engines
        self._fcr_engines = fcr_engines

    def collect(self) -> Iterable:
        engines = dict(self._engines())
        labels = ["queue", "channel", "partition"]
        families = {
            suffix: CounterMetricFamily(f"ccpulse_queue_{suffix}", text, labels=labels)
            for suffix, (_f, _s, text) in KPI_COUNTERS.items()
        }
        waits = HistogramMetricFamily(
            "ccpulse_queue_answer_wait_seconds", "Wait of answered contacts (queue entry to answer)",
            labels=labels)
        late = CounterMetricFamily("ccpulse_late_events", "Events whose window was already final",
                                   labels=["partition"])
        dups = CounterMetricFamily("ccpulse_duplicate_events", "Events seen again (same event_id)",
                                   labels=["partition"])
        expired = CounterMetricFamily("ccpulse_interactions_expired",
                                      "Interactions forgotten after going idle, by kind",
                                      labels=["partition", "kind"])
        waiting = GaugeMetricFamily("ccpulse_queue_waiting", "Contacts waiting in the queue now",
                                    labels=labels)
        longest = GaugeMetricFamily("ccpulse_queue_longest_wait_seconds",
                                    "Age of the oldest waiting contact (event time)", labels=labels)
        busy = GaugeMetricFamily("ccpulse_queue_agents_busy",
                                 "Agents handling a contact of the queue now", labels=labels)
        open_tickets = GaugeMetricFamily("ccpulse_queue_open_tickets", "Tickets created and not solved",
                                         labels=labels)
        lag = GaugeMetricFamily("ccpulse_event_time_lag_seconds",
                                "Wall clock minus the partition's event-time watermark",
                                labels=["partition"])
        now = time.time()
        for partition, engine in sorted(engines.items()):
            p = str(partition)
            for queue, channel, counts in engine.running_totals():
                values = [queue, channel, p]
                for suffix, (name, scale, _t) in KPI_COUNTERS.items():
                    families[suffix].add_metric(values, counts.get(name, 0) / scale)
                buckets, cumulative = [], 0
                for i, bound in enumerate(WAIT_BUCKETS_S):
                    cumulative += counts.get(f"wait_bucket_{i}", 0)
                    buckets.append((_bound(bound), cumulative))
                cumulative += counts.get(f"wait_bucket_{len(WAIT_BUCKETS_S)}", 0)
                buckets.append(("+Inf", cumulative))
                waits.add_metric(values, buckets, counts.get("wait_answered_ms", 0) / 1000)
            rec = engine.record
            for (queue, channel), live in list(engine.live.items()):
                values = [queue, channel, p]
                waiting.add_metric(values, sum(live.waiting.values()))
                oldest = min(live.waiting) if live.waiting else None
                longest.add_metric(values, 0 if oldest is None else max(0, rec.watermark - oldest) / 1000)
                busy.add_metric(values, len(live.busy))
                open_tickets.add_metric(values, live.open_tickets)
            late.add_metric([p], rec.late_events)
            dups.add_metric([p], rec.duplicates)
            expired.add_metric([p, "completed"], rec.expired - rec.expired_orphans - rec.expired_unfinished)
            expired.add_metric([p, "orphan"], rec.expired_orphans)
            expired.add_metric([p, "unfinished"], rec.expired_unfinished)
            if rec.watermark:
                lag.add_metric([p], now - rec.watermark / 1000)
        fcr = {name: CounterMetricFamily(f"ccpulse_fcr_{name}", text, labels=labels) for name, text in (
            ("contacts", "Contacts with a customer id (first-contact resolution candidates)"),
            ("decided", "Contacts whose FCR horizon has passed"),
            ("resolved", "Contacts with no new interaction of the customer within the horizon"))}
        for partition, fcr_engine in sorted(dict(self._fcr_engines()).items()):
            for (queue, channel), counts in fcr_engine.running_totals().items():
                for family, value in zip(fcr.values(), counts):
                    family.add_metric([queue, channel, f"fcr-{partition}"], value)
        yield from families.values()
        yield from fcr.values()
        yield from (waits, waiting, longest, busy, open_tickets, late, dups, expired, lag)


def _bound(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


class AgentStateCollector(Collector):
    """``ccpulse_queue_agent_state_seconds_total{queue,channel,state,partition}``: cumulative
    seconds agents spent in each state, per queue (METRICS.md attribution), from the agent
    stage's cores: final windows (stored) plus open ones, so a restart or a rebalance
    counts nothing twice, and the series of a partition given up disappear. A queue's
    staffed, available and away time is on each of its channels: not additive across
    channels (sum by state within one channel, or max across channels)."""

    def __init__(self, totals: Callable[[], Mapping[int, Mapping[tuple[str, str], Mapping[str, int]]]]) -> None:
        self._totals = totals

    def collect(self) -> Iterable:
        family = CounterMetricFamily(
            "ccpulse_queue_agent_state_seconds",
            "Seconds agents spent in each state (staffed = logged in), per queue they serve; "
            "a queue's staffed, available and away time is on each of its channels",
            labels=["queue", "channel", "state", "partition"])
        for partition, queues in sorted(dict(self._totals()).items()):
            for (queue, channel), counters in sorted(queues.items()):
                for state, counter in AGENT_STATES.items():
                    family.add_metric([queue, channel, state, f"agents-{partition}"], counters.get(counter, 0) / 1000)
        yield family


# kpi.queue-state field -> the ``state`` label of ccpulse_queue_agents
LIVE_AGENT_FIELDS = {"staffed": "agents_staffed", "available": "agents_available",
                     "on_contact": "agents_on_contact", "after_contact_work": "agents_after_contact_work",
                     "away": "agents_away"}


class LatestQueueStates:
    """The newest ``kpi.queue-state`` record per queue x channel a merge worker published,
    with the merge partition it came from: what the live gauges read. ``records(owned)``
    forgets those of partitions the worker no longer owns (their series disappear; the
    new owner publishes them)."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], tuple[int, Mapping[str, Any]]] = {}

    def update(self, partition: int, record: Mapping[str, Any]) -> None:
        self._latest[(record.get("queue"), record.get("channel"))] = (partition, record)  # type: ignore[index]

    def records(self, owned: Iterable[int]) -> list[Mapping[str, Any]]:
        mine = set(owned)
        for key in [k for k, (p, _r) in self._latest.items() if p not in mine]:
            del self._latest[key]
        return [record for _p, record in self._latest.values()]


class QueueStateCollector(Collector):
    """The live agent gauges, from the merged ``kpi.queue-state`` records (one worker owns
    each queue x channel: no partition label). A null ratio or requirement (no data yet)
    is no sample, never a 0 that would read as "nobody needed"."""

    def __init__(self, records: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._records = records
        self._refused: set[tuple[Any, Any]] = set()  # logged once per key

    def collect(self) -> Iterable:
        labels = ["queue", "channel"]
        agents = GaugeMetricFamily("ccpulse_queue_agents", "Agents serving the queue now, by state "
                                   "(staffed = logged in; on contact and after-contact work for this "
                                   "channel's contacts)", labels=[*labels, "state"])
        away = GaugeMetricFamily("ccpulse_queue_agents_away", "Agents serving the queue away now, by reason",
                                 labels=[*labels, "reason"])
        occupancy = GaugeMetricFamily("ccpulse_queue_occupancy", "Occupancy now: agents on contact or in "
                                      "after-contact work over those and the available ones", labels=labels)
        required = GaugeMetricFamily("ccpulse_queue_agents_required", "Agents the queue needs now to meet its "
                                     "service-level target (Erlang C over the last 15 minutes)", labels=labels)
        gap = GaugeMetricFamily("ccpulse_queue_agents_gap", "agents_required - (staffed - away): positive "
                                "means short of agents now", labels=labels)
        for record in list(self._records()):
            problem = _queue_state_problem(record)
            if problem is not None:
                key = (record.get("queue"), record.get("channel")) if isinstance(record, Mapping) else (None, None)
                if key not in self._refused:
                    self._refused.add(key)
                    log.warning("queue-state record of %r not exposed on /metrics: %s", key, problem)
                continue
            values = [record["queue"], record["channel"]]
            for state, name in LIVE_AGENT_FIELDS.items():
                agents.add_metric([*values, state], record.get(name) or 0)
            for reason, n in sorted((record.get("agents_away_by_reason") or {}).items()):
                away.add_metric([*values, reason], n)
            for family, name in ((occupancy, "occupancy_now"), (required, "agents_required"), (gap, "agents_gap")):
                if record.get(name) is not None:
                    family.add_metric(values, record[name])
        yield from (agents, away, occupancy, required, gap)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _queue_state_problem(record: Any) -> str | None:
    """Why a queue-state record cannot be exposed (None: it can), checked whole first, so a
    malformed one costs its own series only, never the scrape."""
    if not isinstance(record, Mapping) or not isinstance(record.get("queue"), str) \
            or not isinstance(record.get("channel"), str):
        return "queue and channel must be strings"
    for name in LIVE_AGENT_FIELDS.values():
        if record.get(name) is not None and not _count(record[name]):
            return f"{name} must be a count"
    reasons = record.get("agents_away_by_reason")
    if reasons is not None and (not isinstance(reasons, Mapping)
                                or not all(isinstance(k, str) and _count(v) for k, v in reasons.items())):
        return "agents_away_by_reason must map reasons to counts"
    occupancy = record.get("occupancy_now")
    if occupancy is not None and (isinstance(occupancy, bool) or not isinstance(occupancy, (int, float))
                                  or not math.isfinite(occupancy)):
        return "occupancy_now must be a number or null"
    for name in ("agents_required", "agents_gap"):
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{name} must be an integer or null"
    return None


class TableSizeCollector(Collector):
    """``ccpulse_table_entries{table}``: entries each worker table holds in memory.

    What an operator (and the soak of ``ccpulse chaos``) watches to see state stay
    bounded: interactions expire after ``windows.interaction_horizon_seconds``, merged
    windows once every source is past them. A length per table, so a scrape costs
    nothing however large the tables are.
    """

    def __init__(self, tables: Callable[[], Mapping[str, Any]]) -> None:
        self._tables = tables

    def collect(self) -> Iterable:
        family = GaugeMetricFamily("ccpulse_table_entries", "Entries held in memory by each worker table",
                                   labels=["table"])
        for name, table in sorted(dict(self._tables()).items()):
            family.add_metric([name], len(table.data))
        yield family
