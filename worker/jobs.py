"""The job table's state changes, each one short transaction that takes a `Session`.

Every change a worker makes to a job it holds is guarded by the job's `dispatch_token`: if the
scheduler took the job back (the claim expired), the worker's late update touches nothing.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.tables import (
    ACTIVE_SQL,
    ACTIVE_STATUSES,
    AttemptKind,
    CancelAttempt,
    CancelJob,
    JobStatus,
)
from worker.decisions import Decision, errors_json
from worker.provider import Answer, ProviderError
from worker.transitions import ClaimedJob, JobUpdate

WAITING = (JobStatus.QUEUED, JobStatus.RETRYING)


@dataclass(frozen=True)
class NewJob:
    id: int
    order_uuid: str
    status: str
    created: bool


def insert_if_no_active(session: Session) -> postgresql.Insert | sqlite.Insert:
    """INSERT into cancel_jobs that does nothing for an order that already has an active or
    succeeded job: the partial unique index decides, so concurrent producers cannot both win."""
    stmt: postgresql.Insert | sqlite.Insert
    if session.get_bind().dialect.name == "postgresql":
        stmt = postgresql.insert(CancelJob)
    else:
        stmt = sqlite.insert(CancelJob)
    return stmt.on_conflict_do_nothing(index_elements=["order_uuid"], index_where=text(ACTIVE_SQL))


def insert_job(
    session: Session,
    *,
    order_uuid: str,
    note: str,
    source: str | None,
    lane: str,
    now: datetime,
    dispatch_token: str | None,
) -> NewJob:
    """A new `queued` job, or the order's existing active-or-succeeded job (SPEC.md, "Dedup")."""
    for _ in range(5):
        stmt = insert_if_no_active(session).values(
            order_uuid=order_uuid,
            note=note,
            source=source,
            lane=lane,
            status=JobStatus.QUEUED.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            dispatch_token=dispatch_token,
            dispatched_at=now if dispatch_token else None,
        )
        new_id = session.execute(stmt.returning(CancelJob.__table__.c.id)).scalar_one_or_none()
        if new_id is not None:
            return NewJob(new_id, order_uuid, JobStatus.QUEUED.value, True)
        existing = session.execute(
            select(CancelJob.id, CancelJob.status)
            .where(CancelJob.order_uuid == order_uuid, CancelJob.status.in_(ACTIVE_STATUSES))
            .limit(1)
        ).one_or_none()
        if existing is not None:
            return NewJob(existing.id, order_uuid, existing.status, False)
        # The active job ended between the two statements: try the insert again.
    raise RuntimeError(f"could not settle a job for order {order_uuid}")


def clear_dispatch(session: Session, job_ids: list[int], tokens: list[str]) -> None:
    """Publishing failed: let the scheduler send these jobs on its next round."""
    for job_id, token in zip(job_ids, tokens, strict=True):
        session.execute(
            update(CancelJob)
            .where(CancelJob.id == job_id, CancelJob.dispatch_token == token)
            .where(CancelJob.status.in_(WAITING))
            .values(dispatch_token=None, dispatched_at=None)
        )


def claim_job(
    session: Session, job_id: int, token: str, now: datetime, lease_seconds: float
) -> ClaimedJob | None:
    """Take the job for this message, or None: a second delivery of the same message, a stale
    message, or a job that is not waiting (atomic: one conditional UPDATE)."""
    before = session.execute(
        select(CancelJob.status).where(CancelJob.id == job_id, CancelJob.dispatch_token == token)
    ).scalar_one_or_none()
    if before not in WAITING:
        return None
    row = session.execute(
        update(CancelJob)
        .where(
            CancelJob.id == job_id,
            CancelJob.dispatch_token == token,
            CancelJob.status.in_(WAITING),
        )
        .values(
            status=JobStatus.RUNNING.value,
            claimed_until=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(
            CancelJob.order_uuid,
            CancelJob.note,
            CancelJob.lane,
            CancelJob.attempts,
            CancelJob.round_start_attempts,
            CancelJob.needs_status_check,
        )
    ).one_or_none()
    if row is None:
        return None
    return ClaimedJob(
        id=job_id,
        order_uuid=row.order_uuid,
        note=row.note,
        lane=row.lane,
        status_before=str(before),
        attempts=row.attempts,
        round_start_attempts=row.round_start_attempts,
        needs_status_check=row.needs_status_check,
        token=token,
    )


def _held(job: ClaimedJob) -> tuple[ColumnElement[bool], ...]:
    return (
        CancelJob.id == job.id,
        CancelJob.dispatch_token == job.token,
        CancelJob.status == JobStatus.RUNNING.value,
    )


def mark_in_call(session: Session, job: ClaimedJob, now: datetime) -> bool:
    """Note that a cancel POST is about to leave: if the worker dies now, the order's status
    is checked before anyone POSTs again."""
    result = session.execute(
        update(CancelJob).where(*_held(job)).values(in_call_since=now, updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_job(
    session: Session,
    job: ClaimedJob,
    now: datetime,
    after_seconds: float,
    *,
    call_left: bool | None = None,
) -> bool:
    """Give the job back: it waits `after_seconds`, then goes again. If a cancel POST may have
    left (`call_left` True, or None for "unknown" with `in_call_since` set), the order's status
    is checked before the next one."""
    if call_left is None:
        maybe_sent: ColumnElement[bool] | bool = CancelJob.in_call_since.is_not(None)
    else:
        maybe_sent = call_left
    result = session.execute(
        update(CancelJob)
        .where(*_held(job))
        .values(
            status=job.status_before,
            needs_status_check=CancelJob.needs_status_check | maybe_sent,
            in_call_since=None,
            next_attempt_at=now + timedelta(seconds=after_seconds),
            dispatch_token=None,
            dispatched_at=None,
            claimed_until=None,
            updated_at=now,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_call(
    session: Session,
    job: ClaimedJob,
    *,
    kind: AttemptKind,
    started_at: datetime,
    finished_at: datetime,
    result: Answer | ProviderError,
    decision: Decision,
    update_: JobUpdate,
    rate_wait_seconds: float = 0.0,
    body_chars: int = 2000,
) -> bool:
    """Write the call's attempt row and apply `update_` to the job, in one transaction.

    The attempt row is written even when the job is no longer ours (the call happened); the job
    itself changes only while we still hold it. Returns whether it did.
    """
    if isinstance(result, Answer):
        http_status: int | None = result.status
        message = result.message or (None if result.body is not None else _first_line(result.text))
        body: str | None = result.text[:body_chars]
        duration_ms = result.duration_ms
    else:
        http_status, message, body, duration_ms = None, result.message, None, result.duration_ms
    number = (
        session.execute(
            select(func.coalesce(func.max(CancelAttempt.number), 0)).where(
                CancelAttempt.job_id == job.id
            )
        ).scalar_one()
        + 1
    )
    session.execute(
        insert(CancelAttempt).values(
            job_id=job.id,
            number=number,
            kind=kind.value,
            started_at=started_at,
            finished_at=finished_at,
            duration_ms=duration_ms,
            http_status=http_status,
            outcome=decision.outcome.value,
            message=message,
            response_body=body,
            counted=kind is AttemptKind.CANCEL and decision.counts,
            retry_in_ms=None
            if update_.retry_in_seconds is None
            else int(update_.retry_in_seconds * 1000),
            rate_wait_ms=int(rate_wait_seconds * 1000),
        )
    )
    values = dict(update_.values)
    values.update(
        status=update_.status.value,
        last_http_status=http_status,
        last_message=message,
        updated_at=finished_at,
    )
    if decision.errors is not None:
        values["last_errors"] = errors_json(decision.errors)
    if kind is AttemptKind.CANCEL:
        values["in_call_since"] = None
    if not update_.proceed:
        values.update(dispatch_token=None, dispatched_at=None, claimed_until=None)
    result_ = session.execute(update(CancelJob).where(*_held(job)).values(**values))
    return bool(result_.rowcount)  # type: ignore[attr-defined]


def _first_line(text: str, limit: int = 200) -> str | None:
    """A non-JSON body's gist for `message`: its first non-blank line (an nginx <title>, say)."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return None
