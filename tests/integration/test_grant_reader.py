"""simctl grant-reader makes a new reader role and never strips an existing one: pointed at the
cluster's admin or any role that is more than a reader it refuses and changes nothing; adopting
one only adds grants; the password comes from the environment (or a prompt), never argv."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from store.roles import READ_VIEWS
from tests.support.procs import simctl
from tests.support.services import url_for

VIEWS = set(READ_VIEWS)


async def snapshot(pg: asyncpg.Connection, role: str) -> dict[str, Any]:
    """Everything grant-reader could change about a role: attributes, password, comment,
    memberships, and its privileges on this database, its schemas and its relations."""
    row = await pg.fetchrow(
        """SELECT a.rolsuper, a.rolcreatedb, a.rolcreaterole, a.rolreplication, a.rolbypassrls,
                  a.rolcanlogin, a.rolinherit, a.rolconnlimit, a.rolpassword, a.rolvaliduntil,
                  shobj_description(a.oid, 'pg_authid') AS comment,
                  (SELECT array_agg(roleid ORDER BY roleid) FROM pg_auth_members
                    WHERE member = a.oid) AS member_of,
                  (SELECT array_agg(c.relname || ':' || x.privilege_type ORDER BY 1)
                     FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) x
                    WHERE x.grantee = a.oid) AS relations,
                  (SELECT array_agg(n.nspname || ':' || x.privilege_type ORDER BY 1)
                     FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) x
                    WHERE x.grantee = a.oid) AS schemas,
                  (SELECT array_agg(x.privilege_type ORDER BY 1)
                     FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) x
                    WHERE d.datname = current_database() AND x.grantee = a.oid) AS db
             FROM pg_authid a WHERE a.rolname = $1""",
        role,
    )
    assert row is not None
    return dict(row)


def scram_matches(verifier: str, password: str) -> bool:
    """What Postgres checks at a SCRAM login: the password's ServerKey under the stored salt."""
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    server_key = base64.b64decode(keys.split(":")[1])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    computed = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return method == "SCRAM-SHA-256" and hmac.compare_digest(computed, server_key)


@pytest.fixture
async def role(pg: asyncpg.Connection, db_name: str) -> AsyncIterator[str]:
    """A role name of this test's; the role (cluster-wide) is dropped afterwards."""
    name = f"reader_{db_name[-12:]}"
    yield name
    if await pg.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        await pg.execute(f'DROP OWNED BY "{name}"')
        await pg.execute(f'DROP ROLE "{name}"')


def grant(
    args: list[str], env: dict[str, str], password: str | None = "s3cret-Reader"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in env.items() if k != "SIM_READER_PASSWORD"}
    if password is not None:
        env["SIM_READER_PASSWORD"] = password
    return simctl(["grant-reader", *args], env)


async def test_pointed_at_the_admin_it_refuses_and_changes_nothing(
    pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    admin = await pg.fetchval("SELECT current_user")
    before = await snapshot(pg, admin)
    result = grant([admin], env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "SUPERUSER" in result.stderr and "--adopt-existing-role" in result.stderr
    assert await snapshot(pg, admin) == before
    assert before["rolsuper"] and before["rolcreatedb"] and before["rolcreaterole"]


async def test_an_existing_role_is_refused_and_adopting_it_only_adds_grants(
    pg: asyncpg.Connection, env: dict[str, str], role: str, db_name: str
) -> None:
    await pg.execute(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD 'theirs'")
    await pg.execute(f'GRANT SELECT, UPDATE ON users TO "{role}"')
    before = await snapshot(pg, role)
    refused = grant([role], env)
    assert refused.returncode == 1 and "CREATEDB" in refused.stderr
    assert "privileges on users" in refused.stderr
    assert await snapshot(pg, role) == before

    adopted = grant([role, "--adopt-existing-role"], env)
    assert adopted.returncode == 0, adopted.stderr
    assert "keeps: CREATEDB" in adopted.stderr
    after = await snapshot(pg, role)
    # Nothing taken away: attributes, password and the grants it had are all still there.
    assert {k: v for k, v in after.items() if k not in ("relations", "schemas", "db")} == {
        k: v for k, v in before.items() if k not in ("relations", "schemas", "db")
    }
    assert set(before["relations"]) <= set(after["relations"])
    assert set(after["relations"]) - set(before["relations"]) == {f"{v}:SELECT" for v in VIEWS}
    reader = await asyncpg.connect(url_for(db_name).replace("postgres@", f"{role}@", 1))
    try:
        assert await reader.fetchval("SELECT count(*) FROM sim_pnl") == 0
    finally:
        await reader.close()


async def test_a_new_role_reads_the_views_not_the_tables_with_the_password_from_env(
    pg: asyncpg.Connection, env: dict[str, str], role: str, db_name: str
) -> None:
    created = grant([role], env, password="first-Secret")
    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    state = await snapshot(pg, role)
    assert state["rolcanlogin"]
    assert not any(state[k] for k in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolbypassrls"))
    assert scram_matches(state["rolpassword"], "first-Secret")
    assert not scram_matches(state["rolpassword"], "first-secret")
    assert set(state["relations"]) == {f"{v}:SELECT" for v in VIEWS}

    reader = await asyncpg.connect(url_for(db_name).replace("postgres@", f"{role}@", 1))
    try:
        assert await reader.fetchval("SELECT count(*) FROM sim_latest_prices") >= 0
        for forbidden in ("SELECT password_hash FROM users", "SELECT * FROM trades"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(forbidden)
    finally:
        await reader.close()

    # Run again: a reader made here is renewed; the environment's password replaces the old one.
    renewed = grant([role], env, password="second-Secret")
    assert renewed.returncode == 0 and "renewed" in renewed.stdout
    assert scram_matches((await snapshot(pg, role))["rolpassword"], "second-Secret")
    # Without a password source (no variable, no terminal) the password stays as it is.
    kept = grant([role], env, password=None)
    assert kept.returncode == 0, kept.stderr
    assert scram_matches((await snapshot(pg, role))["rolpassword"], "second-Secret")


async def test_a_new_role_needs_a_password_and_never_takes_it_from_argv(
    pg: asyncpg.Connection, env: dict[str, str], role: str
) -> None:
    no_source = grant([role], env, password=None)
    assert no_source.returncode == 2 and "SIM_READER_PASSWORD" in no_source.stderr
    on_argv = grant([role, "--password", "oops"], env, password=None)
    assert on_argv.returncode == 2
    assert await pg.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role) == 0
    help_text = grant(["--help"], env).stdout
    assert "SIM_READER_PASSWORD" in help_text and "--adopt-existing-role" in help_text
    assert "--password" not in help_text
