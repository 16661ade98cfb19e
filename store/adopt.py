"""Adoption: bring a database that already holds the platform's tables (restored from its backup,
written by other services every second) up to the contract, without rewriting a legacy row.

What the migrations 0001-0002 declare for the platform's tables is declared again here as data
(`PLATFORM`): the columns the engine reads or writes, what types are compatible, what to add when
a column is missing, and the rules (CHECK constraints) the engine adds. Everything else in the
migrations (the engine's own tables, functions, views) is reused statement by statement.

The order is what keeps the platform running (docs/operations.md, "Installing on the platform's
existing database"):
1. check every column, refuse (nothing changed) on any incompatibility;
2. one transaction under `lock_timeout`, retried a bounded number of times: the engine's tables,
   the opening snapshot (`sim_baseline`, before any strong lock is taken), then the catalogue-only
   changes to the platform's tables (columns with constant defaults, rules `NOT VALID`), the
   views, the `admin_audit` row and the `schema_migrations` rows. All or nothing;
3. the indexes the engine needs on existing tables, `CREATE INDEX CONCURRENTLY`;
4. each rule validated where no legacy row breaks it; the rows that do are reported and kept.
Steps 3 and 4 are resumable: `sim_adoption.completed_at` stays NULL until they are done, and the
next `simctl migrate` finishes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from store.db import Conn
from store.errors import MigrationError

ASSETS = ("btc", "eth", "usdt", "usdc", "xrp", "ada")
ASSET_LIST = "('BTC', 'ETH', 'USDT', 'USDC', 'XRP', 'ADA')"

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
            *(_money(a, "numeric(18,8) NOT NULL DEFAULT 0") for a in ASSETS),
            _money("usd_value", "numeric(20,8) NOT NULL DEFAULT 0"),
            Col("updated_at", TS, _TS_NOW),
        ),
        tuple(Rule(f"sim_portfolio_{a}_nonneg", f"{a} >= 0", f"{a} >= 0") for a in ASSETS),
        (*ASSETS, "usd_value"),
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
            Rule("sim_trades_asset", f"asset IN {ASSET_LIST}", "asset is a known asset"),
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
            Rule("sim_withdrawals_asset", f"asset IN {ASSET_LIST}", "asset is a known asset"),
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
    functions: set[str]
    triggers: set[str]
    portfolio_unique_user: bool


async def read_catalogue(conn: Conn) -> Catalogue:
    """What the public schema holds now: tables, columns with their types, indexes, rules."""
    tables = {
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v')"
        )
    }
    columns = {
        (r["relname"], r["attname"]): ColumnInfo(r["typname"], r["atttypmod"], r["attnotnull"])
        for r in await conn.fetch(
            "SELECT c.relname, a.attname, t.typname, a.atttypmod, a.attnotnull "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND a.attnum > 0 AND NOT a.attisdropped"
        )
    }
    indexes = {
        r["relname"]: r["indisvalid"]
        for r in await conn.fetch(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
        )
    }
    constraints = {
        r["conname"]
        for r in await conn.fetch(
            "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = current_schema()"
        )
    }
    functions = {
        r["proname"]
        for r in await conn.fetch(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema()"
        )
    }
    triggers = {
        r["tgname"]
        for r in await conn.fetch(
            "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND NOT t.tgisinternal"
        )
    }
    # ON CONFLICT (user_id) needs a unique index on exactly that column.
    portfolio_unique_user = bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] "
            "WHERE n.nspname = current_schema() AND c.relname = 'portfolio' AND i.indisunique "
            "AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indisvalid AND a.attname = 'user_id')"
        )
    )
    return Catalogue(
        tables, columns, indexes, constraints, functions, triggers, portfolio_unique_user
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
    """One line per platform column the engine cannot use: table.column, found, needed."""
    problems: list[str] = []
    for table in PLATFORM:
        if table.name not in cat.tables:
            continue  # created from the migrations
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


# -- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    sql: str
    # "tx": inside the adoption's transaction; "concurrent": an index built outside it;
    # "validate": a rule validated after it, in its own statement.
    phase: str
    table: str | None = None


@dataclass(slots=True)
class Plan:
    tx: list[Step] = field(default_factory=list)
    concurrent: list[Step] = field(default_factory=list)
    rules: list[tuple[str, Rule]] = field(default_factory=list)
    # Tables that existed before adoption (their new rules are added NOT VALID).
    legacy_tables: set[str] = field(default_factory=set)


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


def plan_engine_objects(cat: Catalogue, migration_sql: Sequence[str], plan: Plan) -> None:
    """The statements of the schema migrations (0001, 0002) that still apply to this database:
    what creates a missing table, function or trigger, and the indexes on tables that existed
    (built concurrently after the transaction). Platform tables themselves are adopted by
    `plan_platform`, never re-created."""
    created: set[str] = set()
    for sql in migration_sql:
        for stmt in split_statements(sql):
            head = _STATEMENT_HEAD.match(stmt)
            if head is None:
                raise MigrationError(f"adoption cannot classify a migration statement: {stmt[:60]}")
            verb = " ".join(head["verb"].upper().split())
            name = head["name"].lower()
            on = (head["on"] or "").lower()
            body = _strip_comments(stmt)
            if verb == "CREATE TABLE":
                if name not in cat.tables:
                    plan.tx.append(Step(body, "tx", name))
                    created.add(name)
            elif verb in ("CREATE INDEX", "CREATE UNIQUE INDEX"):
                if cat.indexes.get(name):
                    continue
                if on in created:
                    plan.tx.append(Step(body, "tx", on))
                else:
                    concurrent = re.sub(
                        r"^(CREATE\s+(?:UNIQUE\s+)?INDEX)\s+",
                        r"\1 CONCURRENTLY ",
                        body.strip(),
                        flags=re.IGNORECASE,
                    )
                    plan.concurrent.append(Step(concurrent, "concurrent", on))
            elif verb == "CREATE FUNCTION":
                if name not in cat.functions:
                    plan.tx.append(Step(body, "tx"))
            elif verb == "CREATE TRIGGER":
                if name not in cat.triggers:
                    plan.tx.append(Step(body, "tx", on))
            elif verb == "INSERT INTO" or verb == "ALTER TABLE":
                if name in created:
                    plan.tx.append(Step(body, "tx", name))
                # On an existing (platform) table the columns come from PLATFORM.
            else:
                raise MigrationError(f"adoption does not expect {verb} in a schema migration")


def plan_platform(cat: Catalogue, plan: Plan) -> None:
    """Missing columns with their defaults, per legacy table; the rules the engine adds there."""
    for table in PLATFORM:
        if table.name not in cat.tables:
            continue
        plan.legacy_tables.add(table.name)
        adds = [
            f"ADD COLUMN {col.name} {col.add}"
            for col in table.columns
            if (table.name, col.name) not in cat.columns and col.add is not None
        ]
        if adds:
            plan.tx.append(
                Step(f"ALTER TABLE {table.name}\n    " + ",\n    ".join(adds), "tx", table.name)
            )
        rules = list(table.rules)
        for name in table.not_null:
            info = cat.columns.get((table.name, name))
            if info is not None and not info.not_null:
                rules.append(not_null_rule(table.name, name))
        plan.rules += [(table.name, r) for r in rules if r.name not in cat.constraints]


def rule_column(table: str, rule: Rule) -> str:
    """The one column a rule tests (every rule here tests one)."""
    names = {c.name for t in PLATFORM if t.name == table for c in t.columns}
    for word in re.findall(r"[a-z_]+", rule.check):
        if word in names:
            return str(word)
    raise AssertionError(f"rule {rule.name} names no column of {table}")


async def count_breaking(
    conn: Conn, cat: Catalogue, rules: Sequence[tuple[str, Rule]]
) -> dict[str, int]:
    """Legacy rows that break each rule (a CHECK passes NULL, so rows where it is false), one
    scan per table. A rule on a column adoption adds is kept by that column's default: 0."""
    counts: dict[str, int] = {}
    by_table: dict[str, list[Rule]] = {}
    for table, rule in rules:
        if (table, rule_column(table, rule)) in cat.columns:
            by_table.setdefault(table, []).append(rule)
        else:
            counts[rule.name] = 0
    for table, table_rules in by_table.items():
        # Identifiers and checks come from PLATFORM (constants), never from input.
        columns = ", ".join(f"count(*) FILTER (WHERE ({r.check}) IS FALSE)" for r in table_rules)
        row = await conn.fetchrow(f"SELECT {columns} FROM {table}")  # noqa: S608
        assert row is not None
        counts.update({r.name: int(row[i]) for i, r in enumerate(table_rules)})
    return counts


def constraint_sql(table: str, rule: Rule, legacy_upto: int | None) -> str:
    """The rule as a CHECK added NOT VALID (validated after the transaction). When legacy rows
    break it, it exempts the rows that existed (ids up to `legacy_upto`): a NOT VALID check
    still refuses every UPDATE of a breaking row, which would stop the platform's own writes to
    those rows; new rows get the rule."""
    check = rule.check if legacy_upto is None else f"id <= {int(legacy_upto)} OR ({rule.check})"
    return f"ALTER TABLE {table} ADD CONSTRAINT {rule.name} CHECK ({check}) NOT VALID"


async def lock_blockers(conn: Conn, tables: Sequence[str]) -> str:
    """Who holds locks on these tables now (pid, state, how long): for the refusal's one line."""
    rows = await conn.fetch(
        "SELECT DISTINCT a.pid, a.state, extract(epoch FROM now() - a.xact_start)::int AS xact_s "
        "FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE c.relname = ANY($1::text[]) AND l.pid <> pg_backend_pid() AND l.granted "
        "ORDER BY 1 LIMIT 3",
        list(tables),
    )
    if not rows:
        return "no holder seen now"
    return ", ".join(f"pid {r['pid']} ({r['state']}, in a transaction for {r['xact_s']} s)"
                     for r in rows)  # fmt: skip


def is_lock_timeout(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.LockNotAvailableError)
