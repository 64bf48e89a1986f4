"""What the dashboard reads beyond the CLI's queries: time series for the overview, and the fleet's
pause state. Every query is bounded by an index (finished_at, started_at) to a recent window, so
the overview costs the same on a thousand jobs as on a million.

Buckets are computed by the database (epoch seconds floored to the bucket), on PostgreSQL and
SQLite alike, so only one row per bucket and series comes back.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.ratelimit import ActivePause
from fpcancel.settings import RateLimit
from fpcancel.stats import job_counts, percentiles
from fpcancel.statuses import TERMINAL_STATUSES, JobStatus

OUTCOME_HOURS = 24
CALL_MINUTES = 60
LATENCY_BUCKET_SECONDS = 300
TERMINAL_ORDER = [s.value for s in JobStatus if s in TERMINAL_STATUSES]


def epoch_bucket(session: Session, column: Any, seconds: int) -> ColumnElement[Any]:
    """`column` as Unix seconds, floored to a multiple of `seconds`."""
    if session.get_bind().dialect.name == "postgresql":
        seconds_since_epoch: ColumnElement[Any] = func.extract("epoch", column)
        return cast(func.floor(seconds_since_epoch / seconds), BigInteger) * seconds
    return cast(func.strftime("%s", column), Integer) / seconds * seconds


@dataclass
class Series:
    """Counts per bucket start (Unix seconds) and series name, over [start, end)."""

    start: int
    step: int
    buckets: int
    counts: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def starts(self) -> list[int]:
        return [self.start + i * self.step for i in range(self.buckets)]


def _window(now: datetime, step: int, buckets: int) -> tuple[int, datetime]:
    """The first bucket's start, so that the last bucket holds `now`."""
    last = int(now.timestamp()) // step * step
    first = last - (buckets - 1) * step
    return first, datetime.fromtimestamp(first, now.tzinfo)


def outcomes_per_hour(session: Session, now: datetime, hours: int = OUTCOME_HOURS) -> Series:
    """Jobs that finished in each of the last `hours` hours, per terminal status."""
    first, since = _window(now, 3600, hours)
    bucket = epoch_bucket(session, CancelJob.finished_at, 3600)
    stmt = (
        select(bucket, CancelJob.status, func.count())
        .where(CancelJob.finished_at >= since)
        .group_by(bucket, CancelJob.status)
    )
    series = Series(first, 3600, hours)
    for start, status, count in session.execute(stmt):
        if status in TERMINAL_ORDER:  # a job sent round again keeps finished_at until it ends
            series.counts[int(start)][status] += count
    return series


def calls_per_minute(session: Session, now: datetime, minutes: int = CALL_MINUTES) -> Series:
    """Calls to the provider that started in each of the last `minutes` minutes, per kind."""
    first, since = _window(now, 60, minutes)
    bucket = epoch_bucket(session, CancelAttempt.started_at, 60)
    stmt = (
        select(bucket, CancelAttempt.kind, func.count())
        .where(CancelAttempt.started_at >= since)
        .group_by(bucket, CancelAttempt.kind)
    )
    series = Series(first, 60, minutes)
    for start, kind, count in session.execute(stmt):
        series.counts[int(start)][kind] += count
    return series


@dataclass
class Latency:
    overall: dict[str, Any]  # p50, p95, p99 over the window
    per_bucket: list[tuple[int, dict[str, Any]]]  # (bucket start, {p50, p95})
    calls: int


def latency(
    session: Session,
    now: datetime,
    minutes: int = CALL_MINUTES,
    step: int = LATENCY_BUCKET_SECONDS,
) -> Latency:
    """Call durations over the last `minutes`: percentiles overall and per `step` seconds, from
    one histogram per bucket (durations are whole milliseconds, few distinct values)."""
    buckets = minutes * 60 // step
    first, since = _window(now, step, buckets)
    bucket = epoch_bucket(session, CancelAttempt.started_at, step)
    stmt = (
        select(bucket, CancelAttempt.duration_ms, func.count())
        .where(CancelAttempt.started_at >= since)
        .group_by(bucket, CancelAttempt.duration_ms)
    )
    per: dict[int, Counter[int]] = defaultdict(Counter)
    overall: Counter[int] = Counter()
    for start, duration_ms, count in session.execute(stmt):
        per[int(start)][int(duration_ms)] += count
        overall[int(duration_ms)] += count
    wanted = {"p50": 0.5, "p95": 0.95}
    return Latency(
        overall=percentiles(overall, {"p50": 0.5, "p95": 0.95, "p99": 0.99}),
        per_bucket=[
            (first + i * step, percentiles(per.get(first + i * step, Counter()), wanted))
            for i in range(buckets)
        ],
        calls=sum(overall.values()),
    )


@dataclass
class Overview:
    jobs: dict[str, int]
    jobs_total: int
    outcomes: Series
    calls: Series
    latency: Latency
    rate_limit: RateLimit
    pauses: list[ActivePause] | None  # None: the fleet cannot be asked (no Redis)
    now: datetime

    @property
    def calls_per_minute_allowed(self) -> float:
        return self.rate_limit.calls * 60 / self.rate_limit.per_seconds


def overview(
    session: Session,
    now: datetime,
    rate_limit: RateLimit,
    pauses: list[ActivePause] | None,
) -> Overview:
    by_status, _ = job_counts(session, None)
    return Overview(
        jobs=by_status,
        jobs_total=sum(by_status.values()),
        outcomes=outcomes_per_hour(session, now),
        calls=calls_per_minute(session, now),
        latency=latency(session, now),
        rate_limit=rate_limit,
        pauses=pauses,
        now=now,
    )


# -- events ------------------------------------------------------------------------------------
# A job's events and their delivery tries come with the job (`fpcancel.queries.job_with_calls`,
# from `fpcancel.events`). The dashboard's list of events, newest first with where each one's
# delivery stands, is a view the events module does not offer: it is read here.


def recent_events(
    session: Session, *, after: int | None = None, before: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Events newest first, by id: those just older than `before`, or just newer than `after`."""
    from fpcancel.models.tables import CancelEvent
    from fpcancel.times import iso

    stmt = select(CancelEvent)
    if after is not None:
        stmt = stmt.where(CancelEvent.id > after).order_by(CancelEvent.id).limit(limit)
        rows = list(reversed(session.scalars(stmt).all()))
    else:
        if before is not None:
            stmt = stmt.where(CancelEvent.id < before)
        rows = list(session.scalars(stmt.order_by(CancelEvent.id.desc()).limit(limit)))
    return [
        {
            "id": e.id,
            "job_id": e.job_id,
            "type": e.type,
            "created_at": iso(e.created_at),
            "status": (e.payload.get("data") or {}).get("status")
            if isinstance(e.payload, dict)
            else None,
            "order_uuid": (e.payload.get("data") or {}).get("order_uuid")
            if isinstance(e.payload, dict)
            else None,
            "delivery": e.delivery,
            "delivery_attempts": e.delivery_attempts,
        }
        for e in rows
    ]
