"""The cost per record of Faust's delivery: one event per record vs one envelope per fetched batch.

    python tests/measure_envelope_delivery.py [--records 200000] [--bootstrap HOST:PORT]

Produces the records to a 4-partition topic first, then times a worker (the real
InOrderConsumer fetch loop, in a subprocess) that reads them all with an agent doing
nothing but count: per record (``async for value in stream``, as the stages consume
today) or per envelope (``InOrderApp.batch_topic``). Without --bootstrap a local broker
is started and stopped. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4

WORKER = '''
import os, sys, time
import faust
from streams.kafka_consumer import InOrderApp
bootstrap, topic, mode, total, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
app = InOrderApp(f"measure-{mode}-{os.getpid()}", broker=f"kafka://{bootstrap}", store="memory://",
                 web_enabled=False, stream_wait_empty=False, consumer_auto_offset_reset="earliest",
                 logging_config=None, topic_partitions=4, broker_commit_interval=1.0,
                 datadir=out + ".faust")
seen = [0, 0.0]
def done():
    with open(out, "w") as f:
        f.write(f"{time.perf_counter() - seen[1]:.6f}")
    os._exit(0)
if mode == "envelope":
    @app.agent(app.batch_topic(topic))
    async def count(stream):
        async for envelope in stream:
            if not seen[0]:
                seen[1] = time.perf_counter()
            seen[0] += len(envelope)
            if seen[0] >= total:
                done()
else:
    @app.agent(app.topic(topic, value_serializer="raw"))
    async def count(stream):
        async for value in stream:
            if not seen[0]:
                seen[1] = time.perf_counter()
            seen[0] += 1
            if seen[0] >= total:
                done()
worker = faust.Worker(app, loglevel="warning", quiet=True)
worker.spinner = None
worker.execute_from_commandline()
'''


async def prepare(bootstrap: str, topic: str, records: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=512 * 1024)
    await producer.start()
    try:
        value = b'{"event_id":"e","type":"call.offered","occurred_at":"2026-01-05T08:00:00Z",' \
                b'"interaction_id":"i","queue":"billing"}'
        for i in range(records):
            await producer.send(topic, value=value, partition=i % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()


def timed(bootstrap: str, topic: str, mode: str, records: int, tmp: Path) -> float:
    out = tmp / f"{mode}.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", WORKER, bootstrap, topic, mode, str(records), str(out)],
                   env=env, check=True, timeout=1800)
    return float(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        bootstrap = args.bootstrap
        if bootstrap is None:
            from ccpulse.commands import local_kafka
            from ccpulse.probes import free_port
            bootstrap = local_kafka.start(tmp / "kafka", port=free_port(), fresh=True).bootstrap
        try:
            topic = f"measure-{uuid.uuid4().hex[:8]}"
            asyncio.run(prepare(bootstrap, topic, args.records))
            for mode in ("record", "envelope"):
                seconds = timed(bootstrap, topic, mode, args.records, tmp)
                print(f"{mode:>8}: {args.records} records in {seconds:.2f} s: "
                      f"{seconds / args.records * 1e6:.2f} µs per record, {args.records / seconds:,.0f} records/s")
        finally:
            if args.bootstrap is None:
                local_kafka.stop(tmp / "kafka")


if __name__ == "__main__":
    main()
