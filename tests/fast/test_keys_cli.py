"""`fpcancel keys create|list|revoke`: the key printed once, never listed, revocation all told."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fpcancel.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    values = {"FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"}
    assert CliRunner().invoke(main, ["db", "upgrade"], env=values).exit_code == 0
    return values


def test_create_prints_the_key_once_on_stdout_and_list_never_shows_it(env: dict[str, str]) -> None:
    made = CliRunner().invoke(
        main, ["keys", "create", "--name", "php-shop", "--scope", "enqueue"], env=env
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("fpk_") and len(key) == 47
    assert "shown this once" in made.stderr
    listed = CliRunner().invoke(main, ["keys", "list", "--json"], env=env)
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["name"], r["scope"], r["prefix"]) for r in rows] == [
        (1, "php-shop", "enqueue", key[:12])
    ]
    table = CliRunner().invoke(main, ["keys", "list"], env=env)
    assert key not in listed.stdout + table.stdout and key[12:] not in table.stdout


def test_create_json_and_a_taken_name(env: dict[str, str]) -> None:
    made = CliRunner().invoke(
        main, ["keys", "create", "--name", "ops.anna", "--scope", "ops", "--json"], env=env
    )
    data = json.loads(made.stdout)
    assert (
        data["scope"] == "ops"
        and data["key"].startswith(data["prefix"])
        and data["revoked_at"] is None
    )
    again = CliRunner().invoke(
        main, ["keys", "create", "--name", "ops.anna", "--scope", "read"], env=env
    )
    assert again.exit_code == 2 and "--name" in again.stderr and "taken" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "bad name", "--scope", "read"],
        ["--name", "x", "--scope", "admin"],
        ["--scope", "read"],
    ],
)
def test_bad_create_arguments_exit_2(env: dict[str, str], args: list[str]) -> None:
    result = CliRunner().invoke(main, ["keys", "create", *args], env=env)
    assert result.exit_code == 2


def test_revoke_then_revoke_again_or_unknown_is_2(env: dict[str, str]) -> None:
    CliRunner().invoke(main, ["keys", "create", "--name", "a", "--scope", "read"], env=env)
    done = CliRunner().invoke(main, ["keys", "revoke", "1", "--json"], env=env)
    assert done.exit_code == 0 and json.loads(done.stdout)["revoked_at"]
    again = CliRunner().invoke(main, ["keys", "revoke", "1"], env=env)
    assert again.exit_code == 2 and "revoked already" in again.stderr
    unknown = CliRunner().invoke(main, ["keys", "revoke", "99"], env=env)
    assert unknown.exit_code == 2 and "no such key" in unknown.stderr
    huge = CliRunner().invoke(main, ["keys", "revoke", "9223372036854775808"], env=env)
    assert huge.exit_code == 2
    # A revoked key's name is free again.
    assert (
        CliRunner()
        .invoke(main, ["keys", "create", "--name", "a", "--scope", "read"], env=env)
        .exit_code
        == 0
    )
