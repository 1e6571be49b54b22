"""``ccpulse replay`` refuses history older than the pipeline's event time (real broker).

Replaying 1999 into a pipeline that has seen 2026 counted nothing, silently: every
event was late. The command must find the pipeline's event time before publishing
(what a worker persisted, and what is already waiting in the input topics), refuse
in one line that names the fix, publish nothing, and publish with ``--allow-late``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ccpulse.commands import replay
from ccpulse.tools.chaos_worker import end_offsets
from ccpulse.config import load_settings
from ccpulse.commands.simulate import QueueModel, SimulationConfig
from ccpulse.commands.simulate_channels import generate_mixed_events
from tests.worker_process import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.integration


def write_events(path: Path, start: datetime, seconds: float = 120) -> int:
    voice = SimulationConfig(rate=0.5, seed=3, start=start, queues=(QueueModel("billing", agents=5),))
    events = list(generate_mixed_events(voice, None, None, seconds))
    path.write_text("".join(json.dumps(doc) + "\n" for _family, doc in events))
    return len(events)


def run_replay(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "ccpulse.cli", "replay", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr


def input_ends(bootstrap: str, prefix: str) -> int:
    return sum(end_offsets(bootstrap, [f"{prefix}calls"]).values())


def test_history_older_than_the_input_is_refused_then_published_with_allow_late(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    env = worker_env(kafka_bootstrap, tmp_path, "late-input")
    recent = tmp_path / "recent.jsonl"
    old = tmp_path / "1999.jsonl"
    sent_recent = write_events(recent, datetime.now(timezone.utc) - timedelta(hours=1))
    sent_old = write_events(old, datetime(1999, 1, 4, 8, tzinfo=timezone.utc))

    code, err = run_replay(env, str(recent))
    assert code == 0, err
    assert input_ends(kafka_bootstrap, "late-input.") == sent_recent

    code, err = run_replay(env, str(old))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    for text in ("late", "1999-01-04", "input topic", "CCPULSE_APP_ID", "CCPULSE_TOPIC_PREFIX",
                 "--allow-late", f"{sent_old:,} of {sent_old:,}"):
        assert text in lines[0], (text, lines[0])
    assert input_ends(kafka_bootstrap, "late-input.") == sent_recent, "a refused replay published"

    code, err = run_replay(env, str(old), "--allow-late")
    assert code == 0, err
    assert input_ends(kafka_bootstrap, "late-input.") == sent_recent + sent_old


def test_a_replay_on_a_cluster_without_any_consumer_group_yet_completes(
        tmp_path: Path, fresh_kafka_bootstrap: str) -> None:
    # The end of input asks the app's group for its members; the cluster's first group
    # request waits for the coordinator to be created, and the replay must not fail on it
    # (it did: "GroupCoordinatorNotAvailableError", exit 1, after publishing everything).
    env = worker_env(fresh_kafka_bootstrap, tmp_path, "first-group")
    recent = tmp_path / "recent.jsonl"
    sent = write_events(recent, datetime.now(timezone.utc) - timedelta(hours=1))

    code, err = run_replay(env, str(recent))

    assert code == 0, err
    assert "end of input not sent: no worker of app first-group is running" in err, err
    assert input_ends(fresh_kafka_bootstrap, "first-group.") == sent


def test_history_older_than_a_workers_state_is_refused_on_fresh_input_topics(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    """The worker's persisted event time counts even when the input topics are new
    (a new topic prefix with the same app id: the state is the app's)."""
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "late-state")
    recent = tmp_path / "recent.jsonl"
    old = tmp_path / "1999.jsonl"
    write_events(recent, datetime.now(timezone.utc) - timedelta(hours=1))
    write_events(old, datetime(1999, 1, 4, 8, tzinfo=timezone.utc))
    settings = load_settings(env=worker.env)
    worker.start()
    try:
        code, err = run_replay(worker.env, str(recent))
        assert code == 0, err
        # The worker's event time reaches its persisted state.
        wait_until(lambda: asyncio.run(replay.read_state_event_time(settings)), 120,
                   "the worker's lifecycle state to hold an event time")
    finally:
        worker.stop()

    fresh_topics = dict(worker.env, CCPULSE_TOPIC_PREFIX="late-state-2.")
    code, err = run_replay(fresh_topics, str(old))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "late" in lines[0] and "state of app late-state" in lines[0], lines[0]
    assert input_ends(kafka_bootstrap, "late-state-2.") == 0


def test_the_state_topic_read_is_the_one_the_worker_writes() -> None:
    from streams.app import create_app

    env = {"CCPULSE_APP_ID": "some-app", "CCPULSE_TOPIC_PREFIX": "p.", "CCPULSE_CONFIG": os.devnull}
    settings = load_settings(env=env)
    app = create_app(settings)
    written = app.pipeline.tables.partitions.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
    assert replay.state_topic(settings) == written
