"""The operator sees growth coming: size samples and growth per day, the days left of an
`integer` id, dead tuples on users, retention and checkpoints in `simctl status`, and a status
that reads no history table end to end."""

from __future__ import annotations

import json

import asyncpg
import pytest

from store.growth import growth, id_headroom, sample
from tests.support.procs import seed_due, simctl, wait_until
from workers import metrics

pytestmark = pytest.mark.timeout(120)


async def _rate(pg: asyncpg.Connection, table: str) -> int | None:
    [row] = [t for t in await growth(pg) if t.table == table]
    return row.bytes_per_day


async def test_growth_is_na_with_one_sample_and_a_rate_with_two(pg: asyncpg.Connection) -> None:
    now = await pg.fetchval("SELECT now()")

    async def add(hours_ago: int, total_bytes: int) -> None:
        await pg.execute(
            "INSERT INTO sim_growth_samples (relname, at, total_bytes, est_rows) "
            "VALUES ('sim_runs', $1::timestamptz - make_interval(hours => $2), $3, 0)",
            now,
            hours_ago,
            total_bytes,
        )

    assert await _rate(pg, "sim_runs") is None  # no sample at all
    await add(3, 1_000_000)
    assert await _rate(pg, "sim_runs") is None  # one sample: nothing to compare with
    await add(1, 3_000_000)
    # 2,000,000 bytes in two hours: 24,000,000 a day.
    assert await _rate(pg, "sim_runs") == 24_000_000
    # A sample older than a day is not the base while one within the day exists.
    await add(72, 0)
    assert await _rate(pg, "sim_runs") == 24_000_000


async def test_sample_records_every_watched_table_from_the_catalogue(
    pg: asyncpg.Connection,
) -> None:
    assert await sample(pg)
    assert not await sample(pg, min_interval_s=300)  # another process just took one
    tables = {
        r["relname"]: r
        for r in await pg.fetch("SELECT relname, total_bytes FROM sim_growth_samples")
    }
    for name in ("sim_runs", "trades", "transactions", "price_history", "portfolio", "users"):
        assert tables[name]["total_bytes"] > 0, name
    assert "sim_checkpoint_users" in tables
    # Samples older than 8 days are forgotten by the next sample.
    await pg.execute(
        "INSERT INTO sim_growth_samples (relname, at, total_bytes) "
        "VALUES ('sim_runs', now() - interval '9 days', 1)"
    )
    assert await sample(pg)
    assert await pg.fetchval("SELECT min(at) > now() - interval '8 days' FROM sim_growth_samples")


async def test_no_integer_id_no_headroom_line(pg: asyncpg.Connection) -> None:
    assert await id_headroom(pg) == []  # a database simengine created: every id is bigint


async def test_status_shows_growth_vacuum_retention_and_checkpoints(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 5)
    await pg.execute(  # one statement: both samples at the same now(), an hour apart
        "INSERT INTO sim_growth_samples (relname, at, total_bytes, est_rows) "
        "VALUES ('sim_runs', now() - interval '2 hours', 0, 0), "
        "       ('sim_runs', now() - interval '1 hour', 86400 * 1024, 0)"
    )
    await pg.execute("UPDATE sim_history SET keep_days = 30")
    await pg.execute(
        "INSERT INTO sim_checkpoints (state, cut_at, trades_cut, transactions_cut, runs_cut, "
        "taken_by, verified_at) VALUES ('verified', now() - interval '2 hours', 0, 0, 0, 't', "
        "now() - interval '2 hours')"
    )
    failed = await pg.fetchval(
        "INSERT INTO sim_checkpoints (state, cut_at, trades_cut, transactions_cut, runs_cut, "
        "taken_by, error) VALUES ('failed', now(), 0, 0, 0, 't', 'trades row 7 changed') "
        "RETURNING id"
    )
    result = simctl(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["due_now"] == 5  # the old keys stay
    runs = data["tables"]["sim_runs"]
    assert runs["bytes"] > 0 and runs["bytes_per_day"] == 86400 * 1024 * 24
    assert data["tables"]["users"]["bytes_per_day"] is None
    assert {"dead_tuples", "last_autovacuum", "n_mod_since_analyze", "vacuum_at_dead"} <= set(
        data["users_vacuum"]
    )
    history = data["history"]
    assert history["keep_days"] == 30 and history["pruned_through"] is None
    assert 7000 < history["checkpoint_age_s"] < 7300
    assert history["failed_id"] == failed
    assert f"checkpoint {failed} failed: trades row 7 changed" in data["warnings"]
    # Two hours is more than two SIM_CHECKPOINT_INTERVAL_S (900 s by default).
    assert any("checkpoint" in w and "2.0 h old" in w for w in data["warnings"])
    assert data["id_headroom"] == []

    text = simctl(["status"], env)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "table sim_runs" in out and "+2.0 GB/day" in out
    assert "users dead tuples" in out
    assert "keep 30 days, nothing pruned yet" in out
    assert "checkpoint failed" in out and "trades row 7 changed" in out
    assert "WARNING" in out


async def test_status_reads_no_history_table_end_to_end(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    """runs_1m/runs_1h and the last ticks come from index probes: a count over the hour read
    every run of it (at a fast fill, the whole history, in parallel sequential scans)."""
    await seed_due(pg, 100, holdings=False)
    # 30,000 runs in the last hour, 600 of them in the last minute (ids in finishing order).
    await pg.execute(
        """INSERT INTO sim_runs (user_id, scheduled_for, started_at, finished_at, trades_count)
           SELECT u.id, now() - g * interval '10 ms', now() - g * interval '10 ms',
                  now() - interval '1 s' - (30000 - g) * interval '100 ms', 0
             FROM generate_series(1, 30000) g
             JOIN users u ON u.id = (SELECT min(id) FROM users) + g % 100
            ORDER BY g"""
    )
    await pg.execute(
        "INSERT INTO price_history (asset, at, price_usd, source) "
        "SELECT a, now() - g * interval '1 minute', 1, 'model' "
        "FROM unnest(ARRAY['BTC','ETH','USDT','USDC','XRP','ADA']) a, generate_series(1, 5000) g "
        "ON CONFLICT DO NOTHING"
    )
    await pg.execute("ANALYZE sim_runs")
    await pg.execute("ANALYZE price_history")

    async def seq_scans() -> dict[str, int]:
        await pg.execute("SELECT pg_stat_clear_snapshot()")
        rows = await pg.fetch(
            "SELECT relname, seq_scan FROM pg_stat_user_tables "
            "WHERE relname IN ('sim_runs', 'price_history', 'trades', 'transactions')"
        )
        return {r["relname"]: r["seq_scan"] for r in rows}

    async def alone() -> bool:  # a backend reports its counts as it ends
        return not await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    await wait_until(alone, 30, "no other session on the test database")
    before = await seq_scans()
    result = simctl(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    await wait_until(alone, 30, "the status command's session to end")
    after = await seq_scans()
    assert after == before, {k: after[k] - before[k] for k in after}
    data = json.loads(result.stdout)
    assert data["runs_1h"] == 30_000
    assert 450 <= data["runs_1m"] <= 590  # the minute moved on while the command started
    assert set(data["last_tick"]) == {"BTC", "ETH", "USDT", "USDC", "XRP", "ADA"}


async def test_record_growth_sets_the_gauges(pg: asyncpg.Connection) -> None:
    await pg.execute(
        "INSERT INTO sim_checkpoints (state, cut_at, trades_cut, transactions_cut, runs_cut, "
        "taken_by, verified_at) VALUES ('verified', now() - interval '10 minutes', 0, 0, 0, "
        "'t', now())"
    )
    assert await metrics.record_growth(pg)
    size = metrics.TABLE_BYTES.labels(table="sim_runs")._value.get()
    # sim_runs is partitioned (0015): its size is its partitions' (its own is 0).
    assert size == await pg.fetchval(
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('sim_runs') WHERE isleaf"
    )
    assert 600 <= metrics.CHECKPOINT_AGE._value.get() < 700
