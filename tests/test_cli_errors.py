"""The real ``ccpulse`` command, run as a process: a wrong argument, a busy port or an
unreachable service gives exactly one line on stderr and a non-zero exit, and a
wrong argument is refused before anything (a broker, a worker) is started.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ccpulse.probes import free_port

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCPULSE_")}
    config = tmp / "ccpulse.toml"
    config.touch()
    env.update(CCPULSE_STATE_DIR=str(tmp / "state"), CCPULSE_CONFIG=str(config),
               CCPULSE_WEB_PORT=str(free_port()), CCPULSE_KAFKA_BOOTSTRAP="127.0.0.1:1")
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0
            ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); on timeout the process is stopped the way Ctrl-C
    would (SIGTERM: the demo then stops what it started) and the test fails."""
    proc = subprocess.Popen([sys.executable, "-m", "ccpulse.cli", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"ccpulse {' '.join(args)} still running after {timeout:.0f}s; "
                    f"stdout {out[-500:]!r} stderr {err[-1500:]!r}")
    return proc.returncode, out, err


def assert_one_line(code: int, err: str, *expected: str) -> str:
    lines = err.splitlines()
    assert code != 0 and len(lines) == 1, (code, err[-3000:])
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["demo", "--duration", "-3"], "--duration"),
    (["demo", "--duration", "nan"], "--duration"),
    (["demo", "--rate", "0"], "--rate"),
    (["demo", "--agents", "0"], "--agents"),
    (["demo", "--scenario", "no-such-scenario"], "no-such-scenario"),
    (["kafka", "start", "--port", "99999"], "99999"),
    (["kafka", "start", "--port", "0"], "--port"),
    (["simulate", "--rate", "-1"], "rate"),
    (["simulate", "--chat-rate", "-1"], "--chat-rate"),
    (["simulate", "--ticket-rate", "x"], "--ticket-rate"),
    (["worker", "--role", "boss"], "--role"),
    (["replay", "x.jsonl", "--limit", "0"], "--limit"),
    (["no-such-command"], "no-such-command"),
])
def test_a_wrong_argument_is_one_line_and_nothing_is_started(tmp_path: Path, args: list[str],
                                                             expected: str) -> None:
    started = time.monotonic()
    code, out, err = run_cli(args, _env(tmp_path), tmp_path, timeout=30)

    assert_one_line(code, err, expected)
    assert time.monotonic() - started < 20
    assert "starting" not in out
    assert not (tmp_path / "state" / "kafka").exists(), "a broker was started for a refused command"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port where another process's HTTP server answers every path with 200 (a
    demo that polls /health there would take it for its own worker)."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", free_port()), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_worker_on_a_busy_web_port_says_so_in_one_line(tmp_path: Path, kafka_bootstrap: str,
                                                        busy_port: int) -> None:
    env = _env(tmp_path, CCPULSE_KAFKA_BOOTSTRAP=kafka_bootstrap, CCPULSE_WEB_PORT=str(busy_port),
               CCPULSE_APP_ID="busy-port", CCPULSE_TOPIC_PREFIX="busy-port.")
    code, _out, err = run_cli(["worker"], env, tmp_path, timeout=90)

    line = assert_one_line(code, err, str(busy_port), "CCPULSE_WEB_PORT")
    assert "in use" in line


def test_demo_on_a_busy_web_port_says_so_before_starting_anything(tmp_path: Path, busy_port: int) -> None:
    env = _env(tmp_path, CCPULSE_WEB_PORT=str(busy_port))
    code, out, err = run_cli(["demo", "--duration", "5"], env, tmp_path, timeout=120)

    line = assert_one_line(code, err, str(busy_port), "CCPULSE_WEB_PORT")
    assert "in use" in line
    assert "starting" not in out and "/wallboard" not in out, out
    assert not (tmp_path / "state" / "kafka").exists(), "the demo started a broker first"


@pytest.mark.integration
def test_worker_with_an_unreachable_clickhouse_server_gives_one_complete_line(
        tmp_path: Path, kafka_bootstrap: str) -> None:
    port = free_port()  # nothing listens there
    env = _env(tmp_path, CCPULSE_KAFKA_BOOTSTRAP=kafka_bootstrap, CCPULSE_APP_ID="no-clickhouse",
               CCPULSE_TOPIC_PREFIX="no-clickhouse.",
               CCPULSE_CLICKHOUSE_DSN=f"http://ccpulse:pass@127.0.0.1:{port}/ccpulse")
    code, _out, err = run_cli(["worker"], env, tmp_path, timeout=90)

    line = assert_one_line(code, err, f"127.0.0.1:{port}", "unreachable")
    assert "pass" not in line.replace("ccpulse:***", "")  # the password stays masked
    assert line.rstrip().endswith("refused)"), line  # the reason, complete: not cut off mid-word



@pytest.mark.integration
def test_demo_prints_the_wallboard_url_and_status_lines(tmp_path: Path) -> None:
    """The real demo, briefly: where to look (the wallboard first) and the status line
    the README shows."""
    port = free_port()
    env = _env(tmp_path, CCPULSE_WEB_PORT=str(port))
    code, out, err = run_cli(["demo", "--duration", "12", "--rate", "3"], env, tmp_path, timeout=240)

    assert code == 0, err[-2000:]
    assert f"Wallboard          http://127.0.0.1:{port}/wallboard" in out, out
    status = [line for line in out.splitlines() if re.match(r"\[ *\d+s\] ", line)]
    assert status, out
    assert re.fullmatch(r"\[ *\d+s\] +[\d.]+ events/s, lag (-|[\d.]+s) \| .+", status[-1]), status[-1]
    print("\n".join(status))  # the README's example is one of these
    assert "nothing left running" in out
