"""Settings: one TOML file plus environment overrides (environment wins).

Every setting is validated when loaded; a wrong one raises ``ConfigError`` whose
message names the key, so the CLI can print one line and exit non-zero.
The environment variable names are fixed by OPERATIONS.md.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ccpulse.core.params import DEFAULT_MAX_STEPS_PER_INTERACTION, Thresholds
from ccpulse.core.scorecard import ScorecardSettings, parse_scorecard
from ccpulse.core.sla import OCCUPANCY_WINDOW_S, SlaTargets, parse_targets
from ccpulse.kafka_security import KafkaSecurityError, ssl_context
from schemas.events import name_problem

SERVICE_LEVEL_FORMULAS = (
    "answered_over_exits",
    "abandons_within_target_neutral",
    "abandons_within_target_positive",
    "answered_only",
)
CHANNELS = ("voice", "chat", "email", "web", "social")
MAX_WINDOW_SIZES = 12
# Kafka's legal topic name: ASCII letters, digits, '.', '_' and '-', at most 249.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range."""


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "voice": Thresholds(20.0, 5.0, 0.0),
    "chat": Thresholds(60.0, 10.0, 0.0),
    # Tickets: every non-voice, non-chat channel (email, web, social, ...).
    "ticket": Thresholds(86400.0, 0.0, 0.0),
}


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# What aiokafka (and so Faust) can authenticate with a username and password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_MASK = "***"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""  # empty: PLAIN
    sasl_username: str = ""
    sasl_password: str = ""
    # A file holding the SASL password (a mounted secret); read at load into sasl_password.
    sasl_password_file: str = ""
    # TLS (SSL and SASL_SSL): CA bundle to trust (empty: the system's), client
    # certificate and key for mutual TLS, the key's password (or a file holding it).
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: str = ""
    ssl_key_password_file: str = ""
    ssl_check_hostname: bool = True
    # Partitions of the topics ccpulse creates itself (internal and aggregate).
    partitions: int = 4

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never show a secret.
        def shown(name: str) -> str:
            value = getattr(self, name)
            return repr(_MASK) if name in ("sasl_password", "ssl_key_password") and value else repr(value)
        return "KafkaSettings(" + ", ".join(f"{f.name}={shown(f.name)}" for f in fields(self)) + ")"


@dataclass(frozen=True)
class WebSettings:
    # Bearer token required on /metrics, /api/* and /wallboard (empty: no auth);
    # token_file: a file holding it (a mounted secret), read at load into token.
    token: str = field(default="", repr=False)
    token_file: str = ""
    # Address the HTTP server listens on. Loopback by default: the pages show live
    # KPIs, and without a token to anyone who can connect (README "Web access").
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class FcrSettings:
    # HMAC key for the customer ids FCR groups contacts by (the key of <app>-contacts and
    # of the fcr-customers table). Empty: one is generated at first start and shared by
    # every worker of the app through the <app>-fcr-key topic. customer_key_file: a
    # mounted secret, read at load.
    customer_key: str = field(default="", repr=False)
    customer_key_file: str = ""


@dataclass(frozen=True)
class TopicSettings:
    prefix: str = ""
    calls: str = "calls"
    chats: str = "chats"
    tickets: str = "tickets"
    # Agent presence (EVENTS.md "Agents"), keyed by agent_id.
    agents: str = "agents"
    dead_letter: str = "events.dead-letter"
    kpi_windows: str = "kpi.windows"
    kpi_agents: str = "kpi.agents"
    kpi_queue_state: str = "kpi.queue-state"
    sla_breaches: str = "sla.breaches"
    kpi_scorecards: str = "kpi.scorecards"

    def name(self, attr: str) -> str:
        return self.prefix + getattr(self, attr)


@dataclass(frozen=True)
class ClickHouseSettings:
    dsn: str = field(default_factory=lambda: _store_in(".ccpulse"))  # the default state dir's store
    enabled: bool = True
    batch_size: int = 5000
    flush_seconds: float = 0.5
    # Retention in days, applied as table TTLs when the worker starts. 0 (default):
    # not managed by ccpulse, the table's TTL is left as it is (none when created).
    raw_retention_days: int = 0           # raw_events, by occurred_at
    interactions_retention_days: int = 0  # interactions, by offered_at
    windows_retention_days: int = 0       # kpi_windows and agent_windows shorter than a day
    daily_retention_days: int = 0         # 1-day windows (the source of the trend rollups)
    # Credentials for a ClickHouse server. Empty: those of the DSN (http://user:pass@host),
    # else "default" with no password. password_file: a mounted secret, read at load.
    user: str = ""
    password: str = ""
    password_file: str = ""
    # A failing write is retried with a backoff doubling from retry_backoff_seconds
    # up to retry_max_backoff_seconds, until it succeeds (nothing is dropped).
    retry_backoff_seconds: float = 0.2
    retry_max_backoff_seconds: float = 10.0
    # Store raw_events.customer_id (and the payload's copy) as a keyed hash:
    # HMAC-SHA256 with customer_id_key, hex, truncated. The same key gives the same
    # hash after a restart, so FCR and recompute queries still group by customer.
    hash_customer_ids: bool = False
    customer_id_key: str = ""
    customer_id_key_file: str = ""

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never show a secret, in the DSN either.
        secret = ("password", "customer_id_key")
        shown = ", ".join(
            f"{f.name}={_MASK if f.name in secret and getattr(self, f.name) else getattr(self, f.name)!r}"
            if f.name != "dsn" else f"dsn={masked_dsn(self.dsn)!r}" for f in fields(self))
        return f"ClickHouseSettings({shown})"


def masked_dsn(dsn: str) -> str:
    """The DSN with the password of its user part (``scheme://user:PASSWORD@host``) masked."""
    scheme, sep, rest = dsn.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return dsn
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{_MASK}@{host}"


@dataclass(frozen=True)
class WindowSettings:
    # Window sizes in seconds (1 min, 15 min, 1 h, 1 day); the smallest feeds /metrics.
    sizes: tuple[int, ...] = (60, 900, 3600, 86400)
    allowed_lateness_seconds: float = 120.0
    # Snapshots of open windows are published at most this often per key.
    publish_interval_seconds: float = 1.0
    # A stream that went quiet this long (wall clock) lets event time advance
    # with the wall clock so its last windows still close.
    idle_close_seconds: float = 30.0
    # An input partition silent this long (wall clock) stops holding event time back.
    source_idle_seconds: float = 5.0
    # Interactions idle (event time) longer than this are expired.
    interaction_horizon_seconds: float = 86400.0
    # First-contact resolution: no new interaction of the same customer within this.
    fcr_horizon_seconds: float = 86400.0
    timezone: str = "UTC"
    day_start_hour: int = 0


@dataclass(frozen=True)
class LimitSettings:
    # Steps kept per interaction ([limits]); later ones are dead-lettered as
    # interaction_too_long. Every step re-derives the interaction, and its changelog
    # record must stay under Kafka's 1 MiB message limit: at the largest allowed value
    # with every name at 128 characters it is about 0.8 MiB (tests/test_interaction_limits.py).
    max_steps_per_interaction: int = DEFAULT_MAX_STEPS_PER_INTERACTION
    MAX_STEPS_PER_INTERACTION: ClassVar[int] = 3000


@dataclass(frozen=True)
class StaffingSettings:
    # [staffing]: chats one agent handles at once; agents_required for a chat queue is
    # the Erlang C sessions divided by this (ccpulse/core/staffing.py).
    chat_sessions_per_agent: int = 3
    MAX_CHAT_SESSIONS_PER_AGENT: ClassVar[int] = 100


@dataclass(frozen=True)
class ConnectSettings:
    """[connect]: the platforms' own events in (README "Connect your platform")."""

    # ccpulse connect http, the webhook receiver. Loopback by default: TLS is left to a
    # reverse proxy in front of it (README), which is what the platforms call.
    http_bind: str = "127.0.0.1"
    http_port: int = 6070
    # A larger body is refused with 413 before it is read.
    max_body_bytes: int = 1_048_576
    # How long a request waits for Kafka's acknowledgement before it is answered 503
    # (the platform retries); under the platforms' own timeouts (Twilio: 15 s).
    ack_timeout_seconds: float = 10.0
    # The receiver's base URL as the platform calls it (https://host[:port], no path):
    # Twilio signs the URL. Empty: from the request, X-Forwarded-Proto/-Host first.
    public_url: str = ""
    # The sources' secrets; a source without one is not served. *_file: a mounted secret.
    twilio_auth_token: str = field(default="", repr=False)
    twilio_auth_token_file: str = ""
    zendesk_secret: str = field(default="", repr=False)
    zendesk_secret_file: str = ""
    # Zendesk signs a timestamp: a request signed longer ago than this is refused (replay).
    zendesk_tolerance_seconds: float = 300.0
    # Zendesk reports agent status per channel; the one whose status maps to agent events.
    zendesk_agent_channel: str = "support"
    jira_secret: str = field(default="", repr=False)
    jira_secret_file: str = ""
    # A Jira ticket's queue: its project key, or its request type's name (the project key
    # when the payload carries none).
    jira_queue: str = "project"
    # EventBridge API destinations (Amazon Connect, Genesys Cloud): an API key in a header.
    eventbridge_api_key: str = field(default="", repr=False)
    eventbridge_api_key_file: str = ""
    eventbridge_header: str = "x-api-key"

    SECRETS: ClassVar[tuple[str, ...]] = ("twilio_auth_token", "zendesk_secret", "jira_secret",
                                          "eventbridge_api_key")
    JIRA_QUEUES: ClassVar[tuple[str, ...]] = ("project", "request_type")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    clickhouse: ClickHouseSettings = field(default_factory=ClickHouseSettings)
    windows: WindowSettings = field(default_factory=WindowSettings)
    web: WebSettings = field(default_factory=WebSettings)
    fcr: FcrSettings = field(default_factory=FcrSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    staffing: StaffingSettings = field(default_factory=StaffingSettings)
    connect: ConnectSettings = field(default_factory=ConnectSettings)
    web_port: int = 6066
    state_dir: str = ".ccpulse"
    app_id: str = "ccpulse"
    max_future_seconds: float = 86400.0
    thresholds: Mapping[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # (queue, channel kind) -> Thresholds overriding the channel's.
    queue_thresholds: Mapping[tuple[str, str], Thresholds] = field(default_factory=dict)
    # SLA targets ([targets.<kind>], [targets.hold], [queues.<q>.targets.<kind>]) and the
    # weighted scorecard ([scorecard]); see ccpulse/core/sla.py and ccpulse/core/scorecard.py.
    targets: SlaTargets = field(default_factory=SlaTargets)
    scorecard: ScorecardSettings = field(default_factory=ScorecardSettings)

    def thresholds_for(self, queue: str, channel: str) -> Thresholds:
        kind = channel_kind(channel)
        return self.queue_thresholds.get((queue, kind)) or self.thresholds[kind]


def channel_kind(channel: str) -> str:
    """voice and chat are their own kind; every ticket channel shares 'ticket'."""
    return channel if channel in ("voice", "chat") else "ticket"


ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CCPULSE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "CCPULSE_KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "CCPULSE_KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "CCPULSE_KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "CCPULSE_KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "CCPULSE_KAFKA_SASL_PASSWORD_FILE": ("kafka", "sasl_password_file"),
    "CCPULSE_KAFKA_SSL_CAFILE": ("kafka", "ssl_cafile"),
    "CCPULSE_KAFKA_SSL_CERTFILE": ("kafka", "ssl_certfile"),
    "CCPULSE_KAFKA_SSL_KEYFILE": ("kafka", "ssl_keyfile"),
    "CCPULSE_KAFKA_SSL_KEY_PASSWORD": ("kafka", "ssl_key_password"),
    "CCPULSE_KAFKA_SSL_KEY_PASSWORD_FILE": ("kafka", "ssl_key_password_file"),
    "CCPULSE_KAFKA_SSL_CHECK_HOSTNAME": ("kafka", "ssl_check_hostname"),
    "CCPULSE_WEB_TOKEN": ("web", "token"),
    "CCPULSE_WEB_TOKEN_FILE": ("web", "token_file"),
    "CCPULSE_WEB_BIND": ("web", "bind"),
    "CCPULSE_FCR_CUSTOMER_KEY": ("fcr", "customer_key"),
    "CCPULSE_FCR_CUSTOMER_KEY_FILE": ("fcr", "customer_key_file"),
    "CCPULSE_KAFKA_PARTITIONS": ("kafka", "partitions"),
    "CCPULSE_CLICKHOUSE_DSN": ("clickhouse", "dsn"),
    "CCPULSE_CLICKHOUSE_USER": ("clickhouse", "user"),
    "CCPULSE_CLICKHOUSE_PASSWORD": ("clickhouse", "password"),
    "CCPULSE_CLICKHOUSE_PASSWORD_FILE": ("clickhouse", "password_file"),
    "CCPULSE_CLICKHOUSE_HASH_CUSTOMER_IDS": ("clickhouse", "hash_customer_ids"),
    "CCPULSE_CLICKHOUSE_CUSTOMER_ID_KEY": ("clickhouse", "customer_id_key"),
    "CCPULSE_CLICKHOUSE_CUSTOMER_ID_KEY_FILE": ("clickhouse", "customer_id_key_file"),
    "CCPULSE_TOPIC_PREFIX": ("topics", "prefix"),
    **{f"CCPULSE_CONNECT_{f.upper()}": ("connect", f) for f in (
        "http_bind", "http_port", "max_body_bytes", "ack_timeout_seconds", "public_url",
        "twilio_auth_token", "twilio_auth_token_file", "zendesk_secret", "zendesk_secret_file",
        "zendesk_tolerance_seconds", "zendesk_agent_channel", "jira_secret", "jira_secret_file",
        "jira_queue", "eventbridge_api_key", "eventbridge_api_key_file", "eventbridge_header")},
    "CCPULSE_WEB_PORT": ("", "web_port"),
    "CCPULSE_STATE_DIR": ("", "state_dir"),
    "CCPULSE_APP_ID": ("", "app_id"),
}


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (``CCPULSE_CONFIG`` or ./ccpulse.toml if present), then the environment."""
    env = os.environ if env is None else env
    doc: dict[str, Any] = {}
    chosen = path or env.get("CCPULSE_CONFIG")
    if chosen is None and Path("ccpulse.toml").is_file():
        chosen = "ccpulse.toml"
    if chosen is not None:
        try:
            doc = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {chosen}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen}: not valid TOML ({exc})") from None
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env:
            target = doc.setdefault(section, {}) if section else doc
            if not isinstance(target, dict):
                raise ConfigError(f"{section}: must be a table")
            target[key] = env[var]
    return _build(doc)


def _build(doc: dict[str, Any]) -> Settings:
    known = {"kafka", "topics", "clickhouse", "windows", "channels", "queues", "targets", "scorecard",
             "web", "fcr", "limits", "staffing", "connect", "web_port", "state_dir", "app_id", "max_future_seconds"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
    _refuse_non_finite(doc, "")
    thresholds = dict(DEFAULT_THRESHOLDS)
    for kind, table in _table(doc, "channels").items():
        if kind not in thresholds:
            raise ConfigError(f"channels.{kind}: unknown channel kind (voice, chat, ticket)")
        thresholds[kind] = _section(Thresholds, _as_table(table, f"channels.{kind}"),
                                    f"channels.{kind}", thresholds[kind])
    queue_thresholds: dict[tuple[str, str], Thresholds] = {}
    for queue, per_kind in _table(doc, "queues").items():
        problem = name_problem(queue)
        if problem is not None:  # settings no event can match would be silently ignored
            raise ConfigError(f"queues.{queue}: the queue name {problem}")
        for kind, table in _as_table(per_kind, f"queues.{queue}").items():
            if kind == "targets":  # [queues.<q>.targets.<kind>]: parsed with [targets] below
                continue
            if kind not in thresholds:
                raise ConfigError(f"queues.{queue}.{kind}: unknown channel kind (voice, chat, ticket)")
            queue_thresholds[(queue, kind)] = _section(
                Thresholds, _as_table(table, f"queues.{queue}.{kind}"),
                f"queues.{queue}.{kind}", thresholds[kind])
    settings = Settings(
        kafka=_kafka(_section(KafkaSettings, _table(doc, "kafka"), "kafka", KafkaSettings())),
        topics=_section(TopicSettings, _table(doc, "topics"), "topics", TopicSettings()),
        clickhouse=_clickhouse(_section(ClickHouseSettings, _table(doc, "clickhouse"), "clickhouse",
                                        ClickHouseSettings(dsn=_store_in(doc.get("state_dir", ".ccpulse"))))),
        windows=_section(WindowSettings, _table(doc, "windows"), "windows", WindowSettings()),
        web=_web(_section(WebSettings, _table(doc, "web"), "web", WebSettings())),
        fcr=_fcr(_section(FcrSettings, _table(doc, "fcr"), "fcr", FcrSettings())),
        limits=_section(LimitSettings, _table(doc, "limits"), "limits", LimitSettings()),
        staffing=_section(StaffingSettings, _table(doc, "staffing"), "staffing", StaffingSettings()),
        connect=_connect(_section(ConnectSettings, _table(doc, "connect"), "connect", ConnectSettings())),
        web_port=_coerce(doc.get("web_port", 6066), int, "web_port"),
        state_dir=_coerce(doc.get("state_dir", ".ccpulse"), str, "state_dir"),
        app_id=_coerce(doc.get("app_id", "ccpulse"), str, "app_id"),
        max_future_seconds=_coerce(doc.get("max_future_seconds", 86400.0), float, "max_future_seconds"),
        thresholds=thresholds,
        queue_thresholds=queue_thresholds,
        targets=_targets(doc),
        scorecard=_scorecard(doc),
    )
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    steps = s.limits.max_steps_per_interaction
    if not 1 <= steps <= LimitSettings.MAX_STEPS_PER_INTERACTION:
        raise ConfigError(f"limits.max_steps_per_interaction: must be 1-{LimitSettings.MAX_STEPS_PER_INTERACTION}"
                          f" (got {steps})")
    sessions = s.staffing.chat_sessions_per_agent
    if not 1 <= sessions <= StaffingSettings.MAX_CHAT_SESSIONS_PER_AGENT:
        raise ConfigError(f"staffing.chat_sessions_per_agent: must be 1-{StaffingSettings.MAX_CHAT_SESSIONS_PER_AGENT}"
                          f" (got {sessions})")
    if not 1 <= s.web_port <= 65535:
        raise ConfigError(f"web_port: {s.web_port} is not a TCP port (1-65535)")
    if s.max_future_seconds <= 0:
        raise ConfigError(f"max_future_seconds: {s.max_future_seconds:g} must be positive "
                          "(how far ahead of the worker clock an event may be dated)")
    if not s.state_dir:
        raise ConfigError("state_dir: must not be empty")
    _validate_topic_names(s)
    _validate_connect(s.connect)
    if s.kafka.partitions < 1:
        raise ConfigError("kafka.partitions: must be at least 1")
    _validate_kafka_security(s.kafka)
    if s.web.token and not _WEB_TOKEN.match(s.web.token):
        raise ConfigError("web.token: must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / = - "
                          "(e.g. `openssl rand -hex 32`)")
    if not _listen_address(s.web.bind):
        raise ConfigError(f"web.bind: {s.web.bind!r} is not an address to listen on (an IP address or host "
                          "name, e.g. 127.0.0.1 or 0.0.0.0; the port is web_port)")
    if s.fcr.customer_key and len(s.fcr.customer_key) < 16:
        raise ConfigError("fcr.customer_key: must be a secret of at least 16 characters "
                          "(e.g. `openssl rand -hex 32`), or empty to have one generated")
    if not (s.clickhouse.dsn.startswith("chdb://") or s.clickhouse.dsn.startswith(("http://", "https://"))):
        raise ConfigError(f"clickhouse.dsn: {masked_dsn(s.clickhouse.dsn)!r} must start with chdb://, "
                          "http:// or https://")
    path = s.clickhouse.dsn[len("chdb://"):] if s.clickhouse.dsn.startswith("chdb://") else ""
    authority = path.split("/", 1)[0]
    if "@" in authority:
        # The embedded store is a directory: a user:password@ would become part of its name.
        # Shown without any of the user part: even "secret@" alone may be a password.
        shown = "chdb://***@" + path[authority.rindex("@") + 1:]
        raise ConfigError(f"clickhouse.dsn: {shown!r} has credentials, which a chdb:// DSN cannot use "
                          "(it is a path: chdb://PATH; credentials are for http(s)://)")
    if s.clickhouse.batch_size < 1 or s.clickhouse.flush_seconds <= 0:
        raise ConfigError("clickhouse.batch_size and clickhouse.flush_seconds: must be positive")
    for name in ("raw_retention_days", "interactions_retention_days", "windows_retention_days",
                 "daily_retention_days"):
        if getattr(s.clickhouse, name) < 0:
            raise ConfigError(f"clickhouse.{name}: must not be negative (0 keeps data forever)")
    ch = s.clickhouse
    if not 0 < ch.retry_backoff_seconds <= ch.retry_max_backoff_seconds:
        raise ConfigError("clickhouse.retry_backoff_seconds: must be positive and at most "
                          "clickhouse.retry_max_backoff_seconds")
    if ch.hash_customer_ids and len(ch.customer_id_key) < 16:
        raise ConfigError("clickhouse.customer_id_key: hash_customer_ids needs a secret key of at least 16 "
                          "characters (env CCPULSE_CLICKHOUSE_CUSTOMER_ID_KEY or ..._KEY_FILE)")
    w = s.windows
    if len(w.sizes) > MAX_WINDOW_SIZES:
        # Every size multiplies the windows kept and published per event.
        raise ConfigError(f"windows.sizes: {len(w.sizes)} sizes, at most {MAX_WINDOW_SIZES} are allowed")
    if not w.sizes or any(size <= 0 or 86400 % size for size in w.sizes):
        raise ConfigError(f"windows.sizes: {_shown(list(w.sizes))} must be positive divisors of one day "
                          "in seconds")
    if list(w.sizes) != sorted(set(w.sizes)):
        # The first size is taken as the smallest (it feeds /metrics and the wallboard).
        raise ConfigError(f"windows.sizes: {_shown(list(w.sizes))} must be in increasing order, "
                          "each size once")
    for name, positive in (("allowed_lateness_seconds", False), ("publish_interval_seconds", True),
                           ("idle_close_seconds", True), ("source_idle_seconds", True),
                           ("interaction_horizon_seconds", True), ("fcr_horizon_seconds", False)):
        value = getattr(w, name)
        if value < 0 or (positive and value == 0):
            raise ConfigError(f"windows.{name}: {value:g} must be {'positive' if positive else 'at least 0'}")
    if not 0 <= w.day_start_hour <= 23:
        raise ConfigError("windows.day_start_hour: must be 0-23")
    if OCCUPANCY_WINDOW_S not in w.sizes:
        # Occupancy is observed on final 15-minute windows: without them a target never fires.
        scoped = [(f"targets.{k}", t) for k, t in s.targets.kinds.items()] + \
                 [(f"queues.{q}.targets.{k}", t) for (q, k), t in s.targets.queues.items()]
        for where, targets in scoped:
            if "occupancy" in targets:
                raise ConfigError(f"{where}.occupancy: needs {OCCUPANCY_WINDOW_S} s windows "
                                  f"(windows.sizes {_shown(list(w.sizes))} has none)")
    try:
        from zoneinfo import ZoneInfo
        ZoneInfo(w.timezone)
    except Exception:
        raise ConfigError(f"windows.timezone: {w.timezone!r} is not a known time zone") from None
    for where, t in [(f"channels.{k}", t) for k, t in s.thresholds.items()] + \
                    [(f"queues.{q}.{k}", t) for (q, k), t in s.queue_thresholds.items()]:
        if t.service_level_formula not in SERVICE_LEVEL_FORMULAS:
            raise ConfigError(f"{where}.service_level_formula: {t.service_level_formula!r} is not one of "
                              + ", ".join(SERVICE_LEVEL_FORMULAS))
        for name in ("service_level_seconds", "short_abandon_seconds", "immediate_seconds"):
            if getattr(t, name) < 0:
                raise ConfigError(f"{where}.{name}: must not be negative")


def _validate_topic_names(s: Settings) -> None:
    # Checked here, not at the broker: a bad name fails there only when a topic is first created.
    if not _TOPIC_NAME.match(s.app_id):
        raise ConfigError(f"app_id: {s.app_id!r} must be 1-249 of A-Z a-z 0-9 . _ - (it names Kafka topics "
                          "and the consumer group)")
    t = s.topics
    if t.prefix and not _TOPIC_NAME.match(t.prefix):
        raise ConfigError(f"topics.prefix: {t.prefix!r} may hold only A-Z a-z 0-9 . _ -")
    for f in fields(TopicSettings):
        if f.name != "prefix" and not _TOPIC_NAME.match(t.name(f.name)):
            raise ConfigError(f"topics.{f.name}: {t.name(f.name)!r} is not a Kafka topic name "
                              "(1-249 of A-Z a-z 0-9 . _ -)")


def _kafka(k: KafkaSettings) -> KafkaSettings:
    """Secrets from files: the file wins only when the value itself is not set as well."""
    changes: dict[str, str] = {}
    for value_key, file_key in (("sasl_password", "sasl_password_file"),
                                ("ssl_key_password", "ssl_key_password_file")):
        path = getattr(k, file_key)
        if not path:
            continue
        if getattr(k, value_key):
            raise ConfigError(f"kafka.{value_key} and kafka.{file_key}: set only one of them")
        changes[value_key] = _secret_file(path, f"kafka.{file_key}")
    return replace(k, **changes)


def _store_in(state_dir: Any) -> str:
    # The embedded store belongs to the state dir, by an absolute path: two instances
    # with their own state dirs never fight over one store's lock, and a command
    # started from another directory does not silently open a new, empty store.
    return f"chdb://{Path(str(state_dir)).absolute() / 'clickhouse'}"


def _clickhouse(ch: ClickHouseSettings) -> ClickHouseSettings:
    """Secrets from files: a file and the value itself set together is an error (which wins?)."""
    changes: dict[str, str] = {}
    for value_key, file_key in (("password", "password_file"), ("customer_id_key", "customer_id_key_file")):
        path = getattr(ch, file_key)
        if not path:
            continue
        if getattr(ch, value_key):
            raise ConfigError(f"clickhouse.{value_key} and clickhouse.{file_key}: set only one of them")
        changes[value_key] = _secret_file(path, f"clickhouse.{file_key}")
    return replace(ch, **changes)


def _web(w: WebSettings) -> WebSettings:
    if not w.token_file:
        return w
    if w.token:
        raise ConfigError("web.token and web.token_file: set only one of them")
    token = _secret_file(w.token_file, "web.token_file")
    if not token:
        raise ConfigError(f"web.token_file: {w.token_file} is empty")
    return replace(w, token=token)


def _connect(c: ConnectSettings) -> ConnectSettings:
    changes: dict[str, str] = {}
    for key in ConnectSettings.SECRETS:
        path = getattr(c, f"{key}_file")
        if not path:
            continue
        if getattr(c, key):
            raise ConfigError(f"connect.{key} and connect.{key}_file: set only one of them")
        changes[key] = _secret_file(path, f"connect.{key}_file")
        if not changes[key]:
            raise ConfigError(f"connect.{key}_file: {path} is empty")
    return replace(c, **changes)


def _validate_connect(c: ConnectSettings) -> None:
    if not _listen_address(c.http_bind):
        raise ConfigError(f"connect.http_bind: {c.http_bind!r} is not an address to listen on (an IP address "
                          "or host name, e.g. 127.0.0.1 or 0.0.0.0)")
    if not 1 <= c.http_port <= 65535:
        raise ConfigError(f"connect.http_port: {c.http_port} is not a TCP port (1-65535)")
    if not 1024 <= c.max_body_bytes <= 16 * 1024 * 1024:
        raise ConfigError(f"connect.max_body_bytes: {c.max_body_bytes} must be 1024-16777216")
    for name in ("ack_timeout_seconds", "zendesk_tolerance_seconds"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"connect.{name}: {getattr(c, name):g} must be positive")
    if c.public_url and (not re.match(r"https?://[^/?#\s]+\Z", c.public_url)):
        raise ConfigError(f"connect.public_url: {c.public_url!r} must be http(s)://host[:port] with no path")
    if c.jira_queue not in ConnectSettings.JIRA_QUEUES:
        raise ConfigError(f"connect.jira_queue: {c.jira_queue!r} is not one of "
                          + ", ".join(ConnectSettings.JIRA_QUEUES))
    if not re.match(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z", c.eventbridge_header):
        raise ConfigError(f"connect.eventbridge_header: {c.eventbridge_header!r} is not an HTTP header name")
    for key in ConnectSettings.SECRETS:
        value = getattr(c, key)
        if value and (value != value.strip() or len(value) < 8):
            # A pasted secret with a stray space would fail every signature, silently.
            raise ConfigError(f"connect.{key}: must be at least 8 characters with no leading or "
                              "trailing whitespace")


def _fcr(f: FcrSettings) -> FcrSettings:
    if not f.customer_key_file:
        return f
    if f.customer_key:
        raise ConfigError("fcr.customer_key and fcr.customer_key_file: set only one of them")
    return replace(f, customer_key=_secret_file(f.customer_key_file, "fcr.customer_key_file"))


def _listen_address(host: str) -> bool:
    """An IP address or a host name: no port, no scheme, no spaces."""
    import ipaddress
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST_NAME.match(host))


_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
# RFC 6750 b64token: fits an Authorization header and a cookie unquoted.
_WEB_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,}$")


def _secret_file(path: str, where: str) -> str:
    # Mounted secrets usually end with a newline nobody meant as part of the secret.
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None


def _validate_kafka_security(k: KafkaSettings) -> None:
    if k.security_protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: {k.security_protocol!r} is not one of "
                          + ", ".join(SECURITY_PROTOCOLS))
    if k.security_protocol.startswith("SASL_"):
        if k.sasl_mechanism and k.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"kafka.sasl_mechanism: {k.sasl_mechanism!r} is not one of "
                              + ", ".join(SASL_MECHANISMS))
        if not k.sasl_username:
            raise ConfigError(f"kafka.sasl_username: required with security_protocol {k.security_protocol} "
                              "(env CCPULSE_KAFKA_SASL_USERNAME)")
        if not k.sasl_password:
            raise ConfigError(f"kafka.sasl_password: required with security_protocol {k.security_protocol} "
                              "(env CCPULSE_KAFKA_SASL_PASSWORD or CCPULSE_KAFKA_SASL_PASSWORD_FILE)")
    if k.ssl_keyfile and not k.ssl_certfile:
        raise ConfigError("kafka.ssl_keyfile: needs kafka.ssl_certfile (the client certificate)")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(k, key)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"kafka.{key}: cannot read {path} ({exc.strerror or exc})") from None
    if k.security_protocol.endswith("SSL"):
        try:
            ssl_context(k)  # a wrong PEM or key password fails here, not at the first connection
        except KafkaSecurityError as exc:
            raise ConfigError(str(exc)) from None


def _targets(doc: dict[str, Any]) -> SlaTargets:
    per_queue = {queue: table["targets"] for queue, table in _table(doc, "queues").items()
                 if isinstance(table, dict) and "targets" in table}
    try:
        return parse_targets(_table(doc, "targets"), per_queue)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _scorecard(doc: dict[str, Any]) -> ScorecardSettings:
    try:
        return parse_scorecard(_table(doc, "scorecard"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _refuse_non_finite(value: Any, where: str) -> None:
    """nan and inf (TOML has both) pass every range check (nan < 0 is false), so they
    are refused wherever they appear, [targets] and [scorecard] included."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for item in value:
            _refuse_non_finite(item, where)


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return _as_table(doc.get(key, {}), key)


def _as_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table")
    return value


def _section(cls: type, table: dict[str, Any], where: str, base: Any) -> Any:
    types = {f.name: f.type for f in fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(types)})")
        changes[key] = _coerce(value, _py_type(types[key]), f"{where}.{key}")
    return replace(base, **changes)


def _py_type(annotation: Any) -> type:
    text = str(annotation)
    if text.startswith("tuple"):
        return tuple
    return {"int": int, "float": float, "str": str, "bool": bool}.get(text, str)


def _coerce(value: Any, typ: type, where: str) -> Any:
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError
        if typ is str:
            # str() of a TOML array or number would be taken as a path or a name.
            if not isinstance(value, str):
                raise ValueError
            return value
        if typ is tuple:
            if not isinstance(value, (str, list)):
                raise ValueError
            items = value.split(",") if isinstance(value, str) else value
            # Each item as strictly as an int setting: 60.9 is refused, not truncated to 60.
            return tuple(_coerce(item, int, where) for item in items)
        if typ in (int, float) and isinstance(value, bool):
            raise ValueError
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {_shown(value)} is not a valid {typ.__name__}") from None
    if typ is float and not math.isfinite(number):
        raise ConfigError(f"{where}: {_shown(value)} is not a finite number")
    return number


def _shown(value: Any) -> str:
    # A long value (a list of 100,000 sizes) must not turn the one-line error into a page.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
