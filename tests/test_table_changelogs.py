"""Every table's changelog exists before a worker starts (streams/topics.py, ``TABLES``).

Faust creates a table's changelog when the table starts, moments before its consumer
joins the group. In the chaos rebalance run the group leader's metadata had not seen
``<app>-agent-records-changelog`` yet: it logged "Ignoring missing topic" at every
rebalance, assigned that changelog to nobody, and every new owner of an agent partition
started without its partition record (event time unknown, a cold start's rebuild).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ccpulse.config import Settings, load_settings
from ccpulse.tools.chaos_checks import unassigned_changelogs
from streams.app import create_app
from streams.topics import TABLES, changelog_topic, ensure_topics, topic_specs
from tests.worker_process import WorkerProcess, worker_env


def test_every_table_the_app_registers_has_its_changelog_in_the_topics_created_at_start() -> None:
    settings = Settings()
    app = create_app(settings, "all")
    specs = topic_specs(settings)
    assert set(app.tables) == set(TABLES)
    for table in app.tables.values():
        name = table.changelog_topic.get_topic_name()
        assert name == changelog_topic(settings, table.name)
        assert specs[name] == {"cleanup.policy": "compact"}, name


def test_a_table_missing_from_the_list_is_refused() -> None:
    from streams import app as app_module
    faust_app = create_app(Settings(), "compute")
    with pytest.raises(ValueError, match="not in streams.topics.TABLES"):
        app_module._table(faust_app, "made-up", "orjson", Settings(), None)


@pytest.mark.integration
def test_ensure_topics_creates_every_changelog_compacted_with_the_partition_count(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = worker_env(kafka_bootstrap, tmp_path, "changelogs", CCPULSE_KAFKA_PARTITIONS="3")
    settings = load_settings(env["CCPULSE_CONFIG"], env=env)
    ensure_topics(settings)
    names = [changelog_topic(settings, table) for table in TABLES]

    async def describe() -> tuple[dict[str, int], dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(names)
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None}) for name in names])
        finally:
            await admin.close()
        partitions = {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
        policies = {name: next(e[1] for e in entries if e[0] == "cleanup.policy")
                    for response in configs for _c, _m, _t, name, entries in response.resources}
        return partitions, policies

    partitions, policies = asyncio.run(describe())
    assert partitions == {name: 3 for name in names}
    assert policies == {name: "compact" for name in names}


def test_a_group_leader_refreshes_its_metadata_within_a_minute() -> None:
    # A topic missing from the leader's metadata is assigned to nobody until the next
    # refresh (aiokafka's default: 5 minutes).
    app = create_app(Settings(), "compute")
    assert app.conf.consumer_metadata_max_age_ms <= 60_000


@pytest.mark.integration
def test_a_worker_starts_with_every_changelog_assigned_and_no_second_rebalance(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # A topic created while the worker starts (a changelog, Faust's leader topic) is missing
    # from its first assignment's metadata: left to nobody, or assigned by a rebalance a
    # metadata refresh later (/health 503 meanwhile, which a SASL test read in a fresh clone).
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "changelogs-start", role="compute",
                                  CCPULSE_KAFKA_PARTITIONS="2")
    settings = load_settings(worker.env["CCPULSE_CONFIG"], env=worker.env)
    try:
        worker.start()
        time.sleep(3)  # a rebalance right after the first assignment would be under way
        status, _ = worker.get("/health")
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    # Faust logs "Topic '<name>' created." for a topic it had to create itself (and only
    # "Creating topic" for one that exists): nothing the consumer subscribes to may be new.
    assert [line for line in log.splitlines() if "' created." in line] == []
    assert "Ignoring missing topic" not in log
    assert log.count("Setting newly assigned partitions") == 1, log[-3000:]
    assert unassigned_changelogs("worker", log, [changelog_topic(settings, table) for table in TABLES]) == []
    assert status == 200
