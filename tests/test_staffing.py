"""agents_required and agents_gap (METRICS.md "Agents and staffing"), against Erlang C
computed here independently: exact rational arithmetic with factorials, and
published worked examples."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ccpulse.core.staffing import (
    AGENTS_REQUIRED_CAP,
    agents_for_load,
    agents_gap,
    agents_required,
    agents_required_for_kind,
    erlang_c,
    service_level,
)


def exact_erlang_c(c: int, load: Fraction) -> Fraction:
    """The textbook formula, term by term, in exact rationals (the factorials are fine for small c)."""
    x = load ** c / math.factorial(c) * Fraction(c) / (c - load)
    y = sum(load ** i / math.factorial(i) for i in range(c))
    return x / (x + y)


def exact_service_level(c: int, load: Fraction, aht: float, threshold: float) -> float:
    if c <= load:
        return 0.0
    return 1.0 - float(exact_erlang_c(c, load)) * math.exp(-(c - float(load)) * threshold / aht)


def brute_force_agents(rate: float, aht: float, target: float, threshold: float) -> int:
    load = Fraction(rate) * Fraction(aht)
    c = max(1, math.floor(load) + 1)
    while exact_service_level(c, load, aht, threshold) < target:
        c += 1
    return c


# ---------------------------------------------------------------- published worked examples

def test_the_call_centre_helper_worked_example() -> None:
    # Call Centre Helper, "Erlang C Formula - Made Simple With an Easy Worked Example":
    # 100 calls per 30 minutes, AHT 180 s, 80% answered within 20 s -> 10 Erlangs; with
    # 11 agents a call waits with probability 68.21% and the service level is 39.0%;
    # 14 agents are the first to meet 80% (88.8%), before shrinkage.
    rate = 100 / 1800
    assert erlang_c(11, 10.0) == pytest.approx(0.6821, abs=5e-5)
    assert service_level(11, 10.0, 180, 20) == pytest.approx(0.390, abs=5e-4)
    assert service_level(13, 10.0, 180, 20) == pytest.approx(0.7956, abs=5e-5)  # just short of 80%
    assert service_level(14, 10.0, 180, 20) == pytest.approx(0.8884, abs=5e-5)
    assert agents_required(rate, 180, 0.8, 20) == 14


def test_the_westbay_worked_example() -> None:
    # Westbay Engineers, "The Erlang-C formula" worked example: 360 calls per half hour,
    # 4 minutes each, 55 agents, 15 s target -> 48 Erlangs, probability of waiting
    # 23.9%, ASA 8.2 s, service level 84.6%.
    load = 360 / 1800 * 240
    assert load == pytest.approx(48.0)
    assert erlang_c(55, load) == pytest.approx(0.2387, abs=5e-5)
    assert erlang_c(55, load) * 240 / (55 - load) == pytest.approx(8.18, abs=5e-3)
    assert service_level(55, load, 240, 15) == pytest.approx(0.8459, abs=5e-5)


# ---------------------------------------------------------------- against exact arithmetic

@pytest.mark.parametrize("load", [Fraction(1, 3), Fraction(1), Fraction(5, 2), Fraction(10), Fraction(47, 3),
                                  Fraction(30)])
def test_erlang_c_equals_the_exact_formula(load: Fraction) -> None:
    for c in range(math.floor(load) + 1, math.floor(load) + 25):
        assert erlang_c(c, float(load)) == pytest.approx(float(exact_erlang_c(c, load)), rel=1e-12)
    # Unstable (c <= load): every call waits.
    if load >= 1:
        assert erlang_c(math.floor(load), float(load)) == 1.0


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.001, 0.5), aht=st.floats(5.0, 900.0), target=st.floats(0.05, 0.99),
       threshold=st.floats(0.0, 120.0))
def test_agents_required_equals_a_brute_force_exact_search(rate: float, aht: float, target: float,
                                                           threshold: float) -> None:
    assume(rate * aht <= 60)  # the exact factorial arithmetic stays fast
    got = agents_required(rate, aht, target, threshold)
    want = brute_force_agents(rate, aht, target, threshold)
    if got != want:  # only a float tie at the target may differ, never more than one agent
        assert abs(got - want) == 1
        assert exact_service_level(min(got, want), Fraction(rate) * Fraction(aht), aht, threshold) \
            == pytest.approx(target, abs=1e-9)


# ---------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.0001, 50.0), aht=st.floats(1.0, 3600.0), target=st.floats(0.0, 0.999),
       threshold=st.floats(0.0, 600.0))
def test_meets_the_target_at_c_and_not_at_c_minus_one(rate: float, aht: float, target: float,
                                                       threshold: float) -> None:
    c = agents_required(rate, aht, target, threshold)
    assert c is not None
    load = rate * aht
    assume(c < AGENTS_REQUIRED_CAP)
    assert c > load, "fewer agents than the load: the queue grows without bound"
    assert service_level(c, load, aht, threshold) >= target
    assert c - 1 <= load or service_level(c - 1, load, aht, threshold) < target


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.0001, 20.0), aht=st.floats(1.0, 1800.0), target=st.floats(0.0, 0.99),
       threshold=st.floats(0.0, 300.0), more=st.floats(1.0, 3.0))
def test_monotone_in_the_arrival_rate_and_the_handle_time(rate: float, aht: float, target: float,
                                                          threshold: float, more: float) -> None:
    base = agents_required(rate, aht, target, threshold)
    assert base is not None
    assert agents_required(rate * more, aht, target, threshold) >= base
    assert agents_required(rate, aht * more, target, threshold) >= base
    assert agents_required(rate, aht, min(1.0, target + 0.005 * more), threshold) >= base
    assert agents_required(rate, aht, target, threshold / more) >= base


def test_large_loads_are_stable_and_fast() -> None:
    # 2000 Erlangs: A^c / c! overflows a float long before; the recursion does not.
    started = time.process_time()
    c = agents_required(2000 / 300, 300, 0.8, 20)
    assert time.process_time() - started < 1.0
    assert c is not None and 2000 < c < 2100
    assert service_level(c, 2000.0, 300, 20) >= 0.8 > service_level(c - 1, 2000.0, 300, 20)
    assert 0.0 <= erlang_c(c, 2000.0) <= 1.0


def test_an_absurd_load_stops_at_the_cap() -> None:
    started = time.process_time()
    assert agents_required(1e6, 600, 0.8, 20) == AGENTS_REQUIRED_CAP  # 600 million Erlangs
    assert agents_for_load(AGENTS_REQUIRED_CAP - 0.5, 600, 0.999, 1) == AGENTS_REQUIRED_CAP
    assert time.process_time() - started < 2.0


def test_a_target_of_one_terminates() -> None:
    c = agents_required(1.0, 180, 1.0, 20)
    assert c is not None and 180 < c <= AGENTS_REQUIRED_CAP


def test_unknown_handle_time_and_no_arrivals() -> None:
    assert agents_required(0.5, None, 0.8, 20) is None
    assert agents_required(0.5, 0.0, 0.8, 20) is None
    assert agents_required(0.0, None, 0.8, 20) is None
    assert agents_required(0.0, 180, 0.8, 20) == 0  # a known handle time and no calls: nobody needed
    assert agents_for_load(0.0, 180, 0.8, 20) == 0


@pytest.mark.parametrize("args", [
    (-1.0, 180, 0.8, 20), (math.nan, 180, 0.8, 20), (math.inf, 180, 0.8, 20), (0.5, -3.0, 0.8, 20),
    (0.5, math.inf, 0.8, 20), (0.5, 180, 1.2, 20), (0.5, 180, -0.1, 20), (0.5, 180, math.nan, 20),
    (0.5, 180, 0.8, -1), (0.5, 180, 0.8, math.inf),
])
def test_impossible_arguments_are_refused_by_name(args: tuple) -> None:
    with pytest.raises(ValueError, match=r"^(arrival_rate_per_s|aht_s|target_service_level|threshold_s): "):
        agents_required(*args)


def test_chat_divides_by_the_sessions_per_agent_and_tickets_have_none() -> None:
    rate, aht = 0.5, 150.0
    sessions = agents_required(rate, aht, 0.8, 60)
    assert sessions is not None
    assert agents_required(rate, aht, 0.8, 60, concurrency=3) == math.ceil(sessions / 3)
    assert agents_required_for_kind("chat", rate, aht, 0.8, 60, chat_sessions_per_agent=3) == math.ceil(sessions / 3)
    assert agents_required_for_kind("voice", rate, aht, 0.8, 20, chat_sessions_per_agent=3) \
        == agents_required(rate, aht, 0.8, 20)
    assert agents_required_for_kind("ticket", rate, aht, 0.8, 86400, chat_sessions_per_agent=3) is None
    with pytest.raises(ValueError, match="^concurrency: "):
        agents_required(rate, aht, 0.8, 60, concurrency=0)


def test_agents_gap() -> None:
    assert agents_gap(14, 12, 1) == 3  # 11 taking contacts, 14 needed: 3 short
    assert agents_gap(10, 12, 0) == -2  # 2 more than needed
    assert agents_gap(0, 0, 0) == 0
    assert agents_gap(None, 12, 1) is None  # no handle time yet: no requirement, no gap


# ---------------------------------------------------------------- the configured chat sessions

def test_chat_sessions_per_agent_is_configured_and_checked(tmp_path) -> None:
    from ccpulse.commands.simulate_channels import ChatConfig
    from ccpulse.config import ConfigError, load_settings

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    # The simulator's chat agents handle what the pipeline is configured to assume.
    assert load_settings(empty, env={}).staffing.chat_sessions_per_agent == ChatConfig().concurrency == 3
    path = tmp_path / "ccpulse.toml"
    path.write_text("[staffing]\nchat_sessions_per_agent = 4\n")
    assert load_settings(path, env={}).staffing.chat_sessions_per_agent == 4
    for bad in ("0", "101", "2.5", '"three"'):
        path.write_text(f"[staffing]\nchat_sessions_per_agent = {bad}\n")
        with pytest.raises(ConfigError, match=r"^staffing\.chat_sessions_per_agent: "):
            load_settings(path, env={})
