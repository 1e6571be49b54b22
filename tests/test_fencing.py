"""Events fetched before a rebalance never reach a stage's state (streams/fencing.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.fencing import current_events


@dataclass
class FlowControl:
    active: bool = True

    def is_active(self) -> bool:
        return self.active


@dataclass
class App:
    consumer_generation_id: int
    flow_control: FlowControl = field(default_factory=FlowControl)


@dataclass
class Message:
    generation_id: int
    offset: int
    acked: bool = False


@dataclass
class Event:
    message: Message


def batch(*generations: int) -> list[Event]:
    return [Event(Message(g, offset)) for offset, g in enumerate(generations)]


def test_a_batch_of_the_current_generation_passes_whole() -> None:
    events = batch(3, 3, 3)
    assert current_events(App(3), events) is events
    assert not any(e.message.acked for e in events)


def test_events_of_an_older_generation_are_left_out_in_order() -> None:
    events = batch(2, 3, 2, 3)
    kept = current_events(App(3), events)
    assert [e.message.offset for e in kept] == [1, 3]
    # The left-out ones are withheld from the commit (their ack becomes a no-op),
    # so they are fetched again from the committed offset.
    assert [e.message.acked for e in events] == [True, False, True, False]


def test_nothing_passes_while_flow_control_is_suspended() -> None:
    # Between revocation and the new assignment the generation has not changed yet.
    events = batch(3, 3)
    assert list(current_events(App(3, FlowControl(active=False)), events)) == []
    assert all(e.message.acked for e in events)


def test_a_withheld_event_is_never_recorded_as_acknowledged_by_faust() -> None:
    from faust.types.tuples import ConsumerMessage as FaustMessage

    class Consumer:
        recorded: list[int] = []

        def ack(self, message: FaustMessage) -> bool:
            self.recorded.append(message.offset)
            return True

    def message(offset: int, generation: int) -> FaustMessage:
        m = FaustMessage("t", 0, offset, 0.0, 0, None, b"k", b"v", None, None, generation_id=generation)
        m.refcount = 1
        return m

    stale, current = Event(message(7, 2)), Event(message(8, 3))  # type: ignore[arg-type]
    current_events(App(3), [stale, current])
    consumer = Consumer()
    for event in (stale, current):  # what take_events does after the batch
        event.message.ack(consumer)
    assert consumer.recorded == [8]
