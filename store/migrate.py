"""The migration runner: checksummed, one transaction per migration, safe to run concurrently,
every statement under a `lock_timeout` and retried a bounded number of times.

Three starting points: an empty database (every migration in order), one simengine manages
(`schema_migrations`: the pending ones), and one that holds the platform's tables without
simengine (restored from the platform's backup): that one is adopted (store/adopt.py).

`walk` is the one list of steps for all three: `--plan` prints it, `migrate` runs it. The walk
reads only (and refuses a database it cannot finish on, e.g. one holding an engine table that
no migration of simengine created); `migrate` takes it inside the transaction that runs its
steps, under a lock on `schema_migrations` that a role without write privileges on it cannot
take, so an adoption's counts of legacy rows are those its rules are written from. Every
migration runs in that one transaction unless an adoption's index builds must run between
(outside any transaction): a migrate that fails changes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from store import adopt
from store.adopt import FINISH, IN_TRANSACTION, INDEX, LOCKED, MIGRATION, VALIDATE, LegacyRows, Step
from store.db import (
    Conn,
    is_check_violation,
    is_database_error,
    is_lock_timeout,
    retrying_lock_timeouts,
)
from store.errors import MigrationError, first_line
from store.sqlfiles import Migration, migrate_query, migrations

T = TypeVar("T")

_CREATES = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:UNLOGGED\s+)?(?:MATERIALIZED\s+)?"
    r"(?:TABLE|VIEW|SEQUENCE)\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)",
    re.IGNORECASE,
)


@dataclass(slots=True)
class MigrateReport:
    applied: list[str]
    already: list[str]
    adopted_users: int | None = None
    # Longest time the adoption held a lock on `users` that blocks the platform's writes.
    users_lock_ms: float | None = None
    legacy: list[LegacyRows] = field(default_factory=list)
    # --plan: the statements it would run, in order, with phase headers.
    plan: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LockPolicy:
    """How long one statement may wait for a lock, and how many times it is tried."""

    timeout_ms: int = 3000
    attempts: int = 5


@dataclass(slots=True)
class Walk:
    """What migrate does on this database, in order."""

    steps: list[Step] = field(default_factory=list)
    # Versions an adoption stands in for, versions applied before.
    covers: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    legacy: list[LegacyRows] = field(default_factory=list)
    adopting: bool = False


async def _state(conn: Conn) -> str:
    """'managed' (schema_migrations has rows), 'legacy' (platform tables, no simengine) or 'empty'."""
    if await conn.fetchval(migrate_query("ledger_exists")) and await conn.fetchval(
        migrate_query("ledger_has_rows")
    ):
        return "managed"
    present = await conn.fetchval(
        migrate_query("platform_tables_present"), sorted(adopt.PLATFORM_NAMES)
    )
    return "legacy" if present else "empty"


async def _applied(conn: Conn, todo: list[Migration]) -> dict[str, Any]:
    """The ledger's rows; MigrationError for one whose file is gone or changed since."""
    applied = {r["version"]: r for r in await conn.fetch(migrate_query("applied_migrations"))}
    known = {m.version: m for m in todo}
    for version in sorted(set(applied) - set(known)):
        raise MigrationError(f"migration {version} is applied but its file is missing")
    for version, row in sorted(applied.items()):
        mig = known[version]
        if row["checksum"] != mig.checksum:
            raise MigrationError(
                f"migration {mig.version}_{mig.name} changed after it was applied "
                "(checksum differs); add a new migration instead"
            )
    return applied


async def walk(conn: Conn, todo: list[Migration]) -> Walk:
    """Every step migrate takes on this database, in order; reads only. MigrationError when it
    would refuse (an incompatible platform column, an applied migration changed or gone)."""
    out = Walk()
    state = await _state(conn)
    if state == "legacy":
        adoption = await adopt.steps(conn, await adopt.read_catalogue(conn), todo)
        out.steps, out.legacy, out.covers = adoption.steps, adoption.legacy, adoption.covers
        out.adopting = True
        pending = [m for m in todo if m.version not in adoption.covers]
    elif state == "managed":
        applied = await _applied(conn, todo)
        out.already = [m.version for m in todo if m.version in applied]
        pending = [m for m in todo if m.version not in applied]
        if await conn.fetchval(migrate_query("adoption_exists")) and await conn.fetchval(
            migrate_query("adoption_incomplete")
        ):
            out.steps = adopt.finishing_steps(await adopt.read_catalogue(conn), todo)
    else:
        pending = list(todo)
    if state != "managed":
        await _refuse_foreign_engine_objects(conn, todo)
    out.steps += [
        Step(MIGRATION, f"migration {m.version}_{m.name}", m.sql, (m.version, m.name, m.checksum))
        for m in pending
    ]
    return out


def engine_relations(todo: list[Migration]) -> list[str]:
    """The tables, views and sequences the migrations create that are the engine's own (the
    platform's tables are adopted instead)."""
    names = {m.group(1).lower() for mig in todo for m in _CREATES.finditer(mig.sql)}
    return sorted(names - adopt.PLATFORM_NAMES - {"schema_migrations"})


async def _refuse_foreign_engine_objects(conn: Conn, todo: list[Migration]) -> None:
    """MigrationError naming the engine's tables/views that exist though no migration of
    simengine created them: a migration would fail on them half way, or adopt a stranger's."""
    found = [
        r["relname"]
        for r in await conn.fetch(migrate_query("engine_objects_present"), engine_relations(todo))
    ]
    if found:
        raise MigrationError(
            f"the database holds {', '.join(found)} though simengine never migrated it "
            "(no schema_migrations rows): rename or drop them, or point DATABASE_URL at "
            "simengine's database; nothing was changed"
        )


async def migrate(
    conn: Conn,
    available: list[Migration] | None = None,
    *,
    policy: LockPolicy | None = None,
    plan_only: bool = False,
) -> MigrateReport:
    """Bring the database up to the migrations: apply the pending ones, adopting the platform's
    tables first if simengine has never run here. `plan_only`: say what it would do, change
    nothing. Refuses (MigrationError) an applied migration whose file changed or is gone."""
    todo = migrations() if available is None else available
    lock = policy or LockPolicy()
    if plan_only:
        return _plan(await walk(conn, todo))
    return await _apply(conn, todo, lock)


# -- applying -----------------------------------------------------------------------------------
async def _run(conn: Conn, step: Step) -> None:
    if step.args:
        await conn.execute(step.sql, *step.args)
    else:
        await conn.execute(step.sql)


async def _locked(
    conn: Conn, lock: LockPolicy, what: str, tables: tuple[str, ...], fn: Callable[[], Awaitable[T]]
) -> T:
    """`fn`, again on a lock timeout (store.db's retry); then MigrationError naming who holds the
    lock. Other errors are not retried."""
    try:
        return await retrying_lock_timeouts(fn, attempts=lock.attempts)
    except Exception as exc:
        if not is_lock_timeout(exc):
            raise
        holders = await adopt.lock_blockers(conn, tables)
        raise MigrationError(
            f"migrate: {what}: no lock within {lock.timeout_ms} ms after "
            f"{lock.attempts} attempt(s) (held by {holders}); nothing of it was "
            "applied, run it again when that transaction ends"
        ) from None


async def _take_migrate_lock(conn: Conn, lock: LockPolicy) -> None:
    """In the current transaction: schema_migrations (created here on a first migrate, so gone
    again if the transaction rolls back) locked against every other migrate until commit. It
    waits as long as another migrate runs; the statements after it wait `lock.timeout_ms`."""
    await conn.execute(migrate_query("set_lock_timeout"), 0, True)
    await conn.execute(migrate_query("create_ledger"))
    await conn.execute(migrate_query("migrate_lock"))
    await conn.execute(migrate_query("set_lock_timeout"), lock.timeout_ms, True)


async def _apply(conn: Conn, todo: list[Migration], lock: LockPolicy) -> MigrateReport:
    report = MigrateReport(applied=[], already=[])
    adopting = await _state(conn) == "legacy"

    async def first_transaction() -> tuple[Walk, float, list[str]]:
        """The walk, the adoption's transaction when there is one, and every migration unless
        an adoption's steps outside a transaction come first: all or nothing."""
        applied: list[str] = []
        async with conn.transaction():
            await _take_migrate_lock(conn, lock)
            found = await walk(conn, todo)
            strong_from: float | None = None
            for step in found.steps:
                if step.phase not in IN_TRANSACTION:
                    continue
                if step.phase == LOCKED and strong_from is None:
                    strong_from = time.perf_counter()
                await _run(conn, step)
            if found.adopting:
                report.adopted_users = int(await conn.fetchval(migrate_query("adopted_users")))
            if not any(s.phase == FINISH for s in found.steps):
                for step in (s for s in found.steps if s.phase == MIGRATION):
                    await _migration_step(conn, step)
                    applied.append(step.args[0])
        return found, strong_from or time.perf_counter(), applied

    try:
        plan, strong_from, applied = await _locked(
            conn, lock, "adopting the platform's tables", adopt.CORE_TABLES, first_transaction
        )
    except Exception as exc:
        if not _first_create_race(exc):
            if not (adopting and is_database_error(exc)):
                raise
            raise MigrationError(f"adoption failed (nothing changed): {first_line(exc)}") from None
        # Two first-ever migrates both created schema_migrations; the other one won: wait for
        # it under the lock, then find nothing (or the rest) to do.
        plan, strong_from, applied = await _locked(
            conn, lock, "adopting the platform's tables", adopt.CORE_TABLES, first_transaction
        )
    report.already = plan.already
    if plan.adopting:
        report.users_lock_ms = (time.perf_counter() - strong_from) * 1000
        report.legacy = plan.legacy
        report.applied += plan.covers
    report.applied += applied
    for finish in (s for s in plan.steps if s.phase == FINISH):
        report.notes += await _finish_adoption(
            conn, lock, [s for s in plan.steps if s.phase in (INDEX, VALIDATE)]
        )
        await _run(conn, finish)
        for step in (s for s in plan.steps if s.phase == MIGRATION):
            if await _apply_migration(conn, lock, step):
                report.applied.append(step.args[0])
    return report


def _first_create_race(exc: BaseException) -> bool:
    """A concurrent CREATE TABLE IF NOT EXISTS of schema_migrations that lost (unique_violation
    on the catalogue, or duplicate_table)."""
    return str(getattr(exc, "sqlstate", "")) in ("23505", "42P07")


async def _migration_step(conn: Conn, step: Step) -> None:
    """One migration in the caller's transaction, recorded; a failure is MigrationError naming
    it (a lock timeout stays itself, for the caller's retry)."""
    try:
        await conn.execute(step.sql)
        await conn.execute(migrate_query("record_migration"), *step.args)
    except Exception as exc:
        if not is_database_error(exc) or is_lock_timeout(exc):
            raise
        raise MigrationError(f"{step.what} failed: {first_line(exc)}") from None


async def _apply_migration(conn: Conn, lock: LockPolicy, step: Step) -> bool:
    """One migration after an adoption's finishing steps, in its own transaction under the
    migrate lock; False when another migrate applied it meanwhile."""

    async def apply() -> bool:
        async with conn.transaction():
            await _take_migrate_lock(conn, lock)
            if await conn.fetchval(migrate_query("migration_applied"), step.args[0]):
                return False
            await _migration_step(conn, step)
            return True

    return await _locked(conn, lock, step.what, adopt.CORE_TABLES, apply)


async def _finish_adoption(conn: Conn, lock: LockPolicy, steps: list[Step]) -> list[str]:
    """After the adoption's transaction (now or in an earlier run that stopped): the indexes on
    existing tables, built concurrently, then each new rule validated where no legacy row breaks
    it. Resumable: the caller marks sim_adoption complete when both are done."""
    notes: list[str] = []
    await conn.execute(migrate_query("set_lock_timeout"), lock.timeout_ms, False)
    try:
        started = time.perf_counter()
        indexes = [s for s in steps if s.phase == INDEX]
        for step in indexes:
            await _build_index(conn, lock, step)
        built = time.perf_counter()
        for step in steps:
            if step.phase == VALIDATE:
                notes += await _validate_rule(conn, lock, step)
        notes.append(
            f"{len(indexes)} index(es) built CONCURRENTLY in {built - started:.1f} s, rules "
            f"validated in {time.perf_counter() - built:.1f} s (neither blocks reads or writes)"
        )
    finally:
        await conn.execute(migrate_query("reset_lock_timeout"))
    return notes


async def _build_index(conn: Conn, lock: LockPolicy, step: Step) -> None:
    name = step.name or ""

    async def build() -> None:
        # A build that failed leaves an invalid index behind: drop it and build again.
        valid = await conn.fetchval(migrate_query("index_valid"), name)
        if valid:
            return
        if valid is not None:
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        try:
            await conn.execute(step.sql)
        except Exception as exc:
            if is_lock_timeout(exc):
                await conn.execute(f"DROP INDEX IF EXISTS {name}")
            raise

    try:
        await _locked(
            conn, lock, f"building index {name} on {step.table}", (step.table or "users",), build
        )
    except MigrationError as exc:
        raise MigrationError(
            f"{exc} (adopted; the remaining indexes are built by the next simctl migrate)"
        ) from None


async def _validate_rule(conn: Conn, lock: LockPolicy, step: Step) -> list[str]:
    """VALIDATE a rule adoption added NOT VALID. One that a row written since the adoption's
    count breaks stays NOT VALID (it still holds for new rows) and is named."""

    async def validate() -> None:
        await conn.execute(step.sql)

    try:
        await _locked(conn, lock, f"validating {step.name}", (step.table or "users",), validate)
    except Exception as exc:
        if not is_check_violation(exc):
            raise
        return [f"{step.table}.{step.name} left NOT VALID: a row written since adoption breaks it"]
    return []


# -- --plan -------------------------------------------------------------------------------------
_HEADERS = {
    adopt.BASELINE: "-- 1. one transaction, lock_timeout per statement, retried:",
    INDEX: "-- 2. indexes on existing tables, one by one, outside a transaction:",
    VALIDATE: "-- 3. each rule validated, one by one:",
}


def _plan(found: Walk) -> MigrateReport:
    """What migrate would do here, from the same walk it applies."""
    pending = [s.args[0] for s in found.steps if s.phase == MIGRATION]
    report = MigrateReport(applied=[*found.covers, *pending], already=list(found.already))
    report.legacy = found.legacy
    if found.adopting:
        report.notes.append(
            "this database holds the platform's tables without simengine: migrate adopts it"
        )
    phase = None
    for step in found.steps:
        if step.phase != phase and step.phase in _HEADERS:
            report.plan.append(_HEADERS[step.phase])
        phase = step.phase
        if step.phase == MIGRATION:
            report.plan.append(f"-- {step.what}\n{step.sql.strip()}")
        elif step.phase in (INDEX, VALIDATE):
            report.plan.append(f"{step.sql.strip()};")
        else:
            report.plan.append(f"-- {step.what}\n{step.sql.strip()};")
    return report
