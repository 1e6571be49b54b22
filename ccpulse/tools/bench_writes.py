"""What a worker writes to Kafka per input event: messages and bytes (key + value) on
every topic but the input ones, read back after a run (``ccpulse bench`` throughput).

Read back rather than counted in the worker, so an old tree (``--worker-pythonpath``)
is measured the same way. Compacted changelogs are read before the log cleaner runs
(it leaves the active segment alone), so every record written is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from aiokafka.admin import AIOKafkaAdminClient

from ccpulse.probes import read_topic_async


@dataclass(frozen=True)
class Writes:
    messages: int
    bytes: int
    by_topic: dict[str, tuple[int, int]]  # topic -> (messages, bytes)

    def per_event(self, events: int) -> tuple[float, float]:
        return self.messages / events, self.bytes / events


async def written(bootstrap: str, app_id: str) -> Writes:
    """Messages and key+value bytes on every topic of app ``app_id``: its internal topics
    (``<app_id>-...``, changelogs included) and outputs (``<app_id>.kpi.windows``, ...)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith((f"{app_id}-", f"{app_id}.")))
    finally:
        await admin.close()
    by_topic: dict[str, tuple[int, int]] = {}
    for topic in topics:
        records = await read_topic_async(bootstrap, topic, timeout=60.0)
        by_topic[topic] = (len(records), sum(len(r.key or b"") + len(r.value or b"") for r in records))
    return Writes(sum(m for m, _ in by_topic.values()), sum(b for _, b in by_topic.values()), by_topic)


