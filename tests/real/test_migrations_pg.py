"""The migrations build exactly the tables the models describe, on PostgreSQL."""

from sqlalchemy import create_engine

from tests.migrations_check import differences_after_upgrade


def test_migrations_and_models_agree_on_postgresql(database_url: str) -> None:
    """After `db upgrade` (run again: it is idempotent), autogenerate finds nothing to change."""
    engine = create_engine(database_url)
    assert differences_after_upgrade(engine) == []
    engine.dispose()
