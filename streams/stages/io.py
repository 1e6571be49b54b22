"""What the record-at-a-time stages (sla, sla-windows, scorecards, the stores) read and
return, free of Faust: the shell turns each Faust event into a ``Consumed`` and writes a
stage's output through the Outbox (streams/outbox.py) before the batch is acknowledged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable



@dataclass(frozen=True, slots=True)
class Message:
    """One message to produce: ``value`` is bytes or a JSON-able dict (as Outbox.send takes)."""

    key: bytes | None
    value: Any


@dataclass(frozen=True, slots=True)
class Consumed:
    """One consumed record. ``value`` is decoded as its topic's schema says (a dict for the
    JSON topics, bytes for the raw input); ``message`` is the record as the consumer gave it,
    opaque to the stage: the shell dead-letters it when its processing fails."""

    topic: str
    partition: int
    offset: int
    value: Any
    message: Any = None

    @classmethod
    def of(cls, event: Any) -> "Consumed":
        """A Faust stream event (read by attribute: this module does not import Faust)."""
        msg = event.message
        return cls(msg.topic, msg.partition, msg.offset, event.value, msg)


@dataclass(frozen=True, slots=True)
class Failure:
    """A record whose processing raised: it alone is dead-lettered (processing_error,
    streams/guard.py), the rest of its batch is applied."""

    message: Any
    error: Exception


@dataclass(frozen=True, slots=True)
class TablePut:
    """A table entry to write (the store, then its changelog on ``partition``)."""

    partition: int
    key: str
    value: Any


@dataclass
class Sends:
    """What one batch of a stage without state produced."""

    messages: list[Message] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def each(records: Iterable[Consumed], one: Callable[[Consumed], Message | None]) -> Sends:
    """``one`` applied to every record: the messages it returns, and the records it raised on."""
    out = Sends()
    for record in records:
        try:
            message = one(record)
        except Exception as exc:  # one record's failure costs that record only (issue 14)
            out.failures.append(Failure(record.message, exc))
            continue
        if message is not None:
            out.messages.append(message)
    return out
