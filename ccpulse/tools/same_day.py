"""``ccpulse same-day``: the same simulated day through two versions of the worker gives the same KPIs.

One run starts its own local Kafka broker (free port, temporary state), makes
one fixed-seed simulated day (voice, chat and tickets; ``--short``: its first
hour) and runs one ``ccpulse worker --role all`` of each source tree, one after
the other, each with its own app id, its own copy of the day on its own input
topics, its own output topics and store (the bench's ``BenchApp``/``WorkerProc``,
so ``--old`` works like the bench's ``--worker-pythonpath``: the current venv's
Python with ``PYTHONPATH`` at the tree).

Before the day is published, each worker reads one warm-up contact per input
partition (calls, chats, tickets x partitions; a sentinel contact of queue
``chaos-sentinel``, keyed by an interaction id that the producer's partitioner
sends to that partition, two days of event time before the day) and the tool
waits until its ``kpi.windows`` counts every one of them (``offered`` of the
sentinel's 1-minute windows). So every input partition has reported an event
time before the first event of the day is read: a worker that lets a partition
which has not reported yet not hold event time back (the old worker's start-up
gap, fixed in 2a488bd/e1c68a8) cannot count events of the day's first backlog
late, and the comparison shows what the code changes, not a start-up race. The
warm-up windows and contacts close with the day's first events and stay out of
the comparison like the closing sentinels.

Once a worker has read the day, one sentinel contact per input partition, two
days of event time later (queue ``chaos-sentinel``, as ``ccpulse chaos`` does,
excluded from the comparison), closes every window, FCR decision and open
interaction by event time alone; idle-close, a wall-clock rule, is set out of
reach so it cannot make the runs differ; so is a quiet source's idle rule
(``source_idle_seconds``), else a partition quiet since its warm-up would not hold event
time back when the day arrives. When every window is final on its
``kpi.windows``, its consumer group has nothing left to read and nothing changed
for a few seconds, the worker is stopped. Windows ending less than a lateness margin
(10 min) before the closing sentinels are not the day's: they exist only because the
sentinels moved event time there (a worker may publish every queue's minutes up to
event time), can never be final, and are neither waited for nor compared. Then the newest version per key of
both ``kpi.windows`` (and ``kpi.agents``) is compared field by field, ignoring
``version`` and ``published_at``. Exit 0 when identical, 1 otherwise.

Before a worker is stopped, its ``ccpulse_late_events_total`` (/metrics, both
versions) is read; both are printed, and a verdict with late events on either
side says ``NOT CLEAN``: a late event is counted in no window, so that side's
KPIs depend on the order it read its partitions in, not on the day alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from aiokafka.partitioner import DefaultPartitioner

from ccpulse.tools.chaos_checks import IGNORED_FIELDS, _norm, ends_by, to_ms

# The day simulated: a Monday from midnight UTC, so the day window is whole.
DAY_START = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.utc)
SEED = 15
INPUT_PREFIX = "day."
# Past the day window (1 d), the FCR horizon (1 d) and the interaction horizon (1 d)
# of the last event, plus the lateness: every window, decision and open contact closes.
# The lateness (120 s by default) with room to spare.
LATENESS_MARGIN_MS = 600 * 1000
SENTINEL_GAP_MS = 2 * 86400 * 1000 + LATENESS_MARGIN_MS
# The warm-up contacts' event time: their windows, FCR decisions and contacts all close
# with the day's first events, and no event of the day is before them.
WARM_UP_MS = int(DAY_START.timestamp() * 1000) - SENTINEL_GAP_MS
WARM_UP_ID = "same-day-warm-up"
# Event time advances by events only: the two workers' wall clocks never matter. A source
# quiet for source_idle_seconds stops holding event time back: every partition is quiet while
# the warm-up is counted, and the old worker then counted 403 events of the day late.
WORKER_WINDOWS = "\n[windows]\nidle_close_seconds = 864000\nsource_idle_seconds = 864000\n"
STABLE_SECONDS = 5.0


@dataclass(frozen=True)
class DayPlan:
    """How much of the day is simulated, and how long the workers may take."""

    seconds: float
    timeout: float  # from the workers' start until every window is final


FULL = DayPlan(seconds=86400.0, timeout=1800.0)  # about 90,000 events
SHORT = DayPlan(seconds=3600.0, timeout=600.0)  # about 3,400 events


def day_events(plan: DayPlan, seed: int = SEED) -> list[tuple[str, dict[str, Any]]]:
    """(family, event) of the simulated day: three voice queues, the chat desk and tickets."""
    from ccpulse.commands.simulate import QueueModel, SimulationConfig
    from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events

    # Few agents per queue: calls wait, some abandon, so service level and waits vary by window.
    voice = SimulationConfig(rate=0.2, seed=seed, start=DAY_START,
                             queues=tuple(QueueModel(name, agents=4) for name in ("billing", "support", "sales")),
                             transfer_probability=0.05, repeat_probability=0.2, rating_probability=0.2)
    chat = ChatConfig(rate=0.05, seed=seed, start=DAY_START)
    ticket = TicketConfig(rate=0.02, seed=seed, start=DAY_START)
    return list(generate_mixed_events(voice, chat, ticket, plan.seconds))


# ---------------------------------------------------------------- the comparison


@dataclass
class Difference:
    key: str
    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {self.field}: old {self.old!r} != new {self.new!r}"


@dataclass
class KeyedDiff:
    """Two compacted topics (newest record per key) compared key by key."""

    topic: str
    keys: int = 0  # keys in either
    identical: int = 0
    differing: int = 0  # keys in both with at least one differing field
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)  # every differing field
    # Fields only the new version publishes (a KPI added since), each 0 or null wherever
    # the old version had no such field: what a stream without those events must give.
    added: set[str] = field(default_factory=set)
    # Of differing / only_new: keys whose every difference is in a figure the old version never
    # published (a KPI added since) -- what the new code adds, not a change of an old figure.
    added_only_differing: int = 0
    added_only_new: int = 0
    old_fields: set[str] = field(default_factory=set)  # every field the old version published

    @property
    def same(self) -> bool:
        return not (self.differing or self.only_old or self.only_new)

    def counts(self) -> str:
        added = f" (fields added, 0 or null throughout: {', '.join(sorted(self.added))})" if self.added else ""
        differing = (f" ({self.added_only_differing:,} only in figures added since)"
                     if self.added_only_differing else "")
        only_new = f" ({self.added_only_new:,} only with figures added since)" if self.added_only_new else ""
        return (f"{self.topic}: {self.keys:,} keys, {self.identical:,} identical, {self.differing:,} differing"
                f"{differing}, {len(self.only_old):,} only in old, {len(self.only_new):,} only in new{only_new}"
                f"{added}")

    def first(self, limit: int = 10) -> list[str]:
        # A changed figure of the old version first: figures added since would hide it.
        ordered = sorted(self.differences, key=lambda d: d.field not in self.old_fields)
        lines = [f"  {d}" for d in ordered[:limit]]
        lines += [f"  only in old: {k}" for k in self.only_old[:limit]]
        lines += [f"  only in new: {k}" for k in self.only_new[:limit]]
        return lines


def compare_keyed(topic: str, old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]],
                  ignored: frozenset[str] = IGNORED_FIELDS) -> KeyedDiff:
    """Every field of every key, except ``ignored`` (bookkeeping: version, published_at).

    A field present on one side only differs (shown as None on the other), except a
    field the new version added whose value is 0, null or empty: the old version had no such
    figure, and nothing it would count happened. Maps and lists are compared as chaos
    compares them (sketch buckets in any order).
    """
    diff = KeyedDiff(topic)
    old_fields = diff.old_fields = {name for record in old.values() for name in record}
    # A field with one value in every old record is a setting published with each (the
    # service-level threshold), not a figure a key without events would have as 0.
    settings = _constant_fields(old)
    for key in sorted(set(old) | set(new)):
        diff.keys += 1
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            (diff.only_new if a is None else diff.only_old).append(key)
            if a is None and old and not any(_figure(b.get(name)) and settings.get(name, ()) != b.get(name)
                                             for name in old_fields - ignored):
                diff.added_only_new += 1
            continue
        added = {name for name in set(b) - set(a) if b[name] in (0, None, {})}  # {}: a map of nothing
        diff.added |= added
        fields = [name for name in sorted(set(a) | set(b))
                  if name not in ignored and name not in added and _norm(a.get(name)) != _norm(b.get(name))]
        if fields:
            diff.differing += 1
            diff.added_only_differing += all(name not in old_fields for name in fields)
            diff.differences.extend(Difference(key, name, a.get(name), b.get(name)) for name in fields)
        else:
            diff.identical += 1
    return diff


def _constant_fields(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    varying: set[str] = set()
    for record in records.values():
        for name, value in record.items():
            if name in varying:
                continue
            if name in values and values[name] != value:
                varying.add(name)
                del values[name]
            else:
                values[name] = value
    return values


def _figure(value: Any) -> bool:
    """A value that counts something: a number not 0, a map or list with one (not a name or flag)."""
    if isinstance(value, bool) or isinstance(value, str) or value is None:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, Mapping):
        return any(_figure(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_figure(v) for v in value)
    return True


def verdict(diffs: list[KeyedDiff], late: Mapping[str, int] | None = None) -> str:
    """``late``: late events per side; any at all makes the comparison not clean."""
    head = "IDENTICAL" if all(d.same for d in diffs) else "DIFFERENT"
    counts = "; ".join(d.counts() for d in diffs)
    if late is None:
        return f"{head}: {counts}"
    lates = "late events: " + ", ".join(f"{side} {n:,}" for side, n in late.items())
    if any(late.values()):
        return f"{head}, NOT CLEAN ({lates}): {counts}"
    return f"{head}: {counts}; {lates}"


def warm_up_key(family: str, partition: int, partitions: int) -> str:
    """An interaction id the producer's default partitioner (murmur2 of the key, as for the
    day's events, keyed by interaction) sends to ``partition`` of ``partitions``."""
    every = list(range(partitions))
    for n in range(100_000):
        iid = f"{WARM_UP_ID}-{family}-{partition}-{n}"
        if DefaultPartitioner()(iid.encode(), every, every) == partition:
            return iid
    raise RuntimeError(f"no warm-up key found for {family} partition {partition} of {partitions}")


def warm_up_records(partitions: Mapping[str, int], at_ms: int = WARM_UP_MS
                    ) -> list[tuple[str, int, str, dict[str, Any]]]:
    """(family, partition, key, event): one sentinel contact (two events) per input partition."""
    from ccpulse.tools.chaos import sentinel_events

    out = []
    for family, count in partitions.items():
        for partition in range(count):
            key = warm_up_key(family, partition, count)
            out += [(family, partition, key, ev) for ev in sentinel_events(family, partition, at_ms, key)]
    return out


def warm_up_counted(records: Mapping[str, Mapping[str, Any]]) -> int:
    """Sentinel contacts counted in ``kpi.windows`` (their 1-minute windows' ``offered``)."""
    from ccpulse.tools.chaos import SENTINEL_QUEUE

    return sum(int(v.get("offered") or 0) for v in records.values()
               if v.get("queue") == SENTINEL_QUEUE and v.get("window") == "1m")


def without_sentinel(records: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from ccpulse.tools.chaos import SENTINEL_QUEUE

    return {k: v for k, v in records.items() if v.get("queue") != SENTINEL_QUEUE}


def within_reach(records: Mapping[str, dict[str, Any]], sentinel_ms: int) -> dict[str, dict[str, Any]]:
    """Records of windows the closing sentinel closes: ending a lateness margin before it.

    Later windows exist only because the sentinel moved event time there (the agent stage
    publishes every queue's minutes up to event time) and can never be final."""
    return {k: v for k, v in records.items() if ends_by(v, sentinel_ms - LATENESS_MARGIN_MS)}


def open_windows(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Keys not final yet: the window itself, or its FCR part (null: no FCR part)."""
    return [k for k, v in records.items() if not v.get("final") or v.get("fcr_final") is False]


# ---------------------------------------------------------------- the run


@dataclass
class Side:
    """One version of the worker: its app (config, topics, store) and its process."""

    label: str
    app: Any  # bench_worker.BenchApp
    worker: Any = None  # bench_worker.WorkerProc
    group: str = ""
    topics: list[str] = field(default_factory=list)  # what its consumer group must have read
    late: int = 0  # its ccpulse_late_events_total when every window was final
    sentinel_ms: int = 0  # event time of the closing sentinels

    def windows(self, bootstrap: str) -> dict[str, dict[str, Any]]:
        from ccpulse.tools.chaos_worker import latest_by_key

        return self._of_the_day(latest_by_key(bootstrap, self.app.kpi_windows_topic))

    def agents(self, bootstrap: str) -> dict[str, dict[str, Any]]:
        from ccpulse.tools.chaos_worker import latest_by_key

        return self._of_the_day(latest_by_key(bootstrap, f"{self.app.name}.kpi.agents"))

    def _of_the_day(self, records: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return within_reach(without_sentinel(records), self.sentinel_ms)

    def lag(self, bootstrap: str, only: set[str] | None = None) -> int:
        from ccpulse.tools.chaos_worker import group_lag

        topics = [t for t in self.topics if only is None or t in only]
        return group_lag(bootstrap, self.group, topics).total

    def check_alive(self) -> None:
        if not self.worker.alive():
            raise RuntimeError(f"the {self.label} worker exited: {self.worker.log_tail()}")


def make_side(label: str, root: Path, bootstrap: str, code: Path) -> Side:
    from ccpulse.tools.bench_worker import BenchApp

    # Its own copy of the input too: each side runs alone, from the same offsets, with the
    # same sentinels after the same day, so the two runs cannot disturb each other.
    app = BenchApp(label, root, bootstrap, code, f"{label}-{INPUT_PREFIX}")
    path = app.write_config()
    path.write_text(path.read_text(encoding="utf-8") + WORKER_WINDOWS, encoding="utf-8")
    return Side(label, app)


def run_day(old_code: Path, new_code: Path, plan: DayPlan, seed: int, root: Path, bootstrap: str,
            say: Callable[[str], None], late: dict[str, int]) -> list[KeyedDiff]:
    """Publish the day, run each worker alone until every window is final, compare their outputs.

    ``late`` gets each side's late events."""
    from ccpulse.commands.simulate import encode

    day = day_events(plan, seed)
    last_ms = max(to_ms(ev["occurred_at"]) for _, ev in day)
    events = [(family, encode(ev)) for family, ev in day]
    del day
    say(f"the simulated day: {len(events):,} events (seed {seed})")
    sides = [make_side("old", root, bootstrap, old_code), make_side("new", root, bootstrap, new_code)]
    # One after the other: on 2 cores, two workers side by side starve each other (and the
    # old worker's stages stalled on a backlog that way).
    for side in sides:
        run_side(side, events, last_ms, plan, bootstrap, say)
    old, new = sides
    late.update({side.label: side.late for side in sides})
    return [compare_keyed("kpi.windows", old.windows(bootstrap), new.windows(bootstrap)),
            compare_keyed("kpi.agents", old.agents(bootstrap), new.agents(bootstrap))]


def run_side(side: Side, events: list[tuple[str, bytes]], last_ms: int, plan: DayPlan, bootstrap: str,
             say: Callable[[str], None]) -> None:
    """Publish the day to this side's input, run its worker until every window is final, stop it."""
    from ccpulse.tools import bench_kafka
    from ccpulse.tools.bench import ensure_topics
    from ccpulse.tools.bench_worker import WorkerProc
    from ccpulse.tools.chaos import _publish_sentinels
    from ccpulse.tools.chaos_worker import latest_by_key

    asyncio.run(ensure_topics(side.app))
    role = side.app.topology()["all"]
    side.group = role.group
    side.topics = [t for t in role.topics if t not in side.app.steady_topics]
    inputs = side.app.input_topics
    warm_ups = asyncio.run(_publish_warm_up(bootstrap, inputs))
    say(f"{side.label} worker ({side.app.code}) ...")
    side.worker = WorkerProc(side.app, "all", 0)
    side.worker.start()
    try:
        side.worker.wait_healthy()
        started = time.monotonic()
        deadline = started + plan.timeout
        # The day goes in only once every partition's warm-up contact is counted: every input
        # partition has reported an event time before the day's first event is read.
        _wait(say, deadline, side, f"its {warm_ups} warm-up contacts are counted",
              lambda: warm_up_counted(latest_by_key(bootstrap, side.app.kpi_windows_topic)) >= warm_ups)
        sent = asyncio.run(bench_kafka.produce_all(bootstrap, bench_kafka.event_messages(events, inputs)))
        if sent != len(events):
            raise RuntimeError(f"only {sent} of {len(events)} events were acknowledged by the broker")
        say(f"  warm-up counted in {time.monotonic() - started:.0f}s; the day published")
        # The sentinels go in once the whole day is read, so no event of the day can be
        # late because a sentinel of another partition was read first.
        input_set = set(inputs.values())
        _wait(say, deadline, side, "the day's input is read", lambda: side.lag(bootstrap, input_set) == 0)
        side.sentinel_ms = last_ms + SENTINEL_GAP_MS
        asyncio.run(_publish_sentinels(bootstrap, side.app.input_prefix, side.sentinel_ms))
        say(f"  read in {time.monotonic() - started:.0f}s; sentinels published")
        state: dict[str, Any] = {}

        def settled() -> bool:
            # Every topic the group consumes (an internal one never committed counts as unread).
            if side.lag(bootstrap):
                return False
            windows = side.windows(bootstrap)
            if not windows or open_windows(windows):
                state.pop("since", None)
                return False
            snapshot = {k: v.get("version") for k, v in windows.items()}
            if snapshot != state.get("snapshot"):
                state.update(snapshot=snapshot, since=time.monotonic())
            return time.monotonic() - state.get("since", time.monotonic()) >= STABLE_SECONDS

        _wait(say, deadline, side, "every window is final", settled)
        say(f"  every window final {time.monotonic() - started:.0f}s after the worker was healthy")
        side.late = _late_events(side)
        say(f"  {side.label} worker: {side.late:,} late events")
    finally:
        side.worker.stop()


async def _publish_warm_up(bootstrap: str, inputs: Mapping[str, str]) -> int:
    """Publishes the warm-up contacts to ``inputs`` (family -> topic); returns how many."""
    from aiokafka import AIOKafkaProducer

    from ccpulse.commands.simulate import encode

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        partitions = {family: len(await producer.partitions_for(topic)) for family, topic in inputs.items()}
        records = warm_up_records(partitions)
        for family, partition, key, event in records:
            await producer.send_and_wait(inputs[family], encode(event), key=key.encode(), partition=partition)
    finally:
        await producer.stop()
    return len({(family, partition) for family, partition, _, _ in records})


def _late_events(side: Side) -> int:
    from ccpulse.tools.bench_worker import metric_sum

    status, text = side.worker.get("/metrics", timeout=30.0)
    if status != 200:
        raise RuntimeError(f"{side.label} worker: /metrics answered {status}; log: {side.worker.log_path}")
    return int(metric_sum(text, "ccpulse_late_events_total"))


def _wait(say: Callable[[str], None], deadline: float, side: Side, what: str,
          done: Callable[[], bool], poll: float = 2.0) -> None:
    noted = time.monotonic()
    while not done():
        side.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.label} worker: timed out waiting until {what}; "
                               f"log: {side.worker.log_path}")
        if time.monotonic() - noted > 30:
            say(f"  ... {side.label}: waiting until {what}")
            noted = time.monotonic()
        time.sleep(poll)


# ---------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("same-day", help="run one simulated day through an old and the current worker "
                                               "on a private local broker and compare their kpi.windows")
    p.add_argument("--old", required=True, metavar="TREE",
                   help="source tree of the old worker (e.g. a git worktree of an older commit)")
    p.add_argument("--new", default=None, metavar="TREE", help="source tree of the new worker (default: this one)")
    p.add_argument("--short", action="store_true", help="only the day's first hour (the CI run, a few minutes)")
    p.add_argument("--seed", type=int, default=SEED, help="simulation seed (default %(default)s)")
    p.add_argument("--show", type=int, default=10, help="differences shown per topic (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (worker logs, stores)")
    p.set_defaults(func=run_from_args)


def _tree(text: str, option: str) -> Path:
    from ccpulse.commands.errors import CommandError

    code = Path(text).resolve()
    if not (code / "streams" / "app.py").is_file() or not (code / "ccpulse" / "cli.py").is_file():
        raise CommandError(f"{option} {code}: not a ccpulse source tree (no streams/app.py)")
    return code


def run_from_args(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from ccpulse.commands import local_kafka
    from ccpulse.commands.errors import CommandError
    from ccpulse.probes import free_port

    old = _tree(args.old, "--old")
    new = _tree(args.new, "--new") if args.new else Path(__file__).resolve().parents[2]
    plan = SHORT if args.short else FULL

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="ccpulse-same-day-"))
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: the broker and the workers are stopped.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        say(f"old: {old}\nnew: {new}\nstarting a private Kafka broker in {root} ...")
        info = local_kafka.start(root / "kafka", free_port(), True)
        late: dict[str, int] = {}
        diffs = run_day(old, new, plan, args.seed, root, info.bootstrap, say, late)
    except (RuntimeError, OSError, KafkaError, asyncio.TimeoutError) as exc:
        raise CommandError(str(exc) or type(exc).__name__) from None
    finally:
        try:
            local_kafka.stop(root / "kafka")
        except Exception as exc:  # the broker must not hide the run's own error
            say(f"stopping the broker: {exc}")
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(verdict(diffs, late))
    for diff in diffs:
        if not diff.same:
            print(f"first differences of {diff.topic}:")
            print("\n".join(diff.first(args.show)))
    # Late events on either side: the sides may agree by chance, not because the day says so.
    return 0 if all(d.same for d in diffs) and not any(late.values()) else 1


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
