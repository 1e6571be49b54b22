"""The benchmark's bookkeeping: percentiles, targets, probe accounting, profiles, options."""

from __future__ import annotations

import argparse
import math

import orjson
import pytest

from ccpulse.tools.bench import Row, add_parser, format_table, open_contacts, percentile, plan_from_args, FULL, SHORT
from ccpulse.tools.bench_latency import ProbeBook
from ccpulse.tools.bench_worker import metric_sum, summarize_profile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert math.isnan(percentile([], 50))


def test_rows_judge_their_target() -> None:
    assert Row("t", "events/s", 25_000, "events/s", ">= 20000").met is True
    assert Row("t", "events/s", 19_999, "events/s", ">= 20000").met is False
    assert Row("l", "p99", 1.0, "s", "<= 1").met is True
    assert Row("l", "p99", 1.2, "s", "<= 1").met is False
    assert Row("x", "info", 3.0, "x").met is None


def test_table_has_one_line_per_row_and_the_verdicts() -> None:
    text = format_table([Row("throughput 1 worker", "sustained events/s", 1234.5, "events/s", ">= 20000"),
                         Row("latency", "p99", 0.25, "s", "<= 1"), Row("memory", "RSS", 120.0, "MB")])
    lines = text.splitlines()
    assert len(lines) == 5  # header, rule, three rows
    assert "1,234" in lines[2] and lines[2].rstrip().endswith("NO")
    assert "0.25" in lines[3] and lines[3].rstrip().endswith("yes")
    assert lines[4].rstrip().endswith("-")


def test_probes_are_seen_in_sending_order_per_window() -> None:
    book = ProbeBook()
    # Two probes in the minute starting at 60 000 ms, one in the next minute.
    for sent, ts in ((10.0, 60_100), (10.25, 60_350), (10.5, 120_000)):
        book.add(sent, ts)
    book.window_offered(60_000, 1, at=10.6, where=(0, 5))
    book.window_offered(60_000, 2, at=11.0, where=(1, 7))
    book.window_offered(60_000, 2, at=12.0, where=(1, 9))  # a later version changes nothing
    book.window_offered(120_000, 1, at=11.5, where=(0, 6))
    book.total_offered(2, at=10.4)
    book.stored_through({0: 7, 1: 7}, at=11.8)  # partition 1 has not committed past offset 7
    book.total_offered(3, at=10.9)
    assert book.missing() == {"kpi.windows": 0, "/metrics": 0, "ClickHouse": 1}
    book.stored_through({0: 7, 1: 8}, at=12.5)
    assert book.complete()
    lat = book.latencies(until=99.0)
    assert lat["kpi.windows"] == pytest.approx([0.6, 0.75, 1.0])
    assert lat["/metrics"] == pytest.approx([0.4, 0.15, 0.4])
    assert lat["ClickHouse"] == pytest.approx([1.8, 2.25, 1.3])


def test_unseen_probes_count_as_lower_bounds() -> None:
    book = ProbeBook()
    book.add(5.0, 60_000)
    book.add(6.0, 60_500)
    book.total_offered(1, at=5.5)
    lat = book.latencies(until=20.0)
    assert lat["/metrics"] == pytest.approx([0.5, 14.0])
    assert lat["kpi.windows"] == pytest.approx([15.0, 14.0])
    assert book.missing()["/metrics"] == 1 and not book.complete()


def test_metric_sum_adds_matching_samples_only() -> None:
    text = "\n".join([
        "# HELP ccpulse_queue_offered_total Contacts",
        'ccpulse_queue_offered_total{queue="probe",channel="voice",partition="0"} 2.0',
        'ccpulse_queue_offered_total{queue="probe",channel="voice",partition="3"} 1.0',
        'ccpulse_queue_offered_total{queue="sales",channel="voice",partition="0"} 40.0',
        'ccpulse_queue_offered_totals{queue="probe"} 100.0',
        "ccpulse_events_consumed_total 7.0",
    ])
    assert metric_sum(text, "ccpulse_queue_offered_total", 'queue="probe"') == 3.0
    assert metric_sum(text, "ccpulse_queue_offered_total") == 43.0
    assert metric_sum(text, "ccpulse_events_consumed_total") == 7.0
    assert metric_sum("", "ccpulse_events_consumed_total") == 0.0


def test_profile_summary_ranks_own_and_inclusive_samples() -> None:
    raw = "\n".join([
        "<module> (ccpulse/cli.py:10);run (asyncio/base_events.py:5);lifecycle (/x/streams/lifecycle.py:99);"
        "apply (/x/ccpulse/core/engine.py:12) 30",
        "<module> (ccpulse/cli.py:10);run (asyncio/base_events.py:5);lifecycle (/x/streams/lifecycle.py:101);"
        "dumps (orjson.py:1) 10",
        "<module> (ccpulse/cli.py:10);select (selectors.py:468) 20",
    ])
    summary = summarize_profile(raw, top=3)
    assert summary.samples == 60
    assert summary.self_top[0] == ("apply (core/engine.py)", 30)
    assert summary.self_top[1] == ("select (selectors.py)", 20)
    inclusive = dict(summary.inclusive_top)
    assert inclusive["lifecycle (streams/lifecycle.py)"] == 40  # both of its lines, once per sample
    assert not any("cli.py" in name for name in inclusive)


def test_open_contacts_are_offered_only_on_the_given_queues() -> None:
    messages = list(open_contacts(250, 25, "mem.calls"))
    assert len(messages) == 250
    docs = [orjson.loads(value) for _topic, _key, value in messages]
    assert {doc["type"] for doc in docs} == {"call.offered"}
    assert len({doc["queue"] for doc in docs}) == 25
    assert len({doc["interaction_id"] for doc in docs}) == 250
    assert all(key == doc["interaction_id"].encode() for (_t, key, _v), doc in zip(messages, docs))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_plan_from_options() -> None:
    assert plan_from_args(_args()) == FULL
    assert plan_from_args(_args("--short")) == SHORT
    plan = plan_from_args(_args("--short", "--events", "1,000", "--workers", "3,1", "--publish-interval", "0.2"))
    assert (plan.events, plan.workers, plan.publish_interval) == (1000, (1, 3), 0.2)
    with pytest.raises(SystemExit):
        _args("--workers", "0")
    with pytest.raises(ValueError):
        plan_from_args(_args("--publish-interval", "0"))
