"""Targets and the SLA breach detector (pure: no I/O, no clock).

Targets
-------
A target is a bound on one KPI: ``service_level >= 0.80``, ``asa_seconds <= 30``.
Targets are set per channel kind (voice, chat, ticket) and can be overridden per
queue, KPI by KPI (``[queues.billing.targets.voice]``); ``false`` removes an
inherited target. Which KPIs exist, which direction is good and which channel
kinds they apply to is the catalogue :data:`KPIS`.

Detector
--------
One small state machine per (queue, channel, KPI), fed ``(observed value,
event time)``:

    ok --violating--> pending-violation --violating for open_seconds--> breached
    breached --compliant--> pending-recovery --compliant for resolve_seconds--> ok

- "for open_seconds" is measured in *event time*, from the first violating
  observation of an unbroken run of violating observations to the current one.
  A compliant observation cancels a pending violation; a violating one cancels a
  pending recovery (the breach simply stays open).
- A null observation (no data: e.g. no contact left the queue in the last 15
  minutes) neither opens nor resolves: it breaks a pending run (back to ok, or
  back to breached) and never completes one.
- Opening and resolving each yield exactly one :class:`Breach` event, so the
  events of one key always alternate open, resolved, open, ... and each breach
  has a stable id ``queue|channel|kpi|opened_at``.
- Observations older than the last one are ignored and re-applying the last one
  changes nothing, so a replay after a restart (state recovered, input
  re-delivered) emits nothing twice. :class:`QueueSla` adds an explicit sequence
  per queue (the publisher's ``(as_of, published_at)``) to drop re-delivered
  records exactly.
- Between two records a KPI's last value stands: :meth:`QueueSla.tick` re-applies
  it at a newer event time (learnt from any queue's record), so a hold-down
  completes even while a queue's publisher is quiet because nothing changed. A
  record that arrives behind such a tick is applied at the tick's time: event
  time never runs backwards for a detector.
- A hold of 0 makes the transition immediate (no pending state is left behind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ccpulse.core.timestamps import format_ms

CHANNEL_KINDS = ("voice", "chat", "ticket")
MIN, MAX = "min", "max"
# The operator as published (target.op) and as PromQL compares the violation.
OPS = {MIN: ">=", MAX: "<="}
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class KpiSpec:
    """One KPI that can carry a target."""

    name: str
    direction: str  # MIN: higher is better (the target is a floor); MAX: lower is better
    kinds: tuple[str, ...]
    source: str  # where the stream stage reads it (documentation)
    title: str
    unit: str  # "ratio" or "seconds"
    severity: str = "warning"


KPIS: dict[str, KpiSpec] = {spec.name: spec for spec in (
    KpiSpec("service_level", MIN, CHANNEL_KINDS, "kpi.queue-state last_15m.service_level",
            "Service level (last 15 minutes)", "ratio", "critical"),
    KpiSpec("abandonment_rate", MAX, CHANNEL_KINDS, "kpi.queue-state last_15m.abandonment_rate",
            "Abandonment rate (last 15 minutes)", "ratio", "critical"),
    KpiSpec("asa_seconds", MAX, CHANNEL_KINDS, "kpi.queue-state last_15m.asa_seconds",
            "Average speed of answer (last 15 minutes)", "seconds"),
    KpiSpec("longest_wait_seconds", MAX, CHANNEL_KINDS, "kpi.queue-state longest_wait_seconds (live)",
            "Longest current wait", "seconds"),
    KpiSpec("first_response_p90_seconds", MAX, ("ticket",),
            "kpi.windows 1h final wait_answered_p90_seconds (tickets)",
            "Ticket first response time p90 (last full hour)", "seconds"),
    # Issue 16. No default targets: a center that sends no agent events has nobody staffed.
    KpiSpec("occupancy", MAX, CHANNEL_KINDS, "kpi.windows 15m final occupancy",
            "Occupancy (last full 15 minutes)", "ratio"),
    KpiSpec("agents_gap", MAX, ("voice", "chat"), "kpi.queue-state agents_gap (live)",
            "Agents short of the requirement now", "agents"),
)}
# The final windows occupancy is observed on (window_values): a target needs this size.
OCCUPANCY_WINDOW_S = 900


@dataclass(frozen=True)
class Target:
    kpi: str
    direction: str  # MIN or MAX
    value: float
    severity: str = "warning"
    # This target's own hold-down, over [targets.hold] (None: that one): e.g. a queue short
    # of agents for 5 minutes, while the other KPIs open after 1.
    open_seconds: float | None = None
    resolve_seconds: float | None = None

    @property
    def op(self) -> str:
        return OPS[self.direction]

    def hold_in(self, hold: "Hold") -> "Hold":
        """The hold-down in force for this target, ``hold`` being [targets.hold]."""
        if self.open_seconds is None and self.resolve_seconds is None:
            return hold
        return Hold(hold.open_seconds if self.open_seconds is None else self.open_seconds,
                    hold.resolve_seconds if self.resolve_seconds is None else self.resolve_seconds)

    def violated(self, observed: float) -> bool:
        return observed < self.value if self.direction == MIN else observed > self.value

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "value": self.value}


def _default(kpi: str, value: float) -> Target:
    spec = KPIS[kpi]
    return Target(kpi, spec.direction, value, spec.severity)


# METRICS.md: service_level >= 0.80, abandonment_rate <= 0.05, ASA <= 30 s,
# longest current wait <= 120 s (voice and chat), ticket FRT p90 <= 24 h.
DEFAULT_TARGETS: dict[str, dict[str, Target]] = {
    "voice": {t.kpi: t for t in (_default("service_level", 0.80), _default("abandonment_rate", 0.05),
                                 _default("asa_seconds", 30.0), _default("longest_wait_seconds", 120.0))},
    "chat": {t.kpi: t for t in (_default("service_level", 0.80), _default("abandonment_rate", 0.05),
                                _default("asa_seconds", 30.0), _default("longest_wait_seconds", 120.0))},
    "ticket": {t.kpi: t for t in (_default("first_response_p90_seconds", 86400.0),)},
}


@dataclass(frozen=True)
class Hold:
    """Hold-down in event time: how long a violation (compliance) must last to open (resolve)."""

    open_seconds: float = 60.0
    resolve_seconds: float = 60.0

    @property
    def open_ms(self) -> int:
        return round(self.open_seconds * 1000)

    @property
    def resolve_ms(self) -> int:
        return round(self.resolve_seconds * 1000)


@dataclass(frozen=True)
class SlaTargets:
    """Every target of the config: per channel kind, per (queue, kind), and the hold-down."""

    kinds: Mapping[str, Mapping[str, Target]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_TARGETS.items()})
    # (queue, kind) -> the queue's complete target set for that kind (overrides merged in).
    queues: Mapping[tuple[str, str], Mapping[str, Target]] = field(default_factory=dict)
    hold: Hold = field(default_factory=Hold)

    def for_kind(self, queue: str, kind: str) -> Mapping[str, Target]:
        found = self.queues.get((queue, kind))
        return found if found is not None else self.kinds.get(kind, {})

    def for_queue(self, queue: str, channel: str) -> Mapping[str, Target]:
        return self.for_kind(queue, channel_kind(channel))


def channel_kind(channel: str) -> str:
    """voice and chat are their own kind; every ticket channel shares 'ticket' (as in config)."""
    return channel if channel in ("voice", "chat") else "ticket"


# --- parsing the [targets] tables (config.py wraps ValueError into ConfigError) -----------

def parse_targets(doc: Mapping[str, Any], queue_docs: Mapping[str, Any]) -> SlaTargets:
    """``[targets.<kind>]``, ``[targets.hold]`` and ``[queues.<q>.targets.<kind>]``.

    Raises ``ValueError`` whose message starts with the offending key.
    """
    if not isinstance(doc, Mapping):
        raise ValueError("targets: must be a table")
    kinds = {k: dict(v) for k, v in DEFAULT_TARGETS.items()}
    hold = Hold()
    for key, table in doc.items():
        where = f"targets.{key}"
        if key == "hold":
            hold = _parse_hold(_mapping(table, where), where)
        elif key in CHANNEL_KINDS:
            kinds[key] = _merge(kinds[key], _mapping(table, where), key, where)
        else:
            raise ValueError(f"{where}: unknown channel kind (voice, chat, ticket) or 'hold'")
    queues: dict[tuple[str, str], dict[str, Target]] = {}
    for queue, per_kind in queue_docs.items():
        base = f"queues.{queue}.targets"
        for kind, table in _mapping(per_kind, base).items():
            where = f"{base}.{kind}"
            if kind not in CHANNEL_KINDS:
                raise ValueError(f"{where}: unknown channel kind (voice, chat, ticket)")
            queues[(queue, kind)] = _merge(kinds[kind], _mapping(table, where), kind, where)
    return SlaTargets(kinds, queues, hold)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be a table")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a number")
    return float(value)


HOLD_KEYS = ("open_seconds", "resolve_seconds")


def _seconds(value: Any, where: str) -> float:
    number = _number(value, where)
    if number < 0:
        raise ValueError(f"{where}: must not be negative")
    return number


def _parse_hold(table: Mapping[str, Any], where: str) -> Hold:
    values = {}
    for key, value in table.items():
        if key not in HOLD_KEYS:
            raise ValueError(f"{where}.{key}: unknown setting (known: {', '.join(HOLD_KEYS)})")
        values[key] = _seconds(value, f"{where}.{key}")
    return Hold(**values)


def _merge(base: Mapping[str, Target], table: Mapping[str, Any], kind: str,
           where: str) -> dict[str, Target]:
    out = dict(base)
    for kpi, spec in table.items():
        key = f"{where}.{kpi}"
        if kpi not in KPIS:
            raise ValueError(f"{key}: unknown KPI (known: {', '.join(KPIS)})")
        info = KPIS[kpi]
        if kind not in info.kinds:
            raise ValueError(f"{key}: not a KPI of the {kind} channel kind (only {', '.join(info.kinds)})")
        if spec is False:
            out.pop(kpi, None)
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"{key}: must be a table like {{ {info.direction} = ... }}, "
                             "or false to remove the target")
        out[kpi] = _parse_target(info, spec, out.get(kpi), key)
    return out


def _parse_target(info: KpiSpec, table: Mapping[str, Any], inherited: Target | None, where: str) -> Target:
    wrong = MAX if info.direction == MIN else MIN
    value: float | None = None
    severity = inherited.severity if inherited else info.severity
    holds = {name: getattr(inherited, name) if inherited else None for name in HOLD_KEYS}
    for key, raw in table.items():
        if key == info.direction:
            value = _number(raw, f"{where}.{key}")
        elif key == wrong:
            better = "higher" if info.direction == MIN else "lower"
            raise ValueError(f"{where}.{key}: {info.name} is better {better}: its target is "
                             f"{{ {info.direction} = ... }}")
        elif key == "severity":
            if raw not in SEVERITIES:
                raise ValueError(f"{where}.severity: {raw!r} is not one of {', '.join(SEVERITIES)}")
            severity = raw
        elif key in HOLD_KEYS:
            holds[key] = _seconds(raw, f"{where}.{key}")
        else:
            raise ValueError(f"{where}.{key}: unknown setting (known: {info.direction}, severity, "
                             f"{', '.join(HOLD_KEYS)})")
    if value is None:
        if inherited is None:
            raise ValueError(f"{where}: missing {info.direction} (e.g. {{ {info.direction} = ... }})")
        value = inherited.value
    if info.unit == "agents":
        # A gap is a whole number of agents, and may be negative: max = -1 wants a spare.
        if not value.is_integer():
            raise ValueError(f"{where}.{info.direction}: {value:g} is a number of agents and must be whole")
    elif value < 0:
        raise ValueError(f"{where}.{info.direction}: must not be negative")
    if info.unit == "ratio" and value > 1:
        raise ValueError(f"{where}.{info.direction}: {value:g} is a ratio and must be between 0 and 1")
    return Target(info.name, info.direction, value, severity, **holds)


# --- the detector --------------------------------------------------------------------------

OK, PENDING_VIOLATION, BREACHED, PENDING_RECOVERY = "ok", "pending_violation", "breached", "pending_recovery"
OPEN_STATES = (BREACHED, PENDING_RECOVERY)


def breach_id(queue: str, channel: str, kpi: str, opened_at_ms: int) -> str:
    return f"{queue}|{channel}|{kpi}|{format_ms(opened_at_ms)}"


@dataclass(frozen=True)
class Breach:
    """One transition of a breach: opened, or resolved."""

    breach_id: str
    kpi: str
    target: Target
    observed: float
    worst_observed: float
    queue: str
    channel: str
    state: str  # "open" | "resolved"
    violating_since: int  # ms: first violating observation of the run that opened it
    opened_at: int  # ms
    resolved_at: int | None  # ms
    as_of: int  # ms: event time of the observation that made the transition

    @property
    def version(self) -> int:
        """Per breach_id: the resolved record supersedes the open one."""
        return 1 if self.state == "open" else 2

    def to_record(self, now_ms: int) -> dict[str, Any]:
        """The ``sla.breaches`` value (schemas/json/sla-breach.schema.json)."""
        return {
            "breach_id": self.breach_id, "kpi": self.kpi, "target": self.target.to_dict(),
            "severity": self.target.severity, "observed": self.observed,
            "worst_observed": self.worst_observed, "queue": self.queue, "channel": self.channel,
            "state": self.state, "violating_since": format_ms(self.violating_since),
            "opened_at": format_ms(self.opened_at),
            "resolved_at": None if self.resolved_at is None else format_ms(self.resolved_at),
            "duration_seconds": None if self.resolved_at is None else (self.resolved_at - self.opened_at) / 1000,
            "as_of": format_ms(self.as_of), "version": self.version, "published_at": format_ms(now_ms),
        }


@dataclass
class Detector:
    """The state machine of one (queue, channel, KPI)."""

    status: str = OK
    since: int | None = None  # start of the pending run (violation or recovery)
    violating_since: int | None = None  # of the open breach
    opened_at: int | None = None
    worst: float | None = None  # worst value while pending or open
    last_at: int | None = None  # newest observation applied
    last_value: float | None = None
    # The target in force while open [direction, value, severity]: if the config
    # drops the target, the breach still resolves with what it was opened against.
    target: list[Any] | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATES

    def observe(self, value: float | None, at: int, target: Target, hold: Hold,
                queue: str, channel: str) -> Breach | None:
        """Apply one observation; the transition it completes, if any. ``hold``: [targets.hold]
        (the target's own hold-down, if it has one, is used instead)."""
        hold = target.hold_in(hold)
        if self.last_at is not None and at < self.last_at:
            return None  # older than what was applied: a re-delivery
        self.last_at, self.last_value = at, value
        if self.is_open:
            self.target = [target.direction, target.value, target.severity]
        if value is None:
            # No data: neither opens nor resolves, and breaks any pending run.
            if self.status == PENDING_VIOLATION:
                self._reset()
            elif self.status == PENDING_RECOVERY:
                self.status, self.since = BREACHED, None
            return None
        bad = target.violated(value)
        if self.status in (OK, PENDING_VIOLATION):
            if not bad:
                if self.status == PENDING_VIOLATION:
                    self._reset()
                return None
            if self.status == OK:
                self.status, self.since, self.worst = PENDING_VIOLATION, at, value
            else:
                self.worst = _worse(target, self.worst, value)
            if at - self.since >= hold.open_ms:
                self.status, self.violating_since, self.opened_at = BREACHED, self.since, at
                self.since = None
                self.target = [target.direction, target.value, target.severity]
                return self._event("open", value, target, queue, channel, at)
            return None
        # BREACHED or PENDING_RECOVERY
        if bad:
            self.worst = _worse(target, self.worst, value)
            if self.status == PENDING_RECOVERY:
                self.status, self.since = BREACHED, None
            return None
        if self.status == BREACHED:
            self.status, self.since = PENDING_RECOVERY, at
        if at - self.since >= hold.resolve_ms:
            event = self._event("resolved", value, target, queue, channel, at)
            self._reset()
            return event
        return None

    def close(self, at: int, kpi: str, queue: str, channel: str) -> Breach | None:
        """The KPI lost its target (config change): an open breach resolves now."""
        if not self.is_open:
            return None
        direction, value, severity = self.target or [KPIS[kpi].direction, math.nan, KPIS[kpi].severity]
        target = Target(kpi, direction, value, severity)
        at = max(at, self.last_at if self.last_at is not None else at)
        event = self._event("resolved", self.last_value if self.last_value is not None else value,
                            target, queue, channel, at)
        self._reset()
        return event

    def _event(self, state: str, value: float, target: Target, queue: str, channel: str,
               at: int) -> Breach:
        assert self.opened_at is not None and self.violating_since is not None
        return Breach(breach_id(queue, channel, target.kpi, self.opened_at), target.kpi, target,
                      value, self.worst if self.worst is not None else value, queue, channel, state,
                      self.violating_since, self.opened_at, at if state == "resolved" else None, at)

    def _reset(self) -> None:
        self.status, self.since, self.violating_since, self.opened_at, self.worst = OK, None, None, None, None
        self.target = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "since": self.since, "violating_since": self.violating_since,
                "opened_at": self.opened_at, "worst": self.worst, "last_at": self.last_at,
                "last_value": self.last_value, "target": self.target}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Detector":
        return cls(**{k: doc.get(k) for k in ("since", "violating_since", "opened_at", "worst",
                                              "last_at", "last_value", "target")},
                   status=doc.get("status", OK))


def _worse(target: Target, a: float | None, b: float) -> float:
    if a is None:
        return b
    return min(a, b) if target.direction == MIN else max(a, b)


@dataclass
class QueueSla:
    """The detectors of one queue x channel, plus the sequence of the last record applied."""

    queue: str
    channel: str
    detectors: dict[str, Detector] = field(default_factory=dict)
    # source -> sequence of the newest record applied from it
    seqs: dict[str, list[int]] = field(default_factory=dict)

    def observe(self, values: Mapping[str, float | None], at: int, targets: Mapping[str, Target],
                hold: Hold, seq: Iterable[int] | None = None, source: str = "") -> list[Breach]:
        """Apply one record's values (KPIs without a target are ignored).

        ``seq`` orders the records of one ``source`` for this queue; a record whose
        seq is not newer than the last applied one of its source is a re-delivery
        and changes nothing. The time of an observation is never earlier than what
        a detector already saw (``tick`` may have moved it on): it is then applied
        at the detector's current time.
        """
        if seq is not None:
            seq = list(seq)
            last = self.seqs.get(source)
            if last is not None and seq <= last:
                return []
            self.seqs[source] = seq
        out = self._drop_untargeted(targets, at)
        for kpi, value in values.items():
            target = targets.get(kpi)
            if target is None:
                continue
            det = self.detectors.setdefault(kpi, Detector())
            when = at if det.last_at is None else max(at, det.last_at)
            event = det.observe(value, when, target, hold, self.queue, self.channel)
            if event is not None:
                out.append(event)
        return out

    def tick(self, at: int, targets: Mapping[str, Target], hold: Hold) -> list[Breach]:
        """Event time moved on to ``at`` with no new record: each KPI's last value still stands."""
        out = self._drop_untargeted(targets, at)
        for kpi, det in self.detectors.items():
            target = targets.get(kpi)
            if target is None or det.last_at is None or at <= det.last_at:
                continue
            event = det.observe(det.last_value, at, target, hold, self.queue, self.channel)
            if event is not None:
                out.append(event)
        return out

    def _drop_untargeted(self, targets: Mapping[str, Target], at: int) -> list[Breach]:
        out = []
        for kpi in [k for k in self.detectors if k not in targets]:
            det = self.detectors.pop(kpi)
            event = det.close(at, kpi, self.queue, self.channel)
            if event is not None:
                out.append(event)
        return out

    def open_kpis(self) -> list[str]:
        return sorted(k for k, d in self.detectors.items() if d.is_open)

    def to_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "channel": self.channel,
                "seqs": {k: list(v) for k, v in sorted(self.seqs.items())},
                "detectors": {k: d.to_dict() for k, d in sorted(self.detectors.items())}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "QueueSla":
        return cls(doc["queue"], doc["channel"],
                   {k: Detector.from_dict(v) for k, v in doc.get("detectors", {}).items()},
                   {k: list(v) for k, v in doc.get("seqs", {}).items()})


# --- what the stream stage observes -------------------------------------------------------

def queue_state_values(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The KPIs of one ``kpi.queue-state`` record.

    service_level, abandonment_rate, asa_seconds: the rolling last 15 minutes
    (null when no contact left the queue in that time). longest_wait_seconds: the
    live state; nobody waiting is a wait of 0 (compliant), not missing data.
    agents_gap: live; null (no handle time yet, no agent event ever named the queue,
    or a record of before issue 16) is missing data.
    """
    last = record.get("last_15m") or {}
    longest = record.get("longest_wait_seconds")
    return {"service_level": last.get("service_level"),
            "abandonment_rate": last.get("abandonment_rate"),
            "asa_seconds": last.get("asa_seconds"),
            "longest_wait_seconds": 0.0 if longest is None else float(longest),
            "agents_gap": record.get("agents_gap")}


def window_values(record: Mapping[str, Any]) -> dict[str, float | None] | None:
    """The KPIs one ``kpi.windows`` record feeds: final 1-hour windows of ticket channels
    (first response p90), final 15-minute windows of any channel (occupancy; null when
    no agent was available or busy for the queue)."""
    if not record.get("final"):
        return None
    if record.get("window") == "1h" and channel_kind(record["channel"]) == "ticket":
        return {"first_response_p90_seconds": record.get("wait_answered_p90_seconds")}
    if record.get("window") == "15m":
        return {"occupancy": record.get("occupancy")}
    return None


__all__ = [
    "Breach", "CHANNEL_KINDS", "DEFAULT_TARGETS", "Detector", "Hold", "KPIS", "KpiSpec", "QueueSla",
    "SlaTargets", "Target", "breach_id", "channel_kind", "parse_targets", "queue_state_values",
    "window_values",
]
