"""Fuzzing the decoder from valid simulated events: mutations with a known expected reason,
contract invariants of whatever is accepted, round trips, and "what is accepted can be stored".

tests/test_decoder.py fuzzes arbitrary bytes and documents; here the starting points are
realistic events of every type (the simulators' output), so the deep validators are reached.
"""

from __future__ import annotations

import calendar
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ccpulse.commands.simulate import QueueModel, SimulationConfig
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig, generate_mixed_events
from schemas.events import (MAX_ID_CHARS, MAX_SCHEMA_VERSION, REASONS, TYPES, Event, Rejection, decode,
                            format_ms, name_problem)

NOW = calendar.timegm((2026, 6, 1, 0, 0, 0)) * 1000
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _pool() -> list[tuple[str, dict[str, Any]]]:
    """Valid events of every type, as the simulators publish them."""
    from datetime import datetime, timezone
    start = datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
    # Low rates over two days: tickets need hours to be solved, reopened and rated.
    voice = SimulationConfig(rate=0.005, seed=3, start=start, transfer_probability=0.3,
                             rating_probability=0.5, repeat_probability=0.2,
                             hold_probability=0.3, max_wait=10.0, callback_probability=0.2)
    chat = ChatConfig(rate=0.005, seed=3, start=start, queues=(QueueModel("chat-support", agents=1),),
                      patience_mean=30.0, rating_probability=0.5)
    ticket = TicketConfig(rate=0.005, seed=3, start=start, reopen_probability=0.3, rating_probability=0.5)
    # The chat simulator has no flow-outs nor callbacks: written here as a platform sends them.
    chats = [("chat", {"event_id": f"cx-{n}", "type": etype, "occurred_at": "2026-01-05T09:00:00.000Z",
                       "interaction_id": f"cx-{n}", "queue": "chat-support", "schema_version": 1, **extra})
             for n, (etype, extra) in enumerate([
                 ("chat.flowed_out", {"reason": "no_agents"}),
                 ("chat.flowed_out", {"reason": "overflow", "to_queue": "chat-overflow"}),
                 ("chat.callback_requested", {})])]
    return list(generate_mixed_events(voice, chat, ticket, 2 * 86400)) + chats


POOL = _pool()
STRING_FIELDS = ("event_id", "type", "occurred_at", "interaction_id", "queue", "agent_id", "customer_id",
                 "to_queue", "to_agent", "sender", "channel", "reason")
INT_FIELDS = ("schema_version", "csat", "nps")
ID_FIELDS = ("event_id", "interaction_id", "queue", "agent_id", "to_queue", "to_agent")
ALWAYS_REQUIRED = ("event_id", "type", "occurred_at", "interaction_id")

json_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def step_of(doc: dict[str, Any]) -> str:
    return TYPES[doc["type"]]


def required_fields(doc: dict[str, Any]) -> set[str]:
    """Fields whose absence alone makes this valid event a missing_field (EVENTS.md)."""
    step = step_of(doc)
    need = set(ALWAYS_REQUIRED)
    need |= {"offered": {"queue"}, "answered": {"agent_id"}, "message": {"sender"},
             "replied": {"sender"}, "flowed_out": {"reason"}}.get(step, set())
    if step == "transferred":  # to_queue and/or to_agent
        need |= {f for f in ("to_queue", "to_agent") if f in doc} if len(
            {"to_queue", "to_agent"} & doc.keys()) == 1 else set()
    if step == "rated":  # csat and/or nps
        present = {"csat", "nps"} & doc.keys()
        need |= present if len(present) == 1 else set()
    return need


def check_contract(result: Event | Rejection, family: str) -> None:
    """Whatever decode returns obeys EVENTS.md; an Event is safe for every sink downstream."""
    assert isinstance(result, (Event, Rejection)), result
    if isinstance(result, Rejection):
        assert result.reason in REASONS and isinstance(result.detail, str) and result.detail
        return
    for name in ("event_id", "interaction_id"):
        assert 1 <= len(getattr(result, name)) <= MAX_ID_CHARS
    for name in ("queue", "agent_id"):
        value = getattr(result, name)
        assert value is None or 1 <= len(value) <= MAX_ID_CHARS
    # Names become key parts and labels: never a separator or a hidden character.
    for value in (result.queue, result.agent_id, result.channel, result.details.get("to_queue"),
                  result.details.get("to_agent")):
        assert value is None or name_problem(value) is None, value
    assert result.type.split(".")[0] == family and result.step == TYPES[result.type]
    assert result.occurred_at_ms <= NOW + 86_400_000
    assert 1 <= result.schema_version <= MAX_SCHEMA_VERSION
    assert 1 <= len(result.channel) <= MAX_ID_CHARS
    if family == "ticket":
        assert result.channel not in ("voice", "chat")
    else:
        assert result.channel == {"call": "voice", "chat": "chat"}[family]
    d = result.details
    assert 1 <= d.get("csat", 1) <= 5 and 0 <= d.get("nps", 0) <= 10
    assert 0 <= d.get("wrapup_seconds", 0) <= 86400
    assert d.get("sender", "agent") in ("agent", "customer")
    reason = d.get("reason")
    assert reason is None or (1 <= len(reason) <= 64 and name_problem(reason) is None), reason
    assert (reason is not None) == (result.step == "flowed_out")


def to_wire(ev: Event) -> dict[str, Any]:
    """An Event written back as an EVENTS.md message (the form the simulators publish)."""
    doc: dict[str, Any] = {"event_id": ev.event_id, "type": ev.type, "occurred_at": format_ms(ev.occurred_at_ms),
                           "interaction_id": ev.interaction_id, "schema_version": ev.schema_version}
    for name in ("queue", "agent_id", "customer_id"):
        if getattr(ev, name) is not None:
            doc[name] = getattr(ev, name)
    if ev.attributes:
        doc["attributes"] = ev.attributes
    if ev.type.startswith("ticket."):
        doc["channel"] = ev.channel
    doc.update(ev.details)
    return doc


valid = st.sampled_from(POOL)


# -- valid input ------------------------------------------------------------------------


def test_the_pool_covers_every_type() -> None:
    assert {doc["type"] for _f, doc in POOL} == set(TYPES)


def test_every_simulated_event_is_valid_and_round_trips() -> None:
    for family, doc in POOL:
        ev = decode(orjson.dumps(doc), family, NOW)
        assert isinstance(ev, Event), (doc, ev)
        check_contract(ev, family)
        assert (ev.event_id, ev.type, ev.interaction_id) == (doc["event_id"], doc["type"], doc["interaction_id"])
        assert format_ms(ev.occurred_at_ms) == doc["occurred_at"]
        assert decode(orjson.dumps(to_wire(ev)), family, NOW) == ev


@FAST
@given(valid, st.text(min_size=1, max_size=10).filter(lambda k: k not in STRING_FIELDS + INT_FIELDS
                                                      + ("attributes", "wrapup_seconds", "public")),
       json_values)
def test_unknown_extra_fields_change_nothing(item: tuple[str, dict[str, Any]], key: str, value: Any) -> None:
    family, doc = item
    assert decode(orjson.dumps({**doc, key: value}), family, NOW) == decode(orjson.dumps(doc), family, NOW)


@FAST
@given(valid, st.sampled_from(["Z", "+00:00", "+05:30", "-08:00"]), st.sampled_from(["", "9", "999999"]))
def test_equivalent_timestamps_decode_alike(item: tuple[str, dict[str, Any]], zone: str, extra: str) -> None:
    from datetime import datetime, timedelta, timezone
    family, doc = item
    utc = datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00"))
    sign, hh, mm = (1, 0, 0) if zone == "Z" else (1 if zone[0] == "+" else -1, int(zone[1:3]), int(zone[4:6]))
    local = utc.astimezone(timezone(sign * timedelta(hours=hh, minutes=mm)))
    text = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}" + extra + zone
    ev = decode(orjson.dumps({**doc, "occurred_at": text}), family, NOW)
    assert isinstance(ev, Event) and ev == decode(orjson.dumps(doc), family, NOW)


# -- mutations with a known outcome ----------------------------------------------------


@FAST
@given(valid, st.data())
def test_dropping_or_nulling_a_field(item: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, doc = item
    field = data.draw(st.sampled_from(sorted(doc)))
    for mutated in ({k: v for k, v in doc.items() if k != field}, {**doc, field: None}):
        result = decode(orjson.dumps(mutated), family, NOW)
        check_contract(result, family)
        if field in required_fields(doc):
            assert isinstance(result, Rejection) and result.reason == "missing_field", (field, result)
            assert field in result.detail or field in ("to_queue", "to_agent", "csat", "nps")
        else:
            assert isinstance(result, Event), (field, result)


@FAST
@given(valid, st.data())
def test_retyping_a_field_is_wrong_type(item: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, doc = item
    field = data.draw(st.sampled_from(sorted(doc)))
    current = doc[field]
    ints = st.integers(-(2 ** 63), 2 ** 63 - 1)  # JSON as orjson writes it: no inf, 64-bit ints
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(current, str):
        other = ints | floats | st.booleans() | st.lists(st.text(), max_size=2) \
            | st.dictionaries(st.text(max_size=3), ints, min_size=1, max_size=2)
    elif isinstance(current, bool):
        other = ints | st.text() | st.lists(st.booleans(), max_size=2)
    elif isinstance(current, int) and field in INT_FIELDS:
        other = st.text() | st.booleans() | floats | st.lists(ints, max_size=2)
    elif isinstance(current, (int, float)):  # wrapup_seconds: any number goes
        other = st.text() | st.booleans() | st.lists(ints, max_size=2)
    elif isinstance(current, dict):  # attributes
        other = st.text() | ints | st.booleans() | st.lists(ints, max_size=2)
    else:
        pytest.fail(f"unexpected field {field}={current!r}")
    result = decode(orjson.dumps({**doc, field: data.draw(other)}), family, NOW)
    assert isinstance(result, Rejection) and result.reason == "wrong_type", (field, result)
    assert field in result.detail


@FAST
@given(valid, st.data())
def test_ids_over_128_chars_are_invalid(item: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, doc = item
    fields = [f for f in ID_FIELDS if f in doc]
    field = data.draw(st.sampled_from(fields))
    result = decode(orjson.dumps({**doc, field: data.draw(st.text(min_size=129, max_size=300))}), family, NOW)
    assert isinstance(result, Rejection) and result.reason == "invalid_value" and field in result.detail


@FAST
@given(valid, st.integers(-(2 ** 63), 2 ** 63 - 1))
def test_schema_version_range(item: tuple[str, dict[str, Any]], version: int) -> None:
    family, doc = item
    result = decode(orjson.dumps({**doc, "schema_version": version}), family, NOW)
    if 1 <= version <= MAX_SCHEMA_VERSION:
        assert isinstance(result, Event) and result.schema_version == version
    else:
        assert isinstance(result, Rejection) and result.reason == "invalid_value"


@FAST
@given(valid, st.sampled_from(sorted(TYPES)))
def test_changing_the_type(item: tuple[str, dict[str, Any]], etype: str) -> None:
    family, doc = item
    result = decode(orjson.dumps({**doc, "type": etype}), family, NOW)
    check_contract(result, family)
    if etype.split(".")[0] != family:
        assert isinstance(result, Rejection) and result.reason == "wrong_topic"


@FAST
@given(valid, st.integers(1, 10 ** 12))
def test_future_bound(item: tuple[str, dict[str, Any]], ahead_ms: int) -> None:
    family, doc = item
    at = NOW + ahead_ms
    result = decode(orjson.dumps({**doc, "occurred_at": format_ms(at)}), family, NOW)
    if ahead_ms > 86_400_000:
        assert isinstance(result, Rejection) and result.reason == "future_timestamp"
    else:
        assert isinstance(result, Event) and result.occurred_at_ms == at


@FAST
@given(valid, st.data())
def test_arbitrary_values_and_byte_damage_never_raise(item: tuple[str, dict[str, Any]],
                                                      data: st.DataObject) -> None:
    family, doc = item
    mutated = dict(doc)
    for field in data.draw(st.lists(st.sampled_from(sorted(doc) + ["channel", "attributes"]), max_size=3)):
        mutated[field] = data.draw(json_values)
    raw = bytearray(orjson.dumps(mutated))
    for _ in range(data.draw(st.integers(0, 3))):  # flip, cut or insert bytes
        at = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    check_contract(decode(bytes(raw), family, NOW), family)


@FAST
@given(json_values, st.sampled_from(["call", "chat", "ticket"]))
def test_arbitrary_json_values(value: Any, family: str) -> None:
    result = decode(orjson.dumps(value), family, NOW)
    check_contract(result, family)
    if not isinstance(value, dict):
        assert isinstance(result, Rejection) and result.reason == "not_object"
    else:
        assert isinstance(result, Rejection)  # no arbitrary object carries a known type by chance


# -- what the decoder accepts, the raw store can hold ---------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A raw_events table: an accepted event the sink refused would stop the writer for good."""
    from sinks.clickhouse import ClickHouseWriter
    path: Path = tmp_path_factory.mktemp("fuzz-store")
    writer = ClickHouseWriter(f"chdb://{path}")
    writer.open()
    yield writer
    writer.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(valid, st.integers(1, MAX_SCHEMA_VERSION),
                          st.integers(-62_135_596_800_000, NOW), st.text(max_size=40)), min_size=1, max_size=30))
def test_accepted_events_are_storable(store: Any, batch: list) -> None:
    from schemas.records import event_message
    from schemas.records import raw_event_row
    rows = []
    for i, ((family, doc), version, at, customer) in enumerate(batch):
        mutated = {**doc, "schema_version": version, "occurred_at": format_ms(at), "customer_id": customer or None,
                   "event_id": f"{doc['event_id']}-{i}-{at}"}
        raw = orjson.dumps(mutated)
        ev = decode(raw, family, NOW)
        assume(isinstance(ev, Event))
        rows.append(raw_event_row(orjson.loads(orjson.dumps(event_message(ev, raw, family + "s", 0, i)))))
    # A batch spanning many months is what a history replay sends: it must go in at once.
    store.insert_now("raw_events", rows)
