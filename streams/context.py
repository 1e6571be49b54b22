"""The pipeline context every stage receives: settings, the app, its topics, tables and state.

Apart from ``streams.app`` (which builds it and registers every stage) so that a
stage can name it without importing the app, and so the app's stages: each stage
imports this module, none imports ``streams.app``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import faust

from ccpulse.config import Settings
from ccpulse.core.engine import PartitionEngine
from ccpulse.core.fcr import FcrEngine
from ccpulse.pseudonym import CustomerIdHasher
from sinks.clickhouse import ClickHouseWriter
from sinks.prometheus import PipelineMetrics
from streams.outbox import Outbox


class BrokerHealth(Protocol):
    """What /health reads of ``streams.broker_health.BrokerProbe`` (named here, not imported:
    broker_health is a stage, and it sets ``Pipeline.broker``)."""

    @property
    def up(self) -> bool: ...

    def detail(self) -> dict[str, Any]: ...


@dataclass
class Topics:
    """Every topic a stage reads or writes (Faust topics; None where the role has none)."""

    rekey: Any = None  # <app>-rekey: events off their interaction's partition, and clocks
    partials: Any = None  # <app>-window-partials -> merge
    contacts: Any = None  # <app>-contacts -> fcr
    interactions: Any = None  # <app>-interactions (role compute: rows for the writer)
    sla_observations: Any = None
    kpi_windows: Any = None
    kpi_agents: Any = None
    kpi_queue_state: Any = None
    dead_letter: Any = None
    sla_breaches: Any = None
    kpi_scorecards: Any = None
    input: Any = None  # calls, chats, tickets and <app>-rekey, in envelopes (the pipeline)
    input_raw: Any = None  # calls, chats, tickets record by record (the writer role's raw events)
    agent_facts: Any = None  # <app>-agent-facts: the pipeline's contacts by agent, forwarded presence, clocks
    agent_input: Any = None  # agents and <app>-agent-facts, in envelopes (the agent stage)

    def named(self, name: str) -> Any:
        """The topic of a settings name ([topics] kpi_windows, ...), for stages built from a list."""
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)


@dataclass
class Tables:
    """The Faust tables (changelogged state); None in the writer role."""

    interactions: Any = None  # interaction id -> Interaction
    partitions: Any = None  # partition -> PartitionRecord
    merged: Any = None  # window record key -> merged entry
    fcr_customers: Any = None
    fcr_records: Any = None
    sla: Any = None
    agent_timelines: Any = None  # agent id -> {"p": partition, "t": Timeline.to_doc()}
    agent_records: Any = None  # str(partition) -> the agent stage's partition record

    def items(self) -> list[tuple[str, Any]]:
        """(name, table) of the tables this role has."""
        return [(name, getattr(self, name)) for name in self.__dataclass_fields__
                if getattr(self, name) is not None]


@dataclass
class Pipeline:
    settings: Settings
    app: faust.App
    topics: Topics = field(default_factory=Topics)
    tables: Tables = field(default_factory=Tables)
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    metrics: PipelineMetrics | None = None
    writer: ClickHouseWriter | None = None
    fcr_engines: dict[int, FcrEngine] = field(default_factory=dict)
    role: str = "all"
    outbox: Outbox = None  # type: ignore[assignment]  # set right after the app exists
    broker: BrokerHealth | None = None  # set by streams.broker_health.register
    # HMAC of customer ids for FCR: set by streams.fcr.customer_hasher once the key is known
    fcr_hasher: CustomerIdHasher | None = None
    # Role all: the ClickHouse writes of the pipeline's checkpoint (streams.pipeline.DirectRows),
    # set by streams.storage.register; None when raw events and interaction rows go to topics.
    direct_rows: Any = None

    def internal(self, suffix: str) -> str:
        return f"{self.settings.topics.prefix}{self.settings.app_id}-{suffix}"
