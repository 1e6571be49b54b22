"""Prometheus recording and alerting rules generated from the ``[targets]`` of the config.

The in-stream breach detector (``streams/sla.py``) and these rules share one
source of truth: the same targets, per channel kind and per queue, and the same
hold-down (``for:`` = ``targets.hold.open_seconds``, ``keep_firing_for:`` =
``targets.hold.resolve_seconds``, or a target's own ``open_seconds`` /
``resolve_seconds``: one rule per hold-down). Every expression works on the metric names
of ``/metrics`` summed ``without (instance, partition)``, so several workers
add up.

| KPI | PromQL |
|---|---|
| service_level | increase(answered_within_target[15m]) / (increase(answered[15m]) + increase(abandoned[15m])), or the channel's other ``service_level_formula`` |
| abandonment_rate | increase(abandoned[15m]) / (increase(answered[15m]) + increase(abandoned[15m])) |
| asa_seconds | increase(answer_wait_seconds_sum[15m]) / increase(answer_wait_seconds_count[15m]) |
| longest_wait_seconds | max without (instance, partition) (ccpulse_queue_longest_wait_seconds) |
| first_response_p90_seconds | tickets (channel not voice/chat): p90 of the answered wait over 1 h |
| occupancy | (on_contact + after_contact_work) / (on_contact + after_contact_work + available) of increase(agent_state_seconds[15m]) |
| agents_gap | max without (instance, partition) (ccpulse_queue_agents_gap) |

Occupancy in the stream is that of each final 15-minute window; here it is the last 15
minutes at each evaluation (the same formula over a sliding window, as service level).
A null ``agents_gap`` (no handle time yet, or no agent event ever named the queue) is no sample: no alert, as no observation.

The ticket p90 alert compares the share of first responses within the target
(``le`` bucket = target) with 90 % when the target is a bucket bound of
``ccpulse_queue_answer_wait_seconds`` (exact, and it still works at the top
finite bucket, where ``histogram_quantile`` cannot exceed the bound); otherwise
it uses ``histogram_quantile`` (interpolated). The p90 is recorded for
dashboards either way.

A 0/0 ratio (no contact left the queue in 15 minutes) is NaN in PromQL and
never compares true: like a null observation in the stream, it neither opens
nor keeps a pending alert (a firing one is kept for ``keep_firing_for``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from ccpulse.config import SERVICE_LEVEL_FORMULAS, Settings
from ccpulse.core.kpis import WAIT_BUCKETS_S
from ccpulse.core.sla import CHANNEL_KINDS, KPIS, MIN, Hold, Target

DEFAULT_PATH = "deploy/prometheus/rules/ccpulse-sla.rules.yml"
GROUP = "ccpulse-sla"
SUM = "sum without (instance, partition)"

CHANNEL_MATCHERS = {"voice": 'channel="voice"', "chat": 'channel="chat"', "ticket": 'channel!~"voice|chat"'}

# recorded series -> expression
COUNTERS_15M = {
    "answered": "ccpulse_queue_answered_total",
    "abandoned": "ccpulse_queue_abandoned_total",
    "answered_within_target": "ccpulse_queue_answered_within_target_total",
    "abandoned_within_target": "ccpulse_queue_abandoned_within_target_total",
    "answer_wait_seconds_sum": "ccpulse_queue_answer_wait_seconds_sum",
    "answer_wait_seconds_count": "ccpulse_queue_answer_wait_seconds_count",
}


def rec(name: str) -> str:
    return f"ccpulse:queue_{name}:increase15m"


SERVICE_LEVEL = "ccpulse:queue_service_level:ratio15m"
ABANDONMENT = "ccpulse:queue_abandonment_rate:ratio15m"
ASA = "ccpulse:queue_asa_seconds:mean15m"
LONGEST = "ccpulse:queue_longest_wait_seconds:max"
AGENTS_GAP = "ccpulse:queue_agents_gap:max"
AGENT_BUSY = "ccpulse:queue_agent_busy_seconds:increase15m"
AGENT_AVAILABLE = "ccpulse:queue_agent_available_seconds:increase15m"
OCCUPANCY = "ccpulse:queue_occupancy:ratio15m"
# Per queue x channel, the states summed (a queue's available time is on each channel's series).
AGENT_SUM = "sum without (instance, partition, state)"
FRT_P90 = "ccpulse:queue_first_response_p90_seconds:1h"

SL_FORMULAS = {
    "answered_over_exits": SERVICE_LEVEL,
    "abandons_within_target_neutral":
        f"{rec('answered_within_target')}{{SEL}} / ({rec('answered')}{{SEL}} + {rec('abandoned')}{{SEL}}"
        f" - {rec('abandoned_within_target')}{{SEL}})",
    "abandons_within_target_positive":
        f"({rec('answered_within_target')}{{SEL}} + {rec('abandoned_within_target')}{{SEL}})"
        f" / ({rec('answered')}{{SEL}} + {rec('abandoned')}{{SEL}})",
    "answered_only": f"{rec('answered_within_target')}{{SEL}} / {rec('answered')}{{SEL}}",
}
assert set(SL_FORMULAS) == set(SERVICE_LEVEL_FORMULAS)

ALERTS = {
    # kpi: (alert name, what, how the value is shown)
    "service_level": ("CcpulseSlaServiceLevelBelowTarget", "service level over the last 15 minutes",
                      "humanizePercentage"),
    "abandonment_rate": ("CcpulseSlaAbandonmentRateAboveTarget",
                         "abandonment rate over the last 15 minutes", "humanizePercentage"),
    "asa_seconds": ("CcpulseSlaAsaAboveTarget", "average speed of answer over the last 15 minutes",
                    "humanizeDuration"),
    "longest_wait_seconds": ("CcpulseSlaLongestWaitAboveTarget", "longest current wait",
                             "humanizeDuration"),
    "first_response_p90_seconds": ("CcpulseSlaTicketFirstResponseP90AboveTarget",
                                   "p90 of the ticket first response time over the last hour",
                                   "humanizeDuration"),
    "occupancy": ("CcpulseSlaOccupancyAboveTarget", "agent occupancy over the last 15 minutes",
                  "humanizePercentage"),
    "agents_gap": ("CcpulseSlaAgentsGapAboveTarget", "agents_gap (agents short of the requirement now)",
                   "humanize"),
}
assert set(ALERTS) == set(KPIS)


@dataclass(frozen=True)
class Scope:
    """One channel kind, either for every queue without an exception or for one queue."""

    kind: str
    queue: str | None  # None: the kind's default (every queue not listed in ``exceptions``)
    exceptions: tuple[str, ...]
    targets: Mapping[str, Target]
    formula: str

    def selector(self) -> str:
        parts = [CHANNEL_MATCHERS[self.kind]]
        if self.queue is not None:
            parts.append(f'queue="{promql_string(self.queue)}"')
        elif self.exceptions:
            parts.append(f'queue!~"{promql_string("|".join(re2_escape(q) for q in self.exceptions))}"')
        return "{" + ", ".join(parts) + "}"


def re2_escape(text: str) -> str:
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def promql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 60000 == 0 and ms:
        return f"{ms // 60000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def scopes(settings: Settings) -> list[Scope]:
    out = []
    for kind in CHANNEL_KINDS:
        base_targets = settings.targets.kinds.get(kind, {})
        base_formula = settings.thresholds[kind].service_level_formula
        queues = sorted({q for (q, k) in settings.targets.queues if k == kind}
                        | {q for (q, k) in settings.queue_thresholds if k == kind})
        special = []
        for queue in queues:
            targets = settings.targets.for_kind(queue, kind)
            formula = settings.queue_thresholds.get((queue, kind), settings.thresholds[kind]).service_level_formula
            if dict(targets) != dict(base_targets) or formula != base_formula:
                special.append(Scope(kind, queue, (), targets, formula))
        out.append(Scope(kind, None, tuple(s.queue for s in special if s.queue), base_targets, base_formula))
        out.extend(special)
    return out


def kpi_expression(kpi: str, scope: Scope) -> str:
    sel = scope.selector()
    if kpi == "service_level":
        formula = SL_FORMULAS[scope.formula]
        return f"{formula}{sel}" if "{SEL}" not in formula else "(" + formula.replace("{SEL}", sel) + ")"
    if kpi == "abandonment_rate":
        return f"{ABANDONMENT}{sel}"
    if kpi == "asa_seconds":
        return f"{ASA}{sel}"
    if kpi == "longest_wait_seconds":
        return f"{LONGEST}{sel}"
    if kpi == "occupancy":
        return f"{OCCUPANCY}{sel}"
    if kpi == "agents_gap":
        return f"{AGENTS_GAP}{sel}"
    raise ValueError(kpi)


def _term(kpi: str, scope: Scope, target: Target, labels: Mapping[str, str]) -> str:
    bad = "<" if target.direction == MIN else ">"
    if kpi == "first_response_p90_seconds":
        sel = scope.selector()[1:-1]
        bounds = {float(b) for b in WAIT_BUCKETS_S}
        if float(target.value) in bounds:
            # p90 > target  <=>  fewer than 90 % of first responses within the target.
            within = (f"{SUM.replace('partition)', 'partition, le)')} (rate(ccpulse_queue_answer_wait_seconds_bucket"
                      f'{{{sel}, le="{number(target.value)}"}}[1h]))')
            total = f"{SUM} (rate(ccpulse_queue_answer_wait_seconds_count{{{sel}}}[1h]))"
            expr = f"({FRT_P90}{{{sel}}} and on (queue, channel) ({within} / {total} < 0.9))"
        else:
            expr = f"({FRT_P90}{{{sel}}} > {number(target.value)})"
    else:
        expr = f"{kpi_expression(kpi, scope)} {bad} {number(target.value)}"
    for name, value in labels.items():
        expr = f'label_replace({expr}, "{name}", "{promql_string(value)}", "", "")'
    return expr


def recording_rules() -> list[tuple[str, str]]:
    rules = [(rec(name), f"{SUM} (increase({metric}[15m]))") for name, metric in COUNTERS_15M.items()]
    rules += [
        (SERVICE_LEVEL, f"{rec('answered_within_target')} / ({rec('answered')} + {rec('abandoned')})"),
        (ABANDONMENT, f"{rec('abandoned')} / ({rec('answered')} + {rec('abandoned')})"),
        (ASA, f"{rec('answer_wait_seconds_sum')} / {rec('answer_wait_seconds_count')}"),
        (LONGEST, "max without (instance, partition) (ccpulse_queue_longest_wait_seconds)"),
        (FRT_P90, "histogram_quantile(0.9, sum by (le, queue, channel) "
                  '(rate(ccpulse_queue_answer_wait_seconds_bucket{channel!~"voice|chat"}[1h])))'),
        (AGENTS_GAP, "max without (instance, partition) (ccpulse_queue_agents_gap)"),
        (AGENT_BUSY, f"{AGENT_SUM} (increase(ccpulse_queue_agent_state_seconds_total"
                     '{state=~"on_contact|after_contact_work"}[15m]))'),
        (AGENT_AVAILABLE, f"{AGENT_SUM} (increase(ccpulse_queue_agent_state_seconds_total"
                          '{state="available"}[15m]))'),
        (OCCUPANCY, f"{AGENT_BUSY} / ({AGENT_BUSY} + {AGENT_AVAILABLE})"),
    ]
    return rules


@dataclass(frozen=True)
class Alert:
    name: str
    kpi: str
    expr_terms: tuple[str, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    hold: Hold  # for: / keep_firing_for:


def alerts(settings: Settings) -> list[Alert]:
    """One alert per KPI, or one per distinct hold-down of its targets (a target may set
    its own: ``for:`` is per rule), all of one name."""
    out = []
    all_scopes = scopes(settings)
    for kpi, (name, what, humanize) in ALERTS.items():
        pairs = [(scope, scope.targets[kpi]) for scope in all_scopes if kpi in scope.targets]
        if not pairs:
            continue
        severities = {target.severity for _, target in pairs}
        uniform = len(severities) == 1
        holds = sorted({target.hold_in(settings.targets.hold) for _, target in pairs},
                       key=lambda h: (h.open_seconds, h.resolve_seconds))
        for hold in holds:
            terms = []
            for scope, target in pairs:
                if target.hold_in(settings.targets.hold) != hold:
                    continue
                labels = {"target": f"{target.op} {number(target.value)}"}
                if not uniform:
                    labels["severity"] = target.severity
                terms.append(_term(kpi, scope, target, labels))
            labels = {"kpi": kpi}
            if uniform:
                labels = {"severity": next(iter(severities)), "kpi": kpi}
            annotations = {
                "summary": f"SLA breach: {what} of {{{{ $labels.queue }}}}/{{{{ $labels.channel }}}}"
                           " misses its target",
                "description": f"The {what} of queue {{{{ $labels.queue }}}} ({{{{ $labels.channel }}}}) is "
                               f"{{{{ $value | {humanize} }}}}, target {{{{ $labels.target }}}}, for at least "
                               f"{duration(hold.open_seconds)}.",
            }
            if kpi == "first_response_p90_seconds":
                annotations["description"] += (" (p90 interpolated from the wait histogram: at the top finite "
                                               "bucket bound it means at least that.)")
            out.append(Alert(name, kpi, tuple(terms), labels, annotations, hold))
    return out


def generate(settings: Settings) -> str:
    """The rules file for ``settings`` (deterministic: the same config gives the same bytes)."""
    lines = [
        "# Generated by `ccpulse rules` from the [targets] of the ccpulse config (ccpulse/alert_rules.py).",
        "# Do not edit: change the config and run `ccpulse rules` (`ccpulse rules --check` in CI).",
        "# The same targets and hold-down drive the in-stream detector that publishes sla.breaches.",
        "groups:",
        f"  - name: {GROUP}",
        "    rules:",
    ]
    for record, expr in recording_rules():
        lines += [f"      - record: {record}", f"        expr: {_quote(expr)}"]
    for alert in alerts(settings):
        lines += [f"      - alert: {alert.name}", "        expr: |-"]
        for i, term in enumerate(alert.expr_terms):
            lines.append("          " + ("" if i == 0 else "or ") + term)
        lines.append(f"        for: {duration(alert.hold.open_seconds)}")
        if alert.hold.resolve_seconds > 0:
            lines.append(f"        keep_firing_for: {duration(alert.hold.resolve_seconds)}")
        lines.append("        labels:")
        lines += [f"          {k}: {_quote(v)}" for k, v in alert.labels.items()]
        lines.append("        annotations:")
        lines += [f"          {k}: {_quote(v)}" for k, v in alert.annotations.items()]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def alert_names(settings: Settings) -> Iterable[str]:
    return [a.name for a in alerts(settings)]

