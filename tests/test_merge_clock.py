"""The merge stage forgets a window only when no source can still send a part of it (core/merge_clock.py)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ccpulse.core.merge_clock import MergeClock, expected_sources

MIN = 60_000
HORIZON, LATENESS, RETENTION = 5 * MIN, 2 * MIN, 10 * MIN


def clock(partitions: int = 2) -> MergeClock:
    return MergeClock(expected_sources(partitions), HORIZON, LATENESS, RETENTION)


def test_sources_are_every_lifecycle_fcr_and_agent_stage_partition() -> None:
    # An agent stage lagging behind sends its final time-in-state parts late: they must not
    # find their window forgotten (and be dropped as a redelivery).
    assert expected_sources(2) == {"0", "1", "fcr-0", "fcr-1", "agents-0", "agents-1"}


def test_nothing_is_done_until_every_source_has_reported() -> None:
    c = clock()
    for source in ("0", "1", "fcr-0", "agents-0", "agents-1"):
        c.observe(0, source, 100 * MIN)
    assert c.slowest(0) is None and not c.done_with(0, 0)
    c.observe(0, "fcr-1", 100 * MIN)
    assert c.slowest(0) == 100 * MIN and c.done_with(0, 0)


def test_the_slowest_source_decides_and_clocks_never_go_back() -> None:
    c = clock(1)
    c.observe(3, "0", 500 * MIN)
    c.observe(3, "fcr-0", 40 * MIN)
    c.observe(3, "agents-0", 500 * MIN)
    c.observe(3, "fcr-0", 30 * MIN)  # an older clock re-delivered
    assert c.slowest(3) == 40 * MIN
    end = 40 * MIN - HORIZON - LATENESS - RETENTION
    assert c.done_with(3, end - 1) and not c.done_with(3, end)


def test_clocks_are_per_merge_partition_and_unknown_sources_ignored() -> None:
    c = clock(1)
    c.observe(0, "0", 100 * MIN)
    c.observe(0, "fcr-0", 100 * MIN)
    c.observe(0, "agents-0", 100 * MIN)
    c.observe(0, "fcr-7", 1)  # not a source of this deployment
    assert c.done_with(0, 0) and c.slowest(1) is None and not c.done_with(1, 0)


def source_streams(rng: random.Random, partitions: int, windows: list[int]) -> dict[str, list[tuple]]:
    """Each source's messages in the order it sends them: its final parts, then its clock."""
    streams: dict[str, list[tuple]] = {}
    for source in sorted(expected_sources(partitions)):
        delay = LATENESS + (HORIZON if source.startswith("fcr-") else 0)
        has_part = {end for end in windows if rng.random() < 0.7}
        out: list[tuple] = []
        watermark, closed = 0, set()
        for _ in range(rng.randint(3, 12)):
            watermark += rng.randint(1, 40) * MIN
            for end in sorted(has_part - closed):
                if end + delay <= watermark:
                    out.append(("part", end, source))
                    closed.add(end)
            out.append(("clock", source, watermark))
        streams[source] = out
    return streams


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 3))
def test_no_part_arrives_for_a_forgotten_window(seed: int, partitions: int) -> None:
    rng = random.Random(seed)
    windows = sorted({rng.randint(1, 200) * MIN for _ in range(rng.randint(1, 8))})
    streams = source_streams(rng, partitions, windows)
    c = clock(partitions)
    entries: dict[int, set[str]] = {}
    forgotten: set[int] = set()
    # Any interleaving that keeps each source's own order (one merge partition).
    cursors = {s: 0 for s in streams}
    while any(cursors[s] < len(m) for s, m in streams.items()):
        source = rng.choice([s for s, m in streams.items() if cursors[s] < len(m)])
        message = streams[source][cursors[source]]
        cursors[source] += 1
        if message[0] == "clock":
            c.observe(0, message[1], message[2])
        else:
            _, end, src = message
            assert end not in forgotten, f"a part of window {end} from {src} arrived after it was forgotten"
            entries.setdefault(end, set()).add(src)
        for end in [e for e in entries if c.done_with(0, e)]:
            forgotten.add(end)
            del entries[end]


class RecordingOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[object, bytes | None, object, int | None]] = []

    def send(self, topic: object, key: bytes | None, value: object, partition: int | None = None) -> None:
        self.sent.append((topic, key, value, partition))


def test_a_source_sends_its_clock_to_every_merge_partition_when_it_moves() -> None:
    import orjson

    from streams.stages.merge import ClockSender

    outbox = RecordingOutbox()
    sender = ClockSender(outbox, "partials", 3)  # type: ignore[arg-type]
    sender.send("fcr-1", 0)  # no event time yet: nothing to say
    sender.send("fcr-1", 5 * MIN)
    sender.send("fcr-1", 5 * MIN)  # unchanged: not sent again
    assert [(t, p) for t, _, _, p in outbox.sent] == [("partials", 0), ("partials", 1), ("partials", 2)]
    assert [orjson.loads(v) for _, _, v, _ in outbox.sent] == [
        {"kind": "clock", "source": "fcr-1", "watermark": 5 * MIN}] * 3
    sender.forget("fcr-1")  # the partition moved away and back: its new state re-reports
    sender.send("fcr-1", 5 * MIN)
    assert len(outbox.sent) == 6
