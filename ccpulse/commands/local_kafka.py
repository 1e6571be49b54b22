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
    <state_dir>/sasl.json           with ``sasl``: which SCRAM users the data was formatted with
                                    (a digest, never a password)

With ``sasl`` the client listener is SASL_PLAINTEXT with SCRAM-SHA-512 and
SCRAM-SHA-256; the users' credentials are written into the KRaft metadata when
the storage is formatted (as salted hashes computed here, so no password ever
appears on a command line). With ``tls`` it speaks TLS (SSL, or SASL_SSL with
``sasl``) with the given PEM certificate. The controller listener stays
PLAINTEXT on loopback.

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
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, TypeVar

from ccpulse.probes import free_port
from streams.topics import EVENT_MESSAGE_MAX_BYTES

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
_SASL_RECORD = "sasl.json"
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
# Kafka's default and minimum for SCRAM-SHA-*; higher only slows every login.
_SCRAM_ITERATIONS = 4096
# The credential spec of `kafka-storage format --add-scram` is bracket/comma
# delimited and a principal name appears in ACLs: keep names to a safe alphabet.
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
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
class SaslUser:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class SaslSetup:
    """SCRAM users of a SASL_PLAINTEXT listener; each user gets every mechanism."""

    users: tuple[SaslUser, ...]
    mechanisms: tuple[str, ...] = SCRAM_MECHANISMS

    def __post_init__(self) -> None:
        if not self.users:
            raise LocalKafkaError("sasl: at least one SCRAM user is needed")
        for user in self.users:
            if not _USERNAME.match(user.username):
                raise LocalKafkaError(f"sasl: user name {user.username!r} must be 1-64 of A-Z a-z 0-9 . _ -")
            if not user.password:
                raise LocalKafkaError(f"sasl: user {user.username!r} has an empty password")
        unknown = [m for m in self.mechanisms if m not in SCRAM_MECHANISMS]
        if unknown or not self.mechanisms:
            raise LocalKafkaError(f"sasl: mechanisms {list(self.mechanisms)} must be among {list(SCRAM_MECHANISMS)}")

    def digest(self) -> str:
        """Identifies users + mechanisms without revealing a password (salted with the names)."""
        h = hashlib.sha256()
        for mech in sorted(self.mechanisms):
            h.update(mech.encode() + b"\0")
        for user in sorted(self.users, key=lambda u: u.username):
            h.update(hashlib.pbkdf2_hmac("sha256", user.password.encode(), user.username.encode(), 1000))
            h.update(user.username.encode() + b"\0")
        return h.hexdigest()


@dataclass(frozen=True)
class TlsSetup:
    """The client listener's TLS identity: PEM certificate (chain) and its unencrypted key.

    ``cafile`` is what the readiness probe trusts (the CA that signed ``certfile``);
    clients are not asked for certificates.
    """

    certfile: Path
    keyfile: Path
    cafile: Path

    def digest(self) -> str:
        h = hashlib.sha256()
        for path in (self.certfile, self.keyfile, self.cafile):
            try:
                h.update(Path(path).read_bytes())
            except OSError as exc:
                raise LocalKafkaError(f"tls: cannot read {path} ({exc.strerror or exc})") from None
        return h.hexdigest()


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str  # "127.0.0.1:PORT"
    pid: int
    state_dir: Path
    log_path: Path
    # PLAINTEXT; SASL_PLAINTEXT, SSL or SASL_SSL for a broker started with ``sasl`` / ``tls``.
    security_protocol: str = "PLAINTEXT"

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])


def project_root() -> Path:
    """The source checkout holding ``deploy/kafka/pom.xml`` (ccpulse/commands/ -> the checkout)."""
    root = Path(__file__).resolve().parents[2]
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


def start(state_dir: Path, port: int | None = None, fresh: bool = False, timeout: float = 60.0,
          sasl: SaslSetup | None = None, tls: TlsSetup | None = None) -> BrokerInfo:
    """Start (or find) the broker of ``state_dir`` and return once it serves metadata.

    A broker already running for ``state_dir`` is returned as is, unless ``fresh``
    asks for empty data: then it is stopped and its data wiped first. ``sasl``
    makes the client listener SASL_PLAINTEXT (SCRAM); its users are created when
    the data is formatted, so other users on existing data need ``fresh``.
    ``tls`` makes it speak TLS (SSL, or SASL_SSL together with ``sasl``).
    """
    if port is not None and not 1 <= port <= 65535:
        raise LocalKafkaError(f"port {port} is not a TCP port (1-65535)")
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    wanted = sasl.digest() if sasl is not None else None
    protocol = _protocol(sasl, tls)
    # None for PLAINTEXT, as recorded by brokers started before SASL/TLS existed here.
    security = None if protocol == "PLAINTEXT" else f"{protocol}:{wanted or ''}:{tls.digest() if tls else ''}"
    with _locked(state_dir / "broker.lock"):
        running = _recorded_broker(state_dir)
        if running is not None and _recorded_sasl(state_dir, running=True) != security:
            running = None  # listening with other security: restart it below
        if running is not None and not fresh:
            if port is not None and port != running.port:
                raise LocalKafkaError(
                    f"a broker for {state_dir} is already running on {running.bootstrap}; stop it to change the port"
                )
            if _accepting(running.port):
                return running
        # Checked before stopping anything: refusing must leave a running broker alone.
        if (sasl is not None and not fresh and (state_dir / "data" / "meta.properties").is_file()
                and _recorded_sasl(state_dir, running=False) != wanted):
            raise LocalKafkaError(
                f"the data in {state_dir / 'data'} was formatted without these SASL users (SCRAM credentials "
                "are created at format time): start with fresh=True (`--fresh`) to recreate it"
            )
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
        formatted = (data / "meta.properties").is_file()
        props.write_text(_server_properties(broker_port, controller_port, data, sasl, tls, state_dir))
        log4j = project_root() / "deploy" / "kafka" / "log4j.properties"
        if not formatted:
            (state_dir / _SASL_RECORD).unlink(missing_ok=True)
            _format_storage(java, lib, log4j, props, data, sasl)
            if sasl is not None:
                _write_json(state_dir / _SASL_RECORD, {"formatted": wanted})

        log_path = state_dir / _LOG
        if log_path.exists():
            os.replace(log_path, state_dir / f"{_LOG}.1")
        pid = _spawn_detached(
            [java, *JVM_OPTS, f"-Dlog4j.configuration={log4j.as_uri()}",
             "-cp", f"{lib}{os.sep}*", MAIN_CLASS, str(props)],
            log_path=log_path,
            cwd=state_dir,
        )
        info = BrokerInfo(f"{LOOPBACK}:{broker_port}", pid, state_dir, log_path, protocol)
        _write_record(state_dir, info, controller_port, security)
        try:
            _wait_until_serving(info, props, timeout, sasl, tls)
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
            _until_exited(pid)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _is_broker(pid, props):
                _until_exited(pid)
                return
            time.sleep(0.05)
    if _is_broker(pid, props):
        raise LocalKafkaError(f"broker pid {pid} survived SIGKILL")


def _until_exited(pid: int) -> None:
    """Wait (at most STOP_KILL_GRACE) while ``pid`` is still tearing down: its command line
    is gone before it is (a loaded machine took seconds), and ``stop`` returning then
    left a running JVM behind."""
    deadline = time.monotonic() + STOP_KILL_GRACE
    while _exiting(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _exiting(pid: int) -> bool:
    """Still there with an empty command line and not yet a zombie. A pid reused by a new
    process has a command line again, so this never waits on someone else's process."""
    if not _HAS_PROC:
        return False
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
    except OSError:
        pass  # unreadable while the process tears down
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # gone
    return state not in ("Z", "X")


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


EXEC_GRACE_SECONDS = 5.0


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def _protocol(sasl: SaslSetup | None, tls: TlsSetup | None) -> str:
    return {(False, False): "PLAINTEXT", (True, False): "SASL_PLAINTEXT",
            (False, True): "SSL", (True, True): "SASL_SSL"}[(sasl is not None, tls is not None)]


def _server_properties(port: int, controller_port: int, data: Path, sasl: SaslSetup | None = None,
                       tls: TlsSetup | None = None, state_dir: Path | None = None) -> str:
    # The listener is named after its protocol, so the per-listener keys below read naturally.
    listener = _protocol(sasl, tls)
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"{listener}://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"{listener}://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": listener,
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
        # Topics created on first use (or by Faust) get the broker's limit, not ccpulse's
        # topic specs: the largest of those, so an event of the contract's limit fits anywhere.
        "message.max.bytes": str(EVENT_MESSAGE_MAX_BYTES),
        # A dev box keeps a day of data, at most 256 MiB per partition, in 64 MiB segments.
        "log.retention.hours": "24",
        "log.retention.bytes": str(256 * 1024 * 1024),
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.check.interval.ms": str(5 * 60 * 1000),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    if sasl is not None:
        # Server side only: SCRAM checks clients against the credentials in the
        # metadata log, so the JAAS entry needs no user. A single node never
        # connects to itself over the inter-broker listener (the controller is
        # reached over CONTROLLER), so it needs no credentials of its own.
        lines["sasl.enabled.mechanisms"] = ",".join(sasl.mechanisms)
        lines["sasl.mechanism.inter.broker.protocol"] = sasl.mechanisms[0]
        for mech in sasl.mechanisms:
            lines[f"listener.name.{listener.lower()}.{mech.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    if tls is not None:
        assert state_dir is not None
        lines.update({
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(_pem_keystore(state_dir, tls)),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(Path(tls.cafile).resolve()),
            "ssl.client.auth": "none",
        })
    header = "# Written by ccpulse.commands.local_kafka at every start; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in lines.items())


def _previous_ports(props: Path) -> tuple[int | None, int | None]:
    match = re.search(r"^listeners=(?:SASL_)?(?:PLAINTEXT|SSL)://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)$",
                      _read_text(props) or "", re.M)
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2))


def _pem_keystore(state_dir: Path, tls: TlsSetup) -> Path:
    """Kafka's PEM keystore wants the key and its certificate chain in one file (owner-only)."""
    try:
        key = Path(tls.keyfile).read_text()
        chain = Path(tls.certfile).read_text()
    except OSError as exc:
        raise LocalKafkaError(f"tls: cannot read the broker certificate or key ({exc.strerror or exc})") from None
    if "ENCRYPTED" in key:
        raise LocalKafkaError(f"tls: {tls.keyfile} is encrypted; the local broker needs an unencrypted key")
    path = state_dir / "keystore.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.rstrip("\n") + "\n" + chain)
    return path


def _format_storage(java: str, lib: Path, log4j: Path, props: Path, data: Path,
                    sasl: SaslSetup | None = None) -> None:
    # Without meta.properties nothing in data/ was ever served; a half-formatted
    # folder would make the formatter refuse, so start over.
    shutil.rmtree(data, ignore_errors=True)
    cmd = [
        java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j.configuration={log4j.as_uri()}", "-cp", f"{lib}{os.sep}*",
        "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props),
    ]
    if sasl is not None:
        for user in sasl.users:
            for mech in sasl.mechanisms:
                cmd += ["--add-scram", _scram_credential(mech, user)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not (data / "meta.properties").is_file():
        detail = _first_error(proc.stdout + "\n" + proc.stderr) or f"exit code {proc.returncode}"
        raise LocalKafkaError(f"formatting Kafka storage in {data} failed: {detail}")


def _scram_credential(mechanism: str, user: SaslUser) -> str:
    """``--add-scram`` in its salted form (RFC 5802 SaltedPassword): the password stays off argv."""
    algorithm = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}[mechanism]
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(algorithm, user.password.encode(), salt, _SCRAM_ITERATIONS)
    b64 = base64.b64encode
    return (f"{mechanism}=[name={user.username},iterations={_SCRAM_ITERATIONS},"
            f'salt="{b64(salt).decode()}",saltedpassword="{b64(salted).decode()}"]')


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
        candidate = free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile
        if candidate not in avoid and _port_free(candidate):
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


def _wait_until_serving(info: BrokerInfo, props: Path, timeout: float, sasl: SaslSetup | None = None,
                        tls: TlsSetup | None = None) -> None:
    started = time.monotonic()
    deadline = started + timeout
    while True:
        # Right after the launch the pid may still be the shell that forks java (its command
        # line is not the broker's yet): only a process that is gone, or still not java after
        # a few seconds, has exited.
        if not _is_broker(info.pid, props) and (
                not _pid_exists(info.pid) or time.monotonic() - started > EXEC_GRACE_SECONDS):
            hint = _first_error(_read_text(info.log_path) or "") or "no error logged"
            raise LocalKafkaError(f"broker exited during startup ({hint}); see {info.log_path}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalKafkaError(f"broker did not accept connections within {timeout:g}s; see {info.log_path}")
        # The TCP check keeps aiokafka from logging connection errors while the JVM boots.
        if _accepting(info.port) and _serves_metadata(info.bootstrap, min(remaining, 5.0), sasl, tls):
            return
        time.sleep(0.1)


def _serves_metadata(bootstrap: str, timeout: float, sasl: SaslSetup | None = None,
                     tls: TlsSetup | None = None) -> bool:
    # A listening socket is not enough: until the broker has registered with its
    # controller and been unfenced, it answers metadata with no brokers.
    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        security: dict[str, Any] = {"security_protocol": _protocol(sasl, tls)}
        if sasl is not None:  # also proves that the first user can log in
            user = sasl.users[0]
            security.update(sasl_mechanism=sasl.mechanisms[0],
                            sasl_plain_username=user.username, sasl_plain_password=user.password)
        if tls is not None:
            import ssl

            security["ssl_context"] = ssl.create_default_context(cafile=str(tls.cafile))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=max(int(timeout * 1000), 1000),
                                    **security)
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
            security_protocol=str(record.get("security_protocol", "PLAINTEXT")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _is_broker(info.pid, state_dir / _PROPS) else None


def _write_record(state_dir: Path, info: BrokerInfo, controller_port: int, security: str | None) -> None:
    record = {
        "pid": info.pid,
        "bootstrap": info.bootstrap,
        "security_protocol": info.security_protocol,
        "security": security,
        "controller_port": controller_port,
        "log_path": str(info.log_path),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(state_dir / _RECORD, record)


def _recorded_sasl(state_dir: Path, running: bool) -> str | None:
    """The security fingerprint of the running broker (``running``), or the SASL digest of the
    formatted data; None: PLAINTEXT / no SASL users."""
    try:
        record = json.loads((state_dir / (_RECORD if running else _SASL_RECORD)).read_text())
        value = record.get("security" if running else "formatted")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)  # readers never see half a record


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

