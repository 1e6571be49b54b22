"""streams.kafka_consumer.caught_up: when a partition has nothing left to read.

A fresh group on an empty topic never delivers a record, so the in-order tracker
expects no offset; aiokafka's fetch position after its offset reset decides then. The
real loop is covered by the short chaos run (an empty `agents` topic with
idle_close_seconds of a day: its windows only close if these partitions read caught up)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams.kafka_consumer import InOrderTracker, caught_up

TP = ("agents", 0)


def consumer(highwater: int | None, position: int | None, order: InOrderTracker) -> Any:
    state = None if position is None else SimpleNamespace(has_valid_position=True, position=position)
    assignment = SimpleNamespace(state_value=lambda tp: state if tp == TP else None)
    aiokafka = SimpleNamespace(_subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    return SimpleNamespace(order=order, highwater=lambda tp: highwater,
                           _thread=SimpleNamespace(_ensure_consumer=lambda: aiokafka))


def test_an_empty_partition_never_delivered_from_is_caught_up() -> None:
    order = InOrderTracker()
    assert caught_up(consumer(highwater=0, position=0, order=order), TP)
    assert not caught_up(consumer(highwater=5, position=0, order=order), TP)  # records to read
    assert not caught_up(consumer(highwater=0, position=None, order=order), TP)  # reset under way
    assert not caught_up(consumer(highwater=None, position=0, order=order), TP)  # end not known yet


def test_records_handed_out_but_not_delivered_are_not_caught_up_whatever_the_position() -> None:
    order = InOrderTracker()
    order.fetched(TP, 5)  # aiokafka moved its position past them; Faust has not delivered them
    assert not caught_up(consumer(highwater=5, position=5, order=order), TP)


def test_the_expected_offset_decides_once_known() -> None:
    order = InOrderTracker()
    with order.seeking([TP], {TP: 3}):
        pass
    assert not caught_up(consumer(highwater=5, position=5, order=order), TP)
    assert caught_up(consumer(highwater=3, position=0, order=order), TP)
