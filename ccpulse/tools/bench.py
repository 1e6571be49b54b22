"""``ccpulse bench``: throughput, latency, memory and scaling of the full pipeline (issue 7).

One run starts its own local Kafka broker (free port, temporary state) and
measures, with every KPI, window and sink enabled:

1. the ceiling: a plain aiokafka consumer that reads and JSON-decodes the input;
2. sustained throughput of 1, 2, 3 workers on N pre-produced simulated events
   (one worker runs ``--role all``; k > 1 run k ``compute`` workers plus one
   ``writer``, as the embedded store requires);
3. end-to-end latency of probe contacts at fixed offered loads, as seen on
   ``kpi.windows``, on ``/metrics`` and in ClickHouse;
4. peak RSS of the workers, and RSS with many interactions open on many queues;
5. the bank month (``../shared/data/anonymous-bank-1999-01.tsv``) replayed with
   ``ccpulse replay --speed max`` into a running worker: until every day is final on
   ``kpi.windows`` and in ClickHouse (ccpulse/tools/bench_replay.py);
6. the webhook receiver, ``ccpulse connect http`` with signatures on: acknowledged
   requests/s and time to 2xx, each 2xx checked against the input topic
   (ccpulse/tools/bench_connect_http.py).

It prints one table and writes it as JSON. Figures depend on the machine and
its load; the load average is recorded with each scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ccpulse.tools.bench_connect_http import HttpRun

DEFAULT_JSON = "bench/results/latest.json"
SCENARIOS = ("throughput", "latency", "memory", "replay", "connect-http")
# The workloads of the throughput and latency scenarios (--agent-mix): the contacts alone
# (the figures of issue 15), or with the agent side of the simulation on the agents topic.
PLAIN_MIX = "plain"
AGENT_MIX = "agents"


def mix_tag(mix: str) -> str:
    """What a scenario's name carries for its mix, e.g. ``throughput[agents] 1 worker``;
    nothing for the plain mix, so its rows keep the names earlier results have."""
    return "" if mix == PLAIN_MIX else f"[{mix}]"


AGENT_MIX_OPTIONS = {"only": (AGENT_MIX,), "both": (PLAIN_MIX, AGENT_MIX)}  # --agent-mix [only|both]


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``--short`` is the CI-sized plan."""

    events: int
    workers: tuple[int, ...]
    loads: tuple[int, ...]  # offered events/s for the latency runs
    latency_seconds: float
    probe_hz: float
    open_interactions: int
    open_queues: int
    publish_interval: float | None  # None: the worker's default (windows.publish_interval_seconds)
    scenarios: tuple[str, ...] = SCENARIOS
    replay_limit: int | None = None  # the bank replay's first N interactions; None: the whole month
    mixes: tuple[str, ...] = (PLAIN_MIX,)  # workloads of the throughput and latency scenarios, in turn
    http_requests: int = 30_000  # signed webhook requests sent to `ccpulse connect http`
    http_concurrency: int = 64  # clients sending them at once


FULL = Plan(events=200_000, workers=(1, 2, 3), loads=(1000, 5000), latency_seconds=30.0, probe_hz=4.0,
            open_interactions=100_000, open_queues=1000, publish_interval=None)
# The bank replay's first 2,000 calls in event time: its first three days.
SHORT = Plan(events=5_000, workers=(1, 2), loads=(200,), latency_seconds=10.0, probe_hz=4.0,
             open_interactions=5_000, open_queues=50, publish_interval=None, replay_limit=2000,
             http_requests=1_000)

# Targets of issue 7; the latency ones apply at this offered load.
TARGET_LOAD = 5000


@dataclass
class Row:
    scenario: str
    metric: str
    value: float
    unit: str
    target: str = ""  # e.g. ">= 20000"; empty: informative only
    met: bool | None = None

    def __post_init__(self) -> None:
        self.met = meets(self.value, self.target) if self.target else None


def meets(value: float, target: str) -> bool:
    op, _, bound = target.partition(" ")
    limit = float(bound)
    return value >= limit if op == ">=" else value <= limit


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# Issue 16: with agent events in the mix, throughput and latency stay within 10% of the plain mix's.
MIX_TOLERANCE = 0.10


def mix_comparison(rates: dict[tuple[str, int], float], p99s: dict[tuple[str, int, str], float],
                   target_load: int) -> list[Row]:
    """Rows "agents vs plain": each figure measured in both mixes, as a ratio. The targets
    apply where the plain figure has one (one worker; latency at ``target_load``)."""
    rows: list[Row] = []
    for (mix, n), rate in rates.items():
        plain = rates.get((PLAIN_MIX, n))
        if mix != PLAIN_MIX and plain:
            target = f">= {1 - MIX_TOLERANCE:g}" if n == 1 else ""
            rows.append(Row(f"{mix} vs plain", f"throughput {n} worker{'s' if n > 1 else ''}, ratio",
                            rate / plain, "x", target))
    for (mix, load, sink), p99 in p99s.items():
        plain = p99s.get((PLAIN_MIX, load, sink))
        if mix != PLAIN_MIX and plain:
            target = f"<= {1 + MIX_TOLERANCE:g}" if load == target_load else ""
            rows.append(Row(f"{mix} vs plain", f"latency @{load}/s {sink} p99, ratio", p99 / plain, "x", target))
    return rows


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows], "details": self.details}


def format_table(rows: list[Row]) -> str:
    header = ("scenario", "metric", "value", "unit", "target", "met?")
    lines = [header]
    for r in rows:
        value = f"{r.value:,.0f}" if abs(r.value) >= 100 else f"{r.value:.3g}"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append((r.scenario, r.metric, value, r.unit, r.target or "-", met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.rjust(w) if i == 2 else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---------------------------------------------------------------- the run


@dataclass
class Bench:
    plan: Plan
    code: Path
    root: Path
    bootstrap: str
    profile: bool
    say: Callable[[str], None]
    report: Report = field(default_factory=Report)
    workers: list[Any] = field(default_factory=list)  # every WorkerProc started, for cleanup
    memory_timeout: float = 600.0
    replay_timeout: float = 900.0
    mix: str = PLAIN_MIX  # the workload of the scenario running (Plan.mixes), in its rows' names
    rates: dict[tuple[str, int], float] = field(default_factory=dict)  # (mix, workers) -> events/s
    p99s: dict[tuple[str, int, str], float] = field(default_factory=dict)  # (mix, load, sink) -> s

    def app(self, name: str, input_prefix: str, windows: dict[str, Any] | None = None) -> Any:
        from ccpulse.tools.bench_worker import BenchApp

        if self.mix != PLAIN_MIX:  # apps and input topics of their own: the other mix's stay as they were
            name, input_prefix = f"{name}-{self.mix}", f"{self.mix}.{input_prefix}"
        app = BenchApp(name, self.root, self.bootstrap, self.code, input_prefix, self.plan.publish_interval,
                       windows=windows or {}, agent_mix=self.mix != PLAIN_MIX)
        app.write_config()
        return app

    def spawn(self, app: Any, role: str, index: int) -> Any:
        from ccpulse.tools.bench_worker import WorkerProc

        worker = WorkerProc(app, role, index)
        self.workers.append(worker)
        worker.start()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def run(self) -> Report:
        scenarios = self.plan.scenarios
        # Each scenario in every mix back to back: the pairs compared ran under the most similar load.
        if "throughput" in scenarios:
            for mix in self.plan.mixes:
                self.mix = mix
                await self.throughputs()
        if "latency" in scenarios:
            for load_rate in self.plan.loads:
                for mix in self.plan.mixes:
                    self.mix = mix
                    await self.latency(load_rate)
        self.mix = PLAIN_MIX
        self.report.rows.extend(mix_comparison(self.rates, self.p99s, TARGET_LOAD))
        if "memory" in scenarios:
            await self.memory()
        if "replay" in scenarios:
            await self.replay()
        if "connect-http" in scenarios:
            await self.connect_http()
        return self.report

    async def throughputs(self) -> None:
        from ccpulse.tools import bench_kafka

        r = self.report
        tag = mix_tag(self.mix)
        source = self.app("source", "bench.")
        await ensure_topics(source)
        self.say(f"producing {self.plan.events:,} simulated events{tag} ...")
        events = bench_kafka.simulated_events(self.plan.events, agent_mix=source.agent_mix)
        types = bench_kafka.type_counts(events)
        agent_events = sum(1 for family, _value in events if family == "agent")
        t0 = time.monotonic()
        sent = await bench_kafka.produce_all(self.bootstrap, bench_kafka.event_messages(events, source.input_topics))
        produce_s = time.monotonic() - t0
        del events
        r.details[f"produce{tag}"] = {"events": sent, "seconds": round(produce_s, 2), "types": types}
        self.say(f"  {sent:,} events in {produce_s:.1f}s ({sent / produce_s:,.0f}/s)")
        if source.agent_mix:  # every input event counts in events/s: say how many are the agents'
            r.add(f"mix{tag}", "agent events share of input", 100 * agent_events / max(sent, 1), "%")

        load = _loadavg()
        self.say("ceiling: plain aiokafka consumer, read + orjson.loads ...")
        ceiling = await bench_kafka.ceiling(self.bootstrap, list(source.input_topics.values()), sent)
        r.details[f"ceiling{tag}"] = {"events": ceiling.events, "seconds": round(ceiling.seconds, 3),
                                      "loadavg": load}
        r.add(f"ceiling{tag}", "plain consumer read+decode", ceiling.rate, "events/s")
        self.say(f"  {ceiling.rate:,.0f} events/s")

        rates: dict[int, float] = {}
        for n in self.plan.workers:
            rates[n] = self.rates[(self.mix, n)] = await self.throughput(n, sent, ceiling.rate)
        if 1 in rates:
            for n in self.plan.workers:
                if n > 1 and rates[1] > 0:
                    target = ">= 1.7" if n == 2 else ""
                    r.add(f"scaling{tag} {n} workers", f"throughput / 1 worker", rates[n] / rates[1], "x", target)

    def _lag_note(self, lag: int) -> None:
        self.say(f"  ... {lag:,} messages not yet committed by every stage")

    # ------------------------------------------------------------ throughput

    async def throughput(self, n: int, events: int, ceiling_rate: float) -> float:
        from ccpulse.tools import bench_writes
        from ccpulse.tools.bench_kafka import OffsetWatch
        from ccpulse.tools.bench_worker import Profiler, cpu_seconds

        app = self.app(f"tp{n}", "bench.")
        topology = app.topology()
        roles = ["all"] if n == 1 else ["compute"] * n + ["writer"]
        groups = [topology["all"]] if n == 1 else [topology["compute"], topology["writer"]]
        app.check_agent_stage(groups)  # the watch below waits for the agent stage's commits too
        load = _loadavg()
        self.say(f"throughput{mix_tag(self.mix)}, {n} worker(s) ({' + '.join(roles)}) on {events:,} events ...")
        started = time.monotonic()
        procs = [self.spawn(app, role, i) for i, role in enumerate(roles)]
        compute = [p for p in procs if p.role != "writer"]
        first = None
        while first is None:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"worker {p.role}-{p.index} exited: {p.log_tail()}")
                p.sample_rss()
            consumed = await asyncio.gather(*(asyncio.to_thread(p.consumed) for p in compute))
            if any(c > 0 for c in consumed):
                first = time.monotonic()
            elif time.monotonic() - started > 300:
                raise RuntimeError(f"no worker consumed anything within 300s: {procs[0].log_tail()}")
            else:
                await asyncio.sleep(0.05)
        self.say(f"  first event consumed {first - started:.1f}s after start")
        profiler = None
        if self.profile and n == 1:
            profiler = Profiler(procs[0].pid, app.dir / "profile.txt")
            if not profiler.start():
                self.say(f"  profile unavailable: {profiler.error}")
        watch = OffsetWatch(self.bootstrap, groups, steady=app.steady_topics,
                            inputs=frozenset(app.input_topics.values()))
        await watch.start()
        sampler = asyncio.create_task(_sample_rss(procs))
        cpu_before = sum(cpu_seconds(p.pid) for p in procs)
        try:
            done = await watch.wait_done(timeout=3600, progress=self._lag_note)
        finally:
            sampler.cancel()
            await watch.stop()
            if profiler is not None:
                profiler.stop()
        # CPU, not wall time, is what a before/after comparison on a shared 2-core machine
        # can trust: events/s moves 5% between two runs of one tree, CPU per event far less.
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_before
        seconds = done - first
        rate = events / seconds if seconds > 0 else 0.0
        for p in procs:
            p.sample_rss()
            p.stop()
        peak = max(p.peak_rss for p in procs) / 2**20
        scenario = f"throughput{mix_tag(self.mix)} {n} worker" + ("s" if n > 1 else "")
        writes = await bench_writes.written(self.bootstrap, app.name) if n == 1 else None
        self.report.add(scenario, "sustained events/s", rate, "events/s", ">= 20000" if n == 1 else "")
        self.report.add(scenario, "ratio to ceiling", rate / ceiling_rate, "x", ">= 0.5" if n == 1 else "")
        self.report.add(scenario, "peak RSS per worker", peak, "MB")
        self.report.add(scenario, "worker CPU per 100,000 events", cpu * 100_000 / events, "s")
        if writes is not None:
            messages, size = writes.per_event(events)
            self.report.add(scenario, "Kafka messages written per input event", messages, "msgs")
            self.report.add(scenario, "bytes written per input event (key+value)", size, "bytes")
        detail: dict[str, Any] = {
            "roles": roles, "events": events, "seconds": round(seconds, 2),
            "startup_seconds": round(first - started, 2), "loadavg_start": load, "loadavg_end": _loadavg(),
            "peak_rss_mb": {f"{p.role}-{p.index}": round(p.peak_rss / 2**20, 1) for p in procs},
            "groups": {g.group: g.topics for g in groups},
            "written": None if writes is None else writes.by_topic}
        if profiler is not None:
            detail["profile"] = self._profile_detail(profiler)
        self.report.details[scenario] = detail
        self.say(f"  {rate:,.0f} events/s over {seconds:.1f}s ({rate / ceiling_rate:.1%} of the ceiling), "
                 f"peak RSS {peak:.0f} MB, load {load}")
        return rate

    def _profile_detail(self, profiler: Any) -> dict[str, Any]:
        """The profile's top functions for the report's details (and printed)."""
        from ccpulse.tools.bench_worker import summarize_profile

        if not profiler.out.exists():
            return {"error": profiler.error or "no profile written"}
        summary = summarize_profile(profiler.out.read_text())
        self.say(format_profile(summary))
        return {"samples": summary.samples, "self": summary.self_top, "inclusive": summary.inclusive_top}

    # ------------------------------------------------------------ latency

    async def latency(self, rate: int) -> None:
        from ccpulse.tools.bench_latency import LatencyRun

        app = self.app(f"lat{rate}", f"lat{rate}.")
        await ensure_topics(app)
        topology = app.topology()
        load = _loadavg()
        self.say(f"latency{mix_tag(self.mix)} at {rate:,} events/s offered for {self.plan.latency_seconds:.0f}s ...")
        worker = self.spawn(app, "all", 0)
        await asyncio.to_thread(worker.wait_healthy)
        run = LatencyRun(self.bootstrap, app, worker, topology["all"].group, rate,
                         self.plan.latency_seconds, self.plan.probe_hz, agent_mix=app.agent_mix)
        result = await run.run()
        worker.sample_rss()
        worker.stop()
        scenario = f"latency{mix_tag(self.mix)} @{rate}/s"
        at_target = rate == TARGET_LOAD
        self.report.add(scenario, "achieved offered load", result.achieved_rate, "events/s")
        for sink, limit in (("kpi.windows", 1.0), ("/metrics", 1.0), ("ClickHouse", 2.0)):
            values, missing = result.latencies[sink], result.missing[sink]
            # Probes never seen count as the time waited for them: the figure is then a lower bound.
            note = f" (>=, {missing} of {result.probes} unseen)" if missing else ""
            self.report.add(scenario, f"{sink} p50{note}",
                            percentile(values, 50), "s")
            self.report.add(scenario, f"{sink} p99{note}", percentile(values, 99), "s",
                            f"<= {limit:g}" if at_target else "")
            self.p99s[(self.mix, rate, sink)] = percentile(values, 99)
        self.report.details[scenario] = {
            "probes": result.probes, "missing": result.missing,
            "max_seconds": {k: round(max(v), 3) if v else None for k, v in result.latencies.items()},
            "publish_interval_seconds": app.effective_publish_interval,
            "loadavg_start": load, "loadavg_end": _loadavg(),
            "peak_rss_mb": round(worker.peak_rss / 2**20, 1)}
        missing = result.missing
        self.say(f"  " + ", ".join(f"{k} p50 {percentile(v, 50):.3f}s p99 {percentile(v, 99):.3f}s"
                                    for k, v in result.latencies.items())
                 + (f"; probes never seen: {missing}" if any(missing.values()) else ""))

    # ------------------------------------------------------------ memory

    async def memory(self) -> None:
        # One process with the embedded store (the default), and the scaled-out layout,
        # where a compute worker holds the open interactions and a writer the store.
        for roles in (("all",), ("compute", "writer")):
            await self._memory(roles)

    async def _memory(self, roles: tuple[str, ...]) -> None:
        from ccpulse.tools import bench_kafka
        from ccpulse.tools.bench_kafka import OffsetWatch

        n, queues = self.plan.open_interactions, self.plan.open_queues
        split = len(roles) > 1
        app = self.app("mem-split" if split else "mem", "mems." if split else "mem.")
        await ensure_topics(app)
        topology = app.topology()
        layout = " + ".join(roles)
        self.say(f"memory ({layout}): {n:,} interactions open on {queues:,} queues ...")
        await bench_kafka.produce_all(self.bootstrap, open_contacts(n, queues, app.input_topics["call"]))
        load = _loadavg()
        procs = [self.spawn(app, role, i) for i, role in enumerate(roles)]
        groups = [topology[role] for role in roles]
        watch = OffsetWatch(self.bootstrap, groups, steady=app.steady_topics,
                            inputs=frozenset(app.input_topics.values()))
        await watch.start()
        sampler = asyncio.create_task(_sample_rss(procs))
        complete = True
        try:
            await watch.wait_done(timeout=self.memory_timeout, progress=self._lag_note)
        except RuntimeError as exc:
            # A worker too slow to apply them all still gets a figure, labelled as partial.
            complete = False
            self.say(f"  {exc}: measuring RSS as it is")
        finally:
            sampler.cancel()
            await watch.stop()
        rss = {p.role: p.sample_rss() / 2**20 for p in procs}
        open_now = await asyncio.to_thread(_waiting, procs[0])
        for p in procs:
            p.stop()
        scenario = f"memory {n // 1000}k open / {queues} queues" + (f" ({layout})" if split else "")
        # The targets: a compute worker 300 MB, the all-in-one worker (embedded store
        # included) 450 MB. A run that did not apply them all is no measurement of either.
        target = ("<= 300" if split else "<= 450") if n >= 100_000 and queues >= 1000 and complete else ""
        applied = "after all applied" if complete else f"INCOMPLETE, with {open_now:,.0f} of {n:,} applied"
        holder = procs[0]  # "all", or the compute worker: the one holding the interactions
        self.report.add(scenario, f"RSS {applied}" + (f", {holder.role} worker" if split else ""),
                        rss[holder.role], "MB", target)
        self.report.add(scenario, "peak RSS" + (f", {holder.role} worker" if split else ""),
                        holder.peak_rss / 2**20, "MB")
        if split:
            self.report.add(scenario, "RSS, writer with the embedded store", rss["writer"], "MB")
        self.report.details[scenario] = {"interactions": n, "queues": queues, "roles": list(roles),
                                         "waiting_on_metrics": open_now, "complete": complete,
                                         "rss_mb": {role: round(v, 1) for role, v in rss.items()},
                                         "loadavg_start": load, "loadavg_end": _loadavg()}
        self.say(f"  RSS " + ", ".join(f"{role} {v:.0f} MB" for role, v in rss.items())
                 + f" (peak {holder.peak_rss / 2**20:.0f} MB), {open_now:,.0f} contacts waiting on /metrics")


    # ------------------------------------------------------------ bank month replay

    async def replay(self) -> None:
        from ccpulse.core.windowing import Windowing
        from ccpulse.tools.bench_replay import (BANK_FILE, BANK_JANUARY_DAYS, BANK_MAPPING, BANK_TIMEZONE,
                                                TARGET_SECONDS, ReplayRun, expected_day_windows)
        from ccpulse.tools.bench_worker import Profiler, cpu_seconds

        limit = self.plan.replay_limit
        if not BANK_FILE.is_file():
            raise RuntimeError(f"the bank month is not at {BANK_FILE} (skip it: --only without replay)")
        app = self.app("bank", "bank.", windows={"timezone": BANK_TIMEZONE})
        await ensure_topics(app)
        topology = app.topology()
        from ccpulse.config import load_settings

        w = load_settings(app.config_path, env={}).windows
        wanted = await asyncio.to_thread(expected_day_windows, BANK_FILE, BANK_MAPPING, limit,
                                         Windowing(w.sizes, w.timezone, w.day_start_hour))
        days = sorted({key.split("|")[1] for key in wanted})
        if limit is None and len(days) < BANK_JANUARY_DAYS:
            raise RuntimeError(f"the bank month touches {len(days)} days, expected {BANK_JANUARY_DAYS} at least")
        what = "whole month" if limit is None else f"first {limit:,} calls"
        scenario = "replay bank month" if limit is None else f"replay bank, {what}"
        self.say(f"replay of the bank month ({what}: {len(wanted)} day windows on {len(days)} days) into one "
                 "--role all worker ...")
        load = _loadavg()
        worker = self.spawn(app, "all", 0)
        await asyncio.to_thread(worker.wait_healthy)
        profiler = None
        if self.profile:
            profiler = Profiler(worker.pid, app.dir / "profile-replay.txt")
            if not profiler.start():
                self.say(f"  profile unavailable: {profiler.error}")
                profiler = None
        run = ReplayRun(self.bootstrap, app, worker, topology["all"].group, wanted, limit,
                        timeout=self.replay_timeout, say=self.say)
        sampler = asyncio.create_task(_sample_rss([worker]))
        cpu_before = cpu_seconds(worker.pid)
        try:
            result = await run.run()
        finally:
            sampler.cancel()
            if profiler is not None:
                profiler.stop()
        cpu = cpu_seconds(worker.pid) - cpu_before
        worker.stop()
        book = result.book
        target = f"<= {TARGET_SECONDS:g}" if limit is None else ""
        publishing = (result.last_ms - result.first_ms) / 1000
        self.report.add(scenario, "replay publishing (first to last record)", publishing, "s")
        unfinal = book.not_final()
        note = f" (>=, {len(unfinal)} not final)" if unfinal else ""
        self.report.add(scenario, f"every day final on kpi.windows{note}", result.final_seconds(), "s", target)
        unstored = len(book.final) - len(book.stored) + len(unfinal)
        note = f" (>=, {unstored} not stored)" if unstored else ""
        self.report.add(scenario, f"every day final in ClickHouse{note}", result.stored_seconds(), "s", target)
        self.report.add(scenario, "worker CPU until then", cpu, "s")
        detail: dict[str, Any] = {
            "interactions_limit": limit, "input_records": result.records, "day_windows": len(wanted),
            "days": len(days), "first_day": days[0] if days else None, "last_day": days[-1] if days else None,
            "windows_seen_not_expected": sorted(book.seen - wanted)[:20], "not_final": unfinal[:20],
            "replay_process_seconds": round(result.replay_seconds, 2),
            "replay_reported_seconds": result.replay_reported_seconds(), "replay_output": result.replay_lines,
            "timeline_seconds_consumed_final_stored": result.timeline,
            "loadavg_start": load, "loadavg_end": _loadavg(), "peak_rss_mb": round(worker.peak_rss / 2**20, 1)}
        if profiler is not None:
            detail["profile"] = self._profile_detail(profiler)
        self.report.details[scenario] = detail
        self.say(f"  published in {publishing:.1f}s; every day final on kpi.windows after "
                 f"{result.final_seconds():.1f}s, in ClickHouse after {result.stored_seconds():.1f}s "
                 f"(from the first record published), load {load}")

    # ------------------------------------------------------------ the webhook receiver

    async def connect_http(self) -> None:
        from ccpulse.tools.bench_connect_http import measure

        requests, concurrency = self.plan.http_requests, self.plan.http_concurrency
        # The receiver's first requests open its producer's connections: not the steady state.
        warmup = min(1000, max(50, requests // 10))
        self.say(f"webhook receiver: a `ccpulse connect http` process, {requests:,} signed Twilio callbacks "
                 f"from {concurrency} clients (after {warmup:,} to warm up) ...")
        load = _loadavg()
        run = await asyncio.to_thread(measure, self.bootstrap, requests, concurrency, warmup,
                                      self.root / "connect-http")
        rows = connect_http_rows(run)
        self.report.rows.extend(rows)
        self.report.details["connect-http"] = {
            "requests": run.sent, "warmup": run.warmup, "concurrency": run.concurrency,
            "seconds": round(run.seconds, 3), "answers_by_status": run.statuses,
            "stored_events": run.stored_events, "acknowledged_not_stored": run.unstored,
            "loadavg_start": load, "loadavg_end": _loadavg()}
        figures = {r.metric.split(" (")[0]: r.value for r in rows}
        self.say(f"  {figures['acknowledged and stored requests/s']:,.0f} requests/s, time to 2xx "
                 f"p50 {figures['time to 2xx p50']:.1f} ms, p99 {figures['time to 2xx p99']:.1f} ms; "
                 f"{run.ok:,} of {run.sent:,} answered 2xx, {run.unstored:,} of them not on Kafka, load {load}")


def connect_http_rows(run: HttpRun) -> list[Row]:
    """The receiver's table rows from one measured load.

    Only a 2xx whose events are on the input topic counts as acknowledged: a receiver
    answering before storing gets no rate and no latency, and its unstored row says NO.
    """
    from ccpulse.tools.bench_connect_http import TARGET_P99_MS, TARGET_REQUESTS_PER_SECOND

    ms = [s * 1000 for s in run.latencies]
    rate = len(run.latencies) / run.seconds if run.seconds > 0 else 0.0
    others = ", ".join(f"{status}: {n}" for status, n in sorted(run.statuses.items())
                       if not status.startswith("2"))
    s = "connect-http"
    return [Row(s, "acknowledged and stored requests/s", rate, "requests/s", f">= {TARGET_REQUESTS_PER_SECOND:g}"),
            Row(s, "time to 2xx p50", percentile(ms, 50), "ms"),
            Row(s, "time to 2xx p99", percentile(ms, 99), "ms", f"<= {TARGET_P99_MS:g}"),
            Row(s, "requests sent", run.sent, "requests"),
            Row(s, "answered 2xx", run.ok, "requests"),
            Row(s, "answered otherwise" + (f" ({others})" if others else ""), run.non_2xx, "requests", "<= 0"),
            Row(s, "answered 2xx, events not on Kafka", run.unstored, "requests", "<= 0")]


def open_contacts(count: int, queues: int, topic: str) -> Any:
    """``count`` call.offered events spread over ``queues`` queues and the last 10 minutes, never answered."""
    import orjson
    from schemas.events import format_ms

    start = int(time.time() * 1000) - 600_000
    step = max(1, 600_000 // max(count, 1))
    for i in range(count):
        iid = f"open-{i}"
        yield topic, iid.encode(), orjson.dumps({
            "event_id": f"{iid}-1", "type": "call.offered", "occurred_at": format_ms(start + i * step),
            "interaction_id": iid, "queue": f"q{i % queues:04d}", "schema_version": 1})


def _waiting(worker: Any) -> float:
    from ccpulse.tools.bench_worker import metric_sum

    status, text = worker.get("/metrics", timeout=30.0)
    return metric_sum(text, "ccpulse_queue_waiting") if status == 200 else 0.0


async def _sample_rss(procs: list[Any], interval: float = 0.5) -> None:
    while True:
        for p in procs:
            p.sample_rss()
        await asyncio.sleep(interval)


async def ensure_topics(app: Any) -> None:
    from ccpulse.config import load_settings
    from streams.topics import ensure_topics_async

    await ensure_topics_async(load_settings(app.config_path, env={}))


def _loadavg() -> list[float]:
    from ccpulse.tools.bench_worker import loadavg

    return loadavg()


def format_profile(summary: Any) -> str:
    lines = [f"  profile: {summary.samples} samples (py-spy, non-idle), top functions by own samples:"]
    for name, count in summary.self_top:
        lines.append(f"    {count / max(summary.samples, 1):6.1%}  {name}")
    lines.append("  ccpulse functions by inclusive samples (themselves and what they call):")
    for name, count in summary.inclusive_top:
        lines.append(f"    {count / max(summary.samples, 1):6.1%}  {name}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="benchmark throughput, latency, memory and scaling "
                                                "on a private local broker")
    bench.add_argument("--short", action="store_true", help="the small CI run (about 2-3 minutes)")
    bench.add_argument("--events", type=_positive_int, default=None,
                       help=f"events for the throughput runs (default {FULL.events:,}; --short {SHORT.events:,})")
    bench.add_argument("--workers", type=_worker_counts, default=None,
                       help="worker counts to measure, e.g. 1,2,3 (default 1,2,3; --short 1,2)")
    bench.add_argument("--loads", type=_worker_counts, default=None,
                       help="offered loads of the latency runs, events/s (default 1000,5000; --short 300)")
    bench.add_argument("--publish-interval", type=float, default=None,
                       help="override windows.publish_interval_seconds for the workers (default: theirs)")
    bench.add_argument("--only", type=_scenarios, default=None,
                       help=f"run only these scenarios, e.g. replay or latency,memory (of {','.join(SCENARIOS)})")
    bench.add_argument("--agent-mix", nargs="?", const="only", choices=tuple(AGENT_MIX_OPTIONS), default=None,
                       help="throughput and latency with agent events in the simulated mix (the demo's agent "
                            "side: presence, breaks, after-contact work, holds, flow-outs, callbacks); "
                            "'both': also without, rows [agents] beside the plain ones and their ratios")
    bench.add_argument("--http-requests", type=_positive_int, default=None,
                       help=f"signed webhook requests of the connect-http scenario "
                            f"(default {FULL.http_requests:,}; --short {SHORT.http_requests:,})")
    bench.add_argument("--json", default=DEFAULT_JSON, help="where to write the results (default %(default)s)")
    bench.add_argument("--worker-pythonpath", default=None,
                       help="run the workers from this source tree (e.g. a git worktree of another version)")
    bench.add_argument("--profile", action="store_true",
                       help="profile the single worker of the throughput run and the replay's worker with py-spy; "
                            "print the top 15")
    bench.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    bench.set_defaults(func=run_from_args)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: not a scenario "
                                         f"(one or more of {', '.join(SCENARIOS)})")
    return names


def _worker_counts(text: str) -> tuple[int, ...]:
    values = tuple(_positive_int(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one number, e.g. 1,2,3")
    return values


def plan_from_args(args: argparse.Namespace) -> Plan:
    from dataclasses import replace

    plan = SHORT if args.short else FULL
    changes: dict[str, Any] = {}
    if args.events is not None:
        changes["events"] = args.events
    if args.workers is not None:
        changes["workers"] = tuple(sorted(set(args.workers)))
    if args.loads is not None:
        changes["loads"] = args.loads
    if args.only is not None:
        changes["scenarios"] = args.only
    if args.agent_mix is not None:
        changes["mixes"] = AGENT_MIX_OPTIONS[args.agent_mix]
    if args.http_requests is not None:
        changes["http_requests"] = args.http_requests
    if args.publish_interval is not None:
        if not args.publish_interval > 0:
            raise ValueError("--publish-interval: must be a positive number of seconds")
        changes["publish_interval"] = args.publish_interval
    return replace(plan, **changes)


def run_from_args(args: argparse.Namespace) -> int:
    from ccpulse.commands.errors import CommandError

    plan = plan_from_args(args)
    here = Path(__file__).resolve().parents[2]  # the checkout holding ccpulse/tools/bench.py
    code = Path(args.worker_pythonpath).resolve() if args.worker_pythonpath else here
    if not (code / "streams" / "app.py").is_file() or not (code / "ccpulse" / "cli.py").is_file():
        raise CommandError(f"--worker-pythonpath {code}: not a ccpulse source tree (no streams/app.py)")
    from aiokafka.errors import KafkaError

    try:
        report = asyncio.run(_main(plan, code, args.profile, args.keep))
    except (RuntimeError, OSError, KafkaError, asyncio.TimeoutError) as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)) from None
    print(format_table(report.rows))
    path = Path(args.json)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2, default=_json_default) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"{path}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


async def _main(plan: Plan, code: Path, profile: bool, keep: bool) -> Report:
    from ccpulse.commands import local_kafka
    from ccpulse.probes import free_port

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # Producing right after creating a topic draws aiokafka warnings while leaders are elected.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="ccpulse-bench-"))
    kafka_state = root / "kafka"
    bench: Bench | None = None
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the broker and workers are stopped.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        say(f"starting a private Kafka broker in {root} ...")
        info = await asyncio.to_thread(local_kafka.start, kafka_state, free_port(), True)
        bench = Bench(plan, code, root, info.bootstrap, profile, say)
        bench.report.meta = {
            "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "plan": asdict(plan), "worker_code": str(code), "git": _git_describe(code),
            "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": _loadavg(),
            "short": plan == SHORT}
        await bench.run()
        bench.report.meta["loadavg_end"] = _loadavg()
        return bench.report
    finally:
        if bench is not None:
            bench.stop_all()
        try:
            local_kafka.stop(kafka_state)
        except Exception as exc:  # the broker must not hide the run's own error
            say(f"stopping the broker: {exc}")
        signal.signal(signal.SIGTERM, previous)
        if keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _git_describe(code: Path) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
