"""The time-in-state figures in ClickHouse (issue 16): the columns on ``kpi_windows`` and
``agent_windows`` (added to a store created before them, at every start), stored as the
records publish them, and the daily/weekly/monthly rollups, which sum the seconds and the
away-by-reason map and recompute occupancy and utilization from the sums. Expected
figures are worked out by hand from the seconds."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

from ccpulse.config import DEFAULT_THRESHOLDS
from ccpulse.core.agents import state_figures
from ccpulse.core.kpis import AGENT, QUEUE, WindowAgg
from schemas import records

S = 1000
H = 3600 * S
DAY = 86400
SUNDAY = calendar.timegm((2026, 11, 22, 0, 0, 0)) * 1000  # Sunday; the next day is a Monday
VOICE = DEFAULT_THRESHOLDS["voice"]
STATE = ("staffed_seconds", "available_seconds", "on_contact_seconds", "after_contact_work_seconds",
         "away_seconds", "away_seconds_by_reason", "occupancy", "utilization")
NEW_COLUMNS = set(STATE)

# Two days of one queue (milliseconds, as the agent stage counts them).
DAY_1 = {"staffed_ms": 8 * H, "available_ms": 2 * H, "on_contact_ms": 4 * H, "after_contact_work_ms": 1 * H,
         "away_ms": 1 * H, "away_ms:lunch": 1 * H}
DAY_2 = {"staffed_ms": 4 * H, "available_ms": 3 * H, "on_contact_ms": 30 * 60 * S,
         "after_contact_work_ms": 0, "away_ms": 30 * 60 * S, "away_ms:lunch": 20 * 60 * S,
         "away_ms:break": 10 * 60 * S}


def day_record(start: int, counts: dict[str, int], scope: str = QUEUE, name: str = "billing",
               channel: str = "voice") -> dict[str, Any]:
    return records.window_record((DAY, start, scope, name, channel), start + DAY * S,
                                 WindowAgg({"offered": 1, **counts}, {}), VOICE, version=3, final=True,
                                 now_ms=start)


def _columns(client: Any, table: str) -> set[str]:
    return {row[0] for row in client.query(f"DESCRIBE TABLE {table}").result_rows}


def test_the_store_gets_the_state_columns_and_the_rollups_recompute_the_ratios_from_the_sums(tmp_path: Any) -> None:
    from sinks.clickhouse import ClickHouseWriter, connect, ddl_statements
    dsn = f"chdb://{tmp_path / 'store'}"
    client = connect(dsn)  # the store as created before issue 16: its CREATE statements only
    for statement in ddl_statements():
        if "CREATE TABLE" in statement and "ALTER TABLE" not in statement:
            client.command(statement)
    for table in ("kpi_windows", "agent_windows"):
        assert not NEW_COLUMNS & _columns(client, table), table
    client.close()
    with ClickHouseWriter(dsn) as writer:
        for table in ("kpi_windows", "agent_windows"):
            assert NEW_COLUMNS <= _columns(writer.client, table), table
        old = day_record(SUNDAY, {}, name="plain")
        for name in STATE:  # a record published before them, still on the compacted topic
            del old[name]
        writer.insert_now("kpi_windows", [day_record(SUNDAY, DAY_1), day_record(SUNDAY + DAY * S, DAY_2), old])
        writer.insert_now("agent_windows", [day_record(SUNDAY, DAY_1, scope=AGENT, name="a-7", channel="")])
        c = writer.client
        columns = ", ".join(STATE)
        stored = c.query(f"SELECT {columns} FROM kpi_windows FINAL WHERE queue = 'billing' "
                         "ORDER BY window_start").result_rows
        assert [dict(zip(STATE, row)) for row in stored] == [state_figures(DAY_1), state_figures(DAY_2)]
        assert state_figures(DAY_1)["occupancy"] == 5 / 7 and state_figures(DAY_1)["utilization"] == 5 / 8
        assert c.query(f"SELECT {columns} FROM kpi_windows FINAL WHERE queue = 'plain'").result_rows == [
            (0.0, 0.0, 0.0, 0.0, 0.0, {}, None, None)]
        agent = c.query(f"SELECT {columns} FROM agent_windows FINAL WHERE agent_id = 'a-7'").result_rows
        assert [dict(zip(STATE, row)) for row in agent] == [state_figures(DAY_1)]
        # The month (and the week of each day: a Sunday and a Monday) sum the seconds; the
        # ratios are those of the sums (5.5 h busy of 10.5 h busy + available; of 12 h
        # staffed), never the average of the days' ratios.
        month = c.query(f"SELECT {columns}, days FROM kpi_monthly WHERE queue = 'billing'").result_rows
        summed = {k: DAY_1.get(k, 0) + DAY_2.get(k, 0) for k in DAY_1.keys() | DAY_2.keys()}
        got = dict(zip((*STATE, "days"), month[0]))
        assert len(month) == 1 and got["days"] == 2
        assert got == {**state_figures(summed), "days": 2}  # whole seconds: exact in floating point
        assert (got["occupancy"], got["utilization"]) == pytest.approx((5.5 / 10.5, 5.5 / 12))
        assert got["away_seconds_by_reason"] == {"lunch": 4800.0, "break": 600.0}
        daily = c.query(f"SELECT {columns} FROM kpi_daily WHERE queue = 'billing' ORDER BY period_start").result_rows
        assert [dict(zip(STATE, row)) for row in daily] == [state_figures(DAY_1), state_figures(DAY_2)]
        weekly = c.query("SELECT staffed_seconds FROM kpi_weekly WHERE queue = 'billing' "
                         "ORDER BY period_start").result_rows
        assert weekly == [(8 * 3600.0,), (4 * 3600.0,)]
        # a queue without agent events rolls up as 0, {} and null
        assert c.query(f"SELECT {columns} FROM kpi_monthly WHERE queue = 'plain'").result_rows == [
            (0.0, 0.0, 0.0, 0.0, 0.0, {}, None, None)]
    with ClickHouseWriter(dsn) as writer:  # the migration runs at every start and changes nothing
        assert writer.client.query("SELECT sum(staffed_seconds) FROM kpi_windows FINAL").result_rows == [(12 * 3600.0,)]
