"""The Faust app: topics, tables and the agents of every stage, built from Settings.

    calls/chats/tickets/<app>-rekey ──pipeline──▶ <app>-window-partials ──merge──▶ kpi.windows ──▶ kpi_windows (CH)
                                        │  ├──▶ <app>-rekey (events not on their interaction's partition)
                                        │  ├──▶ <app>-contacts ──fcr──▶ <app>-window-partials
                                        │  ├──▶ <app>-agent-facts ◀── agents ──agents──▶ <app>-window-partials
                                        │  └──▶ events.dead-letter
                                        └──▶ raw_events, interactions (CH; role compute: <app>-interactions)

One pass per event (docs/streaming-layer.md); the pipeline is streams/pipeline.py.

Everything mutable lives on the ``Pipeline`` object owned by the app (streams/context.py).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import faust

from ccpulse.config import Settings
from ccpulse.core.engine import PartitionRecord
from ccpulse.core.lifecycle import Interaction
from sinks.prometheus import PipelineMetrics
from streams import codecs, memory
from streams.context import Pipeline
from streams.kafka_consumer import InOrderApp, convert_recovered_values
from streams.outbox import Outbox
from streams.topics import EVENT_MESSAGE_MAX_BYTES, TABLES

log = logging.getLogger(__name__)


def broker_credentials(settings: Settings) -> dict[str, Any]:
    """Faust broker settings for SASL/SSL (managed Kafka); empty for PLAINTEXT."""
    from ccpulse.kafka_security import broker_credentials as from_kafka_settings
    return from_kafka_settings(settings.kafka)


ROLES = ("all", "compute", "writer")
# How often a consumer refreshes its metadata (aiokafka's default: 5 minutes). The group
# leader assigns only the topics its metadata names: a topic it asked about a moment before
# the topic existed stayed unassigned (a table never recovered) until the next refresh;
# refreshed, the leader sees it and rebalances to assign it (aiokafka's metadata listener).
# The topics are created before a worker starts (streams/topics.py): this is the net. Every
# 5 s cost the latency bench about 0.5 to 1 s of kpi.windows p50 (3 runs; one at 60 s did not).
METADATA_MAX_AGE_MS = 60_000


def create_app(settings: Settings, role: str = "all") -> faust.App:
    """The worker app. ``role`` splits the work across processes (README, "Scaling out"):

    - ``all``: every stage, ClickHouse included (one worker, or several on a ClickHouse server);
    - ``compute``: every stage but the ClickHouse writers (they publish to Kafka only);
    - ``writer``: only the ClickHouse writers, in its own consumer group so one process
      owns every partition of the stored topics (the embedded chDB store is single-process).
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    codecs.register()
    bootstrap = ";".join(f"kafka://{host}" for host in settings.kafka.bootstrap.split(","))
    app = InOrderApp(
        settings.app_id if role != "writer" else f"{settings.app_id}-writer",
        broker=bootstrap,
        store="memory://",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=1,
        web_port=settings.web_port,
        web_bind=settings.web.bind,
        web_enabled=True,
        # Faust's own views answer without ccpulse's token and show table contents
        # (FCR contact histories, SLA state), the partition layout and host names.
        # The router serves only @table_route, which ccpulse does not use.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        # Offsets are committed often: each commit first flushes everything the
        # stage produced, so a crash replays little.
        broker_commit_interval=1.0,
        # A worker killed without leaving its group holds its partitions until the
        # session times out: 10 s, not Faust's 60 s, so a restart recovers sooner.
        # Heartbeats come from the consumer thread, so a busy loop does not lose them.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_commit_every=20000,
        stream_wait_empty=False,
        # Fewer, larger produce requests: each event fans out to several topics and
        # partitions, and 5 ms batches of 16 KiB spent a tenth of the time in socket writes.
        producer_linger_ms=20,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=EVENT_MESSAGE_MAX_BYTES,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        # Faust's leader topic serves on_leader timers and crontabs, which ccpulse does not
        # use. Created by Faust as the worker starts, it was missing from the first
        # assignment's metadata, and the refresh above then rebalanced the worker soon
        # after it started.
        topic_disable_leader=True,
        logging_config=None,
        datadir=f"{settings.state_dir}/faust",
        **broker_credentials(settings),
    )
    pipe = Pipeline(settings, app, role=role)
    pipe.outbox = Outbox(app)
    pipe.metrics = PipelineMetrics(lambda: pipe.engines, lambda: pipe.fcr_engines, lambda: dict(pipe.tables.items()))
    app.pipeline = pipe  # type: ignore[attr-defined]
    # Every role: glibc keeps what a backlog freed unless asked (measured in streams/memory.py).
    memory.register(app)

    t = settings.topics
    internal = dict(partitions=settings.kafka.partitions, internal=True, replicas=1)
    raw, json_ = codecs.DirectSchema("raw"), codecs.DirectSchema("orjson")
    pipe.topics.rekey = app.topic(pipe.internal("rekey"), schema=raw, **internal)
    pipe.topics.partials = app.topic(pipe.internal("window-partials"), schema=json_, **internal)
    pipe.topics.contacts = app.topic(pipe.internal("contacts"), schema=raw, **internal)
    pipe.topics.agent_facts = app.topic(pipe.internal("agent-facts"), schema=raw, **internal)
    pipe.topics.interactions = app.topic(pipe.internal("interactions"), schema=json_, compacting=True,
                                            **internal)
    for name in ("kpi_windows", "kpi_agents", "kpi_queue_state", "dead_letter", "sla_breaches",
                 "kpi_scorecards"):
        setattr(pipe.topics, name, app.topic(t.name(name), schema=json_))
    pipe.topics.sla_observations = app.topic(pipe.internal("sla-observations"), schema=json_, **internal)

    if role == "writer":
        # Its own consumer group reads the input for raw_events (streams/storage.py).
        pipe.topics.input_raw = app.topic(t.name("calls"), t.name("chats"), t.name("tickets"), schema=raw)
        from streams import storage, web
        storage.register(pipe)
        web.register(pipe)
        return app

    pipe.tables.interactions = _table(app, "interactions", "ccpulse_interaction", settings,
                                         Interaction.from_record)
    pipe.tables.partitions = _table(app, "partition-records", "ccpulse_partition_record", settings,
                                       PartitionRecord.from_dict)
    pipe.tables.merged = _table(app, "merged-windows", "orjson", settings, None)
    pipe.tables.fcr_customers = _table(app, "fcr-customers", "ccpulse_fcr_customer", settings,
                                          codecs.customer_from_dict)
    pipe.tables.fcr_records = _table(app, "fcr-records", "orjson", settings, None)
    pipe.tables.sla = _table(app, "sla-state", "orjson", settings, None)
    pipe.tables.agent_timelines = _table(app, "agent-timelines", "orjson", settings, None)
    pipe.tables.agent_records = _table(app, "agent-records", "orjson", settings, None)

    # The input topics and <app>-rekey are co-partitioned (checked at start,
    # streams.topics.partition_mismatch), so Faust assigns partition p of all four to one worker.
    pipe.topics.input = app.batch_topic(t.name("calls"), t.name("chats"), t.name("tickets"),
                                           pipe.internal("rekey"))
    # Co-partitioned too: the agent stage meets an agent's presence and contacts on one partition.
    pipe.topics.agent_input = app.batch_topic(t.name("agents"), pipe.internal("agent-facts"))
    from streams import agents, fcr, merge, pipeline, sla, storage, wallboard, web
    if settings.clickhouse.enabled and role == "all":
        storage.register(pipe)  # first: the pipeline's checkpoint stores through it
    pipeline.register(pipe)
    agents.register(pipe)
    fcr.register(pipe)
    merge.register(pipe)
    sla.register(pipe)
    web.register(pipe)
    wallboard.register(pipe)
    return app


def _table(app: faust.App, name: str, value_serializer: str, settings: Settings,
           from_dict: Callable[[dict], Any] | None) -> Any:
    if name not in TABLES:  # its changelog would be left to Faust to create (streams/topics.py)
        raise ValueError(f"table {name!r} is not in streams.topics.TABLES")
    table = app.Table(name, partitions=settings.kafka.partitions,
                      schema=faust.Schema(key_serializer="json", value_serializer=value_serializer))
    # Faust derives the changelog codecs from key_type/value_type, not from the
    # schema, and may build the changelog topic before we can say otherwise:
    # writes use ccpulse's codec, and recovery turns whatever it decoded back
    # into the domain object.
    table.key_serializer = "json"
    table.value_serializer = value_serializer
    if from_dict is not None:
        convert_recovered_values(table, lambda v: _recovered(name, v, from_dict))
    return table


def _recovered(table: str, value: Any, from_dict: Callable[[Any], Any]) -> Any:
    # A record as JSON decoded it: an object, or an array (the compact interaction record).
    if not isinstance(value, (dict, list)):
        return value
    try:
        return from_dict(value)
    except (KeyError, TypeError, ValueError) as exc:
        # One unreadable changelog record must not block recovery of the rest.
        log.error("table %s: skipping an unreadable changelog record (%r)", table, exc)
        return None
