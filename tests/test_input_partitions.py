"""The pipeline reads calls, chats, tickets and <app>-rekey as one co-partitioned agent:
a worker refuses, in one line, to start on topics whose partition counts differ."""

from __future__ import annotations

from streams.topics import partition_mismatch


def test_equal_counts_matching_the_settings_pass() -> None:
    assert partition_mismatch({"calls": 4, "chats": 4, "tickets": 4, "app-rekey": 4}, 4) is None


def test_a_topic_with_another_count_is_named_with_what_to_do() -> None:
    problem = partition_mismatch({"calls": 4, "chats": 6, "tickets": 4}, 4)
    assert problem is not None and "\n" not in problem
    assert "chats has 6" in problem and "kafka.partitions = 4" in problem
    assert "--alter" in problem or "partitions" in problem


def test_all_equal_but_not_the_settings_count_is_refused_too() -> None:
    problem = partition_mismatch({"calls": 8, "chats": 8, "tickets": 8}, 4)
    assert problem is not None and "kafka.partitions = 8" in problem
