"""``ccpulse bench``'s ``connect-http`` scenario: the webhook receiver's figures (issue 17)."""

from __future__ import annotations

import argparse
import asyncio
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from ccpulse.tools.bench import FULL, SHORT, Bench, add_parser, connect_http_rows, plan_from_args
from ccpulse.tools.bench_connect_http import HttpRun, callback, expected_events


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_only_connect_http_runs_the_receiver_alone() -> None:
    assert plan_from_args(_args("--only", "connect-http")).scenarios == ("connect-http",)
    assert "connect-http" in FULL.scenarios and "connect-http" in SHORT.scenarios
    # The full plan a few tens of thousands of requests, the CI-sized one a small count.
    assert FULL.http_requests >= 20_000 and SHORT.http_requests <= 2_000
    assert plan_from_args(_args("--short", "--http-requests", "500")).http_requests == 500
    with pytest.raises(SystemExit):
        _args("--http-requests", "0")


def _run(**changes: Any) -> HttpRun:
    base = dict(sent=4, ok=4, non_2xx=0, seconds=0.002, latencies=[0.010, 0.020, 0.030, 0.200], unstored=0,
                stored_events=4, concurrency=2, warmup=0)
    base.update(changes)
    return HttpRun(**base)


def _by_metric(rows: list[Any]) -> dict[str, Any]:
    return {r.metric.split(" (")[0]: r for r in rows}


def test_rows_judge_rate_and_p99_and_show_the_counts() -> None:
    rows = _by_metric(connect_http_rows(_run()))
    assert {r.scenario for r in rows.values()} == {"connect-http"}
    rate = rows["acknowledged and stored requests/s"]
    assert rate.value == pytest.approx(2000) and rate.target == ">= 2000" and rate.met is True
    # Nearest rank, the bench's own: the 99th of 4 values is the largest.
    assert rows["time to 2xx p50"].value == pytest.approx(20) and rows["time to 2xx p50"].unit == "ms"
    p99 = rows["time to 2xx p99"]
    assert p99.value == pytest.approx(200) and p99.target == "<= 100" and p99.met is False
    assert (rows["requests sent"].value, rows["answered 2xx"].value, rows["answered otherwise"].value) == (4, 4, 0)
    assert rows["answered 2xx, events not on Kafka"].met is True


def test_a_2xx_whose_events_are_not_on_kafka_fails_the_scenario() -> None:
    # The receiver answered everything 2xx and stored nothing: no acknowledgement counts.
    rows = _by_metric(connect_http_rows(_run(latencies=[], unstored=4, stored_events=0)))
    assert rows["answered 2xx, events not on Kafka"].value == 4
    assert rows["answered 2xx, events not on Kafka"].met is False
    assert rows["acknowledged and stored requests/s"].value == 0
    assert rows["acknowledged and stored requests/s"].met is False
    assert rows["time to 2xx p99"].met is False


def test_every_request_maps_to_its_own_event() -> None:
    url = "http://127.0.0.1:1/twilio"
    ids = [expected_events(callback(url, i, "WTrun")[2]) for i in range(50)]
    assert all(len(one) == 1 and next(iter(one))[0] == "call" for one in ids)
    assert len(set().union(*ids)) == 50
    warm = expected_events(callback(url, 0, "WTwarm")[2])
    assert warm.isdisjoint(ids[0])  # the warm-up never stands in for a measured request


# ---------------------------------------------------------------- on the real broker

@pytest.mark.integration
def test_short_scenario_on_a_real_receiver_and_broker(kafka_bootstrap: str, tmp_path: Path) -> None:
    said: list[str] = []
    plan = replace(SHORT, scenarios=("connect-http",), http_requests=400)
    code = Path(__file__).resolve().parents[1]
    bench = Bench(plan, code, tmp_path, kafka_bootstrap, False, said.append)
    report = asyncio.run(bench.run())
    rows = _by_metric(report.rows)
    assert {r.scenario for r in report.rows} == {"connect-http"}, report.rows
    assert rows["requests sent"].value == 400
    assert rows["answered 2xx"].value + rows["answered otherwise"].value == 400
    assert rows["answered 2xx, events not on Kafka"].value == 0
    assert rows["acknowledged and stored requests/s"].value > 0
    assert 0 < rows["time to 2xx p50"].value <= rows["time to 2xx p99"].value
    detail = report.details["connect-http"]
    assert detail["stored_events"] >= rows["answered 2xx"].value and detail["loadavg_start"]
    assert all(math.isfinite(r.value) for r in report.rows)


@pytest.fixture()
def lying_receiver() -> Iterator[str]:
    """An HTTP server that answers every webhook 200 and stores nothing."""
    from aiohttp import web

    from ccpulse.probes import free_port

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: list[Any] = []

    async def ok(request: Any) -> Any:
        await request.read()
        return web.Response(status=200, body=b"{}")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/twilio", ok)
        runner.append(web.AppRunner(app, access_log=None))
        await runner[0].setup()
        await web.TCPSite(runner[0], "127.0.0.1", port).start()
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.integration
def test_a_receiver_answering_2xx_without_storing_fails_on_the_real_broker(
        kafka_bootstrap: str, lying_receiver: str) -> None:
    from ccpulse.tools.bench_connect_http import load_and_verify

    topic = f"bench-lying-{lying_receiver.rsplit(':', 1)[1]}.calls"
    run = load_and_verify(lying_receiver, kafka_bootstrap, {"call": topic}, requests=100, concurrency=4, warmup=10)
    assert (run.sent, run.ok, run.unstored, run.stored_events) == (100, 100, 100, 0)
    rows = _by_metric(connect_http_rows(run))
    assert rows["answered 2xx, events not on Kafka"].met is False
    assert rows["acknowledged and stored requests/s"].met is False
