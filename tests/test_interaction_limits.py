"""Long interactions (issue 14, item 2): no scan for duplicates, a bounded step count, and a
changelog record that stays under Kafka's message limit.

Work is counted, not timed: ``RowReads`` counts the step rows an interaction decodes from
its packed form (a duplicate's confirmation, a re-derivation and an out-of-order insertion
decode them; an in-order step and a new step's duplicate check do not).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import orjson
import pytest

from ccpulse.core import lifecycle

from ccpulse.config import ConfigError, LimitSettings, Settings, load_settings
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.lifecycle import Interaction, Step
from ccpulse.core.windowing import Windowing

T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z
# Kafka's default max.message.bytes (the interactions changelog keeps the broker default).
BROKER_MESSAGE_LIMIT = 1_048_588


ROWS = re.compile(rb"\[\[-?[0-9]")


class RowReads:
    """Stands in for orjson inside ccpulse.core.lifecycle and counts the step rows decoded."""

    def __init__(self) -> None:
        self.reads = 0
        self.dumps, self.Fragment = orjson.dumps, orjson.Fragment

    def loads(self, data: bytes) -> Any:
        value = orjson.loads(data)
        if ROWS.match(data):  # an interaction's step rows (a fold starts with its names)
            self.reads += len(value)
        return value


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[RowReads]:
    counter = RowReads()
    monkeypatch.setattr(lifecycle, "orjson", counter)
    yield counter


def engine(max_steps: int = LimitSettings().max_steps_per_interaction) -> PartitionEngine:
    s = Settings()
    w = s.windows
    return PartitionEngine(0, Windowing(w.sizes, w.timezone, w.day_start_hour), w.allowed_lateness_seconds,
                           s.thresholds_for, w.interaction_horizon_seconds, max_steps=max_steps)


def message(i: int, name: str = "c", gap_ms: int = 1000) -> Step:
    return Step(T0 + 1000 + i * gap_ms, "message", f"m{i:08d}", name, name,
                sender="agent" if i % 2 else "customer", customer=name)


def chat(n: int, name: str = "c", gap_ms: int = 1000) -> list[Step]:
    """An offered and answered chat, then ``n`` alternating customer/agent messages."""
    return [Step(T0, "offered", "offer", name, customer=name), Step(T0 + 1, "answered", "answer", name, name),
            *(message(i, name, gap_ms) for i in range(n))]


def test_a_duplicate_is_found_without_reading_the_steps(rows: RowReads) -> None:
    inter = Interaction("i", "chat")
    for step in chat(3000):
        assert inter.add(step)
    assert rows.reads == 0  # in order: no step read back
    for restored in (inter, Interaction.from_bytes(inter.to_bytes())):
        rows.reads = 0
        # A new id is told new without decoding a step; a duplicate is confirmed by one
        # decoding (producer retries are rare), never by a scan per step.
        assert not restored.has(Step(T0 + 9_999_999, "message", "m00009999", "c"))
        assert rows.reads == 0
        assert not restored.add(message(1234))
        assert rows.reads <= 3002  # one decoding of its 3,002 steps
    eng = engine()
    restored = Interaction.from_bytes(inter.to_bytes())
    rows.reads = 0
    assert eng.apply(restored, message(2999), 1).duplicate
    assert rows.reads <= 3002
    rows.reads = 0
    assert not eng.apply(restored, message(3000), 2).duplicate
    assert rows.reads == 0


def test_an_out_of_order_step_is_placed_by_bisection() -> None:
    inter = Interaction("i", "chat")
    steps = chat(2000)
    for step in steps:
        inter.add(step)
    calls = 0
    original = Step.sort_key

    def counted(self: Step) -> tuple[int, int, str]:
        nonlocal calls
        calls += 1
        return original(self)

    Step.sort_key = counted  # type: ignore[method-assign]
    try:
        assert inter.add(Step(T0 + 1500, "message", "early", "c", "c", sender="agent"))
    finally:
        Step.sort_key = original  # type: ignore[method-assign]
    assert calls <= 2 * 12 + 2  # log2(2000) comparisons, not one per later step
    assert [s.event_id for s in inter.steps[:4]] == ["offer", "answer", "m00000000", "early"]


def test_derivation_work_per_event_is_bounded_by_the_step_limit(rows: RowReads) -> None:
    limit = 500
    eng = engine(max_steps=limit)
    inter = Interaction("i", "chat")
    worst = 0
    steps = chat(5000)
    # Every other step comes late (swapped with the next): each of those is inserted and
    # re-derives the interaction.
    for i in range(0, len(steps) - 1, 2):
        steps[i], steps[i + 1] = steps[i + 1], steps[i]
    for offset, step in enumerate(steps):
        before = rows.reads
        eng.apply(inter, step, offset)
        worst = max(worst, rows.reads - before)
    # At most two derivations of at most ``limit`` steps per accepted event (the facts
    # before and after an insertion), nothing for a refused one.
    assert 0 < worst <= 2 * limit
    assert rows.reads <= limit * (limit + 1)
    assert inter.step_count == limit


def test_steps_beyond_the_limit_are_refused_and_change_nothing() -> None:
    eng = engine(max_steps=10)
    inter = Interaction("i", "chat")
    steps = chat(20)
    outcomes = [eng.apply(inter, step, offset) for offset, step in enumerate(steps)]
    assert [o.too_long for o in outcomes] == [False] * 10 + [True] * 12
    assert not any(o.duplicate for o in outcomes)
    assert [s.event_id for s in inter.steps] == [s.event_id for s in steps[:10]]
    held, windows = inter.to_bytes(), {k: dict(v.counts) for k, v in eng.windows.items()}
    # Refused again when redelivered (nothing remembered of it), and a duplicate of an
    # accepted step is still a duplicate.
    assert eng.apply(inter, steps[15], 30).too_long
    assert eng.apply(inter, steps[3], 31).duplicate
    assert inter.to_bytes() == held
    assert {k: dict(v.counts) for k, v in eng.windows.items()} == windows
    assert eng.record.duplicates == 1


def test_the_changelog_record_of_the_longest_interaction_fits_kafka() -> None:
    """Worst case at the largest allowed limit: every name at the decoder's 128 characters,
    every message a minute after the last (a new window, a new response time, each time)."""
    limit = LimitSettings.MAX_STEPS_PER_INTERACTION
    eng = engine(max_steps=limit)
    name = "n" * 128
    inter = Interaction("i" * 128, "chat")
    steps = chat(limit - 2, name, gap_ms=61_001)
    for offset, step in enumerate(steps):
        step = Step(step.ts, step.step, step.event_id.ljust(128, "e"), step.queue, step.agent,
                    sender=step.sender, customer=step.customer)
        assert not eng.apply(inter, step, offset).too_long
    from streams.codecs import InteractionCodec
    encoded = InteractionCodec()._dumps(inter)
    assert encoded is not None
    # Well below the broker's limit: the record also carries its key and batch overhead.
    assert len(encoded) < 0.9 * BROKER_MESSAGE_LIMIT, len(encoded)
    restored = InteractionCodec()._loads(encoded)
    assert restored.steps == inter.steps and eng.facts(restored) == eng.facts(inter)


def test_an_old_changelog_record_is_still_read() -> None:
    """Records written before names were shared in one list (``names``) recover as they were."""
    old = {"id": "i", "ch": "chat", "last": T0 + 1,
           "steps": [[T0, "offered", "offer", "q", None, None, 0, None, True, None, None, False, "cust"],
                     [T0 + 1, "answered", "answer", "q", "ag", None, 0, None, True, None, None, False, None]],
           "applied": [[60, T0, "q", "q", "chat", "offered", 1, 1]], "p": 3}
    from streams.codecs import InteractionCodec
    for inter in (Interaction.from_dict(old), InteractionCodec()._loads(orjson.dumps(old))):
        assert inter.steps == [Step(T0, "offered", "offer", "q", customer="cust"),
                               Step(T0 + 1, "answered", "answer", "q", "ag")]
        assert inter.partition == 3
        # The facts it applied are derived again from its steps.
        assert eng_facts_60(inter) == {(60, T0, "q", "q", "chat", "offered", 1): 1,
                                       (60, T0, "q", "q", "chat", "answered", 1): 1}
        assert not inter.add(Step(T0, "offered", "offer", "q"))


def eng_facts_60(inter: Interaction) -> dict[tuple, int]:
    """The queue facts of 1-minute windows, counters only."""
    return {f: n for f, n in engine().facts(inter).items()
            if f[0] == 60 and f[2] == "q" and f[5] in ("offered", "answered")}


def test_the_step_limit_setting() -> None:
    assert load_settings(env={}).limits.max_steps_per_interaction == 2000
    assert load_settings(env={}, path=None).limits == LimitSettings()


@pytest.mark.parametrize("value, message", [
    (0, "limits.max_steps_per_interaction: must be 1-"),
    (LimitSettings.MAX_STEPS_PER_INTERACTION + 1, "limits.max_steps_per_interaction: must be 1-"),
    ("many", "limits.max_steps_per_interaction: 'many' is not a valid int"),
])
def test_a_wrong_step_limit_is_refused_with_one_line(tmp_path: Any, value: Any, message: str) -> None:
    config = tmp_path / "ccpulse.toml"
    config.write_text(f"[limits]\nmax_steps_per_interaction = {orjson.dumps(value).decode()}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
