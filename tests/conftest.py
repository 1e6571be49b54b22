"""Shared pytest fixtures."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

from ccpulse.commands import local_kafka


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker shared by the whole session.

    ``CCPULSE_TEST_KAFKA_BOOTSTRAP`` points the tests at an existing broker;
    otherwise a fresh local one is started and stopped at session end.
    """
    external = os.environ.get("CCPULSE_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    yield from _local_broker(tmp_path_factory.mktemp("kafka"))


@pytest.fixture(scope="module")
def fresh_kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module alone, on which no consumer group exists yet.

    The shared broker has its group coordinator (``__consumer_offsets``) ready once any
    earlier test used a group; the first group request of a fresh cluster is answered
    "coordinator not available" while the broker creates it, which a command must
    outwait, not report.
    """
    yield from _local_broker(tmp_path_factory.mktemp("fresh-kafka"))


def _local_broker(state_dir: Path) -> Iterator[str]:
    """A throw-away local broker's bootstrap address, stopped when the generator closes."""
    try:
        # An explicit free port rather than 9092: a developer's own broker (or a
        # later `ccpulse kafka start`) expects 9092, and must never end up talking
        # to this throw-away one.
        info = local_kafka.start(state_dir, port=_free_loopback_port(), fresh=True)
        yield info.bootstrap
    finally:
        local_kafka.stop(state_dir)
