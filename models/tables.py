"""The tables ops read directly: `cancel_jobs`, `cancel_attempts` (SPEC.md, "Tables"),
`cancel_events` with `webhook_deliveries` (SPEC.md, "Outcome events"), and `api_keys` (SPEC.md,
"HTTP service").

The names in SPEC.md are fixed; the extra columns are the worker's bookkeeping and are documented
in README.md ("The job table").
"""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fpcancel.models.types import UTCDateTime
from fpcancel.statuses import (
    ACTIVE_SQL,
    API_SCOPES,
    LANES,
    WAITING_SQL,
    AttemptKind,
    DeliveryStatus,
    JobStatus,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY, so BIGINT becomes INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


_in_flight_sql = "dispatch_token IS NOT NULL"
_status_list = ", ".join(f"'{s.value}'" for s in JobStatus)
_lane_list = ", ".join(f"'{lane}'" for lane in LANES)


class Base(DeclarativeBase):
    pass


class CancelJob(Base):
    """One order to cancel, from enqueue to a terminal status."""

    __tablename__ = "cancel_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_uuid: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(1000))
    source: Mapped[str | None] = mapped_column(String(64))
    lane: Mapped[str] = mapped_column(String(8), server_default="live")
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_http_status: Mapped[int | None] = mapped_column(Integer)
    last_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Bookkeeping (README.md, "The job table").
    last_errors: Mapped[str | None] = mapped_column(Text)  # JSON of a 417's `errors`
    round_start_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    needs_status_check: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    dispatch_token: Mapped[str | None] = mapped_column(String(32))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    in_call_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lost_claims: Mapped[int] = mapped_column(Integer, server_default="0")

    calls: Mapped[list["CancelAttempt"]] = relationship(
        back_populates="job", order_by="CancelAttempt.number", passive_deletes=True
    )

    __table_args__ = (
        CheckConstraint(f"status IN ({_status_list})", name="ck_cancel_jobs_status"),
        CheckConstraint(f"lane IN ({_lane_list})", name="ck_cancel_jobs_lane"),
        # The database, not the code, keeps an order to one active-or-succeeded job.
        Index(
            "uq_cancel_jobs_active_order",
            "order_uuid",
            unique=True,
            postgresql_where=text(ACTIVE_SQL),
            sqlite_where=text(ACTIVE_SQL),
        ),
        Index("ix_cancel_jobs_order_uuid", "order_uuid", "id"),
        Index("ix_cancel_jobs_status_id", "status", "id"),
        # `stats` counts jobs per status and source from this index alone (migration 0002).
        Index("ix_cancel_jobs_status_source", "status", "source"),
        Index("ix_cancel_jobs_source_id", "source", "id"),
        Index("ix_cancel_jobs_created_at", "created_at"),
        # The dashboard's "outcomes over time" reads the last day's finished jobs (migration 0004).
        Index("ix_cancel_jobs_finished_at", "finished_at"),
        # The scheduler's "what is due, customers first" query.
        Index(
            "ix_cancel_jobs_due",
            "lane",
            "next_attempt_at",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
        # The scheduler's "how much is in flight" count stays small whatever the table's size.
        Index(
            "ix_cancel_jobs_in_flight",
            "status",
            postgresql_where=text(_in_flight_sql),
            sqlite_where=text(_in_flight_sql),
        ),
    )


class CancelAttempt(Base):
    """One call to the provider: a cancel POST or a status check."""

    __tablename__ = "cancel_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, ForeignKey("cancel_jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... over every call of the job
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(24))
    message: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)
    # Bookkeeping: whether this call counted against FPCANCEL_MAX_ATTEMPTS, the delay chosen
    # after it, and how long it waited for a rate-limit slot before it started.
    counted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    retry_in_ms: Mapped[int | None] = mapped_column(Integer)
    rate_wait_ms: Mapped[int] = mapped_column(Integer, server_default="0")  # waited for a rate slot

    job: Mapped[CancelJob] = relationship(back_populates="calls")

    __table_args__ = (
        CheckConstraint(
            f"kind IN ({', '.join(repr(k.value) for k in AttemptKind)})",
            name="ck_cancel_attempts_kind",
        ),
        Index("uq_cancel_attempts_job_number", "job_id", "number", unique=True),
        Index("ix_cancel_attempts_started_at", "started_at"),
    )


# JSON on SQLite, JSONB on PostgreSQL.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")
_delivery_list = ", ".join(f"'{d.value}'" for d in DeliveryStatus)
_due_delivery_sql = f"delivery = '{DeliveryStatus.WAITING.value}'"


class CancelEvent(Base):
    """One outcome the shop hears about, written in the same transaction as the job's terminal
    change; also the webhook outbox (the delivery columns are fpcancel's bookkeeping)."""

    __tablename__ = "cancel_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, ForeignKey("cancel_jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    # Delivery: waiting (due at next_delivery_at), delivered or failed; a deliverer holding the
    # event sets claim_token and claimed_until.
    delivery: Mapped[str] = mapped_column(String(16), server_default=DeliveryStatus.WAITING.value)
    delivery_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_delivery_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(f"delivery IN ({_delivery_list})", name="ck_cancel_events_delivery"),
        Index("ix_cancel_events_job_id", "job_id", "id"),
        Index("ix_cancel_events_delivery", "delivery", "id"),
        # The deliverers' "what is due" query, whatever the backlog.
        Index(
            "ix_cancel_events_due",
            "next_delivery_at",
            postgresql_where=text(_due_delivery_sql),
            sqlite_where=text(_due_delivery_sql),
        ),
    )


class WebhookDelivery(Base):
    """One try to deliver an event to the shop's webhook."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigId, ForeignKey("cancel_events.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)  # 1, 2, ... over every try of the event
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Whether this try counted against FPCANCEL_WEBHOOK_MAX_ATTEMPTS: not while the receiver as
    # a whole is away (a probe).
    counted: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))

    __table_args__ = (
        Index("uq_webhook_deliveries_event_attempt", "event_id", "attempt", unique=True),
        Index("ix_webhook_deliveries_started_at", "started_at"),
    )


_scope_list = ", ".join(f"'{scope}'" for scope in API_SCOPES)


class ApiKey(Base):
    """A key for the HTTP service (`fpcancel keys create`). The key itself is never stored: only
    its SHA-256 and its first characters (`prefix`), by which a presented key finds its row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))  # SHA-256, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(f"scope IN ({_scope_list})", name="ck_api_keys_scope"),
        Index("uq_api_keys_key_hash", "key_hash", unique=True),
        Index("ix_api_keys_prefix", "prefix"),
        # A name says whose requests a log line shows: one live key per name.
        Index(
            "uq_api_keys_live_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
    )
