"""``ccpulse chaos``: the definitions it counts with, and the short run against a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccpulse.tools.chaos import SENTINEL_QUEUE, sentinel_events, soak_workload
from ccpulse.tools.chaos_checks import check_raw, compare_windows, index_windows, unassigned_changelogs
from ccpulse.tools.chaos_worker import parse_metrics


def window(start: str, queue: str = "billing", size: str = "1m", **fields: object) -> dict:
    record = {"window": size, "window_start": start, "queue": queue, "channel": "voice",
              "offered": 10, "answered": 8, "abandoned": 2, "asa_seconds": 12.5, "final": True,
              "version": 7, "published_at": "2026-01-05T09:00:00.000Z", "waiting_at_start": 1}
    record.update(fields)
    return record


def test_equal_runs_differ_only_in_bookkeeping() -> None:
    ref = index_windows([window("2026-01-05T08:00:00.000Z")], frozenset())
    got = index_windows([window("2026-01-05T08:00:00.000Z", version=99, published_at="x")], frozenset())
    diff = compare_windows(ref, got, "1m")
    assert diff.exact and diff.lost == diff.twice == 0 and diff.counter_total == 20


def test_lost_and_twice_are_counter_units_of_the_smallest_windows() -> None:
    ref = index_windows([window("2026-01-05T08:00:00.000Z"), window("2026-01-05T08:01:00.000Z"),
                         window("2026-01-05T08:00:00.000Z", size="5m", offered=30)], frozenset())
    got = index_windows([window("2026-01-05T08:00:00.000Z", offered=9, answered=9),
                         window("2026-01-05T08:00:00.000Z", size="5m", offered=31)], frozenset())
    diff = compare_windows(ref, got, "1m")
    # 08:00: one offer lost, one answer counted twice; 08:01 missing: all 20 units lost.
    # The 5m window differs (a mismatch) but is not counted again in lost/twice.
    assert (diff.lost, diff.twice) == (21, 1)
    assert [w[1] for w in diff.missing] == [1767600060000]
    assert any("5m" in m and "offered" in m for m in diff.mismatched)
    assert not diff.exact


def test_a_window_not_final_or_a_differing_ratio_fails() -> None:
    ref = index_windows([window("2026-01-05T08:00:00.000Z")], frozenset())
    assert compare_windows(ref, index_windows([window("2026-01-05T08:00:00.000Z", final=False)], frozenset()),
                           "1m").not_final
    ratio = compare_windows(ref, index_windows([window("2026-01-05T08:00:00.000Z", asa_seconds=12.0)],
                                               frozenset()), "1m")
    assert ratio.lost == ratio.twice == 0 and not ratio.exact


def test_store_rows_and_kafka_records_index_the_same_way() -> None:
    kafka = index_windows([window("2026-01-05T08:00:00.000Z"), window("2026-01-05T09:00:00.000Z",
                                                                      queue=SENTINEL_QUEUE)],
                          frozenset({SENTINEL_QUEUE}))
    store = index_windows([window("2026-01-05 08:00:00+00:00", window_start_ms=1767600000000)], frozenset())
    assert list(kafka) == list(store) == [("1m", 1767600000000, "billing", "voice")]


def test_raw_events_lost_and_duplicated() -> None:
    check = check_raw({"a", "b", "c"}, {"raw_ids": ["a", "b", "x"], "raw": {"rows_final": 4, "distinct_ids": 3}})
    assert (check.lost, check.twice, check.stored_distinct) == (1, 1, 2)


def test_sentinels_open_and_close_a_contact_on_every_family() -> None:
    for family in ("call", "chat", "ticket"):
        first, last = sentinel_events(family, 2, 1767600000000)
        assert first["queue"] == last["queue"] == SENTINEL_QUEUE
        assert first["interaction_id"] == last["interaction_id"] and first["event_id"] != last["event_id"]
        assert first["type"].split(".")[1] in ("offered", "created")


def test_soak_workload_leaves_some_interactions_open() -> None:
    events = list(soak_workload(60000, never_end_share=0.05, offered_only_share=0.02, seed=3))
    assert len(events) == 60000
    first: dict[str, str] = {}
    steps: dict[str, set[str]] = {}
    for family, ev in events:
        if family == "call":
            first.setdefault(ev["interaction_id"], ev["occurred_at"])
            steps.setdefault(ev["interaction_id"], set()).add(ev["type"].split(".", 1)[1])
    # Calls offered in the first third had time to end: the open ones are the workload's doing.
    cut = sorted(first.values())[len(first) // 3]
    early = [steps[i] for i, at in first.items() if at < cut]
    offered_only = sum(s == {"offered"} for s in early) / len(early)
    answered_open = sum("answered" in s and not s & {"ended", "abandoned"} for s in early) / len(early)
    assert 0.01 < offered_only < 0.15 and 0.02 < answered_open < 0.10


ASSIGNMENT = """[2026-12-06 19:58:12,688] [27316] [WARNING] Ignoring missing topic: 'app-agent-records-changelog'
[2026-12-06 19:58:12,738] [27316] [INFO] Setting newly assigned partitions
+Topic Partition Set------------------------+------------+
| topic                                     | partitions |
+-------------------------------------------+------------+
| app-agent-timelines-changelog             | {0-5}      |
%s| app.calls                                 | {0, 2, 4}  |
+-------------------------------------------+------------+ for group app
[2026-12-06 19:58:12,743] [27316] [INFO] Executing _on_partitions_assigned
"""


def test_a_changelog_left_out_of_the_last_assignment_fails_the_run() -> None:
    changelogs = ["app-agent-timelines-changelog", "app-agent-records-changelog"]
    without = ASSIGNMENT % ""
    assert unassigned_changelogs("b", without, changelogs) == [
        "worker b's last assignment has no partition of app-agent-records-changelog: its table is not recovered"]
    # Left out of a first assignment only, and given in the one after: recovered.
    with_it = ASSIGNMENT % "| app-agent-records-changelog               | {0-5}      |\n"
    assert unassigned_changelogs("b", without + with_it, changelogs) == []
    assert unassigned_changelogs("b", with_it + without, changelogs) != []
    assert unassigned_changelogs("b", "", changelogs) == ["worker b logged no assignment"]


def test_metrics_parser_keeps_labels_with_commas() -> None:
    text = '# HELP x y\nccpulse_queue_offered_total{queue="a,b",channel="voice",partition="3"} 4.0\n'
    assert parse_metrics(text) == {("ccpulse_queue_offered_total",
                                    (("channel", "voice"), ("partition", "3"), ("queue", "a,b"))): 4.0}


# The short run's scenarios in groups, one `ccpulse chaos --short --scenarios` process per group,
# all at the same time: a scenario spends most of its minute waiting on paced publishing and on
# windows closing, not on CPU, so three at once take about as long as the longest group. Each
# process has its own broker (broker-restart stops its broker) and its own reference run, which
# the first scenario of a group publishes beside its own app: broker-restart cannot share the
# broker with a reference, so it comes after bad-input, whose reference it reuses.
CHAOS_GROUPS = (("crash", "sink-outage"), ("bad-input", "broker-restart"), ("rebalance",))


@pytest.mark.integration
def test_short_chaos_run_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """The CI form of the fault-injection script: every scenario but the soak, real broker."""
    timeout = int(os.environ.get("CCPULSE_CHAOS_TIMEOUT", "1800"))
    runs = []
    for i, group in enumerate(CHAOS_GROUPS):
        report, out = tmp_path / f"chaos-{i}.json", tmp_path / f"chaos-{i}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ccpulse.cli", "chaos", "--short", "--scenarios", ",".join(group),
                 "--json", str(report), "--workdir", str(tmp_path / f"work-{i}")],
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        runs.append((group, proc, report, out))
    deadline = time.monotonic() + timeout
    try:
        for _group, proc, _report, _out in runs:
            proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for _group, proc, _report, _out in runs:
            if proc.poll() is None:  # a timeout: the others must not outlive the test
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = {}
    for group, proc, report, out in runs:
        text = out.read_text(errors="replace")
        assert report.exists(), f"{group}: {text[-3000:]}"
        print(text)  # the table and the progress, for the CI log
        results.update({r["name"]: r for r in json.loads(report.read_text())})
    assert set(results) == {"crash", "sink-outage", "broker-restart", "rebalance", "bad-input"}
    # A harness failure (a worker that never recovers, windows never final) fails every scenario.
    for name, r in results.items():
        assert not any(n.startswith("FAIL: ") for n in r["notes"]), f"{name}: {r['notes']}"
    # Only the outage needs a capability the machine may lack (chattr +i); the rest always runs.
    for name, r in results.items():
        assert r["lost"] == 0 and r["twice"] == 0, f"{name}: lost {r['lost']}, twice {r['twice']}: {r['notes']}"
        assert r["status"] in (("PASS", "SKIP") if name == "sink-outage" else ("PASS",)), f"{name}: {r['notes']}"
    assert results["crash"]["figures"]["kills"] and results["crash"]["recover_seconds"]
    for group, proc, _report, out in runs:
        assert proc.returncode == 0, f"{group}: {out.read_text(errors='replace')[-3000:]}"


def test_only_windows_the_sentinel_closes_are_judged() -> None:
    """Windows after the workload exist only because the agent stage counts open calls'
    agents on contact up to event time; the sentinel cannot close them (issue 16)."""
    from ccpulse.tools.chaos_checks import closed_by_sentinel

    def rec(queue: str, start: str, end: str) -> dict:
        return {"queue": queue, "window_start": f"2026-01-05T{start}:00.000Z", "window_end": f"2026-01-05T{end}:00.000Z"}

    workload = [rec("billing", "08:00", "08:05"), rec("billing", "08:04", "08:05")]
    after = [rec("billing", "08:14", "08:15"), rec("billing", "08:15", "08:20")]
    sentinel = [rec("chaos-sentinel", "08:15", "08:20"), rec("chaos-sentinel", "08:16", "08:17")]
    assert closed_by_sentinel(workload + after, "chaos-sentinel", 120_000) == workload + after  # no sentinel yet
    assert closed_by_sentinel(workload + after + sentinel, "chaos-sentinel", 120_000) == workload
