"""Running a real ``ccpulse worker`` process for integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaProducer

from ccpulse import probes
from ccpulse.probes import free_port




@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen | None = None
    role: str = "all"

    @classmethod
    def create(cls, bootstrap: str, tmp: Path, name: str, role: str = "all",
               **extra: str) -> "WorkerProcess":
        """A worker with its own topics, state, embedded store and free HTTP port under ``tmp``."""
        env = worker_env(bootstrap, tmp, name, **extra)
        return cls(env, tmp / "worker.log", int(env["CCPULSE_WEB_PORT"]), role=role)

    def sibling(self, tmp: Path, role: str = "all") -> "WorkerProcess":
        """Another worker of the same app (same topics and store DSN) with its own port and state."""
        env = dict(self.env, CCPULSE_WEB_PORT=str(free_port()), CCPULSE_STATE_DIR=str(tmp / "state"))
        tmp.mkdir(parents=True, exist_ok=True)
        return WorkerProcess(env, tmp / "worker.log", int(env["CCPULSE_WEB_PORT"]), role=role)

    @property
    def prefix(self) -> str:
        return self.env["CCPULSE_TOPIC_PREFIX"]

    @property
    def app_id(self) -> str:
        """Its Faust app id, which is also its consumer group."""
        return self.env["CCPULSE_APP_ID"]

    @property
    def bootstrap(self) -> str:
        return self.env["CCPULSE_KAFKA_BOOTSTRAP"]

    @property
    def clickhouse_path(self) -> str:
        return self.env["CCPULSE_CLICKHOUSE_DSN"][len("chdb://"):]

    def start(self, timeout: float = 90.0) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ccpulse.cli", "worker", "--loglevel", "info", "--role", self.role],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log_tail()}")
            status, _ = self.get("/health")
            if status == 200:
                return
            time.sleep(0.2)  # a cheap local request; ~90 worker starts in the suite
        raise RuntimeError(f"worker not healthy within {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
            if code != 0:  # a test asserts the code; the reason is only in the log
                print(f"worker exited with {code} on SIGTERM: {self.log_tail()}", file=sys.stderr)
            return code
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise RuntimeError(f"worker did not stop within {timeout}s: {self.log_tail()}")

    def wait_sink_idle(self, quiet_seconds: float = 2.0, timeout: float = 60.0) -> None:
        """Wait until the worker's ClickHouse writes stop growing: what Kafka holds is stored."""
        def written() -> float:
            return sum(v for (name, _labels), v in self.metrics().items()
                       if name == "ccpulse_sink_rows_written_total")
        deadline = time.monotonic() + timeout
        last, since = written(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = written()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_seconds:
                return
        raise RuntimeError(f"ClickHouse writes did not settle within {timeout}s")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Parse /metrics into {(name, sorted labels): value}."""
        return probes.parse_metrics(self.get("/metrics")[1])

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")


def worker_env(bootstrap: str, tmp: Path, name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
    env.update({
        "CCPULSE_KAFKA_BOOTSTRAP": bootstrap,
        "CCPULSE_TOPIC_PREFIX": f"{name}.",
        "CCPULSE_APP_ID": name,
        "CCPULSE_CLICKHOUSE_DSN": f"chdb://{tmp / 'clickhouse'}",
        "CCPULSE_STATE_DIR": str(tmp / "state"),
        "CCPULSE_WEB_PORT": str(free_port()),
        "CCPULSE_CONFIG": str(tmp / "ccpulse.toml"),
    })
    env.update(extra)
    if not Path(env["CCPULSE_CONFIG"]).exists():
        Path(env["CCPULSE_CONFIG"]).write_text("")
    return env


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]],
            one_at_a_time: bool = False) -> None:
    """Send ``messages`` in order and return once every one is acknowledged.

    By default all are sent before any acknowledgement is awaited: a round trip (plus
    linger) per message made 6,500 events take 41 s instead of 0.5 s. Order within a
    partition holds (aiokafka has one batch per partition in flight; idempotence keeps a
    retry from doubling one). ``one_at_a_time`` appends each message before the next is
    sent, across partitions too: a live trickle rather than a backlog read all at once.
    """
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                    enable_idempotence=True)
        await producer.start()
        try:
            if one_at_a_time:
                for key, value in messages:
                    await producer.send_and_wait(topic, value=value, key=key)
            else:
                sent = [await producer.send(topic, value=value, key=key) for key, value in messages]
                await asyncio.gather(*sent)
        finally:
            await producer.stop()
    asyncio.run(run())


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[Any]:
    """Every message of a topic from the beginning up to its end when called, as (key, value)."""
    return [(r.key, r.value) for r in probes.read_topic(bootstrap, topic, timeout)]


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    # A short default interval: a wait ends on average interval/2 after its condition holds,
    # and the suite has some 80 of them; a check that is expensive passes a longer one.
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def latest_windows(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """kpi.windows as a compacted consumer sees it: the highest version per key."""
    best: dict[str, dict[str, Any]] = {}
    for key, value in read_topic(bootstrap, topic):
        record = json.loads(value)
        k = key.decode()
        if k not in best or record["version"] >= best[k]["version"]:
            best[k] = record
    return best


def committed(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every partition of ``topic`` through its end (for a
    worker's store: every record of it written)."""
    async def check() -> bool:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await asyncio.gather(admin.start(), consumer.start())
        try:
            await consumer._client.force_metadata_update()  # a consumer with no subscription has none
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(tps)
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            # An empty partition has nothing to commit (and no committed offset to read).
            return bool(tps) and all(ends[tp] == 0 or (tp in offsets and offsets[tp].offset >= ends[tp])
                                     for tp in tps)
        finally:
            await asyncio.gather(admin.close(), consumer.stop())
    return asyncio.run(check())
