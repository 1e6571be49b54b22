"""The agent events of EVENTS.md ("Agents"): decoded into ``AgentEvent`` or refused with a
reason of ``REASONS``, never raising (schemas/events.py)."""

from __future__ import annotations

import calendar
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import REASONS, AgentEvent, Event, Rejection, decode, decode_agent

T_MS = calendar.timegm((2026, 11, 22, 9, 0, 0)) * 1000 + 250
NOW = T_MS + 60_000


def doc(etype: str = "agent.logged_in", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_id": "ag-1", "type": etype, "occurred_at": "2026-11-22T09:00:00.250Z",
                           "agent_id": "a-17"}
    if etype == "agent.logged_in":
        out["queues"] = ["billing", "sales"]
    if etype == "agent.state_changed":
        out["state"] = "away"
    out.update(extra)
    return {k: v for k, v in out.items() if v is not ...}


def run(d: Any, now: int = NOW) -> AgentEvent | Rejection:
    return decode_agent(orjson.dumps(d), now)


def rejected(result: Any, reason: str) -> None:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.reason in REASONS and result.detail


def test_logged_in_decodes() -> None:
    ev = run(doc())
    assert ev == AgentEvent("ag-1", "agent.logged_in", "a-17", T_MS, ("billing", "sales"), None, None, 1)


def test_logged_in_may_give_a_state_and_reason() -> None:
    ev = run(doc(state="away", reason="training"))
    assert isinstance(ev, AgentEvent) and (ev.state, ev.reason) == ("away", "training")


def test_state_changed_decodes_with_optional_queues_and_reason() -> None:
    ev = run(doc("agent.state_changed", state="away", reason="lunch", queues=["support"]))
    assert isinstance(ev, AgentEvent)
    assert (ev.state, ev.reason, ev.queues) == ("away", "lunch", ("support",))
    ev = run(doc("agent.state_changed", state="after_contact_work"))
    assert isinstance(ev, AgentEvent) and ev.queues is None and ev.reason is None


def test_logged_out_needs_neither_queues_nor_state() -> None:
    ev = run(doc("agent.logged_out"))
    assert isinstance(ev, AgentEvent) and ev.type == "agent.logged_out"


def test_interaction_id_and_queue_are_not_required_and_ignored() -> None:
    assert isinstance(run(doc(interaction_id="c-1", queue="billing")), AgentEvent)


@pytest.mark.parametrize("bad, reason", [
    ({"agent_id": ...}, "missing_field"),
    ({"agent_id": ""}, "missing_field"),
    ({"agent_id": 17}, "wrong_type"),
    ({"agent_id": "a|17"}, "invalid_value"),
    ({"queues": ...}, "missing_field"),
    ({"queues": "billing"}, "wrong_type"),
    ({"queues": ["billing", 3]}, "wrong_type"),
    ({"queues": ["bil|ling"]}, "invalid_value"),
    ({"queues": [""]}, "invalid_value"),
    ({"state": "busy"}, "invalid_value"),
    ({"state": 1}, "wrong_type"),
    ({"reason": ""}, "invalid_value"),
    ({"reason": "x" * 65}, "invalid_value"),
    ({"reason": 5}, "wrong_type"),
    ({"event_id": ...}, "missing_field"),
    ({"occurred_at": "yesterday"}, "bad_timestamp"),
    ({"occurred_at": "2026-11-24T09:00:00Z"}, "future_timestamp"),
    ({"schema_version": "1"}, "wrong_type"),
    ({"type": "agent.paused"}, "unknown_type"),
    ({"type": "call.offered"}, "wrong_topic"),
])
def test_bad_logins_are_refused_with_a_reason(bad: dict[str, Any], reason: str) -> None:
    rejected(run(doc(**bad)), reason)


@pytest.mark.parametrize("bad, reason", [
    ({"state": ...}, "missing_field"),
    ({"state": "offline"}, "invalid_value"),
    ({"queues": []}, "invalid_value"),
    ({"queues": {"a": 1}}, "wrong_type"),
])
def test_bad_state_changes_are_refused_with_a_reason(bad: dict[str, Any], reason: str) -> None:
    rejected(run(doc("agent.state_changed", **bad)), reason)


def test_an_agent_event_on_a_contact_topic_is_on_the_wrong_topic() -> None:
    rejected(decode(orjson.dumps(doc()), "call", NOW), "wrong_topic")


def test_bytes_level_rules_are_the_contact_topics() -> None:
    rejected(decode_agent(b"\xff\xfe", NOW), "not_utf8")
    rejected(decode_agent(b"{", NOW), "not_json")
    rejected(decode_agent(b"[]", NOW), "not_object")
    rejected(decode_agent(None, NOW), "not_json")
    rejected(decode_agent(b" " * (1 << 20) + b"{}", NOW), "too_large")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["event_id", "type", "occurred_at", "agent_id", "queues", "state",
                                        "reason", "schema_version"]),
                       st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.booleans(),
                                 st.lists(st.one_of(st.text(max_size=3), st.integers(0, 9)), max_size=3),
                                 st.sampled_from(["agent.logged_in", "agent.state_changed", "away",
                                                  "agent.logged_out", "2026-11-22T09:00:00Z"]))))
def test_never_raises(d: dict[str, Any]) -> None:
    result = run(d)
    assert isinstance(result, (AgentEvent, Rejection)) and not isinstance(result, Event)
