"""One record that makes a stage raise costs that record, never the batch around it.

Every agent applies its batch record by record inside ``StageGuard.each``. A record
whose processing raises is dead-lettered with reason ``processing_error`` (the
detail names the stage and the exception), counted in
``ccpulse_events_invalid_total{reason="processing_error"}``, and the rest of the
batch is applied. Stages keep their state consistent themselves: they change it
only once a record's processing can no longer fail (see ``PartitionEngine.apply``).

If an agent dies all the same (an exception outside a record's processing),
Faust would restart it and commit its batch's offsets as processed: its
``take_events`` acknowledges the whole batch on the way out and its error handler
commits. Instead the guard records the crash, the consumer commits nothing from
then on (streams/kafka_consumer.py), and ``/health`` answers 503 naming the stage:
a restart reads again from the last commit, which every stage takes idempotently.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson
from faust.types import AppT, TopicT

from ccpulse.log_limit import LogLimiter
from schemas.records import dead_letter
from sinks.prometheus import PipelineMetrics
from streams.outbox import Outbox
from streams.stages.validation import PROCESSING_ERROR, describe, processing_error

log = logging.getLogger(__name__)


class StageGuard:
    def __init__(self, metrics: PipelineMetrics, outbox: Outbox, dead_letters: TopicT) -> None:
        self._metrics, self._outbox, self._dead_letters = metrics, outbox, dead_letters
        self._log_limit = LogLimiter(10.0)
        # The first agent crash: "<agent>: <ExceptionType>: <message>"; None while none crashed.
        self.crashed: str | None = None

    def record(self, stage: str, message: Any) -> "_Record":
        """``with guard.record(stage, msg):`` around one record's processing: if it
        raises, the record is dead-lettered and the loop goes on with the next."""
        return _Record(self, stage, message)

    def record_failed(self, stage: str, message: Any, exc: Exception) -> None:
        now_ms = int(time.time() * 1000)
        raw, topic, partition, offset = _origin(message)
        self._metrics.events_invalid.labels(PROCESSING_ERROR).inc()
        self._metrics.dead_lettered.inc()
        rejection = processing_error(stage, exc)
        detail = rejection.detail
        self._outbox.send(self._dead_letters, message.key, dead_letter(
            raw, rejection, topic, partition, offset, now_ms))
        held = self._log_limit.allow(time.monotonic())
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            log.error("dead-lettered %s[%d]@%d: %s%s", topic, partition, offset, detail, more,
                      exc_info=exc)

    def agent_crashed(self, agent: str, exc: BaseException) -> None:
        if self.crashed is None:
            self.crashed = f"{agent}: {describe(exc)}"
        self._metrics.stage_crashes.labels(agent).inc()
        log.error("agent %s crashed; nothing is committed from now on, restart the worker "
                  "(it reads again from the last commit)", agent, exc_info=exc)

    def health_part(self) -> dict[str, Any]:
        if self.crashed is None:
            return {"ok": True, "detail": "no stage crashed"}
        return {"ok": False, "detail": f"agent {self.crashed}; offsets are no longer committed, "
                                       "restart the worker"}


class _Record:
    __slots__ = ("_guard", "_stage", "_message")

    def __init__(self, guard: StageGuard, stage: str, message: Any) -> None:
        self._guard, self._stage, self._message = guard, stage, message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # a cancel or an exit goes on up
        self._guard.record_failed(self._stage, self._message, exc)
        return True


def _origin(message: Any) -> tuple[bytes | None, str, int, int]:
    """The input event behind a record: forwarded events carry its bytes and source
    (schemas.records.event_message); any other record stands for itself."""
    raw = message.value
    try:
        doc = orjson.loads(raw) if raw else None
        topic, partition, offset = doc["source"]
        return doc["payload"].encode("utf-8"), str(topic), int(partition), int(offset)
    except Exception:  # noqa: BLE001 - not a forwarded event: the record itself
        return raw, message.topic, message.partition, message.offset


class _Pipeline(Protocol):  # streams.context.Pipeline, named without importing it
    app: AppT
    metrics: PipelineMetrics | None
    outbox: Outbox
    topics: dict[str, Any]


def stage_guard(pipe: _Pipeline) -> StageGuard:
    """The app's one guard (the consumer and /health find it on the app), made on first use."""
    guard = getattr(pipe.app, "stage_guard", None)
    if guard is None:
        assert pipe.metrics is not None
        guard = StageGuard(pipe.metrics, pipe.outbox, pipe.topics.dead_letter)
        pipe.app.stage_guard = guard  # type: ignore[attr-defined]
    return guard
