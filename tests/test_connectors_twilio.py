"""Twilio TaskRouter: the signature against Twilio's published example, the mapper against callbacks
shaped as Twilio's event reference documents them (tests/fixtures/connectors/twilio/)."""

from __future__ import annotations

import json

import pytest

from ccpulse.connectors import twilio
from ccpulse.connectors.base import MappingError
from tests.connector_support import assert_valid, fixture

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


def test_a_voice_task_maps_offered_answered_moved_ended() -> None:
    offered = twilio.map_callback(fixture("twilio", "task-queue.entered"))
    answered = twilio.map_callback(fixture("twilio", "reservation.accepted"))
    moved = twilio.map_callback(fixture("twilio", "task-queue.moved"))
    ended = twilio.map_callback(fixture("twilio", "task.completed"))
    everything = offered + answered + moved + ended
    assert_valid(everything)
    task = "WT11111111111111111111111111111111"
    assert [(m.family, m.event["type"], m.event["occurred_at"]) for m in everything] == [
        ("call", "call.offered", "2026-01-05T08:00:05.000Z"),
        ("call", "call.answered", "2026-01-05T08:00:25.000Z"),
        ("call", "call.transferred", "2026-01-05T08:00:40.000Z"),
        ("call", "call.ended", "2026-01-05T08:02:10.000Z"),
    ]
    assert all(m.event["interaction_id"] == task and m.key == task for m in everything)
    assert offered[0].event["queue"] == "billing" and offered[0].event["customer_id"] == "+14155550101"
    assert answered[0].event["agent_id"] == "WK44444444444444444444444444444444"
    assert moved[0].event["to_queue"] == "sales"


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


def test_ids_are_deterministic_and_a_later_queue_entry_is_the_same_offer() -> None:
    entered = fixture("twilio", "task-queue.entered")
    again = twilio.map_callback(entered)  # Twilio retrying the callback
    later = twilio.map_callback(dict(entered, TaskQueueName="sales", Timestamp="1767600041"))
    assert twilio.map_callback(entered)[0].event == again[0].event
    assert later[0].event["event_id"] == again[0].event["event_id"]


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
