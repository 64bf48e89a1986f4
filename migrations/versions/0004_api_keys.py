"""api_keys, and an index on cancel_jobs.finished_at for the dashboard

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00.000000

`api_keys` holds the HTTP service's keys: a name, a scope, the key's SHA-256 and first
characters (never the key), and when it was made, last used and revoked.
`ix_cancel_jobs_finished_at` lets the dashboard count the last day's outcomes without scanning
the whole job table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import fpcancel.models.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", fpcancel.models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", fpcancel.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", fpcancel.models.types.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("scope IN ('enqueue', 'read', 'ops')", name="ck_api_keys_scope"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index("ix_api_keys_prefix", ["prefix"], unique=False)
        batch_op.create_index("uq_api_keys_key_hash", ["key_hash"], unique=True)
        batch_op.create_index(
            "uq_api_keys_live_name",
            ["name"],
            unique=True,
            postgresql_where=sa.text("revoked_at IS NULL"),
            sqlite_where=sa.text("revoked_at IS NULL"),
        )
    with op.batch_alter_table("cancel_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_cancel_jobs_finished_at", ["finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cancel_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_cancel_jobs_finished_at")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_api_keys_live_name",
            postgresql_where=sa.text("revoked_at IS NULL"),
            sqlite_where=sa.text("revoked_at IS NULL"),
        )
        batch_op.drop_index("uq_api_keys_key_hash")
        batch_op.drop_index("ix_api_keys_prefix")
    op.drop_table("api_keys")
