"""[connect]: the webhook receiver's settings, validated at load with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccpulse.config import ConfigError, load_settings


def test_defaults_serve_on_loopback_with_no_source() -> None:
    c = load_settings(env={}).connect
    assert (c.http_bind, c.http_port, c.max_body_bytes) == ("127.0.0.1", 6070, 1_048_576)
    assert (c.twilio_auth_token, c.zendesk_secret, c.jira_secret, c.eventbridge_api_key) == ("", "", "", "")
    assert c.zendesk_tolerance_seconds == 300.0 and c.jira_queue == "project"


def test_environment_and_secret_files(tmp_path: Path) -> None:
    token = tmp_path / "twilio"
    token.write_text("0123456789abcdef\n")
    c = load_settings(env={"CCPULSE_CONNECT_HTTP_PORT": "7001",
                           "CCPULSE_CONNECT_TWILIO_AUTH_TOKEN_FILE": str(token),
                           "CCPULSE_CONNECT_ZENDESK_SECRET": "zendesk-secret-1"}).connect
    assert c.http_port == 7001 and c.twilio_auth_token == "0123456789abcdef"
    assert c.zendesk_secret == "zendesk-secret-1"
    assert "0123456789abcdef" not in repr(c) and "zendesk-secret-1" not in repr(c)


@pytest.mark.parametrize("toml, key", [
    ("http_port = 0", "connect.http_port"),
    ("http_bind = 'a b'", "connect.http_bind"),
    ("max_body_bytes = 10", "connect.max_body_bytes"),
    ("ack_timeout_seconds = 0", "connect.ack_timeout_seconds"),
    ("zendesk_tolerance_seconds = -1", "connect.zendesk_tolerance_seconds"),
    ("public_url = 'https://x.example/hooks'", "connect.public_url"),
    ("jira_queue = 'component'", "connect.jira_queue"),
    ("eventbridge_header = 'x api'", "connect.eventbridge_header"),
    ("jira_secret = ' padded-secret'", "connect.jira_secret"),
    ("jira_secret = 's'\njira_secret_file = '/nonexistent'", "connect.jira_secret"),
    ("twilio_auth_token_file = '/nonexistent/token'", "connect.twilio_auth_token_file"),
    ("unknown = 1", "connect.unknown"),
])
def test_bad_settings_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "ccpulse.toml"
    path.write_text(f"[connect]\n{toml}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_sources_without_a_secret_are_not_served_and_named() -> None:
    from ccpulse.commands.connect_http import served_sources

    served, left_out = served_sources(load_settings(env={"CCPULSE_CONNECT_JIRA_SECRET": "jira-secret-1"}))
    assert [s.path for s in served] == ["/jira"]
    assert left_out == ["/twilio (no connect.twilio_auth_token)", "/zendesk (no connect.zendesk_secret)",
                        "/eventbridge/connect (no connect.eventbridge_api_key)",
                        "/eventbridge/genesys (no connect.eventbridge_api_key)"]


def test_no_source_configured_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
    env["CCPULSE_CONFIG"] = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    done = subprocess.run([sys.executable, "-m", "ccpulse.cli", "connect", "http"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("ccpulse connect: no webhook source is configured: set at least one of "
                                  "connect.twilio_auth_token") and done.stderr.count("\n") == 1


def test_a_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
    env.update(CCPULSE_CONFIG=str(tmp_path / "none.toml"), CCPULSE_CONNECT_JIRA_SECRET="jira-secret-1")
    (tmp_path / "none.toml").write_text("")
    done = subprocess.run([sys.executable, "-m", "ccpulse.cli", "connect", "http", "--port", "70000"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (1, "ccpulse connect: --port 70000: not a TCP port (1-65535)\n")
