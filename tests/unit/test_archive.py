"""The archive's files without a database: lines filed by day, a batch appended then settled
either way, and a manifest that never names a file outside its folder."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from store.archive import ArchiveError, ArchiveWriter, id_runs, line_day, load_manifest, read_lines

RUN = "7|3|2026-06-01T23:55:00.000000Z|2026-06-02T00:00:01.000000Z|\\N|applied|1"
TRADE = "9|3|buy|BTC|0.01|65000.00000000|650.00000000|0.65000000|t|1000|349.35|7|\\N|2026-06-02T00:00:01.000000Z"
LEDGER = "11|3|buy|-650.65000000|USD|completed|trade:9|a | in it|7|2026-06-02T00:00:01.000000Z"
FLOORS = {"trades": 0, "transactions": 0, "sim_runs": 0}


def test_a_line_is_filed_under_its_slot_or_its_creation_day() -> None:
    assert line_day("sim_runs", RUN) == "2026-06-01"  # the slot, not when it ran
    assert line_day("trades", TRADE) == "2026-06-02"
    assert line_day("transactions", LEDGER) == "2026-06-02"  # a '|' in the description


def test_ids_are_kept_as_runs() -> None:
    assert id_runs([5, 3, 4, 9, 10, 12]) == [[3, 5], [9, 10], [12, 12]]
    assert id_runs([]) == []


def test_a_batch_not_committed_is_cut_back_and_a_committed_one_stands(tmp_path: Path) -> None:
    writer = ArchiveWriter.open(tmp_path, "db-1", FLOORS)
    writer.begin("sim_runs", [(7, RUN)])
    writer.done()
    path = tmp_path / "sim_runs" / "2026-06-01.lines.gz"
    settled = path.read_bytes()
    second = RUN.replace("7|3|", "8|3|", 1)
    # Appended, then "killed" before the delete committed: the next opener cuts it back.
    writer.begin("sim_runs", [(8, second)])
    assert path.stat().st_size > len(settled)
    reopened = ArchiveWriter.open(tmp_path, "db-1", FLOORS)
    assert reopened.pending is not None and reopened.pending.ids == [8]
    reopened.settle(committed=False)
    assert path.read_bytes() == settled and read_lines(path) == [RUN]
    # Appended and committed, then killed before the manifest said so: the lines stand.
    reopened.begin("sim_runs", [(8, second)])
    again = ArchiveWriter.open(tmp_path, "db-1", FLOORS)
    again.settle(committed=True)
    again.check_sizes()
    assert read_lines(path) == [RUN, second]
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"][
        "sim_runs/2026-06-01.lines.gz"
    ]
    assert entry["rows"] == 2 and entry["bytes"] == path.stat().st_size
    assert gzip.decompress(path.read_bytes()).decode() == RUN + "\n" + second + "\n"


def test_an_archive_changed_behind_its_manifest_is_not_appended_to(tmp_path: Path) -> None:
    writer = ArchiveWriter.open(tmp_path, "db-1", FLOORS)
    writer.begin("trades", [(9, TRADE)])
    writer.done()
    path = tmp_path / "trades" / "2026-06-02.lines.gz"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ArchiveError, match=re.escape("2026-06-02.lines.gz")):
        ArchiveWriter.open(tmp_path, "db-1", FLOORS).check_sizes()
    with pytest.raises(ArchiveError, match="another database"):
        ArchiveWriter.open(tmp_path, "db-2", FLOORS)


@pytest.mark.parametrize(
    "name", ["../outside.lines.gz", "trades/../../x", "/etc/passwd", "users/2026-06-01.lines.gz"]
)
def test_a_manifest_naming_a_file_outside_the_archive_is_refused(tmp_path: Path, name: str) -> None:
    manifest = {"format": 1, "deployment": "db-1", "files": {name: {}}, "checkpoints": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match="cannot hold"):
        load_manifest(tmp_path)
