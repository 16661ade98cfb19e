"""A withdrawal's life: pending → processing → completed | failed. A request reserves the crypto
(the engine never sells it), completion removes it from the holding, failure releases it."""

from __future__ import annotations

from typing import Final

from engine.errors import Rejected

STATUSES: Final = ("pending", "processing", "completed", "failed")
# The statuses each step starts from, and the one it ends in.
FROM: Final[dict[str, tuple[str, ...]]] = {
    "process": ("pending",),
    "complete": ("processing",),
    "fail": ("pending", "processing"),
}
TO: Final[dict[str, str]] = {"process": "processing", "complete": "completed", "fail": "failed"}


def next_status(withdrawal_id: int, status: str, step: str) -> str:
    """The status `step` moves a withdrawal in `status` to; Rejected for any other move."""
    if status not in FROM[step]:
        raise Rejected(
            f"withdrawal {withdrawal_id} is {status}: cannot {step} "
            f"(allowed from {' or '.join(FROM[step])})"
        )
    return TO[step]
