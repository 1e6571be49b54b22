"""The benchmark's worker side: ``ccpulse worker`` processes, their topology, memory and profile.

Workers run as real subprocesses from a chosen source tree (``--worker-pythonpath``),
so the harness of one version can measure the worker of another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccpulse.tools.bench_kafka import GroupTopics
from ccpulse.probes import free_port

# Run with the worker's code: which topics each role's consumer group consumes.
_TOPOLOGY = """
import json
from ccpulse.config import load_settings
from streams.app import create_app
settings = load_settings()
out = {}
for role in ("all", "compute", "writer"):
    app = create_app(settings, role)
    topics = set()
    for agent in app.agents.values():
        topics.update(agent.channel.topics)
    out[role] = {"group": app.conf.id, "topics": sorted(topics)}
out["publish_interval_seconds"] = settings.windows.publish_interval_seconds
print(json.dumps(out))
"""


@dataclass
class BenchApp:
    """One ccpulse app of the benchmark: its own app id, topics, store and config file."""

    name: str
    root: Path
    bootstrap: str
    code: Path  # the source tree the workers run
    input_prefix: str  # input topics are <input_prefix>calls|chats|tickets (shareable between apps)
    publish_interval: float | None = None
    effective_publish_interval: float | None = None  # as the worker's code reads its config
    windows: dict[str, Any] = field(default_factory=dict)  # more [windows] settings (TOML values)
    agent_mix: bool = False  # the input includes agent events: <input_prefix>agents is an input topic too

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.dir / "ccpulse.toml"

    @property
    def input_topics(self) -> dict[str, str]:
        """Family -> input topic, as the simulator's families name them."""
        topics = {"call": f"{self.input_prefix}calls", "chat": f"{self.input_prefix}chats",
                  "ticket": f"{self.input_prefix}tickets"}
        if self.agent_mix:
            topics["agent"] = f"{self.input_prefix}agents"
        return topics

    def check_agent_stage(self, groups: list[GroupTopics]) -> None:
        """With the agent mix, the groups waited for must consume the agents topic: else the
        figure would leave the agent stage's work out (a worker tree without that stage)."""
        topic = self.input_topics.get("agent")
        if topic is not None and not any(topic in g.topics for g in groups):
            raise RuntimeError(f"no consumer group of {self.name} reads {topic}: the workers of "
                               f"{self.code} run no agent stage, so --agent-mix cannot measure it")

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        n = self.name
        settings = dict(self.windows)
        if self.publish_interval is not None:
            settings["publish_interval_seconds"] = self.publish_interval
        windows = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        windows = f"\n[windows]\n{windows}" if windows else ""
        # Only with the mix: the plain config stays readable by a worker of an older tree.
        agents = f'agents = "{self.input_topics["agent"]}"\n' if self.agent_mix else ""
        self.config_path.write_text(f"""app_id = "{n}"
state_dir = "{self.dir / 'state'}"

[kafka]
bootstrap = "{self.bootstrap}"

[topics]
calls = "{self.input_topics['call']}"
chats = "{self.input_topics['chat']}"
tickets = "{self.input_topics['ticket']}"
{agents}dead_letter = "{n}.events.dead-letter"
kpi_windows = "{n}.kpi.windows"
kpi_agents = "{n}.kpi.agents"
kpi_queue_state = "{n}.kpi.queue-state"
sla_breaches = "{n}.sla.breaches"
kpi_scorecards = "{n}.kpi.scorecards"

[clickhouse]
dsn = "chdb://{self.dir / 'clickhouse'}"
{windows}""", encoding="utf-8")
        return self.config_path

    @property
    def kpi_windows_topic(self) -> str:
        return f"{self.name}.kpi.windows"

    @property
    def steady_topics(self) -> frozenset[str]:
        """Written again every second or so, input or not (see OffsetWatch): the queue state
        while contacts wait, and the clocks the pipeline and the agent stage say again on
        ``<app>-agent-facts`` (streams/stages/agent_facts.CLOCK_AGAIN_MS). Their lag is
        almost never 0 at the moment it is read, however caught up the group is."""
        return frozenset({f"{self.name}.kpi.queue-state", f"{self.name}-agent-facts"})

    def env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
        env.update({
            "CCPULSE_CONFIG": str(self.config_path),
            "CCPULSE_WEB_PORT": str(free_port()),
            "CCPULSE_STATE_DIR": str(self.dir / f"state-{index}"),
            "PYTHONPATH": str(self.code),
        })
        return env

    def topology(self) -> dict[str, GroupTopics]:
        """Per role, the group and topics, asked of the worker's own code."""
        out = subprocess.run([sys.executable, "-c", _TOPOLOGY], env=self.env(0), cwd=self.code,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"cannot read the worker topology from {self.code}: {out.stderr[-2000:]}")
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        self.effective_publish_interval = float(doc.pop("publish_interval_seconds"))
        return {role: GroupTopics(v["group"], v["topics"]) for role, v in doc.items()}


@dataclass
class WorkerProc:
    app: BenchApp
    role: str
    index: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    peak_rss: int = 0  # bytes
    # Memory attribution (tests/measure_worker_memory.py): the probe's report path, and more
    # environment (PYTHONTRACEMALLOC, MALLOC_ARENA_MAX, ...).
    probe: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.env["CCPULSE_WEB_PORT"])

    @property
    def log_path(self) -> Path:
        return self.app.dir / f"worker-{self.index}-{self.role}.log"

    def start(self) -> None:
        self.env = self.app.env(self.index)
        self.env.update(self.extra_env)
        command = ["-m", "ccpulse.cli"]
        if self.probe is not None:
            from ccpulse.tools import memory_probe

            # Loaded by path: the probe works in a worker of any tree.
            self.env[memory_probe.ENV] = str(self.probe)
            command = ["-c", memory_probe.BOOTSTRAP, memory_probe.__file__]
        log = open(self.log_path, "ab")
        # Its own session: stopping the benchmark stops exactly these processes.
        self.process = subprocess.Popen(
            [sys.executable, *command, "worker", "--role", self.role, "--loglevel", "warn"],
            env=self.env, cwd=self.app.code, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.role}-{self.index} exited: {self.log_tail()}")
            status, _ = self.get("/health")
            if status == 200:
                return
            time.sleep(0.3)
        raise RuntimeError(f"worker {self.role}-{self.index} not healthy within {timeout}s: {self.log_tail()}")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def consumed(self) -> float:
        """Input messages this worker has consumed (its /metrics), 0 before the web server is up."""
        status, text = self.get("/metrics", timeout=2.0)
        if status != 200:
            return 0.0
        return metric_sum(text, "ccpulse_events_consumed_total")

    def memory_report(self, trim: bool = False, timeout: float = 300.0) -> dict[str, Any]:
        """Ask the worker's memory probe for a report (see ccpulse/tools/memory_probe.py)."""
        assert self.probe is not None, "started without a memory probe"
        self.probe.unlink(missing_ok=True)
        request = Path(f"{self.probe}.request")
        request.write_text("trim" if trim else "", encoding="utf-8")
        deadline = time.monotonic() + timeout
        while request.exists():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"no memory report from {self.role}-{self.index}: {self.log_tail()}")
            time.sleep(0.2)
        return json.loads(self.probe.read_text(encoding="utf-8"))

    def sample_rss(self) -> int:
        rss = rss_bytes(self.pid) if self.alive() else 0
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""


def metric_sum(text: str, name: str, label: str | None = None) -> float:
    """Sum of every sample of ``name`` in a Prometheus text page, optionally only those with ``label``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) > len(name) and line[len(name)] in "{ "):
            if label is not None and label not in line:
                continue
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return total


def rss_bytes(pid: int) -> int:
    """VmRSS of a process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone): unlike wall time,
    barely moved by other load on a shared machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


@dataclass
class Profiler:
    """py-spy attached to one worker (non-blocking sampling, so the worker is barely slowed)."""

    pid: int
    out: Path
    process: subprocess.Popen | None = None
    error: str = ""

    @staticmethod
    def executable() -> str | None:
        candidate = Path(sys.executable).parent / "py-spy"
        if candidate.exists():
            return str(candidate)
        from shutil import which
        return which("py-spy")

    def start(self) -> bool:
        exe = self.executable()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return False
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "100", "--nonblocking",
             "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(1.0)
        if self.process.poll() is not None:
            self.error = (self.process.stderr.read() or b"").decode(errors="replace").strip()[:300] \
                if self.process.stderr else "py-spy exited"
            return False
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGINT makes py-spy write what it sampled.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.returncode not in (0, None) and not self.out.exists():
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            self.error = err.strip()[-300:] or f"py-spy exited with {self.process.returncode}"


# Frames of these folders are ccpulse's own code (the rest: Faust, aiokafka, asyncio, ...).
PROJECT_DIRS = ("ccpulse", "core", "streams", "sinks", "schemas")


@dataclass
class ProfileSummary:
    samples: int
    self_top: list[tuple[str, int]]
    inclusive_top: list[tuple[str, int]]  # ccpulse's own functions only, by inclusive samples


def summarize_profile(raw: str, top: int = 15) -> ProfileSummary:
    """Top functions of a py-spy raw (collapsed stacks) profile, by own and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_function(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            where = name.rsplit("(", 1)[-1]
            # The CLI frames are the entry point around everything: not informative.
            if where.split("/", 1)[0] in PROJECT_DIRS and not where.startswith("ccpulse/cli.py"):
                inclusive[name] += count
    return ProfileSummary(samples, own.most_common(top), inclusive.most_common(top))


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (to/file.py)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(Path(path).parts[-2:]) if path else "?"
    return f"{name} ({short})"
