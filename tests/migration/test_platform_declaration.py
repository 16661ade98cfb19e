"""store/adopt.py's PLATFORM follows the migrations: the platform tables a migrated database holds
have exactly the columns PLATFORM names, each of a type PLATFORM accepts, each declaration
adoption adds is the migration's (type, default, NOT NULL), and the CHECKs on each column are
PLATFORM's rules. Compared on the catalogue, with Postgres deparsing both sides."""

from __future__ import annotations

import asyncpg

from store.adopt import PLATFORM, ColumnInfo, compatible, rule_column

# Columns the migrations give a platform table that PLATFORM leaves out, with the reason.
NOT_DECLARED = {
    # The engine never reads or writes it: a portfolio row is found by its user_id (unique).
    ("portfolio", "id"),
}


async def differences(pg: asyncpg.Connection) -> list[str]:
    """One line per way PLATFORM and the migrated schema disagree; none when they agree."""
    names = [t.name for t in PLATFORM]
    rows = await pg.fetch(
        """SELECT c.relname AS tbl, a.attname AS col, t.typname, a.atttypmod, a.attnotnull,
                  format_type(a.atttypid, a.atttypmod) AS type,
                  coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS dflt
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])
              AND a.attnum > 0 AND NOT a.attisdropped""",
        names,
    )
    migrated = {(r["tbl"], r["col"]): r for r in rows}
    out: list[str] = []
    declared = {(t.name, c.name) for t in PLATFORM for c in t.columns}
    for key in sorted(set(migrated) - declared - NOT_DECLARED):
        out.append(f"{key[0]}.{key[1]}: in the migrations, not in PLATFORM")
    for key in sorted(declared - set(migrated)):
        out.append(f"{key[0]}.{key[1]}: in PLATFORM, not in the migrations")

    for table in PLATFORM:
        added = [c for c in table.columns if c.add is not None and (table.name, c.name) in migrated]
        # What adoption would add, declared on a scratch table and read back like the migrated one.
        decl = f"pg_temp.declared_{table.name}"
        columns = ", ".join(f"{c.name} {c.add}" for c in added)
        await pg.execute(f"CREATE TABLE {decl} ({columns})")
        back = {
            r["attname"]: r
            for r in await pg.fetch(
                """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
                          coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS dflt
                     FROM pg_attribute a
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                    WHERE a.attrelid = $1::regclass AND a.attnum > 0""",
                decl,
            )
        }
        for col in table.columns:
            found = migrated.get((table.name, col.name))
            if found is None:
                continue
            info = ColumnInfo(found["typname"], found["atttypmod"], found["attnotnull"])
            if not compatible(col, info):
                out.append(f"{table.name}.{col.name}: PLATFORM refuses {found['type']}")
            if col.name in table.not_null and not found["attnotnull"]:
                out.append(f"{table.name}.{col.name}: PLATFORM's not-null rule, nullable here")
            if col.add is None:
                continue
            mine = back[col.name]
            # A NOT NULL column without a default cannot be added to a table with rows: adoption
            # adds it nullable.
            not_null = found["attnotnull"] and bool(found["dflt"])
            want = (found["type"], not_null, found["dflt"])
            got = (mine["type"], mine["attnotnull"], mine["dflt"])
            if got != want:
                out.append(f"{table.name}.{col.name}: adds {got}, the migrations say {want}")

        # The CHECKs per column: the migrations' against PLATFORM's rules on it, all ANDed in the
        # order declared, both deparsed by Postgres on a copy of the migrated table.
        checks = {
            r["col"]: r["def"]
            for r in await pg.fetch(
                """SELECT a.attname AS col, pg_get_constraintdef(k.oid) AS def
                     FROM pg_constraint k JOIN pg_attribute a
                       ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
                    WHERE k.conrelid = $1::regclass AND k.contype = 'c'""",
                table.name,
            )
        }
        by_column: dict[str, list[str]] = {}
        for rule in table.rules:
            by_column.setdefault(rule_column(table.name, rule), []).append(f"({rule.check})")
        copy = f"pg_temp.rules_{table.name}"
        await pg.execute(f"CREATE TABLE {copy} (LIKE {table.name})")
        for i, parts in enumerate(by_column.values()):
            await pg.execute(
                f"ALTER TABLE {copy} ADD CONSTRAINT r{i} CHECK ({' AND '.join(parts)})"
            )
        rules = {
            r["col"]: r["def"]
            for r in await pg.fetch(
                """SELECT a.attname AS col, pg_get_constraintdef(k.oid) AS def
                     FROM pg_constraint k JOIN pg_attribute a
                       ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
                    WHERE k.conrelid = $1::regclass AND k.contype = 'c'""",
                copy,
            )
        }
        for column in sorted(set(checks) | set(rules)):
            if checks.get(column) != rules.get(column):
                out.append(
                    f"{table.name}.{column}: the migrations check {checks.get(column)}, "
                    f"PLATFORM's rules {rules.get(column)}"
                )
        await pg.execute(f"DROP TABLE {decl}, {copy}")
    return out


async def test_platform_declares_what_the_migrations_build(pg: asyncpg.Connection) -> None:
    assert await differences(pg) == []


async def test_a_migration_changing_a_platform_column_is_caught(pg: asyncpg.Connection) -> None:
    # What a later migration might do to the platform's tables, PLATFORM not following.
    await pg.execute("ALTER TABLE users ADD COLUMN sim_budget_usd numeric(20,8)")
    await pg.execute("ALTER TABLE users ALTER COLUMN sim_fail_count TYPE bigint")
    await pg.execute("ALTER TABLE trades ALTER COLUMN fee_usd SET DEFAULT 1")
    await pg.execute("ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_amount_check")
    await pg.execute("ALTER TABLE users ALTER COLUMN sim_last_error TYPE varchar(10)")
    found = await differences(pg)
    assert [line.split(":")[0] for line in found] == [
        "users.sim_budget_usd",
        "users.sim_fail_count",
        "users.sim_last_error",
        "users.sim_last_error",
        "trades.fee_usd",
        "withdrawals.amount",
    ], found
