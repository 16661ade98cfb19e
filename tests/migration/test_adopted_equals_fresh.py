"""An adopted database ends with the same engine as one built by the migrations from nothing:
the platform's backup restored and migrated, against an empty database migrated, compared on
the catalogue (the engine's tables with their columns and types, the platform tables' columns,
indexes by name, views, functions, triggers, the engine tables' constraints)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from store.adopt import CORE_TABLES, PLATFORM_NAMES
from store.db import connect
from store.migrate import migrate
from tests.migration.test_adoption import db_name as db_name  # the backup restored
from tests.support.services import create_database, drop_database, url_for

Catalogue = dict[str, set[tuple[str, ...]]]

# What adoption keeps of the platform's schema by design is outside the comparison: the types and
# defaults of platform columns (it never rewrites a column), index definitions (a legacy index
# of the same name is kept as it is), the platform's own constraints and its rules added as named
# CHECKs beside them, and the tables the engine never reads (contacts, testimonies). Within it,
# every difference must be listed here with its reason.
INTENDED: dict[str, set[tuple[str, ...]]] = {
    # In the fresh database only: none.
    "fresh": set(),
    # In the adopted database only.
    "adopted": {
        # The legacy schema's UNIQUE (user_id) on portfolio, which ON CONFLICT (user_id) uses;
        # 0001 makes idx_user_portfolio unique instead (also there, a plain index).
        ("index", "portfolio", "portfolio_user_id_key"),
    },
}


async def engine_catalogue(pg: asyncpg.Connection) -> Catalogue:
    """The engine's part of the public schema, as sets of tuples per kind of object."""
    tables = {
        r["relname"]
        for r in await pg.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        )
    }
    engine = sorted(tables - PLATFORM_NAMES)
    columns = await pg.fetch(
        """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
                  a.attnotnull::text AS not_null, coalesce(pg_get_expr(d.adbin, d.adrelid), '')
                  AS dflt, a.attidentity::text AS identity
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') AND a.attnum > 0
              AND NOT a.attisdropped"""
    )
    views = {
        r["relname"]
        for r in await pg.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'v'"
        )
    }
    indexes = await pg.fetch(
        """SELECT t.relname AS tbl, i.relname AS idx FROM pg_index x
             JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE n.nspname = 'public' AND x.indisvalid"""
    )
    constraints = await pg.fetch(
        """SELECT t.relname AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def,
                  c.convalidated::text AS valid
             FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE n.nspname = 'public' AND t.relname = ANY($1::text[])""",
        engine,
    )
    functions = await pg.fetch(
        """SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
                  pg_get_function_result(p.oid) AS result, p.prosrc
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public'"""
    )
    triggers = await pg.fetch(
        """SELECT c.relname AS tbl, t.tgname, pg_get_triggerdef(t.oid) AS def
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal"""
    )
    return {
        "tables": {(t,) for t in engine},
        # The engine's tables in full; the platform's tables and the views by column name (the
        # platform's types are its own, and a view's column that shows one has its type).
        "engine columns": {
            (r["relname"], r["attname"], r["type"], r["not_null"], r["dflt"], r["identity"])
            for r in columns
            if r["relname"] in engine
        },
        "view columns": {(r["relname"], r["attname"]) for r in columns if r["relname"] in views},
        "platform columns": {
            (r["relname"], r["attname"]) for r in columns if r["relname"] in CORE_TABLES
        },
        "views": {(v,) for v in views},
        "indexes": {("index", r["tbl"], r["idx"]) for r in indexes},
        "constraints": {(r["tbl"], r["conname"], r["def"], r["valid"]) for r in constraints},
        "functions": {(r["proname"], r["args"], r["result"], r["prosrc"]) for r in functions},
        "triggers": {(r["tbl"], r["tgname"], r["def"]) for r in triggers},
    }


@pytest.fixture
async def fresh() -> AsyncIterator[Catalogue]:
    """An empty database (template0) migrated."""
    name = create_database("template0")
    try:
        conn = await connect(url_for(name))
        try:
            await migrate(conn)
            yield await engine_catalogue(conn)
        finally:
            await conn.close()
    finally:
        drop_database(name)


async def test_an_adopted_database_has_the_engine_of_a_fresh_one(
    pg: asyncpg.Connection, fresh: Catalogue
) -> None:
    report = await migrate(pg)
    assert report.adopted_users  # the backup was adopted, not migrated as an empty database
    adopted = await engine_catalogue(pg)
    # Each kind of object separately, so a failure names what differs.
    differ = {
        kind: (fresh[kind] - adopted[kind] - INTENDED["fresh"],
               adopted[kind] - fresh[kind] - INTENDED["adopted"])
        for kind in fresh
    }  # fmt: skip
    assert {k: v for k, v in differ.items() if v != (set(), set())} == {}
    # Every listed difference is a real one (a stale entry here would hide nothing, but lie).
    everything_fresh = set().union(*fresh.values())
    everything_adopted = set().union(*adopted.values())
    assert INTENDED["fresh"] <= everything_fresh - everything_adopted
    assert INTENDED["adopted"] <= everything_adopted - everything_fresh
