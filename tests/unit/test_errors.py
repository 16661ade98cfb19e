"""One error base: every error the project and its tools raise on purpose is a SimError, and
simctl maps the operator's ones to the same exit codes whatever their base."""

from __future__ import annotations

import pytest

from engine.errors import SimError
from simctl.app import exit_for
from simtools.bench.procs import BenchError
from simtools.drill.procs import DrillError
from simtools.harness.errors import ToolError
from simtools.harness.services import ServiceError
from store.errors import Misconfigured, NotFound, Refused, Unavailable
from workers.enqueue import RedisUnavailable
from workers.metrics import MetricsPortError


@pytest.mark.parametrize("error", [BenchError, DrillError, ServiceError])
def test_the_tools_errors_share_one_base(error: type[Exception]) -> None:
    assert issubclass(error, ToolError)
    assert issubclass(error, SimError)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RedisUnavailable, 2),
        (MetricsPortError, 2),
        (Unavailable, 2),
        (Misconfigured, 2),
        (Refused, 1),
        (NotFound, 1),
    ],
)
def test_exit_codes(error: type[SimError], code: int) -> None:
    assert issubclass(error, SimError)
    mapped = exit_for(error("one line"))
    assert mapped is not None
    assert mapped.code == code
    assert str(mapped) == "one line"


def test_a_bug_has_no_exit_code() -> None:
    assert exit_for(SimError("a bug")) is None
    assert exit_for(ValueError("a bug")) is None
