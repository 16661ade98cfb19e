"""A tool's named queries: blocks headed `-- name --` in a .sql file inside the tool's package,
read with importlib.resources (so an installed wheel reads what a checkout reads)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from importlib.resources import files

from store.sqlfiles import named_blocks


@cache
def queries(package: str, file: str) -> dict[str, str]:
    """Every named query of `file` in `package` (e.g. "simtools.bench", "bench.sql")."""
    return named_blocks((files(package) / file).read_text(encoding="utf-8"))


def query(package: str, file: str, name: str) -> str:
    """One named query; KeyError names the missing one."""
    return queries(package, file)[name]


def query_file(package: str, file: str) -> Callable[[str], str]:
    """The lookup of one file's named queries, for a tool to bind once: `bench_query =
    query_file("simtools.bench", "bench.sql")`, then `bench_query("name")`."""
    return partial(query, package, file)
