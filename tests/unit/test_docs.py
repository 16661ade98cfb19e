"""The docs stay true: every setting and every command is in the README, and every metric the
operations guide names exists."""

from __future__ import annotations

import re

from simconfig import Settings
from simctl.app import register_all
from tests.support.services import ROOT

README = (ROOT / "README.md").read_text()
app = register_all()


def test_every_setting_is_in_the_readme_table() -> None:
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in README, name


def test_every_command_is_in_the_readme() -> None:
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    for name in commands - {None}:
        assert f"simctl {name}" in README, name


def test_the_two_commands_come_first() -> None:
    head = README.splitlines()[:8]
    assert any(line.startswith("scripts/run") for line in head)
    assert any(line.startswith("scripts/test") for line in head)


def test_metrics_named_in_the_operations_guide_exist() -> None:
    from workers import metrics

    text = (ROOT / "docs" / "operations.md").read_text()
    exposed = {m._name for m in vars(metrics).values() if hasattr(m, "_name")}
    named = set(re.findall(r"`(simengine_[a-z_]+?)(?:_total)?(?:\{[^`]*\})?`", text))
    assert len(named) >= 8
    for name in named:
        assert name in exposed, name


def test_the_grafana_dashboard_only_queries_metrics_that_exist() -> None:
    import json

    from workers import metrics

    dashboard = json.loads((ROOT / "docs" / "grafana" / "simengine-dashboard.json").read_text())
    exposed = {m._name for m in vars(metrics).values() if hasattr(m, "_name")}
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"(simengine_[a-z_]+)", target["expr"])
    }
    assert len(used) >= 8
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in exposed, name


def test_the_docs_cite_nothing_a_reader_of_the_repository_cannot_look_up() -> None:
    # Issue numbers and the contract's section numbers point outside the repository.
    outside = re.compile(r"[Ii]ssue \d+|§|CONTRACT\.md|\.\./shared/")
    for page in sorted((ROOT / "docs").glob("*.md")):
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not outside.search(line), f"{page.name}:{number}: {line}"


def test_bench_tables_are_appended_under_a_section_that_expects_them() -> None:
    # `simctl bench --docs` appends at the end of its file: the last section must be the one that
    # says what to do with the tables it receives, not the end of some other section.
    source = (ROOT / "simctl" / "bench.py").read_text()
    found = re.search(r'bench_docs = Path\("([^"]+)"\)', source)
    assert found is not None
    target = (ROOT / found.group(1)).read_text()
    # A run's table starts with a heading of its own: "## <when> (full)".
    headings = [
        line
        for line in target.splitlines()
        if line.startswith("## ") and not re.match(r"## \d{4}-\d\d-\d\dT", line)
    ]
    assert headings[-1] in ("## Tables appended by `--docs`", "## Full runs"), headings[-1]
    assert "(bench-log.md)" in (ROOT / "docs" / "benchmarks.md").read_text()
