"""Prometheus SLA rules generated from the config, checked and unit-tested with promtool.

promtool comes with the Debian package ``prometheus`` (``make system-deps`` installs
it); these tests fail, not skip, without it. amtool (Debian package
``prometheus-alertmanager``) validates the example Alertmanager config when present;
its structure is checked either way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ccpulse import cli
from ccpulse.alert_rules import ALERTS, DEFAULT_PATH, alerts, generate
from ccpulse.config import load_settings
from ccpulse.core.sla import KPIS

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / DEFAULT_PATH
PROMTOOL_TESTS = ROOT / "deploy/prometheus/tests/sla_test.yml"
# The agents and staffing targets are opt-in: their rules come from an example config.
AGENTS_CONFIG = ROOT / "deploy/prometheus/tests/agents.toml"
AGENTS_RULES = ROOT / "deploy/prometheus/tests/agents-sla.rules.yml"
AGENTS_PROMTOOL_TESTS = ROOT / "deploy/prometheus/tests/agents_test.yml"
ALERTMANAGER = ROOT / "deploy/alertmanager/alertmanager.yml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    import os
    for var in list(os.environ):
        if var.startswith("CCPULSE_"):
            monkeypatch.delenv(var)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: install the Debian package 'prometheus' "
                    "(`make system-deps` does, or `apt-get install -y prometheus`)", pytrace=False)
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def settings_from(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "ccpulse.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env={})


CUSTOM = """
[channels.chat]
service_level_formula = "abandons_within_target_positive"

[queues.vip.voice]
service_level_formula = "answered_only"

[queues.'a.b+c'.voice]
service_level_seconds = 30

[targets.voice]
asa_seconds = { max = 25 }

[targets.ticket]
first_response_p90_seconds = { max = 7200 }

[targets.hold]
open_seconds = 90
resolve_seconds = 0

[queues.billing.targets.voice]
service_level = { min = 0.9, severity = "warning" }
longest_wait_seconds = false

[queues.'a.b+c'.targets.voice]
asa_seconds = { max = 15 }

[queues.claims.targets.ticket]
first_response_p90_seconds = { max = 3600 }
"""


def test_committed_rules_are_generated_from_the_default_config() -> None:
    assert RULES.read_text(encoding="utf-8") == generate(load_settings(env={})), \
        f"{DEFAULT_PATH} is out of date: run `ccpulse rules`"


def test_committed_rules_pass_promtool_check() -> None:
    out = run_promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_fire_and_resolve_every_alert() -> None:
    text = PROMTOOL_TESTS.read_text(encoding="utf-8") + AGENTS_PROMTOOL_TESTS.read_text(encoding="utf-8")
    for name, _what, _humanize in ALERTS.values():
        assert f"alertname: {name}" in text, f"no promtool test for {name}"
    run_promtool("test", "rules", str(PROMTOOL_TESTS))


def test_agent_rules_are_generated_from_their_example_config_and_pass_promtool() -> None:
    """A queue short of agents for 5 minutes (its own hold-down) and occupancy above 85 %
    over 15 minutes, in promtool (deploy/prometheus/tests/agents_test.yml)."""
    settings = load_settings(AGENTS_CONFIG, env={})
    assert AGENTS_RULES.read_text(encoding="utf-8") == generate(settings), \
        f"{AGENTS_RULES} is out of date: CCPULSE_CONFIG={AGENTS_CONFIG} ccpulse rules --output {AGENTS_RULES}"
    run_promtool("check", "rules", str(AGENTS_RULES))
    rules = yaml.safe_load(AGENTS_RULES.read_text(encoding="utf-8"))["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert alerts["CcpulseSlaAgentsGapAboveTarget"]["for"] == "5m"
    assert alerts["CcpulseSlaOccupancyAboveTarget"]["for"] == "1m"
    assert alerts["CcpulseSlaServiceLevelBelowTarget"]["for"] == "1m"
    run_promtool("test", "rules", str(AGENTS_PROMTOOL_TESTS))


def test_targets_with_their_own_hold_down_get_a_rule_each(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, "[targets.voice]\nagents_gap = { max = 0, open_seconds = 300 }\n"
                                       "[targets.chat]\nagents_gap = { max = 1 }\n"
                                       "[queues.vip.targets.voice]\nagents_gap = { max = -1, open_seconds = 60 }\n")
    gaps = [a for a in alerts(settings) if a.kpi == "agents_gap"]
    assert [(a.hold.open_seconds, len(a.expr_terms)) for a in gaps] == [(60, 2), (300, 1)]
    assert any('queue="vip"' in t and "> -1" in t for t in gaps[0].expr_terms)
    assert any('channel="chat"' in t and "> 1" in t for t in gaps[0].expr_terms)
    assert 'channel="voice"' in gaps[1].expr_terms[0] and 'queue!~"vip"' in gaps[1].expr_terms[0]
    path = tmp_path / "gap.rules.yml"
    path.write_text(generate(settings), encoding="utf-8")
    run_promtool("check", "rules", str(path))


def test_one_alert_per_kpi_with_the_hold_down_and_labels() -> None:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules = doc["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    # occupancy and agents_gap have no default target (opt-in: agents_test.yml tests them).
    assert {r["labels"]["kpi"] for r in alerts.values()} == set(KPIS) - {"occupancy", "agents_gap"}
    for rule in alerts.values():
        assert rule["for"] == "1m" and rule["keep_firing_for"] == "1m"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert "{{ $labels.queue }}" in rule["annotations"]["summary"]
    sl = alerts["CcpulseSlaServiceLevelBelowTarget"]["expr"]
    assert 'channel="voice"' in sl and 'channel="chat"' in sl and "< 0.8" in sl
    assert "> 120" in alerts["CcpulseSlaLongestWaitAboveTarget"]["expr"]
    assert 'le="86400"' in alerts["CcpulseSlaTicketFirstResponseP90AboveTarget"]["expr"]
    recorded = {r["record"]: r["expr"] for r in rules if "record" in r}
    assert recorded["ccpulse:queue_first_response_p90_seconds:1h"].startswith("histogram_quantile(0.9,")
    assert all(re.search(r"without \(instance, partition[,)]", e) for n, e in recorded.items() if "increase15m" in n)


def test_rules_of_a_custom_config_pass_promtool(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, CUSTOM)
    path = tmp_path / "custom.rules.yml"
    path.write_text(generate(settings), encoding="utf-8")
    run_promtool("check", "rules", str(path))
    rules = {r.get("alert"): r for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]}
    sl = rules["CcpulseSlaServiceLevelBelowTarget"]
    # billing's severity differs, so the severity comes from each term.
    assert "severity" not in sl["labels"] and '"severity", "warning"' in sl["expr"]
    assert 'queue!~"a\\\\.b\\\\+c|billing|vip"' in sl["expr"]
    assert "< 0.9" in sl["expr"] and sl["for"] == "90s" and "keep_firing_for" not in sl
    # answered_only for vip, abandons_within_target_positive for chat.
    assert 'ccpulse:queue_answered_within_target:increase15m{channel="voice", queue="vip"} / ' \
           'ccpulse:queue_answered:increase15m{channel="voice", queue="vip"}' in sl["expr"]
    assert 'ccpulse:queue_abandoned_within_target:increase15m{channel="chat"}' in sl["expr"]
    wait = rules["CcpulseSlaLongestWaitAboveTarget"]["expr"]
    assert 'queue="billing"' not in wait  # billing has no longest-wait target
    frt = rules["CcpulseSlaTicketFirstResponseP90AboveTarget"]["expr"]
    assert 'le="3600"' in frt and "> 7200" in frt  # 7200 is no bucket bound: histogram_quantile


def test_per_queue_targets_and_formulas_in_promql(tmp_path: Path) -> None:
    """The same service level (85 %) breaches billing's 0.9 target, not the 0.8 default; vip
    counts answered calls only, so its abandons do not lower its service level."""
    settings = settings_from(tmp_path, CUSTOM)
    rules = tmp_path / "custom.rules.yml"
    rules.write_text(generate(settings), encoding="utf-8")

    def series(name: str, queue: str, values: str) -> dict[str, str]:
        return {"series": f'{name}{{job="ccpulse",instance="w1",partition="0",queue="{queue}",channel="voice"}}',
                "values": values}

    inputs = []
    for queue in ("billing", "sales", "vip"):
        inputs += [series("ccpulse_queue_answered_total", queue, "100+20x30"),
                   series("ccpulse_queue_answered_within_target_total", queue, "100+17x30"),
                   series("ccpulse_queue_abandoned_total", queue, "0x30" if queue != "vip" else "0+10x30")]
    inputs[-2] = series("ccpulse_queue_answered_within_target_total", "vip", "100+20x30")
    expected = [{"exp_labels": {"severity": "warning", "kpi": "service_level", "target": ">= 0.9",
                                "job": "ccpulse", "queue": "billing", "channel": "voice"},
                 "exp_annotations": {
                     "summary": "SLA breach: service level over the last 15 minutes of billing/voice "
                                "misses its target",
                     "description": "The service level over the last 15 minutes of queue billing (voice) is "
                                    "85%, target >= 0.9, for at least 90s."}}]
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": [
                {"eval_time": "2m", "alertname": "CcpulseSlaServiceLevelBelowTarget", "exp_alerts": []},  # pending
                {"eval_time": "20m", "alertname": "CcpulseSlaServiceLevelBelowTarget",
                 "exp_alerts": expected}]}]}
    path = tmp_path / "custom_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    run_promtool("test", "rules", str(path))


def test_zero_hold_down(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, "[targets.hold]\nopen_seconds = 0\nresolve_seconds = 0.5\n")
    text = generate(settings)
    assert "for: 0s" in text and "keep_firing_for: 500ms" in text
    path = tmp_path / "zero.rules.yml"
    path.write_text(text, encoding="utf-8")
    run_promtool("check", "rules", str(path))


def test_cli_writes_and_checks_the_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rules" / "sla.yml"
    assert cli.main(["rules", "--output", str(out)]) == 0
    assert out.read_text() == RULES.read_text()
    assert cli.main(["rules", "--output", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "# edited\n")
    assert cli.main(["rules", "--output", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli.main(["rules", "--output", str(tmp_path / "missing.yml"), "--check"]) == 1
    capsys.readouterr()
    assert cli.main(["rules", "--output", "-"]) == 0
    assert capsys.readouterr().out == RULES.read_text()
    (tmp_path / "ccpulse.toml").write_text("[targets.voice]\nservice_level = { max = 0.8 }\n")
    assert cli.main(["rules", "--output", "-"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ccpulse rules: targets.voice.service_level.max:") and "\n" not in err


def test_cli_check_of_the_committed_file_from_the_repository(tmp_path: Path) -> None:
    result = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "ccpulse.cli", "rules", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "CCPULSE_CONFIG": "/dev/null"})
    assert result.returncode == 0, result.stderr


# --- Alertmanager example ---------------------------------------------------------------

def test_alertmanager_example_routes_sla_alerts_by_severity() -> None:
    doc = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    receivers = {r["name"]: r for r in doc["receivers"]}
    route = doc["route"]
    assert route["receiver"] in receivers
    assert {"queue", "channel"} <= set(route["group_by"])
    by_severity = {}
    for sub in route["routes"]:
        assert sub["receiver"] in receivers
        assert all(r["webhook_configs"][0]["url"].startswith("http") for r in receivers.values())
        for matcher in sub["matchers"]:
            if matcher.startswith("severity"):
                by_severity[matcher] = sub["receiver"]
    assert by_severity == {'severity="critical"': "ccpulse-sla-critical",
                           'severity=~"warning|info"': "ccpulse-sla-warning"}
    severities = {t.severity for t in KPIS.values()}
    assert severities <= {"critical", "warning", "info"}


def test_amtool_accepts_the_alertmanager_example() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian package prometheus-alertmanager); structure checked above")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for labels, receiver in ((["alertname=CcpulseSlaServiceLevelBelowTarget", "severity=critical"],
                              "ccpulse-sla-critical"),
                             (["alertname=CcpulseSlaAsaAboveTarget", "severity=warning"], "ccpulse-sla-warning"),
                             (["alertname=SomethingElse", "severity=critical"], "ccpulse-default")):
        routed = subprocess.run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
                                capture_output=True, text=True, timeout=60)
        assert routed.stdout.strip() == receiver, (labels, routed.stdout, routed.stderr)
