"""Where simctl takes an admin key from: never an argument, a private file, the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from simctl.common import Exit, read_key_file, refuse_key_arguments


@pytest.mark.parametrize(
    "args",
    [["users", "pause", "1", "--admin-key", "sekrit-value"], ["--admin-key=sekrit-value", "users"]],
)
def test_a_key_argument_is_refused_without_echoing_it(args: list[str]) -> None:
    with pytest.raises(Exit) as caught:
        refuse_key_arguments(args)
    assert caught.value.code == 2
    assert "--admin-key-file" in str(caught.value) and "SIM_ADMIN_KEY" in str(caught.value)
    assert "sekrit" not in str(caught.value)


@pytest.mark.parametrize(
    "args",
    [
        ["users", "pause", "1", "--admin-key-file", "/k"],
        ["users", "pause", "1", "--admin-key-file=/k"],
        ["users", "create", "x@example.com", "--name", "--admin-keyring"],
        ["run", "--", "--admin-key"],
    ],
)
def test_other_arguments_pass(args: list[str]) -> None:
    refuse_key_arguments(args)


def test_a_key_file_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("secret \n\n")
    path.chmod(0o600)
    assert read_key_file(path) == "secret \n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_key_file_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    path.write_text("secret\n")
    path.chmod(mode)
    with pytest.raises(Exit) as caught:
        read_key_file(path)
    assert caught.value.code == 2 and str(path) in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_key_file_is_refused_naming_it(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "k"
    if content is not None:
        path.write_text(content)
        path.chmod(0o600)
    with pytest.raises(Exit) as caught:
        read_key_file(path)
    assert caught.value.code == 2 and str(path) in str(caught.value)
