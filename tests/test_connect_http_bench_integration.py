"""The receiver's bench figures come from real signed requests all acknowledged (a small run)."""

from __future__ import annotations

import pytest

from ccpulse.tools.bench_connect_http import measure

pytestmark = pytest.mark.integration


def test_small_bench_run_is_all_acknowledged(kafka_bootstrap: str) -> None:
    figures = measure(kafka_bootstrap, requests=300, concurrency=8, warmup=50)
    assert figures["failed"] == 0 and figures["requests"] == 300
    assert figures["requests_per_second"] > 0 and 0 < figures["ack_p50_ms"] <= figures["ack_p99_ms"]
    assert isinstance(figures["meets_targets"], bool)
