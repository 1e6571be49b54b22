"""Twilio TaskRouter: the signature against Twilio's published example, the mapper against callbacks
shaped as Twilio's event reference documents them (tests/fixtures/connectors/twilio/)."""

from __future__ import annotations

import json

import pytest

from ccpulse.connectors import twilio
from ccpulse.connectors.base import MappingError
from tests.connector_support import assert_valid, fixture
from tests.test_connectors_amazon_connect import in_every_order

# Twilio's published example (docs "Validating requests"; TwilioDevEd/api-snippets
# security/signature_validation): auth token 12345, this URL and these parameters.
EXAMPLE_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
EXAMPLE_PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
                  ("From", "+14158675309"), ("To", "+18005551212")]
EXAMPLE_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_published_signature_example() -> None:
    assert twilio.expected_signature(EXAMPLE_URL, EXAMPLE_PARAMS, "12345") == EXAMPLE_SIGNATURE
    assert twilio.verify(EXAMPLE_URL, list(reversed(EXAMPLE_PARAMS)), EXAMPLE_SIGNATURE, "12345")


@pytest.mark.parametrize("url, params, signature, token", [
    (EXAMPLE_URL, EXAMPLE_PARAMS, EXAMPLE_SIGNATURE, "12346"),  # another account's token
    (EXAMPLE_URL.replace("bar=2", "bar=3"), EXAMPLE_PARAMS, EXAMPLE_SIGNATURE, "12345"),  # the URL changed
    (EXAMPLE_URL, EXAMPLE_PARAMS[:-1], EXAMPLE_SIGNATURE, "12345"),  # a parameter dropped
    (EXAMPLE_URL, EXAMPLE_PARAMS + [("Digits", "9")], EXAMPLE_SIGNATURE, "12345"),  # one added
    (EXAMPLE_URL, EXAMPLE_PARAMS, "", "12345"),  # unsigned
    (EXAMPLE_URL, EXAMPLE_PARAMS, EXAMPLE_SIGNATURE, ""),  # no token configured
])
def test_signature_refusals(url: str, params: list, signature: str, token: str) -> None:
    assert not twilio.verify(url, params, signature, token)


def test_default_port_spelled_either_way() -> None:
    # A proxy may show Twilio's https://host/... as https://host:443/... (Twilio's helpers accept both).
    signature = twilio.expected_signature("https://ccpulse.example.com/twilio", [("A", "1")], "tok-12345")
    assert twilio.verify("https://ccpulse.example.com:443/twilio", [("A", "1")], signature, "tok-12345")
    assert not twilio.verify("https://ccpulse.example.com:8443/twilio", [("A", "1")], signature, "tok-12345")


TASK = "WT11111111111111111111111111111111"
BILLING, SALES = "WQ33333333333333333333333333333333", "WQ77777777777777777777777777777777"


def in_queue(params: dict, sid: str, name: str) -> dict:
    """A callback of the fixtures' task while it is in another queue."""
    return dict(params, TaskQueueSid=sid, TaskQueueName=name)


def test_a_voice_task_maps_offered_answered_ended() -> None:
    offered = twilio.map_callback(fixture("twilio", "task-queue.entered"))
    answered = twilio.map_callback(fixture("twilio", "reservation.accepted"))
    ended = twilio.map_callback(fixture("twilio", "task.completed"))
    everything = offered + answered + ended
    assert_valid(everything)
    assert [(m.family, m.event["type"], m.event["occurred_at"]) for m in everything] == [
        ("call", "call.offered", "2026-01-05T08:00:05.000Z"),
        ("call", "call.answered", "2026-01-05T08:00:25.000Z"),
        ("call", "call.ended", "2026-01-05T08:02:10.000Z"),
    ]
    # One interaction per queue visit of the task (README "Twilio TaskRouter").
    assert all(m.event["interaction_id"] == f"{TASK}:{BILLING}" == m.key for m in everything)
    assert offered[0].event["queue"] == "billing" and offered[0].event["customer_id"] == "+14155550101"
    assert answered[0].event["agent_id"] == "WK44444444444444444444444444444444"


def test_a_task_its_workflow_moves_leaves_the_first_queue_and_waits_again_in_the_next() -> None:
    # task-queue.moved names the queue the task LEFT (Twilio: "A task leaves its current queue to
    # move to a new queue"); the task-queue.entered that follows names the new one.
    moved = twilio.map_callback(fixture("twilio", "task-queue.moved"))
    entered = twilio.map_callback(fixture("twilio", "task-queue.entered.after-move"))
    mapped = (twilio.map_callback(fixture("twilio", "task-queue.entered")) + moved + entered
              + twilio.map_callback(in_queue(fixture("twilio", "reservation.accepted"), SALES, "sales"))
              + twilio.map_callback(in_queue(fixture("twilio", "task.completed"), SALES, "sales")))
    assert_valid(mapped)
    # billing 08:00:05 -> moved on 08:00:15; sales 08:00:15 -> answered 08:00:25 -> completed 08:02:10
    assert in_every_order(mapped) == ({
        ("billing", "offered"): 1, ("billing", "flowed_out"): 1,
        ("sales", "offered"): 1, ("sales", "answered"): 1, ("sales", "wait_answered_ms"): 10_000,
        ("sales", "handled"): 1, ("sales", "handle_ms"): 105_000,
    }, 0)
    [left] = moved
    assert left.event["interaction_id"] == f"{TASK}:{BILLING}" and "to_queue" not in left.event
    assert entered[0].event["interaction_id"] == f"{TASK}:{SALES}" and entered[0].event["queue"] == "sales"
    # Each visit's offer names the customer: FCR and repeat contacts see one caller.
    assert {m.event.get("customer_id") for m in mapped if m.event["type"] == "call.offered"} == {"+14155550101"}


@pytest.mark.parametrize("name", ["task-queue.entered", "reservation.accepted", "task.canceled", "task.completed",
                                  "task-queue.moved"])
def test_a_contact_event_without_its_queue_cannot_be_placed(name: str) -> None:
    # Twilio's event reference lists TaskQueueSid on all of them: without it the visit is unknown.
    with pytest.raises(MappingError) as err:
        twilio.map_callback(dict(fixture("twilio", name), TaskQueueSid=""))
    assert err.value.reason == "missing_field" and "TaskQueueSid" in str(err.value)


def test_canceled_before_acceptance_is_an_abandon() -> None:
    [m] = twilio.map_callback(fixture("twilio", "task.canceled"))
    assert_valid([m])
    assert m.event["type"] == "call.abandoned" and m.event["attributes"] == {"canceled_reason": "hangup"}


def test_chat_channels_and_refused_channels() -> None:
    params = dict(fixture("twilio", "task-queue.entered"), TaskChannelUniqueName="sms")
    [m] = twilio.map_callback(params)
    assert_valid([m])
    assert (m.family, m.event["type"]) == ("chat", "chat.offered")
    with pytest.raises(MappingError) as err:
        twilio.map_callback(dict(params, TaskChannelUniqueName="default"))
    assert err.value.reason == "unsupported_channel"


def test_ids_are_deterministic_and_each_queue_entry_is_an_offer_of_its_own() -> None:
    entered = fixture("twilio", "task-queue.entered")
    first = twilio.map_callback(entered)[0].event
    assert twilio.map_callback(entered)[0].event == first  # Twilio retrying the callback: the same id
    elsewhere = twilio.map_callback(in_queue(entered, SALES, "sales"))[0].event
    assert elsewhere["interaction_id"] != first["interaction_id"] and elsewhere["event_id"] != first["event_id"]
    # Back in billing later (a workflow step targeting it again): a second visit, not a retry.
    again = twilio.map_callback(dict(entered, Timestamp="1767600100"))[0].event
    assert again["interaction_id"] == first["interaction_id"] and again["event_id"] != first["event_id"]


@pytest.mark.parametrize("activity, expected", [
    ("Available", {"type": "agent.state_changed", "state": "available"}),
    ("Break", {"type": "agent.state_changed", "state": "away", "reason": "break"}),
    ("Out to Lunch", {"type": "agent.state_changed", "state": "away", "reason": "out_to_lunch"}),
    ("Wrap Up", {"type": "agent.state_changed", "state": "after_contact_work"}),
    ("Offline", {"type": "agent.logged_out"}),
])
def test_worker_activity(activity: str, expected: dict) -> None:
    [m] = twilio.map_callback(dict(fixture("twilio", "worker.activity.update"), WorkerActivityName=activity))
    assert_valid([m])
    assert m.family == "agent" and m.event["agent_id"] == "WK44444444444444444444444444444444"
    assert {k: m.event[k] for k in expected} == expected
    assert m.event["occurred_at"] == "2026-01-05T08:05:00.000Z"


@pytest.mark.parametrize("name", ["task.created", "task.wrapup"])
def test_events_that_map_to_nothing(name: str) -> None:
    assert twilio.map_callback(fixture("twilio", name)) == []


@pytest.mark.parametrize("change, reason", [
    ({"EventType": ""}, "missing_field"),
    ({"TaskSid": ""}, "missing_field"),
    ({"Timestamp": "yesterday"}, "bad_timestamp"),
    ({"Timestamp": "-5"}, "bad_timestamp"),
    ({"TaskAttributes": "{not json"}, "not_json"),
    ({"TaskQueueName": "", "TaskQueueSid": ""}, "missing_field"),
])
def test_unmappable_callbacks_say_why(change: dict, reason: str) -> None:
    with pytest.raises(MappingError) as err:
        twilio.map_callback(dict(fixture("twilio", "task-queue.entered"), **change))
    assert err.value.reason == reason


def test_timestamp_ms_wins_when_given() -> None:
    params = dict(fixture("twilio", "task-queue.entered"), TimestampMs="1767600005250")
    assert twilio.map_callback(params)[0].event["occurred_at"] == "2026-01-05T08:00:05.250Z"
    assert json.loads(fixture("twilio", "task-queue.entered")["TaskAttributes"])["from"] == "+14155550101"
