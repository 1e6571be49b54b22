"""The scripted shift of tests/test_agents_integration.py again, with the worker killed
(SIGKILL) mid-shift and started again on the same topics: the agent timelines, the
partition records and the pipeline's interactions come back from their changelogs,
whatever was read and not committed is read again, and every figure is the one written
by hand for the shift (issue 16: "a crash or a rebalance changes no figure")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.test_agents_integration import (A, AWAY_BY_REASON, B, FIRST_AGENTS, FIRST_CALLS, Q, QUEUE, QUEUE_KEY,
                                           SECOND_AGENTS, SECOND_CALLS, SECONDS, STATES, agent_key, agents_keyed,
                                           calls_keyed, check_seconds, live_state, worker_for)
from tests.worker_process import latest_windows, produce, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("agents-crash")
    worker = worker_for(kafka_bootstrap, tmp, "agentcrash")
    worker.start()
    try:
        p = worker.prefix
        produce(kafka_bootstrap, f"{p}agents", agents_keyed(FIRST_AGENTS), one_at_a_time=True)
        produce(kafka_bootstrap, f"{p}calls", calls_keyed(FIRST_CALLS), one_at_a_time=True)
        wait_until(lambda: live_state(kafka_bootstrap, p).get("agents_away") == 2, 120,
                   "both agents away on kpi.queue-state", interval=1.0)
        # Half of the rest, then the kill: some of it read, maybe written, not committed.
        half = len(SECOND_AGENTS) // 2
        produce(kafka_bootstrap, f"{p}agents", agents_keyed(SECOND_AGENTS[:half]))
        produce(kafka_bootstrap, f"{p}calls", calls_keyed(SECOND_CALLS[:3]))
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        worker.start()
        produce(kafka_bootstrap, f"{p}agents", agents_keyed(SECOND_AGENTS[half:]), one_at_a_time=True)
        produce(kafka_bootstrap, f"{p}calls", calls_keyed(SECOND_CALLS[3:]), one_at_a_time=True)

        def all_final() -> bool:
            windows = latest_windows(kafka_bootstrap, f"{p}kpi.windows")
            agents = latest_windows(kafka_bootstrap, f"{p}kpi.agents")
            return (QUEUE_KEY in windows and windows[QUEUE_KEY]["final"]
                    and all(agent_key(w) in agents and agents[agent_key(w)]["final"] for w in (A, B)))

        wait_until(all_final, 180, "final kpi.windows and kpi.agents after the restart", interval=1.0)
        windows = latest_windows(kafka_bootstrap, f"{p}kpi.windows")
        agents = latest_windows(kafka_bootstrap, f"{p}kpi.agents")
        metrics = worker.metrics()
    finally:
        exit_code = worker.stop()
    yield dict(windows=windows, agents=agents, metrics=metrics, exit_code=exit_code)


@pytest.mark.parametrize("who", [A, B])
def test_kpi_agents_after_the_crash_hold_the_shifts_seconds(run, who: str) -> None:
    check_seconds(run["agents"][agent_key(who)], SECONDS[who], AWAY_BY_REASON[who])


def test_kpi_windows_after_the_crash_hold_the_queues_seconds(run) -> None:
    record = run["windows"][QUEUE_KEY]
    check_seconds(record, QUEUE, {"break": 120.0, "lunch": 180.0})
    assert record["answered"] == 4


def test_metrics_after_the_crash_count_each_second_once(run) -> None:
    totals = {state: 0.0 for state in STATES}
    for (name, labels), value in run["metrics"].items():
        labels = dict(labels)
        if name == "ccpulse_queue_agent_state_seconds_total" and labels.get("queue") == Q \
                and labels.get("channel") == "voice":
            totals[labels["state"]] += value
    assert totals == pytest.approx({state: float(QUEUE[state]) for state in STATES})


def test_the_minute_windows_after_the_crash_add_up_to_the_shift(run) -> None:
    minutes = [r for k, r in run["windows"].items() if k.startswith("1m|") and r["queue"] == Q
               and r["channel"] == "voice" and r["window_start"] < "2026-01-05T08:15"]
    assert all(r["final"] for r in minutes)
    sums = {state: sum(r[f"{state}_seconds"] for r in minutes) for state in STATES}
    assert sums == pytest.approx({state: float(QUEUE[state]) for state in STATES}), \
        {r["window_start"][11:16]: (r["available_seconds"], r["on_contact_seconds"]) for r in sorted(
            minutes, key=lambda r: r["window_start"])}
