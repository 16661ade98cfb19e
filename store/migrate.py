"""The migration runner: checksummed, one transaction per migration, safe to run concurrently,
every statement under a `lock_timeout` and retried a bounded number of times.

Three starting points: an empty database (every migration in order), one simengine manages
(`schema_migrations`: the pending ones), and one that holds the platform's tables without
simengine (restored from the platform's backup): that one is adopted (store/adopt.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from store import adopt
from store.db import Conn
from store.errors import MigrationError, first_line
from store.sqlfiles import Migration, migrations, query

T = TypeVar("T")

# Any constant works; two `simctl migrate` serialise on it, the second then finds nothing to do.
_MIGRATE_LOCK = 0x51_6D_65_6E_67_69_6E_65

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

# Adoption stands in for these migrations: 0001 and 0002 are adopted statement by statement
# (store/adopt.py), the others run as they are, 0005 first (the baseline is taken before any
# strong lock). Later migrations run as on any database simengine manages.
_ADOPTED_BY_PLAN = ("0001", "0002")
_ADOPTED_AS_IS = ("0003", "0004")
_BASELINE = "0005"


@dataclass(frozen=True, slots=True)
class LegacyRows:
    """Legacy rows that break a rule the engine adds: left as they are, reported."""

    table: str
    rule: str
    says: str
    rows: int

    def as_json(self) -> dict[str, object]:
        return {"table": self.table, "rule": self.rule, "says": self.says, "rows": self.rows}

    def __str__(self) -> str:
        return (
            f"legacy rows: {self.table}: {self.says} ({self.rule}): {self.rows} row(s) left as "
            "they are; the rule holds for new rows"
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


async def _with_lock_retries(
    conn: Conn,
    policy: LockPolicy,
    what: str,
    tables: tuple[str, ...],
    fn: Callable[[], Awaitable[T]],
) -> T:
    """`fn` again on a lock timeout (bounded, jittered backoff); then MigrationError naming who
    holds the lock. Other errors are not retried."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return await fn()
        except asyncpg.LockNotAvailableError:
            if attempt == policy.attempts:
                holders = await adopt.lock_blockers(conn, tables)
                raise MigrationError(
                    f"migrate: {what}: no lock within {policy.timeout_ms} ms after "
                    f"{policy.attempts} attempt(s) (held by {holders}); nothing of it was "
                    "applied, run it again when that transaction ends"
                ) from None
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


async def _state(conn: Conn) -> str:
    """'managed' (schema_migrations has rows), 'legacy' (platform tables, no simengine) or 'empty'."""
    managed = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if managed and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM schema_migrations)"):
        return "managed"
    legacy = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
        "AND c.relname = ANY($1::text[])",
        sorted(adopt.PLATFORM_NAMES),
    )
    return "legacy" if legacy else "empty"


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
        return await _plan(conn, todo)
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
    try:
        report = MigrateReport(applied=[], already=[])
        state = await _state(conn)
        if state == "legacy":
            await _adopt(conn, todo, lock, report)
        await _finish_adoption(conn, lock, report)
        await _apply_pending(conn, todo, lock, report)
        return report
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)


async def _applied(conn: Conn, todo: list[Migration]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {r["version"]: r for r in rows}
    known = {m.version for m in todo}
    for version in sorted(set(applied) - known):
        raise MigrationError(f"migration {version} is applied but its file is missing")
    return applied


async def _apply_pending(
    conn: Conn, todo: list[Migration], lock: LockPolicy, report: MigrateReport
) -> None:
    await conn.execute(_CREATE_LEDGER)
    applied = await _applied(conn, todo)
    for mig in todo:
        row = applied.get(mig.version)
        if row is not None:
            if row["checksum"] != mig.checksum:
                raise MigrationError(
                    f"migration {mig.version}_{mig.name} changed after it was applied "
                    "(checksum differs); add a new migration instead"
                )
            if mig.version not in report.applied:
                report.already.append(mig.version)
            continue

        async def apply(mig: Migration = mig) -> None:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock.timeout_ms)}")
                await conn.execute(mig.sql)
                await _record(conn, mig)

        try:
            await _with_lock_retries(
                conn, lock, f"migration {mig.version}_{mig.name}", adopt.CORE_TABLES, apply
            )
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"migration {mig.version}_{mig.name} failed: {first_line(exc)}"
            ) from None
        report.applied.append(mig.version)


async def _record(conn: Conn, mig: Migration) -> None:
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        mig.version,
        mig.name,
        mig.checksum,
    )


# -- adoption -----------------------------------------------------------------------------------
def _by_version(todo: list[Migration], version: str) -> Migration:
    for mig in todo:
        if mig.version == version:
            return mig
    raise MigrationError(f"adoption needs migration {version}, which is missing")


async def _check(conn: Conn) -> tuple[adopt.Catalogue, adopt.Plan, list[Migration]]:
    """Refuse an incompatible database (nothing changed); else the adoption's plan."""
    cat = await adopt.read_catalogue(conn)
    problems = [
        f"{t}: missing table; needs the platform's {t} table"
        for t in adopt.CORE_TABLES
        if t not in cat.tables
    ]
    problems += adopt.incompatibilities(cat)
    if problems:
        raise MigrationError(
            "refused to adopt this database (nothing changed):\n" + "\n".join(problems)
        )
    todo = migrations()
    plan = adopt.Plan()
    adopt.plan_engine_objects(cat, [_by_version(todo, v).sql for v in _ADOPTED_BY_PLAN], plan)
    adopt.plan_platform(cat, plan)
    return cat, plan, todo


def _tx_statements(plan: adopt.Plan, todo: list[Migration]) -> list[tuple[str, str]]:
    """The adoption transaction in order, each statement with what it is (for --plan and logs)."""
    steps: list[tuple[str, str]] = [
        (f"migration {_BASELINE} as it is", _by_version(todo, _BASELINE).sql),
        ("the opening state", query("take_baseline")),
    ]
    steps += [("engine object / platform column or rule", s.sql) for s in plan.tx]
    steps += [(f"migration {v} as it is", _by_version(todo, v).sql) for v in _ADOPTED_AS_IS]
    return steps


async def _adopt(
    conn: Conn, todo: list[Migration], lock: LockPolicy, report: MigrateReport
) -> None:
    """The adoption's transaction: all or nothing, retried on lock timeouts."""
    cat, plan, _ = await _check(conn)
    covered = [m for m in todo if m.version <= _BASELINE]
    users_lock_ms = 0.0
    legacy_found: list[LegacyRows] = []

    async def transaction() -> int:
        nonlocal users_lock_ms, legacy_found
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(lock.timeout_ms)}")
            await conn.execute(_by_version(todo, _BASELINE).sql)
            await conn.execute(query("take_baseline"))
            # From here on the statements take locks that hold the platform's writes back
            # (ALTER TABLE, foreign keys, triggers) until the commit: catalogue changes only.
            breaking = await adopt.count_breaking(conn, cat, plan.rules)
            legacy: list[LegacyRows] = []
            upto: dict[str, int | None] = {}
            for table, rule in plan.rules:
                if breaking[rule.name] and table not in upto:
                    upto[table] = await conn.fetchval(f"SELECT max(id) FROM {table}")  # noqa: S608
                if breaking[rule.name]:
                    legacy.append(LegacyRows(table, rule.name, rule.says, breaking[rule.name]))
            strong_from = time.perf_counter()
            for step in plan.tx:
                await conn.execute(step.sql)
            for version in _ADOPTED_AS_IS:
                await conn.execute(_by_version(todo, version).sql)
            for table, rule in plan.rules:
                exempt = upto.get(table) if breaking[rule.name] else None
                await conn.execute(adopt.constraint_sql(table, rule, exempt))
            users: int = await conn.fetchval("SELECT count(*) FROM sim_baseline")
            audit_id = await conn.fetchval(
                query("audit"),
                "engine",
                "adopt",
                None,
                {
                    "users": users,
                    "added": [s.sql.splitlines()[0] for s in plan.tx],
                    "indexes_to_build": [s.sql.splitlines()[0] for s in plan.concurrent],
                    "rules": [r.name for _, r in plan.rules],
                    "legacy_rows": [r.as_json() for r in legacy],
                    "migrations": [m.version for m in covered],
                },
            )
            await conn.execute(
                "INSERT INTO sim_adoption (taken_at, users_count, audit_id, legacy_report) "
                "VALUES (now(), $1, $2, $3)",
                users,
                audit_id,
                [r.as_json() for r in legacy],
            )
            await conn.execute(_CREATE_LEDGER)
            for mig in covered:
                await _record(conn, mig)
        users_lock_ms = (time.perf_counter() - strong_from) * 1000
        legacy_found = legacy
        return users

    try:
        users = await _with_lock_retries(
            conn, lock, "adopting the platform's tables", adopt.CORE_TABLES, transaction
        )
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"adoption failed (nothing changed): {first_line(exc)}") from None
    report.adopted_users = users
    report.users_lock_ms = users_lock_ms
    report.legacy = legacy_found
    report.applied.extend(m.version for m in covered)


async def _finish_adoption(conn: Conn, lock: LockPolicy, report: MigrateReport) -> None:
    """After the adoption's transaction (now or in an earlier run that stopped): the indexes on
    existing tables, built concurrently, then each new rule validated where no legacy row breaks
    it. Resumable: sim_adoption.completed_at is set when both are done."""
    pending = await conn.fetchval(
        "SELECT to_regclass('sim_adoption') IS NOT NULL"
    ) and await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM sim_adoption WHERE completed_at IS NULL)"
    )
    if not pending:
        return
    cat = await adopt.read_catalogue(conn)
    plan = adopt.Plan()
    adopt.plan_engine_objects(
        cat, [_by_version(migrations(), v).sql for v in _ADOPTED_BY_PLAN], plan
    )
    await conn.execute(f"SET lock_timeout = {int(lock.timeout_ms)}")
    try:
        started = time.perf_counter()
        for step in plan.concurrent:
            await _build_index(conn, lock, step)
        built = time.perf_counter()
        report.notes += await _validate_rules(conn, lock)
        report.notes.append(
            f"{len(plan.concurrent)} index(es) built CONCURRENTLY in {built - started:.1f} s, rules "
            f"validated in {time.perf_counter() - built:.1f} s (neither blocks reads or writes)"
        )
    finally:
        await conn.execute("RESET lock_timeout")
    await conn.execute("UPDATE sim_adoption SET completed_at = now()")


async def _build_index(conn: Conn, lock: LockPolicy, step: adopt.Step) -> None:
    name = step.sql.split("CONCURRENTLY", 1)[1].split()[0]
    if name.upper() == "IF":
        name = step.sql.split("EXISTS", 1)[1].split()[0]

    async def build() -> None:
        # A build that failed leaves an invalid index behind: drop it and build again.
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", name
        )
        if valid:
            return
        if valid is not None:
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        try:
            await conn.execute(step.sql)
        except asyncpg.LockNotAvailableError:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
            raise

    try:
        await _with_lock_retries(
            conn, lock, f"building index {name} on {step.table}", (step.table or "users",), build
        )
    except MigrationError as exc:
        raise MigrationError(
            f"{exc} (adopted; the remaining indexes are built by the next simctl migrate)"
        ) from None


async def _validate_rules(conn: Conn, lock: LockPolicy) -> list[str]:
    """VALIDATE each rule adoption added NOT VALID. One that a row written since the adoption's
    count breaks stays NOT VALID (it still holds for new rows) and is named."""
    rows = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS tbl, c.conname FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = current_schema() AND c.contype = 'c' AND NOT c.convalidated "
        "AND c.conname LIKE 'sim\\_%' ORDER BY 1, 2"
    )
    known = adopt.all_rules()
    left: list[str] = []
    for row in rows:
        table, name = row["tbl"], row["conname"]
        if name not in known:
            continue

        async def validate(table: str = table, name: str = name) -> None:
            await conn.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")

        try:
            await _with_lock_retries(conn, lock, f"validating {name}", (table,), validate)
        except asyncpg.CheckViolationError:
            left.append(f"{table}.{name} left NOT VALID: a row written since adoption breaks it")
    return left


# -- --plan -------------------------------------------------------------------------------------
async def _plan(conn: Conn, todo: list[Migration]) -> MigrateReport:
    """What migrate would do here, changing nothing."""
    report = MigrateReport(applied=[], already=[])
    state = await _state(conn)
    if state == "legacy":
        cat, plan, _ = await _check(conn)
        report.notes.append(
            "this database holds the platform's tables without simengine: migrate adopts it"
        )
        report.plan.append("-- 1. one transaction, lock_timeout per statement, retried:")
        report.plan += [f"-- {what}\n{sql.strip()};" for what, sql in _tx_statements(plan, todo)]
        report.plan.append(
            "-- ... then admin_audit 'adopt', sim_adoption and schema_migrations "
            + ", ".join(m.version for m in todo if m.version <= _BASELINE)
        )
        report.plan.append("-- 2. indexes on existing tables, one by one, outside a transaction:")
        report.plan += [f"{s.sql.strip()};" for s in plan.concurrent]
        breaking = await adopt.count_breaking(conn, cat, plan.rules)
        report.plan.append("-- ... in the same transaction, the engine's rules (NOT VALID):")
        for table, rule in plan.rules:
            n = breaking[rule.name]
            upto = await conn.fetchval(f"SELECT max(id) FROM {table}") if n else None  # noqa: S608
            report.plan.append(adopt.constraint_sql(table, rule, upto) + ";")
            if n:
                report.legacy.append(LegacyRows(table, rule.name, rule.says, n))
        report.plan.append("-- 3. each rule validated, one by one:")
        report.plan += [
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {rule.name};" for table, rule in plan.rules
        ]
        pending = [m for m in todo if m.version > _BASELINE]
        report.applied += [m.version for m in todo if m.version <= _BASELINE]
    elif state == "managed":
        applied = await _applied(conn, todo)
        pending = [m for m in todo if m.version not in applied]
        report.already = sorted(applied)
    else:
        pending = todo
    for mig in pending:
        report.plan.append(f"-- migration {mig.version}_{mig.name}\n{mig.sql.strip()}")
        report.applied.append(mig.version)
    return report
