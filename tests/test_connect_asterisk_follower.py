"""Issue 17: the queue_log follower's file logic (like tail -F) on real files: from the end or the
start, partial lines, rotation, copytruncate, and resuming from a saved position, including a
position left in a file that was rotated while the follower was down."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccpulse.commands.connect_asterisk import (
    FollowerState, Position, QueueLogFollower, load_state, save_state,
)
from ccpulse.commands.errors import CommandError


def line(n: int) -> bytes:
    return f"17676000{n:02d}|{n}.1|support|NONE|ENTERQUEUE||555|1".encode()


def append(path: Path, *numbers: int, newline: bool = True) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line(n) + (b"\n" if newline else b"") for n in numbers))


def drain(follower: QueueLogFollower) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(10):  # a rotation takes one read to finish the old file and one to switch
        out += follower.read()
    return out


def started(path: Path, saved: Position | None = None, from_start: bool = False) -> QueueLogFollower:
    follower = QueueLogFollower(path)
    assert follower.open(saved, from_start)
    return follower


def test_by_default_only_lines_written_after_the_start(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    append(log, 1, 2)
    follower = started(log)
    assert drain(follower) == []
    append(log, 3)
    assert drain(follower) == [line(3)]


def test_from_start_reads_the_history_first(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    append(log, 1, 2)
    assert drain(started(log, from_start=True)) == [line(1), line(2)]


def test_a_line_being_written_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    log.write_bytes(b"")
    follower = started(log)
    append(log, 1, newline=False)
    assert drain(follower) == []
    with open(log, "ab") as f:
        f.write(b"\n")
    assert drain(follower) == [line(1)]


def test_rotation_finishes_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    append(log, 1)
    follower = started(log, from_start=True)
    assert drain(follower) == [line(1)]
    writer = open(log, "ab")  # Asterisk's handle: it keeps writing the old file until it reopens
    os.rename(log, tmp_path / "queue_log.1")
    writer.write(line(2) + b"\n" + line(3))  # the last line unterminated: the old file is done
    writer.close()
    append(log, 4, 5)
    assert drain(follower) == [line(2), line(3), line(4), line(5)]


def test_lines_written_to_the_old_file_after_the_new_one_is_created_are_read(tmp_path: Path) -> None:
    # logrotate renames, creates the new empty log, then tells Asterisk to reopen
    # (postrotate `logger reload`): until then Asterisk still writes the old file.
    log = tmp_path / "queue_log"
    append(log, 1)
    follower = started(log, from_start=True)
    assert drain(follower) == [line(1)]
    asterisk = open(log, "ab")
    os.rename(log, tmp_path / "queue_log.1")
    log.write_bytes(b"")
    assert drain(follower) == []
    asterisk.write(line(2) + b"\n")
    asterisk.close()
    assert drain(follower) == [line(2)]
    append(log, 3)  # Asterisk reopened: the new file from its start
    assert drain(follower) == [line(3)]


def test_renamed_and_not_yet_recreated_keeps_reading_the_old_file(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    append(log, 1)
    follower = started(log, from_start=True)
    os.rename(log, tmp_path / "queue_log.1")
    append(tmp_path / "queue_log.1", 2)
    assert drain(follower) == [line(1), line(2)]
    append(log, 3)
    assert drain(follower) == [line(3)]


@pytest.mark.parametrize("after", [[3], [3, 4, 5, 6, 7, 8]])
def test_copytruncate_reads_the_file_again_from_its_start(tmp_path: Path, after: list[int]) -> None:
    # [3]: shorter than the position; [3..8]: already longer again when next read, told by its start.
    log = tmp_path / "queue_log"
    append(log, 1, 2)
    follower = started(log, from_start=True)
    assert drain(follower) == [line(1), line(2)]
    os.truncate(log, 0)
    append(log, *after)
    assert drain(follower) == [line(n) for n in after]


def test_resume_from_a_saved_position(tmp_path: Path) -> None:
    log, state = tmp_path / "queue_log", tmp_path / "state.json"
    append(log, 1, 2)
    first = started(log, from_start=True)
    assert drain(first) == [line(1), line(2)]
    save_state(state, FollowerState(first.position, {"agents": {}}))
    first.close()
    append(log, 3)
    saved = load_state(state)
    assert saved is not None and saved.mapper == {"agents": {}}
    assert drain(started(log, saved.position)) == [line(3)]
    assert not (tmp_path / "state.json.tmp").exists()


def test_resume_in_a_file_rotated_while_the_follower_was_down(tmp_path: Path) -> None:
    log, state = tmp_path / "queue_log", tmp_path / "state.json"
    append(log, 1)
    first = started(log, from_start=True)
    assert drain(first) == [line(1)]
    save_state(state, FollowerState(first.position))
    first.close()
    append(log, 2)  # written before the rotation, never read
    os.rename(log, tmp_path / "queue_log-20260105")
    append(tmp_path / "queue_log-20260105", 3)
    append(log, 4)
    saved = load_state(state)
    assert saved is not None
    assert drain(started(log, saved.position)) == [line(2), line(3), line(4)]


def test_a_saved_file_that_is_gone_reads_the_current_one_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    append(log, 1)
    first = started(log, from_start=True)
    drain(first)
    position = first.position
    first.close()
    os.rename(log, tmp_path / "elsewhere")  # rotated and compressed: not beside the log any more
    append(log, 2)
    assert position is not None
    assert drain(started(log, position)) == [line(2)]


def test_a_new_file_on_the_same_inode_is_told_apart_by_its_start(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    append(log, 1, 2)
    first = started(log, from_start=True)
    drain(first)
    assert first.position is not None
    other = Position(first.position.dev, first.position.ino, first.position.offset,
                     first.position.head_len, "0" * 64)
    first.close()
    assert drain(started(log, other)) == [line(1), line(2)]


def test_a_log_that_does_not_exist_yet_is_read_whole_once_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    follower = QueueLogFollower(log)
    assert follower.open(None, from_start=False) is False
    assert drain(follower) == []
    append(log, 1)
    assert drain(follower) == [line(1)]


def test_an_unreadable_state_file_is_one_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(CommandError, match="--state-file .*cannot be read"):
        load_state(state)
