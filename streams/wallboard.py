"""The built-in wallboard: ``GET /api/wallboard`` (JSON) and ``GET /wallboard`` (a TV page).

The JSON is read from the same merged table that ``streams/merge.py`` publishes
``kpi.queue-state`` and ``kpi.windows`` from, with the same rules:

- live state (waiting now, longest current wait, agents busy, open tickets, and the
  agents per state, required and the gap): the ``live|queue|channel`` entry, made into
  the ``kpi.queue-state`` record by the merge's own ``streams.merged.queue_state``;
- last 15 minutes: the queue's 1-minute windows whose end is after
  ``as_of - 15 min``, merged;
- today: the 1-day window containing ``as_of`` (the newest day window of the queue);
- ``as_of``: the newest event-time watermark any partition reported;
- ``mode``: ``"live"``, or ``"replay"`` when ``as_of`` is more than
  ``REPLAY_AFTER_MS`` from the wall clock (history being replayed, or a pipeline
  far behind): the page must not call 1999's numbers live.

The page (``wallboard.html``, next to this module) fetches the JSON every second
and renders every number from its fields; ``data-field`` names the field.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from ccpulse.config import channel_kind
from ccpulse.core.agents import ANY_CHANNEL
from ccpulse.core.kpis import QUEUE, WindowAgg, kpi_figures
from ccpulse.core.sla import SlaTargets
from ccpulse.core.windowing import DAY, Windowing
from schemas.events import format_ms
from schemas.records import window_name
from streams.merged import ROLLING_WINDOW_MS, merged_agg, queue_state
from streams.stages.merge import ROLLING_SIZE_S
from streams.web_auth import guarded, login_redirect

# A tile's service level is judged against the queue's ``[targets]`` service_level
# (ccpulse/core/sla.py, the target the SLA breaches use): green at or above it, amber
# within AMBER_BAND below it, red further below; no colour where no target is set.
AMBER_BAND = 0.05
_EPSILON = 1e-9  # 0.9 - 0.05 is 0.8500000000000001 in floating point
KIND_ORDER = {"voice": 0, "chat": 1, "ticket": 2}
# Live traffic keeps event time within seconds of the wall clock (a quiet input's
# event time follows the clock too); minutes apart, the board is not showing now.
REPLAY_AFTER_MS = 5 * 60 * 1000
# The live agent fields of kpi.queue-state a tile shows (METRICS.md "Agents and staffing").
AGENT_FIELDS = ("agents_staffed", "agents_available", "agents_on_contact", "agents_after_contact_work",
                "agents_away", "agents_away_by_reason", "occupancy_now", "agents_required", "agents_gap")
# Away reasons a tile has room for.
AWAY_TOP = 3
WINDOW_FIELDS = ("offered", "answered", "abandoned", "service_level", "service_level_seconds",
                 "abandonment_rate", "asa_seconds", "first_response_avg_seconds", "csat")


def sl_status(service_level: float | None, target: float | None) -> str:
    """"green" >= target, "amber" >= target - 0.05, "red" below; "none" without a service level or target."""
    if service_level is None or target is None:
        return "none"
    if service_level >= target - _EPSILON:
        return "green"
    if service_level >= target - AMBER_BAND - _EPSILON:
        return "amber"
    return "red"


def sl_target(targets: SlaTargets, queue: str, channel: str) -> float | None:
    """The queue's configured service-level target ([targets.<kind>], [queues.<q>.targets.<kind>])."""
    target = targets.for_queue(queue, channel).get("service_level")
    return None if target is None else target.value


def away_top(by_reason: dict[str, int], n: int = AWAY_TOP) -> list[list[Any]]:
    """The ``n`` reasons with the most agents away, ``[reason, agents]``; ties by reason, so the
    tile does not flicker between equal reasons."""
    return [[reason, count] for reason, count in sorted(by_reason.items(), key=lambda rc: (-rc[1], rc[0]))[:n]]


def channel_sort_key(queue: str, channel: str) -> tuple[int, str, str]:
    """Voice, then chat, then the ticket channels (by name); queues by name within a channel."""
    return KIND_ORDER[channel_kind(channel)], channel, queue


def _window_view(agg: WindowAgg, th: Any, target: float | None) -> dict[str, Any]:
    figures = kpi_figures(agg, th)
    view = {k: figures[k] for k in WINDOW_FIELDS}
    view["service_level_target"] = target
    view["service_level_status"] = sl_status(view["service_level"], target)
    return view


def wallboard(pipe: Any, now_ms: int | None = None) -> dict[str, Any]:
    """The ``/api/wallboard`` body from ``pipe.tables.merged`` (see the module doc)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    entries = list(pipe.tables.merged.data.values())
    as_of = max((part.get("watermark", 0) or 0 for entry in entries for part in entry["parts"].values()),
                default=0)
    w = pipe.settings.windows
    windowing = Windowing(tuple(w.sizes), w.timezone, w.day_start_hour)
    day_start = windowing.start(as_of, DAY) if DAY in w.sizes else None
    since = as_of - ROLLING_WINDOW_MS

    live: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    rolling: dict[tuple[str, str], WindowAgg] = {}
    today: dict[tuple[str, str], WindowAgg] = {}
    queues: set[tuple[str, str]] = set()
    for entry in entries:
        if entry["kind"] == "live":
            qc = (entry["queue"], entry["channel"])
            if qc[1] == ANY_CHANNEL:
                # Agents of a queue no contact or clock named a channel for yet (docs/agents.md):
                # a tile is per channel, the queue gets its tiles with its channels.
                continue
            live[qc] = entry["parts"]
            queues.add(qc)
            continue
        size, start, scope, name, channel = entry["key"]
        if scope != QUEUE or channel == ANY_CHANNEL:
            continue
        qc = (name, channel)
        queues.add(qc)
        if size == ROLLING_SIZE_S and entry["end"] > since:
            rolling.setdefault(qc, WindowAgg()).merge(merged_agg(entry))
        elif size == DAY and start == day_start:
            today.setdefault(qc, WindowAgg()).merge(merged_agg(entry))

    rows = []
    for queue, channel in sorted(queues, key=lambda qc: channel_sort_key(*qc)):
        th = pipe.settings.thresholds_for(queue, channel)
        target = sl_target(pipe.settings.targets, queue, channel)
        # The same record as kpi.queue-state (live state + rolling last 15 minutes).
        state = queue_state(pipe, queue, channel, live.get((queue, channel), {}), as_of,
                            rolling.get((queue, channel), WindowAgg()), now_ms)
        kind = channel_kind(channel)
        row: dict[str, Any] = {
            "queue": queue, "channel": channel, "channel_kind": kind,
            "waiting": state["waiting"],
            "longest_wait_seconds": state["longest_wait_seconds"],
            "agents_busy": state["agents_busy"],
            "open_tickets": state["open_tickets"] if kind == "ticket" else None,
            **{name: state[name] for name in AGENT_FIELDS},
            "agents_away_top": away_top(state["agents_away_by_reason"]),
            "last_15m": _window_view(rolling.get((queue, channel), WindowAgg()), th, target),
            "today": None,
            "open_sla_breaches": [],
        }
        if day_start is not None:
            row["today"] = {"window": window_name(DAY), "window_start": format_ms(day_start),
                            "window_end": format_ms(windowing.end(DAY, day_start)),
                            **_window_view(today.get((queue, channel), WindowAgg()), th, target)}
        rows.append(row)
    return {
        "as_of": format_ms(as_of) if as_of else None,
        "mode": None if not as_of else "replay" if abs(now_ms - as_of) > REPLAY_AFTER_MS else "live",
        "generated_at": format_ms(now_ms),
        "amber_band": AMBER_BAND,
        "queues": rows,
    }


def page_html() -> str:
    return resources.files("streams").joinpath("wallboard.html").read_text(encoding="utf-8")


def register(pipe: Any) -> None:
    app = pipe.app
    html = page_html()
    no_store = {"Cache-Control": "no-store"}
    token = pipe.settings.web.token
    auth = guarded(token)

    @app.page("/api/wallboard")
    @auth
    async def wallboard_api(web, request):  # type: ignore[no-untyped-def]
        return web.json(wallboard(pipe), headers=dict(no_store))

    @app.page("/wallboard")
    async def wallboard_page(web, request):  # type: ignore[no-untyped-def]
        # A TV browser can't send a header: /wallboard?token=... turns into a cookie.
        login = login_redirect(web, request, token, "/wallboard")
        if login is not None:
            return login
        return await auth(_serve_page)(web, request)

    async def _serve_page(web, request):  # type: ignore[no-untyped-def]
        return web.html(html, headers=dict(no_store))
