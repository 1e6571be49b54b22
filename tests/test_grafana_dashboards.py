"""Static checks of the Grafana provisioning and dashboards in deploy/grafana (no Grafana runs here).

Every dashboard is valid JSON with a stable, unique uid; panel ids are unique; every
panel and query names a data source that provisioning defines (by uid and type);
every template variable used is defined; the service-level stat panels carry the
red/amber/green thresholds of the 80% target; the provisioning files point at paths
that exist (through docker-compose.yml's mounts). The queries themselves are run
against real data by tests/test_dashboard_queries_integration.py, with the helpers
below (panels, variables, macros).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))

CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
PROMETHEUS_TYPE = "prometheus"
# The official ClickHouse plugin's macros (pkg/macros/macros.go) that the integration test
# substitutes; a panel using any other macro could not be checked there.
CLICKHOUSE_MACROS = {"__timeFilter", "__timeFilter_ms", "__fromTime", "__toTime", "__fromTime_ms",
                     "__toTime_ms", "__dateFilter", "__timeInterval", "__timeInterval_ms", "__interval_s"}
PROMETHEUS_MACROS = {"__rate_interval", "__interval", "__range"}
# $name, ${name}, ${name:format}, [[name]]
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
SL_THRESHOLDS = [(None, "red"), (0.75, "orange"), (0.80, "green")]


# ---------------------------------------------------------------- helpers (shared with the integration test)

def load_dashboards() -> dict[str, dict[str, Any]]:
    """file name -> dashboard."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARD_FILES}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard["panels"]) if p.get("type") not in ("row", "text")]


def target_datasource(panel: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    return target.get("datasource") or panel.get("datasource") or {}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):  # object form: {"query": ...} (Prometheus) or {"rawSql": ...} (ClickHouse)
        query = query.get("rawSql") or query.get("query") or ""
    return str(query)


def custom_values(variable: dict[str, Any]) -> list[str]:
    """Values of a custom variable: "text : value" or "value", comma-separated."""
    return [item.split(" : ", 1)[-1].strip() for item in variable["query"].split(",") if item.strip()]


def variables_used(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE_RE.finditer(text)}


def provisioned_datasources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        out.extend(doc.get("datasources", []))
    return out


def clickhouse_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in query_panels(dashboard):
        for target in panel.get("targets", []):
            if target_datasource(panel, target).get("type") == CLICKHOUSE_TYPE:
                yield panel, target


def prometheus_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in query_panels(dashboard):
        for target in panel.get("targets", []):
            if target_datasource(panel, target).get("type") == PROMETHEUS_TYPE:
                yield panel, target


def compose_mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of a docker-compose service's bind mounts."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {}
    for volume in compose["services"].get(service, {}).get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target.rstrip("/")] = (ROOT / source).resolve()
    return mounts


def container_to_repo(path: str, mounts: dict[str, Path]) -> Path | None:
    for target, source in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if path == target or path.startswith(target + "/"):
            return source / path[len(target):].lstrip("/")
    return None


DASHBOARDS = load_dashboards()


# ---------------------------------------------------------------- dashboards

def test_the_five_dashboards_are_there() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert {"ccpulse-wallboard", "ccpulse-service-trends", "ccpulse-agents", "ccpulse-staffing",
            "ccpulse-pipeline"} <= uids


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_is_valid_and_has_a_stable_uid(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard.get("uid", "")), "uid: stable, at most 40 characters"
    assert dashboard.get("title")
    assert 36 <= dashboard.get("schemaVersion", 0) <= 41, "schemaVersion ~39 (Grafana 10/11)"
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]


def test_uids_and_titles_are_unique() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_panel_ids_are_unique_and_panels_fit_the_grid(name: str) -> None:
    panels = list(iter_panels(DASHBOARDS[name]["panels"]))
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), ids
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["h"] >= 1, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_panel_has_a_provisioned_datasource(name: str) -> None:
    known = {ds["uid"]: ds["type"] for ds in provisioned_datasources()}
    for panel in query_panels(DASHBOARDS[name]):
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        ds = panel.get("datasource")
        assert ds and known.get(ds.get("uid")) == ds.get("type"), (panel["title"], ds)
        for target in panel["targets"]:
            tds = target_datasource(panel, target)
            assert known.get(tds.get("uid")) == tds.get("type"), (panel["title"], target["refId"], tds)
    for variable in DASHBOARDS[name].get("templating", {}).get("list", []):
        if variable["type"] == "query":
            ds = variable["datasource"]
            assert known.get(ds.get("uid")) == ds.get("type"), (variable["name"], ds)


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_variable_used_is_defined(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = dashboard.get("templating", {}).get("list", [])
    defined = {v["name"] for v in variables}
    used: dict[str, str] = {}
    for panel in iter_panels(dashboard["panels"]):
        texts = [panel.get("title", ""), panel.get("repeat") and f"${panel['repeat']}" or ""]
        texts += [t.get("expr", "") + t.get("rawSql", "") + t.get("legendFormat", "")
                  for t in panel.get("targets", [])]
        for text in texts:
            for var in variables_used(text):
                used.setdefault(var, panel.get("title", ""))
    for v in variables:
        for var in variables_used(variable_query(v)):
            used.setdefault(var, f"variable {v['name']}")
    builtins = CLICKHOUSE_MACROS | PROMETHEUS_MACROS
    undefined = {var: where for var, where in used.items() if var not in defined and var not in builtins}
    assert not undefined, f"undefined variables (where first used): {undefined}"
    unused = defined - set(used)
    assert not unused, f"variables defined but never used: {unused}"


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_repeats_use_multi_value_variables(name: str) -> None:
    variables = {v["name"]: v for v in DASHBOARDS[name].get("templating", {}).get("list", [])}
    for panel in iter_panels(DASHBOARDS[name]["panels"]):
        if panel.get("repeat"):
            variable = variables[panel["repeat"]]
            assert variable.get("multi") or variable.get("includeAll"), panel["title"]


def test_wallboard_has_one_row_per_queue_with_big_stats() -> None:
    board = next(d for d in DASHBOARDS.values() if d["uid"] == "ccpulse-wallboard")
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert len(rows) == 1 and rows[0]["repeat"] == "queue"
    stats = [p for p in query_panels(board)]
    assert stats and all(p["type"] == "stat" for p in stats)
    titles = " | ".join(p["title"].lower() for p in stats)
    for needed in ("waiting", "longest wait", "service level", "abandon", "asa", "chats waiting",
                   "open tickets", "frt"):
        assert needed in titles, needed
    for p in stats:
        assert p["gridPos"]["h"] >= 6 and p["options"]["text"]["valueSize"] >= 60, p["title"]
        assert p["options"]["colorMode"] == "background"
        for target in p["targets"]:
            assert '$queue' in target["expr"], (p["title"], "filtered by the repeated queue")


# The contract's agent series (METRICS.md "Agents and staffing") and store columns: the
# "Agents and staffing" dashboard shows each of them in at least one panel.
AGENT_SERIES = ("ccpulse_queue_agents", "ccpulse_queue_agents_away", "ccpulse_queue_occupancy",
                "ccpulse_queue_agents_required", "ccpulse_queue_agents_gap",
                "ccpulse_queue_agent_state_seconds_total")
AGENT_COLUMNS = ("staffed_seconds", "available_seconds", "on_contact_seconds", "after_contact_work_seconds",
                 "away_seconds", "away_seconds_by_reason", "occupancy", "utilization")


def test_agents_and_staffing_dashboard_shows_every_agent_figure() -> None:
    board = next((d for d in DASHBOARDS.values() if d["uid"] == "ccpulse-staffing"), None)
    assert board is not None, "no dashboard with uid ccpulse-staffing (Agents and staffing)"
    exprs = " ".join(t["expr"] for _p, t in prometheus_targets(board))
    for series in AGENT_SERIES:
        assert re.search(rf"\b{series}\b", exprs), f"no panel reads {series}"
    sql = " ".join(t["rawSql"] for _p, t in clickhouse_targets(board))
    for table in ("kpi_windows", "agent_windows"):
        assert re.search(rf"\bFROM {table} FINAL\b", sql), f"no panel reads {table} (latest versions)"
    for column in AGENT_COLUMNS:
        assert re.search(rf"\b{column}\b", sql), f"no panel reads the {column} column"
    # The gap is red when the queue is short (agents_gap > 0), green otherwise.
    [gap] = [p for p in query_panels(board) if p["type"] == "stat"
             and any("ccpulse_queue_agents_gap" in t["expr"] for t in p["targets"])]
    defaults = gap["fieldConfig"]["defaults"]
    steps = [(s["value"], s["color"]) for s in defaults["thresholds"]["steps"]]
    assert steps[0] == (None, "green") and steps[-1][1] == "red" and 0 < steps[-1][0] <= 1, steps
    assert defaults["color"]["mode"] == "thresholds" and gap["options"]["colorMode"] == "background"


def test_service_level_stat_panels_have_red_amber_green_thresholds() -> None:
    checked = 0
    for dashboard in DASHBOARDS.values():
        for panel in query_panels(dashboard):
            if panel["type"] == "stat" and "service level" in panel["title"].lower():
                defaults = panel["fieldConfig"]["defaults"]
                steps = [(s["value"], s["color"]) for s in defaults["thresholds"]["steps"]]
                assert steps == SL_THRESHOLDS, (panel["title"], steps)
                assert defaults["thresholds"]["mode"] == "absolute"
                assert defaults["color"]["mode"] == "thresholds"
                assert defaults["unit"] == "percentunit"
                checked += 1
    assert checked, "no service-level stat panel found"


def test_trend_charts_show_their_targets() -> None:
    board = next(d for d in DASHBOARDS.values() if d["uid"] == "ccpulse-service-trends")
    charts = {p["title"].split(" (")[0]: p for p in query_panels(board) if p["type"] == "timeseries"}
    for name in ("Service level", "Abandonment rate", "ASA", "AHT", "CSAT", "First-contact resolution"):
        defaults = charts[name]["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", name
        assert len(defaults["thresholds"]["steps"]) >= 2, name
    assert any("worst" in p["title"].lower() for p in query_panels(board))


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_clickhouse_queries_use_the_plugin_format_and_known_macros(name: str) -> None:
    for panel, target in clickhouse_targets(DASHBOARDS[name]):
        assert target.get("editorType") == "sql" and target.get("rawSql", "").strip(), panel["title"]
        assert target.get("format") in (0, 1), (panel["title"], "0 = time series, 1 = table")
        expected = "timeseries" if panel["type"] == "timeseries" else "table"
        assert target.get("queryType") == expected and target["format"] == (0 if expected == "timeseries" else 1)
        macros = set(re.findall(r"\$(__\w+)", target["rawSql"]))
        assert macros <= CLICKHOUSE_MACROS, (panel["title"], macros - CLICKHOUSE_MACROS)
        assert ";" not in target["rawSql"], "one statement per query"


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_multi_value_variables_are_quoted_in_sql(name: str) -> None:
    """In SQL a multi-value variable must expand to a list of literals: ``IN (${var:singlequote})``."""
    multi = {v["name"] for v in DASHBOARDS[name].get("templating", {}).get("list", [])
             if v.get("multi") or v.get("includeAll")}
    for panel, target in clickhouse_targets(DASHBOARDS[name]):
        for m in VARIABLE_RE.finditer(target["rawSql"]):
            var = next(g for g in m.groups() if g)
            if var in multi:
                assert m.group(0) == f"${{{var}:singlequote}}", (panel["title"], m.group(0))
                assert re.search(rf"IN \(\$\{{{var}:singlequote\}}\)", target["rawSql"]), panel["title"]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_prometheus_queries_are_not_empty(name: str) -> None:
    for panel, target in prometheus_targets(DASHBOARDS[name]):
        assert target.get("expr", "").strip(), panel["title"]
        assert set(re.findall(r"\$(__\w+)", target["expr"])) <= PROMETHEUS_MACROS, panel["title"]


def test_prometheus_jobs_named_by_dashboards_are_scraped() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"] for job in prom["scrape_configs"]}
    for dashboard in DASHBOARDS.values():
        for panel, target in prometheus_targets(dashboard):
            for job in re.findall(r'job="([^"]+)"', target["expr"]):
                assert job in jobs, (panel["title"], job)


# ---------------------------------------------------------------- provisioning

def test_datasources_are_provisioned_for_the_compose_services() -> None:
    sources = provisioned_datasources()
    uids = [ds["uid"] for ds in sources]
    names = [ds["name"] for ds in sources]
    assert len(set(uids)) == len(uids) and len(set(names)) == len(names)
    prom = next(ds for ds in sources if ds["type"] == PROMETHEUS_TYPE)
    assert prom["url"] == "http://prometheus:9090"
    ch = next(ds for ds in sources if ds["type"] == CLICKHOUSE_TYPE)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    env = compose["services"]["clickhouse"]["environment"]
    assert ch["jsonData"]["host"] == "clickhouse" and ch["jsonData"]["port"] == 8123
    assert ch["jsonData"]["protocol"] == "http"
    assert ch["jsonData"]["username"] == env["CLICKHOUSE_USER"]
    assert ch["secureJsonData"]["password"] == env["CLICKHOUSE_PASSWORD"]
    assert ch["jsonData"]["defaultDatabase"] == env["CLICKHOUSE_DB"]


def test_provisioning_files_reference_existing_paths() -> None:
    mounts = compose_mounts("grafana")
    assert mounts, "docker-compose.yml mounts nothing into grafana"
    provisioning = container_to_repo("/etc/grafana/provisioning", mounts)
    assert provisioning is not None and provisioning == PROVISIONING.resolve(), mounts
    providers = []
    for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml")):
        providers.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["providers"])
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        source = container_to_repo(provider["options"]["path"], mounts)
        assert source is not None, f"{provider['options']['path']} is not mounted into grafana"
        assert source.is_dir() and source == DASHBOARD_DIR.resolve(), source
        assert sorted(source.glob("*.json")) == DASHBOARD_FILES
