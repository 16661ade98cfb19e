"""SQL kept as files: numbered migrations and named queries, loaded once at start."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_QUERY_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(directory: Path = SQL_DIR / "migrations") -> list[Migration]:
    """Every migration file, in version order."""
    out = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        out.append(Migration(match.group(1), match.group(2), path.read_text()))
    return out


@cache
def queries(file: str = "queries.sql") -> dict[str, str]:
    """Named queries from a file in sql/ (sql/queries.sql unless named): blocks headed
    `-- name --`."""
    text = (SQL_DIR / file).read_text()
    parts = _QUERY_HEADER.split(text)
    named = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}
    return named


def query(name: str, file: str = "queries.sql") -> str:
    """One named query; KeyError names the missing one."""
    return queries(file)[name]
