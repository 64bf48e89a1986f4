"""`fpcancel stats`: what the job and attempt tables say about the last while.

Two scans answer nearly everything, so the cost stays flat as the tables grow to millions:

- jobs: one `GROUP BY status, source` gives the counts per status and per source;
- calls: one `GROUP BY kind, duration_ms` gives the calls per kind, the rate-limit figures and a
  histogram of durations, from which the latency percentiles are computed exactly as
  PostgreSQL's `percentile_cont` would (linear interpolation), without sorting millions of rows.
  Durations are whole milliseconds and few distinct values, so the histogram stays small.
  Without `--since` it is one sequential scan of the attempts (about 0.4 s for 3,000,000 rows
  here); with it, `ix_cancel_attempts_started_at` narrows the rows.

The oldest queued job's age is read from the `ix_cancel_jobs_due` index. Events are counted per
delivery state from `ix_cancel_events_delivery`; the delivery latency (an event's creation, when
its job ended, to the receiver's 2xx) comes from a histogram of tenths of a second.
"""

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, func, select
from sqlalchemy.orm import Session

from fpcancel.classify import Outcome
from fpcancel.models.tables import CancelAttempt, CancelEvent, CancelJob
from fpcancel.statuses import TERMINAL_STATUSES, DeliveryStatus, JobStatus
from fpcancel.times import iso

PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
DELIVERY_PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}


def percentiles(histogram: Mapping[int, int], quantiles: Mapping[str, float]) -> dict[str, Any]:
    """`percentile_cont` of each quantile over the values a {value: count} histogram holds:
    the value at position q * (n - 1) of the sorted values, interpolated between neighbours."""
    total = sum(histogram.values())
    if not total:
        return {name: None for name in quantiles}
    ordered = sorted((value, count) for value, count in histogram.items() if count > 0)

    def at(index: int) -> int:
        """The index-th (0-based) value in sorted order."""
        seen = 0
        for value, count in ordered:
            seen += count
            if index < seen:
                return value
        return ordered[-1][0]

    result: dict[str, Any] = {}
    for name, q in quantiles.items():
        position = q * (total - 1)
        low, high = math.floor(position), math.ceil(position)
        below, above = at(low), at(high)
        result[name] = round(below + (position - low) * (above - below), 1)
    return result


def job_counts(session: Session, since: datetime | None) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs per status (every status, zeros included) and per source ("" for none)."""
    by_status = {s.value: 0 for s in JobStatus}
    by_source: dict[str, int] = {}
    stmt = select(CancelJob.status, CancelJob.source, func.count()).group_by(
        CancelJob.status, CancelJob.source
    )
    if since is not None:
        stmt = stmt.where(CancelJob.created_at >= since)
    for status, source, count in session.execute(stmt):
        by_status[status] = by_status.get(status, 0) + count
        by_source[source or ""] = by_source.get(source or "", 0) + count
    return by_status, dict(sorted(by_source.items()))


def _call_rows(session: Session, since: datetime | None) -> Iterable[Any]:
    """Per (kind, duration_ms): calls, 429s, calls that waited for a slot, milliseconds waited."""
    stmt = select(
        CancelAttempt.kind,
        CancelAttempt.duration_ms,
        func.count(),
        func.count().filter(CancelAttempt.outcome == Outcome.RATE_LIMITED.value),
        func.count().filter(CancelAttempt.rate_wait_ms > 0),
        func.coalesce(func.sum(CancelAttempt.rate_wait_ms), 0),
    ).group_by(CancelAttempt.kind, CancelAttempt.duration_ms)
    if since is not None:
        stmt = stmt.where(CancelAttempt.started_at >= since)
    return session.execute(stmt)


def _oldest_queued(session: Session) -> datetime | None:
    """When the longest-waiting queued job became due (a job sent round again by `jobs retry`
    waits from then, not from its creation)."""
    return session.execute(
        select(func.min(CancelJob.next_attempt_at)).where(
            CancelJob.status == JobStatus.QUEUED.value
        )
    ).scalar_one()


def _event_figures(session: Session, since: datetime | None) -> dict[str, Any]:
    """Events per delivery state, and the delivery latency (a job's end to the receiver's 2xx)
    from a histogram of tenths of a second, as for call latency."""
    counts = {d.value: 0 for d in DeliveryStatus}
    stmt = select(CancelEvent.delivery, func.count()).group_by(CancelEvent.delivery)
    if since is not None:
        stmt = stmt.where(CancelEvent.created_at >= since)
    for delivery, count in session.execute(stmt):
        counts[delivery] = count
    lag: Any
    if session.get_bind().dialect.name == "postgresql":
        lag = func.floor(
            func.extract("epoch", CancelEvent.delivered_at - CancelEvent.created_at) * 10
        )
    else:
        lag = func.cast(
            (func.julianday(CancelEvent.delivered_at) - func.julianday(CancelEvent.created_at))
            * 864_000,
            Integer,
        )
    latency = select(lag, func.count()).where(CancelEvent.delivered_at.is_not(None)).group_by(lag)
    if since is not None:
        latency = latency.where(CancelEvent.created_at >= since)
    histogram = Counter({int(tenths): count for tenths, count in session.execute(latency)})
    seconds = percentiles(histogram, DELIVERY_PERCENTILES)
    return {
        "events": {"total": sum(counts.values()), **counts},
        "delivery_latency_seconds": {
            name: None if value is None else round(value / 10, 1) for name, value in seconds.items()
        },
    }


def collect_stats(
    session: Session, since: datetime | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Every figure `stats --json` prints (keys documented in `fpcancel stats --help`)."""
    by_status, by_source = job_counts(session, since)
    calls: Counter[str] = Counter()
    durations: Counter[int] = Counter()
    provider_429s = waited = wait_ms = 0
    for kind, duration_ms, count, limited, slow, waited_ms in _call_rows(session, since):
        calls[kind] += count
        durations[int(duration_ms)] += count
        provider_429s += limited
        waited += slow
        wait_ms += int(waited_ms)
    oldest = _oldest_queued(session)
    total = sum(by_status.values())
    terminal = sum(by_status[s.value] for s in TERMINAL_STATUSES)
    cancel_calls = calls["cancel"]
    return {
        "since": iso(since),
        "jobs_total": total,
        "jobs": by_status,
        "jobs_by_source": by_source,
        "calls": {
            "total": cancel_calls + calls["status_check"],
            "cancel": cancel_calls,
            "status_check": calls["status_check"],
            "cancel_per_job": round(cancel_calls / total, 2) if total else None,
        },
        "success_rate": round(by_status["succeeded"] / terminal, 4) if terminal else None,
        "latency_ms": percentiles(durations, PERCENTILES),
        "rate_limit": {
            "provider_429s": provider_429s,
            "calls_that_waited": waited,
            "wait_seconds": round(wait_ms / 1000, 1),
        },
        **_event_figures(session, since),
        "oldest_queued_age_seconds": None
        if oldest is None or now is None
        else max(0.0, round((now - oldest).total_seconds(), 1)),
    }
