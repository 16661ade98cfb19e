"""sim_runs partitioned by day (migration 0015, store/partitions.py): a populated 0014 database
migrates keeping every run, id and the slot rule; retention drops ended days whole (archived
first, each user's latest run kept) with the views, reconcile and the archive exact; a prune
killed in the middle of a drop leaves nothing half done; housekeeping makes the days ahead and
the default partition never swallows a day nobody made."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from simconfig import Settings
from store.db import connect, create_pool
from store.growth import overview
from store.history import checkpoint
from store.market import ensure_market
from store.migrate import migrate
from store.sqlfiles import migrations, query
from store.users import create_user
from tests.support.keys import with_admin_key
from tests.support.procs import simctl, spawn, stop, wait_until
from tests.support.runs import fast_forward
from tests.support.services import create_database, drop_database, url_for
from workers.batch import BatchRunner
from workers.housekeeping import partitions_ahead

pytestmark = pytest.mark.timeout(300)

ACTOR = "sha256:test"
KEY = "partitions-test-admin-key"
RUNS = (
    "SELECT id, user_id, scheduled_for, started_at, finished_at, outcome, trades_count "
    "FROM sim_runs ORDER BY id"
)


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return with_admin_key(env, KEY)


def today() -> date:
    return datetime.now(UTC).date()


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def part(day: date) -> str:
    return f"sim_runs_p{day:%Y%m%d}"


async def partitions_from(pg: asyncpg.Connection, first: date) -> None:
    """This (empty) database as if partitioned since `first`: its day partitions remade from
    there, the default's bound moved down to it."""
    assert await pg.fetchval("SELECT count(*) FROM sim_runs") == 0
    for r in await pg.fetch("SELECT name FROM sim_runs_day_partitions()"):
        await pg.execute(f'DROP TABLE "{r["name"]}"')
    await pg.execute(
        "ALTER TABLE sim_runs_default DROP CONSTRAINT sim_runs_default_bound, "
        "ADD CONSTRAINT sim_runs_default_bound CHECK "
        f"(scheduled_for < '{midnight(first).isoformat()}'::timestamptz)"
    )
    await pg.fetchval("SELECT sim_runs_add_partitions(7)")


async def exists(pg: asyncpg.Connection, relname: str) -> bool:
    return bool(await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", relname))


async def run_lines(pg: asyncpg.Connection) -> dict[int, str]:
    """Every run's canonical line (what the chain hashes), by id."""
    rows = await pg.fetch(query("rows_sim_runs", "history.sql"), 0, 2**62)
    return {r["id"]: r["line"] for r in rows}


async def views(pg: asyncpg.Connection) -> list[list[tuple[Any, ...]]]:
    """Every user's ledger totals and P&L, exactly as the views give them."""
    out = []
    for sql in (
        "SELECT * FROM sim_ledger_totals ORDER BY user_id",
        "SELECT * FROM sim_pnl ORDER BY user_id",
    ):
        out.append([tuple(r) for r in await pg.fetch(sql)])
    return out


def clean(env: dict[str, str], *args: str) -> None:
    done = simctl(list(args), env, timeout=120)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])


async def days_of_history(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings
) -> dict[str, Any]:
    """Partitioned since three days ago: two users run on days -3 and -2, a quiet one on day -3
    only; a verified checkpoint; then the two run again today (above its cut)."""
    first = today() - timedelta(days=3)
    await partitions_from(pg, first)
    users = []
    for n in range(2):
        uid: int = await create_user(
            pg, ACTOR, f"part{n}@example.com", "", Decimal(10000), True, 300, "random"
        )
        users.append(uid)
    quiet: int = await create_user(
        pg, ACTOR, "quiet@example.com", "", Decimal(900), True, 300, None
    )
    for uid in users:
        for d in (first, first + timedelta(days=1)):
            slots = [midnight(d) + timedelta(hours=9, minutes=5 * i) for i in range(12)]
            await fast_forward(pg, runner, uid, slots)
    await fast_forward(
        pg, runner, quiet, [midnight(first) + timedelta(hours=10, minutes=5 * i) for i in range(4)]
    )
    report = await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
    assert report.state == "verified", report.problems
    now = datetime.now(UTC)
    for uid in users:
        await fast_forward(pg, runner, uid, [now - timedelta(seconds=30 - i) for i in range(3)])
    return {"first": first, "users": users, "quiet": quiet}


async def test_prune_drops_ended_days_whole_and_everything_stays_exact(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    h = await days_of_history(pg, runner, settings)
    first: date = h["first"]
    day3, day2, day1 = part(first), part(first + timedelta(days=1)), part(first + timedelta(days=2))
    assert await pg.fetchval(f'SELECT count(*) FROM "{day3}"') == 28  # noqa: S608
    assert await pg.fetchval(f'SELECT count(*) FROM "{day2}"') == 24  # noqa: S608
    quiet_latest = await pg.fetchval(
        "SELECT id FROM sim_runs WHERE user_id = $1 ORDER BY scheduled_for DESC LIMIT 1",
        h["quiet"],
    )
    lines_before = await run_lines(pg)
    before_views = await views(pg)
    total_before = len(lines_before)

    archive = tmp_path / "archive"
    done = simctl(
        ["prune", "--keep-days", "0", "--archive", str(archive), "--json"], admin_env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["complete"]
    # Days -3, -2 and the empty day -1 went whole; today (not over) stays.
    assert {day3, day2, day1} <= set(report["partitions_dropped"])
    for name in (day3, day2, day1):
        assert not await exists(pg, name), name
    assert await exists(pg, part(today()))
    assert report["runs_put_back"] == 1
    # What is left: the quiet user's latest run (moved to the default, same line) and every run
    # above the checkpoint's cut; exactly what a DELETE of the same rows would have left.
    lines_after = await run_lines(pg)
    assert lines_after[quiet_latest] == lines_before[quiet_latest]
    assert (
        await pg.fetchval(
            "SELECT tableoid::regclass::text FROM sim_runs WHERE id = $1", quiet_latest
        )
        == "sim_runs_default"
    )
    assert all(lines_after[i] == lines_before[i] for i in lines_after)
    assert report["rows"]["sim_runs"] == total_before - len(lines_after) == 52 - 1
    # The views to the last decimal, reconcile (both ways), the archive against the chain.
    assert await views(pg) == before_views
    clean(admin_env, "reconcile")
    clean(admin_env, "reconcile", "--full")
    clean(admin_env, "archive", "verify", str(archive))
    manifest = json.loads((archive / "manifest.json").read_text())
    archived = {
        name: entry["rows"] for name, entry in manifest["files"].items() if "sim_runs" in name
    }
    assert archived == {
        f"sim_runs/{first:%Y-%m-%d}.lines.gz": 28 - 1,
        f"sim_runs/{first + timedelta(days=1):%Y-%m-%d}.lines.gz": 24,
    }
    # A drop is not a change of a run; the default's bound moved up past the dropped days and
    # is validated again; a late slot of a dropped day lands in the default.
    assert await pg.fetchval("SELECT count(*) FROM sim_history_changes") == 0
    bound = await pg.fetchrow(
        "SELECT sim_runs_default_bound() AS at, (SELECT convalidated FROM pg_constraint "
        "WHERE conname = 'sim_runs_default_bound') AS valid"
    )
    assert bound is not None and bound["valid"] and bound["at"] >= midnight(first + timedelta(3))
    late = midnight(first) + timedelta(hours=20)
    await fast_forward(pg, runner, h["quiet"], [late])
    assert (
        await pg.fetchval(
            "SELECT tableoid::regclass::text FROM sim_runs WHERE user_id = $1 AND scheduled_for = $2",
            h["quiet"],
            late,
        )
        == "sim_runs_default"
    )


async def test_a_partition_with_a_run_above_the_floor_is_left_to_the_batches(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    h = await days_of_history(pg, runner, settings)
    first: date = h["first"]
    # A late slot of day -2, run after the checkpoint: its id is above the floor.
    late = midnight(first + timedelta(days=1)) + timedelta(hours=23)
    await fast_forward(pg, runner, h["quiet"], [late])
    late_id = await pg.fetchval(
        "SELECT id FROM sim_runs WHERE user_id = $1 AND scheduled_for = $2", h["quiet"], late
    )
    done = simctl(["prune", "--keep-days", "0", "--json"], admin_env, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert part(first) in report["partitions_dropped"]
    assert part(first + timedelta(days=1)) not in report["partitions_dropped"]
    # The day stays with only its run above the floor: the batches deleted the rest.
    kept = part(first + timedelta(days=1))
    assert [r["id"] for r in await pg.fetch(f'SELECT id FROM "{kept}"')] == [late_id]  # noqa: S608
    clean(admin_env, "reconcile", "--full")


async def test_a_prune_killed_in_the_middle_of_a_drop_leaves_nothing_half_done(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    db_url: str,
    tmp_path: Path,
) -> None:
    h = await days_of_history(pg, runner, settings)
    day3 = part(h["first"])
    lines_before = await run_lines(pg)
    before_views = await views(pg)
    archive = tmp_path / "archive"
    # A reader holds sim_runs: the drop's ACCESS EXCLUSIVE waits behind it, its archive batch
    # already written (pending); the prune is killed there.
    reader = await connect(db_url)
    try:
        await reader.execute("BEGIN")
        await reader.fetchval("SELECT count(*) FROM sim_runs")
        proc = spawn(["prune", "--keep-days", "0", "--archive", str(archive)], admin_env)

        async def waiting_to_drop() -> bool:
            manifest = archive / "manifest.json"
            pending = manifest.exists() and json.loads(manifest.read_text())["pending"]
            waiting = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%sim_runs_drop_day%'"
            )
            return bool(pending) and bool(waiting)

        await wait_until(waiting_to_drop, 60, "the drop waiting for its lock, archived")
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        # Its backend gives up at its lock_timeout.
        await wait_until(lambda: _no_drop_waiting(pg), 30, "the drop's backend gone")
    finally:
        await reader.execute("ROLLBACK")
        await reader.close()
    # Nothing half done: the partition whole, every run as it was, the views exact.
    assert await exists(pg, day3)
    assert await run_lines(pg) == lines_before
    assert await views(pg) == before_views
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"] is not None
    # The next prune (once the dead one's lease has run out: made to have run out) settles the
    # batch (not committed: cut back) and drops the day itself.
    await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
    done = simctl(
        ["prune", "--keep-days", "0", "--archive", str(archive), "--json"], admin_env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert day3 in json.loads(done.stdout)["partitions_dropped"]
    assert not await exists(pg, day3)
    assert await views(pg) == before_views
    clean(admin_env, "archive", "verify", str(archive))
    clean(admin_env, "reconcile", "--full")


async def _no_drop_waiting(pg: asyncpg.Connection) -> bool:
    return not await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%sim_runs_drop_day%' "
        "AND pid <> pg_backend_pid()"
    )


class Crash(Exception):
    """Stands for the process dying at that point."""


async def test_a_drop_committed_but_not_settled_in_the_archive_is_settled_by_the_next_prune(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from store import archive as archive_module
    from store.retention import Limits
    from store.retention import prune as do_prune

    h = await days_of_history(pg, runner, settings)
    archive = tmp_path / "archive"
    real_done = archive_module.ArchiveWriter.done

    def done(self: archive_module.ArchiveWriter) -> None:
        if (self.manifest["pending"] or {}).get("table") == "sim_runs":
            raise Crash  # the DROP committed, the manifest still says pending
        real_done(self)

    monkeypatch.setattr(archive_module.ArchiveWriter, "done", done)
    with pytest.raises(Crash):
        await do_prune(pg, 0, actor=ACTOR, limits=Limits(pause_ms=0), archive_dir=archive)
    monkeypatch.undo()
    assert not await exists(pg, part(h["first"]))
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"]["table"] == "sim_runs"
    await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
    clean(admin_env, "prune", "--keep-days", "0", "--archive", str(archive))
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"] is None
    runs = {n: e["rows"] for n, e in manifest["files"].items() if e["table"] == "sim_runs"}
    assert runs == {
        f"sim_runs/{h['first']:%Y-%m-%d}.lines.gz": 28 - 1,
        f"sim_runs/{h['first'] + timedelta(days=1):%Y-%m-%d}.lines.gz": 24,
    }
    clean(admin_env, "archive", "verify", str(archive))
    clean(admin_env, "reconcile", "--full")


async def test_an_archived_day_streams_in_chunks_and_a_prune_killed_between_them_is_cut_back(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from store import archive as archive_module
    from store import partitions
    from store.retention import Limits
    from store.retention import prune as do_prune

    h = await days_of_history(pg, runner, settings)
    day3 = part(h["first"])
    quiet_latest = await pg.fetchval(
        "SELECT id FROM sim_runs WHERE user_id = $1 ORDER BY scheduled_for DESC LIMIT 1",
        h["quiet"],
    )
    going = {
        i: line
        for i, line in (await run_lines(pg)).items()
        if i != quiet_latest
        and await pg.fetchval(f'SELECT count(*) FROM "{day3}" WHERE id = $1', i)  # noqa: S608
    }
    assert len(going) == 27
    before_views = await views(pg)
    archive = tmp_path / "archive"
    monkeypatch.setattr(partitions, "ARCHIVE_CHUNK_IDS", 5)  # the day's 28 runs in chunks
    real_append = archive_module.ArchiveWriter.append
    chunks: list[int] = []

    def dies_at_the_third(
        self: archive_module.ArchiveWriter, table: str, rows: list[tuple[int, str]]
    ) -> None:
        if table == "sim_runs":
            chunks.append(len(rows))
            if len(chunks) == 3:
                raise Crash  # the process dies between two chunks of the day's stream
        real_append(self, table, rows)

    monkeypatch.setattr(archive_module.ArchiveWriter, "append", dies_at_the_third)
    with pytest.raises(Crash):
        await do_prune(pg, 0, actor=ACTOR, limits=Limits(pause_ms=0), archive_dir=archive)
    # Two chunks appended, pending with exactly their ids; the partition whole, nothing moved.
    assert await exists(pg, day3)
    assert await views(pg) == before_views
    manifest = json.loads((archive / "manifest.json").read_text())
    pending = manifest["pending"]
    assert pending["table"] == "sim_runs"
    assert sum(b - a + 1 for a, b in pending["ids"]) == chunks[0] + chunks[1]
    day_file = f"sim_runs/{h['first']:%Y-%m-%d}.lines.gz"
    assert pending["files"][day_file]["after"]["rows"] == chunks[0] + chunks[1]
    assert (archive / day_file).stat().st_size == pending["files"][day_file]["after"]["bytes"]

    # The next prune cuts the file back (the rows are all still there) and streams the day
    # again, chunk by chunk, each line once.
    chunks.clear()

    def counts(self: archive_module.ArchiveWriter, table: str, rows: list[tuple[int, str]]) -> None:
        if table == "sim_runs":
            chunks.append(len(rows))
        real_append(self, table, rows)

    monkeypatch.setattr(archive_module.ArchiveWriter, "append", counts)
    await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
    report = await do_prune(pg, 0, actor=ACTOR, limits=Limits(pause_ms=0), archive_dir=archive)
    assert day3 in report.drops.dropped and not await exists(pg, day3)
    assert len([n for n in chunks if n]) > 3  # day -3 alone took several chunks
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"] is None and manifest["files"][day_file]["rows"] == 27
    with gzip.open(archive / day_file, "rt") as f:
        assert sorted(f.read().splitlines()) == sorted(going.values())
    assert await views(pg) == before_views
    clean(admin_env, "archive", "verify", str(archive))
    clean(admin_env, "reconcile", "--full")


async def test_housekeeping_makes_the_days_ahead_and_the_default_swallows_no_future_day(
    pg: asyncpg.Connection, settings: Settings
) -> None:
    ahead = [today() + timedelta(days=n) for n in range(2, 8)]
    for d in ahead:
        await pg.execute(f'DROP TABLE IF EXISTS "{part(d)}"')
    # With no partition for its day, a run is refused, not kept in the default (where it would
    # stop that day's partition from ever being attached).
    uid: int = await create_user(pg, ACTOR, "h@example.com", "", Decimal(1), True, 300, None)
    with pytest.raises(asyncpg.CheckViolationError, match="sim_runs_default_bound"):
        await pg.execute(
            "INSERT INTO sim_runs (user_id, scheduled_for) VALUES ($1, $2)",
            uid,
            midnight(ahead[-1]) + timedelta(hours=1),
        )
    # status says so while they end within two days.
    assert any("day partitions through" in w for w in (await overview(pg)).warnings)
    # Two schedulers at once: one makes them, the other finds them made.
    made = sum(await asyncio.gather(partitions_ahead(settings), partitions_ahead(settings)))
    assert made == len(ahead)
    assert not any("day partitions through" in w for w in (await overview(pg)).warnings)
    for d in ahead:
        assert await exists(pg, part(d)), d
    assert await partitions_ahead(settings) == 0
    slot = midnight(ahead[-1]) + timedelta(hours=1)
    await pg.execute("INSERT INTO sim_runs (user_id, scheduled_for) VALUES ($1, $2)", uid, slot)
    assert await pg.fetchval(
        "SELECT tableoid::regclass::text FROM sim_runs WHERE user_id = $1", uid
    ) == part(ahead[-1])
    # The slot rule holds in a day partition as in the default.
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg.execute("INSERT INTO sim_runs (user_id, scheduled_for) VALUES ($1, $2)", uid, slot)


async def test_a_partitions_lines_are_the_chains_lines(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings
) -> None:
    h = await days_of_history(pg, runner, settings)
    name = part(h["first"])
    ours = await pg.fetch(query("partition_rows", "partitions.sql"), 0, 2**62, name)
    chain = await run_lines(pg)
    assert len(ours) == 28
    assert all(chain[r["id"]] == r["line"] for r in ours)


async def test_a_populated_0014_database_migrates_keeping_every_run_and_the_slot_rule(
    settings: Settings, env: dict[str, str]
) -> None:
    name = create_database("template0")
    url = url_for(name)
    conn = await connect(url)
    pool = await create_pool(url, max_size=2)
    try:
        await migrate(conn, migrations()[:14])
        market, _ = await ensure_market(conn, settings)
        runner = BatchRunner(pool, settings, market)
        start = datetime.now(UTC) - timedelta(days=2)
        users = []
        for n in range(3):
            uid: int = await create_user(
                conn, ACTOR, f"m{n}@example.com", "", Decimal(5000), True, 300, "random"
            )
            users.append(uid)
            await fast_forward(
                conn, runner, uid, [start + timedelta(minutes=5 * i + n) for i in range(30)]
            )
        # Today's checkpoint needs 0016's column: added for it, and dropped again, so the
        # database is one whose checkpoint was taken before 0016 (no user's latest slot).
        await conn.execute("ALTER TABLE sim_checkpoint_users ADD COLUMN last_slot timestamptz")
        report = await checkpoint(conn, "test", slippage_bps=settings.sim_slippage_bps)
        assert report.state == "verified"
        await conn.execute("ALTER TABLE sim_checkpoint_users DROP COLUMN last_slot")
        before = [tuple(r) for r in await conn.fetch(RUNS)]
        assert len(before) == 90

        applied = await migrate(conn)
        assert applied.applied == ["0015", "0016"]
        assert (
            await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE oid = 'sim_runs'::regclass"
            )
            == "p"
        )
        after = [tuple(r) for r in await conn.fetch(RUNS)]
        assert after == before
        # The rows stayed where they were (the old table is the default partition), the days
        # ahead exist, and the ids go on from the old sequence.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM sim_runs WHERE tableoid = 'sim_runs_default'::regclass"
            )
            == 90
        )
        assert await exists(conn, part(today() + timedelta(days=7)))
        # The slot rule: a slot that ran is refused again, alone or in a run's whole write.
        old = before[0]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO sim_runs (user_id, scheduled_for) VALUES ($1, $2)", old[1], old[2]
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await fast_forward(conn, runner, old[1], [old[2]])
        assert await conn.fetchval("SELECT count(*) FROM sim_runs") == 90
        now = datetime.now(UTC)
        await fast_forward(conn, runner, users[0], [now - timedelta(seconds=5)])
        new_id = await conn.fetchval("SELECT max(id) FROM sim_runs")
        assert new_id > max(r[0] for r in before)
        # The chain taken before the migration still verifies, and so does the next checkpoint.
        report = await checkpoint(conn, "test", slippage_bps=settings.sim_slippage_bps)
        assert report.state == "verified", report.problems
        # ... and knows each user's latest slot, looked up once where the last did not.
        slots = await conn.fetch(
            "SELECT c.last_slot, (SELECT max(scheduled_for) FROM sim_runs r"
            "  WHERE r.user_id = c.user_id) AS latest"
            "  FROM sim_checkpoint_users c WHERE c.checkpoint_id = $1",
            report.id,
        )
        assert len(slots) == 3
        assert all(r["last_slot"] is not None and r["last_slot"] == r["latest"] for r in slots)
        their_env = {**env, "DATABASE_URL": url}
        clean(their_env, "reconcile", "--full")
    finally:
        await pool.close()
        await conn.close()
        drop_database(name)
