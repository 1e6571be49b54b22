"""Optional hashing of customer ids in the raw store ([clickhouse] hash_customer_ids).

The expected hashes are computed here with the standard library's HMAC, not with
ccpulse code; the worker is restarted in between to show the hash is stable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import clickhouse_connect
import orjson
import pytest

from ccpulse.config import ConfigError, load_settings
from ccpulse.pseudonym import CustomerIdHasher
from tests.worker_process import WorkerProcess, produce, wait_until

KEY = "k3y-for-tests-0123456789abcdef"


def expected_hash(customer_id: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), customer_id.encode(), hashlib.sha256).hexdigest()[:32]


def test_hash_is_keyed_deterministic_and_truncated() -> None:
    hasher = CustomerIdHasher.from_secret(KEY)
    assert hasher.hash("cust-1") == expected_hash("cust-1") == CustomerIdHasher.from_secret(KEY).hash("cust-1")
    assert hasher.hash("cust-1") != CustomerIdHasher.from_secret(KEY + "x").hash("cust-1")
    assert len(hasher.hash("cust-1")) == 32 and hasher.hash("cust-1") != hasher.hash("cust-2")
    assert KEY not in repr(hasher)


def test_payload_keeps_every_other_field() -> None:
    hasher = CustomerIdHasher.from_secret(KEY)
    payload = '{"event_id":"e","customer_id":"cust-1","x_custom":{"a":[1,2]},"attributes":{"vip":true}}'
    doc = json.loads(hasher.payload(payload))
    assert doc == {"event_id": "e", "customer_id": expected_hash("cust-1"), "x_custom": {"a": [1, 2]},
                   "attributes": {"vip": True}}
    assert hasher.payload('{"event_id":"e"}') == '{"event_id":"e"}'


def test_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="customer_id_key"):
        load_settings(env={"CCPULSE_CLICKHOUSE_HASH_CUSTOMER_IDS": "true"})
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    s = load_settings(env={"CCPULSE_CLICKHOUSE_HASH_CUSTOMER_IDS": "true",
                           "CCPULSE_CLICKHOUSE_CUSTOMER_ID_KEY_FILE": str(key_file)})
    assert s.clickhouse.hash_customer_ids and s.clickhouse.customer_id_key == KEY
    assert KEY not in repr(s)


def event(eid: str, etype: str, at: str, iid: str, **extra: object) -> tuple[bytes, bytes]:
    doc = {"event_id": eid, "type": etype, "occurred_at": f"2026-01-05T08:{at}.000Z", "interaction_id": iid, **extra}
    return iid.encode(), orjson.dumps(doc)


@pytest.mark.integration
def test_raw_store_holds_only_hashes_stable_across_restarts(kafka_bootstrap: str, tmp_path: Path) -> None:
    worker = WorkerProcess.create(kafka_bootstrap, tmp_path, "hashed", CCPULSE_CLICKHOUSE_HASH_CUSTOMER_IDS="true",
                                  CCPULSE_CLICKHOUSE_CUSTOMER_ID_KEY=KEY)
    first = [event("h1", "call.offered", "00:00", "A", queue="q", customer_id="cust-secret-1"),
             event("h2", "call.answered", "00:05", "A", agent_id="a1"),
             event("h3", "call.offered", "00:10", "B", queue="q", customer_id="cust-secret-2")]
    second = [event("h4", "call.offered", "05:00", "C", queue="q", customer_id="cust-secret-1")]

    def stored(n: int) -> bool:
        return sum(v for (name, _l), v in worker.metrics().items()
                   if name == "ccpulse_sink_rows_written_total" and ("table", "raw_events") in _l) >= n

    for batch, total in ((first, 3), (second, 4)):  # a restart in between: same key, same hash
        worker.start()
        try:
            produce(kafka_bootstrap, f"{worker.prefix}calls", batch)
            wait_until(lambda: stored(len(batch)), 90, "raw events written")
            worker.wait_sink_idle()
        finally:
            worker.stop()
    client = clickhouse_connect.get_client(interface="chdb", path=worker.clickhouse_path)
    try:
        rows = dict(client.query("SELECT event_id, customer_id FROM raw_events FINAL").result_rows)
        assert rows == {"h1": expected_hash("cust-secret-1"), "h2": None, "h3": expected_hash("cust-secret-2"),
                        "h4": expected_hash("cust-secret-1")}
        dump = client.query("SELECT * FROM raw_events").result_rows  # every version of every row
        assert "cust-secret" not in repr(dump)
        payload = client.query("SELECT payload FROM raw_events FINAL WHERE event_id = 'h4'").result_rows[0][0]
        assert json.loads(payload)["customer_id"] == expected_hash("cust-secret-1")
        # The FCR / recompute queries group by customer: A and C are still one customer.
        grouped = client.query("SELECT customer_id, uniqExact(interaction_id) FROM raw_events FINAL "
                               "WHERE customer_id IS NOT NULL GROUP BY customer_id").result_rows
        assert sorted(n for _c, n in grouped) == [1, 2]
    finally:
        client.close()
