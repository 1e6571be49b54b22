"""The SLA breach detector and the scorecards as stages (the Faust shell: streams/sla.py).

- ``SlaStage`` (agent ``sla``): one :class:`~ccpulse.core.sla.QueueSla` per queue x
  channel, stored as ``{"p": partition, **QueueSla.to_dict()}`` in the ``sla-state``
  table, fed by kpi.queue-state records and by the observations ``SlaWindowsStage``
  re-keys from kpi.windows. Each transition is one ``sla.breaches`` message, returned
  ahead of the state that follows from it: the shell sends it before the state is
  written, so a crash in between re-derives and re-sends the same transition.
- ``SlaWindowsStage`` (agent ``sla-windows``): a final 1-hour ticket window (first
  response p90) and a final 15-minute window (occupancy) become an observation keyed
  ``queue|channel`` on ``<app>-sla-observations``.
- ``ScorecardStage`` (agent ``scorecards``): one kpi.scorecards record per final window
  of 15 minutes or more, keyed as the window.

A record whose processing raises is returned as a ``Failure`` and changes nothing;
the rest of its batch is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, MutableMapping

import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ccpulse.core.scorecard import ScorecardSettings, eligible, scorecard_key, scorecard_record
from ccpulse.core.sla import OPEN_STATES, Breach, QueueSla, SlaTargets, queue_state_values, window_values
from schemas.events import parse_timestamp_ms
from streams.stages.io import Consumed, Failure, Sends, TablePut, each
from streams.stages.io import Message

# The ``source`` of the observations SlaWindowsStage sends, per window (a QueueSla orders
# each source's records): "windows-1h" (ticket first response), "windows-15m" (occupancy).
WINDOWS_SOURCE = "windows-{window}"

Entry = dict[str, Any]  # a sla-state value: {"p": partition, **QueueSla.to_dict()}


def _ms(text: str) -> int:
    ms = parse_timestamp_ms(text)
    if ms is None:
        raise ValueError(f"not a timestamp: {text!r}")
    return ms


def _significant(entry: Entry) -> Any:
    """A stored entry without the bookkeeping a tick moves on every batch (last_at)."""
    return {**entry, "detectors": {k: {f: v for f, v in d.items() if f != "last_at"}
                                   for k, d in entry.get("detectors", {}).items()}}


@dataclass
class SlaOutput:
    """What one batch of the sla stage produced, in the order the shell writes it."""

    breaches: list[Message] = field(default_factory=list)  # -> sla.breaches, first
    puts: list[TablePut] = field(default_factory=list)  # -> sla-state, after the breaches
    failures: list[Failure] = field(default_factory=list)
    newest: int = 0  # the newest kpi.queue-state event time (ms) of the batch: the tick's


class SlaStage:
    def __init__(self, targets: SlaTargets, entries: MutableMapping[str, Entry | None],
                 owned: Callable[[], Collection[int]]) -> None:
        """``entries``: the sla-state table's data (key ``queue|channel``); ``owned``: the
        partitions of the stage's input this worker owns now (only their queues are ticked
        and reported: another worker's entries may linger in the table)."""
        self.targets = targets
        self.entries = entries
        self.owned = owned

    def on_batch(self, records: Iterable[Consumed], now_ms: int) -> SlaOutput:
        out = SlaOutput()
        for record in records:
            try:
                self._one(record, now_ms, out)
            except Exception as exc:  # one record's failure costs that record only (issue 14)
                out.failures.append(Failure(record.message, exc))
        if out.newest:
            self._tick(out.newest, now_ms, out)
        return out

    def snapshot(self) -> list[Entry]:
        """The entries of the owned partitions (the breach gauge's source)."""
        actives = self.owned()
        return [entry for entry in list(self.entries.values())
                if entry is not None and entry.get("p") in actives]

    def _one(self, record: Consumed, now_ms: int, out: SlaOutput) -> None:
        doc = record.value
        if not isinstance(doc, dict) or "queue" not in doc or "channel" not in doc:
            return
        queue, channel = doc["queue"], doc["channel"]
        key = f"{queue}|{channel}"
        before = self.entries.get(key)
        state = QueueSla.from_dict(before) if before else QueueSla(queue, channel)
        partition = before["p"] if before else record.partition
        targets = self.targets.for_queue(queue, channel)
        if "last_15m" in doc:  # a kpi.queue-state record
            at = _ms(doc["as_of"])
            if at <= 0:
                # Published before the merge stage saw any event time (just after
                # its restart): no time to place it at, and its rolling view is void.
                return
            out.newest = max(out.newest, at)
            seq = (at, _ms(doc["published_at"]))
            events = state.observe(queue_state_values(doc), at, targets, self.targets.hold,
                                   seq=seq, source="state")
        else:  # an observation re-keyed from kpi.windows
            events = state.observe(doc["values"], doc["at"], targets, self.targets.hold,
                                   seq=doc["seq"], source=doc["source"])
        self._emit(events, now_ms, out)
        self._save(partition, key, state, before, True, out)

    def _tick(self, at: int, now_ms: int, out: SlaOutput) -> None:
        """Event time moved on to ``at``: every owned queue's last values still stand, so a
        queue that stopped publishing because nothing changed still completes its hold-down."""
        for entry in self.snapshot():
            state = QueueSla.from_dict(entry)
            events = state.tick(at, self.targets.for_queue(state.queue, state.channel), self.targets.hold)
            self._emit(events, now_ms, out)
            self._save(entry["p"], f"{state.queue}|{state.channel}", state, entry, False, out)

    def _emit(self, events: list[Breach], now_ms: int, out: SlaOutput) -> None:
        # Encoded here, so that a record that cannot be encoded fails before it changed anything.
        out.breaches += [Message(b.breach_id.encode(), orjson.dumps(b.to_record(now_ms))) for b in events]

    def _save(self, partition: int, key: str, state: QueueSla, before: Entry | None, force: bool,
              out: SlaOutput) -> None:
        after = {"p": partition, **state.to_dict()}
        if force or before is None or _significant(before) != _significant(after):
            self.entries[key] = after
            out.puts.append(TablePut(partition, key, after))


class SlaWindowsStage:
    """Final windows a target reads (``window_values``) as observations keyed
    ``queue|channel``, so that both inputs of a queue's SLA meet on one partition of the
    sla stage."""

    def on_batch(self, records: Iterable[Consumed]) -> Sends:
        return each(records, self._one)

    @staticmethod
    def _one(consumed: Consumed) -> Message | None:
        record = consumed.value
        values = window_values(record) if isinstance(record, dict) else None
        if values is None:
            return None
        end = _ms(record["window_end"])
        return Message(f"{record['queue']}|{record['channel']}".encode(), orjson.dumps(
            {"queue": record["queue"], "channel": record["channel"], "values": values,
             "at": end, "seq": [end, record["version"]], "source": WINDOWS_SOURCE.format(window=record["window"])}))


class ScorecardStage:
    def __init__(self, settings: ScorecardSettings) -> None:
        self.settings = settings

    def on_batch(self, records: Iterable[Consumed], now_ms: int) -> Sends:
        return each(records, lambda consumed: self._one(consumed.value, now_ms))

    def _one(self, record: Any, now_ms: int) -> Message | None:
        if not isinstance(record, dict) or not eligible(record, self.settings):
            return None
        card = scorecard_record(record, self.settings, now_ms)
        return Message(scorecard_key(card).encode(), orjson.dumps(card))


class SlaCollector(Collector):
    """``ccpulse_sla_breach_open{queue,channel,kpi}``: 1 while a breach is open, else 0.

    Read from the recovered state table at scrape time (like the KPI counters), for
    the queues whose partitions this worker owns.
    """

    def __init__(self, entries: Callable[[], Iterable[Entry]]) -> None:
        self._entries = entries

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("ccpulse_sla_breach_open",
                                  "1 while an SLA breach of the KPI is open (targets in the config)",
                                  labels=["queue", "channel", "kpi"])
        for entry in self._entries():
            for kpi, det in sorted(entry.get("detectors", {}).items()):
                gauge.add_metric([entry["queue"], entry["channel"], kpi],
                                 1.0 if det.get("status") in OPEN_STATES else 0.0)
        yield gauge
