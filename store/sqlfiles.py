"""SQL kept as files: numbered migrations and named queries, loaded once at start.

The files live in the top-level `sql` package and ship as its package data, so an installed
wheel reads the same SQL as a source checkout (importlib.resources, never a path next to ours).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

_QUERY_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


def sql_root() -> Traversable:
    """The `sql` package's files, wherever it is installed."""
    return files("sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every migration file, in version order."""
    folder = sql_root() / "migrations" if directory is None else directory
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise ValueError(f"migration file name must look like 0001_name.sql: {entry.name}")
        out.append(Migration(match.group(1), match.group(2), entry.read_text(encoding="utf-8")))
    return out


@cache
def queries(file: str = "queries.sql") -> dict[str, str]:
    """Named queries from a file in sql/ (sql/queries.sql unless named): blocks headed
    `-- name --`."""
    return named_blocks((sql_root() / file).read_text(encoding="utf-8"))


def named_blocks(text: str) -> dict[str, str]:
    """The blocks of a named-query file, by name (the tools read theirs with this too)."""
    parts = _QUERY_HEADER.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str, file: str = "queries.sql") -> str:
    """One named query; KeyError names the missing one."""
    return queries(file)[name]


def migrate_query(name: str) -> str:
    """One named query of sql/migrate.sql: the statements migrate and adoption run."""
    return query(name, "migrate.sql")
