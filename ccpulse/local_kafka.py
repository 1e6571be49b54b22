"""A real single-node Apache Kafka broker (KRaft) on the loopback interface, for
development, the demo and the integration tests.

The broker is the genuine ``kafka.Kafka`` from Maven Central (version pinned in
``deploy/kafka/pom.xml``), run from jars that Maven copies once into a cache
folder. Everything a broker owns lives in one state folder::

    <state_dir>/server.properties   rewritten at every start (the ports may change)
    <state_dir>/data/               KRaft metadata log and topic data
    <state_dir>/broker.json         pid + bootstrap of the running broker
    <state_dir>/broker.log          its stdout/stderr (the previous run's is broker.log.1)
    <state_dir>/broker.lock         serialises start/stop across processes

The broker runs detached (own session, parented to init), so it outlives the
command that started it and ignores Ctrl-C in that terminal; ``stop`` ends it.
POSIX only (process sessions, signals, ``fcntl``).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, TypeVar

DEFAULT_PORT = 9092  # OPERATIONS.md: the default bootstrap is localhost:9092
LOOPBACK = "127.0.0.1"
MAIN_CLASS = "kafka.Kafka"
# Two-core dev machines: a small fixed heap, and the serial collector, which
# starts faster and needs no GC threads; the broker's load here is light.
JVM_OPTS = ("-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")
STOP_KILL_GRACE = 5.0  # seconds to wait for the process to vanish after SIGKILL

_JAR_MARKER = ".ccpulse-jars-complete"
_RECORD = "broker.json"
_PROPS = "server.properties"
_LOG = "broker.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The line naming the exception, e.g. 'java.lang.RuntimeException: Stored node id 2 ...'
# (bare, after "Exception in thread ...", or after "Caused by:"); the stack follows it.
_EXCEPTION = re.compile(
    r'^(?:Exception in thread "[^"]*" |Caused by: )?'
    r"((?:[A-Za-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error)\b.*)$"
)
_LOG_PREFIX = re.compile(r"^\[[^\]]*\] ")
_HAS_PROC = Path("/proc/self/cmdline").exists()

T = TypeVar("T")


class LocalKafkaError(RuntimeError):
    """The local broker could not be provided; the message is one human line."""


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str  # "127.0.0.1:PORT"
    pid: int
    state_dir: Path
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])


def project_root() -> Path:
    """The source checkout holding ``deploy/kafka/pom.xml`` (this file's grandparent)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "deploy" / "kafka" / "pom.xml").is_file():
        raise LocalKafkaError(
            f"deploy/kafka/pom.xml not found under {root}: the local broker needs a source checkout of ccpulse"
        )
    return root


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Copy the broker's runtime jars into ``cache_dir`` once and return the folder.

    The marker holds a digest of the pom, so an interrupted copy (no marker) or a
    Kafka version bump (other digest) is redone from scratch, while a complete
    cache costs one small file read.
    """
    pom = project_root() / "deploy" / "kafka" / "pom.xml"
    lib = (cache_dir if cache_dir is not None else pom.parent / "target" / "lib").resolve()
    marker = lib / _JAR_MARKER
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _read_text(marker) == digest:
        return lib

    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("mvn not found: install Maven 3.8+ (needed once to fetch the Kafka jars)")
    lib.mkdir(parents=True, exist_ok=True)
    with _locked(lib / ".lock"):
        if _read_text(marker) == digest:  # another process finished while we waited
            return lib
        # Jars of another Kafka version left on the classpath would clash.
        for stale in lib.glob("*.jar"):
            stale.unlink()
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={lib}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0 or not any(lib.glob("*.jar")):
            detail = _mvn_error(proc.stdout + "\n" + proc.stderr) or f"exit code {proc.returncode}"
            raise LocalKafkaError(f"mvn failed resolving Kafka jars: {detail}")
        marker.write_text(digest)
    return lib


def start(state_dir: Path, port: int | None = None, fresh: bool = False, timeout: float = 60.0) -> BrokerInfo:
    """Start (or find) the broker of ``state_dir`` and return once it serves metadata.

    A broker already running for ``state_dir`` is returned as is, unless ``fresh``
    asks for empty data: then it is stopped and its data wiped first.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir / "broker.lock"):
        running = _recorded_broker(state_dir)
        if running is not None and not fresh:
            if port is not None and port != running.port:
                raise LocalKafkaError(
                    f"a broker for {state_dir} is already running on {running.bootstrap}; stop it to change the port"
                )
            if _accepting(running.port):
                return running
        # Covers a hung recorded broker, one started with ``fresh``, and one whose
        # broker.json was lost: any of them holds the data folder's lock.
        _stop_all(state_dir, timeout=30.0)

        lib = ensure_jars()
        java = _java()
        props = state_dir / _PROPS
        prev_port, prev_cport = _previous_ports(props)
        broker_port = _pick_port(port, (DEFAULT_PORT, prev_port), avoid=())
        controller_port = _pick_port(None, (prev_cport,), avoid=(broker_port,))
        data = state_dir / "data"
        if fresh:
            shutil.rmtree(data, ignore_errors=True)
        props.write_text(_server_properties(broker_port, controller_port, data))
        log4j = project_root() / "deploy" / "kafka" / "log4j.properties"
        if not (data / "meta.properties").is_file():
            _format_storage(java, lib, log4j, props, data)

        log_path = state_dir / _LOG
        if log_path.exists():
            os.replace(log_path, state_dir / f"{_LOG}.1")
        pid = _spawn_detached(
            [java, *JVM_OPTS, f"-Dlog4j.configuration={log4j.as_uri()}",
             "-cp", f"{lib}{os.sep}*", MAIN_CLASS, str(props)],
            log_path=log_path,
            cwd=state_dir,
        )
        info = BrokerInfo(f"{LOOPBACK}:{broker_port}", pid, state_dir, log_path)
        _write_record(state_dir, info, controller_port)
        try:
            _wait_until_serving(info, props, timeout)
        except BaseException:
            # Also on Ctrl-C: a half-started broker nobody waits for is worse than none.
            with contextlib.suppress(LocalKafkaError):  # keep the startup error, it's the useful one
                _terminate(pid, props, grace=5.0)
            (state_dir / _RECORD).unlink(missing_ok=True)
            raise
        return info


def stop(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker of ``state_dir``; return whether one was running.

    SIGTERM lets Kafka shut down cleanly (a clean shutdown spares the next start
    its log recovery); SIGKILL follows after ``timeout`` seconds.
    """
    state_dir = state_dir.resolve()
    if not state_dir.is_dir():
        return False
    with _locked(state_dir / "broker.lock"):
        return _stop_all(state_dir, timeout)


def status(state_dir: Path) -> BrokerInfo | None:
    """The broker recorded for ``state_dir`` if its process is alive and its port accepts connections."""
    info = _recorded_broker(state_dir.resolve())
    if info is None or not _accepting(info.port):
        return None
    return info


# --- process handling -------------------------------------------------------


def _stop_all(state_dir: Path, timeout: float) -> bool:
    props = state_dir / _PROPS
    pids = set(_broker_pids(props))
    recorded = _recorded_broker(state_dir)
    if recorded is not None:
        pids.add(recorded.pid)
    for pid in sorted(pids):
        _terminate(pid, props, grace=timeout)
    (state_dir / _RECORD).unlink(missing_ok=True)
    return bool(pids)


def _terminate(pid: int, props: Path, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, STOP_KILL_GRACE)):
        if not _is_broker(pid, props):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _is_broker(pid, props):
                return
            time.sleep(0.05)
    if _is_broker(pid, props):
        raise LocalKafkaError(f"broker pid {pid} survived SIGKILL")


def _spawn_detached(cmd: list[str], log_path: Path, cwd: Path) -> int:
    # The shell backgrounds java and exits at once, so java is re-parented to init:
    # it never becomes a zombie of (or a ResourceWarning in) the calling process,
    # and start_new_session keeps the terminal's Ctrl-C away from it.
    script = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    proc = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log_path), *cmd],
        capture_output=True, text=True, cwd=cwd, start_new_session=True, check=False,
    )
    try:
        return int(proc.stdout.strip())
    except ValueError:
        raise LocalKafkaError(f"could not launch java: {proc.stderr.strip() or 'no pid reported'}") from None


def _is_broker(pid: int, props: Path) -> bool:
    # Matching the command line (not just "pid exists") guards against pid reuse;
    # a zombie has an empty command line, so it counts as gone.
    if _HAS_PROC:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        args = [arg.decode(errors="replace") for arg in argv if arg]
        return MAIN_CLASS in args and args[-1:] == [str(props)]
    ps = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return ps.stdout.strip().endswith(f" {MAIN_CLASS} {props}")


def _broker_pids(props: Path) -> list[int]:
    if _HAS_PROC:
        candidates = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    else:
        ps = subprocess.run(["ps", "-ax", "-o", "pid="], capture_output=True, text=True, check=False)
        candidates = [int(token) for token in ps.stdout.split()]
    return [pid for pid in candidates if pid != os.getpid() and _is_broker(pid, props)]


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("java not found: install a JDK 17+")
    return java


# --- storage and configuration ----------------------------------------------


def _server_properties(port: int, controller_port: int, data: Path) -> str:
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        # One broker: every internal topic must make do with one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Tests and the demo start consumers right after the broker; don't make them wait 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # Matches KafkaSettings.partitions, so auto-created topics look like ccpulse's own.
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        # A dev box keeps a day of data, at most 256 MiB per partition, in 64 MiB segments.
        "log.retention.hours": "24",
        "log.retention.bytes": str(256 * 1024 * 1024),
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.check.interval.ms": str(5 * 60 * 1000),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    header = "# Written by ccpulse.local_kafka at every start; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in lines.items())


def _previous_ports(props: Path) -> tuple[int | None, int | None]:
    match = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)$", _read_text(props) or "", re.M)
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2))


def _format_storage(java: str, lib: Path, log4j: Path, props: Path, data: Path) -> None:
    # Without meta.properties nothing in data/ was ever served; a half-formatted
    # folder would make the formatter refuse, so start over.
    shutil.rmtree(data, ignore_errors=True)
    cmd = [
        java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j.configuration={log4j.as_uri()}", "-cp", f"{lib}{os.sep}*",
        "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not (data / "meta.properties").is_file():
        detail = _first_error(proc.stdout + "\n" + proc.stderr) or f"exit code {proc.returncode}"
        raise LocalKafkaError(f"formatting Kafka storage in {data} failed: {detail}")


def _cluster_id() -> str:
    # Same shape as `kafka-storage random-uuid` (Uuid.randomUuid): 16 random bytes,
    # URL-safe base64 without padding, never starting with '-'. Saves a JVM start.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


# --- ports and readiness -----------------------------------------------------


def _pick_port(requested: int | None, preferred: tuple[int | None, ...], avoid: tuple[int, ...]) -> int:
    if requested is not None:
        if not _port_free(requested):
            raise LocalKafkaError(f"port {requested} on {LOOPBACK} is already in use")
        return requested
    for candidate in preferred:
        if candidate and candidate not in avoid and _port_free(candidate):
            return candidate
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            candidate = sock.getsockname()[1]
        if candidate not in avoid:
            return candidate


def _port_free(port: int) -> bool:
    # Clients given "localhost:PORT" may reach ::1 first, so a listener there (say,
    # a Docker Kafka) would shadow ours: that port counts as busy too.
    if _accepting(port) or _accepting(port, host="::1"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the JVM does: TIME_WAIT leftovers of a stopped broker don't count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _accepting(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until_serving(info: BrokerInfo, props: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not _is_broker(info.pid, props):
            hint = _first_error(_read_text(info.log_path) or "") or "no error logged"
            raise LocalKafkaError(f"broker exited during startup ({hint}); see {info.log_path}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalKafkaError(f"broker did not accept connections within {timeout:g}s; see {info.log_path}")
        # The TCP check keeps aiokafka from logging connection errors while the JVM boots.
        if _accepting(info.port) and _serves_metadata(info.bootstrap, min(remaining, 5.0)):
            return
        time.sleep(0.1)


def _serves_metadata(bootstrap: str, timeout: float) -> bool:
    # A listening socket is not enough: until the broker has registered with its
    # controller and been unfenced, it answers metadata with no brokers.
    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=max(int(timeout * 1000), 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), timeout)
            return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) >= 0
        finally:
            await admin.close()

    try:
        return _run_coroutine(probe)
    except Exception:  # not ready yet: any connection or protocol error means "try again"
        return False


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Called from async code: asyncio.run can't nest, so use a private loop in a thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --- small helpers -------------------------------------------------------------


def _recorded_broker(state_dir: Path) -> BrokerInfo | None:
    try:
        record = json.loads((state_dir / _RECORD).read_text())
        info = BrokerInfo(
            bootstrap=str(record["bootstrap"]),
            pid=int(record["pid"]),
            state_dir=state_dir,
            log_path=Path(record["log_path"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _is_broker(info.pid, state_dir / _PROPS) else None


def _write_record(state_dir: Path, info: BrokerInfo, controller_port: int) -> None:
    record = {
        "pid": info.pid,
        "bootstrap": info.bootstrap,
        "controller_port": controller_port,
        "log_path": str(info.log_path),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = state_dir / f"{_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, state_dir / _RECORD)  # readers never see half a record


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _first_error(output: str) -> str:
    """The gist of a failed JVM's output: its first exception, else its first ERROR line, else its last line."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        match = _EXCEPTION.match(line)
        if match:
            return match.group(1)[:300]
    for line in lines:
        if " ERROR " in line or " FATAL " in line or line.startswith("Error:"):
            return _LOG_PREFIX.sub("", line)[:300]
    return lines[-1][:300] if lines else ""


def _mvn_error(output: str) -> str:
    """Maven's first meaningful [ERROR] line (its last lines are boilerplate), else the last line."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    for line in lines:
        text = line.removeprefix("[ERROR]").strip()
        if line.startswith("[ERROR]") and text:
            return text.removesuffix("-> [Help 1]").strip()[:300]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""

