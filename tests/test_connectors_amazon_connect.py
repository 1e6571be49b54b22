"""Amazon Connect mappers (pure): contact events, agent events and contact records.

Fixtures are the payload shapes of AWS's documentation (tests/fixtures/connectors/
amazon_connect/README.md); every mapped event must pass the pipeline's own validation.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Sequence

import pytest

from ccpulse.config import DEFAULT_THRESHOLDS
from ccpulse.connectors import amazon_connect
from ccpulse.connectors.amazon_connect import agent_event, contact_event, contact_record, map_record
from ccpulse.connectors.base import Mapped, MappingError
from ccpulse.core.kpis import agent_outcomes, segment_outcomes
from ccpulse.core.lifecycle import Interaction, Step
from tests.connector_support import FIXTURES as ALL_FIXTURES
from tests.connector_support import assert_valid
from tests.connector_support import fixture as source_fixture
from schemas.events import Event, validate
from tests.test_connectors_webhook_fuzz import JSON_VALUES, mangled, outcome, paths

FIXTURES = ALL_FIXTURES / "amazon_connect"


def fixture(name: str) -> dict[str, Any]:
    return source_fixture("amazon_connect", name.removesuffix(".json"))


def brief(mapped: Sequence[Mapped]) -> list[tuple[str, str, str | None, str | None, str]]:
    return [(m.event["type"], m.event.get("interaction_id") or m.event["agent_id"], m.event.get("queue"),
             m.event.get("agent_id"), m.event["occurred_at"]) for m in mapped]


# The figures the core derives per queue; the rest of segment_outcomes (sketch, buckets) is not looked at.
FIGURES = ("offered", "answered", "abandoned", "transferred_out", "flowed_out", "transfers", "handled",
           "handle_ms", "wait_answered_ms", "wait_abandoned_ms")


def tally(mapped: Sequence[Mapped]) -> tuple[dict[tuple[str, str], int], int]:
    """What the pipeline's core derives from ``mapped`` fed in this order: per (queue, figure), and the
    steps it could not place (orphans). Pure: the core's own Interaction and KPI functions."""
    now = int(time.time() * 1000)
    interactions: dict[str, Interaction] = {}
    for m in mapped:
        ev = validate(m.event, m.family, now)
        assert isinstance(ev, Event), (m.event, ev)
        step = Step(ev.occurred_at_ms, ev.step, ev.event_id, ev.queue, ev.agent_id, ev.details.get("to_queue"),
                    round(ev.details.get("wrapup_seconds", 0) * 1000))
        interactions.setdefault(ev.interaction_id, Interaction(ev.interaction_id, ev.channel)).add(step)
    counts: Counter[tuple[str, str]] = Counter()
    orphans = 0
    for inter in interactions.values():
        derived = inter.derive()
        orphans += derived.orphan_steps
        for seg in derived.segments:
            for _ts, name, n in segment_outcomes(seg, DEFAULT_THRESHOLDS["voice"]) + agent_outcomes(seg):
                if name in FIGURES:
                    counts[(seg.queue, name)] += n
    return dict(counts), orphans


def in_every_order(mapped: Sequence[Mapped]) -> tuple[dict[tuple[str, str], int], int]:
    """``tally`` of the events as mapped, reversed and interleaved: arrival order must not matter."""
    orders = [list(mapped), list(reversed(mapped)), list(mapped[1::2]) + list(mapped[::2])]
    results = [tally(order) for order in orders]
    assert all(r == results[0] for r in results), results
    return results[0]


QUEUE = "a1b2c3d4-5678-90ab-cdef-EXAMPLE33333"
AGENT = "a1b2c3d4-5678-90ab-cdef-EXAMPLE22222"
CONTACT = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"


def test_a_contact_s_events_map_to_offered_answered_and_ended_at_the_end_of_after_contact_work() -> None:
    out = [m for name in ("contact_event_initiated.json", "contact_event_queued.json",
                          "contact_event_connected_to_agent.json", "contact_event_disconnected_answered.json",
                          "contact_event_completed.json")
           for m in map_record(fixture(name))]
    assert brief(out) == [
        ("call.offered", CONTACT, QUEUE, None, "2021-08-04T17:29:04.000Z"),
        ("call.answered", CONTACT, None, AGENT, "2021-08-04T17:29:09.000Z"),
        ("call.ended", CONTACT, None, None, "2021-08-04T17:34:10.000Z"),
    ]
    assert out[0].key == CONTACT and out[0].family == "call"
    assert_valid(out)


def test_a_contact_that_leaves_its_queue_before_an_agent_is_abandoned_once_from_either_event() -> None:
    doc = fixture("contact_event_disconnected_abandoned.json")
    out = map_record(doc)
    assert brief(out) == [("call.abandoned", "a1b2c3d4-5678-90ab-cdef-EXAMPLE44444", None, None,
                           "2021-08-04T17:31:30.000Z")]
    completed = json.loads(json.dumps(doc))
    completed["detail"]["eventType"] = "COMPLETED"
    assert [m.event for m in map_record(completed)] == [m.event for m in out]  # the same id: one abandon
    assert_valid(out)


def test_a_contact_never_queued_is_neither_offered_nor_abandoned() -> None:
    doc = fixture("contact_event_disconnected_abandoned.json")
    del doc["detail"]["queueInfo"]
    assert map_record(doc) == []
    assert contact_record(fixture("ctr_ivr_only.json")) == []


NEW_CONTACT, NEW_QUEUE = "a1b2c3d4-5678-90ab-cdef-EXAMPLE55555", "a1b2c3d4-5678-90ab-cdef-EXAMPLE66666"
FIRST_LEG = ("contact_event_queued.json", "contact_event_connected_to_agent.json",
             "contact_event_disconnected_answered.json", "contact_event_completed.json")
SECOND_LEG = ("contact_event_queued_transfer.json", "contact_event_connected_to_agent_transfer.json",
              "contact_event_completed_transfer.json")


def test_an_agent_transfer_is_counted_on_the_contact_it_came_from_and_the_new_contact_waits_in_its_queue() -> None:
    out = map_record(fixture("contact_event_queued_transfer.json"))
    # The transfer at the new contact's initiationTimestamp (when the agent started it), on the
    # previous contact; the new contact offered in its queue at its enqueueTimestamp.
    assert brief(out) == [("call.offered", NEW_CONTACT, NEW_QUEUE, None, "2021-08-04T17:32:00.000Z"),
                          ("call.transferred", CONTACT, None, None, "2021-08-04T17:31:58.000Z")]
    assert out[0].event["attributes"] == {"initial_contact_id": CONTACT, "previous_contact_id": CONTACT,
                                          "initiation_method": "TRANSFER"}
    assert out[1].event["to_agent"] == NEW_QUEUE and "to_queue" not in out[1].event
    assert out[1].key == CONTACT
    assert_valid(out)


def test_a_transferred_contact_s_figures_do_not_depend_on_the_order_its_events_arrive_in() -> None:
    # The first contact's after contact work ends (17:34:10) after the new contact queued
    # (17:32:00) and was answered (17:32:40): the case that must not turn into an abandon.
    mapped = [m for name in FIRST_LEG + SECOND_LEG for m in map_record(fixture(name))]
    assert in_every_order(mapped) == ({
        # 17:29:04 -> 17:29:09 wait, handled 17:29:09 -> 17:34:10 (talk + ACW, as Connect's own handle time)
        (QUEUE, "offered"): 1, (QUEUE, "answered"): 1, (QUEUE, "wait_answered_ms"): 5_000, (QUEUE, "transfers"): 1,
        (QUEUE, "handled"): 1, (QUEUE, "handle_ms"): 301_000,
        # queued 17:32:00, answered 17:32:40, after contact work to 17:37:00
        (NEW_QUEUE, "offered"): 1, (NEW_QUEUE, "answered"): 1, (NEW_QUEUE, "wait_answered_ms"): 40_000,
        (NEW_QUEUE, "handled"): 1, (NEW_QUEUE, "handle_ms"): 260_000,
    }, 0)


def test_contact_records_of_a_transfer_give_the_same_figures_and_the_live_events_the_same_ids() -> None:
    first, second = fixture("ctr_agent_transfer_first.json"), fixture("ctr_agent_transfer_second.json")
    mapped = contact_record(first) + contact_record(second)
    basic, support = "BasicQueue", "SupportQueue"  # a contact record names its queue
    assert in_every_order(mapped) == ({
        (basic, "offered"): 1, (basic, "answered"): 1, (basic, "wait_answered_ms"): 7_000, (basic, "transfers"): 1,
        (basic, "handled"): 1, (basic, "handle_ms"): 65_000,  # 15:00:49 -> ACW end 15:01:54
        (support, "offered"): 1, (support, "answered"): 1, (support, "wait_answered_ms"): 28_000,
        (support, "handled"): 1, (support, "handle_ms"): 180_000,  # 15:01:40 -> ACW end 15:04:40
    }, 0)
    transfer = [m for m in mapped if m.event["type"] == "call.transferred"]
    assert brief(transfer) == [("call.transferred", first["ContactId"], None, None, "2022-04-08T15:01:10.000Z")]
    # The same contact seen live: its QUEUED event gives the record's ids, so a replay dedups.
    live = contact_event({"eventType": "QUEUED", "contactId": second["ContactId"], "channel": "VOICE",
                          "initiationMethod": "TRANSFER", "initiationTimestamp": second["InitiationTimestamp"],
                          "initialContactId": first["ContactId"], "previousContactId": first["ContactId"],
                          "queueInfo": {"queueArn": second["Queue"]["ARN"], "queueType": "STANDARD",
                                        "enqueueTimestamp": second["Queue"]["EnqueueTimestamp"]}})
    assert {m.event["event_id"] for m in live} <= {m.event["event_id"] for m in mapped}
    assert len(live) == 2
    assert_valid(mapped)


def test_only_an_agent_s_transfer_is_a_transfer_and_it_counts_where_it_came_from() -> None:
    doc = fixture("contact_event_queued_transfer.json")
    # A flow moving a waiting contact to another queue is the first contact's flow-out, not an agent transfer.
    doc["detail"]["initiationMethod"] = "QUEUE_TRANSFER"
    assert [m.event["type"] for m in map_record(doc)] == ["call.offered"]
    # A second transfer (A -> B -> C) counts on B, the contact it came from.
    doc["detail"].update(initiationMethod="TRANSFER", previousContactId="contact-b")
    assert [m.event["interaction_id"] for m in map_record(doc)] == [NEW_CONTACT, "contact-b"]
    # Without a previous contact id (older events), the initial one.
    del doc["detail"]["previousContactId"]
    assert map_record(doc)[1].event["interaction_id"] == CONTACT
    # To an agent (quick connect to the agent's own queue): to_agent is that agent.
    doc["detail"]["queueInfo"].update(queueType="AGENT", queueArn=doc["detail"]["queueInfo"]["queueArn"].replace(
        "/queue/a1b2c3d4-5678-90ab-cdef-EXAMPLE66666", "/queue/agent/a1b2c3d4-5678-90ab-cdef-EXAMPLE77777"))
    assert map_record(doc)[1].event["to_agent"] == "a1b2c3d4-5678-90ab-cdef-EXAMPLE77777"
    # No initiationTimestamp: the transfer is dated when the new contact queued.
    del doc["detail"]["initiationTimestamp"]
    assert map_record(doc)[1].event["occurred_at"] == "2021-08-04T17:32:00.000Z"
    # Its other events map as before, without a second transfer.
    assert [m.event["type"] for m in map_record(fixture("contact_event_completed_transfer.json"))] == ["call.ended"]


def test_the_older_documented_sample_with_pascal_case_keys_maps_with_the_envelope_time() -> None:
    out = map_record(fixture("contact_event_legacy_connected_to_agent.json"))
    assert brief(out) == [("call.answered", "11111111-1111-1111-1111-111111111111", None, "arn",
                           "2021-05-01T18:43:48.000Z")]
    assert_valid(out)


def test_queue_names_replace_the_queue_id_of_the_arn() -> None:
    out = map_record(fixture("contact_event_queued.json"), {QUEUE: "billing"})
    assert out[0].event["queue"] == "billing"


def test_a_contact_record_maps_to_the_same_events_and_ids_as_the_live_contact_events() -> None:
    out = contact_record(fixture("ctr_answered.json"))
    assert brief(out) == [
        ("call.offered", "15a5cf14-3212-45a1-9f86-a8e97db8afaf", "BasicQueue", None, "2022-04-08T15:00:42.000Z"),
        ("call.answered", "15a5cf14-3212-45a1-9f86-a8e97db8afaf", None, "57db30ae-8c01-44e6-abd5-80b7b51944cf",
         "2022-04-08T15:00:49.000Z"),
        ("call.ended", "15a5cf14-3212-45a1-9f86-a8e97db8afaf", None, None, "2022-04-08T15:01:54.000Z"),
    ]
    assert_valid(out)
    # The same contact's COMPLETED event, as EventBridge would have sent it: the same ids.
    live = {"eventType": "COMPLETED", "contactId": "15a5cf14-3212-45a1-9f86-a8e97db8afaf", "channel": "VOICE",
            "disconnectTimestamp": "2022-04-08T15:01:22Z",
            "queueInfo": {"queueArn": fixture("ctr_answered.json")["Queue"]["ARN"],
                          "enqueueTimestamp": "2022-04-08T15:00:42Z"},
            "agentInfo": {"agentArn": fixture("ctr_answered.json")["Agent"]["ARN"],
                          "connectedToAgentTimestamp": "2022-04-08T15:00:49Z",
                          "afterContactWorkEndTimestamp": "2022-04-08T15:01:54Z"}}
    assert [m.event for m in contact_event(live)] == [out[2].event]


def test_a_contact_record_queued_and_left_is_abandoned_or_flowed_out_when_the_flow_moved_it() -> None:
    abandoned = contact_record(fixture("ctr_abandoned.json"))
    assert [e[0] for e in brief(abandoned)] == ["call.offered", "call.abandoned"]
    assert abandoned[1].event["occurred_at"] == "2022-04-08T15:05:40.000Z"
    flowed = contact_record(fixture("ctr_queue_transfer.json"))
    assert [e[0] for e in brief(flowed)] == ["call.offered", "call.flowed_out"]
    assert flowed[1].event["reason"] == "transfer"
    assert_valid(abandoned + flowed)


@pytest.mark.parametrize("name, expected", [
    ("agent_event_login.json", ("agent.logged_in", "available", None)),
    ("agent_event_state_change_break.json", ("agent.state_changed", "away", "break")),
    ("agent_event_state_change_acw.json", ("agent.state_changed", "after_contact_work", None)),
    ("agent_event_logout.json", ("agent.logged_out", None, None)),
])
def test_agent_events_map_to_the_agents_contract(name: str, expected: tuple[Any, ...]) -> None:
    out = map_record(fixture(name))
    assert [(m.event["type"], m.event.get("state"), m.event.get("reason")) for m in out] == [expected]
    assert out[0].family == "agent" and out[0].key == "agent-1"
    if expected[0] != "agent.logged_out":
        assert out[0].event["queues"] == ["BasicQueue", "Billing"]
    assert_valid(out)


def test_heart_beats_and_changes_ccpulse_does_not_carry_map_to_nothing() -> None:
    assert map_record(fixture("agent_event_heart_beat.json")) == []
    assert map_record(fixture("agent_event_state_change_config_only.json")) == []


def test_going_offline_is_a_log_out_and_coming_back_a_log_in() -> None:
    doc = fixture("agent_event_state_change_break.json")
    doc["CurrentAgentSnapshot"]["AgentStatus"]["Name"] = "Offline"
    assert [m.event["type"] for m in agent_event(doc)] == ["agent.logged_out"]
    back = fixture("agent_event_state_change_break.json")
    back["PreviousAgentSnapshot"]["AgentStatus"]["Name"] = "Offline"
    out = agent_event(back)
    assert [(m.event["type"], m.event["state"]) for m in out] == [("agent.logged_in", "away")]
    assert_valid(out)


@pytest.mark.parametrize("doc, reason", [
    ([1, 2], "not_object"),
    ({"detail-type": "EC2 Instance State-change Notification", "detail": {}}, "unknown_type"),
    ({"hello": "world"}, "unknown_shape"),
    ({"detail-type": amazon_connect.CONTACT_EVENT, "detail": {"eventType": "QUEUED", "channel": "VOICE",
                                                               "queueInfo": {"queueArn": "x/queue/q"}}},
     "missing_field"),
    ({"detail-type": amazon_connect.CONTACT_EVENT, "time": "2021-01-01T00:00:00Z",
      "detail": {"eventType": "QUEUED", "contactId": "c", "channel": "VOICE",
                 "queueInfo": {"queueArn": "x/queue/q", "enqueueTimestamp": "yesterday"}}}, "bad_timestamp"),
    ({"detail-type": amazon_connect.CONTACT_EVENT, "time": "2021-01-01T00:00:00Z",
      "detail": {"eventType": "QUEUED", "contactId": "c", "channel": "VOICE",
                 "queueInfo": {"queueArn": "x/queue/a|b"}}}, "invalid_value"),
    ({"AgentARN": "x/agent/a", "EventType": "DANCE", "EventId": "e", "EventTimestamp": "2021-01-01T00:00:00Z"},
     "unknown_type"),
    ({"AgentARN": "x/agent/a", "EventType": "LOGIN", "EventId": "e", "EventTimestamp": "2021-01-01T00:00:00Z"},
     "missing_field"),
])
def test_payloads_that_cannot_be_mapped_raise_a_mapping_error_with_its_reason(doc: Any, reason: str) -> None:
    with pytest.raises(MappingError) as caught:
        map_record(doc)
    assert caught.value.reason == reason, caught.value


def test_every_fixture_maps_without_error_and_every_event_is_valid() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.json"))
    assert len(names) >= 15
    for name in names:
        assert_valid(map_record(fixture(name)))


def fuzz(map_record: Any, docs: Sequence[Any]) -> int:
    """Every documented payload with one field mangled (each path, each JSON type): valid events
    or a ``MappingError``, never another exception nor an event the pipeline would dead-letter."""
    n = 0
    for doc in docs:
        for path in paths(doc):
            for value in JSON_VALUES:
                outcome(map_record, mangled(doc, path, value))
                n += 1
    return n


def test_any_field_of_any_shape_maps_to_valid_events_or_a_mapping_error() -> None:
    docs = [fixture(p.name) for p in sorted(FIXTURES.glob("*.json"))]
    assert fuzz(map_record, docs) > 5000


def test_an_older_model_completed_event_naming_the_agent_without_timestamps_is_an_end_not_an_abandon() -> None:
    doc = fixture("contact_event_legacy_connected_to_agent.json")
    doc["detail"]["EventType"] = "COMPLETED"
    out = map_record(doc)
    assert [(m.event["type"], m.event["occurred_at"]) for m in out] == [("call.ended", "2021-05-01T18:43:48.000Z")]
    assert_valid(out)
