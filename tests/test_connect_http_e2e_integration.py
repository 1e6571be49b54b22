"""Issue 17 end to end: a scripted day of Twilio TaskRouter callbacks, Zendesk and Jira Service
Management webhooks, each in the platform's own format and signed as it signs, fed through a real
``ccpulse connect http`` to a real worker; the KPIs are worked out by hand below (METRICS.md:
offered in the window of the queue entry, other outcomes in the window the contact left the queue;
voice short abandon 5 s, service level 20 s) and must come out exact on kpi.windows.

Then the receiver is SIGKILLed mid-stream while four platform clients keep sending and retrying
(non-2xx and refused connections, as the platforms do): every contact is counted once.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.connect_http_support import (ReceiverProcess, Signed, jira_request, post_until_accepted,
                                        twilio_request, zendesk_request)
from tests.connector_support import fixture
from tests.worker_process import WorkerProcess, latest_windows, read_topic, wait_until

pytestmark = pytest.mark.integration

DAY = datetime(2026, 1, 5, tzinfo=timezone.utc).timestamp()


def at(hhmmss: str) -> float:
    h, m, s = (int(x) for x in hhmmss.split(":"))
    return DAY + h * 3600 + m * 60 + s


def iso(t: float, jira: bool = False) -> str:
    text = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000")
    return text + ("+0000" if jira else "Z")


# -- the platforms' payloads, from the documented fixtures ------------------------------------------------

def tw(event: str, task: str, when: str, queue: str = "tw-billing", channel: str = "voice",
       **extra: str) -> Callable[[str], Signed]:
    name = {"worker.activity.update": "worker.activity.update"}.get(event, event)
    params = dict(fixture("twilio", name), TaskSid=task, Timestamp=str(int(at(when))), TaskQueueName=queue,
                  TaskQueueSid=f"WQ-{queue}", TaskChannelUniqueName=channel, **extra)
    return lambda base: twilio_request(base, params)


def zd_created(ticket: str, when: str) -> Callable[[str], Signed]:
    doc = fixture("zendesk", "ticket.created")
    doc["detail"].update(id=ticket, group_id="360001", created_at=iso(at(when)).replace(".000", ""))
    doc.update(id=f"created-{ticket}", time=iso(at(when)))
    return lambda base: zendesk_request(doc)


def zd_comment(ticket: str, created: str, comment: int, when: str, staff: bool, public: bool,
               author: int = 8447388090494) -> Callable[[str], Signed]:
    doc = fixture("zendesk", "ticket.comment_added.agent")
    doc["detail"].update(id=ticket, group_id="360001", created_at=iso(at(created)).replace(".000", ""))
    doc["event"]["comment"].update(id=comment, is_public=public, author={"id": author, "is_staff": staff})
    doc.update(id=f"comment-{comment}", time=iso(at(when)))
    return lambda base: zendesk_request(doc)


def zd_status(ticket: str, when: str, previous: str, current: str) -> Callable[[str], Signed]:
    doc = fixture("zendesk", "ticket.status_changed.solved")
    doc["detail"].update(id=ticket, group_id="360001", status=current)
    doc["event"].update(current=current, previous=previous)
    doc.update(id=f"status-{ticket}-{current}", time=iso(at(when)))
    return lambda base: zendesk_request(doc)


def jr_created(issue: str, when: str) -> Callable[[str], Signed]:
    doc = fixture("jira", "jira.issue_created")
    doc["issue"]["id"] = issue
    doc["issue"]["fields"]["created"] = iso(at(when), jira=True)
    doc["timestamp"] = int(at(when) * 1000)
    return lambda base: jira_request(doc)


def jr_comment(issue: str, comment: str, when: str, name: str) -> Callable[[str], Signed]:
    doc = fixture("jira", name)
    doc["issue"]["id"] = issue
    doc["comment"].update(id=comment, created=iso(at(when), jira=True))
    doc["timestamp"] = int(at(when) * 1000)
    return lambda base: jira_request(doc)


def jr_solved(issue: str, change: str, when: str) -> Callable[[str], Signed]:
    doc = fixture("jira", "jira.issue_updated.resolved")
    doc["issue"]["id"] = issue
    doc["changelog"]["id"] = change
    doc["timestamp"] = int(at(when) * 1000)
    return lambda base: jira_request(doc)


AGENT = {"WorkerSid": "WK-alice", "WorkerActivityName": "Available"}
DAY_SCRIPT: list[Callable[[str], Signed]] = [
    # Twilio voice, queue tw-billing.
    tw("worker.activity.update", "-", "07:59:00", **AGENT),
    tw("task-queue.entered", "WT-1", "08:00:00"), tw("reservation.accepted", "WT-1", "08:00:10", WorkerSid="WK-a"),
    tw("reservation.accepted", "WT-1", "08:00:10", WorkerSid="WK-a"),  # Twilio's retry of the same callback
    tw("task-queue.entered", "WT-2", "08:01:00"), tw("reservation.accepted", "WT-2", "08:01:30", WorkerSid="WK-b"),
    tw("task-queue.entered", "WT-3", "08:02:00"), tw("task.canceled", "WT-3", "08:02:04"),  # 4 s: short abandon
    tw("task-queue.entered", "WT-4", "08:03:00"), tw("task.canceled", "WT-4", "08:03:40"),
    tw("task.wrapup", "WT-2", "08:03:00"), tw("task.completed", "WT-2", "08:03:30"),
    # WT-5's workflow moves it on while waiting: task-queue.moved names the queue it left (tw-billing),
    # the task-queue.entered that follows the new one (tw-sales: a visit of its own, with its own wait).
    tw("task-queue.entered", "WT-5", "08:04:00"), tw("task-queue.moved", "WT-5", "08:04:20"),
    tw("task-queue.entered", "WT-5", "08:04:20", queue="tw-sales"),
    tw("reservation.accepted", "WT-5", "08:04:50", queue="tw-sales", WorkerSid="WK-c"),
    tw("task.completed", "WT-1", "08:05:10"), tw("task.completed", "WT-5", "08:06:50", queue="tw-sales"),
    # Twilio chat, queue tw-chat.
    tw("task-queue.entered", "WT-6", "08:10:00", queue="tw-chat", channel="chat"),
    tw("reservation.accepted", "WT-6", "08:10:05", queue="tw-chat", channel="chat", WorkerSid="WK-d"),
    tw("task.completed", "WT-6", "08:20:05", queue="tw-chat", channel="chat"),
    tw("task.created", "WT-7", "08:30:00"),  # maps to nothing
    # Zendesk, group 360001 (channel web).
    zd_created("Z1", "08:00:00"),
    zd_comment("Z1", "08:00:00", 101, "08:00:00", staff=False, public=True, author=9000000000001),  # description
    zd_comment("Z1", "08:00:00", 102, "08:05:00", staff=True, public=False),  # internal note
    zd_comment("Z1", "08:00:00", 103, "08:10:00", staff=True, public=True),  # first response: 600 s
    zd_comment("Z1", "08:00:00", 103, "08:10:00", staff=True, public=True),  # Zendesk's retry
    zd_created("Z2", "08:15:00"), zd_status("Z2", "08:40:00", "NEW", "CLOSED"),  # closed unanswered: abandoned
    zd_created("Z3", "08:20:00"),
    zd_comment("Z3", "08:20:00", 301, "08:25:00", staff=False, public=True, author=9000000000001),
    zd_comment("Z3", "08:20:00", 302, "08:50:00", staff=True, public=True),  # first response: 1,800 s
    zd_status("Z1", "08:30:00", "OPEN", "SOLVED"),
    # Jira Service Management, project HELP (channel web).
    jr_created("J1", "08:00:00"), jr_comment("J1", "c11", "08:15:00", "comment_created.agent_public"),  # 900 s
    jr_solved("J1", "ch1", "08:45:00"),
    jr_created("J2", "08:05:00"), jr_comment("J2", "c21", "08:06:00", "comment_created.agent_internal"),
    jr_comment("J2", "c22", "08:07:00", "comment_created.customer"),
]
# Event time past 09:00 + the allowed lateness (120 s): the 08:00 hour windows become final.
DAY_WATERMARK = [tw("task-queue.entered", "WT-wm", "10:00:00"), zd_created("Zwm", "10:00:00")]

DAY_EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    # WT-1 (10 s, handled 300 s), WT-2 (30 s, handled 120 s), WT-3 short abandon, WT-4 abandon (40 s),
    # WT-5 moved on by its workflow while waiting (20 s): a flow-out of tw-billing, not a transfer.
    ("tw-billing", "voice"): dict(offered=5, answered=2, abandoned=1, short_abandoned=1, transferred_out=0,
                                  flowed_out=1,
                                  answered_within_target=1, wait_answered_sum_seconds=40.0, handled=2,
                                  handle_time_sum_seconds=420.0, waiting_at_end=0),
    ("tw-sales", "voice"): dict(offered=1, answered=1, abandoned=0, wait_answered_sum_seconds=30.0, handled=1,
                                handle_time_sum_seconds=120.0),
    ("tw-chat", "chat"): dict(offered=1, answered=1, abandoned=0, wait_answered_sum_seconds=5.0, handled=1,
                              handle_time_sum_seconds=600.0),
    # Z1 answered after 600 s and solved, Z2 closed unanswered, Z3 answered after 1,800 s.
    ("360001", "web"): dict(offered=3, answered=2, abandoned=1, wait_answered_sum_seconds=2400.0, solved=1),
    # J1 answered after 900 s and solved; J2 still waiting (an internal note and the customer's comment).
    ("HELP", "web"): dict(offered=2, answered=1, abandoned=0, wait_answered_sum_seconds=900.0, solved=1,
                          waiting_at_end=1),
}

# The SIGKILL run: 40 voice tasks from 11:00; every fourth is canceled after 30 s, the others are
# accepted after 5 s and completed 60 s later.
KILL_TASKS = 40


def kill_script(i: int) -> list[Callable[[str], Signed]]:
    task, start = f"WT-k{i}", at("11:00:00") + 10 * i
    hhmmss = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S")  # noqa: E731
    steps = [tw("task-queue.entered", task, hhmmss(start), queue="kill-q")]
    if i % 4 == 0:
        steps.append(tw("task.canceled", task, hhmmss(start + 30), queue="kill-q"))
    else:
        steps += [tw("reservation.accepted", task, hhmmss(start + 5), queue="kill-q", WorkerSid=f"WK-{i % 5}"),
                  tw("task.completed", task, hhmmss(start + 65), queue="kill-q")]
    return steps


KILL_EXPECTED = dict(offered=40, answered=30, abandoned=10, short_abandoned=0, answered_within_target=30,
                     wait_answered_sum_seconds=150.0, wait_abandoned_sum_seconds=300.0, handled=30,
                     handle_time_sum_seconds=1800.0, waiting_at_end=0)


def window(hour: str, queue: str, channel: str) -> str:
    return f"1h|2026-01-05T{hour}:00:00.000Z|{queue}|{channel}"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("connect-e2e")
    (tmp / "worker").mkdir()
    worker = WorkerProcess.create(kafka_bootstrap, tmp / "worker", "cxe2e")
    receiver = ReceiverProcess.create(kafka_bootstrap, tmp / "receiver", worker.prefix)
    worker.start()
    try:
        receiver.start()
        yield {"worker": worker, "receiver": receiver, "bootstrap": kafka_bootstrap}
    finally:
        receiver.stop()
        worker.stop()


def send(receiver: ReceiverProcess, script: list[Callable[[str], Signed]], deadline: float) -> None:
    for make in script:
        post_until_accepted(receiver.base, make(receiver.base), deadline)


def final_windows(stack: dict[str, Any], keys: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    topic = f"{stack['worker'].prefix}kpi.windows"

    def ready() -> dict[str, dict[str, Any]] | None:
        windows = latest_windows(stack["bootstrap"], topic)
        return windows if all(k in windows and windows[k]["final"] for k in keys) else None
    return wait_until(ready, timeout, f"final windows {sorted(keys)}", interval=1.0)


def check(record: dict[str, Any], expected: dict[str, Any]) -> None:
    got = {k: record[k] for k in expected}
    assert got == pytest.approx(expected), record


def test_scripted_day_of_three_platforms_is_exact_on_kpi_windows(stack: dict[str, Any]) -> None:
    receiver: ReceiverProcess = stack["receiver"]
    send(receiver, DAY_SCRIPT, time.monotonic() + 60)
    send(receiver, DAY_WATERMARK, time.monotonic() + 30)
    keys = {window("08", q, c): (q, c) for q, c in DAY_EXPECTED}
    windows = final_windows(stack, set(keys), 90)
    for key, qc in keys.items():
        check(windows[key], DAY_EXPECTED[qc])
    # Every event the receiver published passed the pipeline's validation: nothing dead-lettered.
    dead = read_topic(stack["bootstrap"], f"{stack['worker'].prefix}events.dead-letter", timeout=10)
    assert [json.loads(v) for _, v in dead] == []
    assert receiver.metric("ccpulse_connect_requests_total", outcome="ignored") >= 2


def test_receiver_killed_mid_stream_with_platforms_retrying_counts_every_contact_once(
        stack: dict[str, Any]) -> None:
    receiver: ReceiverProcess = stack["receiver"]
    before = receiver.metric("ccpulse_connect_requests_total", outcome="accepted")
    scripts = [kill_script(i) for i in range(KILL_TASKS)]
    failures: list[BaseException] = []
    deadline = time.monotonic() + 120

    def platform(part: int) -> None:
        try:
            for script in scripts[part::4]:
                send(receiver, script, deadline)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    clients = [threading.Thread(target=platform, args=(p,)) for p in range(4)]
    for c in clients:
        c.start()
    # Kill once a good part of the stream went through, with requests in flight.
    wait_until(lambda: receiver.metric("ccpulse_connect_requests_total", outcome="accepted") - before >= 30,
               60, "30 requests accepted", interval=0.05)
    receiver.kill()
    receiver.start()
    for c in clients:
        c.join(150)
    assert not failures and not any(c.is_alive() for c in clients)
    send(receiver, [tw("task-queue.entered", "WT-wm2", "13:00:00", queue="kill-q")], time.monotonic() + 30)
    key = window("11", "kill-q", "voice")
    check(final_windows(stack, {key}, 90)[key], KILL_EXPECTED)
