"""The bad-input corpus: each item is refused by the decoder for exactly the reason it names,
and the corpus covers every reason the decoder can give."""

from __future__ import annotations

import calendar

import orjson
import pytest

from ccpulse.tools.bad_input import (BadInput, FAMILY_TOPIC_ATTR, OVERSIZE_TOPIC_CONFIG, bad_input_corpus,
                               covered_reasons)
from ccpulse.config import TopicSettings
from schemas.events import MAX_MESSAGE_BYTES, REASONS, Event, Rejection, decode

NOW = calendar.timegm((2026, 3, 1, 12, 0, 0)) * 1000
CORPUS = bad_input_corpus(NOW)


@pytest.mark.parametrize("item", CORPUS, ids=[item.name for item in CORPUS])
def test_each_item_is_refused_for_its_reason(item: BadInput) -> None:
    result = decode(item.value, item.family, NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == item.reason, result.detail


def test_every_decoder_reason_is_covered() -> None:
    # A reason added to schemas.events.REASONS without a corpus item fails here.
    assert covered_reasons(CORPUS) == set(REASONS)


def test_names_are_unique_and_families_known() -> None:
    names = [item.name for item in CORPUS]
    assert len(names) == len(set(names))
    assert {item.family for item in CORPUS} == set(FAMILY_TOPIC_ATTR)
    topics = TopicSettings(prefix="p.")
    assert {topics.name(item.topic_attr) for item in CORPUS} == {"p.calls", "p.chats", "p.tickets"}


def test_near_misses_differ_from_a_valid_event_only_where_they_mean_to() -> None:
    # The corpus must exercise the decoder's field checks, not fail early by accident:
    # a JSON-object item with its one broken field repaired decodes as a valid event.
    repairs = {"no-queue-on-offer": {"queue": "q"}, "numeric-event-id": {"event_id": "e"},
               "csat-6": {"csat": 5}, "far-future": {"occurred_at": "2026-01-05T08:00:00Z"},
               "chat-on-calls": {"type": "call.offered"}, "schema-version-0": {"schema_version": 1},
               "long-ticket-channel": {"channel": "web"}, "month-13": {"occurred_at": "2025-12-01T00:00:00Z"}}
    by_name = {item.name: item for item in CORPUS}
    for name, repair in repairs.items():
        doc = orjson.loads(by_name[name].value)
        doc.update(repair)
        assert isinstance(decode(orjson.dumps(doc), by_name[name].family, NOW), Event), name


def test_future_items_follow_the_worker_clock_and_bound() -> None:
    # One day past the bound: still refused with a worker clock a day ahead of the publisher's.
    later = bad_input_corpus(NOW, max_future_seconds=3600)
    item = next(i for i in later if i.name == "far-future")
    assert decode(item.value, "call", NOW + 86_400_000 - 1000, 3_600_000).reason == "future_timestamp"
    assert isinstance(decode(item.value, "call", NOW + 2 * 86_400_000, 3_600_000), Event)


def test_oversize_item_and_its_topic_setting() -> None:
    oversize = [item for item in CORPUS if item.oversize]
    assert [item.reason for item in oversize] == ["too_large"]
    assert MAX_MESSAGE_BYTES < len(oversize[0].value) <= int(OVERSIZE_TOPIC_CONFIG["max.message.bytes"])
    without = bad_input_corpus(NOW, include_oversize=False)
    assert not any(item.oversize for item in without)
    assert len(without) == len(CORPUS) - 1
