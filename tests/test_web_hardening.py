"""The worker's web surface and secrets, the pure parts (no broker, no server):

- ``[web] bind`` / ``CCPULSE_WEB_BIND``: loopback by default, validated, handed to Faust;
- Faust's own views (tables, router, statistics, graph, performance) are not served;
- a ``chdb://`` DSN with credentials is refused with one line that does not show them;
- aiohttp's log of a malformed request becomes one line, at most one per interval,
  and says how many it left out;
- the FCR customer key: from settings or a secrets file, never shown, fingerprinted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from ccpulse.config import ConfigError, load_settings
from ccpulse.pseudonym import CustomerIdHasher

SECRET = "pa55-Word-e1f2"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./ccpulse.toml of the developer's


def _error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    return str(info.value)


# --- the bind address -------------------------------------------------------------


def test_the_web_server_binds_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    assert load_settings(env={}).web.bind == "127.0.0.1"
    assert load_settings(env={"CCPULSE_WEB_BIND": "0.0.0.0"}).web.bind == "0.0.0.0"
    config = tmp_path / "c.toml"
    config.write_text('[web]\nbind = "::"\n')
    assert load_settings(config, env={}).web.bind == "::"
    for bad in ("", "0.0.0.0:6066", "local host", "http://0.0.0.0"):
        message = _error({"CCPULSE_WEB_BIND": bad})
        assert message.startswith("web.bind: ") and "\n" not in message, message


def test_the_bind_address_and_no_faust_view_reach_the_app() -> None:
    from streams.app import create_app

    settings = load_settings(env={"CCPULSE_WEB_BIND": "127.0.0.2", "CCPULSE_WEB_TOKEN": "t" * 24})
    app = create_app(settings)
    assert app.conf.web_bind == "127.0.0.2"
    app.web.init_server()
    paths = {route.resource.canonical for route in app.web.web_app.router.routes()}
    faust_views = [p for p in paths if p.startswith(("/table", "/router", "/graph", "/stats", "/assignment",
                                                      "/performance"))]
    assert not faust_views, faust_views
    assert {"/health", "/metrics"} <= paths


@pytest.mark.parametrize("role", ["all", "compute", "writer"])
def test_the_front_page_is_ccpulses_alone_in_every_role(role: str) -> None:
    """Faust mounts its own ``/`` too; in the writer role ccpulse's was the last route, and
    aiohttp refused the second one at server start, so the worker exited."""
    from streams.app import create_app

    app = create_app(load_settings(env={}), role=role)
    app.web.init_server()
    index = [r for r in app.web.web_app.router.routes() if r.resource.canonical == "/" and r.method == "GET"]
    assert len(index) == 1, index
    assert "production_index" not in repr(index[0].handler)


# --- chdb:// DSNs -------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [f"chdb://alice:{SECRET}@/var/lib/ch", f"chdb://{SECRET}@./store",
                                 f"chdb://alice:{SECRET}@localhost/db"])
def test_a_chdb_dsn_with_credentials_is_refused(dsn: str, tmp_path: Path) -> None:
    message = _error({"CCPULSE_CLICKHOUSE_DSN": dsn})
    assert message.startswith("clickhouse.dsn: ") and "credentials" in message, message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("dsn", ["chdb://./.ccpulse/clickhouse", "chdb:///var/lib/ccpulse/ch", "chdb://:memory:",
                                 "chdb://store"])
def test_chdb_paths_are_accepted(dsn: str) -> None:
    assert load_settings(env={"CCPULSE_CLICKHOUSE_DSN": dsn}).clickhouse.dsn == dsn


def test_a_wrong_dsn_scheme_does_not_show_its_password() -> None:
    message = _error({"CCPULSE_CLICKHOUSE_DSN": f"htp://alice:{SECRET}@ch:8123/db"})
    assert message.startswith("clickhouse.dsn: ") and SECRET not in message, message


# --- aiohttp's log of malformed requests -------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _logger(clock: _Clock, interval: float = 60.0) -> tuple[logging.Logger, list[logging.LogRecord]]:
    from streams.web import HttpErrorLog

    logger = logging.getLogger(f"test.http.{id(clock)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())
    logger.addFilter(HttpErrorLog(interval, clock))
    return logger, seen


def _reject(logger: logging.Logger, exc: Exception) -> None:
    try:
        raise exc
    except Exception:
        logger.exception("Error handling request from %s", "203.0.113.9")


def test_a_flood_of_malformed_requests_logs_one_line_per_interval() -> None:
    clock = _Clock()
    logger, seen = _logger(clock)
    for _ in range(50):
        _reject(logger, LineTooLong("Got more than 8190 bytes when reading header line"))
    assert len(seen) == 1
    first = seen[0]
    text = logging.Formatter().format(first)
    assert "\n" not in text and first.exc_info is None, text
    assert "203.0.113.9" in text and "8190" in text and first.levelno == logging.WARNING

    clock.now += 61
    _reject(logger, BadHttpMessage("Invalid header value char\r\nInjected: line"))
    assert len(seen) == 2
    second = logging.Formatter().format(seen[1])
    assert "49 more" in second and "\n" not in second and "\r" not in second, second


def test_other_errors_keep_their_traceback() -> None:
    logger, seen = _logger(_Clock())
    for _ in range(3):
        _reject(logger, ValueError("a bug in a handler"))
    assert len(seen) == 3 and all(r.exc_info for r in seen)


# --- the FCR customer key ----------------------------------------------------------------


def test_the_fcr_customer_key_from_settings_or_a_file(tmp_path: Path) -> None:
    key = "k" * 32
    s = load_settings(env={"CCPULSE_FCR_CUSTOMER_KEY": key})
    assert s.fcr.customer_key == key and key not in repr(s)
    secret = tmp_path / "fcr-key"
    secret.write_text(key + "\n")
    assert load_settings(env={"CCPULSE_FCR_CUSTOMER_KEY_FILE": str(secret)}).fcr.customer_key == key
    assert load_settings(env={}).fcr.customer_key == ""  # empty: generated and shared through Kafka
    message = _error({"CCPULSE_FCR_CUSTOMER_KEY": "short"})
    assert message.startswith("fcr.customer_key: ") and "short" not in message
    assert _error({"CCPULSE_FCR_CUSTOMER_KEY": key, "CCPULSE_FCR_CUSTOMER_KEY_FILE": str(secret)}).startswith(
        "fcr.customer_key and fcr.customer_key_file")


def test_the_key_id_tells_keys_apart_without_showing_them() -> None:
    a, b = CustomerIdHasher.from_secret("a" * 32), CustomerIdHasher.from_secret("b" * 32)
    assert a.key_id != b.key_id and len(a.key_id) == 8
    assert a.key_id == CustomerIdHasher.from_secret("a" * 32).key_id
    assert a.key_id not in a.hash("+15551234567")
