"""Records ccpulse publishes and stores: built here, in one place, from domain objects.

That includes every ClickHouse row (``interaction_rows``, ``raw_event_row``,
``breach_row``, ``scorecard_row``; a ``kpi.windows`` or ``kpi.agents`` record is its
row as it is). Pure functions; the JSON Schemas in ``schemas/json/`` and the tables in
``schemas/clickhouse/`` describe the same shapes.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from typing import Any, Mapping

from ccpulse.config import Thresholds, channel_kind
from ccpulse.core.agents import AFTER_CONTACT_WORK, AVAILABLE, AWAY, ON_CONTACT, PRESENCE_SEEN, state_figures
from ccpulse.core.kpis import QUEUE, WindowAgg, WindowKey, kpi_figures, occupancy
from ccpulse.core.lifecycle import Interaction, Step
from ccpulse.core.staffing import agents_gap, agents_required_for_kind
from ccpulse.pseudonym import CustomerIdHasher
from schemas.events import Event, Rejection, format_ms

WINDOW_NAMES = {60: "1m", 900: "15m", 3600: "1h", 86400: "1d"}


def window_name(size_s: int) -> str:
    return WINDOW_NAMES.get(size_s, f"{size_s}s")


def window_record_key(key: WindowKey) -> str:
    """``window|window_start|queue|channel`` (kpi.windows) or the same with the agent (kpi.agents)."""
    size, start, _scope, name, channel = key
    return f"{window_name(size)}|{format_ms(start)}|{name}|{channel}"


def window_label(key: WindowKey) -> str:
    """A window as a log line names it: ``billing/voice 1m window from 2026-01-05T08:00:00.000Z``."""
    size, start, scope, name, channel = key
    who = f"{name}/{channel}" if scope == QUEUE else f"agent {name}/{channel}"
    return f"{who} {window_name(size)} window from {format_ms(start)}"


AGENT_FIELDS = ("answered", "handled", "handle_time_sum_seconds", "aht_seconds", "transfers",
                "transfer_rate", "csat_responses", "csat_satisfied", "csat", "nps_responses",
                "nps_promoters", "nps_detractors", "nps", "held", "hold_seconds", "avg_hold_seconds")


def window_record(key: WindowKey, end_ms: int, agg: WindowAgg, th: Thresholds, version: int,
                  final: bool, now_ms: int, waiting_at_start: int = 0,
                  waiting_at_end: int = 0, figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``kpi.windows`` value (queue scope) or ``kpi.agents`` value (agent scope).
    ``figures``: ``kpi_figures(agg, th)`` when the caller already has it (the agent
    stage's windows carry no contact counters, so theirs never change)."""
    size, start, scope, name, channel = key
    record: dict[str, Any] = {
        "window": window_name(size),
        "window_start": format_ms(start),
        "window_end": format_ms(end_ms),
    }
    figures = kpi_figures(agg, th) if figures is None else figures
    if scope == QUEUE:
        record.update({"queue": name, "channel": channel,
                       "waiting_at_start": waiting_at_start, "waiting_at_end": waiting_at_end})
        record.update(figures)
    else:
        record.update({"agent_id": name, "channel": channel})
        record.update({k: figures[k] for k in AGENT_FIELDS})
    # Every record carries them (0, {}, null without agent events): a stable record for
    # consumers. A queue's staffed, available and away time is on each of its channels'
    # records, so it does not add up across channels (docs/agents.md).
    record.update(state_figures(agg.counts))
    record.update({"version": version, "final": final, "published_at": format_ms(now_ms)})
    return record


# The agent stage's live counts (AgentStage.live, agents_live partials): agents per state,
# and per away reason under AWAY_REASON + reason.
LIVE_STAFFED = "staffed"
LIVE_STATES = (LIVE_STAFFED, AVAILABLE, ON_CONTACT, AFTER_CONTACT_WORK, AWAY)
AWAY_REASON = AWAY + ":"


def live_agent_figures(counts: Mapping[str, int], channel: str, last15: dict[str, Any],
                       service_level_target: float | None, last15_seconds: float | None,
                       chat_sessions_per_agent: int) -> dict[str, Any]:
    """The live agent fields of ``kpi.queue-state`` from the summed agent counts and the
    rolling view's figures (``kpi_figures``): Erlang C at the view's arrival rate and
    handle time; null without a service-level target or a known handle time. The gap is
    null too while no presence was ever seen for the queue (``PRESENCE_SEEN``; a staffed
    agent is presence too): zero staffed there means "not reported", not "nobody"."""
    n = {state: counts.get(state, 0) for state in LIVE_STATES}
    known = counts.get(PRESENCE_SEEN, 0) > 0 or n[LIVE_STAFFED] > 0
    required = None
    if service_level_target is not None and last15_seconds:
        required = agents_required_for_kind(
            channel_kind(channel), last15["offered"] / last15_seconds, last15["aht_seconds"],
            service_level_target, last15["service_level_seconds"],
            chat_sessions_per_agent=chat_sessions_per_agent)
    return {
        **{f"agents_{state}": value for state, value in n.items()},
        "agents_away_by_reason": {name[len(AWAY_REASON):]: value for name, value in sorted(counts.items())
                                  if name.startswith(AWAY_REASON) and value},
        "occupancy_now": occupancy(n[ON_CONTACT], n[AFTER_CONTACT_WORK], n[AVAILABLE]),
        "agents_required": required,
        "agents_gap": agents_gap(required, n[LIVE_STAFFED], n[AWAY]) if known else None,
    }


def queue_state_record(queue: str, channel: str, as_of_ms: int, waiting: int,
                       oldest_entered_ms: int | None, agents_busy: int, open_tickets: int,
                       last15: WindowAgg, th: Thresholds, now_ms: int, *,
                       agent_counts: Mapping[str, int] | None = None,
                       service_level_target: float | None = None, last15_seconds: float | None = None,
                       chat_sessions_per_agent: int = 1) -> dict[str, Any]:
    """The ``kpi.queue-state`` value: live state plus the rolling last-15-minutes KPIs.

    ``agent_counts``: agents per state summed over the agent stage's partitions (see
    ``live_agent_figures``); ``last15_seconds``: the span of ``last15``, for the arrival rate."""
    figures = kpi_figures(last15, th)
    longest = None if oldest_entered_ms is None else max(0, as_of_ms - oldest_entered_ms) / 1000
    return {
        "queue": queue, "channel": channel, "as_of": format_ms(as_of_ms),
        "waiting": waiting, "longest_wait_seconds": longest, "agents_busy": agents_busy,
        "open_tickets": open_tickets,
        **live_agent_figures(agent_counts or {}, channel, figures, service_level_target, last15_seconds,
                             chat_sessions_per_agent),
        "last_15m": {k: figures[k] for k in (
            "offered", "answered", "abandoned", "service_level", "service_level_seconds",
            "abandonment_rate", "asa_seconds", "immediate_response_rate",
            "first_response_avg_seconds", "csat")},
        "published_at": format_ms(now_ms),
    }


def event_message(ev: Event, raw: bytes, topic: str, partition: int, offset: int) -> dict[str, Any]:
    """A valid event as forwarded (keyed by interaction) to the lifecycle stage and raw store."""
    return {
        "event_id": ev.event_id, "type": ev.type, "step": ev.step, "channel": ev.channel,
        "ts": ev.occurred_at_ms, "interaction_id": ev.interaction_id, "queue": ev.queue,
        "agent_id": ev.agent_id, "customer_id": ev.customer_id,
        "schema_version": ev.schema_version, "details": ev.details,
        "complaint": ev.attributes.get("complaint") is True,
        "source": [topic, partition, offset],
        # The original payload, unknown fields included, for the raw store.
        "payload": raw.decode("utf-8"),
    }


def step_from_message(doc: dict[str, Any]) -> Step:
    """The lifecycle step of a forwarded event (an ``event_message`` dict)."""
    details = doc["details"]
    # Queue, agent and step names repeat across every open interaction: one copy each.
    return Step(doc["ts"], _shared(doc["step"]), doc["event_id"], _shared(doc["queue"]),
                _shared(doc["agent_id"]),
                _shared(details.get("to_queue")), round(details.get("wrapup_seconds", 0) * 1000),
                details.get("sender"), details.get("public", True), details.get("csat"),
                details.get("nps"), doc.get("complaint", False), doc.get("customer_id"),
                _shared(details.get("reason")))


def _shared(name: str | None) -> str | None:
    return sys.intern(name) if name else name


# base64 (4/3) of this stays under Kafka's default 1,000,000-byte message limit.
DEAD_LETTER_MAX_VALUE_BYTES = 512 * 1024


def dead_letter(raw: bytes | None, rejection: Rejection, topic: str, partition: int,
                offset: int, now_ms: int) -> dict[str, Any]:
    """The ``events.dead-letter`` value: the original bytes (base64) and why they were refused.

    A message too large to fit in a dead-letter record keeps its first 512 KiB, its
    size and its SHA-256 (the whole message is still at topic/partition/offset).
    """
    value = raw or b""
    kept = value[:DEAD_LETTER_MAX_VALUE_BYTES]
    record: dict[str, Any] = {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": format_ms(now_ms),
        "value_base64": base64.b64encode(kept).decode("ascii"),
    }
    if len(kept) < len(value):
        record.update(value_truncated=True, value_bytes=len(value),
                      value_sha256=hashlib.sha256(value).hexdigest())
    return record


def interaction_rows(inter: Interaction, version: int) -> list[dict[str, Any]]:
    """One row per queue segment of an interaction (most have one)."""
    rows = []
    derivation = inter.derive()
    for index, seg in enumerate(derivation.segments):
        rows.append({
            "interaction_id": inter.interaction_id,
            "segment": index,
            "channel": inter.channel,
            "queue": seg.queue,
            "offered_at": format_ms(seg.entered),
            "outcome": seg.exit or "waiting",
            "exit_reason": seg.reason,
            "left_queue_at": None if seg.left is None else format_ms(seg.left),
            "wait_ms": seg.wait_ms,
            "agent_id": seg.agent,
            "transfers": len(seg.transfer_times),
            "transfer_times": [format_ms(ts) for ts in seg.transfer_times],
            "ended_at": None if seg.ended is None else format_ms(seg.ended),
            "wrapup_ms": seg.wrapup_ms,
            "handle_ms": seg.handle_ms,
            "holds": len(seg.holds),  # closed holds; one still open counts once it ends
            "hold_ms": seg.hold_ms,
            "version": version,
        })
    return rows


# -- ClickHouse rows of the records above ----------------------------------------------


def raw_event_row(doc: dict[str, Any], hasher: CustomerIdHasher | None = None) -> dict[str, Any]:
    """The raw_events row of a forwarded event (an ``event_message`` dict); with ``hasher``,
    the customer id is stored hashed, in its column and in the payload."""
    topic, partition, offset = doc["source"]
    customer_id, payload = doc["customer_id"], doc["payload"]
    if hasher is not None and customer_id:
        customer_id, payload = hasher.hash(customer_id), hasher.payload(payload)
    return {
        "event_id": doc["event_id"], "type": doc["type"], "channel": doc["channel"],
        "occurred_at": format_ms(doc["ts"]), "interaction_id": doc["interaction_id"],
        "queue": doc["queue"], "agent_id": doc["agent_id"], "customer_id": customer_id,
        "schema_version": doc["schema_version"], "source_topic": topic,
        "source_partition": partition, "source_offset": offset, "payload": payload,
    }


def breach_row(record: dict[str, Any]) -> dict[str, Any]:
    """An ``sla.breaches`` record as a ClickHouse ``sla_breaches`` row (target flattened)."""
    return {**record, "target_op": record["target"]["op"], "target_value": record["target"]["value"]}


def scorecard_row(record: dict[str, Any]) -> dict[str, Any]:
    """A ``kpi.scorecards`` record as a ClickHouse ``scorecards`` row (components as maps)."""
    parts = record["components"]
    return {**record,
            "weights": {k: c["weight"] for k, c in parts.items()},
            "effective_weights": {k: c["effective_weight"] for k, c in parts.items()},
            "targets": {k: c["target"] for k, c in parts.items()},
            "observed": {k: c["observed"] for k, c in parts.items() if c["observed"] is not None},
            "attainment": {k: c["attainment"] for k, c in parts.items() if c["attainment"] is not None}}
