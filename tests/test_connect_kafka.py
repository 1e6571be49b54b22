"""``ccpulse connect kafka``: the pure parts (record -> events, options); the broker is in
tests/test_connect_kafka_integration.py."""

from __future__ import annotations

import argparse
import json

import pytest

from ccpulse.cli import build_parser
from ccpulse.commands import connect_kafka
from ccpulse.connectors.base import MappingError
from tests.test_connectors_amazon_connect import fixture as connect_fixture
from tests.test_connectors_genesys import fixture as genesys_fixture


@pytest.mark.parametrize("source, doc, types", [
    ("connect", connect_fixture("contact_event_queued.json"), ["call.offered"]),
    ("connect", connect_fixture("agent_event_login.json"), ["agent.logged_in"]),
    ("connect", connect_fixture("ctr_answered.json"), ["call.offered", "call.answered", "call.ended"]),
    ("connect", connect_fixture("contact_event_initiated.json"), []),
    ("genesys", genesys_fixture("acd_end_answered.json"), ["call.answered"]),
])
def test_a_record_of_each_accepted_shape_maps_through_its_source(source: str, doc: dict, types: list[str]) -> None:
    out = connect_kafka.map_value(connect_kafka.mapper(source), json.dumps(doc).encode(), {})
    assert [m.event["type"] for m in out] == types


@pytest.mark.parametrize("value, reason", [
    (None, "not_json"), (b"\xff\xfe", "not_utf8"), (b"{nope", "not_json"), (b"[1]", "not_object"),
    (b'{"detail-type": "Something Else", "detail": {}}', "unknown_type"),
])
def test_a_record_that_cannot_be_mapped_is_a_mapping_error_with_its_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(MappingError) as caught:
        connect_kafka.map_value(connect_kafka.mapper("connect"), value, {})
    assert caught.value.reason == reason


def test_the_command_line_takes_source_topic_group_and_queue_names() -> None:
    args = build_parser().parse_args(["connect", "kafka", "--source", "genesys", "--topic", "gc-events",
                                      "--queue-name", "q-1=support", "--queue-name", "q-2=sales"])
    assert (args.source, args.topic, args.group) == ("genesys", "gc-events", None)
    assert dict(args.queue_name) == {"q-1": "support", "q-2": "sales"}
    for bad in ("q-1", "=x", "q-1=a|b"):
        with pytest.raises(argparse.ArgumentTypeError):
            connect_kafka.queue_name(bad)
