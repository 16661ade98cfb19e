"""The hash chain over the engine's history (pure): how a checkpoint's window of rows becomes one
hash, and how the windows chain. Postgres computes the leaves (store/history.py, the same
definition in SQL); `simctl archive verify` recomputes them from archived lines with these.

- a row's line: its canonical text (sql/history.sql, rows_*);
- a block: the rows of one table whose ids share `id // BLOCK`, within one window; its hash is
  sha256 of their lines in id order joined by "\\n";
- a table's hash over a window: sha256 of "block:rows:hash" lines in block order joined by "\\n"
  (sha256 of "" for a window without rows of that table);
- a window's hash: sha256 of the three table hashes (trades, transactions, sim_runs) concatenated;
- the chain: sha256 of the previous checkpoint's chain hash (nothing for the first) and the
  window's hash concatenated.
All hashes are lower-case hex.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

BLOCK = 4096
TABLES = ("trades", "transactions", "sim_runs")


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def block_of(row_id: int) -> int:
    """The block a row id belongs to."""
    return row_id // BLOCK


def block_hash(lines: Iterable[str]) -> str:
    """A block's hash from its rows' lines, in id order."""
    return _hex("\n".join(lines))


def table_hash(blocks: Iterable[tuple[int, int, str]]) -> str:
    """A table's hash over a window from its blocks (block, rows, hash), in block order."""
    return _hex("\n".join(f"{block}:{rows}:{digest}" for block, rows, digest in blocks))


def window_hash(tables: Mapping[str, str]) -> str:
    """A window's hash from its three table hashes."""
    return _hex("".join(tables[t] for t in TABLES))


def chain_hash(previous: str | None, window: str) -> str:
    """A checkpoint's place in the chain: the previous chain hash and its own window's hash."""
    return _hex((previous or "") + window)
