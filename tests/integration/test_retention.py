"""Retention (`simctl prune`, `simctl archive verify`) over real runs and real checkpoints: what
goes and what never does, the views and reconcile unchanged to the last decimal, a prune killed
with SIGKILL half way, two pruners at once, and archives checked against the chain."""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from simconfig import Settings
from store.history import checkpoint
from store.moves import adjust_holding, move_usd
from store.users import create_user
from store.withdrawals import request_withdrawal
from tests.support.keys import with_admin_key
from tests.support.procs import simctl, spawn, stop, stop_when_done, wait_until
from tests.support.runs import fast_forward
from workers.batch import BatchRunner

pytestmark = pytest.mark.timeout(300)

ACTOR = "sha256:test"
KEY = "retention-test-admin-key"
START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
ENGINE = {
    "trades": "SELECT count(*) FROM trades WHERE sim_run_id IS NOT NULL",
    "transactions": "SELECT count(*) FROM transactions WHERE sim_run_id IS NOT NULL",
    "sim_runs": "SELECT count(*) FROM sim_runs",
}


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    return with_admin_key(env, KEY)


async def make_history(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, users: int = 3, runs: int = 40
) -> list[int]:
    """`users` users with `runs` runs each, a verified checkpoint, then `runs // 4` more runs
    each (rows above the checkpoint's cut, which no prune may touch)."""
    uids = []
    for n in range(users):
        uid: int = await create_user(
            pg, ACTOR, f"ret{n}@example.com", "", Decimal("10000"), True, 300, "random"
        )
        uids.append(uid)
    for uid in uids:
        await fast_forward(pg, runner, uid, [START + i * timedelta(minutes=5) for i in range(runs)])
    # The platform's own rows beside the engine's (sim_run_id NULL): a credit, a holding moved in.
    await move_usd(pg, ACTOR, uids[0], Decimal("12.34567891"), "deposit", None)
    await adjust_holding(pg, ACTOR, uids[-1], "BTC", Decimal("0.01"), "moved in")
    report = await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
    assert report.state == "verified", report.problems
    later = START + runs * timedelta(minutes=5)
    for uid in uids:
        slots = [later + i * timedelta(minutes=5) for i in range(runs // 4)]
        await fast_forward(pg, runner, uid, slots)
    return uids


async def hourly_checkpoints(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, uids: list[int], n: int
) -> None:
    """`n` verified checkpoints a day after START, an hour apart, each after 4 runs a user."""
    later = START + timedelta(days=1)
    for k in range(n):
        for uid in uids:
            slots = [later + timedelta(hours=k) + i * timedelta(minutes=5) for i in range(4)]
            await fast_forward(pg, runner, uid, slots)
        report = await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
        assert report.state == "verified", report.problems


async def counts(pg: asyncpg.Connection) -> dict[str, int]:
    return {t: int(await pg.fetchval(sql)) for t, sql in ENGINE.items()}


async def views(pg: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    """Every user's ledger totals and P&L, exactly as the views give them."""
    totals = [tuple(r) for r in await pg.fetch("SELECT * FROM sim_ledger_totals ORDER BY user_id")]
    pnl = [tuple(r) for r in await pg.fetch("SELECT * FROM sim_pnl ORDER BY user_id")]
    return totals, pnl


async def state(pg: asyncpg.Connection) -> tuple[Any, ...]:
    """Everything a refused or dry prune must leave as it was."""
    history = await pg.fetchrow(
        "SELECT pruned_through, trades_floor, transactions_floor, runs_floor, keep_days "
        "FROM sim_history"
    )
    audits = await pg.fetchval("SELECT count(*) FROM admin_audit")
    users = await pg.fetchval("SELECT count(*) FROM sim_checkpoint_users")
    return (tuple(history or ()), audits, users, tuple((await counts(pg)).values()))


def reconcile_clean(env: dict[str, str]) -> None:
    for args in (["reconcile"], ["reconcile", "--full"]):
        done = simctl(args, env, timeout=120)
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])


def prune(env: dict[str, str], *args: str) -> Any:
    return simctl(["prune", *args], env, timeout=120)


async def test_refused_without_a_verified_checkpoint_covering_the_window(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    uid: int = await create_user(pg, ACTOR, "a@example.com", "", Decimal(500), True, 300, None)
    await fast_forward(pg, runner, uid, [START + i * timedelta(minutes=5) for i in range(5)])
    before = await state(pg)
    done = prune(admin_env, "--keep-days", "0")
    assert done.returncode == 1
    assert "no verified checkpoint covers the window: there is none yet" in done.stderr
    assert await state(pg) == before
    # One now, but younger than the window: still refused, naming it.
    report = await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
    assert report.state == "verified"
    before = await state(pg)
    done = prune(admin_env, "--keep-days", "3")
    assert done.returncode == 1
    assert f"newest: {report.id}" in done.stderr and "3 days ago" in done.stderr
    assert await state(pg) == before


async def test_dry_run_says_what_would_go_and_changes_nothing(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, env: dict[str, str]
) -> None:
    await make_history(pg, runner, settings)
    cut = await pg.fetchrow("SELECT * FROM sim_checkpoints WHERE state = 'verified'")
    assert cut is not None
    before = await state(pg)
    done = prune(env, "--keep-days", "0", "--dry-run", "--json")  # no key needed to look
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["checkpoint"]["id"] == cut["id"] and shown["refused"] == []
    going = {
        "trades": await pg.fetchval(
            "SELECT count(*) FROM trades WHERE sim_run_id IS NOT NULL AND id <= $1",
            cut["trades_cut"],
        ),
        "transactions": await pg.fetchval(
            "SELECT count(*) FROM transactions WHERE sim_run_id IS NOT NULL AND id <= $1",
            cut["transactions_cut"],
        ),
        # Every run up to the cut but each user's latest (all users ran after the cut).
        "sim_runs": await pg.fetchval(
            "SELECT count(*) FROM sim_runs WHERE id <= $1", cut["runs_cut"]
        ),
    }
    assert shown["rows"] == going and all(going.values())
    assert shown["bytes_estimate_total"] > 0
    text = prune(env, "--keep-days", "0", "--dry-run")
    assert text.returncode == 0 and "would go" in text.stdout and "freed" in text.stdout
    assert await state(pg) == before
    # The prune itself is an admin act.
    refused = prune(env, "--keep-days", "0")
    assert refused.returncode == 1 and "needs an admin key" in refused.stderr
    assert await state(pg) == before


async def test_prune_keeps_views_and_reconcile_exact_and_never_touches_what_it_must_not(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    uids = await make_history(pg, runner, settings)
    # A user whose only runs are below the cut: its latest run must stay.
    quiet: int = await create_user(
        pg, ACTOR, "quiet@example.com", "", Decimal(900), True, 300, None
    )
    await fast_forward(pg, runner, quiet, [START + i * timedelta(minutes=5) for i in range(3)])
    report = await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
    assert report.state == "verified"
    # The window reaches back 5 days: the newer checkpoint is not old enough, the first is.
    first, second = await pg.fetch(
        "SELECT id, cut_at, trades_cut, transactions_cut, runs_cut FROM sim_checkpoints "
        "WHERE state = 'verified' ORDER BY id"
    )
    await pg.execute(
        "UPDATE sim_checkpoints SET cut_at = cut_at - interval '10 days' WHERE id = $1", first["id"]
    )
    # Platform state that must survive: a pending withdrawal (inside the window), side rows.
    await adjust_holding(pg, ACTOR, uids[2], "ETH", Decimal("2"), "for the withdrawal")
    wid = await request_withdrawal(pg, ACTOR, uids[2], "ETH", Decimal("1"), "0xabc")
    side = await pg.fetch(
        "SELECT id, amount FROM transactions WHERE sim_run_id IS NULL ORDER BY id"
    )
    latest_runs = await pg.fetch(
        "SELECT DISTINCT ON (user_id) id, user_id FROM sim_runs ORDER BY user_id, scheduled_for DESC"
    )
    before_views = await views(pg)
    before = await counts(pg)
    reconcile_clean(admin_env)

    done = prune(admin_env, "--keep-days", "5", "--json")
    assert done.returncode == 0, done.stderr
    removed = json.loads(done.stdout)
    assert removed["checkpoint_id"] == first["id"] and removed["complete"]
    after = await counts(pg)
    assert {t: before[t] - after[t] for t in before} == removed["rows"]
    assert all(removed["rows"].values())
    # Gone: every engine row at or below P's cuts but the latest runs; kept: everything else.
    assert not await pg.fetchval(
        "SELECT count(*) FROM trades WHERE sim_run_id IS NOT NULL AND id <= $1", first["trades_cut"]
    )
    assert await pg.fetchval(
        "SELECT count(*) FROM trades WHERE id > $1", first["trades_cut"]
    ) == await pg.fetchval("SELECT count(*) FROM trades WHERE sim_run_id IS NOT NULL")
    assert side == await pg.fetch(
        "SELECT id, amount FROM transactions WHERE sim_run_id IS NULL ORDER BY id"
    )
    assert await pg.fetchval("SELECT status FROM withdrawals WHERE id = $1", wid) == "pending"
    for r in latest_runs:
        assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE id = $1", r["id"]) == 1
    # The views, to the last decimal, for every user; reconcile (from the checkpoint and --full).
    assert await views(pg) == before_views
    reconcile_clean(admin_env)
    # Retention's own deletes are not in the change log; the prune is audited.
    assert await pg.fetchval("SELECT count(*) FROM sim_history_changes") == 0
    audit = await pg.fetchrow(
        "SELECT admin_key, details FROM admin_audit WHERE action = 'prune' ORDER BY id DESC LIMIT 1"
    )
    assert audit is not None and audit["admin_key"].startswith("sha256:")
    assert KEY not in json.dumps(audit["details"])
    assert audit["details"]["keep_days"] == 5 and audit["details"]["rows"] == removed["rows"]
    assert audit["details"]["checkpoint_id"] == first["id"]
    history = await pg.fetchrow("SELECT * FROM sim_history")
    assert history is not None and history["pruned_through"] == first["id"]
    assert history["runs_floor"] == first["runs_cut"] and history["keep_days"] == 5

    # A later prune of the whole covered history: the newer checkpoint's totals too.
    await pg.execute("UPDATE withdrawals SET status = 'failed' WHERE id = $1", wid)
    done = prune(admin_env, "--keep-days", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checkpoint_id"] == second["id"]
    # The quiet user ran only below the cut: its latest run stays, the others went.
    assert [
        r["id"] for r in await pg.fetch("SELECT id FROM sim_runs WHERE user_id = $1", quiet)
    ] == [r["id"] for r in latest_runs if r["user_id"] == quiet]
    assert await views(pg) == before_views
    reconcile_clean(admin_env)
    assert await pg.fetchval("SELECT count(*) FROM sim_history_changes") == 0


async def test_an_open_withdrawal_older_than_the_window_refuses_it(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    uids = await make_history(pg, runner, settings, users=1, runs=8)
    await adjust_holding(pg, ACTOR, uids[0], "ETH", Decimal("2"), "for the withdrawal")
    wid = await request_withdrawal(pg, ACTOR, uids[0], "ETH", Decimal("1"), "0xabc")
    await pg.execute(
        "UPDATE withdrawals SET created_at = now() - interval '3 days' WHERE id = $1", wid
    )
    await pg.execute("UPDATE sim_checkpoints SET cut_at = cut_at - interval '10 days'")
    before = await state(pg)
    done = prune(admin_env, "--keep-days", "2")
    assert done.returncode == 1
    assert f"withdrawal {wid} (user {uids[0]}) has been pending since" in done.stderr
    assert "shorter than the platform needs" in done.stderr
    assert await state(pg) == before
    # A window that reaches back to it is allowed.
    done = prune(admin_env, "--keep-days", "4")
    assert done.returncode == 0, done.stderr


async def test_a_prune_killed_half_way_leaves_views_exact_and_the_next_one_finishes(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await make_history(pg, runner, settings, users=3, runs=40)
    before_views = await views(pg)
    before = await counts(pg)
    archive = tmp_path / "archive"
    slow = {**admin_env, "SIM_PRUNE_BATCH": "7", "SIM_PRUNE_PAUSE_MS": "200"}
    proc = spawn(["prune", "--keep-days", "0", "--archive", str(archive)], slow)

    async def some_deleted() -> bool:
        n = await pg.fetchval(ENGINE["trades"])
        return bool(n < before["trades"] - 7)

    await wait_until(some_deleted, 60, "the first batches to commit")
    assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
    # Half done: rows are left, yet every view reads exactly what it read before.
    assert (await counts(pg))["trades"] > 0
    assert await views(pg) == before_views
    reconcile_clean(admin_env)
    # The dead prune's lease holds the next one off (named) until it runs out.
    held = await pg.fetchrow("SELECT lease_holder, lease_until FROM sim_history")
    assert held is not None and held["lease_holder"].startswith("prune on")
    done = prune(admin_env, "--keep-days", "0", "--archive", str(archive))
    assert done.returncode == 1 and held["lease_holder"] in done.stderr
    assert "holds the history lease until" in done.stderr
    # Its 60 s run out (made to have run out rather than waited for).
    await pg.execute("UPDATE sim_history SET lease_until = now() - interval '1 second'")
    done = prune(admin_env, "--keep-days", "0", "--archive", str(archive), "--json")
    assert done.returncode == 0, done.stderr
    after = await counts(pg)
    assert after["trades"] == await pg.fetchval(
        "SELECT count(*) FROM trades t, sim_history h WHERE t.sim_run_id IS NOT NULL "
        "AND t.id > h.trades_floor"
    )
    assert await views(pg) == before_views
    reconcile_clean(admin_env)
    assert await pg.fetchval("SELECT count(*) FROM sim_history_changes") == 0
    # Every deleted row is in the archive, once (verify refuses a row twice).
    manifest = json.loads((archive / "manifest.json").read_text())
    archived = {t: 0 for t in before}
    for entry in manifest["files"].values():
        archived[entry["table"]] += entry["rows"]
    assert archived == {t: before[t] - after[t] for t in before}
    done = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert done.returncode == 0, done.stderr


async def test_two_pruners_at_once_one_exits_naming_the_holder(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    await make_history(pg, runner, settings, users=2, runs=30)
    slow = {**admin_env, "SIM_PRUNE_BATCH": "4", "SIM_PRUNE_PAUSE_MS": "200"}
    first = spawn(["prune", "--keep-days", "0"], slow)

    async def holding() -> bool:
        return bool(await pg.fetchval("SELECT lease_holder IS NOT NULL FROM sim_history"))

    await wait_until(holding, 60, "the first pruner to take the lease")
    second = prune(admin_env, "--keep-days", "0")
    assert second.returncode == 1
    assert "holds the history lease until" in second.stderr and "prune on" in second.stderr
    assert stop_when_done(first, 120) == 0
    assert await pg.fetchval("SELECT lease_holder FROM sim_history") is None
    reconcile_clean(admin_env)


async def test_archive_verify_proves_the_files_and_names_a_bad_one(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await make_history(pg, runner, settings, users=2, runs=30)
    archive = tmp_path / "archive"
    done = prune(admin_env, "--keep-days", "0", "--archive", str(archive), "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((archive / "manifest.json").read_text())
    assert {e["table"] for e in manifest["files"].values()} == {
        "trades",
        "transactions",
        "sim_runs",
    }
    assert manifest["checkpoints"]
    audit = await pg.fetchval(
        "SELECT details->>'archive_sha256' FROM admin_audit WHERE action = 'prune'"
    )
    assert audit == json.loads(done.stdout)["archive_sha256"]
    ok = simctl(["archive", "verify", str(archive), "--json"], admin_env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["checkpoints_rederived"] == [
        int(k) for k in manifest["checkpoints"]
    ]

    name = sorted(n for n in manifest["files"] if n.startswith("trades/"))[0]
    path = archive / name
    original = path.read_bytes()
    # A line changed, the manifest made to agree: only re-deriving the chain can tell.
    lines = gzip.decompress(original).decode().splitlines()
    fields = lines[0].split("|")
    fields[4] = "1.00000000" if fields[4] != "1.00000000" else "2.00000000"  # amount
    lines[0] = "|".join(fields)
    forged = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
    path.write_bytes(forged)
    forged_manifest = json.loads(json.dumps(manifest))
    forged_manifest["files"][name].update(
        bytes=len(forged), sha256=hashlib.sha256(forged).hexdigest()
    )
    (archive / "manifest.json").write_text(json.dumps(forged_manifest))
    bad = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert bad.returncode == 1 and str(path) in bad.stderr and "does not re-derive" in bad.stderr
    # A file altered behind the manifest's back.
    (archive / "manifest.json").write_text(json.dumps(manifest))
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    bad = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert bad.returncode == 1 and str(path) in bad.stderr and "SHA-256" in bad.stderr
    # A file missing.
    path.unlink()
    bad = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert bad.returncode == 1 and f"{path}: missing" in bad.stderr
    path.write_bytes(original)
    assert simctl(["archive", "verify", str(archive)], admin_env, timeout=120).returncode == 0


async def test_each_delete_walks_the_primary_key(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings
) -> None:
    from store.sqlfiles import query

    await make_history(pg, runner, settings, users=1, runs=8)
    for table in ("trades", "transactions", "sim_runs"):
        async with pg.transaction():
            await pg.execute("SET LOCAL enable_seqscan = off")
            for name in (
                f"prune_next_{table}",
                f"prune_delete_{table}",
                f"prune_delete_archived_{table}",
            ):
                sql = query(name, "retention.sql")
                args: tuple[Any, ...] = (0, 100)
                if name.startswith("prune_next"):
                    args = (0, 100, 10)
                elif "archived" in name:
                    args = (0, 100, [1, 2, 3])
                plan = await pg.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
                text = json.dumps(plan)
                # sim_runs is partitioned (0015): each partition has its own primary key, and
                # these runs (slots of June) are in the default partition.
                pkey = "sim_runs_default_pkey" if table == "sim_runs" else f"{table}_pkey"
                assert f'"Index Name": "{pkey}"' in text, (name, text)


class Crash(Exception):
    """Stands for the process dying at that point."""


@pytest.mark.parametrize("when", ["before_commit", "after_commit"])
async def test_an_archived_batch_cut_short_is_settled_by_the_next_prune(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The two places an archived batch can die: lines appended but the delete not committed
    (they must go again, or the rows would be archived twice), and the delete committed but the
    manifest not settled (they must stay, or deleted rows would be in no file)."""
    from store import archive as archive_module
    from store.retention import Limits
    from store.retention import prune as do_prune

    await make_history(pg, runner, settings, users=2, runs=20)
    before = await counts(pg)
    archive = tmp_path / "archive"
    real_begin, real_done = archive_module.ArchiveWriter.begin, archive_module.ArchiveWriter.done
    calls = 0

    def begin(self: archive_module.ArchiveWriter, table: str, rows: Any) -> None:
        nonlocal calls
        real_begin(self, table, rows)
        calls += 1
        if when == "before_commit" and calls == 2:
            raise Crash  # inside the batch's transaction: its delete rolls back

    def done(self: archive_module.ArchiveWriter) -> None:
        if when == "after_commit" and calls == 2:
            raise Crash  # the delete committed, the manifest still says pending
        real_done(self)

    monkeypatch.setattr(archive_module.ArchiveWriter, "begin", begin)
    monkeypatch.setattr(archive_module.ArchiveWriter, "done", done)
    with pytest.raises(Crash):
        await do_prune(pg, 0, actor=ACTOR, limits=Limits(batch=6, pause_ms=0), archive_dir=archive)
    monkeypatch.undo()
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"] is not None
    pending_ids = [i for a, b in manifest["pending"]["ids"] for i in range(a, b + 1)]
    left = await pg.fetchval(
        "SELECT count(*) FROM trades WHERE id = ANY($1::bigint[])", pending_ids
    )
    assert left == (len(pending_ids) if when == "before_commit" else 0)

    done_run = prune(admin_env, "--keep-days", "0", "--archive", str(archive))
    assert done_run.returncode == 0, done_run.stderr
    after = await counts(pg)
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"] is None
    archived = {t: 0 for t in before}
    for entry in manifest["files"].values():
        archived[entry["table"]] += entry["rows"]
    assert archived == {t: before[t] - after[t] for t in before}
    verified = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert verified.returncode == 0, verified.stderr


async def test_an_archive_stays_whole_when_a_run_it_kept_goes_into_the_next_one(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A user's latest run stays when its window is archived; deleted by a later prune into
    another folder, the first folder must still re-derive its window (it kept a copy)."""
    five = timedelta(minutes=5)
    active: int = await create_user(pg, ACTOR, "on@example.com", "", Decimal(5000), True, 300, None)
    quiet: int = await create_user(pg, ACTOR, "off@example.com", "", Decimal(5000), True, 300, None)
    for uid in (active, quiet):
        await fast_forward(pg, runner, uid, [START + i * five for i in range(12)])
    assert (
        await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
    ).state == "verified"
    await fast_forward(pg, runner, active, [START + i * five for i in range(12, 16)])
    kept = await pg.fetchval("SELECT max(id) FROM sim_runs WHERE user_id = $1", quiet)
    first, second = tmp_path / "2026-06", tmp_path / "2026-07"
    done = prune(admin_env, "--keep-days", "0", "--archive", str(first))
    assert done.returncode == 0, done.stderr
    assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE id = $1", kept) == 1
    # The quiet user runs again: its old latest run is no longer needed, and goes next time.
    await fast_forward(pg, runner, quiet, [START + i * five for i in range(12, 14)])
    assert (
        await checkpoint(pg, "test", slippage_bps=settings.sim_slippage_bps)
    ).state == "verified"
    done = prune(admin_env, "--keep-days", "0", "--archive", str(second))
    assert done.returncode == 0, done.stderr
    assert await pg.fetchval("SELECT count(*) FROM sim_runs WHERE id = $1", kept) == 0
    for folder in (first, second):
        ok = simctl(["archive", "verify", str(folder), "--json"], admin_env, timeout=120)
        assert ok.returncode == 0, (folder, ok.stderr)
        assert json.loads(ok.stdout)["checkpoints_rederived"]


async def test_p_older_than_the_kept_totals_gets_its_totals_rebuilt_from_verified_windows(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    """Checkpoints keep per-user totals for the newest two only; a window of days reaches an
    older one, whose totals the prune rebuilds from the windows it verifies."""
    uids = await make_history(pg, runner, settings, users=2, runs=16)
    await hourly_checkpoints(pg, runner, settings, uids, 2)
    first = await pg.fetchval("SELECT min(id) FROM sim_checkpoints")
    await pg.execute(
        "UPDATE sim_checkpoints SET cut_at = cut_at - interval '10 days' WHERE id = $1", first
    )
    forgotten = "SELECT count(*) FROM sim_checkpoint_users WHERE checkpoint_id = $1"
    assert await pg.fetchval(forgotten, first) == 0
    before_views = await views(pg)
    done = prune(admin_env, "--keep-days", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checkpoint_id"] == first
    assert await pg.fetchval(forgotten, first) == len(uids)
    assert await views(pg) == before_views
    reconcile_clean(admin_env)


async def test_a_changed_row_in_a_window_refuses_the_prune_and_nothing_goes(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    await make_history(pg, runner, settings, users=2, runs=16)
    row = await pg.fetchval("SELECT min(id) FROM trades WHERE sim_run_id IS NOT NULL")
    await pg.execute("UPDATE trades SET fee_usd = fee_usd + 1 WHERE id = $1", row)
    before = await state(pg)
    done = prune(admin_env, "--keep-days", "0")
    assert done.returncode == 1
    assert "do not verify against their checkpoints" in done.stderr
    assert f"trades row(s) {row}" in done.stderr
    assert await state(pg) == before


async def test_the_run_time_bound_stops_a_prune_and_the_next_goes_on(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    await make_history(pg, runner, settings, users=2, runs=30)
    before_views = await views(pg)
    bounded = {
        **admin_env,
        "SIM_PRUNE_BATCH": "3",
        "SIM_PRUNE_PAUSE_MS": "400",
        "SIM_PRUNE_MAX_S": "1",
    }
    done = prune(bounded, "--keep-days", "0", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["complete"] is False
    assert await pg.fetchval(
        "SELECT count(*) FROM trades t, sim_history h WHERE t.sim_run_id IS NOT NULL "
        "AND t.id <= h.trades_floor"
    )
    assert await views(pg) == before_views
    assert await pg.fetchval("SELECT lease_holder FROM sim_history") is None
    done = prune(admin_env, "--keep-days", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"] is True
    assert not await pg.fetchval(
        "SELECT count(*) FROM trades t, sim_history h WHERE t.sim_run_id IS NOT NULL "
        "AND t.id <= h.trades_floor"
    )
    assert await views(pg) == before_views
    reconcile_clean(admin_env)


async def test_ids_across_a_chunk_boundary_checkpoint_prune_and_verify(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """History works a range of 65,536 ids at a time; a block of 4,096 ids must never be split
    between two ranges (ids here run across 65,536)."""
    for table in ("trades", "transactions", "sim_runs"):
        await pg.execute(f"ALTER TABLE {table} ALTER COLUMN id RESTART WITH 65530")
    await make_history(pg, runner, settings, users=2, runs=16)
    assert await pg.fetchval("SELECT min(id) < 65536 AND max(id) > 65536 FROM trades")
    before_views = await views(pg)
    archive = tmp_path / "archive"
    done = prune(admin_env, "--keep-days", "0", "--archive", str(archive))
    assert done.returncode == 0, done.stderr
    assert await views(pg) == before_views
    verified = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert verified.returncode == 0, verified.stderr
    reconcile_clean(admin_env)


async def going_lines(pg: asyncpg.Connection) -> dict[str, list[str]]:
    """The canonical lines of every row a prune through the latest checkpoint must remove, per
    archive file (table/day), in id order: the engine's rows at or below the checkpoint's cuts,
    the runs among them that are not their user's latest."""
    from store.archive import line_day
    from store.sqlfiles import query

    cut = await pg.fetchrow(
        "SELECT trades_cut, transactions_cut, runs_cut FROM sim_checkpoints "
        "WHERE state = 'verified' ORDER BY id DESC LIMIT 1"
    )
    assert cut is not None
    latest = {
        r["id"]
        for r in await pg.fetch(
            "SELECT DISTINCT ON (user_id) id FROM sim_runs ORDER BY user_id, scheduled_for DESC"
        )
    }
    files: dict[str, list[tuple[int, str]]] = {}
    for table, hi in (
        ("trades", cut["trades_cut"]),
        ("transactions", cut["transactions_cut"]),
        ("sim_runs", cut["runs_cut"]),
    ):
        for r in await pg.fetch(query(f"rows_{table}", "history.sql"), 0, hi):
            if table == "sim_runs" and r["id"] in latest:
                continue
            name = f"{table}/{line_day(table, r['line'])}.lines.gz"
            files.setdefault(name, []).append((r["id"], r["line"]))
    return {name: [line for _, line in sorted(rows)] for name, rows in files.items()}


def archived_lines(archive: Path) -> dict[str, list[str]]:
    from store.archive import read_lines

    manifest = json.loads((archive / "manifest.json").read_text())
    return {name: read_lines(archive / name) for name in manifest["files"]}


async def test_a_tiny_time_budget_takes_many_small_batches_and_removes_exactly_the_same_rows(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Every batch over a 1 ms budget: each next one is cut to the floor of 10 rows (2x that at
    most after a lucky one), so the prune takes many small transactions, and removes and
    archives exactly the rows, and the lines, the checkpoint stands for."""
    await make_history(pg, runner, settings, users=3, runs=40)
    before_views = await views(pg)
    before = await counts(pg)
    expected = await going_lines(pg)
    going = {t: sum(len(v) for k, v in expected.items() if k.startswith(t + "/")) for t in before}
    archive = tmp_path / "archive"
    tiny = {
        **admin_env,
        "SIM_PRUNE_BATCH_MS": "1",
        # The cap too: a batch quicker than the 1 ms budget grows the next (up to 2x), so on a
        # fast box the sizes would drift up from 10; 40 bounds them whatever the clock.
        "SIM_PRUNE_BATCH": "40",
        "SIM_PRUNE_DUTY": "1",
        "SIM_PRUNE_PAUSE_MS": "0",
    }
    done = prune(tiny, "--keep-days", "0", "--archive", str(archive), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows"] == going
    assert {t: before[t] - n for t, n in (await counts(pg)).items()} == going
    assert report["batch_rows"]["max"] <= 40
    # With the default budget the same history goes in a handful of batches (10, 20, 40, ...
    # per table); here at least one per 40 rows.
    assert report["batches"] >= sum(going.values()) // 40
    assert report["longest_batch_s"] <= report["longest_transaction_s"]
    # The archive holds exactly those lines, file by file, in id order (its files' gzip members
    # follow the batches; what they hold does not).
    got = archived_lines(archive)
    assert got == expected
    for name, lines in expected.items():
        digest = hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
        assert hashlib.sha256(gzip.decompress((archive / name).read_bytes())).hexdigest() == digest
    verified = simctl(["archive", "verify", str(archive)], admin_env, timeout=120)
    assert verified.returncode == 0, verified.stderr
    assert await views(pg) == before_views
    reconcile_clean(admin_env)


@pytest.mark.parametrize(("duty", "factor"), [("0.25", 3.0), ("1", 0.0)])
async def test_the_pause_between_batches_keeps_the_prune_to_its_duty(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    admin_env: dict[str, str],
    duty: str,
    factor: float,
) -> None:
    """SIM_PRUNE_DUTY d: after a batch that worked t the prune pauses t x (1 - d) / d, so the
    time it paused is at least that multiple of the time its batches worked (its own counters);
    d = 1 with no least pause: it never pauses."""
    await make_history(pg, runner, settings, users=2, runs=20)
    paced = {**admin_env, "SIM_PRUNE_BATCH": "5", "SIM_PRUNE_DUTY": duty, "SIM_PRUNE_PAUSE_MS": "0"}
    done = prune(paced, "--keep-days", "0", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["complete"] is True and report["batches"] >= 10
    assert report["working_s"] > 0
    if factor:
        # asyncio may wake a sleep up to its clock's resolution early: a millisecond a batch.
        assert report["paused_s"] >= factor * report["working_s"] - 0.001 * report["batches"]
    else:
        assert report["paused_s"] == 0
    assert report["seconds"] >= report["working_s"] + report["paused_s"]


async def test_an_archived_batch_whose_rows_differ_from_its_lines_deletes_nothing(
    pg: asyncpg.Connection,
    runner: BatchRunner,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The archive's lines are read before the delete's transaction opens; the delete proves
    it removed those very rows (count and digest of their lines). A line that differs (a row
    changed in between) rolls the batch back, cuts its lines out of the archive, and refuses."""
    from store import retention
    from store.errors import Refused
    from store.retention import Limits
    from store.retention import prune as do_prune

    await make_history(pg, runner, settings, users=2, runs=12)
    before = await counts(pg)
    expected = await going_lines(pg)
    victim = await pg.fetchval("SELECT min(id) FROM trades WHERE sim_run_id IS NOT NULL")
    real_going = retention._going

    def going(table: str) -> str:
        sql = real_going(table)
        if table != "trades":
            return sql
        return (
            "SELECT id, user_id, CASE WHEN id = "  # noqa: S608 (an int from the database)
            f"{int(victim)} THEN line || 'x' ELSE line END AS line FROM ({sql}) o"
        )

    monkeypatch.setattr(retention, "_going", going)
    archive = tmp_path / "archive"
    with pytest.raises(Refused, match=r"a row changed since the prune verified it"):
        await do_prune(pg, 0, actor=ACTOR, limits=Limits(duty=1, pause_ms=0), archive_dir=archive)
    monkeypatch.undo()
    assert (await counts(pg))["trades"] == before["trades"]
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["pending"] is None
    assert not any(n.startswith("trades/") for n in manifest["files"])
    # The next prune (the lease given back) archives and deletes them, exactly.
    report = await do_prune(pg, 0, actor=ACTOR, archive_dir=archive, limits=Limits(pause_ms=0))
    assert report.complete and report.rows["trades"] > 0
    assert archived_lines(archive) == expected


async def test_latest_slots_stay_exact_through_prunes_from_a_checkpoint_taken_before_0016(
    pg: asyncpg.Connection, runner: BatchRunner, settings: Settings, admin_env: dict[str, str]
) -> None:
    """A database upgraded to 0016 whose first checkpoint knows no slot, and a prune through
    it: the walk of the next prune starts from it, every later checkpoint's slots are each
    user's latest run up to its cut, and `reconcile --full` compares them (a moved one is
    named)."""
    uids = await make_history(pg, runner, settings, users=2, runs=16)
    first = await pg.fetchval("SELECT min(id) FROM sim_checkpoints")
    await pg.execute("UPDATE sim_checkpoint_users SET last_slot = NULL")  # taken before 0016
    await pg.execute(
        "UPDATE sim_checkpoints SET cut_at = cut_at - interval '10 days' WHERE id = $1", first
    )
    done = prune(admin_env, "--keep-days", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checkpoint_id"] == first
    # Three more checkpoints (only the newest two keep their totals: the next prune rebuilds
    # the first of them from the walk that starts at the pruned, slotless one).
    await hourly_checkpoints(pg, runner, settings, uids, 3)
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM sim_checkpoints ORDER BY id")]
    target = ids[1]
    cut = await pg.fetchval("SELECT runs_cut FROM sim_checkpoints WHERE id = $1", target)
    expected = {
        r["user_id"]: r["slot"]
        for r in await pg.fetch(
            "SELECT user_id, max(scheduled_for) AS slot FROM sim_runs WHERE id <= $1"
            " GROUP BY user_id",
            cut,
        )
    }
    await pg.execute(
        "UPDATE sim_checkpoints SET cut_at = cut_at - interval '8 days' WHERE id = $1", target
    )
    done = prune(admin_env, "--keep-days", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checkpoint_id"] == target
    rebuilt = {
        r["user_id"]: r["last_slot"]
        for r in await pg.fetch(
            "SELECT user_id, last_slot FROM sim_checkpoint_users WHERE checkpoint_id = $1", target
        )
    }
    assert rebuilt == expected and len(expected) == len(uids)
    newest = await pg.fetch(
        "SELECT user_id, last_slot, (SELECT max(scheduled_for) FROM sim_runs r"
        "  WHERE r.user_id = c.user_id AND r.id <= k.runs_cut) AS ran"
        "  FROM sim_checkpoint_users c JOIN sim_checkpoints k ON k.id = c.checkpoint_id"
        " WHERE c.checkpoint_id = $1",
        ids[-1],
    )
    assert len(newest) == len(uids) and all(r["last_slot"] == r["ran"] for r in newest)
    reconcile_clean(admin_env)
    await pg.execute(
        "UPDATE sim_checkpoint_users SET last_slot = last_slot - interval '1 hour'"
        " WHERE checkpoint_id = $1 AND user_id = $2",
        ids[-1],
        uids[0],
    )
    full = simctl(["reconcile", "--full"], admin_env, timeout=120)
    assert full.returncode == 1
    assert (
        f"checkpoint {ids[-1]}: user {uids[0]}: stored totals differ from its rows': last_slot"
        in full.stdout
    )
