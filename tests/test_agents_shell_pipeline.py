"""The pipeline's side of the agent join (docs/agents.md, "The join"), without Kafka: what
``PipelineStage`` checkpoints for ``<app>-agent-facts`` (contact facts of answered
segments, removals, the end of an expired contact, clocks with the queue channels), read
by a real ``AgentStage`` the way the topic delivers it: the agent's time on contact is
the handle time the events say, whatever the order they came in, across a restart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ccpulse.config import Settings
from ccpulse.core.timestamps import format_ms
from schemas.events import parse_timestamp_ms
from streams.stages.agent_facts import fact_batches
from streams.stages.agents import AgentStage
from streams.stages.io import Consumed
from streams.stages.pipeline import Checkpoint, PipelineStage, key_partition
from tests.agents_support import call, stage_settings
from tests.agents_support import iid_on as support_iid_on

PARTITIONS = 2
REKEY, FACTS = "ccpulse-rekey", "ccpulse-agent-facts"
T0 = parse_timestamp_ms("2026-01-05T08:00:00Z")
NOW = T0 + 3_600_000
MIN = 60_000


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    offset: int


def settings() -> Settings:
    return stage_settings(PARTITIONS, sizes=(900,), allowed_lateness_seconds=60, interaction_horizon_seconds=3600)


def iid_on(partition: int, prefix: str = "i") -> str:
    return support_iid_on(partition, PARTITIONS, prefix)


class Facts:
    """<app>-agent-facts as the agent stage reads it: keyed facts on their key's partition,
    clocks on every partition, in the order the checkpoints wrote them."""

    def __init__(self) -> None:
        self.stage = AgentStage(settings(), FACTS, {}, {})
        self.offsets = [0] * PARTITIONS
        # No agent events at all: every partition of `agents` idle (its clock says so).
        self.read([Consumed(FACTS, p, 0, orjson.dumps({"clock": {f"agents/{q}": [-1, True]
                                                                  for q in range(PARTITIONS)}}))
                   for p in range(PARTITIONS)])

    def read(self, records: list[Consumed]) -> None:
        self.stage.on_batch(records, NOW)

    def checkpoint(self, out: Checkpoint) -> None:
        records = []
        # As the shell writes them (streams/pipeline.py): one message per partition.
        for p, value in fact_batches(out.agent_facts, PARTITIONS, lambda key: key_partition(key, PARTITIONS)):
            records.append(Consumed(FACTS, p, self._next(p), value))
        for m in out.agent_clocks:
            records += [Consumed(FACTS, p, self._next(p), m.value) for p in range(PARTITIONS)]
        self.read(records)

    def _next(self, p: int) -> int:
        self.offsets[p] += 1
        return self.offsets[p]

    def on_contact(self, agent: str, start: int = T0) -> int:
        """The agent's on-contact milliseconds in the 15-minute window from ``start``."""
        core = self.stage.parts[key_partition(agent.encode(), PARTITIONS)].core
        core.take()  # time in state accrues when read (ccpulse/core/agents.py)
        return core.windows.get((900, start, "a", agent, ""), {}).get("on_contact_ms", 0)


def run(stage: PipelineStage, facts: Facts, partition: int, records: list[Rec], until: int) -> Checkpoint:
    """Read ``records`` on calls/``partition``, then move event time to ``until`` everywhere."""
    stage.on_batch("calls", partition, records, NOW)
    out = stage.checkpoint(NOW)
    facts.checkpoint(out)
    # Every source, each pipeline partition's own event time (lifecycle/p) too, in one clock.
    clock = orjson.dumps({"clock": {f"{t}/{p}": [until, False]
                                    for t in ("calls", "chats", "tickets", "lifecycle", "agents")
                                    for p in range(PARTITIONS)}})
    facts.read([Consumed(FACTS, p, facts._next(p), clock) for p in range(PARTITIONS)])
    return out


def test_an_answered_and_ended_call_puts_its_agent_on_contact_for_its_handle_time() -> None:
    stage, facts = PipelineStage(settings(), REKEY), Facts()
    iid = iid_on(0)
    k = iid.encode()
    out = run(stage, facts, 0, [Rec(k, call(iid, 1, "offered", T0 + MIN), 0),
                                Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1),
                                Rec(k, call(iid, 3, "held", T0 + 3 * MIN), 2),
                                Rec(k, call(iid, 4, "ended", T0 + 6 * MIN), 3)], T0 + 10 * MIN)
    # One fact per step that changed the answer (answered, ended), none for the hold or offer.
    assert [orjson.loads(m.value)["contact"][6:] for m in out.agent_facts] == [
        [T0 + 2 * MIN, None], [T0 + 2 * MIN, T0 + 6 * MIN]]
    assert facts.on_contact("ann") == 4 * MIN
    # The clock tells every agent partition the queue's channels.
    assert all(part.channels == {"billing": {"voice"}} for part in facts.stage.parts.values())


def test_an_answer_moved_by_a_late_event_goes_from_one_agent_to_the_other() -> None:
    stage, facts = PipelineStage(settings(), REKEY), Facts()
    iid = iid_on(1)
    k = iid.encode()
    run(stage, facts, 1, [Rec(k, call(iid, 1, "offered", T0 + MIN), 0),
                          Rec(k, call(iid, 3, "answered", T0 + 3 * MIN, agent_id="bob"), 1),
                          Rec(k, call(iid, 4, "ended", T0 + 8 * MIN), 2)], T0 + 5 * MIN)
    assert facts.on_contact("bob") == 2 * MIN  # open window: only as far as event time
    # The earlier answer arrives late: it was ann who answered, at minute 2.
    out = run(stage, facts, 1, [Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 3)], T0 + 10 * MIN)
    assert [next(iter(orjson.loads(m.value))) for m in out.agent_facts] == ["removed", "contact"]
    assert facts.on_contact("bob") == 0
    assert facts.on_contact("ann") == 6 * MIN


def test_a_transfer_to_another_queue_ends_the_first_agents_contact() -> None:
    stage, facts = PipelineStage(settings(), REKEY), Facts()
    iid = iid_on(0)
    k = iid.encode()
    run(stage, facts, 0, [Rec(k, call(iid, 1, "offered", T0 + MIN), 0),
                          Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1),
                          Rec(k, call(iid, 3, "transferred", T0 + 4 * MIN, to_queue="sales"), 2),
                          Rec(k, call(iid, 4, "answered", T0 + 5 * MIN, agent_id="bob"), 3),
                          Rec(k, call(iid, 5, "ended", T0 + 9 * MIN), 4)], T0 + 12 * MIN)
    assert facts.on_contact("ann") == 2 * MIN
    assert facts.on_contact("bob") == 4 * MIN


def test_a_contact_that_never_ends_is_ended_when_its_interaction_expires() -> None:
    stage, facts = PipelineStage(settings(), REKEY), Facts()
    iid = iid_on(0)
    k = iid.encode()
    run(stage, facts, 0, [Rec(k, call(iid, 1, "offered", T0 + MIN), 0),
                          Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1)], T0 + 5 * MIN)
    # Event time far past the horizon, and two expiry scans.
    stage.engines[0].advance(T0 + 3 * 3_600_000)
    stage.on_tick(NOW, {})
    stage.on_tick(NOW + 3_600_000, {})
    out = stage.checkpoint(NOW)
    assert out.expired
    ended = [orjson.loads(m.value)["contact"] for m in out.agent_facts]
    horizon = settings().windows.interaction_horizon_seconds * 1000
    assert [c[7] for c in ended] == [T0 + 2 * MIN + horizon]  # when it became expirable


def test_after_a_restart_the_next_change_outranks_what_was_sent_before() -> None:
    first, facts = PipelineStage(settings(), REKEY), Facts()
    iid = iid_on(0)
    k = iid.encode()
    # Partition 0's rekey source was read far, so versions before the crash are high.
    first.on_batch(REKEY, 0, [Rec(None, orjson.dumps({"clock": {}}), 5000)], NOW)
    run(first, facts, 0, [Rec(k, call(iid, 1, "offered", T0 + MIN), 0),
                          Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1)], T0 + 3 * MIN)
    # A restart: the tables as the checkpoint left them; calls/0 read on from offset 2 first.
    second = PipelineStage(settings(), REKEY, interactions=dict(first.interactions))
    second.assign(0, first.engines[0].record, list(first.interactions.values()), NOW)
    run(second, facts, 0, [Rec(k, call(iid, 3, "ended", T0 + 6 * MIN), 2)], T0 + 10 * MIN)
    assert facts.on_contact("ann") == 4 * MIN


def test_facts_lost_in_a_crash_are_sent_again_when_the_partition_is_rebuilt() -> None:
    first, facts = PipelineStage(settings(), REKEY), Facts()
    iid, old = iid_on(0), iid_on(0, "old")
    k = iid.encode()
    first.on_batch("calls", 0, [Rec(old.encode(), call(old, 1, "offered", T0 - 3_600_000), 0),
                                Rec(old.encode(), call(old, 2, "answered", T0 - 3_599_000, agent_id="bob"), 1),
                                Rec(old.encode(), call(old, 3, "ended", T0 - 3_500_000), 2),
                                Rec(k, call(iid, 1, "offered", T0 + MIN), 3),
                                Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 4)], NOW)
    first.engines[0].advance(T0 + 3 * MIN)
    lost = first.checkpoint(NOW)  # the changelog reached Kafka, its agent facts did not
    assert lost.agent_facts
    second = PipelineStage(settings(), REKEY, interactions=dict(first.interactions))
    second.assign(0, first.engines[0].record, list(first.interactions.values()), NOW)
    out = run(second, facts, 0, [], T0 + 5 * MIN)
    # Only the open contact: the old one ended long before the lateness.
    assert [orjson.loads(m.value)["contact"][:2] for m in out.agent_facts] == [["ann", iid]]
    assert facts.on_contact("ann") == 3 * MIN


def ticket(iid: str, n: int, kind: str, ts: int, **extra: Any) -> bytes:
    doc = {"event_id": f"{iid}-{n}", "type": f"ticket.{kind}", "occurred_at": format_ms(ts),
           "interaction_id": iid, **extra}
    if kind == "created":
        doc.setdefault("queue", "tier1")
    if kind == "replied":
        doc.setdefault("sender", "agent")
    return orjson.dumps(doc)


def test_a_ticket_answered_by_an_agent_never_puts_it_on_contact() -> None:
    # METRICS.md: on contact is an answered, not ended call or chat; a ticket's channel is
    # its own (email, web...), so the family decides, whatever the channel is called.
    stage, facts = PipelineStage(settings(), REKEY), Facts()
    for n, channel in enumerate(("email", "web", "social")):
        iid = iid_on(0, f"t{n}-")
        k = iid.encode()
        stage.on_batch("tickets", 0, [Rec(k, ticket(iid, 1, "created", T0 + MIN, channel=channel), 3 * n),
                                      Rec(k, ticket(iid, 2, "replied", T0 + 2 * MIN, agent_id="tia"), 3 * n + 1),
                                      Rec(k, ticket(iid, 3, "replied", T0 + 3 * MIN, agent_id="tia",
                                                    public=False), 3 * n + 2)], NOW)
    # An out-of-order reply (refolds the ticket) and its expiry: no fact either.
    iid = iid_on(0, "late-")
    k = iid.encode()
    stage.on_batch("tickets", 0, [Rec(k, ticket(iid, 2, "replied", T0 + 4 * MIN, agent_id="tia"), 9),
                                  Rec(k, ticket(iid, 1, "created", T0 + MIN), 10)], NOW)
    out = stage.checkpoint(NOW)
    assert not out.dead_letters and len(stage.interactions) == 4
    assert out.agent_facts == []
    facts.checkpoint(out)
    stage.engines[0].advance(T0 + 3 * 3_600_000)
    stage.on_tick(NOW, {})
    stage.on_tick(NOW + 3_600_000, {})
    assert stage.checkpoint(NOW).agent_facts == []
    assert facts.on_contact("tia") == 0


def test_an_open_contact_expires_at_its_answer_plus_the_horizon_whatever_followed() -> None:
    # One rule with the agent core: an answered contact with no end is on contact at most
    # the horizon after its answer, so the expiry's end changes no window the core closed.
    stage, facts = PipelineStage(settings(), REKEY), Facts()
    iid = iid_on(0)
    k = iid.encode()
    run(stage, facts, 0, [Rec(k, call(iid, 1, "offered", T0 + MIN), 0),
                          Rec(k, call(iid, 2, "answered", T0 + 2 * MIN, agent_id="ann"), 1),
                          Rec(k, call(iid, 3, "held", T0 + 40 * MIN), 2)], T0 + 45 * MIN)
    # Before any expiry: the agent stage has ann on contact until answer + horizon only.
    run(stage, facts, 0, [], T0 + 70 * MIN)
    assert facts.on_contact("ann", T0 + 60 * MIN) == 2 * MIN
    stage.engines[0].advance(T0 + 4 * 3_600_000)
    stage.on_tick(NOW, {})
    stage.on_tick(NOW + 3_600_000, {})
    out = stage.checkpoint(NOW)
    assert out.expired
    horizon = int(settings().windows.interaction_horizon_seconds * 1000)
    assert [orjson.loads(m.value)["contact"][7] for m in out.agent_facts] == [T0 + 2 * MIN + horizon]


def test_a_batch_of_facts_is_read_as_its_facts_one_by_one_and_a_bad_fact_costs_only_itself() -> None:
    from streams.stages.agent_facts import contact_fact
    from ccpulse.core.agents import Contact

    facts = [contact_fact("a1", "i1", 0, Contact(1, "billing", "voice", T0, None)),
             contact_fact("a1", "i1", 0, Contact(2, "billing", "voice", T0, T0 + 5 * MIN)),
             contact_fact("a2", "i2", 0, Contact(3, "billing", "voice", T0 + MIN, T0 + 3 * MIN))]
    one, batched = Facts(), Facts()
    one.read([Consumed(FACTS, key_partition(m.key, PARTITIONS), 1 + i, m.value) for i, m in enumerate(facts)])
    batches = fact_batches(facts, PARTITIONS, lambda key: key_partition(key, PARTITIONS))
    assert len(batches) <= PARTITIONS and sum(len(orjson.loads(v)["facts"]) for _p, v in batches) == 3
    bad = [(p, v.replace(b'"facts":[', b'"facts":[{"contact":[1]},')) for p, v in batches]
    out = batched.stage.on_batch([Consumed(FACTS, p, 1 + i, v) for i, (p, v) in enumerate(bad)], NOW)
    assert len(out.failures) == len(bad)  # each message once, its good facts applied
    for p in range(PARTITIONS):
        if p in one.stage.parts:
            assert ({a: t.to_doc() for a, t in batched.stage.parts[p].core.agents.items()}
                    == {a: t.to_doc() for a, t in one.stage.parts[p].core.agents.items()})
