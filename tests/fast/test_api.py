"""The Python API a shop imports (SPEC.md, "Python API"): one name, `fpcancel`, light to import,
and the pure core free of I/O libraries."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import fpcancel
from fpcancel.api import default_producer
from fpcancel.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FPCANCEL_DATABASE_URL", f"sqlite:///{tmp_path / 'api.db'}")
    monkeypatch.setenv("FPCANCEL_BROKER_URL", "memory://")
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    default_producer.cache_clear()
    yield tmp_path
    default_producer.cache_clear()


def test_enqueue_and_get_job_through_the_one_import_name(env: Path) -> None:
    """`fpcancel.enqueue_cancel` returns the id that `fpcancel.get_job` reads back, as the CLI's
    `jobs show --json` prints it; dedup returns the same id."""
    job_id = fpcancel.enqueue_cancel("ODR123456789", "Customer asked", source="shop")
    assert fpcancel.enqueue_cancel("ODR123456789", "again") == job_id
    job = fpcancel.get_job(job_id)
    shown = CliRunner().invoke(main, ["jobs", "show", str(job_id), "--json"])
    assert job is not None and job == json.loads(shown.stdout)
    assert (job["order_uuid"], job["status"], job["source"], job["calls"]) == (
        "ODR123456789",
        "queued",
        "shop",
        [],
    )
    assert fpcancel.get_job(job_id + 1000) is None


def test_bulk_and_bad_input_through_the_api(env: Path) -> None:
    """`enqueue_bulk` counts; a bad row raises `fpcancel.BulkInputError`, a bad note
    `fpcancel.ValidationError`, and neither writes anything."""
    result = fpcancel.enqueue_bulk([("ODR1", "Out of stock"), ("ODR2", "Out of stock")])
    assert (result.created, result.already_active) == (2, 0)
    with pytest.raises(fpcancel.BulkInputError):
        fpcancel.enqueue_bulk([("ODR3", "fine"), ("bad id", "x")])
    with pytest.raises(fpcancel.ValidationError):
        fpcancel.enqueue_cancel("ODR4", "   ")
    assert fpcancel.get_job(3) is None


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_pure_core_imports_no_io_library() -> None:
    """Classification, backoff, the fleet pause, the state machine and webhook signing import
    neither requests, SQLAlchemy, redis nor Celery."""
    loaded = _imported_after(
        "import fpcancel.classify, fpcancel.backoff, fpcancel.pauses, fpcancel.transitions, "
        "fpcancel.statuses, fpcancel.answers, fpcancel.webhooks"
    )
    assert not loaded & {"requests", "sqlalchemy", "redis", "celery", "urllib3", "psycopg"}


def test_importing_fpcancel_is_light() -> None:
    """`import fpcancel` loads no database or broker library until a function is used."""
    loaded = _imported_after("import fpcancel")
    assert not loaded & {"sqlalchemy", "celery", "redis", "requests"}
