"""On an adopted database the platform's ids may be `integer` (serial): status warns before
one runs out."""

from __future__ import annotations

import json

import asyncpg
import pytest

from store.growth import id_headroom
from tests.migration.test_adoption import db_name as db_name  # the restored backup
from tests.support.procs import simctl

pytestmark = pytest.mark.timeout(240)

INT4_MAX = 2_147_483_647


async def test_an_integer_id_near_its_end_warns_under_90_days(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    assert simctl(["migrate"], env).returncode == 0
    assert (
        await pg.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'trades'::regclass AND attname = 'id'"
        )
        == "integer"
    )
    # 50,000 ids left; 100,000 taken in the day since the sample: half a day left.
    last = INT4_MAX - 50_000
    await pg.execute("SELECT setval(pg_get_serial_sequence('trades', 'id'), $1)", last)
    await pg.execute(
        "INSERT INTO sim_growth_samples (relname, at, total_bytes, id_last) "
        "VALUES ('trades', now() - interval '1 day', 0, $1)",
        last - 100_000,
    )
    # users' ids are integer too, far from their end, taken slowly: no warning.
    users_last = await pg.fetchval("SELECT last_value FROM users_id_seq")
    await pg.execute(
        "INSERT INTO sim_growth_samples (relname, at, total_bytes, id_last) "
        "VALUES ('users', now() - interval '1 day', 0, $1)",
        users_last - 10,
    )
    ids = {(i.table, i.column): i for i in await id_headroom(pg)}
    trades = ids[("trades", "id")]
    assert trades.type == "integer" and trades.ids_left == 50_000
    assert trades.days_left is not None and 0.49 < trades.days_left < 0.51
    assert (
        trades.warning is not None and "trades.id (integer) runs out in 0.5 days" in trades.warning
    )
    users = ids[("users", "id")]
    assert users.warning is None and users.days_left is not None and users.days_left > 90

    data = json.loads(simctl(["status", "--json"], env).stdout)
    assert any("trades.id (integer) runs out in 0.5 days" in w for w in data["warnings"])
    [row] = [i for i in data["id_headroom"] if i["table"] == "trades"]
    assert row["ids_left"] == 50_000
    text = simctl(["status"], env).stdout
    assert "id trades.id (integer)" in text and "WARNING" in text


async def test_an_integer_id_without_a_rate_warns_when_few_ids_are_left(
    env: dict[str, str], pg: asyncpg.Connection
) -> None:
    assert simctl(["migrate"], env).returncode == 0
    await pg.execute(
        "SELECT setval(pg_get_serial_sequence('transactions', 'id'), $1)", INT4_MAX - 1000
    )
    [tx] = [i for i in await id_headroom(pg) if i.table == "transactions"]
    assert tx.days_left is None and tx.ids_left == 1000
    assert tx.warning is not None and "1,000 ids left" in tx.warning
