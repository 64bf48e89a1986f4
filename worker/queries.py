"""What ops read: jobs and their calls, as the `--json` output shows them (column names as keys)."""

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fpcancel.errors import UnknownJobError
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.times import iso

JOB_FIELDS = (
    "id",
    "order_uuid",
    "note",
    "source",
    "lane",
    "status",
    "attempts",
    "next_attempt_at",
    "last_http_status",
    "last_message",
    "last_errors",
    "created_at",
    "updated_at",
    "finished_at",
)
CALL_FIELDS = (
    "id",
    "job_id",
    "number",
    "kind",
    "started_at",
    "finished_at",
    "duration_ms",
    "http_status",
    "outcome",
    "message",
    "response_body",
    "counted",
    "retry_in_ms",
)


def _plain(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def job_dict(job: CancelJob) -> dict[str, Any]:
    data = {name: _plain(getattr(job, name)) for name in JOB_FIELDS}
    if data["last_errors"] is not None:
        with contextlib.suppress(ValueError):  # older rows may hold plain text
            data["last_errors"] = json.loads(data["last_errors"])
    return data


def new_job_dict(job_id: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """`job_dict` of a job just written with `values` (`transitions.new_job_values`), without
    reading it back."""
    return {name: job_id if name == "id" else _plain(values.get(name)) for name in JOB_FIELDS}


def call_dict(call: CancelAttempt) -> dict[str, Any]:
    return {name: _plain(getattr(call, name)) for name in CALL_FIELDS}


def get_job(session: Session, job_id: int) -> CancelJob:
    job = session.get(CancelJob, job_id)
    if job is None:
        raise UnknownJobError(f"job {job_id}: no such job")
    return job


def job_with_calls(session: Session, job_id: int) -> dict[str, Any]:
    """`jobs show`: the job, every call it made and every outcome event it gave (with their
    webhook deliveries), oldest first."""
    from fpcancel.events import job_events

    job = get_job(session, job_id)
    calls = session.scalars(
        select(CancelAttempt).where(CancelAttempt.job_id == job_id).order_by(CancelAttempt.number)
    ).all()
    return {
        **job_dict(job),
        "calls": [call_dict(c) for c in calls],
        "events": job_events(session, job_id),
    }


def list_jobs(
    session: Session,
    *,
    statuses: tuple[str, ...] = (),
    order_uuid: str | None = None,
    source: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    before_id: int | None = None,
    after_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first. `before_id` / `after_id` page by key (the jobs just older / newer than that
    id), which an index serves however deep into the table the page is; OFFSET reads and drops
    every row it skips."""
    stmt = select(CancelJob)
    if statuses:
        stmt = stmt.where(CancelJob.status.in_(statuses))
    if order_uuid is not None:
        stmt = stmt.where(CancelJob.order_uuid == order_uuid)
    if source is not None:
        stmt = stmt.where(CancelJob.source == source)
    if since is not None:
        stmt = stmt.where(CancelJob.created_at >= since)
    if until is not None:
        stmt = stmt.where(CancelJob.created_at < until)
    if before_id is not None:
        stmt = stmt.where(CancelJob.id < before_id)
    if after_id is not None:
        # The page just newer than `after_id`: read upwards from it, then show newest first.
        stmt = stmt.where(CancelJob.id > after_id).order_by(CancelJob.id).limit(limit)
        return [job_dict(job) for job in reversed(session.scalars(stmt).all())]
    stmt = stmt.order_by(CancelJob.id.desc()).limit(limit).offset(offset)
    return [job_dict(job) for job in session.scalars(stmt)]
