"""The comparison of ``ccpulse same-day`` (pure: no broker)."""

from __future__ import annotations

import copy

from ccpulse.tools.same_day import SHORT, compare_keyed, day_events, open_windows, verdict, without_sentinel

KEY = "1m|2026-01-05T08:00:00.000Z|billing|voice"
OTHER = "1m|2026-01-05T08:01:00.000Z|billing|voice"


def window(**changes: object) -> dict:
    record = {"window": "1m", "window_start": "2026-01-05T08:00:00.000Z", "queue": "billing", "channel": "voice",
              "offered": 12, "answered": 10, "service_level": 0.75, "final": True, "fcr_final": True,
              "service_level_seconds": 20.0, "wait_sketch": {"3": 4, "1": 2}, "version": 7,
              "published_at": "2026-12-06T00:00:00.000Z"}
    record.update(changes)
    return record


def topic(**records: dict) -> dict[str, dict]:
    return {KEY: window(), OTHER: window(window_start="2026-01-05T08:01:00.000Z"), **records}


def test_identical_outputs_are_identical_whatever_version_and_published_at() -> None:
    old = topic()
    new = copy.deepcopy(old)
    new[KEY].update(version=99, published_at="2027-01-01T00:00:00.000Z")
    new[KEY]["wait_sketch"] = {"1": 2, "3": 4}  # bucket order is not a difference
    diff = compare_keyed("kpi.windows", old, new)
    assert diff.same and (diff.keys, diff.identical, diff.differing) == (2, 2, 0)
    assert verdict([diff]).startswith("IDENTICAL")


def test_a_changed_kpi_is_a_difference() -> None:
    diff = compare_keyed("kpi.windows", topic(), topic(**{KEY: window(answered=9)}))
    assert not diff.same and (diff.identical, diff.differing) == (1, 1)
    assert [(d.key, d.field, d.old, d.new) for d in diff.differences] == [(KEY, "answered", 10, 9)]
    assert verdict([diff]).startswith("DIFFERENT")


def test_a_missing_key_is_a_difference_on_its_side() -> None:
    old = topic()
    new = topic()
    del new[OTHER]
    new["1d|2026-01-05T00:00:00.000Z|billing|voice"] = window(window="1d")
    diff = compare_keyed("kpi.windows", old, new)
    assert not diff.same
    assert diff.only_old == [OTHER] and diff.only_new == ["1d|2026-01-05T00:00:00.000Z|billing|voice"]
    assert (diff.keys, diff.identical) == (3, 1)


def test_a_differing_final_flag_is_a_difference() -> None:
    for field in ("final", "fcr_final"):
        diff = compare_keyed("kpi.windows", topic(), topic(**{KEY: window(**{field: False})}))
        assert [d.field for d in diff.differences] == [field]


def test_a_field_on_one_side_only_is_a_difference() -> None:
    extra = window()
    extra["abandon_rate"] = 0.1
    diff = compare_keyed("kpi.windows", topic(), topic(**{KEY: extra}))
    assert [(d.field, d.old, d.new) for d in diff.differences] == [("abandon_rate", None, 0.1)]
    lost = window()
    del lost["service_level"]
    diff = compare_keyed("kpi.windows", topic(), topic(**{KEY: lost}))
    assert [(d.field, d.old, d.new) for d in diff.differences] == [("service_level", 0.75, None)]


def test_a_figure_added_since_is_no_difference_while_it_is_0_or_null() -> None:
    """The old version had no such figure: nothing it would count happened (issue 16's fields)."""
    new = {key: {**record, "flowed_out": 0, "avg_hold_seconds": None} for key, record in topic().items()}
    diff = compare_keyed("kpi.windows", topic(), new)
    assert diff.same and diff.added == {"flowed_out", "avg_hold_seconds"}
    assert "fields added, 0 or null throughout: avg_hold_seconds, flowed_out" in verdict([diff])
    new[KEY]["flowed_out"] = 1
    diff = compare_keyed("kpi.windows", topic(), new)
    assert [(d.field, d.old, d.new) for d in diff.differences] == [("flowed_out", None, 1)]


def test_the_sentinel_is_left_out_and_open_windows_found() -> None:
    records = topic(**{"1m|2026-01-07T00:00:00.000Z|chaos-sentinel|voice": window(queue="chaos-sentinel", final=False)})
    kept = without_sentinel(records)
    assert set(kept) == {KEY, OTHER}
    assert open_windows(topic(**{KEY: window(fcr_final=False)})) == [KEY]
    assert open_windows(topic(**{KEY: window(fcr_final=None)})) == []


def test_the_short_day_is_fixed_by_its_seed_and_has_every_channel() -> None:
    first, again = day_events(SHORT), day_events(SHORT)
    assert first == again and len(first) > 1000
    assert {family for family, _ in first} == {"call", "chat", "ticket"}


def test_one_warm_up_contact_per_input_partition_keyed_to_it_before_the_day() -> None:
    """Every input partition reports an event time before the day (the old worker's start-up gap)."""
    from aiokafka.partitioner import DefaultPartitioner

    from ccpulse.tools.chaos import SENTINEL_QUEUE, _ms
    from ccpulse.tools.same_day import DAY_START, warm_up_records

    partitions = {"call": 3, "chat": 2, "ticket": 1}
    records = warm_up_records(partitions)
    contacts = {(family, partition, key) for family, partition, key, _ in records}
    assert sorted((f, p) for f, p, _ in contacts) == [("call", 0), ("call", 1), ("call", 2), ("chat", 0),
                                                      ("chat", 1), ("ticket", 0)]
    for family, partition, key, event in records:
        # Keyed as the day's events are (by interaction), so the key lands on its partition too.
        every = list(range(partitions[family]))
        assert DefaultPartitioner()(key.encode(), every, every) == partition
        assert event["interaction_id"] == key and event["queue"] == SENTINEL_QUEUE
        assert _ms(event["occurred_at"]) < _ms(DAY_START.isoformat()) - 86400 * 1000
    # Neither the closing sentinels' contacts nor each other's: each contact is new.
    assert len({key for _, _, key, _ in records}) == 6 and not any("chaos-sentinel" in k for _, _, k, _ in records)
    assert len({e["event_id"] for *_, e in records}) == len(records) == 12
    windows = {f"1m|x|{SENTINEL_QUEUE}|voice": window(queue=SENTINEL_QUEUE, offered=3),
               f"1m|x|{SENTINEL_QUEUE}|chat": window(queue=SENTINEL_QUEUE, offered=2)}
    from ccpulse.tools.same_day import warm_up_counted

    assert warm_up_counted(windows) == 5
    assert without_sentinel(topic(**windows)) == topic()


def test_late_events_on_either_side_make_the_verdict_say_so() -> None:
    same = compare_keyed("kpi.windows", topic(), topic())
    clean = verdict([same], {"old": 0, "new": 0})
    assert clean.startswith("IDENTICAL: ") and "late events: old 0, new 0" in clean and "NOT CLEAN" not in clean
    dirty = verdict([same], {"old": 3, "new": 0})
    assert dirty.startswith("IDENTICAL, NOT CLEAN (late events: old 3, new 0): ")
    different = verdict([compare_keyed("kpi.windows", topic(), topic(**{KEY: window(answered=9)}))],
                        {"old": 0, "new": 2})
    assert different.startswith("DIFFERENT, NOT CLEAN (late events: old 0, new 2): ")


def test_windows_the_closing_sentinel_cannot_close_are_left_out() -> None:
    """Windows past the day that only the sentinel's event time made (the agent stage's
    time-in-state of every queue, each minute) can never be final: neither waited for nor compared."""
    from ccpulse.tools.chaos import _ms
    from ccpulse.tools.same_day import LATENESS_MARGIN_MS, within_reach

    sentinel_ms = _ms("2026-01-07T01:09:59.000Z")
    records = topic(**{"1m|2026-01-07T01:08:00.000Z|billing|voice": window(
        window_start="2026-01-07T01:08:00.000Z", window_end="2026-01-07T01:09:00.000Z", final=False),
        "1h|2026-01-07T01:00:00.000Z|billing|voice": window(
        window="1h", window_start="2026-01-07T01:00:00.000Z", window_end="2026-01-07T02:00:00.000Z", final=False),
        "1m|2026-01-06T12:00:00.000Z|billing|voice": window(window_end="2026-01-06T12:01:00.000Z")})
    kept = within_reach(records, sentinel_ms)
    assert set(kept) == set(topic()) | {"1m|2026-01-06T12:00:00.000Z|billing|voice"}
    assert open_windows(kept) == []
    edge = {"k": window(window_end="2026-01-07T00:59:59.000Z")}
    assert within_reach(edge, _ms("2026-01-07T00:59:59.000Z") + LATENESS_MARGIN_MS) == edge


def test_keys_differing_only_by_figures_added_since_are_told_apart() -> None:
    """A new figure that is not 0 still differs, but the counts say which keys differ only by
    figures the old version did not publish, and which in a figure it did (issue 16's agent seconds)."""
    new = topic(**{KEY: window(on_contact_seconds=180.0), OTHER: window(answered=9, on_contact_seconds=60.0),
                   "1m|2026-01-06T00:00:00.000Z|billing|voice": window(
                       window_start="2026-01-06T00:00:00.000Z", offered=0, answered=0, service_level=None,
                       wait_sketch={}, on_contact_seconds=60.0)})  # service_level_seconds: a setting
    diff = compare_keyed("kpi.windows", topic(), new)
    assert not diff.same and (diff.differing, len(diff.only_new)) == (2, 1)
    assert (diff.added_only_differing, diff.added_only_new) == (1, 1)
    assert "2 differing (1 only in figures added since), 0 only in old, 1 only in new (1 only with figures " \
           "added since)" in diff.counts()


def test_no_wall_clock_rule_can_move_event_time_during_a_run() -> None:
    """A source quiet for source_idle_seconds stops holding event time back: while the tool waits
    for the warm-up to be counted every partition went quiet, and the old worker then counted
    403 events of the day late (tickets read after calls). Only events may move event time."""
    import tomllib

    from ccpulse.tools.same_day import FULL, WORKER_WINDOWS

    windows = tomllib.loads(WORKER_WINDOWS)["windows"]
    for key in ("idle_close_seconds", "source_idle_seconds"):
        assert windows.get(key, 0) > FULL.timeout, key
