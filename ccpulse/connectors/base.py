"""What every connector shares: the mapped event, deterministic ids, the mapping error."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

# The EVENTS.md input families, each published to its own topic
# (Settings.topics: calls, chats, tickets, agents).
Family = Literal["call", "chat", "ticket", "agent"]
FAMILY_TOPIC_ATTR: dict[str, str] = {"call": "calls", "chat": "chats", "ticket": "tickets", "agent": "agents"}


@dataclass(frozen=True, slots=True)
class Mapped:
    """One EVENTS.md event ready to publish: its family (hence topic) and its JSON object."""

    family: Family
    event: dict[str, Any]

    @property
    def key(self) -> str:
        """The message key EVENTS.md asks for: the interaction, or the agent on ``agents``."""
        return str(self.event["agent_id"] if self.family == "agent" else self.event["interaction_id"])


# Dead-letter reasons of the connectors beyond the pipeline's own (schemas.events.REASONS,
# which the mappers reuse where they fit); schemas/json/dead-letter.schema.json lists both.
# The to_agent of a transfer whose platform does not say where it went: EVENTS.md's
# *.transferred needs to_queue or to_agent, and a made-up destination would be worse.
UNNAMED_DESTINATION = "unknown"
MAPPER_ERROR = "mapper_error"  # the mapper itself failed (a bug): the payload is kept for a replay
CONNECTOR_REASONS = ("bad_line", "unknown_event", "unknown_outcome", "unknown_shape", "unsupported_channel",
                     MAPPER_ERROR)


class MappingError(ValueError):
    """A payload this connector cannot turn into events: dead-lettered with ``reason``, never retried."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def event_id(source: str, *parts: object) -> str:
    """A deterministic event id from the platform's own ids, so a redelivery dedups in the pipeline.

    ``parts`` are the platform's identifiers of the happening (for example the
    contact id and the event type); the same parts always give the same id.
    """
    text = "\x1f".join(str(part) for part in parts)
    return f"{source}-{hashlib.blake2b(text.encode('utf-8'), digest_size=16).hexdigest()}"
