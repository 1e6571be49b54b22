"""Writing Faust tables from anywhere (agents and timers) with an explicit partition.

Faust only lets a table be modified while a stream event is current, and writes
the changelog to that event's partition. ccpulse's keys always belong to a
known input partition, and its timers must also persist state, so it writes the
store and the changelog itself.
"""

from __future__ import annotations

from typing import Any

from faust.types import TableT


def put(table: TableT, partition: int, key: Any, value: Any) -> None:
    table.data[key] = value
    table.send_changelog(partition, key, value)


def delete(table: TableT, partition: int, key: Any) -> None:
    if key in table.data:
        del table.data[key]
    table.send_changelog(partition, key, None)
