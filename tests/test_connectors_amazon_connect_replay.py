"""``ccpulse replay --format connect-ctr FILE``: Amazon Connect contact records through the connector's mapper."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ccpulse.commands import replay
from tests.test_connectors_amazon_connect import fixture

CTRS = ("ctr_answered.json", "ctr_abandoned.json", "ctr_queue_transfer.json", "ctr_ivr_only.json")


def test_a_file_of_contact_records_maps_to_every_contact_s_events_in_event_time_order(tmp_path: Path) -> None:
    path = tmp_path / "ctr.jsonl"
    # Newest first: exports are rarely sorted.
    path.write_text("".join(json.dumps(fixture(n)) + "\n" for n in reversed(CTRS)))
    events, stats = replay.load(path, replay.ConnectorFormat("connect-ctr"))
    assert [(f, d["type"], d["occurred_at"]) for f, d in events] == [
        ("call", "call.offered", "2022-04-08T15:00:42.000Z"),
        ("call", "call.answered", "2022-04-08T15:00:49.000Z"),
        ("call", "call.ended", "2022-04-08T15:01:54.000Z"),
        ("call", "call.offered", "2022-04-08T15:04:30.000Z"),
        ("call", "call.offered", "2022-04-08T15:04:30.000Z"),
        ("call", "call.flowed_out", "2022-04-08T15:05:40.000Z"),  # ties keep the file's order
        ("call", "call.abandoned", "2022-04-08T15:05:40.000Z"),
    ]
    assert (stats.rows, stats.interactions, stats.events, stats.skipped) == (4, 3, 7, {"not_queued": 1})


def test_concatenated_records_as_kinesis_firehose_writes_them_read_the_same(tmp_path: Path) -> None:
    lines, glued = tmp_path / "a.jsonl", tmp_path / "b.json"
    lines.write_text("".join(json.dumps(fixture(n)) + "\n" for n in CTRS))
    glued.write_text("".join(json.dumps(fixture(n), indent=1) for n in CTRS))
    fmt = replay.ConnectorFormat("connect-ctr")
    assert replay.load(glued, fmt)[0] == replay.load(lines, fmt)[0]


def test_a_record_that_cannot_be_mapped_stops_the_replay_or_is_skipped_and_counted(tmp_path: Path) -> None:
    bad = fixture("ctr_answered.json")
    bad["Queue"]["EnqueueTimestamp"] = "noon"
    path = tmp_path / "ctr.jsonl"
    path.write_text(json.dumps(fixture("ctr_abandoned.json")) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(replay.ReplayError, match=r"record 2: bad_timestamp: Queue.EnqueueTimestamp"):
        replay.load(path, replay.ConnectorFormat("connect-ctr"))
    events, stats = replay.load(path, replay.ConnectorFormat("connect-ctr", on_error="skip"))
    assert len(events) == 2 and stats.invalid == {"bad_timestamp": 1} and stats.examples
    path.write_text(json.dumps(fixture("ctr_abandoned.json")) + "\n{not json")
    with pytest.raises(replay.ReplayError, match="record 2: not JSON"):
        replay.load(path, replay.ConnectorFormat("connect-ctr", on_error="skip"))


def test_the_command_takes_the_format_and_needs_no_mapping(tmp_path: Path) -> None:
    path = tmp_path / "ctr.json"
    path.write_text("".join(json.dumps(fixture(n)) for n in CTRS))
    proc = subprocess.run([sys.executable, "-m", "ccpulse.cli", "replay", "--format", "connect-ctr",
                           "--dry-run", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 rows -> 3 interactions, 7 events; skipped 1 (not_queued 1)" in proc.stderr, proc.stderr
