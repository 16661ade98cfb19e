"""A database built by the migrations has the contract's schema (catalogue, never SQL text),
its constraints bite, and the runner is idempotent, concurrent-safe and checksum-strict."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest

from store.errors import MigrationError
from store.migrate import migrate
from store.sqlfiles import migrations

N18 = "numeric(18,8)"
N20 = "numeric(20,8)"
TS = "timestamp with time zone"

# Contract section 2: table -> column -> type (columns we added may exist beside these).
CONTRACT: dict[str, dict[str, str]] = {
    "users": {
        "id": "bigint",
        "email": "text",
        "password_hash": "text",
        "full_name": "text",
        "balance_usd": N20,
        "portfolio_value_usd": N20,
        "tax_id": "text",
        "is_active": "boolean",
        "deleted_at": TS,
        "created_at": TS,
        "updated_at": TS,
        "sim_enabled": "boolean",
        "sim_paused": "boolean",
        "sim_interval_s": "integer",
        "sim_next_run_at": TS,
        "sim_last_run_at": TS,
        "sim_run_count": "bigint",
        "sim_strategy": "text",
        "sim_params": "jsonb",
    },
    "portfolio": {
        "id": "bigint",
        "user_id": "bigint",
        "btc": N18,
        "eth": N18,
        "usdt": N18,
        "usdc": N18,
        "xrp": N18,
        "ada": N18,
        "usd_value": N20,
        "updated_at": TS,
    },
    "transactions": {
        "id": "bigint",
        "user_id": "bigint",
        "type": "text",
        "amount": N20,
        "currency": "text",
        "status": "text",
        "reference": "text",
        "description": "text",
        "created_at": TS,
    },
    "trades": {
        "id": "bigint",
        "user_id": "bigint",
        "trade_type": "text",
        "asset": "text",
        "amount": N18,
        "price_usd": N20,
        "total_usd": N20,
        "fee_usd": N20,
        "is_simulated": "boolean",
        "balance_before": N20,
        "balance_after": N20,
        "sim_run_id": "bigint",
        "generated_at": TS,
        "created_at": TS,
    },
    "withdrawals": {
        "id": "bigint",
        "user_id": "bigint",
        "asset": "text",
        "amount": N18,
        "address": "text",
        "status": "text",
        "tx_hash": "text",
        "error_message": "text",
        "created_at": TS,
        "updated_at": TS,
    },
    "contacts": {"id": "bigint", "email": "text", "created_at": TS},
    "testimonies": {"id": "bigint", "rating": "integer", "is_featured": "boolean"},
    "admin_audit": {
        "id": "bigint",
        "admin_key": "text",
        "action": "text",
        "target_user_id": "bigint",
        "details": "jsonb",
        "created_at": TS,
    },
    "sim_runs": {
        "id": "bigint",
        "user_id": "bigint",
        "scheduled_for": TS,
        "started_at": TS,
        "finished_at": TS,
        "outcome": "text",
        "trades_count": "integer",
    },
    "price_history": {"asset": "text", "at": TS, "price_usd": N20, "source": "text"},
    "fee_config": {
        "asset": "text",
        "fee_bps": "integer",
        "min_notional_usd": N20,
        "withdrawal_fee": N18,
    },
    "schema_migrations": {"version": "text", "checksum": "text"},
}
NAMED_INDEXES = {
    "idx_users_email": "users",
    "idx_contacts_email": "contacts",
    "idx_user_portfolio": "portfolio",
    "idx_user_withdrawals": "withdrawals",
    "idx_withdrawals_status": "withdrawals",
    "idx_trades_user_id": "trades",
    "idx_trades_created_at": "trades",
    "idx_trades_is_simulated": "trades",
    "idx_trades_user_date": "trades",
}


async def test_every_contract_table_and_column_has_its_type(pg: asyncpg.Connection) -> None:
    rows = await pg.fetch(
        """SELECT c.relname AS t, a.attname AS col, format_type(a.atttypid, a.atttypmod) AS type
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND a.attnum > 0 AND NOT a.attisdropped"""
    )
    found: dict[str, dict[str, str]] = {}
    for r in rows:
        found.setdefault(r["t"], {})[r["col"]] = r["type"]
    for table, columns in CONTRACT.items():
        assert table in found, f"missing table {table}"
        for col, typ in columns.items():
            assert found[table].get(col) == typ, f"{table}.{col}: {found[table].get(col)} != {typ}"


async def test_ids_are_identity_and_named_indexes_exist(pg: asyncpg.Connection) -> None:
    identity = await pg.fetch(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'id' "
        "AND is_identity = 'YES' AND identity_generation = 'ALWAYS'"
    )
    assert {"users", "portfolio", "transactions", "trades", "withdrawals", "sim_runs"} <= {
        r["table_name"] for r in identity
    }
    idx = await pg.fetch(
        "SELECT indexname, tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    by_name = {r["indexname"]: r for r in idx}
    for name, table in NAMED_INDEXES.items():
        assert name in by_name and by_name[name]["tablename"] == table, name
    assert "DESC" in by_name["idx_trades_created_at"]["indexdef"]


async def test_defaults_of_the_simulator_controls(pg: asyncpg.Connection) -> None:
    row = await pg.fetchrow(
        "INSERT INTO users (email) VALUES ('a@b.co') RETURNING sim_enabled, sim_paused, "
        "sim_interval_s, sim_next_run_at, sim_run_count, is_active, balance_usd, portfolio_value_usd"
    )
    assert row is not None
    assert (row["sim_enabled"], row["sim_paused"], row["sim_interval_s"]) == (False, False, 300)
    assert row["sim_next_run_at"] is None and row["sim_run_count"] == 0 and row["is_active"]
    assert row["balance_usd"] == 0 and row["portfolio_value_usd"] == 0


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE users SET balance_usd = -0.00000001",
        "UPDATE users SET sim_interval_s = 0",
        "INSERT INTO users (email) VALUES ('A@B.CO')",  # duplicate email in another case
        "INSERT INTO testimonies (content, rating) VALUES ('great', 6)",
        "INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd) "
        "SELECT id, 'buy', 'DOGE', 1, 1, 1 FROM users",
        "INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd) "
        "SELECT id, 'buy', 'BTC', 0, 1, 0 FROM users",
        "INSERT INTO portfolio (user_id, btc) SELECT id, -1 FROM users",
        "INSERT INTO transactions (user_id, type, amount) SELECT id, 'gift', 1 FROM users",
        "INSERT INTO withdrawals (user_id, asset, amount, status) SELECT id, 'BTC', 1, 'lost' FROM users",
    ],
)
async def test_constraints_reject_bad_rows(pg: asyncpg.Connection, statement: str) -> None:
    await pg.execute("INSERT INTO users (email) VALUES ('a@b.co')")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await pg.execute(statement)


async def test_email_is_stored_lower_case(pg: asyncpg.Connection) -> None:
    email = await pg.fetchval(
        "INSERT INTO users (email) VALUES ('  Mixed.Case@Example.COM') RETURNING email"
    )
    assert email == "mixed.case@example.com"


async def test_migrate_twice_changes_nothing(pg: asyncpg.Connection) -> None:
    before = await pg.fetch(
        "SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1"
    )
    report = await migrate(pg)
    assert report.applied == [] and len(report.already) == len(migrations())
    after = await pg.fetch("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1")
    assert before == after


async def test_concurrent_migrate_on_an_empty_database_applies_once(db_url: str) -> None:
    from tests.support.services import create_database, drop_database, url_for

    del db_url
    name = create_database("template0")
    try:
        conns = [await asyncpg.connect(url_for(name)) for _ in range(3)]
        reports = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r.applied) for r in reports) == [0, 0, len(migrations())]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrations())
        for c in conns:
            await c.close()
    finally:
        drop_database(name)


async def test_a_changed_applied_migration_is_refused(pg: asyncpg.Connection) -> None:
    changed = [
        replace(m, sql=m.sql + "\n-- edited") if m.version == "0001" else m for m in migrations()
    ]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(pg, changed)


async def test_a_failing_migration_leaves_nothing_behind(pg: asyncpg.Connection) -> None:
    from store.sqlfiles import Migration

    broken = [*migrations(), Migration("9999", "broken", "CREATE TABLE half (id int); SELECT 1/0;")]
    with pytest.raises(MigrationError, match="9999_broken failed"):
        await migrate(pg, broken)
    assert await pg.fetchval("SELECT to_regclass('half')") is None
    assert await pg.fetchval("SELECT count(*) FROM schema_migrations WHERE version = '9999'") == 0
