"""The migrations build exactly the tables the models describe (SQLite)."""

from pathlib import Path

from sqlalchemy import inspect

from fpcancel.models.db import make_engine
from tests.migrations_check import differences_after_upgrade


def test_migrations_and_models_agree_on_sqlite(tmp_path: Path) -> None:
    """`db upgrade` on an empty SQLite file leaves nothing for autogenerate to add or change."""
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert differences_after_upgrade(engine) == []
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("cancel_jobs")}
    assert {
        "uq_cancel_jobs_active_order",
        "ix_cancel_jobs_status_id",
        "ix_cancel_jobs_order_uuid",
    } <= indexes
    engine.dispose()


def test_the_database_keeps_an_order_to_one_active_job(tmp_path: Path) -> None:
    """Two queued jobs for one order violate the partial unique index; a dead one beside a queued one does not."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    differences_after_upgrade(engine)
    insert = text(
        "INSERT INTO cancel_jobs (order_uuid, note, lane, status, attempts, created_at, updated_at) "
        "VALUES ('ODR1', 'n', 'live', :status, 0, '2026-01-01', '2026-01-01')"
    )
    with engine.begin() as c:
        c.execute(insert, {"status": "dead"})
        c.execute(insert, {"status": "queued"})
    with pytest.raises(IntegrityError), engine.begin() as c:
        c.execute(insert, {"status": "succeeded"})
    engine.dispose()
