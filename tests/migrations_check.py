"""Shared by the SQLite and PostgreSQL tiers: migrate an empty database, then ask Alembic's
autogenerate what differs from the models."""

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from fpcancel.migrate import current_revision, head_revision, upgrade
from fpcancel.models import Base


def differences_after_upgrade(engine: Engine) -> list[Any]:
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))
