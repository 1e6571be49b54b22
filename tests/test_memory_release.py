"""Freed heap memory goes back to the system (streams/memory.py; bench/README.md, "Memory").

glibc's ``free`` returns memory only from the top of the heap: one small object still alive
above a large freed region pins all of it. A worker that caught up on a backlog held about
300 MB this way with 100,000 interactions open (measured by tests/measure_worker_memory.py:
compute worker 597 MB, 314 MB after ``malloc_trim(0)``). Each case runs in a fresh Python
process, so the heap is its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# 1,500 blocks of 64 KiB (under glibc's 128 KiB mmap threshold, so on the heap), each
# followed by a small block that stays alive: freeing the large ones leaves ~94 MB of holes
# that plain ``free`` cannot give back.
FRAGMENTED_HEAP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

    big, pins = [], []
    for _ in range(1500):
        big.append(bytearray(64 * 1024))
        pins.append(bytearray(2048))
    del big
    held = rss_mb()
""")


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP.format(root=str(ROOT)) + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap")
def test_release_free_memory_gives_freed_heap_back() -> None:
    held, after, released = map(float, run("""
        from streams.memory import release_free_memory
        released = release_free_memory()
        print(held, rss_mb(), int(released))
    """).split())
    assert held > 90, f"the fragmented heap should hold the freed blocks: {held:.0f} MB"
    assert held - after > 80, f"RSS {held:.0f} -> {after:.0f} MB: the freed blocks were not given back"
    assert released == 1


def test_release_free_memory_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import memory

    monkeypatch.setattr(memory, "_trim", None)
    assert memory.release_free_memory() is False
