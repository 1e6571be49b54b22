"""Amazon Connect and Genesys Cloud end to end: a scripted day in each platform's own format,
through the real ``ccpulse connect kafka`` and ``ccpulse replay --format connect-ctr``
processes, the real broker and one real worker, exact on ``kpi.windows``.

The KPIs below are written by hand from the script (each contact's times are in its
line), not computed by the code under test. Each platform has agent transfers, counted
on the queue they were made from (``transfers``), the new queue visit with its own wait;
one arrives before the end of the contact it came from, one at the same time. The Connect connector is killed (SIGKILL)
mid-stream and restarted, and the whole topic is then read again by a second consumer
group, as a platform redelivering everything would: nothing may be lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ccpulse.connectors import amazon_connect, genesys
from ccpulse.core.timestamps import format_ms
from tests.worker_process import WorkerProcess, committed, latest_windows, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

DAY = (datetime.now(timezone.utc) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
INSTANCE = "arn:aws:connect:eu-west-1:111122223333:instance/0000aaaa-0000-4000-8000-000000000000"


def at(hms: str) -> datetime:
    h, m, s = (int(x) for x in hms.split(":"))
    return DAY + timedelta(hours=h, minutes=m, seconds=s)


def iso(hms: str) -> str:
    return at(hms).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def ms(hms: str) -> int:
    return int(at(hms).timestamp() * 1000)


# ---------------------------------------------------------------- Amazon Connect, as EventBridge sends it

def connect_event(etype: str, contact: str, channel: str, when: str, **detail: Any) -> dict[str, Any]:
    return {"version": "0", "id": f"{contact}-{etype}", "detail-type": "Amazon Connect Contact Event",
            "source": "aws.connect", "account": "111122223333", "time": iso(when), "region": "eu-west-1",
            "resources": [INSTANCE, f"{INSTANCE}/contact/{contact}"],
            "detail": {"eventType": etype, "contactId": contact, "channel": channel, "instanceArn": INSTANCE,
                       "initiationMethod": detail.pop("method", "INBOUND"), **detail}}


def connect_contact(contact: str, queue: str | None, enqueued: str | None, disconnected: str,
                    agent: str | None = None, connected: str | None = None, acw_end: str | None = None,
                    channel: str = "VOICE", previous: str | None = None,
                    initiated: str | None = None) -> list[dict[str, Any]]:
    """The contact events of one contact, in the order Connect emits them; ``previous``: the contact
    an agent transferred it from, at ``initiated``."""
    links: dict[str, Any] = {"initiationTimestamp": iso(initiated or enqueued or disconnected)}
    if previous:
        links.update(initialContactId=previous, previousContactId=previous, method="TRANSFER")
    queue_info = ({"queueArn": f"{INSTANCE}/queue/{queue}", "queueType": "STANDARD",
                   "enqueueTimestamp": iso(enqueued)} if queue and enqueued else None)
    agent_info = {"agentArn": f"{INSTANCE}/agent/{agent}", "connectedToAgentTimestamp": iso(connected)} \
        if agent and connected else None
    first = enqueued or disconnected
    out = [connect_event("INITIATED", contact, channel, first, **dict(links))]
    if queue_info:
        out.append(connect_event("QUEUED", contact, channel, enqueued, queueInfo=queue_info, **dict(links)))
    if agent_info:
        out.append(connect_event("CONNECTED_TO_AGENT", contact, channel, connected, queueInfo=queue_info,
                                 agentInfo=agent_info, **dict(links)))
    common = {"disconnectTimestamp": iso(disconnected), "disconnectReason": "CUSTOMER_DISCONNECT", **links}
    if queue_info:
        common["queueInfo"] = queue_info
    out.append(connect_event("DISCONNECTED", contact, channel, disconnected,
                             **dict(common, agentInfo=agent_info) if agent_info else dict(common)))
    if acw_end and agent_info:
        agent_info = dict(agent_info, afterContactWorkStartTimestamp=iso(disconnected),
                          afterContactWorkEndTimestamp=iso(acw_end))
    out.append(connect_event("COMPLETED", contact, channel, acw_end or disconnected,
                             **dict(common, agentInfo=agent_info) if agent_info else dict(common)))
    return out


def connect_agent(event_id: str, etype: str, agent: str, when: str, status: str) -> dict[str, Any]:
    snapshot = {"AgentStatus": {"ARN": f"{INSTANCE}/agent-state/s", "Name": status, "StartTimestamp": iso(when)},
                "Configuration": {"Username": agent, "RoutingProfile": {
                    "ARN": f"{INSTANCE}/routing-profile/rp", "Name": "Basic",
                    "InboundQueues": [{"ARN": f"{INSTANCE}/queue/q-billing", "Name": "BasicQueue"}]}},
                "Contacts": []}
    return {"AWSAccountId": "111122223333", "AgentARN": f"{INSTANCE}/agent/{agent}", "EventId": event_id,
            "EventTimestamp": iso(when), "EventType": etype, "InstanceARN": INSTANCE, "Version": "2019-05-25",
            "CurrentAgentSnapshot": snapshot}


def connect_day() -> list[dict[str, Any]]:
    c5 = connect_contact("c5", "q-billing", "09:40:00", "09:42:10", "ag-1", "09:40:10")  # 10 s, 120 s (no ACW)
    return [
        connect_agent("ev-1", "LOGIN", "ag-1", "08:55:00", "Available"),
        # contact, queue, enqueued, disconnected, agent, connected, after contact work ends
        *connect_contact("c1", "q-billing", "09:00:00", "09:05:20", "ag-1", "09:00:20", "09:06:00"),  # 20 s, 340 s
        *connect_contact("c2", "q-billing", "09:10:00", "09:14:40", "ag-2", "09:10:40", "09:15:40"),  # 40 s, 300 s
        *connect_contact("c3", "q-billing", "09:20:00", "09:21:00"),  # abandoned after 60 s
        *connect_contact("c4", None, None, "09:30:30"),  # hung up in the IVR: never offered
        *c5[:3],  # initiated, queued, connected
        # ag-1 transfers c5 to q-support at 09:41:58 (a transfer in cx-billing): 30 s, 180 s. Its
        # events come before c5's own end (09:42:10), which comes after c6 queued (09:42:00).
        *connect_contact("c6", "q-support", "09:42:00", "09:44:30", "ag-3", "09:42:30", "09:45:30",
                         previous="c5", initiated="09:41:58"),
        *c5[3:],  # disconnected, completed
        *connect_contact("c7", "q-billing", "09:50:00", "09:57:05", "ag-2", "09:50:05", "09:58:05",
                         channel="CHAT"),  # 5 s, 480 s
        connect_agent("ev-2", "LOGOUT", "ag-1", "09:59:00", "Offline"),
    ]


CONNECT_BAD = [b"not json at all", json.dumps({"detail-type": "EC2 Spot Instance Interruption Warning",
                                                "detail": {}}).encode()]


# ---------------------------------------------------------------- Genesys Cloud, as its EventBridge integration sends it

def gc(kind: str, conv: str, when: str, media: str = "VOICE", **body: Any) -> dict[str, Any]:
    return {"version": "0", "id": f"{conv}-{kind}-{when}", "detail-type": f"v2.detail.events.conversation.{{id}}.{kind}",
            "source": "aws.partner/genesys.com/cloud/org/ccpulse", "account": "111122223333", "time": iso(when),
            "region": "eu-west-1", "resources": [],
            "detail": {"topicName": f"v2.detail.events.conversation.{conv}.{kind}", "version": "2",
                       "eventBody": {"eventTime": ms(when), "conversationId": conv, "mediaType": media, **body},
                       "metadata": {"CorrelationId": f"{conv}-{when}"}}}


def genesys_day() -> list[dict[str, Any]]:
    return [
        gc("customer.start", "g1", "09:59:50", participantId="cust"),
        gc("acd.start", "g1", "10:00:00", participantId="acd1", queueId="q-sales"),
        gc("acd.end", "g1", "10:00:30", participantId="acd1", queueId="q-sales", acdOutcome="ANSWERED",
           answeredUserId="u-1"),  # 30 s
        gc("user.start", "g1", "10:00:30", participantId="u1", queueId="q-sales", userId="u-1"),
        gc("user.end", "g1", "10:04:30", participantId="u1", queueId="q-sales", userId="u-1",
           disconnectType="PEER"),  # 240 s
        gc("customer.end", "g1", "10:04:30", participantId="cust", disconnectType="PEER"),
        gc("acw", "g1", "10:05:00", participantId="u1", queueId="q-sales", userId="u-1", wrapupDurationMs=30000),
        gc("acd.start", "g2", "10:10:00", participantId="acd1", queueId="q-sales"),
        gc("acd.end", "g2", "10:11:00", participantId="acd1", queueId="q-sales", acdOutcome="ABANDON"),
        gc("acd.start", "g3", "10:20:00", participantId="acd1", queueId="q-sales"),
        gc("acd.end", "g3", "10:20:10", participantId="acd1", queueId="q-sales", acdOutcome="ANSWERED",
           answeredUserId="u-2"),  # 10 s
        gc("user.end", "g3", "10:22:10", participantId="u2", queueId="q-sales", userId="u-2",
           disconnectType="TRANSFER"),  # 120 s, then to support
        gc("acd.start", "g3", "10:22:11", participantId="acd2", queueId="q-support"),
        gc("acd.end", "g3", "10:22:41", participantId="acd2", queueId="q-support", acdOutcome="ANSWERED",
           answeredUserId="u-1"),  # 30 s
        gc("user.end", "g3", "10:27:41", participantId="u1b", queueId="q-support", userId="u-1",
           disconnectType="PEER"),  # 300 s
        gc("acd.start", "g4", "10:30:00", participantId="acd1", queueId="q-sales"),
        gc("acd.end", "g4", "10:32:00", participantId="acd1", queueId="q-sales", acdOutcome="FLOW_OUT"),
        gc("acd.start", "g6", "10:50:00", participantId="acd1", queueId="q-support"),
        gc("acd.end", "g6", "10:50:20", participantId="acd1", queueId="q-support", acdOutcome="ANSWERED",
           answeredUserId="u-1"),  # 20 s
        # u-1 transfers to sales: the new ACD visit starts a second before u-1's end (181 s, a transfer in support)
        gc("acd.start", "g6", "10:53:20", participantId="acd2", queueId="q-sales"),
        gc("user.end", "g6", "10:53:21", participantId="u1", queueId="q-support", userId="u-1",
           disconnectType="TRANSFER"),
        gc("acd.end", "g6", "10:53:50", participantId="acd2", queueId="q-sales", acdOutcome="ANSWERED",
           answeredUserId="u-2"),  # 30 s
        gc("user.end", "g6", "10:55:50", participantId="u2", queueId="q-sales", userId="u-2",
           disconnectType="PEER"),  # 120 s
        gc("acd.start", "g5", "10:40:00", "MESSAGE", participantId="acd1", queueId="q-support"),
        gc("acd.end", "g5", "10:40:05", "MESSAGE", participantId="acd1", queueId="q-support",
           acdOutcome="ANSWERED", answeredUserId="u-2"),  # 5 s
        gc("user.end", "g5", "10:45:05", "MESSAGE", participantId="u2", queueId="q-support", userId="u-2",
           disconnectType="CLIENT"),  # 300 s
    ]


GENESYS_BAD = [json.dumps({"detail": {"topicName": "v2.users.u-1.presence", "eventBody": {}}}).encode()]


# ---------------------------------------------------------------- Amazon Connect contact records (history)

def ctr(contact: str, enqueued: str | None, left: str, connected: str | None = None, acw_end: str | None = None,
        next_contact: str | None = None, previous: str | None = None, initiated: str | None = None) -> dict[str, Any]:
    return {"AWSContactTraceRecordFormatVersion": "2017-03-10", "ContactId": contact, "Channel": "VOICE",
            "InitiationMethod": "TRANSFER" if previous else "INBOUND", "PreviousContactId": previous,
            "InitialContactId": previous, "InitiationTimestamp": iso(initiated or enqueued or left),
            "NextContactId": next_contact,
            "DisconnectTimestamp": iso(left), "DisconnectReason": "CUSTOMER_DISCONNECT",
            "Queue": None if enqueued is None else {
                "ARN": f"{INSTANCE}/queue/q-history", "Name": "ctr-billing", "EnqueueTimestamp": iso(enqueued),
                "DequeueTimestamp": iso(connected or left)},
            "Agent": None if connected is None else {
                "ARN": f"{INSTANCE}/agent/ag-9", "ConnectedToAgentTimestamp": iso(connected),
                "AfterContactWorkEndTimestamp": iso(acw_end) if acw_end else None}}


def ctr_day() -> list[dict[str, Any]]:
    return [
        ctr("r1", "11:00:00", "11:04:30", "11:00:30", "11:05:30"),  # 30 s, 300 s
        ctr("r2", "11:10:00", "11:10:45"),  # abandoned after 45 s
        ctr("r3", None, "11:15:00"),  # never queued
        ctr("r4", "11:20:00", "11:23:05", "11:20:05"),  # 5 s, 180 s
        ctr("r5", "11:30:00", "11:31:00", next_contact="r6"),  # moved on by the flow: a flow-out
        ctr("r7", "11:22:02", "11:26:12", "11:22:12", previous="r4", initiated="11:22:00"),  # r4's transfer: 10 s, 240 s
    ]


# ---------------------------------------------------------------- expected, by hand from the script above

def key(queue: str, channel: str) -> str:
    return f"1d|{format_ms(int(DAY.timestamp() * 1000))}|{queue}|{channel}"


# Every record carries flowed_out (0 without one) and transfers (the queue the agent transferred from).
FIELDS = ("offered", "answered", "abandoned", "handled", "handle_time_sum_seconds", "wait_answered_sum_seconds",
          "wait_abandoned_sum_seconds", "flowed_out", "transfers")
EXPECTED = {
    key("cx-billing", "voice"): (4, 3, 1, 3, 760.0, 70.0, 60.0, 0, 1),  # c5 -> c6
    key("cx-support", "voice"): (1, 1, 0, 1, 180.0, 30.0, 0.0, 0, 0),
    key("cx-billing", "chat"): (1, 1, 0, 1, 480.0, 5.0, 0.0, 0, 0),
    key("gc-sales", "voice"): (5, 3, 1, 3, 480.0, 70.0, 60.0, 1, 1),  # g3 to support
    key("gc-support", "voice"): (2, 2, 0, 2, 481.0, 50.0, 0.0, 0, 1),  # g6 to sales
    key("gc-support", "chat"): (1, 1, 0, 1, 300.0, 5.0, 0.0, 0, 0),
    key("ctr-billing", "voice"): (5, 3, 1, 3, 720.0, 45.0, 45.0, 1, 1),  # r4 -> r7
}


# ---------------------------------------------------------------- the run

def connector(worker: WorkerProcess, source: str, topic: str, *extra: str) -> subprocess.Popen:
    names = {"connect": ["q-billing=cx-billing", "q-support=cx-support"],
             "genesys": ["q-sales=gc-sales", "q-support=gc-support"]}[source]
    args = [a for n in names for a in ("--queue-name", n)]
    log = open(worker.log_path.parent / f"connect-{source}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ccpulse.cli", "connect", "kafka", "--source", source,
                             "--topic", topic, *args, *extra], env=worker.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(30)


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 3, 1) for n in names])
    finally:
        await admin.close()


def event_ids(bootstrap: str, prefix: str) -> list[str]:
    return [json.loads(v)["event_id"] for name in ("calls", "chats", "agents")
            for _k, v in read_topic(bootstrap, f"{prefix}{name}")]


def mapped_ids(docs: list[dict[str, Any]], source_map: Any) -> set[str]:
    return {m.event["event_id"] for doc in docs for m in source_map(doc)}


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("connectkafka")
    # A day three days back is history: a long allowed lateness keeps the three sources, fed one
    # after the other, all in their windows whatever order the partitions are read in.
    (tmp / "ccpulse.toml").write_text("[windows]\nallowed_lateness_seconds = 86400\n")
    worker = WorkerProcess.create(kafka_bootstrap, tmp, "connectkafka")
    prefix, bootstrap = worker.prefix, kafka_bootstrap
    connect_topic, genesys_topic = f"{prefix}src.connect", f"{prefix}src.genesys"
    asyncio.run(_create_topics(bootstrap, [connect_topic, genesys_topic]))
    connect_docs, genesys_docs = connect_day(), genesys_day()
    encode = lambda doc: json.dumps(doc).encode()  # noqa: E731
    half = len(connect_docs) // 2
    connect_a = [(None, encode(d)) for d in connect_docs[:half]]
    connect_b = [(None, encode(d)) for d in connect_docs[half:]] + [(None, b) for b in CONNECT_BAD]
    want_connect = mapped_ids(connect_docs, amazon_connect.map_record)
    want_genesys = mapped_ids(genesys_docs, genesys.map_record)
    ctr_file = tmp / "contact-records.json"
    ctr_file.write_text("".join(json.dumps(r, indent=1) for r in ctr_day()))  # as Firehose writes them
    worker.start()
    procs: list[subprocess.Popen] = []
    try:
        produce(bootstrap, connect_topic, connect_a)
        produce(bootstrap, genesys_topic, [(None, encode(d)) for d in genesys_docs]
                + [(None, b) for b in GENESYS_BAD])
        procs.append(connector(worker, "genesys", genesys_topic))
        first = connector(worker, "connect", connect_topic)
        procs.append(first)
        wait_until(lambda: len(set(event_ids(bootstrap, prefix)) & want_connect) >= 3, 60,
                   "the first Connect events published")
        stop(first, signal.SIGKILL)  # mid-stream: whatever it published and did not commit comes again
        produce(bootstrap, connect_topic, connect_b)
        procs.append(connector(worker, "connect", connect_topic))
        wait_until(lambda: want_connect | want_genesys <= set(event_ids(bootstrap, prefix)), 90,
                   "every Connect and Genesys event on the input topics")
        # The whole topic again, by another group: a platform redelivering everything.
        procs.append(connector(worker, "connect", connect_topic, "--group", "connectkafka-again"))
        wait_until(lambda: committed(bootstrap, "connectkafka-again", connect_topic), 90,
                   "the second group through the whole topic")
        wait_until(lambda: committed(bootstrap, "connectkafka-connect-genesys", genesys_topic), 60,
                   "the Genesys connector through its topic")
        for proc in procs:
            stop(proc)
        replay = subprocess.run([sys.executable, "-m", "ccpulse.cli", "replay", "--format", "connect-ctr",
                                 str(ctr_file)], env=worker.env, capture_output=True, text=True, timeout=180)
        assert replay.returncode == 0, replay.stderr
        topic = f"{prefix}kpi.windows"

        def figures() -> dict[str, tuple[Any, ...]]:
            windows = latest_windows(bootstrap, topic)
            return {k: tuple(windows[k].get(f) for f in FIELDS) for k in EXPECTED if k in windows}

        try:
            wait_until(lambda: figures() == EXPECTED, 90, "the scripted day's KPIs on kpi.windows", interval=1.0)
        except AssertionError:
            pass  # the test below shows what differs
        inputs = sum(len(read_topic(bootstrap, f"{prefix}{n}")) for n in ("calls", "chats"))
        wait_until(lambda: sum(v for (n, _l), v in worker.metrics().items()
                               if n == "ccpulse_events_consumed_total") >= inputs, 60, "every input read")
        worker.wait_sink_idle(quiet_seconds=2)
        result = {"figures": figures(), "replay": replay.stderr, "ids": event_ids(bootstrap, prefix),
                  # ... and the replayed contact records' events
                  "want": want_connect | want_genesys | mapped_ids(ctr_day(), amazon_connect.contact_record),
                  "dead": [json.loads(v) for _k, v in read_topic(bootstrap, f"{prefix}events.dead-letter")],
                  "codes": [p.returncode for p in procs]}
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)
        worker.stop()
    yield result


def test_each_platform_s_scripted_day_is_exact_on_kpi_windows(run: dict[str, Any]) -> None:
    got = {k: dict(zip(FIELDS, v)) for k, v in run["figures"].items()}
    want = {k: dict(zip(FIELDS, v)) for k, v in EXPECTED.items()}
    assert got == want, {k: {f: (got.get(k, {}).get(f), n) for f, n in w.items() if got.get(k, {}).get(f) != n}
                         for k, w in want.items() if got.get(k) != w}  # (got, expected) of what differs


def test_a_connector_killed_mid_stream_and_a_full_redelivery_lose_nothing_and_count_nothing_twice(
        run: dict[str, Any]) -> None:
    ids = run["ids"]
    assert set(ids) == run["want"]  # nothing lost, nothing else
    assert len(ids) > len(set(ids))  # the redelivery did publish copies: the KPIs above counted them once
    assert run["codes"] == [0, -signal.SIGKILL, 0, 0]  # genesys, connect killed, restarted, the second group


def test_unmappable_records_are_dead_lettered_with_their_reason_and_source(run: dict[str, Any]) -> None:
    import base64

    dead = [d for d in run["dead"] if d["topic"].startswith("connect:")]
    by_value = {(d["topic"], base64.b64decode(d["value_base64"])): d for d in dead}
    assert set(by_value) == {("connect:connect", b) for b in CONNECT_BAD} | {("connect:genesys", GENESYS_BAD[0])}
    assert by_value[("connect:connect", CONNECT_BAD[0])]["reason"] == "not_json"
    assert by_value[("connect:connect", CONNECT_BAD[1])]["reason"] == "unknown_type"
    assert by_value[("connect:genesys", GENESYS_BAD[0])]["reason"] == "unknown_type"
    assert "src.connect/" in by_value[("connect:connect", CONNECT_BAD[0])]["detail"]


def test_the_contact_record_replay_closed_what_it_replayed(run: dict[str, Any]) -> None:
    assert "6 rows -> 5 interactions, 14 events; skipped 1 (not_queued 1)" in run["replay"], run["replay"]
    assert "end of input sent" in run["replay"], run["replay"]
