"""A checkpoint's id ranges: every id of (lo, hi] in exactly one range, and every block of
BLOCK ids in one range only (the bench's fill found a block stored twice, a duplicate key that
failed every checkpoint whose window crossed a multiple of CHUNK_IDS)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.chain import BLOCK
from store.history import CHUNK_IDS, CHUNK_S, Paced, _ranges

# Any multiple of BLOCK behaves alike; a small one keeps the examples small.
STEP = BLOCK * 16


def test_the_chunk_is_a_multiple_of_the_block() -> None:
    assert CHUNK_IDS % BLOCK == 0


@settings(deadline=None)  # list building, slow on a loaded box; no time is judged
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


class Clock:
    """A clock the test moves: each range "takes" the next of `took` (cycled)."""

    def __init__(self, took: list[float]) -> None:
        self.now = 0.0
        self.took = took
        self.i = 0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.took[self.i % len(self.took)]
        self.i += 1


@settings(deadline=None)  # list building, slow on a loaded box; no time is judged
@given(
    st.integers(0, 5 * STEP),
    st.integers(0, 5 * STEP),
    st.lists(st.floats(0.0001, 10.0), min_size=1, max_size=50),
)
def test_paced_ranges_cover_each_id_once_and_never_split_a_block(
    lo: int, span: int, took: list[float]
) -> None:
    # Whatever the time each range takes (a quiet box, a loaded one, both in turn), the paced
    # ranges cover (lo, hi] exactly and each block falls in one range.
    hi = lo + span
    clock = Clock(took)
    ranges = []
    for r in Paced(clock).ranges(lo, hi):
        ranges.append(r)
        clock.tick()
    covered = [i for a, b in ranges for i in range(a + 1, b + 1)]
    assert covered == list(range(lo + 1, hi + 1))
    blocks = [{i // BLOCK for i in range(a + 1, b + 1)} for a, b in ranges]
    for x in range(len(blocks)):
        for y in range(x + 1, len(blocks)):
            assert not blocks[x] & blocks[y], (ranges[x], ranges[y])


def test_a_slow_range_shrinks_the_next_and_a_quick_one_grows_it() -> None:
    clock = Clock([10 * CHUNK_S])
    paced = Paced(clock)
    start = paced.blocks
    gen = paced.ranges(0, 100 * CHUNK_IDS)
    next(gen)
    clock.tick()  # ten times the budget
    a, b = next(gen)
    assert paced.blocks < start
    assert (b - a) <= BLOCK * paced.blocks
    shrunk = paced.blocks
    clock.took = [CHUNK_S / 10]
    clock.tick()  # a tenth of it: grows, at most twofold at a time
    next(gen)
    assert shrunk < paced.blocks <= 2 * shrunk
