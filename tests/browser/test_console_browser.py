"""The console in a real browser: headless Chromium from Debian's packages (chromium,
chromium-driver; scripts/test installs them) driven by Selenium through /usr/bin/chromedriver
(given explicitly, so Selenium Manager downloads nothing). A real scheduler, worker and
`simctl console --enable-actions` run as processes. Screenshots go to SIMENGINE_ARTIFACTS
(default artifacts/ in the checkout, ignored by git)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.procs import Proc, seed_due, spawn, stop, wait_until
from tests.support.services import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "browser-test-key-51c2"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
ARTIFACTS = Path(os.environ.get("SIMENGINE_ARTIFACTS", ROOT / "artifacts")) / "console"

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "the browser tier needs Debian's chromium and chromium-driver (scripts/test installs "
        "them: apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )

# Selenium Manager, if anything ever asked it, must not fetch a browser or a driver.
os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402 (only once the browser is known to be there)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_http(url: str, proc: Proc, limit_s: float = 60) -> None:
    """Until the console answers (or its process has died: fail with its output)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the console did not answer at {url}: {proc.output()}")
        time.sleep(0.1)  # polling a condition, with a deadline


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


# Counts the canvas's pixels that are not transparent: uPlot drew something.
_PAINTED = """
const canvas = document.querySelector(arguments[0] + ' canvas');
if (!canvas || !canvas.width || !canvas.height) return 0;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
return painted;
"""


async def test_the_console_live_a_users_chart_and_an_action_end_to_end(
    browser: WebDriver, pg: asyncpg.Connection, env: dict[str, str]
) -> None:
    await seed_due(pg, 40)
    await pg.execute("UPDATE users SET sim_interval_s = 1")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    console_env = {**env, "SIM_ADMIN_KEYS_SHA256": DIGEST}
    procs = [
        spawn(["scheduler"], env),
        spawn(["worker"], env),
        spawn(["console", "--port", str(port), "--refresh", "1", "--enable-actions"], console_env),
    ]
    try:
        _wait_http(base + "/api/overview", procs[2])

        # The overview while the worker runs: its numbers change without a reload.
        browser.get(base + "/?refresh=1")
        runs = browser.find_element(By.CSS_SELECTOR, '[data-k="runs_1h"]')
        first = runs.text
        WebDriverWait(browser, 60, poll_frequency=0.2).until(
            lambda d: runs.text not in (first, "", "-")
        )
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(_PAINTED, "#chart-runs") > 0)
        _shot(browser, "overview")
        # Pausing stops the polling: the counter of polls stands still.
        browser.find_element(By.ID, "pause").click()
        polls = browser.find_element(By.ID, "updated").get_attribute("data-polls")
        assert browser.find_element(By.ID, "pause").text == "resume"

        # A user's page: the tear sheet's chart is drawn.
        async def has_runs() -> bool:
            n: int = await pg.fetchval("SELECT count(*) FROM sim_runs WHERE user_id = 1")
            return n >= 3

        await wait_until(has_runs, 60, "three runs of user 1")
        browser.get(base + "/users/1")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.ID, "tearsheet").get_attribute("data-drawn") == "1"
        )
        assert browser.execute_script(_PAINTED, "#chart-pnl") > 0
        assert browser.execute_script(_PAINTED, "#chart-market") > 0
        assert "runs; P&L" in browser.find_element(By.ID, "summary").text
        _shot(browser, "user")
        assert polls is not None

        # The market: the stored prices up to now, drawn.
        browser.get(base + "/market")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.ID, "market").get_attribute("data-drawn") == "1"
        )
        assert browser.execute_script(_PAINTED, "#chart-prices") > 0
        _shot(browser, "market")

        # One action end to end: pause the users of a filter, from the dry run to the audit.
        browser.get(base + "/users?state=running")
        browser.find_element(By.ID, "bulk-pause").click()
        count = browser.find_element(By.ID, "count").text
        assert int(count) > 0
        _shot(browser, "confirm")
        browser.find_element(By.NAME, "admin_key").send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "#confirm button[type=submit]").click()
        message = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "message"))
        assert f"{count} user(s) changed" in message.text
        _shot(browser, "done")
        row = await pg.fetchrow(
            "SELECT admin_key, details FROM admin_audit WHERE action = 'bulk_pause'"
        )
        assert row is not None and row["admin_key"] == "sha256:" + DIGEST[:12]
        assert row["details"]["count"] == int(count)
        browser.get(base + "/audit?action=bulk_pause")
        assert "bulk_pause" in browser.find_element(By.ID, "audit").text
    finally:
        for proc in procs:
            stop(proc)
