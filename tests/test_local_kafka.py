"""ccpulse.commands.local_kafka against a real broker, plus the jar cache's marker logic."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from ccpulse.commands import local_kafka
from ccpulse.commands.local_kafka import LocalKafkaError
from ccpulse.probes import free_port


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Exited but not yet reaped by init: a zombie is no running broker.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


async def _produce(bootstrap: str, topic: str, value: bytes) -> set[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"queue-1")
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str) -> Any:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"test-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.getone(), timeout=20)
    finally:
        await consumer.stop()


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.integration
def test_produce_and_consume_through_the_session_broker(kafka_bootstrap: str) -> None:
    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"

    partitions = asyncio.run(_produce(kafka_bootstrap, topic, b"hello"))
    message = asyncio.run(_consume_one(kafka_bootstrap, topic))

    assert (message.key, message.value) == (b"queue-1", b"hello")
    if "CCPULSE_TEST_KAFKA_BOOTSTRAP" not in os.environ:
        assert partitions == {0, 1, 2, 3}  # auto-created with num.partitions=4


@pytest.mark.integration
def test_start_is_idempotent_and_stop_leaves_no_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    try:
        first = local_kafka.start(state_dir, port=free_port(), fresh=True)
        again = local_kafka.start(state_dir)

        assert again == first
        assert local_kafka.status(state_dir) == first
        assert first.log_path.is_file() and (state_dir / "broker.json").is_file()

        assert local_kafka.stop(state_dir) is True

        assert _process_gone(first.pid)
        assert _processes_mentioning(str(state_dir)) == []
        assert local_kafka.status(state_dir) is None
        assert not (state_dir / "broker.json").exists()
        assert local_kafka.stop(state_dir) is False
    finally:
        local_kafka.stop(state_dir)


@pytest.mark.integration
def test_restart_keeps_data_across_a_port_change_and_fresh_wipes_it(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    try:
        first = local_kafka.start(state_dir, port=free_port(), fresh=True)
        asyncio.run(_produce(first.bootstrap, "kept", b"survives a restart"))
        local_kafka.stop(state_dir)

        second_port = free_port()
        second = local_kafka.start(state_dir, port=second_port)
        assert second.bootstrap == f"127.0.0.1:{second_port}"
        assert asyncio.run(_consume_one(second.bootstrap, "kept")).value == b"survives a restart"

        wiped = local_kafka.start(state_dir, port=second_port, fresh=True)
        assert wiped.pid != second.pid and _process_gone(second.pid)
        assert "kept" not in asyncio.run(_topics(wiped.bootstrap))
    finally:
        local_kafka.stop(state_dir)


@pytest.mark.integration
def test_a_busy_port_is_refused_with_a_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LocalKafkaError, match=f"port {port} .* in use"):
            local_kafka.start(tmp_path / "kafka", port=port)
    assert local_kafka.status(tmp_path / "kafka") is None


@pytest.mark.integration
def test_ensure_jars_second_call_uses_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = local_kafka.ensure_jars()

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("mvn must not run when the jar cache is complete")

    monkeypatch.setattr(local_kafka.subprocess, "run", no_maven)
    assert local_kafka.ensure_jars() == lib
    assert any(lib.glob("kafka_2.13-*.jar"))


# --- the jar cache's marker logic, with a stand-in for mvn -------------------


def _fake_mvn(monkeypatch: pytest.MonkeyPatch, calls: list[list[str]], returncode: int = 0, stdout: str = "") -> None:
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if returncode == 0:
            out_dir = Path(next(arg for arg in cmd if arg.startswith("-DoutputDirectory=")).split("=", 1)[1])
            (out_dir / "kafka_2.13-3.9.1.jar").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(local_kafka.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(local_kafka.subprocess, "run", run)


def test_an_interrupted_copy_is_redone_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "lib"
    cache.mkdir()
    (cache / "half-copied.jar").write_bytes(b"")  # a copy cut short: jars but no marker
    calls: list[list[str]] = []
    _fake_mvn(monkeypatch, calls)

    assert local_kafka.ensure_jars(cache) == cache.resolve()
    assert local_kafka.ensure_jars(cache) == cache.resolve()

    assert len(calls) == 1
    assert sorted(p.name for p in cache.glob("*.jar")) == ["kafka_2.13-3.9.1.jar"]


def test_a_marker_from_another_pom_forces_a_new_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "lib"
    cache.mkdir()
    calls: list[list[str]] = []
    _fake_mvn(monkeypatch, calls)
    local_kafka.ensure_jars(cache)
    marker = next(p for p in cache.iterdir() if p.name.startswith(".") and p.name != ".lock")
    marker.write_text("digest-of-an-older-pom")

    local_kafka.ensure_jars(cache)

    assert len(calls) == 2


def test_a_maven_failure_names_the_error_and_leaves_no_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "lib"
    calls: list[list[str]] = []
    output = (
        "\x1b[0m[ERROR] Failed to execute goal on project ccpulse-local-kafka: Could not resolve dependencies"
        " -> [Help 1]\n[ERROR] \n[ERROR] Re-run Maven using the -X switch to enable full debug logging.\n"
    )
    _fake_mvn(monkeypatch, calls, returncode=1, stdout=output)

    with pytest.raises(LocalKafkaError) as excinfo:
        local_kafka.ensure_jars(cache)

    assert str(excinfo.value) == (
        "mvn failed resolving Kafka jars: Failed to execute goal on project ccpulse-local-kafka:"
        " Could not resolve dependencies"
    )
    assert [p.name for p in cache.iterdir() if p.name != ".lock"] == []
