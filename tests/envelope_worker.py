"""A tiny Faust worker on the real fetch loop: one agent reads a batch topic in envelopes.

    python tests/envelope_worker.py BOOTSTRAP APP_ID TOPIC OUT_DIR

Each envelope received is appended to OUT_DIR/received.jsonl as
``{"pid", "generation", "partition", "offsets"}`` before it is acknowledged.
While OUT_DIR/hold exists, the first envelope of partition 0 is held
unacknowledged (written to received.jsonl with ``"held": true``) and acknowledged
once OUT_DIR/release exists. Used by tests/test_kafka_envelopes.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import faust

from streams.kafka_consumer import Envelope, InOrderApp


def build(bootstrap: str, app_id: str, topic_name: str, out: Path) -> faust.App:
    app = InOrderApp(
        app_id, broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
        # Short, so the tests see commits soon; the worker's own is 1 s.
        broker_commit_interval=0.2, broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
        stream_wait_empty=False, consumer_auto_offset_reset="earliest", logging_config=None,
        topic_partitions=4, datadir=str(out / "faust"))
    topic = app.batch_topic(topic_name, partitions=4)
    received = open(out / "received.jsonl", "a", buffering=1)
    held: list[Any] = []

    def note(envelope: Envelope, **extra: Any) -> None:
        received.write(json.dumps({"pid": os.getpid(), "generation": app.consumer_generation_id,
                                   "partition": envelope.partition,
                                   "offsets": [r.offset for r in envelope.records], **extra}) + "\n")

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        async for event in stream.noack().events():
            envelope = event.value
            assert isinstance(envelope, Envelope), envelope
            if envelope.partition == 0 and not held and (out / "hold").exists():
                held.append(event)
                note(envelope, held=True)
                continue
            note(envelope)
            event.ack()

    @app.timer(0.1)
    async def release() -> None:
        if held and (out / "release").exists():
            held.pop().ack()

    return app


def main() -> None:
    bootstrap, app_id, topic_name, out = sys.argv[1:5]
    app = build(bootstrap, app_id, topic_name, Path(out))
    worker = faust.Worker(app, loglevel="info", quiet=True)
    worker.spinner = None
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # aiokafka's consumer thread can outlive the loop


if __name__ == "__main__":
    main()
