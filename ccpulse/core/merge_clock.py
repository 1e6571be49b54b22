"""When may the merge stage forget a final window? Per merge partition, the slowest source's clock.

A merged window has parts from several sources: each lifecycle partition ("0",
"1", ...), each FCR partition ("fcr-0", ...) and each agent-stage partition
("agents-0", ...: time in state, issue 16). A part is final once its source's
event time passes the window's close (end + lateness for KPI parts, end + FCR
horizon + lateness for FCR parts). Forgetting the window on the *newest* event time
any source reported loses the part of a source that lags behind -- an FCR stage
catching up after a restart, a lifecycle partition on a slower worker -- which then
arrives as a new window with nothing else in it.

So every source sends its watermark as a *clock* to every merge partition (after
the parts it covers, through the same producer: Kafka keeps them in order within
the partition). Once a merge partition holds a clock from every source, their
minimum is a time before which every source has already delivered all its parts
there. A window is forgotten only when that minimum is past its last close plus a
retention; a part arriving for a window that far back is a re-delivery of what was
already merged (a source re-sending after a crash), not new information.

Clocks live in memory: after a restart nothing is forgotten until every source has
reported again, which only delays the clean-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# The merge's names of an FCR and an agent-stage partition as sources: apart from the
# pipeline's partition numbers, which share the partials' topic.
FCR_SOURCE_PREFIX = "fcr-"
AGENTS_SOURCE_PREFIX = "agents-"


def fcr_source(partition: int) -> str:
    return f"{FCR_SOURCE_PREFIX}{partition}"


def expected_sources(partitions: int) -> frozenset[str]:
    """The lifecycle, FCR and agent-stage partitions whose parts a merged window can have."""
    return frozenset({str(p) for p in range(partitions)} | {fcr_source(p) for p in range(partitions)}
                     | {f"{AGENTS_SOURCE_PREFIX}{p}" for p in range(partitions)})


@dataclass
class MergeClock:
    sources: frozenset[str]
    horizon_ms: int     # the FCR horizon: the latest a window's last part closes after its end
    lateness_ms: int
    retention_ms: int   # kept this much longer, for the rolling view and stragglers
    # merge partition -> source -> newest watermark the source reported there
    clocks: dict[int, dict[str, int]] = field(default_factory=dict)

    def observe(self, partition: int, source: str, watermark: int) -> None:
        if source not in self.sources:
            return
        seen = self.clocks.setdefault(partition, {})
        if watermark > seen.get(source, -1):
            seen[source] = watermark

    def slowest(self, partition: int) -> int | None:
        """Event time every source has passed on this merge partition; None until all reported."""
        seen = self.clocks.get(partition, {})
        if len(seen) < len(self.sources):
            return None
        return min(seen.values())

    def done_with(self, partition: int, end_ms: int) -> bool:
        """Every source has delivered its final part of a window ending at ``end_ms``, long enough ago."""
        slowest = self.slowest(partition)
        return slowest is not None and \
            end_ms + self.horizon_ms + self.lateness_ms + self.retention_ms < slowest
