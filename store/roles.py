"""Roles: the reader, a new login role with SELECT on the read views and nothing else.

It never strips an existing role: a role that exists is refused unless it already is exactly a
reader made here (then the grants are renewed), or the operator adopts it explicitly, and then
it only gains the read-view grants (no REVOKE, no ALTER ROLE, its password untouched).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field

from store.db import Conn, is_database_error
from store.errors import NotFound, Refused, first_line
from store.runs import audit
from store.sqlfiles import query

READ_VIEWS = ("sim_latest_prices", "sim_positions", "sim_pnl", "sim_activity", "sim_run_log")
# Marks a role made by simctl grant-reader (a comment on the role, shared by the cluster).
READER_COMMENT = "simengine reader: SELECT on the read views only (simctl grant-reader)"
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SCRAM_ITERATIONS = 4096  # Postgres' default scram_iterations


@dataclass(frozen=True)
class RoleState:
    """An existing role (or none) and what makes it other than a reader made here."""

    exists: bool
    differences: list[str] = field(default_factory=list)

    @property
    def is_reader(self) -> bool:
        return self.exists and not self.differences


@dataclass(frozen=True)
class GrantReport:
    action: str  # created, renewed (a reader made here) or adopted (an existing role)
    views: list[str]
    kept: list[str]  # what an adopted role keeps beyond the views
    password_set: bool


def check_role_name(role: str) -> None:
    """Refused unless `role` is a plain lower-case identifier (it is quoted anyway)."""
    if not _ROLE.match(role):
        raise Refused(f"role name must match {_ROLE.pattern}, got {role!r}")


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password`, computed here so the password
    itself never reaches the server (nor a statement log). Printable ASCII only: for it,
    SASLprep changes nothing, so the server's login check matches."""
    if not (password and password.isascii() and password.isprintable()):
        raise Refused("the reader's password must be non-empty printable ASCII")
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def role_state(conn: Conn, role: str) -> RoleState:
    """Whether `role` exists and, if so, how it differs from a reader made by grant_reader."""
    row = await conn.fetchrow(query("role_state"), role, list(READ_VIEWS))
    if row is None:
        return RoleState(False)
    found = [
        attr
        for attr, column in (
            ("SUPERUSER", "rolsuper"),
            ("CREATEDB", "rolcreatedb"),
            ("CREATEROLE", "rolcreaterole"),
            ("REPLICATION", "rolreplication"),
            ("BYPASSRLS", "rolbypassrls"),
        )
        if row[column]
    ]
    if not row["rolcanlogin"]:
        found.append("NOLOGIN")
    if row["member_of"]:
        found.append("member of " + ", ".join(row["member_of"]))
    if row["relation_privileges"]:
        names = row["relation_privileges"]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        found.append("privileges on " + ", ".join(names[:3]) + more)
    for key, what in (
        ("column_privileges", "column privileges"),
        ("schema_privileges", "schema privileges"),
        ("database_privileges", "database privileges beyond CONNECT"),
        ("owned_relations", "owned relations"),
        ("owned_databases", "owned databases"),
    ):
        if row[key]:
            found.append(f"{row[key]} {what}")
    if row["comment"] != READER_COMMENT:
        found.append("no grant-reader comment")
    return RoleState(True, found)


def refusal(role: str, state: RoleState) -> str:
    """The one line that refuses an existing role that is not (only) a reader."""
    return (
        f"role {role} already exists and is not a reader made by simctl grant-reader "
        f"({'; '.join(state.differences)}): nothing changed. Choose a new role name, or pass "
        "--adopt-existing-role to only add the read-view grants to it"
    )


async def _run(conn: Conn, template: str, *args: str) -> None:
    # Identifiers and literals cannot be bound parameters: format('%I', '%L') quotes them.
    placeholders = ", ".join(f"${i}::text" for i in range(2, len(args) + 2))
    statement = await conn.fetchval(f"SELECT format($1::text, {placeholders})", template, *args)
    await conn.execute(statement)


async def grant_reader(
    conn: Conn, role: str, *, verifier: str | None, adopt_existing: bool = False
) -> GrantReport:
    """Create `role` as a reader, renew the grants of a reader made here, or (adopt_existing)
    add the read-view grants to another existing role. Only ever grants; Refused otherwise."""
    check_role_name(role)
    async with conn.transaction():
        state = await role_state(conn, role)
        if not state.exists:
            action = "created"
            await _run(
                conn,
                "CREATE ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS" + (" PASSWORD %L" if verifier else ""),
                role,
                *([verifier] if verifier else []),
            )
            await _run(conn, "COMMENT ON ROLE %I IS %L", role, READER_COMMENT)
        elif state.is_reader:
            action = "renewed"
            if verifier:
                await _run(conn, "ALTER ROLE %I PASSWORD %L", role, verifier)
        elif adopt_existing:
            action = "adopted"
        else:
            raise Refused(refusal(role, state))
        db = await conn.fetchval(query("current_database"))
        await _run(conn, "GRANT CONNECT ON DATABASE %I TO %I", db, role)
        await _run(conn, "GRANT USAGE ON SCHEMA public TO %I", role)
        for view in READ_VIEWS:
            await _run(conn, "GRANT SELECT ON %I TO %I", view, role)
    return GrantReport(
        action,
        list(READ_VIEWS),
        state.differences if action == "adopted" else [],
        password_set=bool(verifier) and action != "adopted",
    )


async def readers(conn: Conn) -> list[str]:
    """The roles grant_reader made (its comment on the role), by name."""
    rows = await conn.fetch(query("readers", "console.sql"), READER_COMMENT)
    return [r["rolname"] for r in rows]


async def drop_reader(conn: Conn, actor: str, role: str) -> dict[str, object]:
    """Drop a reader made by grant_reader: its read-view grants, its CONNECT and the role, with
    an admin_audit row (drop_reader), in one transaction. Any other role is refused, nothing
    changed; so is a reader that still holds privileges in another database of the cluster."""
    check_role_name(role)
    async with conn.transaction():
        state = await role_state(conn, role)
        if not state.exists:
            raise NotFound(f"no role {role}")
        if not state.is_reader:
            raise Refused(
                f"role {role} is not a reader made by simctl grant-reader "
                f"({'; '.join(state.differences)}): not dropped"
            )
        db = await conn.fetchval(query("current_database"))
        for view in READ_VIEWS:
            await _run(conn, "REVOKE ALL ON %I FROM %I", view, role)
        await _run(conn, "REVOKE USAGE ON SCHEMA public FROM %I", role)
        await _run(conn, "REVOKE CONNECT ON DATABASE %I FROM %I", db, role)
        try:
            await _run(conn, "DROP ROLE %I", role)
        except Exception as exc:
            if not is_database_error(exc):
                raise
            raise Refused(f"role {role} not dropped: {first_line(exc)}") from None
        audit_id = await audit(conn, actor, "drop_reader", None, {"role": role, "database": db})
    return {"dropped": role, "audit_id": audit_id}
