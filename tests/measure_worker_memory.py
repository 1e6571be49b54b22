"""Where a worker's RSS goes with many interactions open (a plain script, not a test).

    .venv/bin/python tests/measure_worker_memory.py                       # this tree, compute role
    .venv/bin/python tests/measure_worker_memory.py --variant new \\
        --variant old:code=/work/old-3b2013e --variant arena2:MALLOC_ARENA_MAX=2 \\
        --variant traced:PYTHONTRACEMALLOC=1 --role compute --json /tmp/mem.json

The bench's memory scenario (``ccpulse bench --only memory``: ``open_contacts``, 100,000
``call.offered`` never answered on 1,000 queues, produced once to shared input topics), then
for each ``--variant``, one after the other on the same broker: one ``ccpulse worker`` of that
variant's tree and role, its own app id, started with the memory probe
(``ccpulse/tools/memory_probe.py``). Once its consumer group has committed every input offset,
it prints the worker's RSS, then the probe's report: anonymous vs file-backed pages, glibc's
arenas (in use / free), pymalloc, RSS per mapping, object counts and sizes per type, Faust
tables, tracemalloc's top sites (variants with ``PYTHONTRACEMALLOC=N``; tracing adds its own
overhead, so read RSS from an untraced variant), and RSS after ``gc`` + ``malloc_trim(0)``.

A variant is ``NAME[:key=value,...]``: ``code=DIR`` (the source tree, default this one),
``role=all|compute`` (default ``--role``), any upper-case key is an environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccpulse.tools.bench import FULL, Bench, _waiting, ensure_topics, open_contacts  # noqa: E402
from ccpulse.tools.memory_probe import format_report  # noqa: E402


@dataclass
class Variant:
    name: str
    code: Path = ROOT
    role: str = "compute"
    env: dict[str, str] = field(default_factory=dict)


def parse_variant(text: str, role: str) -> Variant:
    name, _, rest = text.partition(":")
    v = Variant(name, role=role)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "code":
            v.code = Path(value).resolve()
        elif key == "role":
            v.role = value
        elif key.isupper():
            v.env[key] = value
        else:
            raise SystemExit(f"--variant {text}: unknown key {key!r} (code, role or an ENV_VAR)")
    return v


async def run(variants: list[Variant], n: int, queues: int, keep: bool, settle: float) -> list[dict[str, Any]]:
    from ccpulse.commands import local_kafka
    from ccpulse.probes import free_port
    from ccpulse.tools import bench_kafka
    from ccpulse.tools.bench_worker import WorkerProc

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="ccpulse-memory-"))
    results: list[dict[str, Any]] = []
    info = await asyncio.to_thread(local_kafka.start, root / "kafka", free_port(), True)
    bench = Bench(FULL, ROOT, root, info.bootstrap, False, say)
    try:
        produced = False
        for i, v in enumerate(variants):
            bench.code = v.code
            app = bench.app(f"mem{i}", "memi.")
            await ensure_topics(app)
            if not produced:
                await bench_kafka.produce_all(info.bootstrap, open_contacts(n, queues, app.input_topics["call"]))
                produced = True
            worker = WorkerProc(app, v.role, 0, probe=app.dir / "memory.json", extra_env=v.env)
            bench.workers.append(worker)
            t0 = time.monotonic()
            worker.start()
            sampler = asyncio.create_task(_sample(worker))
            try:
                # Applied: every contact waits on /metrics. (The bench also waits for the group to
                # read every internal topic, which a loaded machine can take minutes over.)
                while await asyncio.to_thread(_waiting, worker) < n:
                    if time.monotonic() - t0 > 900:
                        raise RuntimeError(f"{v.name}: not all {n:,} applied within 900 s")
                    await asyncio.sleep(1.0)
            finally:
                sampler.cancel()
            applied = time.monotonic() - t0
            await asyncio.sleep(settle)
            rss = worker.sample_rss()
            report = await asyncio.to_thread(worker.memory_report, True)
            worker.stop()
            result = {"variant": v.name, "code": str(v.code), "role": v.role, "env": v.env,
                      "seconds_to_apply": round(applied, 1), "rss_mb": round(rss / 2**20, 1),
                      "peak_rss_mb": round(worker.peak_rss / 2**20, 1), "report": report}
            results.append(result)
            print(f"\n=== {v.name} ({v.role}, {v.code}, {v.env or 'no extra env'}): RSS {result['rss_mb']:.0f} MB "
                  f"after all applied ({applied:.0f}s), peak {result['peak_rss_mb']:.0f} MB", flush=True)
            print(format_report(report), flush=True)
    finally:
        bench.stop_all()
        local_kafka.stop(root / "kafka")
        if keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


async def _sample(worker: Any) -> None:
    while True:
        if not worker.alive():
            raise RuntimeError(f"worker exited: {worker.log_tail()}")
        worker.sample_rss()
        await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME[:code=DIR,role=R,ENV=V,...]")
    parser.add_argument("--role", default="compute", choices=("compute", "all"))
    parser.add_argument("--interactions", type=int, default=FULL.open_interactions)
    parser.add_argument("--queues", type=int, default=FULL.open_queues)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after all are applied")
    parser.add_argument("--json", type=Path, help="write every report here")
    parser.add_argument("--keep", action="store_true", help="keep the broker's and workers' directory")
    args = parser.parse_args()
    variants = [parse_variant(t, args.role) for t in (args.variant or ["new"])]
    results = asyncio.run(run(variants, args.interactions, args.queues, args.keep, args.settle))
    print("\nvariant                  role      RSS MB  peak MB  apply s")
    for r in results:
        print(f"{r['variant']:<24} {r['role']:<8} {r['rss_mb']:7.0f} {r['peak_rss_mb']:8.0f} {r['seconds_to_apply']:8.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
