"""The archive retention writes before it deletes (`simctl prune --archive DIR`) and what
`simctl archive verify DIR` checks.

Layout of DIR:
- `<table>/<YYYY-MM-DD>.lines.gz`: the canonical lines (sql/history.sql, what the checkpoint
  chain hashes) of the engine rows of one table whose day (UTC) it is: a trade's or a ledger
  row's `created_at`, a run's `scheduled_for`. One line per row, in the order deleted; the file
  is a series of gzip members, one per batch that deleted rows of that day (`gzip -dc` reads it
  whole).
- `checkpoints/<id>.json`: a checkpoint whose window holds archived rows, as the database holds
  it: its cuts and those of the one before, rows and hashes per table, window and chain hash,
  and every block (rows, hash) per table: what re-deriving the chain from the lines needs.
  Written once, never changed.
- `manifest.json`: every file with its table, day, rows, bytes and SHA-256; every checkpoint file
  with its SHA-256 and chain hash; the database it came from; the floors it started at.

Crash safety. A batch (one transaction in the database) goes: (1) the manifest is rewritten
with the batch as `pending` (the ids it deletes, and each file's length before and after);
(2) the lines are appended to the day files and fsynced; (3) the delete commits; (4) the
manifest is rewritten with the batch settled. The manifest is always replaced whole (a temporary
file, fsync, rename, fsync of the folder), so it is either the old or the new one. A prune killed
anywhere leaves at most one pending batch; the next `prune --archive DIR` settles it before
anything else: if the batch's rows are gone from the database its delete committed and the
appended lines stand; if they are still there it did not, and the files are cut back to their
length before it, so the rows are archived (once) when they are deleted. So every deleted row is
in a file and no line is there twice. Appending a gzip member (rather than rewriting a day's file
through a temporary one) keeps each batch's cost to its own rows: a day's file grows to millions
of lines, and rewriting it per batch would be quadratic.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.chain import block_hash, block_of
from store.errors import Refused

MANIFEST = "manifest.json"
FORMAT = 1
_FILE_NAME = re.compile(r"^(trades|transactions|sim_runs)/[0-9]{4}-[0-9]{2}-[0-9]{2}\.lines\.gz$")
_CHECKPOINT_NAME = re.compile(r"^checkpoints/[0-9]{1,19}\.json$")


class ArchiveError(Refused):
    """An archive file is missing, altered, or does not agree with the chain; names the file."""


# -- the chain's leaves, from lines (engine/chain.py defines them) ------------------------------
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def block_hashes(lines: Iterable[tuple[int, str]]) -> list[tuple[int, int, str]]:
    """(block, rows, hash) per block, in block order, of (id, canonical line) in any order."""
    blocks: dict[int, list[tuple[int, str]]] = {}
    for row_id, line in lines:
        blocks.setdefault(block_of(row_id), []).append((row_id, line))
    out = []
    for block in sorted(blocks):
        rows = sorted(blocks[block])
        out.append((block, len(rows), block_hash(line for _, line in rows)))
    return out


def id_runs(ids: Iterable[int]) -> list[list[int]]:
    """Ids as [first, last] runs of consecutive ids (a batch's are nearly consecutive)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def line_day(table: str, line: str) -> str:
    """The UTC day a line is filed under: a run's slot (third field), else the row's created_at
    (last field; a ledger description may hold '|', the fields before it cannot)."""
    stamp = line.split("|", 3)[2] if table == "sim_runs" else line.rsplit("|", 1)[1]
    return stamp[:10]


def line_id(line: str) -> int:
    return int(line.split("|", 1)[0])


# -- files ----------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` whole: a temporary file beside it, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _file_sha(path: Path, length: int | None = None) -> str:
    h = hashlib.sha256()
    remaining = length
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return h.hexdigest()


def read_lines(path: Path) -> list[str]:
    """The lines of an archive file (every gzip member)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
        return [line.removesuffix("\n") for line in f]


def load_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of DIR, None when there is none yet; ArchiveError when it is unreadable."""
    path = directory / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(data)
    except ValueError:
        raise ArchiveError(f"{path}: not a JSON manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{path}: not a simengine archive manifest (format {FORMAT})")
    # Only names this module writes: a manifest never steers a read, an append or a truncate
    # outside DIR.
    pending = manifest.get("pending") or {}
    names = [*manifest.get("files", {}), *pending.get("files", {})]
    names += [e.get("file", "") for e in manifest.get("checkpoints", {}).values()]
    for name in names:
        if not (_FILE_NAME.match(name) or _CHECKPOINT_NAME.match(name)):
            raise ArchiveError(f"{path}: names a file this archive cannot hold: {name[:80]!r}")
    return manifest


def _dump(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


@dataclass
class PendingBatch:
    table: str
    id_ranges: list[list[int]]  # [first, last] runs of the ids the batch deletes
    files: dict[str, dict[str, Any]]

    @property
    def rows(self) -> int:
        return sum(last - first + 1 for first, last in self.id_ranges)

    @property
    def ids(self) -> list[int]:
        return [i for first, last in self.id_ranges for i in range(first, last + 1)]


@dataclass
class ArchiveWriter:
    """Appends the lines of each deleted batch to DIR (see the module's doc for the protocol)."""

    directory: Path
    manifest: dict[str, Any]
    # Running SHA-256 of each file appended to in this run (read once, then fed each member).
    _hashers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path, deployment: str, floors: Mapping[str, int]) -> ArchiveWriter:
        """The archive in DIR (made, with its manifest, if new); refused if it belongs to
        another database."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot make {directory}: {exc.strerror or exc}") from None
        manifest = load_manifest(directory)
        if manifest is None:
            manifest = {
                "format": FORMAT,
                "deployment": deployment,
                "floors_at_start": dict(floors),
                "files": {},
                "checkpoints": {},
                "pending": None,
            }
            write_atomic(directory / MANIFEST, _dump(manifest))
        elif manifest.get("deployment") != deployment:
            raise ArchiveError(
                f"{directory / MANIFEST}: this archive belongs to another database "
                f"(deployment {manifest.get('deployment')}), not {deployment}"
            )
        return cls(directory, manifest)

    @property
    def pending(self) -> PendingBatch | None:
        p = self.manifest.get("pending")
        if p is None:
            return None
        return PendingBatch(p["table"], [list(r) for r in p["ids"]], p["files"])

    def settle(self, committed: bool) -> None:
        """Finish an interrupted batch: keep its lines if its delete committed, else cut each
        file back to its length before the batch."""
        pending = self.pending
        if pending is None:
            return
        files = self.manifest["files"]
        for name, change in pending.files.items():
            path = self.directory / name
            if committed:
                files[name] = change["after"]
            else:
                before = change["before"]
                if before is None:
                    path.unlink(missing_ok=True)
                elif path.exists():
                    os.truncate(path, before["bytes"])
                self._hashers.pop(name, None)
        self.manifest["pending"] = None
        self._save()

    def check_sizes(self) -> None:
        """Every file as long as its manifest says (once a pending batch is settled nothing
        else appends): a file that is missing, shorter or longer was changed by something else,
        and nothing is appended to an archive in that state."""
        for name, entry in sorted(self.manifest["files"].items()):
            path = self.directory / name
            size = path.stat().st_size if path.exists() else None
            if size != entry["bytes"]:
                found = "missing" if size is None else f"{size} bytes, not {entry['bytes']}"
                raise ArchiveError(
                    f"{path}: {found} as the manifest says; restore it (`simctl archive "
                    "verify` names what differs) before pruning into this archive"
                )

    def add_checkpoints(self, checkpoints: Sequence[Mapping[str, Any]]) -> None:
        """Record the checkpoints the archived rows belong to (each written once)."""
        folder = self.directory / "checkpoints"
        known = self.manifest["checkpoints"]
        added = False
        for cp in checkpoints:
            key = str(cp["id"])
            if key in known:
                continue
            folder.mkdir(exist_ok=True)
            data = _dump(cp)
            name = f"checkpoints/{cp['id']}.json"
            write_atomic(self.directory / name, data)
            known[key] = {
                "file": name,
                "sha256": sha256_hex(data),
                "chain_hash": cp["chain_hash"],
                "window_hash": cp["window_hash"],
                "prev_id": cp["prev_id"],
            }
            added = True
        if added:
            self._save()

    def begin(self, table: str, rows: Sequence[tuple[int, str]]) -> None:
        """Steps (1) and (2) for a batch of deleted rows (id, line): pending recorded, lines
        appended and fsynced. The caller commits the delete, then calls `done`."""
        if self.pending is not None:
            raise AssertionError("a pending batch must be settled first")
        self.append(table, rows)

    def append(self, table: str, rows: Sequence[tuple[int, str]]) -> None:
        """Steps (1) and (2) for more rows of the pending batch (a new one if none is): the
        pending record grows by their ids and by each file's length after them, and is saved
        before their lines are appended and fsynced. A batch too large to hold in memory (a
        day partition's runs) is appended a chunk at a time; a prune killed between two
        chunks leaves a pending batch whose rows are all still there, so the next prune cuts
        its files back to where they were before it."""
        pending = self.manifest.get("pending")
        if pending is not None and pending["table"] != table:
            raise AssertionError("a pending batch of another table must be settled first")
        by_day: dict[str, list[str]] = {}
        for _, line in rows:
            if "\n" in line or "\r" in line:
                raise ArchiveError(f"a {table} row holds a line break: {line[:60]!r}")
            by_day.setdefault(line_day(table, line), []).append(line)
        changes: dict[str, dict[str, Any]] = dict(pending["files"]) if pending else {}
        members: dict[str, bytes] = {}
        for day, lines in sorted(by_day.items()):
            name = f"{table}/{day}.lines.gz"
            # Level 6 (gzip's own default): level 9 took 3x the time for 1 % less.
            member = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)
            before = (
                changes[name]["before"] if name in changes else self.manifest["files"].get(name)
            )
            now = changes[name]["after"] if name in changes else before
            after_hasher = self._hasher(name, before).copy()
            after_hasher.update(member)
            changes[name] = {
                "before": before,
                "after": {
                    "table": table,
                    "day": day,
                    "rows": (now["rows"] if now else 0) + len(lines),
                    "bytes": (now["bytes"] if now else 0) + len(member),
                    "sha256": after_hasher.hexdigest(),
                },
            }
            members[name] = member
        ids = [list(r) for r in pending["ids"]] if pending else []
        for first, last in id_runs(row_id for row_id, _ in rows):
            if ids and ids[-1][1] == first - 1:
                ids[-1][1] = last
            else:
                ids.append([first, last])
        self.manifest["pending"] = {"table": table, "ids": ids, "files": changes}
        self._save()
        for name, member in members.items():
            path = self.directory / name
            created = not path.exists()
            path.parent.mkdir(exist_ok=True)
            with open(path, "ab") as f:
                f.write(member)
                f.flush()
                os.fsync(f.fileno())
            if created:
                _fsync_dir(path.parent)
            self._hashers[name].update(member)

    def done(self) -> None:
        """Step (4): the batch's delete committed; its lines stand."""
        self.settle(committed=True)

    def digest(self) -> str:
        """SHA-256 of the manifest as it stands (the audit row records it)."""
        return sha256_hex(_dump(self.manifest))

    def _hasher(self, name: str, entry: Mapping[str, Any] | None) -> Any:
        hasher = self._hashers.get(name)
        if hasher is not None:
            return hasher
        hasher = hashlib.sha256()
        if entry is not None:
            path = self.directory / name
            with open(path, "rb") as f:
                remaining = entry["bytes"]
                while remaining > 0:
                    chunk = f.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    remaining -= len(chunk)
            if hasher.hexdigest() != entry["sha256"]:
                raise ArchiveError(
                    f"{path}: does not match its manifest (SHA-256); refusing to append to it"
                )
        self._hashers[name] = hasher
        return hasher

    def _save(self) -> None:
        write_atomic(self.directory / MANIFEST, _dump(self.manifest))


# -- verify ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    table: str
    lines: list[str]


def check_files(directory: Path, manifest: Mapping[str, Any]) -> Iterator[FileCheck]:
    """Each file of the manifest, in name order, against its SHA-256, size and rows; the first
    bad or missing one raises ArchiveError naming it."""
    if manifest.get("pending") is not None:
        raise ArchiveError(
            f"{directory / MANIFEST}: a prune into this archive was interrupted; run the same "
            "`simctl prune --archive` again to settle it, then verify"
        )
    for name, cp in sorted(manifest.get("checkpoints", {}).items(), key=lambda kv: int(kv[0])):
        path = directory / cp["file"]
        if not path.is_file():
            raise ArchiveError(f"{path}: missing (checkpoint {name})")
        if _file_sha(path) != cp["sha256"]:
            raise ArchiveError(f"{path}: SHA-256 differs from the manifest")
    for name, entry in sorted(manifest.get("files", {}).items()):
        path = directory / name
        if not path.is_file():
            raise ArchiveError(f"{path}: missing")
        size = path.stat().st_size
        if size != entry["bytes"] or _file_sha(path) != entry["sha256"]:
            raise ArchiveError(f"{path}: SHA-256 differs from the manifest ({size} bytes)")
        try:
            lines = read_lines(path)
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
            raise ArchiveError(f"{path}: unreadable: {exc}") from None
        if len(lines) != entry["rows"]:
            raise ArchiveError(f"{path}: {len(lines)} rows, the manifest says {entry['rows']}")
        table = entry["table"]
        for line in lines:
            if line_day(table, line) != entry["day"]:
                raise ArchiveError(f"{path}: holds a row of another day: {line[:40]!r}")
        yield FileCheck(name, table, lines)


def load_checkpoint(directory: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / entry["file"]).read_bytes())
    return data
