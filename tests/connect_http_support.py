"""A real ``ccpulse connect http`` process for the receiver's integration tests, and a client that
signs its requests the way each platform documents."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ccpulse import probes
from ccpulse.probes import free_port

TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
ZENDESK_SECRET = "zendesk-signing-secret-0123456789"
JIRA_SECRET = "jira-webhook-secret-0123456789"


@dataclass
class ReceiverProcess:
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen | None = None

    @classmethod
    def create(cls, bootstrap: str, tmp: Path, prefix: str, **extra: str) -> "ReceiverProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
        port = free_port()
        env.update({
            "CCPULSE_KAFKA_BOOTSTRAP": bootstrap, "CCPULSE_TOPIC_PREFIX": prefix,
            "CCPULSE_STATE_DIR": str(tmp / "state"), "CCPULSE_CONFIG": str(tmp / "receiver.toml"),
            "CCPULSE_CONNECT_HTTP_PORT": str(port),
            "CCPULSE_CONNECT_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "CCPULSE_CONNECT_ZENDESK_SECRET": ZENDESK_SECRET,
            "CCPULSE_CONNECT_JIRA_SECRET": JIRA_SECRET,
        })
        env.update(extra)
        tmp.mkdir(parents=True, exist_ok=True)
        Path(env["CCPULSE_CONFIG"]).touch()
        return cls(env, tmp / "receiver.log", port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "ccpulse.cli", "connect", "http"], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}: {self.log_tail()}")
            if self.get("/health")[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"receiver not healthy within {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no graceful anything, as a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"receiver did not stop within {timeout}s: {self.log_tail()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return probes.parse_metrics(self.get("/metrics")[1])

    def metric(self, name: str, **labels: str) -> float:
        return sum(v for (n, lbls), v in self.metrics().items()
                   if n == name and all((k, x) in lbls for k, x in labels.items()))

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class Signed:
    path: str
    body: bytes
    headers: dict[str, str]


def twilio_request(base: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> Signed:
    # Twilio: base64(HMAC-SHA1(token, URL + each parameter's name and value, sorted by name)).
    url = base + "/twilio"
    data = url + "".join(k + params[k] for k in sorted(params))
    signature = base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()
    return Signed("/twilio", urlencode(params).encode(), {"X-Twilio-Signature": signature,
                                                          "Content-Type": "application/x-www-form-urlencoded"})


def zendesk_request(doc: dict[str, Any] | bytes, secret: str = ZENDESK_SECRET, signed_at: float | None = None) -> Signed:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    stamp = datetime.fromtimestamp(time.time() if signed_at is None else signed_at, timezone.utc)
    timestamp = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = base64.b64encode(hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest())
    return Signed("/zendesk", body, {"X-Zendesk-Webhook-Signature": signature.decode(),
                                     "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
                                     "Content-Type": "application/json"})


def jira_request(doc: dict[str, Any] | bytes, secret: str = JIRA_SECRET) -> Signed:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return Signed("/jira", body, {"X-Hub-Signature": signature, "Content-Type": "application/json"})


def post(base: str, req: Signed, timeout: float = 15.0) -> tuple[int, bytes]:
    """One attempt: (status, body); status 0 when the connection failed."""
    request = urllib.request.Request(base + req.path, data=req.body, headers=req.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def post_until_accepted(base: str, req: Signed, deadline: float) -> int:
    """As the platforms do: a non-2xx answer or a failed connection is retried; returns the attempts."""
    attempts = 0
    while True:
        attempts += 1
        status, _ = post(base, req)
        if 200 <= status < 300:
            return attempts
        if time.monotonic() > deadline:
            raise AssertionError(f"{req.path} not accepted before the deadline (last status {status})")
        time.sleep(0.05)
