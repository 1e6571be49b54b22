"""Worker processes and Kafka/ClickHouse probes for ``ccpulse chaos``.

A ``ChaosWorker`` is a real ``ccpulse worker`` subprocess in its own process
group (so kill -9 takes the whole worker down at once, like a node failure),
with its own config file, state dir, HTTP port and embedded store. The probes
read what the pipeline produced the way an operator would: Kafka topics,
consumer-group offsets, ``/health``, ``/metrics`` and the ClickHouse tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ccpulse.probes import MetricKey, coordinated, free_port, parse_metrics, read_topic_async

# Every worker spawned by this process, so a failing run can still kill them all.
LIVE: list["ChaosWorker"] = []


@dataclass
class ChaosWorker:
    """One ``ccpulse worker --role ROLE`` process of an app (``env`` names the app and its store)."""

    env: dict[str, str]
    workdir: Path
    role: str = "all"
    process: subprocess.Popen | None = None
    starts: int = 0

    @classmethod
    def create(cls, bootstrap: str, workdir: Path, app: str, config: str, role: str = "all") -> "ChaosWorker":
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "ccpulse.toml").write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
        env.update({
            "CCPULSE_KAFKA_BOOTSTRAP": bootstrap,
            "CCPULSE_TOPIC_PREFIX": f"{app}.",
            "CCPULSE_APP_ID": app,
            "CCPULSE_CLICKHOUSE_DSN": f"chdb://{workdir / 'clickhouse'}",
            "CCPULSE_STATE_DIR": str(workdir / "state"),
            "CCPULSE_WEB_PORT": str(free_port()),
            "CCPULSE_CONFIG": str(workdir / "ccpulse.toml"),
        })
        return cls(env, workdir, role)

    def sibling(self, workdir: Path, role: str) -> "ChaosWorker":
        """Another worker of the same app and store, with its own HTTP port and state."""
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, CCPULSE_WEB_PORT=str(free_port()), CCPULSE_STATE_DIR=str(workdir / "state"))
        return ChaosWorker(env, workdir, role)

    @property
    def app(self) -> str:
        return self.env["CCPULSE_APP_ID"]

    @property
    def prefix(self) -> str:
        return self.env["CCPULSE_TOPIC_PREFIX"]

    @property
    def port(self) -> int:
        return int(self.env["CCPULSE_WEB_PORT"])

    @property
    def store_path(self) -> str:
        return self.env["CCPULSE_CLICKHOUSE_DSN"][len("chdb://"):]

    @property
    def group(self) -> str:
        """The worker's Kafka consumer group (the writer role has its own)."""
        return f"{self.app}-writer" if self.role == "writer" else self.app

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def spawn(self) -> float:
        """Start the process and return at once (monotonic start time)."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ccpulse.cli", "worker", "--loglevel", "info", "--role", self.role],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        LIVE.append(self)
        return time.monotonic()

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait for /health 200; return the seconds it took."""
        started = self.spawn()
        self.wait_healthy(timeout)
        return time.monotonic() - started

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.app} {self.role} worker exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            if self.health()[0] == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.app} {self.role} worker not healthy within {timeout:.0f}s: {self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL the whole process group: no shutdown hook, no final commit."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: commits and leaves the group); SIGKILL after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise RuntimeError(f"{self.app} {self.role} worker did not stop within {timeout:.0f}s")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def health(self) -> tuple[int, dict[str, Any]]:
        status, text = self.get("/health")
        try:
            return status, json.loads(text) if text else {}
        except ValueError:
            return status, {}

    def metrics(self) -> dict[MetricKey, float]:
        _, text = self.get("/metrics")
        return parse_metrics(text)

    def rss_kib(self) -> int | None:
        """Resident set size from /proc (psutil is not a dependency)."""
        pid = self.pid
        if pid is None:
            return None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""


def kill_all() -> None:
    """SIGKILL every worker this process started that is still running."""
    while LIVE:
        LIVE.pop().kill9()


# ---------------------------------------------------------------- Kafka probes

def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


async def _end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        return dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()


def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    return run_async(_end_offsets(bootstrap, topics))


async def _committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        offsets = await coordinated(lambda: admin.list_consumer_group_offsets(group))
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()


def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    return run_async(_committed(bootstrap, group))


@dataclass
class GroupLag:
    """Messages a consumer group still has to process, over the topics it has committed on."""

    total: int
    by_topic: dict[str, int] = field(default_factory=dict)


def group_lag(bootstrap: str, group: str, topics: list[str] | None = None) -> GroupLag:
    """Lag of ``group`` on ``topics`` (default: every topic it committed on); a partition
    without a commit counts as fully lagging."""
    done = committed(bootstrap, group)
    wanted = sorted(topics) if topics else sorted({tp.topic for tp in done})
    lag = GroupLag(0)
    if not wanted:  # nothing committed yet: aiokafka cannot look up zero topics
        return lag
    ends = end_offsets(bootstrap, wanted)
    for tp, end in ends.items():
        behind = max(0, end - done.get(tp, 0))
        if behind:
            lag.by_topic[tp.topic] = lag.by_topic.get(tp.topic, 0) + behind
            lag.total += behind
    return lag


def read_topic(bootstrap: str, topic: str, timeout: float = 120.0) -> list[tuple[bytes | None, bytes, int]]:
    """Every message of ``topic`` up to its end when called, as (key, value, partition)."""
    records = run_async(read_topic_async(bootstrap, topic, timeout))
    return [(r.key, r.value, r.partition) for r in records]


def latest_by_key(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """A compacted topic as a consumer sees it: the highest ``version`` per key."""
    best: dict[str, dict[str, Any]] = {}
    for key, value, _ in read_topic(bootstrap, topic):
        if key is None or value is None:
            continue
        record = json.loads(value)
        k = key.decode()
        if k not in best or record.get("version", 0) >= best[k].get("version", 0):
            best[k] = record
    return best


# ---------------------------------------------------------------- ClickHouse store

STORE_QUERY = r"""
import json, sys
import clickhouse_connect
client = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
def rows(sql):
    result = client.query(sql)
    return [dict(zip(result.column_names, row)) for row in result.result_rows]
out = {
    "kpi_windows": rows("SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms FROM kpi_windows FINAL"),
    "raw": rows("SELECT count() AS rows_final, uniqExact(event_id) AS distinct_ids FROM raw_events FINAL")[0],
    "raw_ids": [r["event_id"] for r in rows("SELECT DISTINCT event_id FROM raw_events")],
}
print(json.dumps(out, default=str))
"""


def dump_store(path: str, timeout: float = 300.0) -> dict[str, Any]:
    """kpi_windows FINAL and raw_events counts of a chDB store, read in a child process
    (chDB allows one store per process, and the worker that owned it has stopped)."""
    proc = subprocess.run([sys.executable, "-c", STORE_QUERY, path], capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"reading the store {path} failed: {proc.stderr.decode(errors='replace')[-800:]}")
    return json.loads(proc.stdout)
