"""``ccpulse connect http`` over real HTTP on the real broker: refusals (401, 413) say nothing,
a 2xx means Kafka holds the events, an unmappable payload is dead-lettered and answered 200, a
retry maps to the same event ids; /health and /metrics."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.connect_http_support import (ReceiverProcess, Signed, jira_request, post, twilio_request,
                                        zendesk_request)
from tests.connector_support import FIXTURES, fixture
from tests.worker_process import read_topic

pytestmark = pytest.mark.integration

PREFIX = "cxh1."
EVENTBRIDGE_KEY = "eventbridge-api-key-0123456789"


@pytest.fixture(scope="module")
def receiver(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    tmp: Path = tmp_path_factory.mktemp("connect-http")
    r = ReceiverProcess.create(kafka_bootstrap, tmp, PREFIX, CCPULSE_CONNECT_MAX_BODY_BYTES="4096",
                               CCPULSE_CONNECT_EVENTBRIDGE_API_KEY=EVENTBRIDGE_KEY,
                               CCPULSE_CONNECT_EVENTBRIDGE_HEADER="X-CCPulse-Key")
    r.start()
    try:
        yield r
    finally:
        r.stop()


def topic(kafka_bootstrap: str, name: str) -> list[tuple[bytes, dict]]:
    return [(k, json.loads(v)) for k, v in read_topic(kafka_bootstrap, PREFIX + name, timeout=10)]


def test_unsigned_wrong_and_stale_requests_are_401_and_say_nothing(receiver: ReceiverProcess,
                                                                   kafka_bootstrap: str) -> None:
    entered = dict(fixture("twilio", "task-queue.entered"), TaskSid="WT-refused")
    created = fixture("zendesk", "ticket.created")
    created["detail"]["id"] = "refused-1"
    issue = fixture("jira", "jira.issue_created")
    issue["issue"]["id"] = "refused-1"
    good = [twilio_request(receiver.base, entered), zendesk_request(created), jira_request(issue)]
    cases = []
    for req in good:
        header = next(h for h in req.headers if h != "Content-Type" and "Timestamp" not in h)
        cases.append(("unsigned", req.__class__(req.path, req.body, {k: v for k, v in req.headers.items()
                                                                       if k != header})))
        cases.append(("bad_signature", req.__class__(req.path, req.body + b"&x=1" if req.path == "/twilio"
                                                     else req.body + b" ", req.headers)))
    cases.append(("bad_signature", twilio_request(receiver.base, entered, token="another-accounts-token")))
    cases.append(("stale", zendesk_request(created, signed_at=time.time() - 301)))
    for reason, req in cases:
        status, body = post(receiver.base, req)
        assert (status, body) == (401, b"{}"), (reason, req.path)
    m = receiver.metric
    assert m("ccpulse_connect_refused_total", reason="unsigned") == 3
    assert m("ccpulse_connect_refused_total", reason="bad_signature") == 4
    assert m("ccpulse_connect_refused_total", source="zendesk", reason="stale") == 1
    assert m("ccpulse_connect_requests_total", outcome="unauthorized") == 8
    # Nothing refused reached Kafka.
    for name in ("calls", "tickets"):
        assert not [v for _, v in topic(kafka_bootstrap, name) if "refused" in v["interaction_id"]]


def test_a_body_over_the_limit_is_413(receiver: ReceiverProcess) -> None:
    big = fixture("zendesk", "ticket.created")
    big["detail"]["description"] = "x" * 5000
    status, body = post(receiver.base, zendesk_request(big))
    assert (status, body) == (413, b"{}")
    assert receiver.metric("ccpulse_connect_requests_total", source="zendesk", outcome="too_large") == 1


def test_2xx_means_kafka_holds_the_events_and_a_retry_has_the_same_ids(receiver: ReceiverProcess,
                                                                       kafka_bootstrap: str) -> None:
    entered = dict(fixture("twilio", "task-queue.entered"), TaskSid="WT-retried")
    req = twilio_request(receiver.base, entered)
    assert post(receiver.base, req)[0] == 200
    # Answered: the event is on the topic now, no waiting.
    visit = f"WT-retried:{entered['TaskQueueSid']}"  # each queue visit is an interaction (README)
    first = [(k, v) for k, v in topic(kafka_bootstrap, "calls") if v["interaction_id"] == visit]
    assert [(k, v["type"], v["queue"]) for k, v in first] == [(visit.encode(), "call.offered", "billing")]
    assert post(receiver.base, req)[0] == 200  # Twilio retrying the same callback
    both = [v for _, v in topic(kafka_bootstrap, "calls") if v["interaction_id"] == visit]
    assert len(both) == 2 and both[0] == both[1]  # the same event id: the pipeline counts it once
    assert receiver.metric("ccpulse_connect_events_published_total", source="twilio", family="call") >= 2
    assert receiver.metric("ccpulse_connect_ack_seconds_count", source="twilio") >= 2


def test_unmappable_payloads_are_dead_lettered_and_answered_200(receiver: ReceiverProcess,
                                                                kafka_bootstrap: str) -> None:
    no_id = fixture("jira", "jira.issue_created")
    del no_id["issue"]["id"]
    assert post(receiver.base, jira_request(no_id)) == (200, b"{}")
    assert post(receiver.base, jira_request(b"{not json")) == (200, b"{}")
    email = dict(fixture("twilio", "task-queue.entered"), TaskChannelUniqueName="email", TaskSid="WT-email")
    assert post(receiver.base, twilio_request(receiver.base, email))[0] == 200
    dead = {v["topic"] + " " + v["reason"]: v for _, v in topic(kafka_bootstrap, "events.dead-letter")}
    assert set(dead) >= {"connect:jira missing_field", "connect:jira not_json", "connect:twilio unsupported_channel"}
    assert base64.b64decode(dead["connect:jira not_json"]["value_base64"]) == b"{not json"
    assert dead["connect:jira missing_field"]["detail"] == "issue.id is required"
    assert (dead["connect:jira missing_field"]["partition"], dead["connect:jira missing_field"]["offset"]) == (-1, -1)
    assert receiver.metric("ccpulse_connect_mapping_failures_total", source="jira") == 2
    assert receiver.metric("ccpulse_connect_requests_total", outcome="dead_lettered") == 3


def test_events_that_map_to_nothing_are_acknowledged(receiver: ReceiverProcess) -> None:
    assert post(receiver.base, zendesk_request(fixture("zendesk", "ticket.priority_changed")))[0] == 200
    assert receiver.metric("ccpulse_connect_requests_total", source="zendesk", outcome="ignored") == 1


def test_health_lists_the_sources_served(receiver: ReceiverProcess) -> None:
    status, text = receiver.get("/health")
    assert status == 200
    assert json.loads(text) == {"status": "ok", "kafka": "ok", "sources": [
        "/twilio", "/zendesk", "/jira", "/eventbridge/connect", "/eventbridge/genesys"]}
    assert receiver.get("/nowhere")[0] == 404


def test_eventbridge_destinations_need_the_api_key(receiver: ReceiverProcess, kafka_bootstrap: str) -> None:
    queued = (FIXTURES / "amazon_connect" / "contact_event_queued.json").read_bytes()
    started = (FIXTURES / "genesys" / "acd_start.json").read_bytes()
    json_type = {"Content-Type": "application/json"}
    for path, body in (("/eventbridge/connect", queued), ("/eventbridge/genesys", started)):
        assert post(receiver.base, Signed(path, body, json_type))[0] == 401
        assert post(receiver.base, Signed(path, body, dict(json_type, **{"X-CCPulse-Key": "wrong-key"})))[0] == 401
        assert post(receiver.base, Signed(path, body, dict(json_type, **{"X-CCPulse-Key": EVENTBRIDGE_KEY}))) == \
            (200, b"{}")
    offered = {v["interaction_id"] for _, v in topic(kafka_bootstrap, "calls") if v["type"] == "call.offered"}
    assert "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111" in offered
    assert receiver.metric("ccpulse_connect_requests_total", source="connect", outcome="accepted") == 1
    assert receiver.metric("ccpulse_connect_requests_total", source="genesys", outcome="accepted") == 1
    assert receiver.metric("ccpulse_connect_refused_total", source="genesys", reason="bad_signature") == 1
