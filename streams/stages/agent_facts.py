"""The messages of ``<app>-agent-facts`` (docs/agents.md, "The join"): what the pipeline
says about agents, keyed by agent id, read by the agent stage (streams/stages/agents.py).

Apart from both stages: the pipeline writes them and the agent stage reads them, and the
agent stage already imports the pipeline stage (its partitioner), so the builders cannot
live in either without a cycle.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import orjson

from ccpulse.core.agents import Contact
from ccpulse.core.lifecycle import Segment
from schemas.events import FAMILY_CHANNEL
from streams.stages.io import Message

# The fields of an <app>-agent-facts message: exactly one per message.
CONTACT_FIELD, REMOVED_FIELD, PRESENCE_FIELD, CLOCK_FIELD = "contact", "removed", "presence", "clock"
# With a clock: queue -> the channels the sender has seen it on (kpi.windows keys).
CHANNELS_FIELD = "channels"
# Several contact / removal facts in one message, in the order they were made: the
# pipeline's checkpoint sends one such message per partition of <app>-agent-facts, on the
# partition each fact's agent key hashes to (``fact_batches``), instead of one message per
# fact (issue 16 perf: 44k messages per 100k events, each a producer send and a consumed
# record). Same partition, same order per agent, clocks still after the facts they cover.
FACTS_FIELD = "facts"
# A sender's clock goes out whole (every source it reports), and again, unchanged, once
# this long (wall clock ms) has passed, at its next tick (once a second): the agent stage
# takes an idle claim only as of where it read it, and one read before another sender's
# source moved forward holds until it is said again.
CLOCK_AGAIN_MS = 1000
# METRICS.md: on contact = handling an answered, not ended call or chat. A ticket's answer
# (a reply) does not hold its agent until it closes. The interaction keeps only its channel:
# these families' own channels, which a ticket cannot take (schemas/events.py rejects a
# ticket on voice or chat), so the family decides, not what a ticket's channel is called.
CONTACT_FAMILIES = ("call", "chat")
CONTACT_CHANNELS = frozenset(FAMILY_CHANNEL[family] for family in CONTACT_FAMILIES)
# The steps of those families that can change an answered segment's (agent, answered,
# ended) when they come in order. Any other step in order only opens a waiting segment,
# ends a waiting one, or changes nothing an agent is in.
ANSWER_STEPS = frozenset({"answered", "transferred", "ended"})

Answer = tuple[str, int, int | None]  # (agent, answered, ended) of an answered segment


def answer_of(seg: Segment | None) -> Answer | None:
    """What the agent stage knows of a segment: its agent's contact, if it was answered."""
    if seg is None or seg.exit != "answered" or not seg.agent or seg.left is None:
        return None
    return seg.agent, seg.left, seg.ended


def contact_fact(agent: str, interaction_id: str, segment: int, contact: Contact) -> Message:
    """The pipeline's upsert of one answered segment, keyed by its agent."""
    return Message(agent.encode(), orjson.dumps({CONTACT_FIELD: [agent, interaction_id, segment, *contact]}))


def segment_facts(interaction_id: str, channel: str, segments: Iterable[tuple[int, Segment]],
                  version: int) -> list[Message]:
    """The contact facts of the answered segments among (index, segment): what the pipeline
    sends for the segments a step changed, with the version it applied the step at (the
    agent stage keeps the highest, so sending one again changes nothing). None for a
    ticket (``CONTACT_CHANNELS``)."""
    out: list[Message] = []
    if channel not in CONTACT_CHANNELS:
        return out
    for index, seg in segments:
        answer = answer_of(seg)
        if answer is not None:
            out.append(contact_fact(answer[0], interaction_id, index,
                                    Contact(version, seg.queue, channel, answer[1], answer[2])))
    return out


def removal_fact(agent: str, interaction_id: str, segment: int, version: int, answered: int) -> Message:
    """The segment is no longer ``agent``'s (its answer moved to another agent)."""
    return Message(agent.encode(), orjson.dumps({REMOVED_FIELD: [agent, interaction_id, segment, version, answered]}))


def changed_facts(interaction_id: str, channel: str, before: dict[int, Segment], after: dict[int, Segment],
                  version: int) -> list[Message]:
    """The facts that take the agent stage from ``before`` to ``after`` (segment index ->
    segment): an upsert per answered segment that changed, a removal to the agent a
    segment is no longer answered by. None for a ticket (``CONTACT_CHANNELS``)."""
    out: list[Message] = []
    if channel not in CONTACT_CHANNELS:
        return out
    for index in sorted(before.keys() | after.keys()):
        was, now = answer_of(before.get(index)), answer_of(after.get(index))
        if was == now:
            continue
        if was is not None and (now is None or now[0] != was[0]):
            out.append(removal_fact(was[0], interaction_id, index, version, was[1]))
        if now is not None:
            out += segment_facts(interaction_id, channel, [(index, after[index])], version)
    return out


def clock_fact(report: dict[str, list], channels: dict[str, list[str]] | None = None) -> Message:
    """Sources' event time ({source: [newest, idle]}), for EVERY partition of the topic."""
    doc: dict[str, Any] = {CLOCK_FIELD: report}
    if channels:
        doc[CHANNELS_FIELD] = channels
    return Message(None, orjson.dumps(doc))


def fact_batches(facts: list[Message], partitions: int,
                 partition_of: Callable[[bytes], int]) -> list[tuple[int, bytes]]:
    """``facts`` (contact / removal facts, each keyed by its agent) grouped into one
    ``FACTS_FIELD`` message per partition of <app>-agent-facts their keys hash to
    (``partition_of``), each partition's facts in their order. The values are spliced,
    not decoded again (each is one JSON object)."""
    by_partition: dict[int, list[bytes]] = {}
    for m in facts:
        by_partition.setdefault(partition_of(m.key), []).append(m.value)
    return [(p, b'{"' + FACTS_FIELD.encode() + b'":[' + b",".join(values) + b"]}")
            for p, values in sorted(by_partition.items())]
