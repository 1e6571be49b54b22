"""The merged table's helpers (streams/merged.py), in one place: the key of an entry, the
live key, the counters summed over an entry's parts and the record published from it.
The merge stage, its index, the wallboard and /api/windows use these, not copies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ccpulse.config import Settings
from ccpulse.core.kpis import QUEUE
from schemas.records import window_record_key
from streams import merge_index, merged, wallboard
from streams.stages import merge

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z


def part(version: int, final: bool, **counts: int) -> dict[str, Any]:
    return {"version": version, "final": final, "agg": {"counts": counts, "tops": {}}, "watermark": T0,
            "waiting_at_start": 1, "waiting_at_end": 2}


def test_the_stages_use_the_one_set_of_helpers() -> None:
    assert merge.entry_key is merged.entry_key and merge.merged_record is merged.merged_record
    assert merge_index.merged_agg is merged.merged_agg and wallboard.merged_agg is merged.merged_agg


def test_entry_keys_of_queue_agent_and_live_partials() -> None:
    key = (900, T0, QUEUE, "billing", "voice")
    agent = (900, T0, "a", "agent-7", "voice")
    assert merged.entry_key({"kind": "window", "key": list(key), "end": T0 + 900_000}) == (
        window_record_key(key), {"kind": "window", "key": list(key), "end": T0 + 900_000})
    assert merged.entry_key({"kind": "window", "key": list(agent), "end": 1})[0] == "agent|" + window_record_key(agent)
    live_key, base = merged.entry_key({"kind": "live", "queue": "billing", "channel": "voice"})
    assert live_key == merged.live_key("billing", "voice") == "live|billing|voice"
    assert base == {"kind": "live", "queue": "billing", "channel": "voice"}
    assert merged.live_queue(live_key) == ("billing", "voice")


def test_the_merged_record_sums_the_parts_and_fcr_does_not_hold_final_back() -> None:
    entry = {"kind": "window", "key": [900, T0, QUEUE, "billing", "voice"], "end": T0 + 900_000,
             "parts": {"0": part(2, True, offered=3, answered=2), "1": part(5, True, offered=1),
                       "fcr-0": part(1, False, fcr_contacts=2)}}
    pipe = SimpleNamespace(settings=Settings())
    record = merged.merged_record(entry, pipe, T0)  # type: ignore[arg-type]
    assert (record["offered"], record["answered"], record["version"]) == (4, 2, 8)
    assert record["final"] is True and record["fcr_final"] is False
    assert (record["waiting_at_start"], record["waiting_at_end"]) == (2, 4)  # the KPI parts only
    assert merged.merged_agg(entry).counts["fcr_contacts"] == 2
