"""Genesys Cloud detail-event mapper (pure), on payloads shaped as Genesys documents them
(tests/fixtures/connectors/genesys/README.md); every mapped event passes the pipeline's validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ccpulse.connectors.base import MappingError
from ccpulse.connectors.genesys import map_record
from tests.connector_support import FIXTURES as ALL_FIXTURES
from tests.connector_support import assert_valid
from tests.test_connectors_amazon_connect import brief, fuzz, in_every_order

FIXTURES = ALL_FIXTURES / "genesys"
CONV = "8e2f4b2c-1c3a-4f4e-9d0e-2a6d7c1b5f00"
Q1, Q2 = "5b5f0a8e-3e2d-4f0a-9c1b-7d2e6f3a1c01", "5b5f0a8e-3e2d-4f0a-9c1b-7d2e6f3a1c02"
U1 = "0f1e2d3c-4b5a-4968-8776-655443322101"
# One interaction per queue visit of the conversation (README, Connectors > Genesys Cloud).
VISIT1, VISIT2 = f"{CONV}:{Q1}", f"{CONV}:{Q2}"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def test_a_conversation_transferred_to_a_second_queue_maps_to_two_queue_visits() -> None:
    names = ("customer_start.json", "acd_start.json", "acd_end_answered.json", "user_start.json",
             "user_end_transfer.json", "acd_start_transfer.json", "acw.json", "acd_end_abandon.json",
             "customer_end.json")
    out = [m for name in names for m in map_record(fixture(name))]
    assert brief(out) == [
        ("call.offered", VISIT1, Q1, None, "2024-03-04T10:00:20.000Z"),
        ("call.answered", VISIT1, Q1, U1, "2024-03-04T10:00:35.000Z"),
        ("call.transferred", VISIT1, Q1, None, "2024-03-04T10:02:35.000Z"),
        ("call.ended", VISIT1, Q1, None, "2024-03-04T10:02:35.000Z"),
        ("call.offered", VISIT2, Q2, None, "2024-03-04T10:02:35.500Z"),
        ("call.abandoned", VISIT2, Q2, None, "2024-03-04T10:03:15.500Z"),
    ]
    assert {m.key for m in out} == {VISIT1, VISIT2} and len({m.event["event_id"] for m in out}) == len(out)
    assert all(m.event["attributes"] == {"conversation_id": CONV} for m in out if m is not out[2])
    assert_valid(out)


@pytest.mark.parametrize("kind", ["TRANSFER", "CONSULT_TRANSFER", "CONFERENCE_TRANSFER"])
def test_a_transfer_names_no_destination_genesys_does_not_give(kind: str) -> None:
    # user.end (and the next acd.start) carry no destination: the kind of transfer is an
    # attribute, as Asterisk's; the destination EVENTS.md asks for is "unknown", not the kind.
    doc = fixture("user_end_transfer.json")
    doc["detail"]["eventBody"]["disconnectType"] = kind
    out = map_record(doc)
    transfer = out[0]
    assert transfer.event["type"] == "call.transferred" and "to_queue" not in transfer.event
    assert transfer.event["to_agent"] == "unknown"
    assert transfer.event["attributes"] == {"conversation_id": CONV, "transfer": kind.lower()}
    assert_valid(out)


@pytest.mark.parametrize("new_visit", ["acd_start_transfer.json", "acd_start_transfer_same_ms.json"])
def test_a_transfer_is_counted_once_and_the_next_queue_visit_keeps_its_own_wait_in_any_order(new_visit: str) -> None:
    # The new queue's acd.start may carry the very millisecond of the agent's user.end (a
    # blind transfer): it must not be taken for an offer while the first visit is handled.
    mapped = [m for name in ("acd_start.json", "acd_end_answered.json", "user_end_transfer.json", new_visit,
                             "acd_end_abandon.json") for m in map_record(fixture(name))]
    entered = {"acd_start_transfer.json": 10 * 60 + 2 * 60 + 35.5, "acd_start_transfer_same_ms.json": 10 * 60 + 155}
    assert in_every_order(mapped) == ({
        # 10:00:20 -> 10:00:35 wait, handled to the transfer at 10:02:35
        (Q1, "offered"): 1, (Q1, "answered"): 1, (Q1, "wait_answered_ms"): 15_000, (Q1, "transfers"): 1,
        (Q1, "handled"): 1, (Q1, "handle_ms"): 120_000,
        # abandoned at 10:03:15.500
        (Q2, "offered"): 1, (Q2, "abandoned"): 1,
        (Q2, "wait_abandoned_ms"): round((10 * 60 + 195.5 - entered[new_visit]) * 1000),
    }, 0)


def test_a_user_who_never_took_the_call_ends_nothing() -> None:
    # NO_ANSWER_TRANSFER (and NOT_AVAILABLE, DND, FORWARD): the call went on to someone
    # else before this user took it; ending the visit there would make it an abandon.
    assert map_record(fixture("user_end_no_answer.json")) == []
    for kind in ("NOT_AVAILABLE_TRANSFER", "DND_TRANSFER", "FORWARD_TRANSFER"):
        doc = fixture("user_end_no_answer.json")
        doc["detail"]["eventBody"]["disconnectType"] = kind
        assert map_record(doc) == [], kind
    mapped = [m for name in ("acd_start.json", "user_end_no_answer.json", "acd_end_answered.json")
              for m in map_record(fixture(name))]
    assert in_every_order(mapped) == ({(Q1, "offered"): 1, (Q1, "answered"): 1, (Q1, "wait_answered_ms"): 15_000},
                                      0)


def test_a_consult_or_conference_transfer_is_a_transfer_and_other_ends_are_plain_ends() -> None:
    for kind, types in (("CONSULT_TRANSFER", ["call.transferred", "call.ended"]),
                        ("CONFERENCE_TRANSFER", ["call.transferred", "call.ended"]),
                        ("PEER", ["call.ended"]), ("CLIENT", ["call.ended"])):
        doc = fixture("user_end_transfer.json")
        doc["detail"]["eventBody"]["disconnectType"] = kind
        out = map_record(doc)
        assert [m.event["type"] for m in out] == types, kind
        assert_valid(out)
    doc = fixture("user_end_transfer.json")
    del doc["detail"]["eventBody"]["disconnectType"]
    assert [m.event["type"] for m in map_record(doc)] == ["call.ended"]


def test_a_flow_out_is_neither_an_answer_nor_an_abandon() -> None:
    out = map_record(fixture("acd_end_flow_out.json"))
    assert [(m.event["type"], m.event["reason"]) for m in out] == [("call.flowed_out", "flow_out")]
    assert_valid(out)


def test_the_bare_detail_maps_like_the_eventbridge_envelope_and_a_redelivery_gives_the_same_id() -> None:
    doc = fixture("acd_start.json")
    assert [m.event for m in map_record(doc["detail"])] == [m.event for m in map_record(doc)]
    again = json.loads(json.dumps(doc))
    again["id"] = "another-eventbridge-id"  # EventBridge retries may carry new envelope ids
    assert map_record(again)[0].event["event_id"] == map_record(doc)[0].event["event_id"]


def test_queue_names_replace_queue_ids_and_other_media_map_to_nothing() -> None:
    assert map_record(fixture("acd_start.json"), {Q1: "support"})[0].event["queue"] == "support"
    assert map_record(fixture("email_acd_start.json")) == []
    chat = fixture("acd_start.json")
    chat["detail"]["eventBody"]["mediaType"] = "MESSAGE"
    out = map_record(chat)
    assert out[0].family == "chat" and out[0].event["type"] == "chat.offered"
    assert_valid(out)


def test_a_user_end_without_a_queue_is_not_an_orphan_end() -> None:
    doc = fixture("user_end_transfer.json")
    del doc["detail"]["eventBody"]["queueId"]
    assert map_record(doc) == []


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["detail"].update(topicName="v2.users.123.presence"), "unknown_type"),
    (lambda d: d["detail"].pop("eventBody"), "missing_field"),
    (lambda d: d["detail"]["eventBody"].pop("queueId"), "missing_field"),
    (lambda d: d["detail"]["eventBody"].update(eventTime="soon"), "bad_timestamp"),
    (lambda d: d["detail"]["eventBody"].update(queueId="a|b"), "invalid_value"),
    (lambda d: d["detail"].update(topicName=d["detail"]["topicName"].replace("acd.start", "acd.end")),
     "missing_field"),  # acd.end without acdOutcome
])
def test_payloads_that_cannot_be_mapped_raise_a_mapping_error_with_its_reason(change: Any, reason: str) -> None:
    doc = fixture("acd_start.json")
    change(doc)
    with pytest.raises(MappingError) as caught:
        map_record(doc)
    assert caught.value.reason == reason, caught.value


def test_an_unknown_acd_outcome_is_a_mapping_error() -> None:
    doc = fixture("acd_end_abandon.json")
    doc["detail"]["eventBody"]["acdOutcome"] = "UNKNOWN"
    with pytest.raises(MappingError, match="acdOutcome"):
        map_record(doc)
    with pytest.raises(MappingError):
        map_record("not an object")


def test_every_fixture_maps_and_every_event_is_valid() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        assert_valid(map_record(json.loads(path.read_text())))


def test_any_field_of_any_shape_maps_to_valid_events_or_a_mapping_error() -> None:
    docs = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    assert fuzz(map_record, docs) > 3000
