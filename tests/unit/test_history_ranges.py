"""A checkpoint's id ranges: every id of (lo, hi] in exactly one range, and every block of
BLOCK ids in one range only (the bench's fill found a block stored twice, a duplicate key that
failed every checkpoint whose window crossed a multiple of CHUNK_IDS)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.chain import BLOCK
from store.history import CHUNK_IDS, _ranges

# Any multiple of BLOCK behaves alike; a small one keeps the examples small.
STEP = BLOCK * 16


def test_the_chunk_is_a_multiple_of_the_block() -> None:
    assert CHUNK_IDS % BLOCK == 0


@given(st.integers(0, 5 * STEP), st.integers(0, 5 * STEP))
def test_each_id_and_each_block_falls_in_one_range(lo: int, span: int) -> None:
    hi = lo + span
    ranges = list(_ranges(lo, hi, STEP))
    covered = [i for a, b in ranges for i in range(a + 1, b + 1)]
    assert covered == list(range(lo + 1, hi + 1))
    blocks = [{i // BLOCK for i in range(a + 1, b + 1)} for a, b in ranges]
    for x in range(len(blocks)):
        for y in range(x + 1, len(blocks)):
            assert not blocks[x] & blocks[y], (ranges[x], ranges[y])


def test_a_window_across_a_multiple_of_the_chunk_splits_between_blocks() -> None:
    assert list(_ranges(36_675, 74_154, STEP)) == [(36_675, 65_535), (65_535, 74_154)]
