"""Creating the topics ccpulse reads and writes, with the right partitions and cleanup policy.

Every topic is created here, before a worker starts: the input and aggregate topics
so they do not depend on broker auto-creation defaults (``kpi.windows`` must be
compacted: one latest record per window key), ccpulse's internal topics, and the
tables' changelogs (``TABLES``: Faust would create them itself, too late for its
group leader to see them).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ccpulse import kafka_security
from ccpulse.config import Settings
from schemas.events import MAX_MESSAGE_BYTES


log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached or refused us (one-line message for the CLI)."""


class PartitionMismatch(RuntimeError):
    """The input topics are not co-partitioned with each other and the settings (one line)."""


def partition_mismatch(counts: dict[str, int], expected: int) -> str | None:
    """Why the pipeline cannot read ``counts`` (topic -> partitions) as one agent, or None.

    The pipeline applies every event of partition *p* of each input topic on one
    engine: with another count, events of one interaction keyed the same way land
    on partitions owned by different engines, and Faust does not assign the topics together.
    """
    distinct = set(counts.values())
    if distinct == {expected} or not counts:
        return None
    most = max(distinct, key=lambda n: sum(1 for c in counts.values() if c == n))
    odd = ", ".join(f"{name} has {n}" for name, n in sorted(counts.items()) if n != expected)
    return (f"the input topics must all have kafka.partitions = {expected} partitions "
            f"({odd}): set kafka.partitions = {most} in the settings (CCPULSE_KAFKA_PARTITIONS={most}) "
            f"if every input topic has {most}, "
            "or give each topic that many (kafka-topics.sh --alter --partitions N; keyed producers "
            "then place new events differently, so do it before the first events)")


def admin_kwargs(settings: Settings) -> dict:
    return {"bootstrap_servers": settings.kafka.bootstrap, **kafka_security.client_kwargs(settings.kafka)}


# A valid event may be MAX_MESSAGE_BYTES (EVENTS.md), but a topic's max.message.bytes
# counts the whole record batch (key, headers, batch header): with Kafka's default
# (1 MiB + 12 bytes) an event of exactly the limit is refused by the broker. Input
# topics take twice the limit, so a somewhat larger message still reaches the decoder
# and is dead-lettered as too_large, where ccpulse counts it, instead of bouncing off the
# broker. Producers need max.request.size (aiokafka: max_request_size) of this much too.
INPUT_MESSAGE_MAX_BYTES = 2 * MAX_MESSAGE_BYTES
# The re-key topic carries an event's raw payload as a JSON string (escaping can
# double it) plus its decoded fields.
EVENT_MESSAGE_MAX_BYTES = 4 * MAX_MESSAGE_BYTES


# Every Faust table of the worker (streams/app.py registers exactly these). Faust names a
# table's changelog "<app id>-<table>-changelog" and creates it when the table starts,
# moments before the consumer joins its group: a group leader whose metadata had not seen
# one yet assigned its partitions to nobody ("Ignoring missing topic"), for every
# rebalance after, and the table was never recovered (the agent stage's partition records
# in the chaos rebalance run: a new owner started cold). So they are created here, with
# the other topics, before any worker starts.
TABLES = ("interactions", "partition-records", "merged-windows", "fcr-customers", "fcr-records", "sla-state",
          "agent-timelines", "agent-records")


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog Faust gives ``table`` (``Collection._changelog_topic_name``)."""
    return f"{settings.app_id}-{table}-changelog"


def topic_specs(settings: Settings) -> dict[str, dict[str, str]]:
    t = settings.topics
    compact = {"cleanup.policy": "compact"}

    def internal(suffix: str) -> str:
        return f"{t.prefix}{settings.app_id}-{suffix}"

    keep_week = {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000)}
    inputs = {**keep_week, "max.message.bytes": str(INPUT_MESSAGE_MAX_BYTES)}
    return {
        t.name("calls"): inputs,
        t.name("chats"): inputs,
        t.name("tickets"): inputs,
        t.name("agents"): inputs,
        t.name("dead_letter"): {"cleanup.policy": "delete", "retention.ms": str(30 * 86400 * 1000)},
        t.name("kpi_windows"): compact,
        t.name("kpi_agents"): compact,
        t.name("kpi_queue_state"): compact,
        t.name("sla_breaches"): keep_week,
        t.name("kpi_scorecards"): compact,
        # ccpulse's internal topics (Faust would create them too, but only after
        # complaining at first start that they are missing).
        # Events not on their interaction's partition, forwarded by the pipeline to come back there.
        internal("rekey"): {**keep_week, "max.message.bytes": str(EVENT_MESSAGE_MAX_BYTES)},
        # The pipeline's contacts by agent, presence events off their agent's partition, clocks
        # (co-partitioned with agents: docs/agents.md).
        internal("agent-facts"): {**keep_week, "max.message.bytes": str(EVENT_MESSAGE_MAX_BYTES)},
        internal("window-partials"): {"cleanup.policy": "delete", "retention.ms": str(86400 * 1000)},
        internal("contacts"): keep_week,
        internal("interactions"): compact,
        # kpi.windows observations for the SLA stage, re-keyed by queue|channel.
        internal("sla-observations"): {"cleanup.policy": "delete", "retention.ms": str(86400 * 1000)},
        **{changelog_topic(settings, table): compact for table in TABLES},
    }


async def ensure_topics_async(settings: Settings, timeout: float = 15.0) -> list[str]:
    try:
        admin = AIOKafkaAdminClient(request_timeout_ms=int(timeout * 1000), **admin_kwargs(settings))
    except kafka_security.KafkaSecurityError as exc:
        raise KafkaUnavailable(str(exc)) from None
    try:
        with kafka_security.quiet_client_logs():
            await asyncio.wait_for(admin.start(), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await admin.close()
        # The admin client only says "Unable to bootstrap"; one direct connection
        # tells a wrong password or certificate from a broker that is down.
        with kafka_security.quiet_client_logs():
            cause = await kafka_security.diagnose(settings.kafka, timeout=min(timeout, 10.0))
        raise KafkaUnavailable(cause or kafka_security.describe(exc, settings.kafka)) from None
    try:
        existing = set(await admin.list_topics())
        inputs = [settings.topics.name(attr) for attr in ("calls", "chats", "tickets")]
        # Checked before creating anything: topics created now would take kafka.partitions
        # and hide the count the existing ones share (the one to advise). `agents` meets the
        # pipeline's facts by partition number on <app>-agent-facts: the same count.
        internal = [f"{settings.topics.prefix}{settings.app_id}-{suffix}" for suffix in ("rekey", "agent-facts")]
        copartitioned = [name for name in inputs + [settings.topics.name("agents")] + internal
                         if name in existing]
        problem = partition_mismatch(await _partition_counts(admin, copartitioned), settings.kafka.partitions)
        if problem is not None:
            raise PartitionMismatch(problem)
        specs = topic_specs(settings)
        missing = [NewTopic(name, settings.kafka.partitions, 1, topic_configs=config)
                   for name, config in specs.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
            await _until_served(admin, [topic.name for topic in missing], timeout)
        await _report_small_limits(admin, [name for name in inputs if name in existing])
        return [topic.name for topic in missing]
    finally:
        await admin.close()


async def _until_served(admin: AIOKafkaAdminClient, topics: list[str], timeout: float) -> None:
    """Return once a metadata request names every one of ``topics`` (or after ``timeout``).
    A created topic reaches the brokers' metadata a moment after CreateTopics returns:
    a worker asking in between is told it does not exist, and aiokafka asks again only
    at its next metadata refresh."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        served = await _partition_counts(admin, topics)
        if all(served.get(name) for name in topics) or asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(0.1)


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:  # a metadata request without topics may describe every topic of the cluster
        return {}
    described = await admin.describe_topics(topics)
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def _report_small_limits(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    """Warn about input topics that exist with a limit refusing valid events.

    Not altered: they may belong to the contact-center platform, and Kafka's
    AlterConfigs would replace every other setting of the topic with its default.
    """
    if not topics:
        return
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None}) for name in topics])
    except KafkaError as exc:  # e.g. no DescribeConfigs permission: only the warning is lost
        log.info("could not check the input topics' max.message.bytes: %s", exc)
        return
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            value = next((entry[1] for entry in entries if entry[0] == "max.message.bytes"), None)
            if value is not None and value.isdigit() and int(value) < INPUT_MESSAGE_MAX_BYTES:
                log.warning("topic %s: max.message.bytes is %s, so events near the 1 MiB limit are refused "
                            "by the broker; raise it with kafka-configs.sh --alter --entity-type topics "
                            "--entity-name %s --add-config max.message.bytes=%d",
                            name, value, name, INPUT_MESSAGE_MAX_BYTES)


def ensure_topics(settings: Settings, timeout: float = 15.0) -> list[str]:
    return asyncio.run(ensure_topics_async(settings, timeout))
