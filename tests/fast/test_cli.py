"""The command line as a user meets it: exit codes, one-line reasons, nothing written on bad input."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from fpcancel.cli import main

BAD_IDS = ["../../etc/passwd", "ODR1 23", "", "A" * 70, "ODR1%2F.."]
BAD_NOTES = ["", "   ", "x" * 1001]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    values = {
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        # Nothing listens here: enqueue must still commit and warn (the scheduler sends it later).
        "FPCANCEL_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    for key in (
        "FRONTPAYMENT_TOKEN",
        "FRONTPAYMENT_BASE_URL",
        "FPCANCEL_MAX_ATTEMPTS",
        "FPCANCEL_RATE_LIMIT",
    ):
        monkeypatch.delenv(key, raising=False)
    result = CliRunner().invoke(main, ["db", "upgrade"], env=values)
    assert result.exit_code == 0, result.output
    return values


def job_count(env: dict[str, str]) -> int:
    engine = create_engine(env["FPCANCEL_DATABASE_URL"])
    with engine.connect() as c:
        count = c.execute(text("SELECT count(*) FROM cancel_jobs")).scalar_one()
    engine.dispose()
    return int(count)


@pytest.mark.parametrize("order", BAD_IDS)
def test_a_bad_order_id_exits_2_and_writes_nothing(env: dict[str, str], order: str) -> None:
    """Ids outside 1-64 of A-Z a-z 0-9 _ - are refused before the database is touched."""
    result = CliRunner().invoke(main, ["enqueue", order, "--note", "n"], env=env)
    assert result.exit_code == 2
    assert "order_uuid" in result.output
    assert job_count(env) == 0


@pytest.mark.parametrize("note", BAD_NOTES)
def test_a_bad_note_exits_2_and_writes_nothing(env: dict[str, str], note: str) -> None:
    """Empty, blank and 1,001-character notes are refused."""
    result = CliRunner().invoke(main, ["enqueue", "ODR123456789", "--note", note], env=env)
    assert result.exit_code == 2
    assert "note" in result.output
    assert job_count(env) == 0


def test_enqueue_with_the_broker_down_commits_warns_and_exits_0(env: dict[str, str]) -> None:
    """The job is saved; the command says the scheduler will send it; a second enqueue returns it."""
    import json

    first = CliRunner().invoke(main, ["enqueue", "ODR123456789", "--note", "n", "--json"], env=env)
    assert first.exit_code == 0, first.output
    assert "broker unreachable" in first.stderr
    data = json.loads(first.stdout)
    assert data["created"] is True and data["status"] == "queued"
    again = CliRunner().invoke(main, ["enqueue", "ODR123456789", "--note", "n", "--json"], env=env)
    assert json.loads(again.stdout) == {**data, "created": False}
    assert job_count(env) == 1


def test_worker_refuses_to_start_without_a_token(env: dict[str, str]) -> None:
    """No FRONTPAYMENT_TOKEN: exit 2 naming the variable."""
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code == 2
    assert "FRONTPAYMENT_TOKEN" in result.output


def test_worker_refuses_plain_http_to_a_remote_host(env: dict[str, str]) -> None:
    """http:// is for the local sandbox only."""
    bad = {
        **env,
        "FRONTPAYMENT_TOKEN": "t",
        "FRONTPAYMENT_BASE_URL": "http://apigo.frontpayment.no/api/v1",
    }
    result = CliRunner().invoke(main, ["worker"], env=bad)
    assert result.exit_code == 2
    assert "FRONTPAYMENT_BASE_URL" in result.output


def test_a_malformed_setting_exits_2_naming_it(env: dict[str, str]) -> None:
    """FPCANCEL_MAX_ATTEMPTS=abc is a clear error, not a traceback."""
    result = CliRunner().invoke(main, ["jobs", "list"], env={**env, "FPCANCEL_MAX_ATTEMPTS": "abc"})
    assert result.exit_code == 2
    assert "FPCANCEL_MAX_ATTEMPTS" in result.output


def test_an_unknown_job_exits_2(env: dict[str, str]) -> None:
    """`jobs show 99` names the job."""
    result = CliRunner().invoke(main, ["jobs", "show", "99"], env=env)
    assert result.exit_code == 2
    assert "job 99" in result.output


def test_an_unreachable_database_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    """A database that cannot be opened is a failure (1), not bad input."""
    bad = {**env, "FPCANCEL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = CliRunner().invoke(main, ["jobs", "list"], env=bad)
    assert result.exit_code == 1
    assert "database" in result.output


def test_every_command_answers_help() -> None:
    """--help works for each command a user can type."""
    for args in (
        ["--help"],
        ["db", "upgrade", "--help"],
        ["enqueue", "--help"],
        ["worker", "--help"],
        ["jobs", "list", "--help"],
        ["jobs", "show", "--help"],
        ["sandbox", "--help"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, args
        assert "Usage:" in result.output


def test_worker_refuses_an_unmigrated_database_with_exit_1(tmp_path: Path) -> None:
    """A database without the newest schema: exit 1, telling to run `db upgrade`."""
    env = {
        "FRONTPAYMENT_TOKEN": "t0ken-for-tests",
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}",
    }
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code == 1
    assert "fpcancel db upgrade" in result.output


def test_worker_refuses_an_unreachable_broker_with_exit_1(env: dict[str, str]) -> None:
    """A migrated database but no broker at the URL: exit 1, naming the broker."""
    result = CliRunner().invoke(
        main, ["worker"], env={**env, "FRONTPAYMENT_TOKEN": "t0ken-for-tests"}
    )
    assert result.exit_code == 1
    assert "broker unreachable at redis://" in result.output
