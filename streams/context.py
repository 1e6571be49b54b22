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
class Pipeline:
    settings: Settings
    app: faust.App
    topics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
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
