"""Every dashboard query, run against real data: a real worker, a real Prometheus, the real schema.

One module-scoped run:

1. a worker (real broker, embedded chDB store) with retention settings in its config;
2. a real Prometheus server (Debian's ``prometheus``; tests/prometheus_server.py)
   scraping the worker every second, with every rule file of deploy/prometheus/rules loaded;
3. history: a few thousand mixed voice/chat/ticket events from
   ``generate_mixed_events`` over about two hours of event time (45 minutes a week ago,
   so week-over-week panels have a last week, and the 100 minutes before now), with the
   agents' events (logins, after-contact work, breaks and lunch with reasons, holds; every
   agent logged out at the end of each part, so no one stays staffed across the gaps),
   published with ``publish_mixed(..., speed=None)``, plus a few invalid messages and a
   duplicate so the bad-input panels have series;
4. live traffic: live-timestamped mixed events published in real time (speed 1) for
   LIVE_SECONDS; while they flow, every PromQL expression is evaluated;
5. a (late-dated) sentinel event days ahead closes every window and decides first-contact
   resolution (one more, a minute further, each round until every 1-day window is final);
   the worker stops and its store is queried with clickhouse_connect's chdb interface.

(a) Every ClickHouse panel's SQL, with the plugin's macros and the dashboard variables
substituted (every value of a custom variable such as Daily/Weekly/Monthly in turn, and
the values a query variable's own SQL returns), must run and return rows holding every
column the panel uses (by-name overrides, sort, reduce fields; a time column and numeric
values for time series), each with at least one non-null value.

(b) Every PromQL expression of the dashboards and of every rule file under
deploy/prometheus/rules must be accepted by Prometheus and return data, by this rule:

  1. the expression as written returns at least one sample; else
  2. the expression "without its comparisons" returns at least one sample: every
     comparison operator (== != > < >= <=) gets the ``bool`` modifier, so it yields 0/1
     for every series instead of filtering them out, and ``absent(x)`` /
     ``absent_over_time(x[r])`` become ``x`` / ``last_over_time(x[r])`` (alert
     expressions are empty while all is well); else
  3. the expression may be legitimately empty only because a metric it reads has no
     series yet (e.g. ``ccpulse_sink_write_errors_total`` before the first failed write):
     every ``ccpulse`` metric it names must be declared on the worker's /metrics (or be
     a recording rule's output), at least one of its selectors must match no series in
     Prometheus, and ``(<expr>) or vector(0)`` must evaluate without error.
  Anything else (a typo in a metric or label, a query error, an empty result for another
  reason) fails; for a dashboard query, rule 3 is accepted only for the sink error panels.

The trend model is checked too: kpi_daily equals the final 1-day windows (percentiles from
the SQL DDSketch equal the engine's), weekly/monthly ratios come from summed counters, and
the retention settings of the worker's config are the tables' TTLs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import clickhouse_connect
import orjson
import pytest
import yaml

from ccpulse.commands import simulate
from ccpulse.commands import simulate_channels as sc
from ccpulse.commands.publish import publish_mixed
from sinks.clickhouse import Retention, current_ttl
from tests.prometheus_server import PrometheusError, PrometheusServer, prometheus_binary
from tests.test_grafana_dashboards import (
    CLICKHOUSE_TYPE, DASHBOARDS, PROMETHEUS_TYPE, clickhouse_targets, custom_values, prometheus_targets,
    variable_query)
from tests.worker_process import WorkerProcess, latest_windows, produce, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted(p for pattern in ("*.yml", "*.yaml") for p in (ROOT / "deploy/prometheus/rules").glob(pattern))
LIVE_SECONDS = 28.0
EVALUATE_AFTER = 20.0  # seconds into the live traffic: PromQL is evaluated while events still flow
RATE_INTERVAL = "20s"  # $__rate_interval (Grafana: max(4 x scrape interval, interval + scrape interval))
RETENTION = {"raw_retention_days": 400, "interactions_retention_days": 400, "windows_retention_days": 60,
             "daily_retention_days": 1000}
SENTINEL_AHEAD = timedelta(days=3)  # closes every day window and decides every FCR contact
VOICE_QUEUES = (simulate.QueueModel("billing", 6), simulate.QueueModel("support", 5))
CHAT_QUEUES = (simulate.QueueModel("chat-support", 4),)
TICKET_QUEUES = (simulate.QueueModel("tier1", 5),)


def mixed(start: datetime, seconds: float, seed: int, scale: float = 1.0,
          break_interval: float = 900.0, break_duration: float = 240.0) -> list[tuple[str, dict[str, Any]]]:
    """Calls, chats and tickets with the agents' events, every agent logged out at ``start + seconds``."""
    voice = simulate.SimulationConfig(
        rate=0.1 * scale, queues=VOICE_QUEUES, service_mean=60.0, wrapup_mean=10.0, patience_mean=90.0,
        seed=seed, start=start, transfer_probability=0.05, repeat_probability=0.1, rating_probability=0.3,
        agent_events=True, break_interval=break_interval, break_duration=break_duration, hold_probability=0.2)
    chat = sc.ChatConfig(rate=0.04 * scale, queues=CHAT_QUEUES, seed=seed, start=start, agent_events=True)
    ticket = sc.TicketConfig(rate=0.02 * scale, queues=TICKET_QUEUES, first_reply_mean=900.0,
                             solve_after_mean=1200.0, customer_reply_mean=900.0, seed=seed, start=start)
    events = list(sc.generate_mixed_events(voice, chat, ticket, seconds))  # all before start + seconds
    return events + logouts(events, start + timedelta(seconds=seconds), f"{seed}")


def logouts(events: list[tuple[str, dict[str, Any]]], at: datetime, tag: str) -> list[tuple[str, dict[str, Any]]]:
    """``agent.logged_out`` at ``at`` for every agent of ``events``: the end of a shift."""
    agents = sorted({e["agent_id"] for family, e in events if family == "agent"})
    return [("agent", {"event_id": f"logout-{tag}-{agent}", "type": "agent.logged_out", "agent_id": agent,
                       "occurred_at": iso(at), "schema_version": 1}) for agent in agents]


def history(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """45 minutes from 10:00 UTC a week ago (always last week), and the 100 minutes before now."""
    last_week = datetime.combine(now.date() - timedelta(days=7), datetime.min.time(), timezone.utc) \
        + timedelta(hours=10)
    start, end = now - timedelta(minutes=100), now - timedelta(minutes=1)
    return mixed(last_week, 2700, seed=21) + mixed(start, (end - start).total_seconds(), seed=22)


def iso(moment: datetime) -> str:
    # Milliseconds kept: a logout stamped at the whole second could precede the
    # simulator's break of that same second, and the agent would stay away on break.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def publish(bootstrap: str, prefix: str, events: list[tuple[str, dict[str, Any]]], speed: float | None) -> int:
    """Publishes every event; returns the contact events among them (what ``events_consumed`` counts)."""
    topics = {"call": f"{prefix}calls", "chat": f"{prefix}chats", "ticket": f"{prefix}tickets",
              "agent": f"{prefix}agents"}
    sent = asyncio.run(publish_mixed(events, bootstrap, topics, speed))
    assert sent == len(events), f"{sent} of {len(events)} events acknowledged"
    return sum(1 for family, _ in events if family != "agent")


# ---------------------------------------------------------------- PromQL

def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expr) of every Prometheus query and Prometheus query variable of the dashboards."""
    out = []
    for name, dashboard in DASHBOARDS.items():
        for panel, target in prometheus_targets(dashboard):
            out.append((f"{name}: {panel['title']} [{target['refId']}]", target["expr"]))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                out.append((f"{path.name}: {group['name']}/{name}", str(rule["expr"])))
    return out


def recorded_names() -> set[str]:
    names = set()
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        names |= {r["record"] for g in doc.get("groups", []) for r in g.get("rules", []) if "record" in r}
    return names


EXPRESSIONS = dashboard_expressions() + rule_expressions()


def promql_variables(expr: str, queues: list[str]) -> str:
    # Grafana's multi-value format for Prometheus: regex-escaped values in (a|b), inside a PromQL string.
    regex = "(" + "|".join(re.sub(r"([\\.+*?^$()\[\]{}|])", r"\\\\\1", q) for q in queues) + ")"
    expr = re.sub(r"\$\{queue(?::\w+)?\}|\$queue\b", regex, expr)
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "5s").replace("$__range", "1m")
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def _outside_matchers(expr: str) -> list[tuple[int, str]]:
    """(position, character) of the expression outside label matchers {...} and string literals."""
    out, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            out.append((i, ch))
        i += 1
    return out


def without_comparisons(expr: str) -> str:
    """Rule 2: comparisons yield 0/1 (``bool``) instead of filtering; absent(x) -> x."""
    plain = dict(_outside_matchers(expr))
    out, i = [], 0
    while i < len(expr):
        two = expr[i:i + 2]
        if i in plain and two in ("==", "!=", ">=", "<="):
            op, step = two, 2
        elif i in plain and expr[i] in "<>":
            op, step = expr[i], 1
        else:
            out.append(expr[i])
            i += 1
            continue
        out.append(op)
        i += step
        if not re.match(r"\s*bool\b", expr[i:]):
            out.append(" bool")
    text = "".join(out)
    text = re.sub(r"\babsent_over_time\s*\(", "last_over_time(", text)
    return re.sub(r"\babsent\s*\(", "(", text)


def metric_selectors(expr: str) -> list[str]:
    """The ccpulse vector selectors of an expression: name plus its {matchers} if any."""
    return [m.group(0) for m in re.finditer(r"\bccpulse[_:][A-Za-z0-9_:]*(\{[^}]*\})?", expr)]


def base_name(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def sample_values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result if "value" in r]


def evaluate(prom: PrometheusServer, expr: str, declared: set[str]) -> tuple[str, int, str, list[float]]:
    """(rule used, samples, detail, values) following the module docstring."""
    result = prom.query(expr)
    if result:
        return "as written", len(result), "", sample_values(result)
    relaxed = without_comparisons(expr)
    if relaxed != expr:
        result = prom.query(relaxed)
        if result:
            return "without comparisons", len(result), relaxed, sample_values(result)
    selectors = metric_selectors(expr)
    names = {s.split("{")[0] for s in selectors}
    undeclared = {n for n in names if base_name(n) not in declared and n not in declared}
    if undeclared:
        return "fail", 0, f"empty, and not declared on the worker's /metrics: {sorted(undeclared)}", []
    without_series = [s for s in selectors if not prom.series(s)]
    if not without_series:
        return "fail", 0, "empty although every metric it reads has series", []
    prom.query(f"({relaxed}) or vector(0)")
    return "no series yet", 0, f"no series for {without_series}", []


# ---------------------------------------------------------------- SQL

def sql_substitute(sql: str, values: dict[str, list[str]], t_from: datetime, t_to: datetime,
                   interval_s: int = 3600) -> str:
    """The ClickHouse plugin's macros (pkg/macros/macros.go) and Grafana's variable formats."""
    f_s, t_s = int(t_from.timestamp()), int(t_to.timestamp())
    f_ms, t_ms = int(t_from.timestamp() * 1000), int(t_to.timestamp() * 1000)
    f_d, t_d = t_from.strftime("%Y-%m-%d"), t_to.strftime("%Y-%m-%d")
    with_args = {
        "timeFilter_ms": lambda c: f"{c} >= fromUnixTimestamp64Milli({f_ms}) AND {c} <= fromUnixTimestamp64Milli({t_ms})",
        "timeFilter": lambda c: f"{c} >= toDateTime({f_s}) AND {c} <= toDateTime({t_s})",
        "dateFilter": lambda c: f"{c} >= toDate('{f_d}') AND {c} <= toDate('{t_d}')",
        "timeInterval_ms": lambda c: f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {interval_s * 1000} millisecond)",
        "timeInterval": lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {interval_s} second)",
    }
    for name, expand in with_args.items():
        sql = re.sub(rf"\$__{name}\(([^)]*)\)", lambda m, e=expand: e(m.group(1).strip()), sql)
    plain = {"fromTime_ms": f"fromUnixTimestamp64Milli({f_ms})", "toTime_ms": f"fromUnixTimestamp64Milli({t_ms})",
             "fromTime": f"toDateTime({f_s})", "toTime": f"toDateTime({t_s})", "interval_s": str(interval_s)}
    for name, value in plain.items():
        sql = re.sub(rf"\$__{name}\b(\(\))?", value, sql)

    def variable(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        fmt = m.group(2)
        vals = values[name]
        if fmt == "singlequote":
            return ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in vals)
        assert fmt is None and len(vals) == 1, f"${{{name}:{fmt}}}: use :singlequote for multi-value variables"
        return vals[0]

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", variable, sql)
    assert "$" not in sql, sql
    return sql


def used_columns(panel: dict[str, Any]) -> set[str]:
    """Field names a panel refers to: by-name overrides, sort, organize, and reduce-field regexes."""
    names = {o["matcher"]["options"] for o in panel.get("fieldConfig", {}).get("overrides", [])
             if o["matcher"]["id"] == "byName"}
    display = {o["matcher"]["options"]: p["value"] for o in panel.get("fieldConfig", {}).get("overrides", [])
               for p in o["properties"] if p["id"] == "displayName"}
    for sort in panel.get("options", {}).get("sortBy", []):
        name = sort["displayName"]
        names.add(next((field for field, shown in display.items() if shown == name), name))
    for t in panel.get("transformations", []):
        if t["id"] == "organize":
            for key in ("excludeByName", "indexByName", "renameByName"):
                names |= set(t["options"].get(key, {}))
    return names


def reduce_field_patterns(panel: dict[str, Any]) -> list[str]:
    pattern = panel.get("options", {}).get("reduceOptions", {}).get("fields", "")
    return [pattern.strip("/")] if pattern else []


def clickhouse_cases() -> list[tuple[str, str, str]]:
    return [(name, panel["title"], target["refId"]) for name, d in DASHBOARDS.items()
            for panel, target in clickhouse_targets(d)]


def clickhouse_variables(name: str) -> list[dict[str, Any]]:
    return DASHBOARDS[name].get("templating", {}).get("list", [])


# ---------------------------------------------------------------- the run

def consumed_at_least(worker: WorkerProcess, count: int) -> bool:
    status, body = worker.get("/api/windows")
    return status == 200 and json.loads(body).get("events_consumed", 0) >= count


def publish_history(bootstrap: str, worker: WorkerProcess, now: datetime) -> int:
    """The history, a few invalid messages and a duplicate; returns the messages sent once consumed."""
    events = history(now)
    sent = publish(bootstrap, worker.prefix, events, None)
    again = next(e for family, e in reversed(events) if family == "call")
    produce(bootstrap, f"{worker.prefix}calls", [
        (b"bad-1", b"this is not json"),
        (b"bad-2", orjson.dumps({"event_id": "bad-2", "type": "call.unknown", "interaction_id": "x",
                                 "occurred_at": iso(now)})),
        (again["interaction_id"].encode(), orjson.dumps(again))])  # a duplicate
    wait_until(lambda: consumed_at_least(worker, sent + 3), 180, "the history consumed", interval=1)
    return sent + 3


def evaluate_while_live(bootstrap: str, worker: WorkerProcess, prom: PrometheusServer,
                        timings: dict[str, float]) -> dict[str, Any]:
    """Live events in real time; every PromQL expression evaluated while they flow."""
    # Breaks every few seconds: agents are away (by reason) while PromQL is evaluated.
    live = mixed(datetime.now(timezone.utc), LIVE_SECONDS, seed=23, scale=15.0, break_interval=10.0,
                 break_duration=30.0)
    live_sent: list[int] = []
    publisher = threading.Thread(
        target=lambda: live_sent.append(publish(bootstrap, worker.prefix, live, 1.0)), daemon=True)
    t = time.monotonic()
    publisher.start()
    time.sleep(EVALUATE_AFTER)
    assert publisher.is_alive(), "live events must still flow while PromQL is evaluated"
    declared = {base_name(n) for n in re.findall(r"^# TYPE (\S+)", worker.get("/metrics")[1], re.M)}
    declared |= recorded_names()
    queues = prom.api("label/queue/values", [("match[]", "ccpulse_queue_offered_total")])
    results: dict[str, tuple[str, int, str, list[float]]] = {}
    errors: dict[str, str] = {}
    te = time.monotonic()
    for where, expr in EXPRESSIONS:
        try:
            results[where] = evaluate(prom, promql_variables(expr, queues), declared)
        except (PrometheusError, AssertionError) as exc:
            errors[where] = str(exc)
    timings[f"PromQL: {len(EXPRESSIONS)} expressions evaluated"] = time.monotonic() - te
    variables = {v["name"]: prom.api(f"label/{v['name']}/values",
                                     [("match[]", variable_query(v).split("(")[1].split(",")[0])])
                 for d in DASHBOARDS.values() for v in d.get("templating", {}).get("list", [])
                 if v["type"] == "query" and v["datasource"]["type"] == PROMETHEUS_TYPE}
    state = {"targets": prom.targets_health(), "rules": prom.rule_groups(), "variables": variables}
    publisher.join(LIVE_SECONDS + 30)
    assert live_sent, "the live publisher failed"
    timings["live traffic (speed 1)"] = time.monotonic() - t
    timings["live events"] = live_sent[0]
    return {"results": results, "errors": errors, "prom": state, "live_sent": live_sent[0]}


def close_every_day(bootstrap: str, worker: WorkerProcess, now: datetime, timings: dict[str, float]) -> None:
    """Sentinels days ahead until every 1-day window of the run is final with FCR decided."""
    topic = f"{worker.prefix}kpi.windows"
    nudges = itertools.count()

    # The sentinels' own day never closes (event time stays in it), and with agents it has
    # windows of every queue (time in state up to the sentinel): only the days before it.
    sentinel_day = iso(datetime.combine((now + SENTINEL_AHEAD).date(), datetime.min.time(), timezone.utc))

    def settled() -> bool:
        windows = latest_windows(bootstrap, topic)
        days = [r for r in windows.values() if r["queue"] != "sentinel" and r["window"] == "1d"
                and r["window_start"] < sentinel_day]
        if days and all(r["final"] and r["fcr_final"] is not False for r in days):
            return True
        # A sentinel a minute further each round: a contact whose FCR horizon the event time
        # had already passed when the contact reached the FCR stage is decided at the next advance.
        i = next(nudges)
        sentinel = {"event_id": f"sentinel-{i}", "type": "call.offered", "interaction_id": f"sentinel-{i}",
                    "queue": "sentinel", "occurred_at": iso(now + SENTINEL_AHEAD + timedelta(minutes=i))}
        produce(bootstrap, f"{worker.prefix}calls", [(b"sentinel", orjson.dumps(sentinel))])
        return False
    t = time.monotonic()
    # The trend rollups read the 1-day windows: wait for all of them final, FCR decided.
    # Each round reads kpi.windows and sends one sentinel: a round a second, not every 5 s.
    wait_until(settled, 300, "every day window final, FCR decided", interval=1)
    timings["sentinel: day windows final"] = time.monotonic() - t
    timings["sentinels sent"] = next(nudges)


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    prometheus_binary()  # fails (not skips) with the install hint when prometheus is missing
    tmp: Path = tmp_path_factory.mktemp("dashboards")
    config = tmp / "ccpulse.toml"
    config.write_text("max_future_seconds = 432000\n[clickhouse]\n"
                      + "".join(f"{k} = {v}\n" for k, v in RETENTION.items()))
    worker = WorkerProcess.create(kafka_bootstrap, tmp, "dashboards", CCPULSE_CONFIG=str(config))
    prom = PrometheusServer(tmp / "prometheus", [f"127.0.0.1:{worker.port}"], rule_files=RULE_FILES)
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        worker.start()
        prom.start()
        timings["worker + prometheus start"] = time.monotonic() - t
        t = time.monotonic()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        history_sent = publish_history(kafka_bootstrap, worker, now)
        timings["history: publish + consume"] = time.monotonic() - t
        timings["history messages"] = history_sent
        try:
            live = evaluate_while_live(kafka_bootstrap, worker, prom, timings)
        finally:
            prom.stop()
        wait_until(lambda: consumed_at_least(worker, history_sent + live["live_sent"]), 120,
                   "the live events consumed", interval=1)
        close_every_day(kafka_bootstrap, worker, now, timings)
        # The sentinels move event time 3 days on: with agents the store gets their time in
        # state for every window up to there (tens of thousands of rows) before it settles.
        worker.wait_sink_idle(timeout=300)
    finally:
        prom.stop()
        worker.stop()
    client = clickhouse_connect.get_client(interface="chdb", path=worker.clickhouse_path)
    yield {**live, "client": client, "timings": timings, "to": datetime.now(timezone.utc)}
    client.close()
    print("\ntimings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1))
    for where, (rule, samples, detail, _values) in sorted(live["results"].items()):
        print(f"PromQL {rule:>20} {samples:>4} samples  {where}  {detail}")


# ---------------------------------------------------------------- (b) PromQL

def test_prometheus_scraped_the_worker(run) -> None:
    targets = run["prom"]["targets"]
    assert targets and all(t["health"] == "up" for t in targets), targets


@pytest.mark.skipif(not RULE_FILES, reason="no rule files under deploy/prometheus/rules yet")
def test_prometheus_loaded_every_rule_file(run) -> None:
    loaded = {(Path(g["file"]).name, g["name"]) for g in run["prom"]["rules"]}
    expected = {(p.name, g["name"]) for p in RULE_FILES
                for g in (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("groups", [])}
    assert expected <= loaded
    unhealthy = [(r["name"], r.get("lastError")) for g in run["prom"]["rules"] for r in g["rules"]
                 if r.get("health") == "err"]
    assert not unhealthy, unhealthy


def test_prometheus_variables_have_values(run) -> None:
    assert run["prom"]["variables"] and all(run["prom"]["variables"].values()), run["prom"]["variables"]


@pytest.mark.parametrize("where", [w for w, _ in EXPRESSIONS])
def test_promql_expression_returns_data(run, where: str) -> None:
    assert where not in run["errors"], f"Prometheus refused {where}: {run['errors'][where]}"
    rule, samples, detail, _values = run["results"][where]
    assert rule != "fail", f"{where}: {detail}"
    if where in dict(dashboard_expressions()) and rule == "no series yet":
        # Only error counters may be empty on a healthy run.
        assert "error" in where.lower(), f"{where}: {detail}"


def test_ratio_stats_are_ratios(run) -> None:
    """A percentunit stat (service level, abandonment) shows a value in [0, 1], or NaN for 0/0."""
    checked = 0
    for name, dashboard in DASHBOARDS.items():
        for panel, target in prometheus_targets(dashboard):
            if panel["type"] == "stat" and panel["fieldConfig"]["defaults"].get("unit") == "percentunit":
                values = run["results"][f"{name}: {panel['title']} [{target['refId']}]"][3]
                assert values and all(v != v or 0 <= v <= 1 for v in values), (panel["title"], values)
                assert any(v == v for v in values), (panel["title"], "only NaN: nothing answered or abandoned")
                checked += 1
    assert checked >= 2


def test_most_expressions_return_data_as_written(run) -> None:
    dashboards = {w for w, _ in dashboard_expressions()}
    as_written = [w for w in dashboards if run["results"].get(w, ("",))[0] == "as written"]
    assert len(as_written) >= len(dashboards) - 3, sorted(dashboards - set(as_written))


# ---------------------------------------------------------------- (a) SQL

def _variable_values(client, name: str, t_from: datetime, t_to: datetime) -> dict[str, list[list[str]]]:  # type: ignore[no-untyped-def]
    """Variable -> the value lists to try: each value of a custom variable, all values of a query variable."""
    out: dict[str, list[list[str]]] = {}
    for v in clickhouse_variables(name):
        if v["type"] == "custom":
            out[v["name"]] = [[value] for value in custom_values(v)]
        elif v["type"] == "query" and v["datasource"]["type"] == CLICKHOUSE_TYPE:
            sql = sql_substitute(variable_query(v), {}, t_from, t_to)
            values = [str(r[0]) for r in client.query(sql).result_rows]
            assert values, f"variable {v['name']} of {name}: no values"
            out[v["name"]] = [values]
    return out


@pytest.mark.parametrize("name", [n for n in DASHBOARDS if any(True for _ in clickhouse_targets(DASHBOARDS[n]))])
def test_clickhouse_variable_queries_return_values(run, name: str) -> None:
    t_to = run["to"]
    values = _variable_values(run["client"], name, t_to - timedelta(days=30), t_to)
    assert values and all(all(v) for v in values.values())


@pytest.mark.parametrize("name,title,ref", clickhouse_cases())
def test_clickhouse_panel_query_returns_the_columns_it_uses(run, name: str, title: str, ref: str) -> None:
    client = run["client"]
    panel, target = next((p, t) for p, t in clickhouse_targets(DASHBOARDS[name])
                         if p["title"] == title and t["refId"] == ref)
    t_to = run["to"]
    t_from = t_to - timedelta(days=30)
    choices = _variable_values(client, name, t_from, t_to)
    used = used_columns(panel)
    patterns = reduce_field_patterns(panel)
    combos = [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())] or [{}]
    for values in combos:
        sql = sql_substitute(target["rawSql"], values, t_from, t_to)
        try:
            result = client.query(sql)
        except Exception as exc:
            pytest.fail(f"{name} / {title} with {values}: {str(exc).splitlines()[0][:500]}\n{sql}")
        where = f"{name} / {title} with {({k: v if len(v) < 4 else v[:3] + ['...'] for k, v in values.items()})}"
        columns = result.column_names
        rows = result.result_rows
        assert rows, f"{where}: no rows"
        missing = used - set(columns)
        assert not missing, f"{where}: the panel uses {sorted(missing)}, the query returns {columns}"
        for pattern in patterns:
            assert any(re.search(pattern, c) for c in columns), f"{where}: no column matches /{pattern}/"
        by_name = dict(zip(columns, zip(*rows)))
        if panel["type"] == "timeseries":
            assert "time" in columns, f"{where}: a time series needs a time column"
            assert all(isinstance(v, datetime) for v in by_name["time"]), where
            assert list(by_name["time"]) == sorted(by_name["time"]), f"{where}: rows must be ordered by time"
            numeric = [c for c in columns if c != "time" and any(isinstance(v, (int, float)) and not
                                                                 isinstance(v, bool) for v in by_name[c])]
            assert numeric, f"{where}: no numeric value column"
            used |= set(numeric)
        for column in used | {c for c in columns for p in patterns if re.search(p, c)}:
            assert any(v is not None for v in by_name[column]), f"{where}: {column} is always NULL"


def test_every_clickhouse_panel_was_checked() -> None:
    assert len(clickhouse_cases()) >= 12
    assert {name for name, _, _ in clickhouse_cases()} == {"service-trends.json", "agents.json", "staffing.json"}


# ---------------------------------------------------------------- the trend model itself

def test_daily_rollup_equals_the_final_day_windows(run) -> None:
    client = run["client"]
    windows = client.query(
        "SELECT toDate(window_start + toIntervalHour(12)) AS day, queue, channel, offered, answered, abandoned, "
        "handled, service_level, asa_seconds, aht_seconds, csat, fcr_rate, wait_answered_p50_seconds, "
        "wait_answered_p90_seconds, wait_answered_p95_seconds, final "
        "FROM kpi_windows FINAL WHERE window = '1d' AND queue != 'sentinel'").named_results()
    daily = {(r["period_start"], r["queue"], r["channel"]): r for r in client.query(
        "SELECT * FROM kpi_daily WHERE queue != 'sentinel'").named_results()}
    checked = 0
    for w in windows:
        d = daily[(w["day"], w["queue"], w["channel"])]
        assert d["days"] == 1 and d["complete"] == w["final"]
        for name in ("offered", "answered", "abandoned", "handled"):
            assert d[name] == w[name], name
        for name in ("service_level", "asa_seconds", "aht_seconds", "csat", "fcr_rate", "wait_answered_p50_seconds",
                     "wait_answered_p90_seconds", "wait_answered_p95_seconds"):
            if w[name] is None:
                assert d[name] is None, name
            else:
                # Percentiles: the SQL DDSketch quantile equals the engine's (same bucket, same rank).
                assert d[name] == pytest.approx(w[name], rel=1e-9), (name, w["queue"], w["day"])
        checked += 1
    assert checked >= 6 and len(daily) == checked


def test_weekly_and_monthly_rollups_recompute_ratios_from_summed_counters(run) -> None:
    client = run["client"]
    for view, period in (("kpi_weekly", "toMonday(period_start)"), ("kpi_monthly", "toStartOfMonth(period_start)")):
        expected = {(r[0], r[1], r[2]): r[3:] for r in client.query(
            f"SELECT {period} AS p, queue, channel, sum(offered), sum(answered), sum(sl_numerator), "
            f"sum(sl_denominator), sum(wait_answered_sum_seconds), count() FROM kpi_daily GROUP BY p, queue, channel"
        ).result_rows}
        got = {(r["period_start"], r["queue"], r["channel"]): r for r in client.query(
            f"SELECT * FROM {view}").named_results()}
        assert set(got) == set(expected), view
        for key, (offered, answered, num, den, wait, days) in expected.items():
            row = got[key]
            assert (row["offered"], row["answered"], row["days"]) == (offered, answered, days), (view, key)
            assert row["service_level"] == (pytest.approx(num / den) if den else None), (view, key)
            assert row["asa_seconds"] == (pytest.approx(wait / answered) if answered else None), (view, key)
    # (Agents' time in state may reach past the contacts: a contact never ended counts until it expires.)
    weeks = {r[0] for r in client.query(
        "SELECT period_start FROM kpi_weekly WHERE queue != 'sentinel' AND offered > 0").result_rows}
    assert len(weeks) == 2, "the run spans this week and last week"


def test_retention_from_config_is_applied_as_table_ttls(run) -> None:
    client = run["client"]
    expected = Retention(raw_days=RETENTION["raw_retention_days"],
                         interactions_days=RETENTION["interactions_retention_days"],
                         windows_days=RETENTION["windows_retention_days"],
                         daily_days=RETENTION["daily_retention_days"]).ttl_clauses()
    assert set(expected) == {"raw_events", "interactions", "kpi_windows", "agent_windows"}
    for table, ttl in expected.items():
        assert current_ttl(client, table) == ttl, table
    # The TTLs delete nothing of this run (all within the retention).
    assert client.query("SELECT count() FROM raw_events").result_rows[0][0] > 0


def test_retention_settings_are_checked(tmp_path: Path) -> None:
    from ccpulse.config import ConfigError, load_settings

    config = tmp_path / "ccpulse.toml"
    config.write_text("[clickhouse]\nraw_retention_days = 30\ndaily_retention_days = 730\n")
    ch = load_settings(config, env={}).clickhouse
    assert (ch.raw_retention_days, ch.interactions_retention_days, ch.windows_retention_days,
            ch.daily_retention_days) == (30, 0, 0, 730)
    config.write_text("[clickhouse]\nwindows_retention_days = -1\n")
    with pytest.raises(ConfigError, match="clickhouse.windows_retention_days"):
        load_settings(config, env={})


def test_retention_is_applied_once_and_unmanaged_ttls_are_left_alone(tmp_path: Path) -> None:
    # In a child process: chDB opens one store per process, and this module's store is open.
    script = f"""
from sinks.clickhouse import ClickHouseWriter, Retention, current_ttl
dsn = "chdb://{tmp_path / 'store'}"
writer = ClickHouseWriter(dsn)
writer.open()
writer.client.command("ALTER TABLE interactions MODIFY TTL toDateTime(offered_at) + toIntervalDay(99)")
writer.retention = Retention(raw_days=7, windows_days=35)
writer.apply_retention()
assert current_ttl(writer.client, "raw_events") == "toDateTime(occurred_at) + toIntervalDay(7)"
assert current_ttl(writer.client, "kpi_windows") == \\
    "toDateTime(window_start) + toIntervalDay(35) WHERE window != '1d'"
assert current_ttl(writer.client, "interactions") == "toDateTime(offered_at) + toIntervalDay(99)", "unmanaged"
issued = []
command = writer.client.command
writer.client.command = lambda sql, *a, **k: (issued.append(sql), command(sql, *a, **k))[1]
writer.apply_retention()
assert not [sql for sql in issued if "MODIFY TTL" in sql], "an unchanged TTL is not re-applied"
writer.close()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_prometheus_is_installed() -> None:
    prometheus_binary()  # AssertionError with the install hint: a failure, never a skip


def test_a_missing_prometheus_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.prometheus_server as server

    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    monkeypatch.setattr(server.os, "access", lambda path, mode: False)
    with pytest.raises(AssertionError, match=r"make system-deps.*apt-get install -y prometheus"):
        server.prometheus_binary()
