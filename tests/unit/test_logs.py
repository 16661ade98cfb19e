"""One format per process: our events and the stdlib records of arq and asyncio render alike,
and an exception keeps its whole traceback (as structured frames in JSON)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging
from simconfig import Settings
from workers.logs import configure_logging, get_logger

configure_logging(Settings(_env_file=None, sim_log_json=True))

def inner():
    raise ValueError("deep down\\nsecond line")

try:
    inner()
except ValueError as exc:
    get_logger("simengine.test").error("ours.failed", exc_info=exc, user_id=7)
    logging.getLogger("arq.worker").exception("job %s failed", "sim:abc")
logging.getLogger("asyncio").warning("slow callback")
logging.getLogger("arq.worker").info("per-job chatter, hidden below WARNING")
"""


def test_structlog_and_stdlib_records_render_as_one_json_stream_with_tracebacks() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    )
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["event"] for r in records] == [
        "ours.failed",
        "job sim:abc failed",
        "slow callback",
    ]
    ours, arqs, aio = records
    assert ours["user_id"] == 7 and ours["level"] == "error"
    assert arqs["logger"] == "arq.worker" and arqs["level"] == "error"
    assert aio["logger"] == "asyncio" and aio["level"] == "warning"
    for record in (ours, arqs):
        (exc,) = record["exception"]
        assert exc["exc_type"] == "ValueError"
        assert exc["exc_value"] == "deep down\nsecond line"  # the whole message, not line one
        assert [f["name"] for f in exc["frames"]][-1] == "inner"  # down to the raising frame
    assert all("timestamp" in r for r in records)


def test_text_values_are_logged_with_control_characters_escaped() -> None:
    from workers.logs import escape_controls

    event = {"event": "run.failed", "error": "Eve\x1b[2J\nfake line", "user_id": 7}
    assert escape_controls(None, "error", event) == {
        "event": "run.failed",
        "error": "Eve\\x1b[2J\\nfake line",
        "user_id": 7,
    }


SECRET_SCRIPT = """
from simconfig import Settings
from workers.logs import configure_logging, get_logger

settings = Settings(
    _env_file=None,
    sim_log_json={as_json},
    sim_admin_key="adminkey-TOPSECRET",
    database_url="postgresql://engine:pw-TOPSECRET@127.0.0.1/db",
)
configure_logging(settings)

def inner(settings):
    raise ValueError("boom")

try:
    inner(settings)
except ValueError as exc:
    get_logger("simengine.test").error("ours.failed", exc_info=exc)
print(repr(settings))
"""


def test_a_logged_traceback_and_the_settings_repr_show_no_secret() -> None:
    # A traceback's frames hold the settings: their locals, and the settings' repr, stay out.
    for as_json in (True, False):
        result = subprocess.run(
            [sys.executable, "-c", SECRET_SCRIPT.format(as_json=as_json)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "ours.failed" in result.stderr and "boom" in result.stderr
        assert "TOPSECRET" not in result.stderr + result.stdout
