"""Issue 17: the Asterisk queue_log mapper (pure), against fixtures written from Asterisk's docs.

Every mapped event must pass the pipeline's own validation: a mapper that emits what the
pipeline dead-letters is a bug. The expected events are written out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ccpulse.connectors.asterisk import QueueLogMapper, agent_id
from ccpulse.connectors.base import Mapped, MappingError
from schemas.events import AgentEvent, Event, validate, validate_agent

FIXTURES = Path(__file__).parent / "fixtures" / "connectors" / "asterisk"
T0 = 1767600000  # 2026-01-05T08:00:00Z
NOW_MS = (T0 + 86400) * 1000


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text(encoding="utf-8").splitlines()


def map_all(text_lines: list[str], mapper: QueueLogMapper | None = None) -> list[Mapped]:
    mapper = mapper or QueueLogMapper()
    return [m for line in text_lines for m in mapper.map_line(line)]


def at(epoch: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def call(etype: str, iid: str, epoch: int, queue: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "call", {"type": etype, "occurred_at": at(epoch), "interaction_id": iid, "queue": queue,
                    "schema_version": 1, **fields}


def agent(etype: str, aid: str, epoch: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "agent", {"type": etype, "occurred_at": at(epoch), "agent_id": aid, "schema_version": 1, **fields}


def without_ids(mapped: list[Mapped]) -> list[tuple[str, dict[str, Any]]]:
    return [(m.family, {k: v for k, v in m.event.items() if k != "event_id"}) for m in mapped]


def assert_pipeline_takes(mapped: list[Mapped]) -> None:
    for m in mapped:
        if m.family == "agent":
            result: Any = validate_agent(m.event, NOW_MS)
            assert isinstance(result, AgentEvent), (m.event, result)
        else:
            result = validate(m.event, m.family, NOW_MS)
            assert isinstance(result, Event), (m.event, result)


def test_every_event_maps_as_the_readme_table_says() -> None:
    mapped = map_all(lines("every_event.queue_log"))
    s = lambda offset: T0 + offset  # noqa: E731
    u = "1767600010.1"
    assert without_ids(mapped) == [
        agent("agent.logged_in", "1001", s(2), queues=["support"], state="available"),
        agent("agent.logged_in", "1001", s(3), queues=["support", "sales"], state="available"),
        agent("agent.logged_in", "alice", s(4), queues=["support"], state="available"),
        call("call.offered", u, s(10), "support", customer_id="5551001"),
        call("call.answered", u, s(25), "support", agent_id="1001"),
        call("call.ended", u, s(205), "support", agent_id="1001", attributes={"ended_by": "agent"}),
        call("call.offered", "1767600030.3", s(30), "support", customer_id="5551002"),
        call("call.abandoned", "1767600030.3", s(70), "support"),
        call("call.offered", "1767600100.4", s(100), "support"),  # caller id "unknown": none
        call("call.flowed_out", "1767600100.4", s(400), "support", reason="timeout"),
        call("call.offered", "1767600110.5", s(110), "sales", customer_id="5551003"),
        call("call.flowed_out", "1767600110.5", s(120), "sales", reason="no_agents"),
        call("call.offered", "1767600130.6", s(130), "sales", customer_id="5551004"),
        call("call.flowed_out", "1767600130.6", s(150), "sales", reason="caller_key", attributes={"key": "5"}),
        call("call.offered", "1767600200.7", s(200), "support", customer_id="5551005"),
        call("call.answered", "1767600200.7", s(205), "support", agent_id="alice"),
        call("call.transferred", "1767600200.7", s(305), "support", agent_id="alice",
             to_agent="7200@from-internal", attributes={"transfer": "blindtransfer"}),
        call("call.ended", "1767600200.7", s(305), "support", agent_id="alice", attributes={"ended_by": "transfer"}),
        # The same caller channel enters the queue it was transferred to: a new visit.
        call("call.offered", "1767600200.7.t1", s(306), "sales", customer_id="5551005"),
        call("call.answered", "1767600200.7.t1", s(316), "sales", agent_id="1001"),
        call("call.ended", "1767600200.7.t1", s(376), "sales", agent_id="1001", attributes={"ended_by": "caller"}),
        call("call.offered", "1767600500.10", s(500), "support", customer_id="5551006"),
        call("call.answered", "1767600500.10", s(510), "support", agent_id="alice"),
        call("call.transferred", "1767600500.10", s(570), "support", agent_id="alice",
             to_agent="BRIDGE:1767600560.12", attributes={"transfer": "attendedtransfer"}),
        call("call.ended", "1767600500.10", s(570), "support", agent_id="alice", attributes={"ended_by": "transfer"}),
        call("call.offered", "1767600600.13", s(600), "support", customer_id="5551007"),
        call("call.answered", "1767600600.13", s(610), "support", agent_id="alice"),
        call("call.transferred", "1767600600.13", s(640), "support", agent_id="alice",
             to_agent="1002@from-internal", attributes={"transfer": "transfer"}),
        call("call.ended", "1767600600.13", s(640), "support", agent_id="alice", attributes={"ended_by": "transfer"}),
        # PAUSEALL and its per-queue PAUSE lines: one change of state.
        agent("agent.state_changed", "1001", s(700), state="away", reason="lunch"),
        # Unpaused in one queue: takes calls again; the second UNPAUSE changes nothing.
        agent("agent.state_changed", "1001", s(760), state="available"),
        agent("agent.state_changed", "1001", s(800), queues=["support"], state="available"),
        agent("agent.logged_out", "1001", s(801)),
    ]
    assert_pipeline_takes(mapped)
    ids = [m.event["event_id"] for m in mapped]
    assert len(set(ids)) == len(ids)
    # Deterministic: a second read of the same file (a replay, a resend) gives the same ids.
    assert [m.event["event_id"] for m in map_all(lines("every_event.queue_log"))] == ids


def test_the_definitive_guide_sample() -> None:
    mapped = map_all(lines("definitive_guide_sample.queue_log"))
    first, second = "psy1-1292281041.87", "psy1-1292284515.93"
    assert without_ids(mapped) == [
        call("call.offered", first, 1292281046, "7100", customer_id="4165551212"),
        call("call.answered", first, 1292281048, "7100", agent_id="9990"),
        call("call.ended", first, 1292284121, "7100", agent_id="9990", attributes={"ended_by": "caller"}),
        # Removed from queues it was added to before the file began: not in any known queue.
        agent("agent.logged_out", "9990", 1292284222),
        agent("agent.logged_out", "9990", 1292284222),
        agent("agent.logged_in", "9990", 1292284491, queues=["7100"], state="available"),
        agent("agent.logged_in", "9990", 1292284491, queues=["7100", "7200"], state="available"),
        call("call.offered", second, 1292284519, "7100", customer_id="4165551212"),
        call("call.answered", second, 1292284521, "7100", agent_id="9990"),
        agent("agent.state_changed", "9990", 1292284552, queues=["7200"], state="available"),
    ]
    assert_pipeline_takes(mapped)


@pytest.mark.parametrize("member, expected", [
    ("SIP/1001", "1001"), ("PJSIP/1001", "1001"), ("Local/9990@MemberConnector", "9990"),
    ("Local/1001@from-queue/n", "1001"), ("Agent/1003", "1003"), ("Alice Smith", "Alice Smith"),
    ("IAX2/office-7", "office-7"),
])
def test_agent_ids_drop_the_channel_technology(member: str, expected: str) -> None:
    assert agent_id(member) == expected


@pytest.mark.parametrize("line, reason", [
    ("garbage", "bad_line"),
    ("1767600000|1.1|support", "bad_line"),
    ("yesterday|1.1|support|NONE|ENTERQUEUE||555|1", "bad_timestamp"),
    ("1767600000|1.1|support|NONE|FROBNICATE|x", "unknown_event"),
    ("1767600000|NONE|support|NONE|ENTERQUEUE||555|1", "missing_field"),
    ("1767600000|1.1|NONE|NONE|ENTERQUEUE||555|1", "missing_field"),
    ("1767600000|1.1|support|NONE|CONNECT|2|1.2|0", "missing_field"),
    ("1767600000|1.1|sup\x07port|NONE|ENTERQUEUE||555|1", "invalid_value"),
    ("1767600000|MANAGER|support| SIP/1001|ADDMEMBER|", "invalid_value"),
    ("1767600000|MANAGER|support|NONE|ADDMEMBER|", "missing_field"),
])
def test_a_line_that_cannot_be_mapped_is_a_mapping_error_with_its_reason(line: str, reason: str) -> None:
    with pytest.raises(MappingError) as caught:
        QueueLogMapper().map_line(line)
    assert caught.value.reason == reason


def test_a_restart_from_the_saved_state_maps_exactly_as_one_run() -> None:
    text = lines("every_event.queue_log")
    whole = map_all(text)
    for split in range(len(text) + 1):
        before = QueueLogMapper()
        head = map_all(text[:split], before)
        after = QueueLogMapper()
        after.restore(json.loads(json.dumps(before.snapshot())))  # as the state file holds it
        assert head + map_all(text[split:], after) == whole, f"split at line {split}"


def test_the_transfer_memory_is_bounded_by_a_day_of_event_time() -> None:
    mapper = QueueLogMapper()
    map_all([f"{T0}|9.1|support|NONE|ENTERQUEUE||555|1", f"{T0 + 5}|9.1|support|SIP/1|CONNECT|5|9.2|1",
             f"{T0 + 9}|9.1|support|SIP/1|BLINDTRANSFER|7200|ctx|5|4|1"], mapper)
    assert mapper.snapshot()["transfers"] == [["9.1", 1, T0 + 9]]
    # A day later another call's line expires it.
    map_all([f"{T0 + 9 + 86401}|9.9|support|NONE|ENTERQUEUE||555|1"], mapper)
    assert mapper.snapshot()["transfers"] == []
