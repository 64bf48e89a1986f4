"""`fpcancel stats`: what the job and attempt tables say about the last while.

Each figure is one aggregate query that the tables' indexes serve; latency percentiles are
computed by PostgreSQL (`percentile_cont`) or, on SQLite, by seeking into the sorted durations.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.tables import TERMINAL_STATUSES, CancelAttempt, CancelJob, JobStatus
from worker.queries import iso

PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def _percentiles(session: Session, since: datetime | None) -> dict[str, float | None]:
    where = [CancelAttempt.started_at >= since] if since is not None else []
    if session.get_bind().dialect.name == "postgresql":
        columns = [
            func.percentile_cont(q).within_group(CancelAttempt.duration_ms).label(name)
            for name, q in PERCENTILES.items()
        ]
        row = session.execute(select(*columns).where(*where)).one()
        return {
            name: None if row[i] is None else round(float(row[i]), 1)
            for i, name in enumerate(PERCENTILES)
        }
    count = session.execute(
        select(func.count()).select_from(CancelAttempt).where(*where)
    ).scalar_one()
    result: dict[str, float | None] = {}
    for name, q in PERCENTILES.items():
        if not count:
            result[name] = None
            continue
        offset = min(count - 1, int(q * (count - 1) + 0.5))
        value = session.execute(
            select(CancelAttempt.duration_ms)
            .where(*where)
            .order_by(CancelAttempt.duration_ms)
            .offset(offset)
            .limit(1)
        ).scalar_one()
        result[name] = float(value)
    return result


def collect_stats(
    session: Session, since: datetime | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Every figure `stats --json` prints (keys documented in `fpcancel stats --help`)."""
    by_status = {s.value: 0 for s in JobStatus}
    jobs_where = [CancelJob.created_at >= since] if since is not None else []
    status_counts = (
        select(CancelJob.status, func.count()).where(*jobs_where).group_by(CancelJob.status)
    )
    for row in session.execute(status_counts):
        by_status[row[0]] = row[1]
    source_counts = (
        select(CancelJob.source, func.count()).where(*jobs_where).group_by(CancelJob.source)
    )
    by_source = {(row[0] or ""): row[1] for row in session.execute(source_counts)}
    total = sum(by_status.values())
    terminal = sum(by_status[s.value] for s in TERMINAL_STATUSES)
    attempts_where = [CancelAttempt.started_at >= since] if since is not None else []
    calls = dict(
        session.execute(
            select(CancelAttempt.kind, func.count())
            .where(*attempts_where)
            .group_by(CancelAttempt.kind)
        ).all()
    )
    waits = session.execute(
        select(
            func.count().filter(CancelAttempt.outcome == "rate_limited"),
            func.count().filter(CancelAttempt.rate_wait_ms > 0),
            func.coalesce(func.sum(CancelAttempt.rate_wait_ms), 0),
        ).where(*attempts_where)
    ).one()
    oldest = session.execute(
        select(func.min(CancelJob.created_at)).where(CancelJob.status == JobStatus.QUEUED.value)
    ).scalar_one()
    cancel_calls = int(calls.get("cancel", 0))
    return {
        "since": iso(since),
        "jobs_total": total,
        "jobs": by_status,
        "jobs_by_source": by_source,
        "calls": {
            "total": cancel_calls + int(calls.get("status_check", 0)),
            "cancel": cancel_calls,
            "status_check": int(calls.get("status_check", 0)),
            "cancel_per_job": round(cancel_calls / total, 2) if total else None,
        },
        "success_rate": round(by_status["succeeded"] / terminal, 4) if terminal else None,
        "latency_ms": _percentiles(session, since),
        "rate_limit": {
            "provider_429s": int(waits[0]),
            "calls_that_waited": int(waits[1]),
            "wait_seconds": round(int(waits[2]) / 1000, 1),
        },
        "oldest_queued_age_seconds": None
        if oldest is None or now is None
        else round((now - oldest).total_seconds(), 1),
    }
