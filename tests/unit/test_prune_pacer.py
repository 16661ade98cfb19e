"""How a prune paces its batches, without a database: each batch sized from how long the last
one's transaction held against the time budget (SIM_PRUNE_BATCH_MS), within [10, SIM_PRUNE_BATCH],
and a pause after each that keeps the pruner to its share of the time (SIM_PRUNE_DUTY)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.retention import MIN_BATCH_ROWS, Limits, Pacer


def test_a_prune_starts_small_and_grows_while_its_batches_are_quick() -> None:
    pacer = Pacer(Limits(batch=5000, batch_ms=250))
    assert pacer.rows == MIN_BATCH_ROWS
    sizes = []
    for _ in range(12):
        pacer.held(0.01)  # far under the budget: at most twice the rows next time
        sizes.append(pacer.rows)
    assert sizes == [20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000, 5000, 5000]


def test_a_slow_batch_shrinks_the_next_to_the_budget() -> None:
    pacer = Pacer(Limits(batch=5000, batch_ms=250))
    for _ in range(10):
        pacer.held(0.01)
    assert pacer.rows == 5000
    pacer.held(0.5)  # twice the budget: half the rows
    assert pacer.rows == 2500
    pacer.held(10.0)  # 40x the budget: a quarter at most per batch
    assert pacer.rows == 625
    pacer.held(0.25)  # on budget: stays
    assert pacer.rows == 625
    for _ in range(10):
        pacer.held(60.0)
    assert pacer.rows == MIN_BATCH_ROWS  # never below the floor


def test_a_batch_setting_under_the_floor_is_the_size() -> None:
    pacer = Pacer(Limits(batch=3, batch_ms=250))
    assert pacer.rows == 3
    pacer.held(0.0)
    assert pacer.rows == 3


@given(st.lists(st.floats(0.0, 100.0), max_size=60), st.integers(1, 100_000))
def test_every_size_is_within_the_floor_and_the_batch(helds: list[float], batch: int) -> None:
    pacer = Pacer(Limits(batch=batch, batch_ms=250))
    for held in helds:
        pacer.held(held)
        assert min(MIN_BATCH_ROWS, batch) <= pacer.rows <= batch


@given(st.lists(st.floats(0.25, 100.0), max_size=60))
def test_batches_at_or_over_the_budget_never_grow(helds: list[float]) -> None:
    pacer = Pacer(Limits(batch=5000, batch_ms=250))
    last = pacer.rows
    for held in helds:
        pacer.held(held)
        assert pacer.rows <= last
        last = pacer.rows


@pytest.mark.parametrize(
    ("duty", "pause_ms", "worked_s", "pause_s"),
    [
        (0.1, 50, 0.2, 1.8),  # works a tenth of the time: 9x what the batch took
        (0.25, 50, 0.2, 0.6),
        (0.5, 0, 0.2, 0.2),
        (0.1, 50, 0.001, 0.05),  # never less than SIM_PRUNE_PAUSE_MS
        (1.0, 50, 0.2, 0.05),  # duty 1: SIM_PRUNE_PAUSE_MS alone
        (1.0, 0, 0.2, 0.0),
        (0.01, 50, 1.0, 20.0),  # never more than a third of the lease (60 s)
    ],
)
def test_the_pause_keeps_the_pruner_to_its_duty(
    duty: float, pause_ms: int, worked_s: float, pause_s: float
) -> None:
    pacer = Pacer(Limits(pause_ms=pause_ms, duty=duty, lease_s=60))
    assert pacer.pause_s(worked_s) == pytest.approx(pause_s)
