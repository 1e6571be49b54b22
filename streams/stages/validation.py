"""What the stages accept from the input, and the reasons they refuse a record with.

One place for both the stage that reads the input and any other reader that must
store exactly what it accepted (the writer role): ``decode_event`` is the contract
of EVENTS.md (``schemas.events.decode``) plus the windows' own limit.
"""

from __future__ import annotations

from ccpulse.core.timestamps import format_ms
from ccpulse.core.windowing import Windowing
from schemas.events import Event, Rejection, decode

# Input topic (its attribute in TopicSettings) -> the event family it carries.
FAMILIES = {"calls": "call", "chats": "chat", "tickets": "ticket"}

# Dead-letter reasons written by the stages (the decoder's are schemas.events.REASONS).
PROCESSING_ERROR = "processing_error"  # a record made a stage raise
TOO_LONG = "interaction_too_long"  # a step past limits.max_steps_per_interaction

_DETAIL_CHARS = 300


def decode_event(raw: bytes | None, family: str, now_ms: int, max_future_ms: int,
                 windowing: Windowing) -> Event | Rejection:
    """The event in ``raw``, or why it is refused. Never raises."""
    result = decode(raw, family, now_ms, max_future_ms)
    if isinstance(result, Rejection):
        return result
    unplaceable = windowing.placeable(result.occurred_at_ms)
    if unplaceable is not None:
        return Rejection("bad_timestamp", f"occurred_at {format_ms(result.occurred_at_ms)}: {unplaceable}")
    return result


def describe(exc: BaseException) -> str:
    """``ExceptionType: message`` on one short line, for a dead-letter detail or /health."""
    text = " ".join(str(exc).split())
    if len(text) > _DETAIL_CHARS:
        text = text[:_DETAIL_CHARS] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def processing_error(stage: str, exc: BaseException) -> Rejection:
    return Rejection(PROCESSING_ERROR, f"{stage}: {describe(exc)}")


def too_long(interaction_id: str, limit: int) -> Rejection:
    return Rejection(TOO_LONG, f"interaction {interaction_id[:64]!r} already holds {limit} steps "
                               "(limits.max_steps_per_interaction)")
