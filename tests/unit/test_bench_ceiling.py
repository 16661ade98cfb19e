"""The ceiling script ships with the package, so a clone or a wheel benches from anywhere; it
stays byte-identical to the shared one it copies whenever that is in reach (../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtools.bench.plan import CEILING_ENV, ceiling_file

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "bench" / "ceiling.pgb"


@pytest.mark.skipif(
    not SHARED.is_file(), reason="no ../shared/bench/ceiling.pgb next to this clone"
)
def test_the_packaged_ceiling_is_byte_identical_to_the_shared_one() -> None:
    assert (ROOT / "simtools" / "bench" / "ceiling.pgb").read_bytes() == SHARED.read_bytes()


def test_the_bench_uses_the_packaged_ceiling_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CEILING_ENV, raising=False)
    assert ceiling_file() == (ROOT / "simtools" / "bench" / "ceiling.pgb").resolve()
    assert ceiling_file().read_text().startswith("-- The database ceiling")
    other = tmp_path / "other.pgb"
    monkeypatch.setenv(CEILING_ENV, str(other))
    assert ceiling_file() == other
