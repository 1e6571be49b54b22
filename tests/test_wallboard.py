"""The wallboard JSON (streams/wallboard.py) over hand-built merged tables and real engines."""

from __future__ import annotations

import asyncio
import calendar
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ccpulse.config import Settings, WindowSettings, load_settings
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.kpis import QUEUE
from ccpulse.core.lifecycle import Interaction, Step
from ccpulse.core.windowing import Windowing
from schemas.records import window_record_key
from streams import wallboard as wb
from streams.context import Tables
from streams.merged import entry_key

S = 1000
MIN = 60 * S
DAY_MS = 86_400_000
T0 = calendar.timegm((2026, 3, 2, 10, 0, 0)) * 1000  # Monday 10:00:00 UTC
TODAY = T0 - 10 * 3600 * S  # 2026-03-02 00:00 UTC
YESTERDAY = TODAY - DAY_MS


# -- hand-built merged tables ------------------------------------------------------


def agg(**counts: int) -> dict[str, Any]:
    return {"counts": counts, "tops": {}}


def window(size: int, start: int, queue: str, channel: str, watermark: int,
           parts: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """A merged ``kind: window`` entry as streams/merge.py stores it; parts: source -> agg."""
    key = (size, start, QUEUE, queue, channel)
    end = Windowing((size,)).end(size, start)
    entry = {"kind": "window", "key": list(key), "end": end, "partition": 0,
             "parts": {source: {"version": 1, "final": False, "agg": a, "watermark": watermark,
                                "waiting_at_start": 0, "waiting_at_end": 0}
                       for source, a in parts.items()}}
    return window_record_key(key), entry


def live(queue: str, channel: str, watermark: int,
         parts: dict[str, tuple[int, int | None, list[str], int]]) -> tuple[str, dict[str, Any]]:
    """A merged ``kind: live`` entry; parts: source -> (waiting, oldest_entered, agents, open_tickets)."""
    entry = {"kind": "live", "queue": queue, "channel": channel, "partition": 0,
             "parts": {source: {"version": 1, "watermark": watermark, "waiting": w,
                                "oldest_entered": oldest, "agents": agents, "open_tickets": tickets}
                       for source, (w, oldest, agents, tickets) in parts.items()}}
    return f"live|{queue}|{channel}", entry


def pipe_of(*entries: tuple[str, dict[str, Any]], settings: Any = None) -> Any:
    return SimpleNamespace(settings=settings or Settings(),
                           tables=Tables(merged=SimpleNamespace(data=dict(entries))))


def row(body: dict[str, Any], queue: str, channel: str) -> dict[str, Any]:
    [found] = [q for q in body["queues"] if (q["queue"], q["channel"]) == (queue, channel)]
    return found


# -- RAG -------------------------------------------------------------------------------


@pytest.mark.parametrize("sl,target,status", [
    (1.0, 0.8, "green"), (0.8, 0.8, "green"), (0.7999, 0.8, "amber"), (0.75, 0.8, "amber"),
    (0.7499, 0.8, "red"), (0.0, 0.8, "red"), (None, 0.8, "none"),
    # 0.9 - 0.05 is 0.8500000000000001 in floating point: 17/20 is still amber.
    (17 / 20, 0.9, "amber"), (0.8499, 0.9, "red"), (0.9, 0.9, "green"),
    (4 / 5, 0.8, "green"), (3 / 4, 0.8, "amber"),
])
def test_service_level_status_boundaries(sl: float | None, target: float, status: str) -> None:
    assert wb.sl_status(sl, target) == status


@pytest.mark.parametrize("within,answered,abandoned,status", [
    (4, 5, 0, "green"),    # 0.80 exactly
    (3, 3, 1, "amber"),    # 0.75 exactly
    (37, 50, 0, "red"),    # 0.74
    (0, 0, 0, "none"),     # nothing left the queue: no service level
])
def test_status_in_the_json_follows_the_last_15_minutes(within: int, answered: int, abandoned: int,
                                                        status: str) -> None:
    body = wb.wallboard(pipe_of(
        window(60, T0, "billing", "voice", T0 + 30 * S,
               {"0": agg(offered=answered + abandoned, answered=answered, abandoned=abandoned,
                         answered_within_target=within)})), now_ms=T0 + 31 * S)
    last = row(body, "billing", "voice")["last_15m"]
    assert last["service_level_status"] == status
    assert last["service_level_target"] == 0.8
    assert last["service_level_seconds"] == 20.0
    assert "service_level_target" not in body  # each tile has its own


TARGETS_CONFIG = """
[targets.voice]
service_level = { min = 0.85 }
[targets.chat]
service_level = false
[queues.vip.targets.voice]
service_level = { min = 0.95 }
"""


def configured(tmp_path: Any, text: str = TARGETS_CONFIG) -> Settings:
    (tmp_path / "ccpulse.toml").write_text(text)
    return load_settings(tmp_path / "ccpulse.toml", env={})


def sl_window(queue: str, channel: str, within: int, answered: int = 100) -> tuple[str, dict[str, Any]]:
    """A 1-minute window whose service level is ``within / answered`` (nothing abandoned)."""
    return window(60, T0, queue, channel, T0, {"0": agg(offered=answered, answered=answered,
                                                         answered_within_target=within)})


def test_tiles_are_judged_against_the_configured_service_level_targets(tmp_path: Any) -> None:
    # [queues.vip.targets.voice] 0.95: 88% is red (80% would have called it green);
    # billing has no override and takes [targets.voice] 0.85: 88% is green there.
    body = wb.wallboard(pipe_of(sl_window("vip", "voice", 88), sl_window("billing", "voice", 88),
                                settings=configured(tmp_path)), now_ms=T0)
    vip, billing = row(body, "vip", "voice")["last_15m"], row(body, "billing", "voice")["last_15m"]
    assert (vip["service_level"], vip["service_level_target"], vip["service_level_status"]) == (0.88, 0.95, "red")
    assert (billing["service_level_target"], billing["service_level_status"]) == (0.85, "green")
    assert row(body, "vip", "voice")["today"]["service_level_target"] == 0.95
    # 90% is 5 points under 0.95: amber, the band's edge
    edge = wb.wallboard(pipe_of(sl_window("vip", "voice", 90), settings=configured(tmp_path)), now_ms=T0)
    assert row(edge, "vip", "voice")["last_15m"]["service_level_status"] == "amber"


def test_without_a_service_level_target_a_tile_has_no_colour(tmp_path: Any) -> None:
    # [targets.chat] service_level = false removes it; tickets have none by default.
    body = wb.wallboard(pipe_of(sl_window("web", "chat", 10), sl_window("tier1", "email", 10),
                                settings=configured(tmp_path)), now_ms=T0)
    for queue, channel in (("web", "chat"), ("tier1", "email")):
        last = row(body, queue, channel)["last_15m"]
        assert last["service_level"] == 0.1
        assert (last["service_level_target"], last["service_level_status"]) == (None, "none"), channel


def test_the_default_targets_are_those_of_the_targets_table() -> None:
    body = wb.wallboard(pipe_of(sl_window("billing", "voice", 79)), now_ms=T0)
    last = row(body, "billing", "voice")["last_15m"]
    assert last["service_level_target"] == Settings().targets.for_queue("billing", "voice")["service_level"].value
    assert last["service_level_status"] == "amber"


# -- null handling ------------------------------------------------------------------


def test_an_empty_table_gives_no_queues_and_no_event_time() -> None:
    body = wb.wallboard(pipe_of(), now_ms=T0)
    assert body["queues"] == []
    assert body["as_of"] is None
    assert body["generated_at"] == "2026-03-02T10:00:00.000Z"


def test_a_queue_with_live_state_only_has_null_ratios_not_zero() -> None:
    body = wb.wallboard(pipe_of(live("billing", "voice", T0, {"0": (0, None, [], 0)})), now_ms=T0 + 5 * S)
    q = row(body, "billing", "voice")
    assert (q["waiting"], q["longest_wait_seconds"], q["agents_busy"], q["open_tickets"]) == (0, None, 0, None)
    for view in (q["last_15m"], q["today"]):
        assert view["offered"] == 0
        for name in ("service_level", "abandonment_rate", "asa_seconds", "first_response_avg_seconds", "csat"):
            assert view[name] is None, name
        assert view["service_level_status"] == "none"
    assert q["open_sla_breaches"] == []
    assert body["as_of"] == "2026-03-02T10:00:00.000Z"
    assert body["generated_at"] == "2026-03-02T10:00:05.000Z"
    json.dumps(body, allow_nan=False)  # no NaN anywhere


def test_day_windows_not_configured_gives_null_today() -> None:
    settings = replace(Settings(), windows=WindowSettings(sizes=(60, 900)))
    body = wb.wallboard(pipe_of(window(60, T0, "billing", "voice", T0, {"0": agg(offered=1)}),
                                settings=settings), now_ms=T0)
    q = row(body, "billing", "voice")
    assert q["today"] is None and q["last_15m"]["offered"] == 1


# -- ordering -----------------------------------------------------------------------


def test_voice_then_chat_then_ticket_channels_then_queue_names() -> None:
    entries = [live(queue, channel, T0, {"0": (0, None, [], 0)})
               for queue, channel in [("zeta", "web"), ("alpha", "email"), ("beta", "chat"), ("sales", "voice"),
                                      ("alpha", "chat"), ("billing", "voice"), ("alpha", "web")]]
    entries.append(window(60, T0, "aaa", "social", T0, {"0": agg(offered=1)}))
    body = wb.wallboard(pipe_of(*entries), now_ms=T0)
    assert [(q["queue"], q["channel"]) for q in body["queues"]] == [
        ("billing", "voice"), ("sales", "voice"), ("alpha", "chat"), ("beta", "chat"),
        ("alpha", "email"), ("aaa", "social"), ("alpha", "web"), ("zeta", "web")]
    assert [q["channel_kind"] for q in body["queues"]] == ["voice"] * 2 + ["chat"] * 2 + ["ticket"] * 4
    # the same input in another insertion order gives the same body
    again = wb.wallboard(pipe_of(*reversed(entries)), now_ms=T0)
    assert again == body


def test_agent_scope_windows_are_not_queues() -> None:
    key = (900, T0, "a", "agent-7", "voice")
    entry = {"kind": "window", "key": list(key), "end": T0 + 900 * S, "partition": 0,
             "parts": {"0": {"version": 1, "final": False, "agg": agg(answered=3), "watermark": T0}}}
    body = wb.wallboard(pipe_of(("agent|" + window_record_key(key), entry)), now_ms=T0)
    assert body["queues"] == []


# -- several partitions -------------------------------------------------------------


def test_live_state_sums_over_partitions_and_counts_each_agent_once() -> None:
    body = wb.wallboard(pipe_of(
        live("billing", "voice", T0, {"0": (2, T0 - 40 * S, ["ag-1", "ag-2"], 0),
                                      "1": (3, T0 - 75 * S, ["ag-2", "ag-3"], 0),
                                      "2": (0, None, [], 0)}),
        live("tier1", "email", T0 - 5 * S, {"0": (1, T0 - 3600 * S, [], 4), "3": (0, None, [], 2)})),
        now_ms=T0 + 500)
    billing = row(body, "billing", "voice")
    assert (billing["waiting"], billing["longest_wait_seconds"], billing["agents_busy"]) == (5, 75.0, 3)
    assert billing["open_tickets"] is None  # not a ticket channel
    tier1 = row(body, "tier1", "email")
    assert (tier1["waiting"], tier1["longest_wait_seconds"], tier1["open_tickets"]) == (1, 3600.0, 6)
    # as_of: the newest watermark of any partition, over every entry
    assert body["as_of"] == "2026-03-02T10:00:00.000Z"


def test_windows_sum_over_partitions() -> None:
    body = wb.wallboard(pipe_of(
        window(60, T0, "billing", "voice", T0 + 50 * S, {
            "0": agg(offered=3, answered=2, answered_within_target=2, wait_answered_ms=10_000),
            "1": agg(offered=2, answered=1, abandoned=1, wait_answered_ms=50_000, first_responses=0),
            "fcr-1": agg(fcr_contacts=2)}),
        window(86400, TODAY, "billing", "voice", T0 + 50 * S, {
            "0": agg(offered=30, answered=20, answered_within_target=18, abandoned=2, csat_responses=4,
                     csat_satisfied=3),
            "2": agg(offered=10, answered=8, answered_within_target=8, csat_responses=1)})), now_ms=T0)
    q = row(body, "billing", "voice")
    last = q["last_15m"]
    assert (last["offered"], last["answered"], last["abandoned"]) == (5, 3, 1)
    assert last["service_level"] == pytest.approx(2 / 4)
    assert last["abandonment_rate"] == pytest.approx(1 / 4)
    assert last["asa_seconds"] == pytest.approx(20.0)
    today = q["today"]
    assert (today["offered"], today["answered"], today["abandoned"]) == (40, 28, 2)
    assert today["service_level"] == pytest.approx(26 / 30)
    assert today["service_level_status"] == "green"
    assert today["csat"] == pytest.approx(3 / 5)
    assert (today["window"], today["window_start"], today["window_end"]) == (
        "1d", "2026-03-02T00:00:00.000Z", "2026-03-03T00:00:00.000Z")


# -- the rolling 15 minutes and today -------------------------------------------------


def test_last_15_minutes_are_the_one_minute_windows_ending_after_as_of_minus_15_minutes() -> None:
    as_of = T0 + 30 * S
    since = as_of - 15 * MIN
    entries = [
        # ends exactly at as_of - 15 min: out (merge.py: end > since)
        window(60, since - MIN, "billing", "voice", as_of, {"0": agg(offered=100)}),
        # ends 30 s after it: in
        window(60, since - 30 * S, "billing", "voice", as_of, {"0": agg(offered=10)}),
        window(60, T0, "billing", "voice", as_of, {"0": agg(offered=1)}),
        # 15-minute and hourly windows are not the rolling view
        window(900, T0, "billing", "voice", as_of, {"0": agg(offered=1000)}),
        window(3600, T0, "billing", "voice", as_of, {"0": agg(offered=1000)}),
    ]
    # (a window start 30 s off the minute is not realistic, but shows the boundary)
    entries[1][1]["end"] = since + 30 * S
    body = wb.wallboard(pipe_of(*entries), now_ms=as_of)
    assert row(body, "billing", "voice")["last_15m"]["offered"] == 11


def test_today_is_the_day_window_containing_as_of_not_yesterday() -> None:
    as_of = T0
    body = wb.wallboard(pipe_of(
        window(86400, YESTERDAY, "billing", "voice", as_of, {"0": agg(offered=500, answered=500)}),
        window(86400, TODAY, "billing", "voice", as_of, {"0": agg(offered=7, answered=5)}),
        # a queue busy yesterday and quiet today shows today's zeros, not yesterday's totals
        window(86400, YESTERDAY, "sales", "voice", as_of, {"0": agg(offered=90, answered=90)})),
        now_ms=as_of)
    billing, sales = row(body, "billing", "voice")["today"], row(body, "sales", "voice")["today"]
    assert (billing["offered"], billing["answered"]) == (7, 5)
    assert billing["window_start"] == "2026-03-02T00:00:00.000Z"
    assert (sales["offered"], sales["answered"], sales["service_level"]) == (0, 0, None)
    assert sales["window_start"] == "2026-03-02T00:00:00.000Z"


def test_today_follows_the_configured_day_start_and_time_zone() -> None:
    # Berlin, day starting 06:00 local: at 04:30 UTC (05:30 CET) "today" began yesterday 05:00 UTC.
    settings = replace(Settings(), windows=WindowSettings(timezone="Europe/Berlin", day_start_hour=6))
    as_of = TODAY + 4 * 3600 * S + 30 * MIN
    day = Windowing((86400,), "Europe/Berlin", 6)
    current, previous = day.start(as_of, 86400), day.start(as_of - DAY_MS, 86400)
    assert current == YESTERDAY + 5 * 3600 * S
    body = wb.wallboard(pipe_of(
        window(86400, previous, "billing", "voice", as_of, {"0": agg(offered=50)}),
        window(86400, current, "billing", "voice", as_of, {"0": agg(offered=12)}), settings=settings),
        now_ms=as_of)
    today = row(body, "billing", "voice")["today"]
    assert today["offered"] == 12
    assert today["window_start"] == "2026-03-01T05:00:00.000Z"
    assert today["window_end"] == "2026-03-02T05:00:00.000Z"


# -- real engines on two partitions, merged as streams/merge.py does ------------------


def merge_partials(engines: list[PartitionEngine], windowing: Windowing) -> dict[str, dict[str, Any]]:
    """The merged table after each engine published (lifecycle.publish) and merge.py merged."""
    merged: dict[str, dict[str, Any]] = {}
    for engine in engines:
        p, wm = engine.partition, engine.record.watermark
        partials = [{"kind": "window", "key": list(s.key), "partition": p, "version": s.version,
                     "final": s.final, "agg": s.agg.to_dict(), "end": windowing.end(s.key[0], s.key[1]),
                     "watermark": wm, "waiting_at_start": s.waiting_at_start,
                     "waiting_at_end": s.waiting_at_end} for s in engine.take_dirty()]
        partials += [{"kind": "live", "queue": q, "channel": c, "partition": p, "version": engine.version(False),
                      "watermark": wm, "waiting": sum(lq.waiting.values()),
                      "oldest_entered": min(lq.waiting) if lq.waiting else None,
                      "agents": sorted(lq.busy), "open_tickets": lq.open_tickets}
                     for (q, c), lq in engine.take_live()]
        for partial in partials:
            key, base = entry_key(partial)
            entry = merged.setdefault(key, {**base, "parts": {}, "partition": 0})
            entry["parts"][str(p)] = {k: v for k, v in partial.items()
                                      if k not in ("key", "kind", "partition", "end")}
    return merged


class Feed:
    def __init__(self, engine: PartitionEngine) -> None:
        self.engine, self.inters, self.offset = engine, {}, -1

    def __call__(self, iid: str, channel: str, *steps: Step) -> None:
        for step in steps:
            inter = self.inters.setdefault(iid, Interaction(iid, channel, partition=self.engine.partition))
            self.offset += 1
            self.engine.apply(inter, step, self.offset)


def at(hhmmss: str, day: int = TODAY) -> int:
    h, m, s = (int(x) for x in hhmmss.split(":"))
    return day + ((h * 60 + m) * 60 + s) * S


def test_real_engines_on_two_partitions() -> None:
    settings = Settings()
    w = settings.windows
    windowing = Windowing(w.sizes, w.timezone, w.day_start_hour)
    engines = [PartitionEngine(p, windowing, w.allowed_lateness_seconds, settings.thresholds_for,
                               w.interaction_horizon_seconds) for p in (0, 1)]
    p0, p1 = Feed(engines[0]), Feed(engines[1])
    # yesterday: today's totals must not see it
    p1("G", "voice", Step(at("23:59:00", YESTERDAY), "offered", "G1", "billing"),
       Step(at("23:59:05", YESTERDAY), "answered", "G2", agent="ag-9"),
       Step(at("23:59:30", YESTERDAY), "ended", "G3"))
    # 09:30: today, but not in the last 15 minutes
    p1("F", "voice", Step(at("09:30:00"), "offered", "F1", "billing"),
       Step(at("09:30:05"), "answered", "F2", agent="ag-8"), Step(at("09:31:00"), "ended", "F3"))
    p0("A", "voice", Step(at("10:00:00"), "offered", "A1", "billing"),
       Step(at("10:00:10"), "answered", "A2", agent="ag-1"))                  # 10 s: within 20 s, busy
    p0("B", "voice", Step(at("10:00:05"), "offered", "B1", "billing"),
       Step(at("10:00:35"), "abandoned", "B2"))                               # abandoned after 30 s
    p1("D", "voice", Step(at("10:00:20"), "offered", "D1", "billing"),
       Step(at("10:00:50"), "answered", "D2", agent="ag-2"))                  # 30 s: over target
    p0("C", "voice", Step(at("10:01:00"), "offered", "C1", "billing"))       # waiting
    p0("T", "email", Step(at("10:00:30"), "offered", "T1", "tier1"))         # an open, unanswered ticket
    p0("H", "chat", Step(at("10:00:40"), "offered", "H1", "web"),
       Step(at("10:00:40"), "message", "H2", sender="customer"),
       Step(at("10:00:45"), "answered", "H3", agent="ag-5"),
       Step(at("10:00:52"), "message", "H4", sender="agent"),
       Step(at("10:00:58"), "rated", "H5", csat=5))
    p1("E", "voice", Step(at("10:01:10"), "offered", "E1", "billing"))       # waiting, newest event
    body = wb.wallboard(pipe_of(*merge_partials(engines, windowing).items(), settings=settings),
                        now_ms=at("10:01:11"))

    assert body["as_of"] == "2026-03-02T10:01:10.000Z"
    assert [(q["queue"], q["channel"]) for q in body["queues"]] == [
        ("billing", "voice"), ("web", "chat"), ("tier1", "email")]
    billing = row(body, "billing", "voice")
    assert (billing["waiting"], billing["longest_wait_seconds"], billing["agents_busy"]) == (2, 10.0, 2)
    last = billing["last_15m"]
    assert (last["offered"], last["answered"], last["abandoned"]) == (5, 2, 1)  # A B D C E; A D; B
    assert last["service_level"] == pytest.approx(1 / 3)
    assert last["service_level_status"] == "red"
    assert last["abandonment_rate"] == pytest.approx(1 / 3)
    assert last["asa_seconds"] == pytest.approx(20.0)
    today = billing["today"]
    assert (today["offered"], today["answered"], today["abandoned"]) == (6, 3, 1)  # + F
    assert today["service_level"] == pytest.approx(2 / 4)
    assert today["service_level_status"] == "red"

    chat = row(body, "web", "chat")
    assert (chat["waiting"], chat["agents_busy"], chat["open_tickets"]) == (0, 1, None)
    assert chat["last_15m"]["first_response_avg_seconds"] == pytest.approx(12.0)
    assert chat["last_15m"]["csat"] == 1.0 and chat["today"]["csat"] == 1.0
    assert chat["last_15m"]["service_level_seconds"] == 60.0
    assert chat["last_15m"]["service_level_status"] == "green"

    ticket = row(body, "tier1", "email")
    assert (ticket["channel_kind"], ticket["waiting"], ticket["open_tickets"]) == ("ticket", 1, 1)
    assert ticket["longest_wait_seconds"] == 40.0
    assert ticket["agents_busy"] == 0
    assert ticket["last_15m"]["service_level_seconds"] == 86400.0
    assert ticket["today"]["offered"] == 1


# -- the endpoints ------------------------------------------------------------------


class FakeApp:
    def __init__(self) -> None:
        self.pages: dict[str, Any] = {}

    def page(self, path: str) -> Any:
        def decorate(fn: Any) -> Any:
            self.pages[path] = fn
            return fn
        return decorate


class FakeWeb:
    def json(self, value: Any, **kwargs: Any) -> tuple[str, Any, dict[str, Any]]:
        return "json", value, kwargs

    def html(self, value: str, **kwargs: Any) -> tuple[str, Any, dict[str, Any]]:
        return "html", value, kwargs


def test_register_serves_the_json_and_the_page() -> None:
    app = FakeApp()
    pipe = pipe_of(live("billing", "voice", T0, {"0": (1, T0 - 3 * S, [], 0)}))
    pipe.app = app
    wb.register(pipe)
    assert set(app.pages) == {"/api/wallboard", "/wallboard"}
    kind, body, kwargs = asyncio.run(app.pages["/api/wallboard"](FakeWeb(), None))
    assert kind == "json" and body["queues"][0]["waiting"] == 1
    assert kwargs["headers"]["Cache-Control"] == "no-store"
    kind, html, _ = asyncio.run(app.pages["/wallboard"](FakeWeb(), None))
    assert kind == "html" and html.startswith("<!DOCTYPE html>")


def test_the_page_is_self_contained_and_refreshes_every_second() -> None:
    html = wb.page_html()
    # no external assets: no scripts, styles, fonts or images from anywhere
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://""", html)
    assert "setInterval(refresh, REFRESH_MS)" in html and "const REFRESH_MS = 1000;" in html
    assert 'fetch(API' in html and 'const API = "/api/wallboard";' in html
    assert "tabular-nums" in html
    # every field the page shows exists in the JSON
    body = wb.wallboard(pipe_of(live("tier1", "email", T0, {"0": (1, T0, [], 1)}),
                                live("b", "voice", T0, {"0": (1, T0, [], 0)}),
                                live("c", "chat", T0, {"0": (1, T0, [], 0)})), now_ms=T0)
    fields = set(re.findall(r'\["([a-z0-9_.]+)", "', html)) | set(re.findall(r'data-field="([a-z0-9_.]+)"', html))
    assert fields, "no data-field in the page"
    for q in body["queues"]:
        for path in fields - {"as_of"}:
            node: Any = q
            for part in path.split("."):
                assert part in node, path
                node = node[part]


# -- live or replay --------------------------------------------------------------------


@pytest.mark.parametrize("behind_ms, mode", [
    (0, "live"), (30 * S, "live"), (wb.REPLAY_AFTER_MS, "live"), (wb.REPLAY_AFTER_MS + 1, "replay"),
    (27 * 365 * DAY_MS, "replay"),        # a 1999 log replayed today
    (-(wb.REPLAY_AFTER_MS + 1), "replay"),  # event time ahead of the wall clock: not live either
])
def test_mode_says_replay_when_event_time_is_far_from_the_wall_clock(behind_ms: int, mode: str) -> None:
    as_of = T0 - behind_ms
    body = wb.wallboard(pipe_of(live("billing", "voice", as_of, {"0": (0, None, [], 0)})), now_ms=T0)
    assert body["mode"] == mode


def test_no_event_time_has_no_mode() -> None:
    assert wb.wallboard(pipe_of(), now_ms=T0)["mode"] is None


# -- agents and staffing (issue 16) ---------------------------------------------------

AGENT_FIELDS = ("agents_staffed", "agents_available", "agents_on_contact", "agents_after_contact_work",
                "agents_away", "agents_away_by_reason", "occupancy_now", "agents_required", "agents_gap")


def merged_by_the_merge_stage(*partials: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The merged table and the ``kpi.queue-state`` records a real MergeStage makes of ``partials``."""
    from streams.stages.merge import KPI_QUEUE_STATE, MergeStage
    from streams.stages.io import Consumed

    table: dict[str, Any] = {}
    stage = MergeStage(Settings(), table)
    decoded = [json.loads(json.dumps(p)) for p in partials]  # as the merge agent reads them
    out = stage.on_batch([Consumed("ccpulse-window-partials", 0, i, p, None) for i, p in enumerate(decoded)],
                         generation=1, now_ms=T0 + S, mono=1000.0, publish=True)
    assert out.failures == []
    return table, {p.key.decode(): p.value for p in out.records if p.topic == KPI_QUEUE_STATE}


def agents_live(partition: int, queue: str, channel: str, **counts: int) -> dict[str, Any]:
    """The agent stage's live partial (streams/stages/partials.py); ``away_<reason>=n`` -> ``away:<reason>``."""
    from streams.stages.partials import agents_live_partial

    named = {name.replace("away_", "away:", 1) if name.startswith("away_") else name: n
             for name, n in counts.items()}
    return agents_live_partial(partition, queue, channel, named, T0)[1]


def minute(queue: str, channel: str, **counts: int) -> dict[str, Any]:
    """A pipeline window partial of the minute at T0 (the rolling view agents_required is sized on)."""
    return {"kind": "window", "key": [60, T0, QUEUE, queue, channel], "partition": 0, "version": 1,
            "final": False, "agg": agg(**counts), "end": T0 + MIN, "watermark": T0,
            "waiting_at_start": 0, "waiting_at_end": 0}


# 60 calls in the last 15 minutes answered with 300 s of handle time each: 0.0667/s x 300 s is a
# load of 20 Erlangs, so Erlang C needs more than 20 agents for 80% in 20 s.
BUSY_MINUTE = dict(offered=60, answered=60, answered_within_target=50, handled=60, handle_ms=60 * 300_000)


def test_live_agents_are_summed_over_the_agent_stage_partitions_as_kpi_queue_state_says() -> None:
    table, published = merged_by_the_merge_stage(
        minute("billing", "voice", **BUSY_MINUTE),
        agents_live(0, "billing", "voice", staffed=14, available=2, on_contact=8, after_contact_work=1, away=3,
                    away_lunch=2, away_break=1),
        agents_live(1, "billing", "voice", staffed=9, available=1, on_contact=6, away=2, away_lunch=1,
                    away_training=1),
        agents_live(1, "tier1", "email", staffed=3, on_contact=3),
        minute("tier1", "email", offered=4, answered=4, handled=4, handle_ms=4 * 600_000))
    body = wb.wallboard(pipe_of(*table.items()), now_ms=T0 + S)
    billing = row(body, "billing", "voice")
    assert (billing["agents_staffed"], billing["agents_available"], billing["agents_on_contact"],
            billing["agents_after_contact_work"], billing["agents_away"]) == (23, 3, 14, 1, 5)
    assert billing["agents_away_by_reason"] == {"lunch": 3, "break": 1, "training": 1}
    # The tile's "top reasons": most agents first, then by name; at most AWAY_TOP.
    assert billing["agents_away_top"] == [["lunch", 3], ["break", 1], ["training", 1]][:wb.AWAY_TOP]
    assert billing["occupancy_now"] == pytest.approx(15 / 18)
    # Short: Erlang C wants more than the 18 working (23 staffed - 5 away).
    assert billing["agents_required"] > 20 and billing["agents_gap"] == billing["agents_required"] - 18 > 0
    # One truth: the tile's agent figures are those of the kpi.queue-state record.
    for key, record in published.items():
        tile = row(body, record["queue"], record["channel"])
        assert {f: tile[f] for f in AGENT_FIELDS} == {f: record[f] for f in AGENT_FIELDS}, key
    tier1 = row(body, "tier1", "email")
    assert (tier1["agents_staffed"], tier1["agents_on_contact"]) == (3, 3)
    assert (tier1["agents_required"], tier1["agents_gap"]) == (None, None)  # tickets: no queueing model
    json.dumps(body, allow_nan=False)


def test_away_top_reasons_are_the_most_common_first() -> None:
    assert wb.away_top({}) == []
    assert wb.away_top({"": 2, "lunch": 2, "break": 5, "meeting": 1, "training": 1}) == \
        [["break", 5], ["", 2], ["lunch", 2]]


def test_without_agent_events_the_counts_are_zero_and_the_requirement_unknown_until_a_handle_time() -> None:
    # A center that sends no agent events: no agent parts, nothing handled yet.
    table, _ = merged_by_the_merge_stage(minute("billing", "voice", offered=3),
                                         live_partial_of("billing", "voice"))
    q = row(wb.wallboard(pipe_of(*table.items()), now_ms=T0 + S), "billing", "voice")
    assert (q["agents_staffed"], q["agents_available"], q["agents_on_contact"], q["agents_away"]) == (0, 0, 0, 0)
    assert (q["agents_away_by_reason"], q["agents_away_top"]) == ({}, [])
    assert (q["occupancy_now"], q["agents_required"], q["agents_gap"]) == (None, None, None)


def test_a_queue_whose_agents_left_is_shown_with_zero_agents() -> None:
    # The agent stage sends a queue whose agents are all gone once with no counts.
    # The agent stage sends a queue whose agents are all gone once with no agents, and
    # the mark that it had presence data (a queue it knows stays known).
    table, _ = merged_by_the_merge_stage(
        minute("billing", "voice", **BUSY_MINUTE),
        agents_live(0, "billing", "voice", staffed=2, available=2),
        {**agents_live(0, "billing", "voice", presence_seen=1), "version": T0 + 1})
    q = row(wb.wallboard(pipe_of(*table.items()), now_ms=T0 + S), "billing", "voice")
    assert (q["agents_staffed"], q["agents_available"]) == (0, 0)
    assert q["agents_gap"] == q["agents_required"] > 0  # nobody working: short by all it needs


def test_a_queue_no_presence_was_ever_seen_for_has_a_requirement_and_no_gap() -> None:
    # Calls handled, no agent events (none wired yet): not a red "short" tile.
    table, published = merged_by_the_merge_stage(minute("billing", "voice", **BUSY_MINUTE),
                                                 live_partial_of("billing", "voice"))
    q = row(wb.wallboard(pipe_of(*table.items()), now_ms=T0 + S), "billing", "voice")
    assert q["agents_required"] > 20 and q["agents_gap"] is None
    assert published["billing|voice"]["agents_gap"] is None
    # The tile marks the gap short by `get(...) > 0` (null > 0 is false in JS) and shows
    # null as an em dash, never 0.
    page = (Path(wb.__file__).parent / "wallboard.html").read_text()
    assert "get(data, el.dataset.shortField) > 0" in page
    assert 'if (value === null || value === undefined) return "\\u2014"' in page


def live_partial_of(queue: str, channel: str) -> dict[str, Any]:
    return {"kind": "live", "queue": queue, "channel": channel, "partition": 0, "version": 1, "watermark": T0,
            "waiting": 0, "oldest_entered": None, "agents": [], "open_tickets": 0}


def test_a_queue_no_contact_was_seen_on_yet_gets_no_tile_until_its_channel_is_known() -> None:
    # The agent stage publishes a queue's agents on channel "" until a contact or a clock
    # names the queue's channels (docs/agents.md): a tile is per channel, so none yet.
    table, published = merged_by_the_merge_stage(agents_live(0, "billing", "", staffed=4, available=4),
                                                 agents_live(0, "sales", "voice", staffed=2, available=2))
    assert "billing|" in published  # kpi.queue-state still has it
    body = wb.wallboard(pipe_of(*table.items()), now_ms=T0 + S)
    assert [(q["queue"], q["channel"]) for q in body["queues"]] == [("sales", "voice")]
