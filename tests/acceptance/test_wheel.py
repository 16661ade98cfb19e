"""The package deploys: a wheel built from a clean clone of HEAD, installed into a fresh venv the
way an image installs it, migrates an empty database and runs users with no source tree in reach.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.db import connect
from tests.support.procs import wait_until
from tests.support.services import ROOT, create_database, drop_database, url_for

pytestmark = pytest.mark.timeout(600)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


class Installed:
    """A venv holding only the wheel (base install) and its locked dependencies."""

    def __init__(self, venv: Path, wheel: Path, migrations: int, home: Path) -> None:
        self.venv, self.wheel, self.migrations, self.home = venv, wheel, migrations, home

    def simctl(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        # No source tree in reach: an empty working directory and no PYTHONPATH.
        env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            [str(self.venv / "bin" / "simctl"), *args],
            env=env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


def _build(tmp: Path) -> None:
    """Clone HEAD, build its wheel, install it with the locked dependencies into a fresh venv."""
    head = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
    src = tmp / "src"
    _run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(src)])
    _run(["git", "-C", str(src), "checkout", "--quiet", head])
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("simengine-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(src / "constraints.txt"),
            str(wheel),
        ],
        cwd=tmp,
    )
    (tmp / "elsewhere").mkdir()
    (tmp / "built").write_text(str(wheel))


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One clean clone, one wheel, one venv for the whole run: xdist workers share it through
    the run's common temp directory, the first one builds it under a lock."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    tmp = shared / "simengine-wheel"
    with open(shared / "simengine-wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tmp / "built").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _build(tmp)
    wheel = Path((tmp / "built").read_text())
    migrations = len(list((tmp / "src" / "sql" / "migrations").glob("*.sql")))
    return Installed(tmp / "venv", wheel, migrations, tmp / "elsewhere")


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A database with nothing in it: the first `migrate` of a deploy."""
    name = create_database("template0")
    yield url_for(name)
    drop_database(name)


def test_the_wheel_carries_the_sql_and_the_code_imports_from_the_venv(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "sql/queries.sql" in names
    # The bench runs from an installed wheel too: its package, its queries and its ceiling script
    # are there, beside it; the product's sql/ carries the product's SQL only.
    assert "simtools/bench/ceiling.pgb" in names and "simtools/bench/run.py" in names
    assert "simtools/bench/bench.sql" in names and "simtools/harness/services.py" in names
    assert "simtools/demo/run.py" in names
    # The console's templates and its vendored chart library ship with it.
    assert "console/templates/overview.html" in names and "console/static/console.js" in names
    assert "console/static/uplot-1.6.32.iife.min.js" in names
    assert "sql/bench.sql" not in names and "sql/drill.sql" not in names
    # The drill and the fairness table are a clone's tools.
    assert not [n for n in names if "drill" in n or n.startswith("simtools/fairness/")]
    assert len([n for n in names if n.startswith("sql/migrations/")]) == installed.migrations
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import store, sql; print(store.__file__, sql.__file__)",
        ],
        cwd=installed.home,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(installed.venv) for p in where)


def test_the_wheels_top_level_names_collide_with_nothing_installed_beside_it(
    installed: Installed,
) -> None:
    """The wheel keeps generic top-level names (engine, store, sql, ...): safe only while no
    package of the venv it is deployed into installs the same name."""
    ours = {
        n.split("/")[0]
        for n in zipfile.ZipFile(installed.wheel).namelist()
        if "/" in n and not n.split("/")[0].endswith(".dist-info")
    }
    assert {
        "engine",
        "store",
        "sql",
        "workers",
        "simctl",
        "simconfig",
        "simtools",
        "console",
    } <= ours
    script = (
        "import importlib.metadata as m, json\n"
        "names = {}\n"
        "for d in m.distributions():\n"
        "    if d.metadata['Name'].lower() == 'simengine':\n"
        "        continue\n"
        "    tops = {str(f).split('/')[0].removesuffix('.py') for f in (d.files or [])}\n"
        "    names[d.metadata['Name']] = sorted(tops)\n"
        "print(json.dumps(names))\n"
    )
    out = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", script],
        cwd=installed.home,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = json.loads(out)
    assert "asyncpg" in theirs  # the listing sees the dependencies
    clashes = {dist: sorted(ours & set(tops)) for dist, tops in theirs.items() if ours & set(tops)}
    assert clashes == {}


async def test_an_installed_wheel_migrates_an_empty_database_and_runs_users(
    installed: Installed, empty_db: str, env: dict[str, str]
) -> None:
    env = {**env, "DATABASE_URL": empty_db}
    migrate = installed.simctl(["migrate"], env)
    assert migrate.returncode == 0, migrate.stderr
    seed = installed.simctl(["seed-demo", "--users", "5", "--interval-s", "1"], env)
    assert seed.returncode == 0, seed.stderr
    conn = await connect(empty_db)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == installed.migrations

        async def all_due() -> bool:
            due = await conn.fetchval("SELECT count(*) FROM users WHERE sim_next_run_at <= now()")
            return bool(due == 5)

        await wait_until(all_due, 10, "the five first slots (spread over 1 s) to come due")
        scheduler = installed.simctl(["scheduler", "--once"], env)
        assert scheduler.returncode == 0, scheduler.stderr
        worker = installed.simctl(["worker", "--burst"], env)
        assert worker.returncode == 0, worker.stderr
        runs = await conn.fetch("SELECT user_id, count(*) AS n FROM sim_runs GROUP BY user_id")
        assert len(runs) == 5 and all(r["n"] == 1 for r in runs)
        again = installed.simctl(["migrate"], env)  # a second deploy's release step
        assert again.returncode == 0, again.stderr
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == applied
    finally:
        await conn.close()


def test_the_base_install_refuses_report_and_the_demo_naming_their_extras(
    installed: Installed, env: dict[str, str], tmp_path: Path
) -> None:
    result = installed.simctl(["report", "1", "--out", str(tmp_path / "x.png")], env)
    assert result.returncode == 2
    assert "pip install 'simengine[report]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    demo = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-m", "simtools.demo"],
        cwd=installed.home,
        env={**{k: v for k, v in env.items() if k != "PYTHONPATH"}, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert demo.returncode == 2
    assert "pip install 'simengine[demo]'" in demo.stderr
    console = installed.simctl(["console", "--port", "1"], env)
    assert console.returncode == 2
    assert "pip install 'simengine[console]'" in console.stderr
