"""The migration runner: checksummed, one transaction per migration, safe to run concurrently."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from store.db import Conn
from store.errors import MigrationError
from store.sqlfiles import Migration, migrations

# Any constant works; two `simctl migrate` serialise on it, the second then finds nothing to do.
_MIGRATE_LOCK = 0x51_6D_65_6E_67_69_6E_65

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class MigrateReport:
    applied: list[str]
    already: list[str]


async def migrate(conn: Conn, available: list[Migration] | None = None) -> MigrateReport:
    """Apply pending migrations; refuse if an applied one's file changed or is gone."""
    todo = migrations() if available is None else available
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
    try:
        await conn.execute(_CREATE_LEDGER)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        known = {m.version for m in todo}
        for version in sorted(set(applied) - known):
            raise MigrationError(f"migration {version} is applied but its file is missing")
        report = MigrateReport(applied=[], already=[])
        for mig in todo:
            row = applied.get(mig.version)
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version}_{mig.name} changed after it was applied "
                        "(checksum differs); add a new migration instead"
                    )
                report.already.append(mig.version)
                continue
            try:
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {mig.version}_{mig.name} failed: {exc}") from None
            report.applied.append(mig.version)
        return report
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)
