"""The embedded store lives in the state dir: two instances with their own state dirs
never share (or fight over the lock of) one chDB store, and the store a state dir
names does not depend on the directory a command is started from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccpulse.config import load_settings


def settings_in(cwd: Path, monkeypatch: pytest.MonkeyPatch, **env: str):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(cwd)
    return load_settings(env={"CCPULSE_CONFIG": os.devnull, **env})


def test_the_default_store_follows_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = settings_in(tmp_path, monkeypatch, CCPULSE_STATE_DIR=str(tmp_path / "one"))
    two = settings_in(tmp_path, monkeypatch, CCPULSE_STATE_DIR=str(tmp_path / "two"))
    assert one.clickhouse.dsn == f"chdb://{tmp_path / 'one' / 'clickhouse'}"
    assert two.clickhouse.dsn == f"chdb://{tmp_path / 'two' / 'clickhouse'}"


def test_the_store_of_a_state_dir_is_the_same_from_any_directory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    state = str(tmp_path / "state")
    here = settings_in(tmp_path, monkeypatch, CCPULSE_STATE_DIR=state)
    there = settings_in(tmp_path / "elsewhere", monkeypatch, CCPULSE_STATE_DIR=state)
    assert here.clickhouse.dsn == there.clickhouse.dsn == f"chdb://{tmp_path / 'state' / 'clickhouse'}"


def test_the_default_state_dir_gives_an_absolute_store_path(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = settings_in(tmp_path, monkeypatch).clickhouse.dsn
    assert dsn == f"chdb://{tmp_path / '.ccpulse' / 'clickhouse'}"


def test_a_configured_dsn_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = "http://clickhouse:8123/ccpulse"
    assert settings_in(tmp_path, monkeypatch, CCPULSE_CLICKHOUSE_DSN=dsn,
                       CCPULSE_STATE_DIR=str(tmp_path / "x")).clickhouse.dsn == dsn
    config = tmp_path / "ccpulse.toml"
    config.write_text('[clickhouse]\ndsn = "chdb:///srv/store"\n')
    assert load_settings(config, env={}).clickhouse.dsn == "chdb:///srv/store"
