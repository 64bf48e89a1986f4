"""What ops do to the job table: send finished-but-failed jobs round again (`fpcancel jobs retry`).

A job that is `dead` or `failed` goes back to `queued` with `next_attempt_at` now; the workers'
scheduler sends it, nothing is published here. Its attempt rows and its `attempts` stay:
`round_start_attempts` moves up to `attempts`, and the task counts the round's cancel POSTs from
there (`ClaimedJob.attempts_in_round`), so the job gets FPCANCEL_MAX_ATTEMPTS more.

The partial unique index `uq_cancel_jobs_active_order` keeps an order to one job that is queued,
running, retrying or succeeded. A dead job whose order has meanwhile got another such job cannot
go round again: it is skipped, with the other job named. Jobs are looked at in batches of
`BATCH_JOBS` (one transaction each); `fpcancel.jobstore.send_round_again` changes them.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from fpcancel import jobstore
from fpcancel.errors import JobStateError, UnknownJobError
from fpcancel.models.tables import CancelJob
from fpcancel.statuses import ACTIVE_STATUSES, RETRYABLE_BY_OPS

RETRYABLE = tuple(s.value for s in RETRYABLE_BY_OPS)
ACTIVE = tuple(s.value for s in ACTIVE_STATUSES)
BATCH_JOBS = 1000
SHOWN_CANDIDATES = 100  # rows kept for the human dry-run table; --json lists every id


@dataclass(frozen=True)
class RetrySelection:
    """`jobs retry --status ...`: which finished-but-failed jobs go round again."""

    statuses: tuple[str, ...] = RETRYABLE
    source: str | None = None
    since: datetime | None = None  # created at or after, as `jobs list --since`


@dataclass(frozen=True)
class Candidate:
    """A job that may go round again, as read for deciding (no ORM object)."""

    id: int
    order_uuid: str
    status: str
    source: str | None
    attempts: int
    last_message: str | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Skipped:
    id: int
    reason: str


@dataclass
class RetryResult:
    """What `jobs retry` did (or, with `dry_run`, would do)."""

    dry_run: bool
    ids: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    shown: list[Candidate] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "retried": len(self.ids),
            "skipped": [{"id": s.id, "reason": s.reason} for s in self.skipped],
            "ids": self.ids,
            "dry_run": self.dry_run,
        }


_COLUMNS = (
    CancelJob.id,
    CancelJob.order_uuid,
    CancelJob.status,
    CancelJob.source,
    CancelJob.attempts,
    CancelJob.last_message,
    CancelJob.finished_at,
)


def _candidates(stmt: Select[*tuple[Any, ...]], session: Session) -> list[Candidate]:
    return [Candidate(*row) for row in session.execute(stmt)]


def check_retryable(session: Session, job_ids: Sequence[int]) -> list[Candidate]:
    """The jobs behind `job_ids`, in the order given; `UnknownJobError` or `JobStateError`
    naming every id that does not exist or is not dead or failed."""
    found: dict[int, Candidate] = {}
    for start in range(0, len(job_ids), BATCH_JOBS):
        chunk = job_ids[start : start + BATCH_JOBS]
        stmt = select(*_COLUMNS).where(CancelJob.id.in_(chunk))
        found.update((c.id, c) for c in _candidates(stmt, session))
    unknown = [f"job {i}: no such job" for i in job_ids if i not in found]
    wrong = [
        f"job {i}: is {found[i].status}; only dead or failed jobs can be retried"
        for i in job_ids
        if i in found and found[i].status not in RETRYABLE
    ]
    if unknown:
        raise UnknownJobError("; ".join(unknown + wrong))
    if wrong:
        raise JobStateError("; ".join(wrong))
    return [found[i] for i in job_ids]


def _matching(selection: RetrySelection) -> list[Any]:
    where: list[Any] = [CancelJob.status.in_(selection.statuses)]
    if selection.source is not None:
        where.append(CancelJob.source == selection.source)
    if selection.since is not None:
        where.append(CancelJob.created_at >= selection.since)
    return where


def count_matching(session: Session, selection: RetrySelection) -> int:
    stmt = select(func.count()).select_from(CancelJob).where(*_matching(selection))
    return int(session.execute(stmt).scalar_one())


def matching_batch(
    session: Session, selection: RetrySelection, after_id: int, size: int = BATCH_JOBS
) -> list[Candidate]:
    """The next `size` jobs of the selection with an id above `after_id` (keyset paging: the
    status-and-id index serves it however far into a million jobs it is)."""
    stmt = (
        select(*_COLUMNS)
        .where(*_matching(selection), CancelJob.id > after_id)
        .order_by(CancelJob.id)
        .limit(size)
    )
    return _candidates(stmt, session)


def active_elsewhere(session: Session, job_ids: Sequence[int]) -> dict[int, tuple[int, str]]:
    """For each of `job_ids` whose order has another job that is queued, running, retrying or
    succeeded: that job's id and status."""
    other = aliased(CancelJob)
    stmt = (
        select(CancelJob.id, other.id, other.status)
        .join(other, other.order_uuid == CancelJob.order_uuid)
        .where(CancelJob.id.in_(job_ids), other.id != CancelJob.id, other.status.in_(ACTIVE))
    )
    return {row[0]: (row[1], row[2]) for row in session.execute(stmt)}


def _blocked_reason(order_uuid: str, blocker: tuple[int, str] | None) -> str:
    if blocker is None:
        return f"order {order_uuid} has another job that is queued, running, retrying or succeeded"
    return f"order {order_uuid} already has job {blocker[0]} ({blocker[1]})"


def send_round_again(
    session: Session, jobs: Sequence[Candidate], now: datetime
) -> tuple[list[int], list[Skipped]]:
    """Send `jobs` round again in the caller's transaction; returns (ids sent, skipped, each
    with its reason: the order got another active job meanwhile, or the job changed)."""
    done, refused = jobstore.send_round_again(session, [job.id for job in jobs], now)
    blockers = active_elsewhere(session, sorted(refused)) if refused else {}
    skipped: list[Skipped] = []
    for job in jobs:
        if job.id in refused:
            skipped.append(Skipped(job.id, _blocked_reason(job.order_uuid, blockers.get(job.id))))
        elif job.id not in done:
            skipped.append(Skipped(job.id, "is no longer dead or failed (changed meanwhile)"))
    return [job.id for job in jobs if job.id in done], skipped


def _plan(
    session: Session, jobs: Sequence[Candidate], taken_orders: set[str]
) -> tuple[list[Candidate], list[Skipped]]:
    """Split `jobs` into those that can go round again and those whose order is busy: another
    job of the order is active or succeeded, or an earlier job in this run takes the order."""
    blockers = active_elsewhere(session, [job.id for job in jobs])
    go: list[Candidate] = []
    skipped: list[Skipped] = []
    for job in jobs:
        if job.id in blockers:
            skipped.append(Skipped(job.id, _blocked_reason(job.order_uuid, blockers[job.id])))
        elif job.order_uuid in taken_orders:
            reason = f"order {job.order_uuid} goes round again with an earlier job in this run"
            skipped.append(Skipped(job.id, reason))
        else:
            taken_orders.add(job.order_uuid)
            go.append(job)
    return go, skipped


def _apply(
    session: Session,
    jobs: Sequence[Candidate],
    result: RetryResult,
    now: datetime,
    taken_orders: set[str],
) -> None:
    go, skipped = _plan(session, jobs, taken_orders)
    result.skipped += skipped
    if result.dry_run:
        result.ids += [job.id for job in go]
        result.shown += go[: SHOWN_CANDIDATES - len(result.shown)]
        return
    sent, refused = send_round_again(session, go, now)
    result.ids += sent
    result.skipped += refused


def retry_jobs(
    sessions: sessionmaker[Session],
    job_ids: Iterable[int],
    now: Callable[[], datetime],
    *,
    dry_run: bool = False,
) -> RetryResult:
    """`jobs retry JOB_ID...`: all or nothing. Every id must name a dead or failed job, or
    nothing changes (`UnknownJobError` / `JobStateError`, exit 2); then each goes round again
    unless its order is busy (skipped, with the reason). One transaction."""
    unique_ids = list(dict.fromkeys(job_ids))
    result = RetryResult(dry_run=dry_run)
    with sessions.begin() as session:
        candidates = check_retryable(session, unique_ids)
        taken: set[str] = set()
        at = now()
        for start in range(0, len(candidates), BATCH_JOBS):
            _apply(session, candidates[start : start + BATCH_JOBS], result, at, taken)
    return result


def retry_matching(
    sessions: sessionmaker[Session],
    selection: RetrySelection,
    now: Callable[[], datetime],
    *,
    dry_run: bool = False,
    batch_jobs: int = BATCH_JOBS,
    progress: Callable[[int], None] | None = None,
) -> RetryResult:
    """`jobs retry --status ...`: every matching job, `batch_jobs` per transaction, so a million
    dead jobs cost a thousand short transactions and never a million objects in memory."""
    bad = [s for s in selection.statuses if s not in RETRYABLE]
    if bad or not selection.statuses:
        raise JobStateError(f"--status: {', '.join(bad) or 'none'}; only dead or failed")
    result = RetryResult(dry_run=dry_run)
    run_taken: set[str] = set()  # a dry run changes nothing, so it remembers orders itself
    after_id = 0
    while True:
        with sessions.begin() as session:
            batch = matching_batch(session, selection, after_id, batch_jobs)
            if not batch:
                break
            after_id = batch[-1].id
            # A real run's earlier batches are in the table: the index sees their orders.
            _apply(session, batch, result, now(), run_taken if dry_run else set())
        if progress is not None:
            progress(len(batch))
    return result
