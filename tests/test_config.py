"""Settings: defaults, the TOML file, environment overrides and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccpulse.config import (
    DEFAULT_THRESHOLDS, ConfigError, Settings, Thresholds, channel_kind, load_settings,
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./ccpulse.toml and no CCPULSE_* variable of the developer's shell leaks in."""
    monkeypatch.chdir(tmp_path)
    import os
    for var in list(os.environ):
        if var.startswith("CCPULSE_"):
            monkeypatch.delenv(var)


def write(tmp_path: Path, text: str, name: str = "ccpulse.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text, "bad.toml"), env=env or {})
    return str(info.value)


def test_defaults() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.kafka.bootstrap == "localhost:9092"
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert s.kafka.partitions == 4
    assert s.clickhouse.dsn == f"chdb://{Path('.ccpulse').absolute() / 'clickhouse'}"  # follows state_dir
    assert s.clickhouse.enabled is True
    assert s.web_port == 6066
    assert s.state_dir == ".ccpulse" and s.app_id == "ccpulse"
    assert s.max_future_seconds == 86400.0
    assert s.windows.sizes == (60, 900, 3600, 86400)
    assert s.windows.allowed_lateness_seconds == 120.0
    assert s.windows.timezone == "UTC" and s.windows.day_start_hour == 0
    assert s.windows.interaction_horizon_seconds == 86400.0
    assert s.topics.name("calls") == "calls"
    assert s.topics.name("chats") == "chats"
    assert s.topics.name("tickets") == "tickets"
    assert s.topics.name("dead_letter") == "events.dead-letter"
    assert s.topics.name("kpi_windows") == "kpi.windows"
    assert s.topics.name("kpi_queue_state") == "kpi.queue-state"
    assert s.topics.name("sla_breaches") == "sla.breaches"
    assert s.queue_thresholds == {}


def test_default_thresholds_per_channel() -> None:
    s = load_settings(env={})
    assert s.thresholds["voice"] == Thresholds(20.0, 5.0, 0.0, "answered_over_exits")
    assert s.thresholds["chat"] == Thresholds(60.0, 10.0, 0.0, "answered_over_exits")
    assert s.thresholds["ticket"] == Thresholds(86400.0, 0.0, 0.0, "answered_over_exits")
    assert s.thresholds_for("billing", "voice").service_level_seconds == 20.0
    assert s.thresholds_for("billing", "chat").short_abandon_seconds == 10.0


def test_ticket_channels_map_to_the_ticket_kind() -> None:
    assert channel_kind("voice") == "voice" and channel_kind("chat") == "chat"
    for channel in ("email", "web", "social", "whatever"):
        assert channel_kind(channel) == "ticket"
    s = load_settings(env={})
    assert s.thresholds_for("support", "email") == DEFAULT_THRESHOLDS["ticket"]
    assert s.thresholds_for("support", "web").service_level_seconds == 86400.0


def test_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
web_port = 7000
state_dir = "/var/lib/ccpulse"
app_id = "ccpulse-eu"
max_future_seconds = 3600

[kafka]
bootstrap = "kafka-1:9092,kafka-2:9092"
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
sasl_username = "ccpulse"
sasl_password = "secret"
partitions = 12

[topics]
prefix = "prod."
calls = "telephony.calls"

[clickhouse]
dsn = "http://ch:8123/ccpulse"
enabled = false
batch_size = 100

[windows]
sizes = [60, 900, 3600, 86400]
allowed_lateness_seconds = 30
timezone = "Europe/Paris"
day_start_hour = 6

[channels.voice]
service_level_seconds = 30
short_abandon_seconds = 3
service_level_formula = "abandons_within_target_neutral"

[channels.ticket]
service_level_seconds = 3600
""")
    s = load_settings(path, env={})
    assert s.web_port == 7000 and s.state_dir == "/var/lib/ccpulse" and s.app_id == "ccpulse-eu"
    assert s.max_future_seconds == 3600.0 and isinstance(s.max_future_seconds, float)
    assert s.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert (s.kafka.security_protocol, s.kafka.sasl_mechanism, s.kafka.partitions) == ("SASL_SSL", "PLAIN", 12)
    assert s.topics.name("calls") == "prod.telephony.calls"
    assert s.topics.name("chats") == "prod.chats"
    assert s.clickhouse.dsn == "http://ch:8123/ccpulse" and s.clickhouse.enabled is False
    assert s.clickhouse.batch_size == 100
    assert s.windows.sizes == (60, 900, 3600, 86400)
    assert s.windows.allowed_lateness_seconds == 30.0
    assert s.windows.timezone == "Europe/Paris" and s.windows.day_start_hour == 6
    assert s.thresholds["voice"] == Thresholds(30.0, 3.0, 0.0, "abandons_within_target_neutral")
    assert s.thresholds["chat"] == DEFAULT_THRESHOLDS["chat"]
    assert s.thresholds["ticket"] == Thresholds(3600.0, 0.0, 0.0, "answered_over_exits")
    assert s.thresholds_for("any", "email").service_level_seconds == 3600.0


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "web_port = 7001\n", "elsewhere.toml")
    assert load_settings(env={"CCPULSE_CONFIG": str(path)}).web_port == 7001


def test_ccpulse_toml_in_the_working_directory(tmp_path: Path) -> None:
    write(tmp_path, "web_port = 7002\n")
    assert load_settings(env={}).web_port == 7002


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "web_port = = 1\n"), env={})


def test_environment_overrides_win(tmp_path: Path) -> None:
    path = write(tmp_path, """
web_port = 7000
[kafka]
bootstrap = "from-file:9092"
[clickhouse]
dsn = "chdb:///from/file"
[topics]
prefix = "file."
""")
    env = {"CCPULSE_KAFKA_BOOTSTRAP": "from-env:9093", "CCPULSE_CLICKHOUSE_DSN": "https://u:p@ch:8443/db",
           "CCPULSE_TOPIC_PREFIX": "env.", "CCPULSE_WEB_PORT": "8080"}
    s = load_settings(path, env=env)
    assert s.kafka.bootstrap == "from-env:9093"
    assert s.clickhouse.dsn == "https://u:p@ch:8443/db"
    assert s.topics.prefix == "env."
    assert s.topics.name("calls") == "env.calls"
    assert s.topics.name("dead_letter") == "env.events.dead-letter"
    assert s.web_port == 8080 and isinstance(s.web_port, int)


def test_environment_without_a_file() -> None:
    env = {"CCPULSE_KAFKA_BOOTSTRAP": "k:1", "CCPULSE_TOPIC_PREFIX": "t-", "CCPULSE_KAFKA_PARTITIONS": "8",
           "CCPULSE_STATE_DIR": "/tmp/state", "CCPULSE_APP_ID": "app2", "CCPULSE_KAFKA_SECURITY_PROTOCOL": "SSL",
           "CCPULSE_KAFKA_SASL_USERNAME": "user", "CCPULSE_KAFKA_SASL_PASSWORD": "secret",
           "CCPULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    s = load_settings(env=env)
    assert s.kafka.bootstrap == "k:1" and s.kafka.partitions == 8
    assert s.topics.name("kpi_windows") == "t-kpi.windows"
    assert s.state_dir == "/tmp/state" and s.app_id == "app2"
    assert (s.kafka.security_protocol, s.kafka.sasl_username, s.kafka.sasl_password,
            s.kafka.sasl_mechanism) == ("SSL", "user", "secret", "SCRAM-SHA-512")


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCPULSE_WEB_PORT", "9100")
    assert load_settings().web_port == 9100


@pytest.mark.parametrize("env, key", [
    ({"CCPULSE_WEB_PORT": "abc"}, "web_port"),
    ({"CCPULSE_WEB_PORT": "0"}, "web_port"),
    ({"CCPULSE_KAFKA_PARTITIONS": "0"}, "kafka.partitions"),
    ({"CCPULSE_KAFKA_PARTITIONS": "x"}, "kafka.partitions"),
    ({"CCPULSE_CLICKHOUSE_DSN": "postgres://db"}, "clickhouse.dsn"),
    ({"CCPULSE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
])
def test_bad_environment_values_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert str(info.value).startswith(key)


@pytest.mark.parametrize("text, key", [
    ("web_port = 0", "web_port"),
    ("web_port = 65536", "web_port"),
    ("web_port = -1", "web_port"),
    ('web_port = "abc"', "web_port"),
    ("web_port = 80.5", "web_port"),
    ("web_port = true", "web_port"),
    ("web_port = [1]", "web_port"),
    ("colour = 1", "colour"),
    ("max_future_seconds = \"soon\"", "max_future_seconds"),
    ("[kafka]\nbootstrapp = \"x\"", "kafka.bootstrapp"),
    ("[kafka]\npartitions = 0", "kafka.partitions"),
    ("[kafka]\npartitions = 2.5", "kafka.partitions"),
    ('[kafka]\nsecurity_protocol = "TLS"', "kafka.security_protocol"),
    ("kafka = 5", "kafka"),
    ('[clickhouse]\ndsn = "mysql://x"', "clickhouse.dsn"),
    ('[clickhouse]\nenabled = "maybe"', "clickhouse.enabled"),
    ("[clickhouse]\nbatch_size = 0", "clickhouse.batch_size"),
    ("[topics]\nunknown = \"x\"", "topics.unknown"),
    ("[windows]\nsizes = [7]", "windows.sizes"),
    ("[windows]\nsizes = [60, 172800]", "windows.sizes"),
    ("[windows]\nsizes = [0]", "windows.sizes"),
    ("[windows]\nsizes = []", "windows.sizes"),
    ("[windows]\nsizes = 60", "windows.sizes"),
    ('[windows]\nsizes = ["a"]', "windows.sizes"),
    ("[windows]\nallowed_lateness_seconds = -1", "windows.allowed_lateness_seconds"),
    ("[windows]\npublish_interval_seconds = 0", "windows.publish_interval_seconds"),
    ('[windows]\ntimezone = "Mars/Olympus_Mons"', "windows.timezone"),
    ('[windows]\ntimezone = ""', "windows.timezone"),
    ("[windows]\nday_start_hour = 24", "windows.day_start_hour"),
    ("[windows]\nday_start_hour = -1", "windows.day_start_hour"),
    ('[windows]\nday_start_hour = "six"', "windows.day_start_hour"),
    ("[channels.voice]\nservice_level_seconds = -1", "channels.voice.service_level_seconds"),
    ("[channels.chat]\nshort_abandon_seconds = -0.5", "channels.chat.short_abandon_seconds"),
    ("[channels.ticket]\nimmediate_seconds = -3", "channels.ticket.immediate_seconds"),
    ('[channels.voice]\nservice_level_formula = "best_case"', "channels.voice.service_level_formula"),
    ('[channels.voice]\nservice_level_seconds = "twenty"', "channels.voice.service_level_seconds"),
    ("[channels.voice]\ntarget = 1", "channels.voice.target"),
    ("[channels.sms]\nservice_level_seconds = 1", "channels.sms"),
    ("[channels]\nvoice = 20", "channels.voice"),
    ("channels = 1", "channels"),
    ("[queues.billing.voice]\nservice_level_seconds = -5", "queues.billing.voice.service_level_seconds"),
    ('[queues.billing.voice]\nservice_level_formula = "x"', "queues.billing.voice.service_level_formula"),
    ("[queues.billing.fax]\nservice_level_seconds = 5", "queues.billing.fax"),
    ("[queues.billing]\nvoice = 5", "queues.billing.voice"),
    ("[queues]\nbilling = 5", "queues.billing"),
])
def test_every_error_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    message = error(tmp_path, text + "\n")
    assert message.startswith(key + ":") or message.startswith(key + " "), message
    assert "\n" not in message  # one line for the CLI


def test_per_queue_override(tmp_path: Path) -> None:
    path = write(tmp_path, """
[channels.voice]
short_abandon_seconds = 3

[queues.billing.voice]
service_level_seconds = 10
service_level_formula = "answered_only"

[queues.billing.ticket]
service_level_seconds = 7200

[queues.vip.chat]
immediate_seconds = 5
""")
    s = load_settings(path, env={})
    # The queue's own values, and the channel's (already overridden) values for the rest.
    assert s.thresholds_for("billing", "voice") == Thresholds(10.0, 3.0, 0.0, "answered_only")
    assert s.thresholds_for("sales", "voice") == Thresholds(20.0, 3.0, 0.0, "answered_over_exits")
    assert s.thresholds_for("billing", "chat") == DEFAULT_THRESHOLDS["chat"]
    assert s.thresholds_for("billing", "email") == Thresholds(7200.0, 0.0, 0.0, "answered_over_exits")
    assert s.thresholds_for("billing", "web").service_level_seconds == 7200.0
    assert s.thresholds_for("sales", "email") == DEFAULT_THRESHOLDS["ticket"]
    assert s.thresholds_for("vip", "chat") == Thresholds(60.0, 10.0, 5.0, "answered_over_exits")
    assert set(s.queue_thresholds) == {("billing", "voice"), ("billing", "ticket"), ("vip", "chat")}


def test_defaults_are_not_shared_between_loads(tmp_path: Path) -> None:
    load_settings(write(tmp_path, "[channels.voice]\nservice_level_seconds = 99\n", "a.toml"), env={})
    assert DEFAULT_THRESHOLDS["voice"].service_level_seconds == 20.0
    assert load_settings(env={}).thresholds["voice"].service_level_seconds == 20.0


def test_lenient_but_exact_coercions(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
web_port = 8080.0
[windows]
sizes = "60,900"
[clickhouse]
enabled = "off"
flush_seconds = 2
"""), env={})
    assert s.web_port == 8080 and isinstance(s.web_port, int)
    assert s.windows.sizes == (60, 900)
    assert s.clickhouse.enabled is False
    assert s.clickhouse.flush_seconds == 2.0


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_known_timezones(tmp_path: Path, tz: str) -> None:
    s = load_settings(write(tmp_path, f'[windows]\ntimezone = "{tz}"\n'), env={})
    assert s.windows.timezone == tz


@pytest.mark.parametrize("formula", ["answered_over_exits", "abandons_within_target_neutral",
                                     "abandons_within_target_positive", "answered_only"])
def test_every_formula_is_accepted(tmp_path: Path, formula: str) -> None:
    s = load_settings(write(tmp_path, f'[channels.chat]\nservice_level_formula = "{formula}"\n'), env={})
    assert s.thresholds_for("q", "chat").service_level_formula == formula


def test_window_sizes_dividing_a_day(tmp_path: Path) -> None:
    for sizes in ([1], [60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400]):
        s = load_settings(write(tmp_path, f"[windows]\nsizes = {sizes}\n"), env={})
        assert s.windows.sizes == tuple(sizes)


# -- types and ranges of every setting (issue 14, item 7) ---------------------------------

@pytest.mark.parametrize("text, key", [
    # Accepted until now, each breaking the pipeline later or silently.
    ("max_future_seconds = -100", "max_future_seconds"),   # every live event "from the future"
    ("max_future_seconds = 0", "max_future_seconds"),
    ("[windows]\npublish_interval_seconds = inf", "windows.publish_interval_seconds"),
    ("[windows]\ninteraction_horizon_seconds = -1", "windows.interaction_horizon_seconds"),
    ("[windows]\ninteraction_horizon_seconds = 0", "windows.interaction_horizon_seconds"),
    ("[windows]\nfcr_horizon_seconds = -1", "windows.fcr_horizon_seconds"),
    ("[windows]\nidle_close_seconds = -5", "windows.idle_close_seconds"),
    ("[windows]\nidle_close_seconds = 0", "windows.idle_close_seconds"),
    ("[windows]\nsource_idle_seconds = -1", "windows.source_idle_seconds"),
    ("[windows]\nsizes = [60.9]", "windows.sizes"),         # was silently 60
    ("[windows]\nsizes = [60, 60]", "windows.sizes"),
    ("[windows]\nsizes = [900, 60]", "windows.sizes"),      # the first must be the smallest
    ("[windows]\nsizes = [true]", "windows.sizes"),
    ('[windows]\nsizes = {a = 60}', "windows.sizes"),
    ("[windows]\nsizes = [[60]]", "windows.sizes"),
    ('state_dir = ["a"]', "state_dir"),                     # was the directory "['a']"
    ("state_dir = 5", "state_dir"),
    ('state_dir = ""', "state_dir"),
    ("app_id = 7", "app_id"),
    ('app_id = ""', "app_id"),
    ('app_id = "my app"', "app_id"),                        # it names Kafka topics
    ('[topics]\ncalls = 1', "topics.calls"),
    ('[topics]\ncalls = ""', "topics.calls"),
    ('[topics]\nprefix = "a/b"', "topics.prefix"),
    ('[topics]\nkpi_windows = "kpi windows"', "topics.kpi_windows"),
    ('[kafka]\nbootstrap = 9092', "kafka.bootstrap"),
    ("[clickhouse]\nflush_seconds = inf", "clickhouse.flush_seconds"),
    ("[clickhouse]\nretry_max_backoff_seconds = inf", "clickhouse.retry_max_backoff_seconds"),
    ('[queues."a|b".voice]\nservice_level_seconds = 5', 'queues.a|b'),
    ('[queues." billing".voice]\nservice_level_seconds = 5', 'queues. billing'),
])
def test_settings_out_of_type_or_range_are_refused(tmp_path: Path, text: str, key: str) -> None:
    message = error(tmp_path, text + "\n")
    assert message.startswith(key + ":"), message
    assert "\n" not in message


@pytest.mark.parametrize("text, key", [
    ("max_future_seconds = nan", "max_future_seconds"),
    ("max_future_seconds = inf", "max_future_seconds"),
    ("max_future_seconds = -inf", "max_future_seconds"),
    ("[windows]\nallowed_lateness_seconds = nan", "windows.allowed_lateness_seconds"),
    ("[windows]\npublish_interval_seconds = nan", "windows.publish_interval_seconds"),
    ("[windows]\ninteraction_horizon_seconds = inf", "windows.interaction_horizon_seconds"),
    ("[windows]\nsizes = [nan]", "windows.sizes"),
    ("[windows]\nday_start_hour = nan", "windows.day_start_hour"),
    ("[clickhouse]\nflush_seconds = nan", "clickhouse.flush_seconds"),
    ("[channels.voice]\nservice_level_seconds = nan", "channels.voice.service_level_seconds"),
    ("[queues.billing.chat]\nshort_abandon_seconds = nan", "queues.billing.chat.short_abandon_seconds"),
    ("[scorecard]\nweights = { service_level = nan }", "scorecard.weights.service_level"),
    ("[targets.voice]\nservice_level = { min = nan }", "targets.voice.service_level.min"),
])
def test_nan_and_infinity_are_refused_anywhere_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = error(tmp_path, text + "\n")
    assert message.startswith(key + ":"), message
    assert "\n" not in message


def test_nan_from_the_environment_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "max_future_seconds = 60\n")
    with pytest.raises(ConfigError, match=r"^kafka\.partitions: "):
        load_settings(path, env={"CCPULSE_KAFKA_PARTITIONS": "nan"})


def test_many_duplicate_window_sizes_are_refused_in_one_line(tmp_path: Path) -> None:
    message = error(tmp_path, f"[windows]\nsizes = [{', '.join(['60'] * 100_000)}]\n")
    assert message.startswith("windows.sizes:") and len(message) < 200, message[:300]


def test_too_many_window_sizes_are_refused(tmp_path: Path) -> None:
    divisors = [d for d in range(1, 86401) if 86400 % d == 0][:13]
    message = error(tmp_path, f"[windows]\nsizes = {divisors}\n")
    assert message.startswith("windows.sizes:") and "at most" in message, message


def test_integral_numbers_and_edge_values_are_still_accepted(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
max_future_seconds = 0.5
app_id = "cc.pulse_2-b"
[topics]
prefix = "prod."
[windows]
sizes = [60.0, 900]
allowed_lateness_seconds = 0
fcr_horizon_seconds = 0
"""), env={})
    assert s.max_future_seconds == 0.5 and s.app_id == "cc.pulse_2-b"
    assert s.windows.sizes == (60, 900) and all(type(size) is int for size in s.windows.sizes)
    assert s.windows.allowed_lateness_seconds == 0 and s.windows.fcr_horizon_seconds == 0
    assert s.topics.name("calls") == "prod.calls"
