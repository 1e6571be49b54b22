"""Making the embedded ClickHouse store unwritable, for outage tests and ``ccpulse chaos``.

``chmod`` does not stop root, so the store's directories are made immutable
(``chattr +i``, ext2/3/4, XFS, btrfs): chDB can still read, but every INSERT fails
to create its part directory, exactly like a full or read-only disk. Restoring
clears the flag and the next retry succeeds; nothing in the store is damaged.

    restore = make_store_unwritable("/var/lib/ccpulse/clickhouse")
    try:
        ...  # the writer's inserts fail, /health turns 503
    finally:
        restore()
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable


class FaultInjectionUnavailable(RuntimeError):
    """This machine cannot inject the fault (the message says why)."""


def store_unwritable_unsupported(path: str | Path) -> str | None:
    """Why :func:`make_store_unwritable` cannot work for ``path`` here, or None when it can.

    Probes a scratch directory next to the store: ``chattr`` must exist, the file
    system must support the immutable flag, and the caller must hold CAP_LINUX_IMMUTABLE.
    """
    if shutil.which("chattr") is None:
        return "chattr is not installed (e2fsprogs)"
    parent = Path(path).resolve()
    while not parent.is_dir():
        parent = parent.parent
    probe = Path(tempfile.mkdtemp(prefix=".ccpulse-fault-probe-", dir=parent))
    try:
        result = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        if result.returncode != 0:
            return f"chattr +i fails on {parent}: {result.stderr.strip() or result.returncode}"
        try:
            (probe / "x").touch()
        except OSError:
            return None
        return f"an immutable directory on {parent} still accepts new files"
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        shutil.rmtree(probe, ignore_errors=True)


def make_store_unwritable(path: str | Path) -> Callable[[], None]:
    """Make the chDB store at ``path`` refuse writes; returns the (idempotent) restore function.

    Raises FaultInjectionUnavailable when the machine cannot do it. The restore
    also runs at interpreter exit, so an interrupted test never leaves a store
    that cannot be written or deleted.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise FaultInjectionUnavailable(f"{root} is not a directory (has the store been created?)")
    reason = store_unwritable_unsupported(root)
    if reason is not None:
        raise FaultInjectionUnavailable(reason)
    dirs = _store_dirs(root)
    done: list[str] = []
    restored = False

    def restore() -> None:
        nonlocal restored
        if restored:
            return
        restored = True
        atexit.unregister(restore)
        for chunk in _chunks(done):
            subprocess.run(["chattr", "-i", *chunk], capture_output=True)

    atexit.register(restore)
    for chunk in _chunks(dirs):
        result = subprocess.run(["chattr", "+i", *chunk], capture_output=True, text=True)
        done.extend(chunk)  # a partial failure may have flagged some of them
        # The live store keeps removing its tmp_insert_* directories until their parent is
        # flagged, and chattr fails on one gone in the meantime: retry one by one, and give
        # up only on a directory that still exists.
        failed = [d for d in chunk if not _flag(d)] if result.returncode != 0 else []
        if failed:
            restore()
            raise FaultInjectionUnavailable(f"chattr +i failed on {failed[0]}: {result.stderr.strip()[:200]}")
    return restore


def _store_dirs(root: Path) -> list[str]:
    """The store's real directories, root first and parents before children.

    ``os.walk`` ignores a directory that vanishes between being listed and being read
    (chDB renames and removes part directories while it runs); ``Path.rglob`` raises
    FileNotFoundError there. Symlinks are skipped: the store links data/<db>/<table>
    to store/<uuid>, and chattr refuses symlinks.
    """
    dirs = [str(root)]
    for parent, names, _files in os.walk(root):
        dirs.extend(d for d in (os.path.join(parent, n) for n in names) if not os.path.islink(d))
    return dirs


def _flag(path: str) -> bool:
    """Flag one directory immutable; True when flagged or gone."""
    result = subprocess.run(["chattr", "+i", path], capture_output=True)
    return result.returncode == 0 or not os.path.isdir(path)


def _chunks(items: list[str], size: int = 200) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
