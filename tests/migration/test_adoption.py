"""Adoption of the platform's own database: a real backup (pg_dump custom format, built from
tests/fixtures/platform_legacy.sql by tests/fixtures/build_platform_backup.sh) restored with
pg_restore, as an operator would, then `simctl migrate` on it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.support.procs import simctl
from tests.support.services import _admin, drop_database, url_for

BACKUP = Path(__file__).resolve().parents[1] / "fixtures" / "platform_backup.dump"
# The last id of each table in the backup (platform_legacy.sql): rows after it are new.
LEGACY_MAX_ID = {
    "users": 120,
    "portfolio": 100,
    "transactions": 273,
    "trades": 300,
    "withdrawals": 9,
    "contacts": 6,
    "testimonies": 14,
    "admin_audit": 43,
}
LEGACY_TABLES = (
    "users",
    "portfolio",
    "transactions",
    "trades",
    "withdrawals",
    "contacts",
    "testimonies",
    "admin_audit",
)


def _pg_restore() -> str:
    found = shutil.which("pg_restore") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_restore"))), None
    )
    if found is None:
        raise RuntimeError("pg_restore is not installed (apt-get install postgresql-client)")
    return found


@pytest.fixture
def db_name() -> Iterator[str]:
    """This module's databases are the platform's backup restored, not the migrated template."""
    import time
    import uuid

    name = f"simengine_t_{int(time.time())}_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run(
            [_pg_restore(), "--no-owner", "--exit-on-error", "-d", url_for(name), str(BACKUP)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield name
    finally:
        drop_database(name)


async def catalogue(pg: asyncpg.Connection) -> list[tuple[str, ...]]:
    """Everything a migration could create or change in the schema, as sorted tuples."""
    rows = await pg.fetch(
        """
        SELECT 'rel', c.relname, c.relkind::text, coalesce(array_to_string(c.reloptions, ','), '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'col', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
               coalesce(pg_get_expr(d.adbin, d.adrelid), '')
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'con', conname, pg_get_constraintdef(c.oid), c.convalidated::text
          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'trg', tgname, '', '' FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT 'fn', p.proname, '', '' FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
        """
    )
    return sorted(tuple(str(v) for v in r.values()) for r in rows)


async def legacy_digest(pg: asyncpg.Connection, columns: dict[str, list[str]]) -> dict[str, str]:
    """md5 of every legacy column of every legacy row (the ids the backup holds), per table."""
    out = {}
    for table, cols in columns.items():
        upto = LEGACY_MAX_ID[table]
        row_expr = "row(" + ", ".join(f"t.{c}" for c in cols) + ")::text"
        out[table] = await pg.fetchval(
            f"SELECT count(*) || ':' || md5(string_agg({row_expr}, '|' ORDER BY t.id)) "  # noqa: S608
            f"FROM {table} t WHERE t.id <= {upto}"
        )
    return out


async def legacy_columns(pg: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await pg.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = ANY($1::text[]) "
        "ORDER BY table_name, ordinal_position",
        list(LEGACY_TABLES),
    )
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], []).append(r["column_name"])
    return out


async def sequences(pg: asyncpg.Connection) -> dict[str, int]:
    rows = await pg.fetch("SELECT sequencename, last_value FROM pg_sequences")
    return {r["sequencename"]: r["last_value"] for r in rows}


async def test_restore_migrate_run_reconcile(pg: asyncpg.Connection, env: dict[str, str]) -> None:
    cols = await legacy_columns(pg)
    assert "sim_claimed_until" not in cols["users"]  # a legacy database, without the engine
    before = await legacy_digest(pg, cols)
    seqs = await sequences(pg)
    users_before = await pg.fetchval("SELECT count(*) FROM users")

    first = simctl(["migrate"], env)
    assert first.returncode == 0, first.stderr
    assert f"baseline of {users_before} user(s)" in first.stdout
    # Legacy rows that break a rule the engine adds are reported by table, rule and count.
    assert "users: email stored lower-case (sim_users_email_lower): 17 row(s)" in first.stdout
    assert "trades: amount > 0 (sim_trades_amount_pos): 1 row(s)" in first.stdout

    assert await legacy_digest(pg, cols) == before, "a legacy row was rewritten"
    # Sequences are left alone (no setval, no identity conversion): only the audit rows of the
    # adoption and of the stored market took the next ids, as any insert would.
    now_seqs = await sequences(pg)
    audit_seq = "admin_audit_id_seq"
    assert {k: now_seqs[k] for k in seqs if k != audit_seq} == {
        k: v for k, v in seqs.items() if k != audit_seq
    }
    new_audit = await pg.fetch(
        "SELECT id, action FROM admin_audit WHERE id > $1 ORDER BY id", seqs[audit_seq]
    )
    assert now_seqs[audit_seq] == new_audit[-1]["id"] == seqs[audit_seq] + len(new_audit)
    assert [r["action"] for r in new_audit].count("adopt") == 1
    assert await pg.fetchval("SELECT count(*) FROM sim_baseline") == users_before
    assert await pg.fetchval("SELECT count(*) FROM admin_audit WHERE action = 'adopt'") == 1
    # Every index the engine relies on exists and is valid; every rule is validated (legacy rows
    # that break one are exempt by id, so the rule can be valid and still hold for new rows).
    invalid = await pg.fetchval(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname LIKE 'idx\\_%' AND NOT i.indisvalid"
    )
    assert invalid == 0
    assert await pg.fetchval("SELECT to_regclass('idx_users_sim_due') IS NOT NULL")
    assert not await pg.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'sim\\_%' AND NOT convalidated"
    )

    shape = await catalogue(pg)
    again = simctl(["migrate"], env)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert await catalogue(pg) == shape
    assert await legacy_digest(pg, cols) == before

    clean = simctl(["reconcile"], env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    info = simctl(["reconcile", "--legacy"], env)
    assert info.returncode == 0
    assert "legacy ledger does not explain" in info.stdout

    eligible = {
        r["id"]
        for r in await pg.fetch(
            "SELECT id FROM users WHERE sim_enabled AND NOT sim_paused AND is_active "
            "AND deleted_at IS NULL AND (sim_next_run_at IS NULL OR sim_next_run_at <= now())"
        )
    }
    assert len(eligible) > 20
    held = {
        (r["user_id"], r["asset"]): (r["held"], r["reserved"])
        for r in await pg.fetch(
            "SELECT w.user_id, w.asset, sum(w.amount) AS reserved, "
            "max(CASE w.asset WHEN 'BTC' THEN p.btc WHEN 'ETH' THEN p.eth WHEN 'USDT' THEN p.usdt "
            "WHEN 'USDC' THEN p.usdc WHEN 'XRP' THEN p.xrp ELSE p.ada END) AS held "
            "FROM withdrawals w JOIN portfolio p ON p.user_id = w.user_id "
            "WHERE w.status IN ('pending', 'processing') GROUP BY 1, 2"
        )
    }
    assert any(r > h for h, r in held.values())  # a legacy reservation above the holding

    assert simctl(["scheduler", "--once"], env).returncode == 0
    assert simctl(["worker", "--burst"], env).returncode == 0

    ran = await pg.fetch("SELECT user_id, count(*) AS n FROM sim_runs GROUP BY user_id")
    assert {r["user_id"]: r["n"] for r in ran} == dict.fromkeys(eligible, 1)
    # A slot long past ran once and the next one is a catch-up from now, not a storm.
    assert not await pg.fetchval(
        "SELECT count(*) FROM users WHERE id = ANY($1::bigint[]) AND sim_next_run_at <= now()",
        list(eligible),
    )
    for (user_id, asset), (before_held, reserved) in held.items():
        sold = await pg.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM trades WHERE user_id = $1 AND asset = $2 "
            "AND trade_type = 'sell' AND sim_run_id IS NOT NULL",
            user_id,
            asset,
        )
        assert sold <= max(before_held - reserved, Decimal(0)), (user_id, asset)
    assert await pg.fetchval(
        "SELECT bool_and(is_simulated) FROM trades WHERE sim_run_id IS NOT NULL"
    )
    after_run = simctl(["reconcile"], env)
    assert after_run.returncode == 0, after_run.stdout + after_run.stderr
    # Runs change users and portfolio rows (balances, holdings, slots) by design; every other
    # legacy row still reads the same.
    untouched = {t: c for t, c in cols.items() if t not in ("users", "portfolio")}
    assert await legacy_digest(pg, untouched) == {t: before[t] for t in untouched}


async def test_changes_after_adoption_must_be_explained(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    assert simctl(["migrate"], env).returncode == 0
    # The platform keeps writing legacy rows that break a new rule (exempt), new rows get it.
    await pg.execute(
        "UPDATE users SET full_name = 'Renamed' WHERE id = 7"
    )  # 'Trader.7@Example.COM'
    new_id = await pg.fetchval(
        "INSERT INTO users (email, balance_usd) VALUES ('New.Person@Example.COM', 0) RETURNING id"
    )
    assert await pg.fetchval("SELECT email FROM users WHERE id = $1", new_id) == (
        "new.person@example.com"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(
            "INSERT INTO trades (user_id, trade_type, asset, amount, price_usd, total_usd) "
            "VALUES (1, 'buy', 'BTC', -1, 1, 1)"
        )
    assert simctl(["reconcile"], env).returncode == 0
    # A change nothing explains is named.
    await pg.execute("UPDATE users SET balance_usd = balance_usd + 5 WHERE id = 3")
    await pg.execute("UPDATE portfolio SET eth = eth + 1 WHERE user_id = 9")
    found = simctl(["reconcile"], env)
    assert found.returncode == 1
    assert "user 3: balance_usd" in found.stdout
    assert "user 9: eth" in found.stdout


async def test_plan_prints_and_changes_nothing(pg: asyncpg.Connection, env: dict[str, str]) -> None:
    shape = await catalogue(pg)
    plan = simctl(["migrate", "--plan"], env)
    assert plan.returncode == 0, plan.stderr
    assert "CREATE INDEX CONCURRENTLY idx_users_sim_due" in plan.stdout
    assert "    ADD COLUMN sim_claimed_until timestamptz," in plan.stdout
    assert "legacy rows: users: email stored lower-case (sim_users_email_lower): 17" in plan.stdout
    assert "nothing was changed" in plan.stdout
    assert await catalogue(pg) == shape
    assert await pg.fetchval("SELECT to_regclass('schema_migrations')") is None


async def test_incompatible_columns_are_refused_with_nothing_changed(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await pg.execute("ALTER TABLE users ALTER COLUMN balance_usd TYPE double precision")
    await pg.execute("ALTER TABLE transactions ALTER COLUMN amount TYPE numeric(20,2)")
    await pg.execute("ALTER TABLE trades ALTER COLUMN created_at TYPE timestamp")
    shape = await catalogue(pg)
    refused = simctl(["migrate"], env)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert "users.balance_usd: found double precision; needs numeric" in refused.stderr
    assert "transactions.amount: found numeric(20,2); needs numeric" in refused.stderr
    assert "trades.created_at: found timestamp without time zone" in refused.stderr
    assert len(lines) == 4  # the refusal, then one line per problem
    assert await catalogue(pg) == shape
    assert await pg.fetchval("SELECT to_regclass('schema_migrations')") is None


async def test_a_held_lock_makes_migrate_give_up_with_nothing_changed(
    pg: asyncpg.Connection, db_url: str, env: dict[str, str]
) -> None:
    shape = await catalogue(pg)
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("BEGIN; SELECT count(*) FROM users")  # a long reader, lock kept
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        refused = await asyncio.to_thread(
            simctl,
            ["migrate"],
            {**env, "SIM_MIGRATE_LOCK_TIMEOUT_MS": "200", "SIM_MIGRATE_ATTEMPTS": "2"},
            60,
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "no lock within 200 ms after 2 attempt(s)" in refused.stderr
        assert f"pid {pid}" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        # The platform was not queued behind it: the holder's transaction is still usable.
        assert await holder.fetchval("SELECT count(*) FROM users") > 0
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    assert await catalogue(pg) == shape
    assert await pg.fetchval("SELECT to_regclass('schema_migrations')") is None
    # Once the transaction is gone, the same command adopts.
    assert simctl(["migrate"], env).returncode == 0


async def test_an_interrupted_adoption_is_finished_by_the_next_migrate(
    pg: asyncpg.Connection,
) -> None:
    from store.migrate import migrate

    assert (await migrate(pg)).adopted_users
    # As if the run stopped after its transaction: an index not built, a rule not validated.
    await pg.execute("UPDATE sim_adoption SET completed_at = NULL")
    await pg.execute("DROP INDEX idx_users_sim_due")
    await pg.execute("ALTER TABLE trades DROP CONSTRAINT sim_trades_fee_nonneg")
    await pg.execute(
        "ALTER TABLE trades ADD CONSTRAINT sim_trades_fee_nonneg CHECK (fee_usd >= 0) NOT VALID"
    )
    plan = await migrate(pg, plan_only=True)
    assert plan.applied == [] and plan.adopted_users is None
    assert any("CREATE INDEX CONCURRENTLY idx_users_sim_due" in s for s in plan.plan)
    assert "ALTER TABLE trades VALIDATE CONSTRAINT sim_trades_fee_nonneg;" in plan.plan
    assert await pg.fetchval("SELECT to_regclass('idx_users_sim_due')") is None

    again = await migrate(pg)
    assert again.applied == [] and again.adopted_users is None
    assert any("1 index(es) built CONCURRENTLY" in n for n in again.notes)
    assert await pg.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_users_sim_due'::regclass"
    )
    assert await pg.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'sim_trades_fee_nonneg'"
    )
    assert await pg.fetchval("SELECT completed_at IS NOT NULL FROM sim_adoption")
    assert (await migrate(pg)).notes == []  # complete: nothing left to finish
