"""Adoption: bring a database that already holds the platform's tables (restored from its backup,
written by other services every second) up to the contract, without rewriting a legacy row.

The migrations (0001, 0002) are the one declaration of the schema: adoption reuses their statements for every engine object (table, function, trigger, index) and
runs 0003-0005 as they are. What the migrations cannot say is declared here as data (`PLATFORM`):
which legacy types the engine can read and write for each platform column (a varchar(255) email
is fine, numeric(20,2) money is not), which columns carry the platform's data and must be there,
the column declaration to add when one is missing (a nullable or constant-default form of the
migration's, so adding it rewrites no row), and the migration's CHECKs split into named rules that
legacy rows are reported against. `PLATFORM` is held to the migrations by a test
(tests/migration/test_platform_declaration.py): it builds the migrations' tables and fails when a
column, its type, default or nullability, or a CHECK there differs from what `PLATFORM` says. A
test rather than deriving the declarations at run time: reading them back from the migrations
would need a scratch schema (a CREATE privilege the engine's role may not have) or a SQL parser,
and the test catches the same drift before release. The assets come from engine/assets.py.
The schema migrations' statements are split and classified by their first words
(`split_statements`, `_STATEMENT_HEAD`): a table's CREATE cannot be read back from a catalogue,
so the migration text stays the one declaration of the engine's objects.

`steps` is the one walk of an adoption: `simctl migrate --plan` prints its steps, `simctl migrate`
runs them (store/migrate.py). The order is what keeps the platform running (docs/operations.md,
"Installing on the platform's existing database"):
1. check every column, refuse (nothing changed) on any incompatibility;
2. one transaction under `lock_timeout`, retried a bounded number of times: the opening snapshot
   (`sim_baseline`, before any strong lock is taken), the engine's tables, the catalogue-only
   changes to the platform's tables (columns with constant defaults, rules `NOT VALID`), the
   views, the `admin_audit` row and the `schema_migrations` rows. All or nothing;
3. the indexes the engine needs on existing tables, `CREATE INDEX CONCURRENTLY`;
4. each rule validated where no legacy row breaks it; the rows that do are reported and kept.
Steps 3 and 4 are resumable: `sim_adoption.completed_at` stays NULL until they are done, and the
next `simctl migrate` finishes them (`finishing_steps`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.assets import ASSETS
from store.db import Conn
from store.errors import MigrationError
from store.sqlfiles import Migration, migrate_query, query

# The portfolio's holding columns and the asset names a rule accepts.
_HOLDINGS = tuple(a.lower() for a in ASSETS)
_ASSET_LIST = "(" + ", ".join(f"'{a}'" for a in ASSETS) + ")"

# Column kinds: what a legacy column must be for the engine to read and write it.
ID, INT, TEXT, MONEY, BOOL, TS, JSONB = "id", "int", "text", "money", "bool", "ts", "jsonb"
_NEEDS = {
    ID: "integer or bigint",
    INT: "integer or bigint",
    TEXT: "text or varchar",
    MONEY: "numeric with at least 8 decimals and 10 integer digits",
    BOOL: "boolean",
    TS: "timestamp with time zone",
    JSONB: "jsonb",
}


@dataclass(frozen=True, slots=True)
class Col:
    name: str
    kind: str
    # The column's declaration when it is missing (with a constant default, so adding it rewrites
    # nothing); None: the column carries the platform's data and must be there.
    add: str | None = None
    # varchar(n) must hold what the engine writes.
    min_len: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    check: str
    says: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Col, ...]
    rules: tuple[Rule, ...] = ()
    # Columns whose NULLs the engine cannot read: a legacy nullable one gets an IS NOT NULL rule.
    not_null: tuple[str, ...] = ()


def _money(name: str, add: str | None = None) -> Col:
    return Col(name, MONEY, add)


_TS_NOW = "timestamptz NOT NULL DEFAULT now()"

PLATFORM: tuple[Table, ...] = (
    Table(
        "users",
        (
            Col("id", ID),
            Col("email", TEXT, min_len=64),
            Col("password_hash", TEXT, "text", 60),
            Col("full_name", TEXT, "text", 64),
            _money("balance_usd"),
            _money("portfolio_value_usd"),
            Col("tax_id", TEXT, "text", 16),
            Col("is_active", BOOL, "boolean NOT NULL DEFAULT true"),
            Col("deleted_at", TS, "timestamptz"),
            Col("created_at", TS, _TS_NOW),
            Col("updated_at", TS, _TS_NOW),
            Col("sim_enabled", BOOL, "boolean NOT NULL DEFAULT false"),
            Col("sim_paused", BOOL, "boolean NOT NULL DEFAULT false"),
            Col("sim_interval_s", INT, "integer NOT NULL DEFAULT 300"),
            Col("sim_next_run_at", TS, "timestamptz"),
            Col("sim_last_run_at", TS, "timestamptz"),
            Col("sim_run_count", INT, "bigint NOT NULL DEFAULT 0"),
            Col("sim_claimed_until", TS, "timestamptz"),
            Col("sim_fail_count", INT, "integer NOT NULL DEFAULT 0"),
            Col("sim_last_error", TEXT, "text", 200),
            Col("sim_strategy", TEXT, "text", 16),
            Col("sim_params", JSONB, "jsonb NOT NULL DEFAULT '{}'::jsonb"),
        ),
        (
            Rule("sim_users_email_lower", "email = lower(email)", "email stored lower-case"),
            Rule("sim_users_email_shape", "email LIKE '%_@_%'", "email looks like an address"),
            Rule("sim_users_balance_nonneg", "balance_usd >= 0", "balance_usd >= 0"),
            Rule("sim_users_interval_pos", "sim_interval_s > 0", "sim_interval_s > 0"),
            Rule(
                "sim_users_strategy",
                "sim_strategy IN ('random', 'rebalance', 'dca', 'momentum')",
                "sim_strategy is a known strategy",
            ),
            Rule(
                "sim_users_params_object",
                "jsonb_typeof(sim_params) = 'object'",
                "sim_params is a JSON object",
            ),
        ),
        (
            "balance_usd",
            "portfolio_value_usd",
            "is_active",
            "sim_enabled",
            "sim_paused",
            "sim_interval_s",
            "sim_run_count",
        ),
    ),
    Table(
        "portfolio",
        (
            Col("user_id", ID),
            *(_money(a, "numeric(18,8) NOT NULL DEFAULT 0") for a in _HOLDINGS),
            _money("usd_value", "numeric(20,8) NOT NULL DEFAULT 0"),
            Col("updated_at", TS, _TS_NOW),
        ),
        tuple(Rule(f"sim_portfolio_{a}_nonneg", f"{a} >= 0", f"{a} >= 0") for a in _HOLDINGS),
        (*_HOLDINGS, "usd_value"),
    ),
    Table(
        "transactions",
        (
            Col("id", ID),
            Col("user_id", ID),
            Col("type", TEXT, min_len=10),
            _money("amount"),
            Col("currency", TEXT, "text NOT NULL DEFAULT 'USD'", 3),
            Col("status", TEXT, min_len=9),
            Col("reference", TEXT, "text", 32),
            Col("description", TEXT, "text", 64),
            Col("created_at", TS, _TS_NOW),
            Col("sim_run_id", ID, "bigint"),
        ),
        (
            Rule(
                "sim_transactions_type",
                "type IN ('deposit', 'withdrawal', 'buy', 'sell', 'adjustment', 'credit', 'trade')",
                "type is a known type",
            ),
            Rule(
                "sim_transactions_status",
                "status IN ('pending', 'completed', 'failed', 'cancelled')",
                "status is a known status",
            ),
        ),
        ("amount", "status"),
    ),
    Table(
        "trades",
        (
            Col("id", ID),
            Col("user_id", ID),
            Col("trade_type", TEXT, min_len=4),
            Col("asset", TEXT, min_len=4),
            _money("amount"),
            _money("price_usd"),
            _money("total_usd", "numeric(20,8)"),
            _money("fee_usd", "numeric(20,8) NOT NULL DEFAULT 0"),
            Col("is_simulated", BOOL, "boolean NOT NULL DEFAULT false"),
            _money("balance_before", "numeric(20,8)"),
            _money("balance_after", "numeric(20,8)"),
            Col("sim_run_id", ID, "bigint"),
            Col("generated_at", TS, "timestamptz"),
            Col("created_at", TS, _TS_NOW),
        ),
        (
            Rule("sim_trades_side", "trade_type IN ('buy', 'sell')", "trade_type is buy or sell"),
            Rule("sim_trades_asset", f"asset IN {_ASSET_LIST}", "asset is a known asset"),
            Rule("sim_trades_amount_pos", "amount > 0", "amount > 0"),
            Rule("sim_trades_price_pos", "price_usd > 0", "price_usd > 0"),
            Rule("sim_trades_fee_nonneg", "fee_usd >= 0", "fee_usd >= 0"),
        ),
        ("is_simulated",),
    ),
    Table(
        "withdrawals",
        (
            Col("id", ID),
            Col("user_id", ID),
            Col("asset", TEXT, min_len=4),
            _money("amount"),
            Col("address", TEXT, "text", 16),
            Col("status", TEXT, min_len=10),
            Col("tx_hash", TEXT, "text", 16),
            Col("error_message", TEXT, "text", 64),
            Col("created_at", TS, _TS_NOW),
            Col("updated_at", TS, _TS_NOW),
        ),
        (
            Rule("sim_withdrawals_asset", f"asset IN {_ASSET_LIST}", "asset is a known asset"),
            Rule("sim_withdrawals_amount_pos", "amount > 0", "amount > 0"),
            Rule(
                "sim_withdrawals_status",
                "status IN ('pending', 'processing', 'completed', 'failed')",
                "status is a known status",
            ),
        ),
        ("amount", "status"),
    ),
    Table(
        "admin_audit",
        (
            Col("id", ID),
            Col("admin_key", TEXT, min_len=32),
            Col("action", TEXT, min_len=32),
            Col("target_user_id", ID, "bigint"),
            Col("details", JSONB, "jsonb NOT NULL DEFAULT '{}'::jsonb"),
            Col("created_at", TS, _TS_NOW),
        ),
    ),
)
# The platform's other tables: the engine never reads them; created when missing, else left alone.
PLATFORM_NAMES = frozenset({t.name for t in PLATFORM} | {"contacts", "testimonies"})


CORE_TABLES = ("users", "portfolio", "transactions", "trades", "withdrawals", "admin_audit")


def not_null_rule(table: str, column: str) -> Rule:
    return Rule(f"sim_{table}_{column}_not_null", f"{column} IS NOT NULL", f"{column} is not null")


def all_rules() -> dict[str, tuple[str, Rule]]:
    """Every rule adoption may add, by constraint name: (table, rule)."""
    out: dict[str, tuple[str, Rule]] = {}
    for table in PLATFORM:
        for rule in (*table.rules, *(not_null_rule(table.name, c) for c in table.not_null)):
            out[rule.name] = (table.name, rule)
    return out


# -- the catalogue ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ColumnInfo:
    type_name: str
    typmod: int
    not_null: bool


@dataclass(slots=True)
class Catalogue:
    tables: set[str]
    columns: dict[tuple[str, str], ColumnInfo]
    # index name -> valid
    indexes: dict[str, bool]
    constraints: set[str]
    # CHECKs still NOT VALID: name -> table
    unvalidated: dict[str, str]
    functions: set[str]
    triggers: set[str]
    portfolio_unique_user: bool


async def read_catalogue(conn: Conn) -> Catalogue:
    """What the current schema holds now: tables, columns with their types, indexes, rules."""
    constraints = await conn.fetch(migrate_query("catalogue_constraints"))
    return Catalogue(
        tables={r["relname"] for r in await conn.fetch(migrate_query("catalogue_tables"))},
        columns={
            (r["relname"], r["attname"]): ColumnInfo(r["typname"], r["atttypmod"], r["attnotnull"])
            for r in await conn.fetch(migrate_query("catalogue_columns"))
        },
        indexes={
            r["relname"]: r["indisvalid"]
            for r in await conn.fetch(migrate_query("catalogue_indexes"))
        },
        constraints={r["conname"] for r in constraints},
        unvalidated={
            r["conname"]: r["tbl"]
            for r in constraints
            if r["contype"] == "c" and not r["convalidated"]
        },
        functions={r["proname"] for r in await conn.fetch(migrate_query("catalogue_functions"))},
        triggers={r["tgname"] for r in await conn.fetch(migrate_query("catalogue_triggers"))},
        portfolio_unique_user=bool(await conn.fetchval(migrate_query("portfolio_unique_user"))),
    )


def _describe(info: ColumnInfo) -> str:
    if info.type_name == "numeric":
        if info.typmod < 0:
            return "numeric"
        precision, scale = ((info.typmod - 4) >> 16) & 0xFFFF, (info.typmod - 4) & 0xFFFF
        return f"numeric({precision},{scale})"
    if info.type_name == "varchar":
        return "varchar" if info.typmod < 0 else f"varchar({info.typmod - 4})"
    names = {"int4": "integer", "int8": "bigint", "int2": "smallint", "bool": "boolean",
             "timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone",
             "float8": "double precision", "float4": "real"}  # fmt: skip
    return names.get(info.type_name, info.type_name)


def compatible(col: Col, info: ColumnInfo) -> bool:
    """Can the engine read and write this legacy column as it is?"""
    t = info.type_name
    if col.kind in (ID, INT):
        return t in ("int4", "int8")
    if col.kind == TEXT:
        if t == "text" or (t == "varchar" and info.typmod < 0):
            return True
        return t == "varchar" and info.typmod - 4 >= col.min_len
    if col.kind == MONEY:
        if t != "numeric":
            return False
        if info.typmod < 0:
            return True  # unconstrained: any scale
        precision, scale = ((info.typmod - 4) >> 16) & 0xFFFF, (info.typmod - 4) & 0xFFFF
        return scale >= 8 and precision - scale >= 10
    return t == {BOOL: "bool", TS: "timestamptz", JSONB: "jsonb"}[col.kind]


def incompatibilities(cat: Catalogue) -> list[str]:
    """One line per platform table or column the engine cannot use: what, found, needed."""
    problems = [
        f"{t}: missing table; needs the platform's {t} table"
        for t in CORE_TABLES
        if t not in cat.tables
    ]
    for table in PLATFORM:
        if table.name not in cat.tables:
            continue
        for col in table.columns:
            info = cat.columns.get((table.name, col.name))
            if info is None:
                if col.add is None:
                    problems.append(
                        f"{table.name}.{col.name}: missing; needs {_NEEDS[col.kind]} "
                        "(the platform's data lives there, simengine will not invent it)"
                    )
                continue
            if not compatible(col, info):
                need = _NEEDS[col.kind]
                if col.kind == TEXT and col.min_len:
                    need += f" of at least {col.min_len} characters"
                problems.append(f"{table.name}.{col.name}: found {_describe(info)}; needs {need}")
    if "portfolio" in cat.tables and not cat.portfolio_unique_user:
        problems.append(
            "portfolio.user_id: found no unique index; needs one (one portfolio row per user)"
        )
    return problems


# -- the steps ----------------------------------------------------------------------------------
# Where a step runs. BASELINE and LOCKED: in the adoption's transaction, BASELINE before any lock
# that holds back the platform's writes, LOCKED after (timed). INDEX: a concurrent build, one by
# one, outside a transaction. VALIDATE: a rule validated in its own statement. FINISH: the
# adoption marked complete. MIGRATION: a migration file, in a transaction of its own.
BASELINE, LOCKED, INDEX, VALIDATE, FINISH, MIGRATION = (
    "baseline", "locked", "index", "validate", "finish", "migration",
)  # fmt: skip
IN_TRANSACTION = (BASELINE, LOCKED)


@dataclass(frozen=True, slots=True)
class Step:
    phase: str
    # What it is, for --plan and for a refusal.
    what: str
    sql: str
    args: tuple[Any, ...] = ()
    table: str | None = None
    # The index an INDEX step builds, the constraint a VALIDATE step validates.
    name: str | None = None


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
class AdoptionPlan:
    """What adopting a database takes, from one walk of it: the steps in the order they run,
    the legacy rows left as they are, the migrations it stands in for."""

    steps: list[Step] = field(default_factory=list)
    legacy: list[LegacyRows] = field(default_factory=list)
    # The migrations it stands in for (recorded in schema_migrations).
    covers: list[str] = field(default_factory=list)


# Adoption stands in for these migrations: 0001 and 0002 statement by statement (the engine's
# objects; the platform's columns from PLATFORM), 0003 and 0004 as they are, 0005 first (the
# baseline is taken before any strong lock). Later migrations run as on any database.
SCHEMA = ("0001", "0002")
AS_IS = ("0003", "0004")
BASELINE_VERSION = "0005"


def _by_version(todo: Sequence[Migration], version: str) -> Migration:
    for mig in todo:
        if mig.version == version:
            return mig
    raise MigrationError(f"adoption needs migration {version}, which is missing")


_STATEMENT_HEAD = re.compile(
    r"^\s*(?:--[^\n]*\n\s*)*"
    r"(?P<verb>CREATE\s+(?:UNIQUE\s+)?INDEX|CREATE\s+TABLE|CREATE\s+FUNCTION|CREATE\s+TRIGGER"
    r"|CREATE\s+VIEW|ALTER\s+TABLE|INSERT\s+INTO)\s+(?P<name>\w+)"
    r"(?:.*?\bON\s+(?P<on>\w+))?",
    re.IGNORECASE | re.DOTALL,
)


def split_statements(sql: str) -> list[str]:
    """A migration's statements, split on `;` outside dollar-quoted bodies and comments."""
    out: list[str] = []
    start, i, n = 0, 0, len(sql)
    in_dollar = False
    while i < n:
        if sql.startswith("$$", i):
            in_dollar = not in_dollar
            i += 2
            continue
        if not in_dollar and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if not in_dollar and sql[i] == ";":
            stmt = sql[start:i].strip()
            if stmt:
                out.append(stmt)
            start = i + 1
        i += 1
    tail = sql[start:].strip()
    if tail and any(
        line.strip() and not line.strip().startswith("--") for line in tail.splitlines()
    ):
        out.append(tail)
    return out


def _strip_comments(stmt: str) -> str:
    return "\n".join(line for line in stmt.splitlines() if not line.lstrip().startswith("--"))


def engine_objects(cat: Catalogue, todo: Sequence[Migration]) -> tuple[list[Step], list[Step]]:
    """The statements of the schema migrations (0001, 0002) that still apply to this database:
    in the transaction, what creates a missing table, function or trigger (with the indexes and
    rows of a table it creates); after it, the missing indexes on tables that existed, built
    concurrently. Platform tables themselves are adopted from PLATFORM, never re-created."""
    created: set[str] = set()
    tx: list[Step] = []
    concurrent: list[Step] = []
    for version in SCHEMA:
        for stmt in split_statements(_by_version(todo, version).sql):
            head = _STATEMENT_HEAD.match(stmt)
            if head is None:
                raise MigrationError(f"adoption cannot classify a migration statement: {stmt[:60]}")
            verb = " ".join(head["verb"].upper().split())
            name = head["name"].lower()
            on = (head["on"] or "").lower()
            body = _strip_comments(stmt).strip()
            what = f"{version}: {verb.lower()} {name}"
            if verb == "CREATE TABLE":
                if name not in cat.tables:
                    tx.append(Step(LOCKED, what, body, table=name))
                    created.add(name)
            elif verb in ("CREATE INDEX", "CREATE UNIQUE INDEX"):
                if cat.indexes.get(name):
                    continue
                if on in created:
                    tx.append(Step(LOCKED, what, body, table=on, name=name))
                else:
                    build = re.sub(
                        r"^(CREATE\s+(?:UNIQUE\s+)?INDEX)\s+",
                        r"\1 CONCURRENTLY ",
                        body,
                        flags=re.IGNORECASE,
                    )
                    concurrent.append(Step(INDEX, f"index {name} on {on}", build, (), on, name))
            elif verb == "CREATE FUNCTION":
                if name not in cat.functions:
                    tx.append(Step(LOCKED, what, body))
            elif verb == "CREATE TRIGGER":
                if name not in cat.triggers:
                    tx.append(Step(LOCKED, what, body, table=on))
            elif verb in ("INSERT INTO", "ALTER TABLE"):
                if name in created:
                    tx.append(Step(LOCKED, what, body, table=name))
                # On an existing (platform) table the columns come from PLATFORM.
            else:
                raise MigrationError(f"adoption does not expect {verb} in a schema migration")
    return tx, concurrent


def platform_changes(cat: Catalogue) -> tuple[list[Step], list[tuple[str, Rule]]]:
    """Missing columns with their defaults, per legacy table; the rules the engine adds there."""
    steps: list[Step] = []
    rules: list[tuple[str, Rule]] = []
    for table in PLATFORM:
        if table.name not in cat.tables:
            continue
        adds = [
            f"ADD COLUMN {col.name} {col.add}"
            for col in table.columns
            if (table.name, col.name) not in cat.columns and col.add is not None
        ]
        if adds:
            sql = f"ALTER TABLE {table.name}\n    " + ",\n    ".join(adds)
            steps.append(Step(LOCKED, f"{table.name}: missing columns", sql, table=table.name))
        table_rules = list(table.rules)
        for name in table.not_null:
            info = cat.columns.get((table.name, name))
            if info is not None and not info.not_null:
                table_rules.append(not_null_rule(table.name, name))
        rules += [(table.name, r) for r in table_rules if r.name not in cat.constraints]
    return steps, rules


def rule_column(table: str, rule: Rule) -> str:
    """The one column a rule tests (every rule here tests one)."""
    names = {c.name for t in PLATFORM if t.name == table for c in t.columns}
    for word in re.findall(r"[a-z_]+", rule.check):
        if word in names:
            return str(word)
    raise AssertionError(f"rule {rule.name} names no column of {table}")


async def count_breaking(
    conn: Conn, cat: Catalogue, rules: Sequence[tuple[str, Rule]]
) -> tuple[dict[str, int], dict[str, int | None]]:
    """Legacy rows that break each rule (a CHECK passes NULL, so rows where it is false), and the
    last id of each table that has some, one scan per table. A rule on a column adoption adds is
    kept by that column's default: 0."""
    counts: dict[str, int] = {}
    by_table: dict[str, list[Rule]] = {}
    for table, rule in rules:
        if (table, rule_column(table, rule)) in cat.columns:
            by_table.setdefault(table, []).append(rule)
        else:
            counts[rule.name] = 0
    last_id: dict[str, int | None] = {}
    for table, table_rules in by_table.items():
        # Identifiers and checks come from PLATFORM (constants), never from input.
        columns = ", ".join(f"count(*) FILTER (WHERE ({r.check}) IS FALSE)" for r in table_rules)
        row = await conn.fetchrow(f"SELECT max(id), {columns} FROM {table}")  # noqa: S608
        assert row is not None
        counts.update({r.name: int(row[i + 1]) for i, r in enumerate(table_rules)})
        last_id[table] = row[0]
    return counts, last_id


def constraint_sql(table: str, rule: Rule, legacy_upto: int | None) -> str:
    """The rule as a CHECK added NOT VALID (validated after the transaction). When legacy rows
    break it, it exempts the rows that existed (ids up to `legacy_upto`): a NOT VALID check
    still refuses every UPDATE of a breaking row, which would stop the platform's own writes to
    those rows; new rows get the rule."""
    check = rule.check if legacy_upto is None else f"id <= {int(legacy_upto)} OR ({rule.check})"
    return f"ALTER TABLE {table} ADD CONSTRAINT {rule.name} CHECK ({check}) NOT VALID"


def _validate(table: str, name: str) -> Step:
    sql = f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"
    return Step(VALIDATE, f"rule {name}", sql, table=table, name=name)


def finishing_steps(cat: Catalogue, todo: Sequence[Migration]) -> list[Step]:
    """What follows an adoption's transaction, here or in a later run after one that stopped:
    the missing indexes built concurrently, each rule still NOT VALID validated, the adoption
    marked complete."""
    _, concurrent = engine_objects(cat, todo)
    known = all_rules()
    validate = [
        _validate(table, name) for name, table in sorted(cat.unvalidated.items()) if name in known
    ]
    return [
        *concurrent,
        *validate,
        Step(FINISH, "adoption complete", migrate_query("adoption_completed")),
    ]


async def steps(conn: Conn, cat: Catalogue, todo: Sequence[Migration]) -> AdoptionPlan:
    """Every step of adopting this database, in order; MigrationError (nothing changed) when a
    platform column is incompatible. Reads only: run inside the adoption's transaction, its
    counts of legacy rows are those the rules' exemptions are written from."""
    problems = incompatibilities(cat)
    if problems:
        raise MigrationError(
            "refused to adopt this database (nothing changed):\n" + "\n".join(problems)
        )
    objects, concurrent = engine_objects(cat, todo)
    columns, rules = platform_changes(cat)
    breaking, last_id = await count_breaking(conn, cat, rules)
    legacy = [
        LegacyRows(table, rule.name, rule.says, breaking[rule.name])
        for table, rule in rules
        if breaking[rule.name]
    ]
    constraints = [
        Step(
            LOCKED,
            f"rule {rule.name}",
            constraint_sql(table, rule, last_id.get(table) if breaking[rule.name] else None),
            table=table,
        )
        for table, rule in rules
    ]
    covers = [m for m in todo if m.version <= BASELINE_VERSION]
    details = {
        "added": [s.sql.splitlines()[0] for s in (*objects, *columns)],
        "indexes_to_build": [s.sql.splitlines()[0] for s in concurrent],
        "rules": [r.name for _, r in rules],
        "legacy_rows": [r.as_json() for r in legacy],
        "migrations": [m.version for m in covers],
    }
    baseline = _by_version(todo, BASELINE_VERSION)
    in_tx = [
        Step(BASELINE, f"migration {baseline.version}_{baseline.name} as it is", baseline.sql),
        Step(BASELINE, "the opening state", query("take_baseline")),
        # From here on the statements take locks that hold the platform's writes back
        # (ALTER TABLE, foreign keys, triggers) until the commit: catalogue changes only.
        *objects,
        *columns,
        *(
            Step(LOCKED, f"migration {m.version}_{m.name} as it is", m.sql)
            for m in (_by_version(todo, v) for v in AS_IS)
        ),
        *constraints,
        Step(
            LOCKED,
            "the admin_audit 'adopt' row and sim_adoption",
            migrate_query("record_adoption"),
            (details, [r.as_json() for r in legacy]),
        ),
        Step(LOCKED, "schema_migrations", migrate_query("create_ledger")),
        *(
            Step(
                LOCKED,
                f"schema_migrations: {m.version}",
                migrate_query("record_migration"),
                (m.version, m.name, m.checksum),
            )
            for m in covers
        ),
    ]
    validate = [_validate(table, rule.name) for table, rule in rules]
    finish = Step(FINISH, "adoption complete", migrate_query("adoption_completed"))
    return AdoptionPlan(
        [*in_tx, *concurrent, *validate, finish], legacy, [m.version for m in covers]
    )


async def lock_blockers(conn: Conn, tables: Sequence[str]) -> str:
    """Who holds locks on these tables now (pid, state, how long): for the refusal's one line."""
    rows = await conn.fetch(migrate_query("lock_holders"), list(tables))
    if not rows:
        return "no holder seen now"
    return ", ".join(f"pid {r['pid']} ({r['state']}, in a transaction for {r['xact_s']} s)"
                     for r in rows)  # fmt: skip
