"""The webhook receiver's figures: requests/s and time to acknowledge, with signatures on (issue 17).

A real ``ccpulse connect http`` process on the given broker receives signed Twilio
TaskRouter callbacks (each a new task entering a queue: one event, one Kafka ack)
from ``concurrency`` clients at once; the time to acknowledge is the platform's view,
from sending the request to its 2xx. Targets: at least 2,000 requests/s, p99 at most
100 ms. ``python -m ccpulse.tools.bench_connect_http --bootstrap HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ccpulse.connectors import twilio
from ccpulse.probes import free_port

TARGET_REQUESTS_PER_SECOND = 2000.0
TARGET_P99_SECONDS = 0.100
_TOKEN = "bench-twilio-auth-token-0123456789"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _callback(base: str, i: int) -> tuple[bytes, dict[str, str]]:
    params = {"EventType": "task-queue.entered", "TaskSid": f"WTbench{i:012d}", "TaskQueueName": "bench",
              "TaskChannelUniqueName": "voice", "Timestamp": str(1767600000 + i // 100),
              "AccountSid": "ACbench", "WorkspaceSid": "WSbench", "ResourceType": "Task"}
    signature = twilio.expected_signature(base + "/twilio", sorted(params.items()), _TOKEN)
    return urlencode(params).encode(), {"X-Twilio-Signature": signature,
                                        "Content-Type": "application/x-www-form-urlencoded"}


async def _load(base: str, requests: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    bodies = [_callback(base, i) for i in range(requests)]
    latencies: list[float] = []
    failures = 0
    next_index = 0

    async def client(session: Any) -> None:
        nonlocal next_index, failures
        while next_index < len(bodies):
            body, headers = bodies[next_index]
            next_index += 1
            started = time.perf_counter()
            async with session.post(base + "/twilio", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": requests, "concurrency": concurrency, "failed": failures,
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "ack_p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
            "ack_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1)}


def measure(bootstrap: str, requests: int = 20_000, concurrency: int = 64, warmup: int = 1000) -> dict[str, Any]:
    """Start a receiver on ``bootstrap`` (its own topic prefix), load it, stop it; the figures."""
    with tempfile.TemporaryDirectory(prefix="ccpulse-bench-http-") as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
        env.update(CCPULSE_KAFKA_BOOTSTRAP=bootstrap, CCPULSE_TOPIC_PREFIX=f"benchhttp{port}.",
                   CCPULSE_STATE_DIR=str(Path(tmp) / "state"), CCPULSE_CONFIG=str(Path(tmp) / "none.toml"),
                   CCPULSE_CONNECT_HTTP_PORT=str(port), CCPULSE_CONNECT_TWILIO_AUTH_TOKEN=_TOKEN)
        (Path(tmp) / "none.toml").write_text("")
        log = open(Path(tmp) / "receiver.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "ccpulse.cli", "connect", "http"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, Path(tmp) / "receiver.log")
            asyncio.run(_load(base, warmup, concurrency))
            figures = asyncio.run(_load(base, requests, concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    figures["meets_targets"] = (figures["requests_per_second"] >= TARGET_REQUESTS_PER_SECOND
                                and figures["ack_p99_ms"] <= TARGET_P99_SECONDS * 1000 and not figures["failed"])
    return figures


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the receiver was not healthy within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccpulse.tools.bench_connect_http")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bootstrap, args.requests, args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
