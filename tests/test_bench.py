"""``ccpulse bench --short``: the whole harness end to end (figures printed, not judged)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_short_bench_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, "-m", "ccpulse.cli", "bench", "--short", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the harness stop its broker and workers before it exits.
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"ccpulse bench --short did not finish within 900s:\n{output[-4000:]}")
    print(output)  # the table, for the CI log
    assert proc.returncode == 0, output[-4000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    metrics = {(row["scenario"], row["metric"].split(" (")[0]) for row in rows}
    expected = {
        ("ceiling", "plain consumer read+decode"),
        ("throughput 1 worker", "sustained events/s"), ("throughput 1 worker", "ratio to ceiling"),
        ("throughput 1 worker", "peak RSS per worker"),
        ("throughput 2 workers", "sustained events/s"), ("scaling 2 workers", "throughput / 1 worker"),
        ("latency @200/s", "achieved offered load"),
    }
    expected |= {("latency @200/s", f"{sink} {q}") for sink in ("kpi.windows", "/metrics", "ClickHouse")
                 for q in ("p50", "p99")}
    replay = "replay bank, first 2,000 calls"
    expected |= {(replay, m) for m in ("replay publishing", "every day final on kpi.windows",
                                       "every day final in ClickHouse", "worker CPU until then")}
    expected |= {("connect-http", m) for m in ("acknowledged and stored requests/s", "time to 2xx p50",
                                               "time to 2xx p99", "requests sent", "answered 2xx",
                                               "answered otherwise", "answered 2xx, events not on Kafka")}
    missing = expected - metrics
    assert not missing, f"figures missing from the JSON: {sorted(missing)}"
    memory = {(s, m) for s, m in metrics if s.startswith("memory ")}
    assert any(m.startswith("RSS") and not s.endswith("(compute + writer)") for s, m in memory), memory
    assert any(s.endswith("(compute + writer)") and m.startswith("RSS") and m.endswith("compute worker")
               for s, m in memory), memory
    assert any(m == "RSS, writer with the embedded store" for s, m in memory), memory
    # The receiver's counts of what went wrong are 0 in a good run; every figure is above 0.
    counts = {"answered otherwise", "answered 2xx, events not on Kafka"}
    for row in rows:
        value = row["value"]
        floor = 0 if row["metric"].split(" (")[0] in counts else 1e-9
        assert isinstance(value, (int, float)) and math.isfinite(value) and value >= floor, row
    http = doc["details"]["connect-http"]
    assert http["requests"] == 1000 and http["acknowledged_not_stored"] == 0, http
    assert doc["meta"]["loadavg_start"] and doc["meta"]["short"] is True
    # The throughput figure is events over the measured time, not a constant.
    one = doc["details"]["throughput 1 worker"]
    assert one["events"] == 5000 and one["seconds"] > 0
    assert next(r["value"] for r in rows if r["scenario"] == "throughput 1 worker"
                and r["metric"] == "sustained events/s") == pytest.approx(one["events"] / one["seconds"], rel=0.01)
    assert "+---" not in output and "sustained events/s" in output
    # The short replay's three days all turned final and stored (no ">=" lower bound).
    bank = doc["details"][replay]
    assert bank["days"] == 3 and bank["not_final"] == [] and bank["input_records"] > 5000
    assert not any(r["metric"].endswith("not stored)") or r["metric"].endswith("not final)")
                   for r in rows if r["scenario"] == replay), rows
