"""Freed heap memory given back to the system, every few seconds (issue 15).

glibc's ``free`` returns memory to the system only from the top of its heap: a single small
object still alive above a large freed region pins the whole region. A worker frees a lot
in bursts (a backlog's decoded records and the messages it produced, orjson's 4 KiB result
buffers among them), and the long-lived state it keeps meanwhile lands above them. With
100,000 interactions open, the compute worker held 597 MB, 318 MB of it free inside glibc's
heap; ``malloc_trim(0)`` brought it to 314 MB in about 10 ms (tests/measure_worker_memory.py,
bench/README.md "Memory"). Where glibc is absent (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

# A trim walks the free chunks: 5-10 ms on a 470 MB heap, which the event loop waits for
# (other threads run on: ctypes releases the GIL). Every 5 s, that is at most 0.2% of a core.
RELEASE_SECONDS = 5.0


def _find_trim() -> Callable[[int], int] | None:
    try:
        # The process's own symbols: glibc's when it is the C library (no ldconfig lookup).
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _find_trim()


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system; False when this libc cannot."""
    if _trim is None:
        return False
    _trim(0)
    return True


def register(app: Any) -> None:
    """Release free memory every ``RELEASE_SECONDS`` in this worker (every role)."""
    if _trim is None:
        log.debug("no glibc malloc_trim here: freed heap memory is given back only by free()")
        return

    @app.timer(RELEASE_SECONDS, name="release-memory")
    async def release() -> None:
        release_free_memory()
