"""``ccpulse connect asterisk --queue-log PATH``: follow Asterisk's queue_log like ``tail -F``.

Each new line is mapped (``ccpulse.connectors.asterisk``) and published; the position
is saved only after Kafka acknowledged every event up to it, so a crash never loses a
line. The position is the file's identity (device, inode and the SHA-256 of its first
bytes, so a new file that reuses the inode is told apart) plus a byte offset, saved
atomically (write, fsync, rename) together with the mapper's small state.

- Rotation (the file renamed, a new one created): the old file is read to its end,
  then the new one from its start, once it has a line (logrotate creates it before
  Asterisk reopens, and until then Asterisk still writes the old one). After a restart, the file of the saved position is
  looked for by inode among the files of the same directory whose name starts with the
  log's (``queue_log.1``, ``queue_log-20260105``): a follower stopped in the middle of a
  rotation finishes the old file first.
- Truncation (``copytruncate``): the file is shorter than the position: read from 0.
- A repeat: killed after Kafka acknowledged a batch but before the position was saved,
  the batch is sent again on restart; its events keep their ids (deterministic, and the
  mapper state is restored with the position), so the pipeline counts them once.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from ccpulse.commands.errors import CommandError
from ccpulse.config import Settings

log = logging.getLogger("ccpulse.connect.asterisk")

HEAD_BYTES = 256  # how much of a file's start identifies it besides its inode
READ_CHUNK = 1 << 20
# A line this long is no queue_log line: it is cut here and dead-lettered, so a file
# without newlines cannot grow the follower's buffer without bound.
MAX_LINE_BYTES = 64 * 1024
POLL_SECONDS = 0.2
STATE_VERSION = 1


@dataclass
class Position:
    """Where the follower is: which file (device, inode, its first bytes) and how far into it."""

    dev: int
    ino: int
    offset: int
    head_len: int = 0
    head_sha256: str = hashlib.sha256(b"").hexdigest()


@dataclass
class FollowerState:
    """What the state file holds: the position and the mapper's state at that position."""

    position: Position | None = None
    mapper: dict[str, Any] = field(default_factory=dict)


def load_state(path: Path) -> FollowerState | None:
    """The saved state, None if there is none; a state file that cannot be read is one error line."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"version {doc.get('version')!r}, expected {STATE_VERSION}")
        position = Position(**doc["position"]) if doc.get("position") else None
        return FollowerState(position, dict(doc.get("mapper") or {}))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CommandError(f"--state-file {path}: cannot be read ({exc}); move it away to start afresh "
                           "(from the end of the log, or all of it with --from-start)") from None


def save_state(path: Path, state: FollowerState) -> None:
    """Write the state atomically: a crash leaves the old state or the new one, never half of one."""
    doc = {"version": STATE_VERSION, "position": asdict(state.position) if state.position else None,
           "mapper": state.mapper}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(doc, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def _head(f: IO[bytes], length: int) -> bytes:
    f.seek(0)
    return f.read(length)


def _same_file(f: IO[bytes], position: Position) -> bool:
    st = os.fstat(f.fileno())
    if (st.st_dev, st.st_ino) != (position.dev, position.ino) or st.st_size < position.offset:
        return False
    return hashlib.sha256(_head(f, position.head_len)).hexdigest() == position.head_sha256


class QueueLogFollower:
    """Reads complete lines from the log at ``path`` across rotation and truncation (no Kafka here).

    ``read()`` returns the next lines and leaves the follower positioned after them;
    ``position`` is where a restart must resume once those lines are safely stored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._position: Position | None = None
        self._head = b""

    @property
    def position(self) -> Position | None:
        return self._position

    def open(self, saved: Position | None, from_start: bool) -> bool:
        """Open the log where ``saved`` says (else at its start or end); False if it does not exist yet."""
        if saved is not None:
            found = self._find(saved)
            if found is not None:
                self._attach(found, saved.offset)
                return True
            if self.path.exists():
                log.warning("%s: the file of the saved position (inode %d, offset %d) is no longer there "
                            "(rotated and removed or compressed?); reading %s from its start",
                            self.path, saved.ino, saved.offset, self.path)
            from_start = True
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return False
        self._attach(f, 0 if from_start else os.fstat(f.fileno()).st_size)
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, max_bytes: int = READ_CHUNK) -> list[bytes]:
        """The next complete lines (without their newline); [] when there is nothing new yet."""
        if self._file is None or self._position is None:
            if not self.open(None, from_start=True):  # the log appeared: all of it is new
                return []
        assert self._file is not None and self._position is not None
        if not _same_file(self._file, self._position):
            # Shorter than the position, or its first bytes rewritten (truncated, then
            # written past the old position before this read): copytruncate.
            log.warning("%s was truncated (at byte %d): reading it from its start",
                        self.path, self._position.offset)
            self._attach(self._file, 0)
        lines = self._read_lines(max_bytes, final=False)
        if lines:
            return lines
        if self._rotated():
            # The old file will not grow any more: its last line, even unterminated, is complete.
            lines = self._read_lines(max_bytes, final=False) or self._read_lines(max_bytes, final=True)
            if lines:
                return lines
            new = open(self.path, "rb")
            log.info("%s was rotated: now reading the new file from its start", self.path)
            self._file.close()
            self._attach(new, 0)
            return self._read_lines(max_bytes, final=False)
        return []

    # ------------------------------------------------------------------ internals

    def _attach(self, f: IO[bytes], offset: int) -> None:
        st = os.fstat(f.fileno())
        self._file = f
        self._head = _head(f, HEAD_BYTES)
        self._position = Position(st.st_dev, st.st_ino, offset, len(self._head),
                                  hashlib.sha256(self._head).hexdigest())

    def _read_lines(self, max_bytes: int, final: bool) -> list[bytes]:
        assert self._file is not None and self._position is not None
        self._file.seek(self._position.offset)
        data = self._file.read(max_bytes)
        if not data:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            if not final and len(data) < MAX_LINE_BYTES:
                return []  # a line still being written
            end = len(data) if final else MAX_LINE_BYTES
            chunk, consumed = data[:end], end
        else:
            chunk, consumed = data[:end], end + 1
        self._advance(consumed)
        lines = chunk.split(b"\n")
        return [line for line in lines if line.strip()]

    def _advance(self, consumed: int) -> None:
        assert self._position is not None
        offset = self._position.offset + consumed
        if self._position.head_len < HEAD_BYTES and offset > self._position.head_len:
            # The file was shorter than HEAD_BYTES when opened: identify it by more of its start.
            assert self._file is not None
            self._head = _head(self._file, HEAD_BYTES)
            self._position.head_len = len(self._head)
            self._position.head_sha256 = hashlib.sha256(self._head).hexdigest()
        self._position.offset = offset

    def _rotated(self) -> bool:
        """True when the path names another file that Asterisk writes (rotation is over).

        logrotate creates the new log before Asterisk reopens it (postrotate `logger
        reload`): until the new file has a line, Asterisk may still write the old one.
        """
        assert self._position is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, the new one not created yet: keep reading the old
        return (st.st_dev, st.st_ino) != (self._position.dev, self._position.ino) and st.st_size > 0

    def _find(self, saved: Position) -> IO[bytes] | None:
        """The file of a saved position: the log itself, or a rotated copy beside it."""
        directory = self.path.parent
        candidates = [self.path]
        try:
            candidates += sorted(p for p in directory.iterdir()
                                 if p.name.startswith(self.path.name) and p != self.path)
        except FileNotFoundError:
            return None
        for candidate in candidates:
            try:
                if os.stat(candidate).st_ino != saved.ino:
                    continue
                f = open(candidate, "rb")
            except OSError:
                continue
            if _same_file(f, saved):
                if candidate != self.path:
                    log.info("%s: resuming in the rotated %s at byte %d", self.path, candidate, saved.offset)
                return f
            f.close()
        return None


async def follow(settings: Settings, queue_log: Path, state_file: Path, from_start: bool,
                 stop: asyncio.Event, poll_seconds: float = POLL_SECONDS) -> None:
    """Follow ``queue_log`` until ``stop`` is set: map, publish, then save the position."""
    from ccpulse.commands.connect_publish import ConnectorPublisher, until_stored
    from ccpulse.connectors.asterisk import QueueLogMapper
    from ccpulse.connectors.base import MappingError

    if not queue_log.parent.is_dir():
        raise CommandError(f"--queue-log {queue_log}: the directory {queue_log.parent} does not exist")
    if not state_file.parent.is_dir():
        raise CommandError(f"--state-file {state_file}: the directory {state_file.parent} does not exist")
    state = load_state(state_file)
    mapper = QueueLogMapper()
    if state is not None:
        mapper.restore(state.mapper)
        if from_start:
            log.info("--from-start ignored: %s holds a saved position (remove it to read everything again)",
                     state_file)
    follower = QueueLogFollower(queue_log)
    if follower.open(state.position if state else None, from_start):
        # Saved at once: lines written before the first batch are then read after a crash
        # even when the start was at the end of the file.
        save_state(state_file, FollowerState(follower.position, mapper.snapshot()))
    else:
        log.warning("%s does not exist yet: waiting for Asterisk to create it", queue_log)
    publisher = ConnectorPublisher(settings, "asterisk")
    await publisher.start()
    try:
        while not stop.is_set():
            lines = follower.read()
            if not lines:
                try:
                    await asyncio.wait_for(stop.wait(), poll_seconds)
                except asyncio.TimeoutError:
                    pass
                continue
            mapped, dead = [], []
            for raw in lines:
                try:
                    mapped += mapper.map_line(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    dead.append((raw, "not_utf8", "the line is not UTF-8"))
                except MappingError as exc:
                    dead.append((raw, exc.reason, exc.detail))
            await until_stored(lambda: _store(publisher, mapped, dead), stop)
            if follower.position is not None:
                save_state(state_file, FollowerState(follower.position, mapper.snapshot()))
    finally:
        follower.close()
        await publisher.stop()


async def _store(publisher: Any, mapped: list[Any], dead: list[tuple[bytes, str, str]]) -> None:
    await publisher.publish(mapped)
    for raw, reason, detail in dead:
        log.warning("queue_log line dead-lettered (%s: %s)", reason, detail)
        await publisher.dead_letter(raw, reason, detail)


def run(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """``ccpulse connect asterisk``: follow until SIGTERM/SIGINT, then save and exit 0."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="ccpulse connect asterisk: %(message)s", stream=sys.stderr)
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    s = settings()
    state_file = Path(args.state_file) if args.state_file else Path(s.state_dir) / "connect-asterisk.json"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await follow(s, Path(args.queue_log), state_file, args.from_start, stop)

    if args.state_file is None:
        Path(s.state_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(main())
    return 0


def add_parser(sources: Any, settings: Callable[[], Any]) -> None:
    """Register ``connect asterisk``."""
    p = sources.add_parser(
        "asterisk", help="follow Asterisk's queue_log (like tail -F) into the input topics",
        description="Follow Asterisk's queue_log like tail -F: across rotation and truncation, "
                    "resuming after a restart where Kafka last acknowledged.")
    p.add_argument("--queue-log", required=True, metavar="PATH",
                   help="the queue_log file (Asterisk's default: /var/log/asterisk/queue_log)")
    p.add_argument("--from-start", action="store_true",
                   help="with no saved position, read the whole file first (history); "
                        "default: from its end, like tail")
    p.add_argument("--state-file", default=None, metavar="PATH",
                   help="where the position is saved (default: <state_dir>/connect-asterisk.json)")
    p.set_defaults(func=lambda args: run(args, settings))
