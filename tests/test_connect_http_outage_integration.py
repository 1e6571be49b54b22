"""``ccpulse connect http`` while Kafka is down: requests are answered 503 (so the platform retries)
and /health says so; once the broker is back, the platform's retry is accepted and the event stored."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ccpulse.commands import local_kafka
from ccpulse.probes import free_port
from tests.connect_http_support import ReceiverProcess, jira_request, post, post_until_accepted
from tests.connector_support import fixture
from tests.worker_process import read_topic, wait_until

pytestmark = pytest.mark.integration


def test_kafka_down_is_503_and_unhealthy_then_the_retry_is_stored(tmp_path: Path) -> None:
    broker_dir = tmp_path / "kafka"
    info = local_kafka.start(broker_dir, port=free_port(), fresh=True)
    receiver = ReceiverProcess.create(info.bootstrap, tmp_path / "receiver", "cxh2.",
                                      CCPULSE_CONNECT_ACK_TIMEOUT_SECONDS="3")
    try:
        receiver.start()
        issue = fixture("jira", "jira.issue_created")
        assert post(receiver.base, jira_request(issue))[0] == 200
        local_kafka.stop(broker_dir)

        later = fixture("jira", "jira.issue_created")
        later["issue"]["id"] = "10043"
        started = time.monotonic()
        status, body = post(receiver.base, jira_request(later))
        assert (status, body) == (503, b"{}")
        assert time.monotonic() - started < 10  # within the ack timeout, not aiokafka's 40 s
        wait_until(lambda: receiver.get("/health")[0] == 503, 20, "/health 503 while Kafka is down")
        assert json.loads(receiver.get("/health")[1])["status"] == "unavailable"
        assert receiver.metric("ccpulse_connect_requests_total", source="jira", outcome="unavailable") >= 1

        local_kafka.start(broker_dir, port=info.port)
        attempts = post_until_accepted(receiver.base, jira_request(later), time.monotonic() + 60)
        assert attempts >= 1
        wait_until(lambda: receiver.get("/health")[0] == 200, 20, "/health 200 once Kafka is back")
        stored = [json.loads(v) for _, v in read_topic(info.bootstrap, "cxh2.tickets", timeout=20)]
        created = {v["interaction_id"] for v in stored if v["type"] == "ticket.created"}
        assert created == {"jira-10042", "jira-10043"}
    finally:
        receiver.stop()
        local_kafka.stop(broker_dir)
