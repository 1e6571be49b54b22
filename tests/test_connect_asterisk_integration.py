"""Issue 17, through real processes: ``ccpulse connect asterisk`` on the real broker.

- A follower SIGKILLed in the middle of a rotation (the log renamed, Asterisk still writing
  the old file, the new one not created yet), and again while a rotation happens while it is
  down, misses and repeats nothing: counted on the input topic by event id.
- A scripted day in queue_log format, followed live by the real command into a real worker,
  comes out exact on kpi.windows (the numbers are written by hand below).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.worker_process import WorkerProcess, latest_windows, read_topic, wait_until, worker_env

pytestmark = pytest.mark.integration

T0 = 1767600000  # 2026-01-05T08:00:00Z


class Follower:
    """A ``ccpulse connect asterisk`` process."""

    def __init__(self, env: dict[str, str], log: Path, state: Path, out: Path) -> None:
        self.env, self.log, self.state, self.out = env, log, state, out
        self.process: subprocess.Popen | None = None

    def start(self, from_start: bool = False) -> None:
        args = [sys.executable, "-m", "ccpulse.cli", "connect", "asterisk", "--queue-log", str(self.log),
                "--state-file", str(self.state)] + (["--from-start"] if from_start else [])
        with open(self.out, "ab") as out:
            self.process = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def caught_up(self, path: Path) -> bool:
        """Everything in ``path`` is acknowledged by Kafka: the saved position is its end."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"follower exited with {self.process.returncode}: {self.out.read_text()[-2000:]}")
        try:
            position = json.loads(self.state.read_text())["position"]
            st = os.stat(path)
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return False
        return position["ino"] == st.st_ino and position["offset"] == st.st_size

    def wait_caught_up(self, path: Path) -> None:
        wait_until(lambda: self.caught_up(path), 60, f"the follower to acknowledge all of {path.name}")


def call_lines(n: int) -> bytes:
    """Call n: offered, answered by SIP/100n one second later, ended by the agent a second after."""
    t, uid = T0 + 10 * n, f"{T0 + 10 * n}.{n}"
    return (f"{t}|{uid}|support|NONE|ENTERQUEUE||555{n:04d}|1\n"
            f"{t + 1}|{uid}|support|SIP/100{n % 3}|CONNECT|1|{uid}9|1\n"
            f"{t + 2}|{uid}|support|SIP/100{n % 3}|COMPLETEAGENT|1|1|1\n").encode()


def write(path: Path, *calls: int, mode: str = "ab") -> None:
    with open(path, mode) as f:
        f.write(b"".join(call_lines(n) for n in calls))


def test_a_follower_killed_during_rotation_misses_and_repeats_nothing(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = worker_env(kafka_bootstrap, tmp_path, "astkill")
    log, state = tmp_path / "queue_log", tmp_path / "connect-asterisk.json"
    follower = Follower(env, log, state, tmp_path / "follower.log")
    write(log, 1, 2, 3, 4)
    follower.start(from_start=True)
    try:
        follower.wait_caught_up(log)
        # logrotate renames the log; Asterisk writes the old file until its logger reloads.
        asterisk = open(log, "ab")
        os.rename(log, tmp_path / "queue_log.1")
        asterisk.write(call_lines(5) + call_lines(6))
        asterisk.flush()
        follower.wait_caught_up(tmp_path / "queue_log.1")
        follower.kill()  # mid-rotation: renamed, the new log not created yet
        asterisk.write(call_lines(7))  # still the old file, while the follower is dead
        asterisk.close()
        write(log, 8, 9)  # the logger reloads: a new queue_log
        follower.start()
        follower.wait_caught_up(log)
        follower.kill()
        # A whole rotation while the follower is down, lines on both sides of it.
        write(log, 10)
        os.rename(tmp_path / "queue_log.1", tmp_path / "queue_log.2")
        os.rename(log, tmp_path / "queue_log.1")
        write(tmp_path / "queue_log.1", 11)
        write(log, 12)
        follower.start()
        follower.wait_caught_up(log)
        write(log, 13)
        follower.wait_caught_up(log)
    finally:
        code = follower.stop()
    assert code == 0, (tmp_path / "follower.log").read_text()[-2000:]
    events = [json.loads(v) for _k, v in read_topic(kafka_bootstrap, "astkill.calls")]
    per_id = Counter(e["event_id"] for e in events)
    assert [eid for eid, n in per_id.items() if n > 1] == []
    expected = {(etype, f"{T0 + 10 * n}.{n}") for n in range(1, 14)
                for etype in ("call.offered", "call.answered", "call.ended")}
    assert {(e["type"], e["interaction_id"]) for e in events} == expected
    assert len(events) == len(expected) == 39


# ---------------------------------------------------------------- the scripted day

def at(offset: int) -> int:
    return T0 + offset


# support, 08:00-08:15 (15-minute window), voice thresholds: 20 s service level, 5 s short abandon.
DAY_BEFORE_START = [
    f"{at(0)}|NONE|NONE|NONE|QUEUESTART|",
    f"{at(1)}|MANAGER|support|SIP/1001|ADDMEMBER|",
    f"{at(1)}|MANAGER|support|PJSIP/alice|ADDMEMBER|",
    f"{at(2)}|MANAGER|sales|PJSIP/alice|ADDMEMBER|",
    # C1: answered at once, the agent hangs up after 120 s.
    f"{at(5)}|{at(5)}.1|support|NONE|ENTERQUEUE||5550001|1",
    f"{at(5)}|{at(5)}.1|support|SIP/1001|CONNECT|0|{at(5)}.2|0",
    # C2: rings one member unanswered, answered after 30 s (over target), 60 s talk.
    f"{at(10)}|{at(10)}.3|support|NONE|ENTERQUEUE||5550002|2",
    f"{at(25)}|{at(10)}.3|support|SIP/1001|RINGNOANSWER|15000",
    f"{at(40)}|{at(10)}.3|support|PJSIP/alice|CONNECT|30|{at(40)}.4|5",
    # C3: hangs up after 3 s (a short abandon); C4 after 15 s.
    f"{at(20)}|{at(20)}.5|support|NONE|ENTERQUEUE||5550003|3",
    f"{at(23)}|{at(20)}.5|support|NONE|ABANDON|3|3|3",
    f"{at(30)}|{at(30)}.6|support|NONE|ENTERQUEUE||5550004|3",
    "this line is not queue_log",
    f"{at(45)}|{at(30)}.6|support|NONE|ABANDON|2|3|15",
]
DAY_FOLLOWED_LIVE = [
    # C5, C6, C8: flow-outs (timeout, no members, the caller pressed 5).
    f"{at(50)}|{at(50)}.7|support|NONE|ENTERQUEUE||5550005|1",
    f"{at(60)}|{at(60)}.8|support|NONE|ENTERQUEUE||5550006|2",
    f"{at(65)}|{at(60)}.8|support|NONE|EXITEMPTY|2|2|5",
    f"{at(100)}|{at(10)}.3|support|PJSIP/alice|COMPLETECALLER|30|60|2",
    f"{at(110)}|{at(50)}.7|support|NONE|EXITWITHTIMEOUT|1|1|60",
    f"{at(125)}|{at(5)}.1|support|SIP/1001|COMPLETEAGENT|0|120|1",
    # C7: answered after 10 s, blind-transferred to the sales queue's extension after 120 s,
    # where it waits 10 s and talks 60 s.
    f"{at(70)}|{at(70)}.9|support|NONE|ENTERQUEUE||5550007|1",
    f"{at(80)}|{at(70)}.9|support|SIP/1001|CONNECT|10|{at(80)}.10|2",
    f"{at(90)}|{at(90)}.11|support|NONE|ENTERQUEUE||5550008|2",
    f"{at(100)}|{at(90)}.11|support|NONE|EXITWITHKEY|5|1|2|10",
    f"{at(150)}|NONE|NONE|PJSIP/alice|PAUSEALL|lunch",
    f"{at(150)}|NONE|support|PJSIP/alice|PAUSE|lunch",
    f"{at(150)}|NONE|sales|PJSIP/alice|PAUSE|lunch",
    f"{at(190)}|NONE|sales|PJSIP/alice|UNPAUSE|",
    f"{at(200)}|{at(70)}.9|support|SIP/1001|BLINDTRANSFER|7200|from-internal|10|120|1",
    # The queue_log's whole seconds: the transfer and the entry into sales share one.
    f"{at(200)}|{at(70)}.9|sales|NONE|ENTERQUEUE||5550007|1",
    f"{at(210)}|{at(70)}.9|sales|PJSIP/alice|CONNECT|10|{at(210)}.12|3",
    f"{at(270)}|{at(70)}.9|sales|PJSIP/alice|COMPLETECALLER|10|60|1",
    f"{at(300)}|{at(300)}.13|support|NONE|FROBNICATE|x",
    # 08:30 moves event time past the 08:00-08:15 windows' end plus the 2-minute lateness.
    f"{at(1800)}|{at(1800)}.14|support|NONE|ENTERQUEUE||5550009|1",
]
EXPECTED = {
    "15m|2026-01-05T08:00:00.000Z|support|voice": dict(
        offered=8, answered=3, answered_within_target=2, answered_immediately=1,
        wait_answered_sum_seconds=40.0, abandoned=1, short_abandoned=1, abandoned_within_target=1,
        flowed_out=3, transfers=1, transferred_out=0, handled=3, handle_time_sum_seconds=300.0),
    "15m|2026-01-05T08:00:00.000Z|sales|voice": dict(
        offered=1, answered=1, answered_within_target=1, answered_immediately=0,
        wait_answered_sum_seconds=10.0, abandoned=0, short_abandoned=0, flowed_out=0, transfers=0,
        handled=1, handle_time_sum_seconds=60.0),
}


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("astday")
    process = WorkerProcess.create(kafka_bootstrap, tmp, "astday")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_a_scripted_day_followed_live_is_exact_on_kpi_windows(worker: WorkerProcess, tmp_path: Path) -> None:
    log, state = tmp_path / "queue_log", tmp_path / "connect-asterisk.json"
    log.write_text("".join(line + "\n" for line in DAY_BEFORE_START))
    follower = Follower(worker.env, log, state, tmp_path / "follower.log")
    follower.start(from_start=True)
    try:
        follower.wait_caught_up(log)
        with open(log, "a") as f:  # live, a line at a time as Asterisk writes them
            for line in DAY_FOLLOWED_LIVE:
                f.write(line + "\n")
                f.flush()
        follower.wait_caught_up(log)

        def all_final() -> dict[str, dict[str, Any]] | None:
            windows = latest_windows(worker.bootstrap, f"{worker.prefix}kpi.windows")
            done = all(k in windows and windows[k]["final"] for k in EXPECTED)
            return windows if done else None

        windows = wait_until(all_final, 60, "final 08:00 15m windows of support and sales", interval=1.0)
    finally:
        code = follower.stop()
    assert code == 0
    for key, expected in EXPECTED.items():
        record = windows[key]
        assert {name: record[name] for name in expected} == expected, key
    dead = [json.loads(v) for _k, v in read_topic(worker.bootstrap, f"{worker.prefix}events.dead-letter")]
    assert sorted((d["reason"], base64.b64decode(d["value_base64"]).decode(), d["topic"]) for d in dead) == [
        ("bad_line", "this line is not queue_log", "connect:asterisk"),
        ("unknown_event", f"{at(300)}|{at(300)}.13|support|NONE|FROBNICATE|x", "connect:asterisk")]
    per_agent: dict[str, list[tuple[str, str | None, list[str] | None]]] = {}
    for _k, v in read_topic(worker.bootstrap, f"{worker.prefix}agents"):  # in order per key (agent)
        a = json.loads(v)
        per_agent.setdefault(a["agent_id"], []).append((a["type"], a.get("state"), a.get("queues")))
    assert per_agent == {
        "1001": [("agent.logged_in", "available", ["support"])],
        # Paused in both queues (one state change), unpaused in sales: available again.
        "alice": [("agent.logged_in", "available", ["support"]),
                  ("agent.logged_in", "available", ["support", "sales"]),
                  ("agent.state_changed", "away", None),
                  ("agent.state_changed", "available", None)],
    }
