"""A real Prometheus server for integration tests: Debian's ``prometheus`` package
(``make system-deps`` installs it), run as a subprocess on a free loopback port with
its own config and TSDB under a temporary directory (never the system service).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tests.worker_process import free_port

INSTALL_HINT = ("the integration tests need a real Prometheus server: install Debian's package "
                "(`make system-deps`, or `apt-get update && apt-get install -y prometheus`)")


def prometheus_binary() -> str:
    """Path of the ``prometheus`` executable; AssertionError (a test failure, never a skip) if missing."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                           else None)
    if found is None:
        raise AssertionError(f"prometheus not found: {INSTALL_HINT}")
    return found


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, wrong types, ...)."""


@dataclass
class PrometheusServer:
    """``/usr/bin/prometheus`` scraping ``targets`` every ``scrape_interval``, loading ``rule_files``."""

    workdir: Path
    targets: Sequence[str]
    scrape_interval: str = "1s"
    rule_files: Sequence[Path] = ()
    job: str = "ccpulse"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config_text(self) -> str:
        # JSON is valid YAML: no YAML library needed to write the config.
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": list(self.targets)}]}],
        }
        if self.rule_files:
            config["rule_files"] = [str(Path(p).resolve()) for p in self.rule_files]
        return json.dumps(config, indent=2)

    def start(self, timeout: float = 30.0) -> None:
        binary = prometheus_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=1d"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prometheus not ready within {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def api(self, path: str, params: dict[str, Any] | Sequence[tuple[str, Any]]) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, PrometheusError otherwise."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result samples (a scalar or string result as one sample)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def series(self, selector: str) -> list[dict[str, str]]:
        return self.api("series", [("match[]", selector), ("start", f"{time.time() - 3600:.0f}")])

    def targets_health(self) -> list[dict[str, Any]]:
        return self.api("targets", {"state": "active"})["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules", {})["groups"]

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""
