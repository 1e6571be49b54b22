"""Where a running worker's memory goes: a probe loaded into a benchmark worker (tooling, not product).

Self-contained on purpose (the standard library only, no ccpulse import): the harness loads it
by file path into a worker of any source tree (``--worker-pythonpath``, an older commit), so it
must not depend on the tree it measures.

``WorkerProc`` starts the worker through :data:`BOOTSTRAP` when ``CCPULSE_BENCH_MEMPROBE`` names
a report path. A daemon thread then waits for ``<path>.request`` (a file, not a signal: Faust's
``mode`` worker owns SIGUSR1 and SIGUSR2) and writes a JSON report to ``<path>``:

- ``status``/``smaps_rollup``: RSS split into anonymous and file-backed pages;
- ``mappings``: RSS per mapping kind (the heap, anonymous mappings, each shared library);
- ``mallinfo2``: glibc's view: bytes in use, free inside its arenas (fragmentation), mmapped;
- ``pymalloc``: ``sys._debugmallocstats``' totals: pymalloc arenas, blocks in use, free blocks;
- ``types``: object count and ``sys.getsizeof`` bytes per type (``gc.get_objects`` plus the
  bytes/str held by containers, which gc does not track);
- ``tables``: every Faust table's name and length (when Faust is loaded);
- ``tracemalloc``: top allocation sites by line and by file, when the worker runs with
  ``PYTHONTRACEMALLOC=N`` (tracing from the first import, so nothing is missed);
- with ``"trim"`` in the request: RSS again after ``gc.collect()`` and ``malloc_trim(0)``,
  which shows what glibc keeps but does not use.
"""

from __future__ import annotations

import ctypes
import gc
import io
import json
import os
import re
import sys
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

ENV = "CCPULSE_BENCH_MEMPROBE"

# ``python -c BOOTSTRAP <path of this file> <ccpulse.cli arguments...>``: load the probe, then
# run the CLI exactly as ``python -m ccpulse.cli`` would.
BOOTSTRAP = """
import importlib.util, runpy, sys
spec = importlib.util.spec_from_file_location("_ccpulse_memory_probe", sys.argv[1])
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
probe.install()
sys.argv = ["ccpulse"] + sys.argv[2:]
runpy.run_module("ccpulse.cli", run_name="__main__", alter_sys=True)
"""


def install(path: str | None = None) -> None:
    """Start the thread that answers report requests (no-op without a path)."""
    path = path or os.environ.get(ENV)
    if not path:
        return
    threading.Thread(target=_serve, args=(path,), name="memory-probe", daemon=True).start()


# Under tracemalloc: the top sites when RSS last grew by PEAK_STEP (what a transient peak
# allocated, freed by the time a report is asked for; glibc may keep those pages).
PEAK_STEP = 32 * 1024  # kB
_at_peak: dict[str, Any] = {}


def _serve(path: str) -> None:
    request = path + ".request"
    peak_seen = 0
    while True:
        try:
            with open(request, encoding="utf-8") as f:
                options = f.read()
        except FileNotFoundError:
            rss = status().get("VmRSS", 0)
            if tracemalloc.is_tracing() and rss > peak_seen + PEAK_STEP:
                peak_seen = rss
                _at_peak.clear()
                _at_peak.update(rss_kb=rss, **traced(20))
            time.sleep(0.2)
            continue
        try:
            report = collect(trim="trim" in options)
        except Exception as exc:  # the harness waits for an answer: give it the error
            report = {"error": repr(exc)}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)
        os.unlink(request)


def collect(trim: bool = False) -> dict[str, Any]:
    """The full report of this process (see the module docstring)."""
    t0 = time.monotonic()
    gc.collect()
    out: dict[str, Any] = {"status": status(), "smaps_rollup": smaps_rollup(), "mappings": mappings(),
                           "mallinfo2": mallinfo2(), "pymalloc": pymalloc()}
    out["types"] = type_sizes()
    out["dict_shapes"] = dict_shapes()
    out["tables"] = faust_tables()
    if tracemalloc.is_tracing():
        out["tracemalloc"] = traced()
        out["tracemalloc_at_peak"] = dict(_at_peak)
    if trim:
        libc = _libc()
        gc.collect()
        if libc is not None:
            libc.malloc_trim(0)
        out["after_trim"] = {"status": status(), "smaps_rollup": smaps_rollup(), "mallinfo2": mallinfo2()}
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM in kB."""
    keys = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
    return _kb_fields("/proc/self/status", keys)


def smaps_rollup() -> dict[str, int]:
    return _kb_fields("/proc/self/smaps_rollup", ("Rss", "Pss", "Anonymous", "Private_Dirty", "Shared_Clean"))


def _kb_fields(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def mappings() -> list[tuple[str, int, int]]:
    """(mapping kind, RSS kB, anonymous kB) per kind, largest first: each file by name,
    ``[heap]``, ``[stack]``, and ``anon`` for every anonymous mapping (pymalloc arenas,
    glibc's non-main arenas and large allocations, thread stacks)."""
    rss: Counter[str] = Counter()
    anon: Counter[str] = Counter()
    name = ""
    try:
        with open("/proc/self/smaps", encoding="utf-8") as f:
            for line in f:
                if _HEADER.match(line):
                    parts = line.split(None, 5)
                    name = parts[5].strip() if len(parts) > 5 else "anon"
                    name = os.path.basename(name) if name.startswith("/") else name
                elif line.startswith("Rss:"):
                    rss[name] += int(line.split()[1])
                elif line.startswith("Anonymous:"):
                    anon[name] += int(line.split()[1])
    except OSError:
        return []
    return [(k, v, anon[k]) for k, v in rss.most_common(25)]


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def mallinfo2() -> dict[str, int]:
    """glibc: ``arena`` bytes from sbrk/arenas, ``uordblks`` in use, ``fordblks`` free in them,
    ``hblkhd`` in mmapped chunks (every arena counted, glibc >= 2.33)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _Mallinfo2
    m = libc.mallinfo2()
    return {n: int(getattr(m, n)) for n, _ in _Mallinfo2._fields_}


def pymalloc() -> dict[str, int]:
    """The totals of ``sys._debugmallocstats`` (it prints to C stderr: fd 2, redirected a moment)."""
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out: dict[str, int] = {}
    for label, key in (("# arenas allocated current", "arenas"), ("bytes in allocated blocks", "in_use"),
                       ("bytes in available blocks", "free_blocks"), ("unused pools", "unused_pools"),
                       ("bytes lost to pool headers", "pool_headers"), ("bytes lost to quantization", "quantization"),
                       ("Total", "total")):
        for line in text.splitlines():
            if line.strip().startswith(label) or label in line and "=" in line:
                digits = re.sub(r"[^0-9]", "", line.rsplit("=", 1)[-1])
                if digits:
                    out[key] = int(digits)
                break
    return out


def type_sizes(top: int = 40) -> list[tuple[str, int, int]]:
    """(type, count, bytes by ``sys.getsizeof``) of every gc object and the non-gc objects
    (str, bytes, int, float) directly referenced by them, largest first."""
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    seen: set[int] = set()
    objs = gc.get_objects()
    for obj in objs:
        _add(obj, count, size, seen)
        # get_referents copies under the GIL: the worker's loop keeps running in its thread.
        for x in gc.get_referents(obj):
            if not gc.is_tracked(x):
                _add(x, count, size, seen)
    del objs
    return [(k, count[k], v) for k, v in size.most_common(top)]


def dict_shapes(top: int = 15) -> list[tuple[str, int, int]]:
    """(the first keys of a dict, count, bytes) of the commonest dict shapes: who the dicts are."""
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    # Dicts of atomic values only are not tracked by gc: found through their holders.
    dicts = {id(d): d for o in gc.get_objects() for d in (o, *gc.get_referents(o)) if type(d) is dict}
    for obj in dicts.values():
        try:
            shape = ",".join(sorted(str(k)[:20] for k in list(obj)[:6])) or "{}"
        except RuntimeError:  # changed meanwhile by the worker's thread
            continue
        count[shape] += 1
        size[shape] += sys.getsizeof(obj)
    return [(k, count[k], size[k]) for k, _ in size.most_common(top)]


def _add(obj: Any, count: Counter[str], size: Counter[str], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    name = type(obj).__qualname__
    if isinstance(obj, bytes):
        # The size class says whether a retained bytes is over-allocated (orjson#483).
        name = "bytes " + ("<=512" if len(obj) <= 512 else "<=4k" if len(obj) <= 4096 else ">4k")
    count[name] += 1
    try:
        size[name] += sys.getsizeof(obj)
    except TypeError:
        pass


def faust_tables() -> list[tuple[str, int]]:
    mod = sys.modules.get("faust.tables.base")
    if mod is None:
        return []
    out = []
    for obj in gc.get_objects():
        if isinstance(obj, mod.Collection):
            try:
                out.append((str(obj.name), len(obj.data)))
            except Exception as exc:  # a table mid-recovery must not stop the report
                out.append((str(getattr(obj, "name", "?")), -1 if exc else 0))
    return out


def traced(top: int = 40) -> dict[str, Any]:
    snap = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    ))
    current, peak = tracemalloc.get_traced_memory()

    def rows(key: str) -> list[tuple[str, int, int]]:
        return [(f"{s.traceback[0].filename.split('site-packages/')[-1]}"
                 + (f":{s.traceback[0].lineno}" if key == "lineno" else ""), s.size, s.count)
                for s in snap.statistics(key)[:top]]

    return {"traced": current, "peak": peak, "overhead": tracemalloc.get_tracemalloc_memory(),
            "lineno": rows("lineno"), "filename": rows("filename"),
            "traceback": [(s.size, s.count, [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                                             for f in s.traceback])
                          for s in snap.statistics("traceback")[:15]]}


def format_report(report: dict[str, Any]) -> str:
    """A human-readable summary of one report (MB unless said)."""
    mb = 1 / 1024
    if "error" in report:
        return f"the probe failed: {report['error']}"
    s, r = report.get("status", {}), report.get("smaps_rollup", {})
    lines = [f"RSS {s.get('VmRSS', 0) * mb:.0f} MB: anonymous {r.get('Anonymous', 0) * mb:.0f}, "
             f"file-backed {(r.get('Rss', 0) - r.get('Anonymous', 0)) * mb:.0f}; peak {s.get('VmHWM', 0) * mb:.0f}"]
    m = report.get("mallinfo2") or {}
    if m:
        lines.append(f"glibc: arenas {m['arena'] / 2**20:.0f} MB (in use {m['uordblks'] / 2**20:.0f}, "
                     f"free in them {m['fordblks'] / 2**20:.0f}), mmapped chunks {m['hblkhd'] / 2**20:.0f}")
    p = report.get("pymalloc") or {}
    if p:
        lines.append(f"pymalloc: {p.get('arenas', 0)} arenas, in use {p.get('in_use', 0) / 2**20:.0f} MB, "
                     f"free blocks {p.get('free_blocks', 0) / 2**20:.0f} MB, total {p.get('total', 0) / 2**20:.0f} MB")
    lines.append("mappings (RSS MB, anonymous MB): " + ", ".join(
        f"{k} {v * mb:.0f}/{a * mb:.0f}" for k, v, a in report.get("mappings", [])[:10]))
    lines.append("types (count, MB by getsizeof):")
    lines += [f"  {name:<40} {n:>10,} {b / 2**20:8.1f}" for name, n, b in report.get("types", [])[:20]]
    lines.append("dict shapes (count, MB):")
    lines += [f"  {shape[:70]:<70} {n:>9,} {b / 2**20:8.1f}" for shape, n, b in report.get("dict_shapes", [])]
    if report.get("tables"):
        lines.append("tables: " + ", ".join(f"{k} {n:,}" for k, n in report["tables"]))
    t = report.get("tracemalloc")
    if t:
        lines.append(f"tracemalloc: traced {t['traced'] / 2**20:.0f} MB (peak {t['peak'] / 2**20:.0f}, "
                     f"tracing overhead {t['overhead'] / 2**20:.0f})")
        lines += [f"  {where:<70} {size / 2**20:8.1f} MB {n:>9,}" for where, size, n in t["lineno"][:25]]
        lines.append("  by file:")
        lines += [f"  {where:<70} {size / 2**20:8.1f} MB {n:>9,}" for where, size, n in t["filename"][:15]]
    t = report.get("tracemalloc_at_peak")
    if t:
        lines.append(f"tracemalloc when RSS reached {t['rss_kb'] * mb:.0f} MB: traced {t['traced'] / 2**20:.0f} MB")
        lines += [f"  {where:<70} {size / 2**20:8.1f} MB {n:>9,}" for where, size, n in t["lineno"][:20]]
    a = report.get("after_trim")
    if a:
        lines.append(f"after gc + malloc_trim(0): RSS {a['status'].get('VmRSS', 0) * mb:.0f} MB "
                     f"(anonymous {a['smaps_rollup'].get('Anonymous', 0) * mb:.0f})")
    return "\n".join(lines)
