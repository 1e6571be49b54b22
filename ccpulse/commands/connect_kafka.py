"""``ccpulse connect kafka --source connect|genesys --topic T``: a platform's events already on Kafka.

Amazon Connect's contact events (EventBridge), agent events and contact records
(Kinesis), or Genesys Cloud's detail events (EventBridge), forwarded to a Kafka topic
by whatever bridge the site runs, one JSON payload per record. Each record is mapped
(``ccpulse.connectors.amazon_connect`` / ``genesys``) and published through
``ConnectorPublisher``.

At least once, nothing lost: the consumer group's offsets are committed only after
Kafka acknowledged every event mapped from the records before them. A connector killed
between the two reads those records again at its next start; their events keep their
ids (deterministic from the platform's ids), so the pipeline counts them once.

A record that cannot be mapped (not JSON, not a payload of the source, a field missing)
is dead-lettered with its reason and passed: it is never retried.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ccpulse.commands.errors import CommandError
from ccpulse.connectors.base import Mapped, MappingError
from ccpulse.connectors.payload import json_document

log = logging.getLogger("ccpulse.connect.kafka")

SOURCES = ("connect", "genesys")
MAX_RECORDS = 500  # per fetch: one publish and one commit per batch
SUMMARY_SECONDS = 60.0


def mapper(source: str) -> Callable[[Any, Mapping[str, str]], list[Mapped]]:
    """The ``map_record(doc, queue_names)`` of a ``--source``."""
    if source == "connect":
        from ccpulse.connectors import amazon_connect
        return amazon_connect.map_record
    if source == "genesys":
        from ccpulse.connectors import genesys
        return genesys.map_record
    raise CommandError(f"--source {source!r}: not one of {', '.join(SOURCES)}")


def map_value(source_map: Callable[[Any, Mapping[str, str]], list[Mapped]], value: bytes | None,
              queue_names: Mapping[str, str]) -> list[Mapped]:
    """One record's value -> its events; ``MappingError`` (not JSON, not a payload of the source)."""
    return source_map(json_document(value, "record"), queue_names)


@dataclass
class Tally:
    """What the connector did, for its log lines."""

    records: int = 0
    events: int = 0
    ignored: int = 0  # valid payloads with nothing ccpulse counts (a heartbeat, an IVR hang-up)
    dead: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        dead = ", ".join(f"{r} {n}" for r, n in sorted(self.dead.items())) or "none"
        return (f"{self.records:,} records read, {self.events:,} events published, "
                f"{self.ignored:,} with nothing to count, dead-lettered: {dead}")


async def consume(settings: Any, source: str, topic: str, group: str, stop: asyncio.Event,
                  queue_names: Mapping[str, str] | None = None, tally: Tally | None = None) -> Tally:
    """Map and publish ``topic``'s records until ``stop`` is set; commit after each stored batch."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import CommitFailedError, KafkaError

    from ccpulse.commands.connect_publish import ConnectorPublisher, until_stored
    from ccpulse.kafka_security import client_kwargs, describe, quiet_client_logs

    source_map = mapper(source)
    names = dict(queue_names or {})
    tally = tally if tally is not None else Tally()
    k = settings.kafka
    publisher = ConnectorPublisher(settings, source)
    await publisher.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=k.bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", **client_kwargs(k))
    try:
        with quiet_client_logs():
            await asyncio.wait_for(consumer.start(), 30)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await publisher.stop()
        raise CommandError(describe(exc, k)) from None
    summary_at = time.monotonic() + SUMMARY_SECONDS
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            if not batch:
                continue
            mapped: list[Mapped] = []
            dead: list[tuple[bytes, str, str]] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    tally.records += 1
                    try:
                        events = map_value(source_map, record.value, names)
                    except MappingError as exc:
                        where = f"{record.topic}/{record.partition}@{record.offset}"
                        dead.append((record.value or b"", exc.reason, f"{exc.detail} ({where})"))
                        continue
                    if not events:
                        tally.ignored += 1
                    mapped += events
                offsets[tp] = records[-1].offset + 1
            # Until Kafka took it; stopped before, the batch is not committed: read again at the next start.
            await until_stored(lambda: _publish(publisher, mapped, dead), stop)
            tally.events += len(mapped)
            for _raw, reason, _detail in dead:
                tally.dead[reason] = tally.dead.get(reason, 0) + 1
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # A rebalance took the partitions: their next owner reads the batch again and
                # its events dedup by id.
                log.warning("offsets not committed (%s); the batch will be read again", exc)
            if time.monotonic() >= summary_at:
                log.info("%s", tally.line())
                summary_at = time.monotonic() + SUMMARY_SECONDS
    finally:
        await asyncio.gather(consumer.stop(), publisher.stop(), return_exceptions=True)
    return tally


async def _publish(publisher: Any, mapped: list[Mapped], dead: list[tuple[bytes, str, str]]) -> None:
    await publisher.publish(mapped)
    for raw, reason, detail in dead:
        log.warning("record dead-lettered (%s: %s)", reason, detail)
        await publisher.dead_letter(raw, reason, detail)


def queue_name(text: str) -> tuple[str, str]:
    """``ID=NAME`` of ``--queue-name``."""
    qid, sep, name = text.partition("=")
    if not sep or not qid or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=NAME (a queue id, '=', the name to report)")
    from schemas.events import name_problem

    problem = name_problem(name)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"queue name {name!r} {problem}")
    return qid, name


def run(args: argparse.Namespace, settings: Callable[[], Any]) -> int:
    """``ccpulse connect kafka``: consume until SIGTERM/SIGINT, then finish the batch and exit 0."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="ccpulse connect kafka: %(message)s", stream=sys.stderr)
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    s = settings()
    group = args.group or f"{s.app_id}-connect-{args.source}"
    tally = Tally()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("reading %s as %s events (group %s)", args.topic, args.source, group)
        await consume(s, args.source, args.topic, group, stop, dict(args.queue_name or ()), tally)

    asyncio.run(main())
    log.info("stopped: %s", tally.line())
    return 0


def add_parser(sources: Any, settings: Callable[[], Any]) -> None:
    """Register ``connect kafka``."""
    p = sources.add_parser(
        "kafka", help="map a platform's events already on a Kafka topic (Amazon Connect, Genesys Cloud)",
        description="Consume a topic holding a platform's own events (one JSON payload per record), map "
                    "them and publish them to the input topics; the group's offsets are committed only "
                    "after Kafka acknowledged the mapped events (README, Connectors).")
    p.add_argument("--source", required=True, choices=SOURCES,
                   help="connect: Amazon Connect contact events, agent events and contact records; "
                        "genesys: Genesys Cloud conversation detail events")
    p.add_argument("--topic", required=True, metavar="T", help="the topic the platform's events are on")
    p.add_argument("--group", default=None, metavar="G",
                   help="consumer group (default: <app_id>-connect-<source>)")
    p.add_argument("--queue-name", type=queue_name, action="append", metavar="ID=NAME",
                   help="report the queue with this id (the last part of a Connect queue ARN, a Genesys "
                        "queueId) under this name; repeat for each queue")
    p.set_defaults(func=lambda args: run(args, settings))
