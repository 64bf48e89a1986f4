"""The one module that changes the job table: every write to `cancel_jobs` and `cancel_attempts`.

Each function takes the caller's `Session` and is one step of the state machine drawn in
`fpcancel.transitions` (which decides the values; this module only writes them):

    insert_jobs / insert_staged   enqueue, enqueue-bulk           (new)  ──▶ queued
    dispatch_due / clear_dispatch the feed sends a waiting job    queued | retrying (message out)
    claim_jobs                    a worker takes a message's jobs queued | retrying ──▶ running
    record_calls                  the calls' rows, and outcomes   running ──▶ terminal | retrying
    release_job                   back untouched (no slot, stop)  running ──▶ queued | retrying
    take_back_expired             the worker was lost             running ──▶ retrying | failed
    send_round_again              ops: `jobs retry`               dead | failed ──▶ queued

Whichever step makes a job terminal also writes its outcome event (`cancel_events`), in the same
transaction: no outcome is lost, none invented, and a job sent round again gives a new one when
it ends again.

Changes a worker makes to a job it holds are guarded by the job's `dispatch_token`: once the job
was taken back, a late update touches nothing. One new job is `insert_jobs([values])[0]`.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from fpcancel.answers import Answer, CallResult
from fpcancel.classify import Decision, errors_json
from fpcancel.events import JOB_COLUMNS, finished_payload
from fpcancel.models.tables import CancelAttempt, CancelEvent, CancelJob
from fpcancel.statuses import (
    ACTIVE_SQL,
    ACTIVE_STATUSES,
    EVENT_FINISHED,
    WAITING_SQL,
    WAITING_STATUSES,
    AttemptKind,
    JobStatus,
)
from fpcancel.transitions import (
    NOT_HELD,
    ClaimedJob,
    JobUpdate,
    LostClaim,
    Policy,
    after_lost_claim,
    new_job_values,
    round_again_values,
    waiting_status,
)

WAITING = tuple(s.value for s in WAITING_STATUSES)
RETRYABLE = (JobStatus.DEAD.value, JobStatus.FAILED.value)
BODY_KEEP_CHARS = 2000
DEADLOCK_RETRIES = 5


@dataclass(frozen=True)
class NewJob:
    id: int
    order_uuid: str
    status: str
    created: bool


@dataclass(frozen=True)
class Dispatch:
    """One message to send: which job, with which one-time token, in which lane."""

    job_id: int
    token: str
    lane: str


# A Session, or a Core connection where the ORM's overhead matters (one customer's enqueue).
Db = Session | Connection


def _dialect(db: Db) -> str:
    bind = db.get_bind() if isinstance(db, Session) else db
    return bind.dialect.name


_INSERTS: dict[str, Any] = {}
_JOBS = cast(Table, CancelJob.__table__)


def _insert_if_no_active(session: Db) -> postgresql.Insert | sqlite.Insert:
    """INSERT into cancel_jobs that does nothing for an order that already has an active or
    succeeded job: the partial unique index decides, so concurrent producers cannot both win.
    One statement object per dialect, so SQLAlchemy compiles it once."""
    dialect = _dialect(session)
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        # The table, not the ORM entity: a Core statement, whose rowcount the bulk move reads.
        table = cast(Table, CancelJob.__table__)
        insert_ = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        stmt = _INSERTS[dialect] = insert_.on_conflict_do_nothing(
            index_elements=["order_uuid"], index_where=text(ACTIVE_SQL)
        )
    return stmt


def _lock(stmt: Any, session: Session) -> Any:
    """`FOR UPDATE SKIP LOCKED` on PostgreSQL: two feeds never take the same rows."""
    if _dialect(session) == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


# -- new jobs -------------------------------------------------------------------------------------


def insert_jobs(session: Db, rows: Sequence[dict[str, Any]]) -> list[NewJob]:
    """New `queued` jobs from `new_job_values` dicts (distinct orders); for an order that already
    has an active or succeeded job, that job instead (SPEC.md, "Dedup"). In the input's order."""
    found: dict[str, NewJob] = {}
    pending = list(rows)
    for _ in range(5):
        if not pending:
            break
        # One statement and a list of parameters (an executemany, "insertmanyvalues"): compiled
        # once and cached, where a multi-row VALUES would be compiled on every call.
        stmt = _insert_if_no_active(session).returning(
            CancelJob.__table__.c.id, CancelJob.__table__.c.order_uuid
        )
        for row in session.execute(stmt, pending):
            found[row.order_uuid] = NewJob(row.id, row.order_uuid, JobStatus.QUEUED.value, True)
        missing = [r["order_uuid"] for r in pending if r["order_uuid"] not in found]
        if missing:
            existing = session.execute(
                select(CancelJob.id, CancelJob.order_uuid, CancelJob.status).where(
                    CancelJob.order_uuid.in_(missing), CancelJob.status.in_(ACTIVE_STATUSES)
                )
            )
            for row in existing:
                found[row.order_uuid] = NewJob(row.id, row.order_uuid, row.status, False)
        # An active job that ended between the two statements: insert that order again.
        pending = [r for r in pending if r["order_uuid"] not in found]
    if pending:
        raise RuntimeError(f"could not settle a job for order {pending[0]['order_uuid']}")
    return [found[r["order_uuid"]] for r in rows]


_STAGE_META = MetaData()
_STAGE = Table(
    "fpcancel_bulk_stage",
    _STAGE_META,
    Column(
        "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("order_uuid", Text),
    Column("note", Text),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",  # gone at commit or rollback: nothing outlives the transaction
)


def insert_staged(
    session: Session,
    rows: Iterable[tuple[str, str]],
    *,
    source: str | None,
    lane: str,
    now: datetime,
    batch_rows: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, int]:
    """Many jobs at once, in the caller's transaction: (order_uuid, note) rows are staged in a
    temporary table batch by batch (COPY on PostgreSQL), then one INSERT ... SELECT moves the first
    row of each order into `cancel_jobs`. Returns (rows, distinct orders, jobs created)."""
    if _dialect(session) == "sqlite":
        # SQLite keeps temporary tables for the connection's life: one from an earlier run goes.
        session.execute(text(f"DROP TABLE IF EXISTS temp.{_STAGE.name}"))
    _STAGE.create(session.connection())
    total = 0
    batch: list[tuple[int, str, str]] = []
    for order_uuid, note in rows:
        total += 1
        batch.append((total, order_uuid, note))
        if len(batch) >= batch_rows:
            _load_stage(session, batch, progress)
            batch = []
    _load_stage(session, batch, progress)
    distinct = int(session.execute(select(func.count(_STAGE.c.order_uuid.distinct()))).scalar_one())
    created = _move_staged(session, source, lane, now)
    if _dialect(session) == "sqlite":
        _STAGE.drop(session.connection())
    return total, distinct, created


def _load_stage(
    session: Session,
    batch: list[tuple[int, str, str]],
    progress: Callable[[int], None] | None,
) -> None:
    if not batch:
        return
    if _dialect(session) == "postgresql":
        driver: Any = session.connection().connection.driver_connection
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {_STAGE.name} (seq, order_uuid, note) FROM STDIN") as copy,
        ):
            for row in batch:
                copy.write_row(row)
    else:
        session.execute(
            insert(_STAGE), [{"seq": s, "order_uuid": o, "note": n} for s, o, n in batch]
        )
    if progress is not None:
        progress(len(batch))


def _move_staged(session: Session, source: str | None, lane: str, now: datetime) -> int:
    """One INSERT ... SELECT of the stage's first row per order, in input order, with the values
    every new job has; an order with an active or succeeded job is left alone. Two bulk runs
    sharing orders can deadlock on the unique index: the loser's statement is tried again under
    a SAVEPOINT (its stage survives)."""
    values = new_job_values(order_uuid="", note="", source=source, lane=lane, now=now)
    columns = list(values)
    staged: dict[str, ColumnElement[Any]] = {
        "order_uuid": _STAGE.c.order_uuid,
        "note": _STAGE.c.note,
    }

    def column(name: str) -> ColumnElement[Any]:
        if name in staged:
            return staged[name]
        if values[name] is None:
            return null()
        return literal(values[name], CancelJob.__table__.c[name].type)

    firsts = select(func.min(_STAGE.c.seq)).group_by(_STAGE.c.order_uuid)
    chosen = (
        select(*[column(name) for name in columns])
        .where(_STAGE.c.seq.in_(firsts))
        .order_by(_STAGE.c.seq)
    )
    # SQLAlchemy reads an INSERT's rowcount only when asked to keep it.
    stmt = (
        _insert_if_no_active(session)
        .from_select(columns, chosen)
        .execution_options(preserve_rowcount=True)
    )
    for attempt in range(DEADLOCK_RETRIES):
        try:
            with session.begin_nested():
                return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == DEADLOCK_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


# -- the feed ---------------------------------------------------------------------------------


def dispatch_due(
    session: Session,
    now: datetime,
    room: int,
    lanes: Sequence[str],
    lost_before: datetime,
    make_token: Callable[[], str],
) -> tuple[list[Dispatch], int]:
    """Mark up to `room` due jobs as sent, lane by lane in `lanes` order; returns them and how
    many were re-sends of lost messages (sent before `lost_before` and never claimed)."""
    picked: list[Dispatch] = []
    resent = 0
    for lane in lanes:
        if len(picked) >= room:
            break
        stmt = (
            select(CancelJob.id, CancelJob.dispatch_token)
            .where(
                CancelJob.status.in_(WAITING),
                CancelJob.lane == lane,
                CancelJob.next_attempt_at <= now,
                CancelJob.dispatch_token.is_(None) | (CancelJob.dispatched_at < lost_before),
            )
            .order_by(CancelJob.next_attempt_at, CancelJob.id)
            .limit(room - len(picked))
        )
        rows = session.execute(_lock(stmt, session)).all()
        if not rows:
            continue
        # The rows are ours now (locked on PostgreSQL; SQLite writes one transaction at a time),
        # so one executemany marks them all.
        tokens = [make_token() for _ in rows]
        session.execute(
            update(_JOBS)
            .where(_JOBS.c.id == bindparam("job_id"), text(WAITING_SQL))  # no IN list: executemany
            .values(dispatch_token=bindparam("token"), dispatched_at=now),
            [{"job_id": row.id, "token": token} for row, token in zip(rows, tokens, strict=True)],
        )
        for row, token in zip(rows, tokens, strict=True):
            picked.append(Dispatch(row.id, token, lane))
            resent += row.dispatch_token is not None
    return picked, resent


def clear_dispatch(session: Db, dispatches: Iterable[Dispatch]) -> None:
    """Publishing failed: the feed sends these jobs on its next round."""
    for item in dispatches:
        session.execute(
            update(CancelJob)
            .where(CancelJob.id == item.job_id, CancelJob.dispatch_token == item.token)
            .where(CancelJob.status.in_(WAITING))
            .values(dispatch_token=None, dispatched_at=None)
        )


def take_back_expired(session: Session, now: datetime, policy: Policy) -> tuple[int, int]:
    """Running jobs whose worker's claim expired go back to wait, or fail when their workers keep
    dying (`after_lost_claim`); returns (taken back, failed)."""
    stmt = select(
        CancelJob.id,
        CancelJob.dispatch_token,
        CancelJob.attempts,
        CancelJob.round_start_attempts,
        CancelJob.in_call_since,
        CancelJob.needs_status_check,
        CancelJob.lost_claims,
    ).where(CancelJob.status == JobStatus.RUNNING.value, CancelJob.claimed_until < now)
    taken = failed = 0
    for row in session.execute(_lock(stmt, session)).all():
        lost = LostClaim(
            id=row.id,
            attempts=row.attempts,
            round_start_attempts=row.round_start_attempts,
            call_may_have_left=row.in_call_since is not None or row.needs_status_check,
            lost_claims=row.lost_claims,
        )
        change = after_lost_claim(lost, policy, now)
        changed = session.execute(
            update(CancelJob)
            .where(CancelJob.id == row.id, CancelJob.dispatch_token == row.dispatch_token)
            .values(status=change.status.value, updated_at=now, **change.values)
            .returning(*_EVENT_COLUMNS)
        ).one_or_none()
        if changed is not None and change.final:
            _write_finished_event(session, changed._mapping, now)
            failed += 1
        elif changed is not None:
            taken += 1
    return taken, failed


# -- a worker's hold on a job ---------------------------------------------------------------------


def claim_jobs(
    session: Db,
    items: Sequence[tuple[int, str]],
    now: datetime,
    lease_seconds: float,
) -> list[ClaimedJob]:
    """Take the jobs of one message, (job id, one-time token) each: those still waiting with
    that token turn `running`, held for `lease_seconds`; a duplicate or stale message takes
    nothing. Each is marked as having a POST possibly on the wire from now (`in_call_since`):
    should the worker die, the order's status is checked before anyone POSTs again."""
    if not items:
        return []
    pairs = tuple_(CancelJob.id, CancelJob.dispatch_token).in_(list(items))
    calls_made = (
        select(func.coalesce(func.max(CancelAttempt.number), 0))
        .where(CancelAttempt.job_id == CancelJob.id)
        .scalar_subquery()
    )
    before = {
        row.id: (str(row.status), int(row.calls))
        for row in session.execute(
            select(CancelJob.id, CancelJob.status, calls_made.label("calls")).where(
                pairs, CancelJob.status.in_(WAITING)
            )
        )
    }
    if not before:
        return []
    rows = session.execute(
        update(CancelJob)
        .where(CancelJob.id.in_(list(before)), pairs, CancelJob.status.in_(WAITING))
        .values(
            status=JobStatus.RUNNING.value,
            claimed_until=now + timedelta(seconds=lease_seconds),
            in_call_since=now,
            updated_at=now,
        )
        .returning(
            CancelJob.id,
            CancelJob.dispatch_token,
            CancelJob.order_uuid,
            CancelJob.note,
            CancelJob.lane,
            CancelJob.attempts,
            CancelJob.round_start_attempts,
            CancelJob.needs_status_check,
        )
        .execution_options(synchronize_session=False)
    ).all()
    claimed = {
        row.id: ClaimedJob(
            id=row.id,
            order_uuid=row.order_uuid,
            note=row.note,
            lane=row.lane,
            status_before=before[row.id][0],
            attempts=row.attempts,
            round_start_attempts=row.round_start_attempts,
            needs_status_check=row.needs_status_check,
            token=row.dispatch_token,
            calls_made=before[row.id][1],
        )
        for row in rows
    }
    return [claimed[job_id] for job_id, _ in items if job_id in claimed]


def claim_job(
    session: Db, job_id: int, token: str, now: datetime, lease_seconds: float
) -> ClaimedJob | None:
    """`claim_jobs` for one message of one job."""
    claimed = claim_jobs(session, [(job_id, token)], now, lease_seconds)
    return claimed[0] if claimed else None


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
    session: Db,
    job: ClaimedJob,
    now: datetime,
    after_seconds: float,
    *,
    call_left: bool | None = None,
) -> bool:
    """Give the job back: it waits `after_seconds`, then goes again. If a cancel POST may have
    left (`call_left` True, or None for "unknown": a POST was marked on the wire), the order's
    status is checked before the next one."""
    if call_left is None:
        maybe_sent: ColumnElement[bool] | bool = CancelJob.in_call_since.is_not(None)
        status: Any = case(
            (
                CancelJob.in_call_since.is_not(None),
                waiting_status(job.status_before, call_may_have_left=True).value,
            ),
            else_=waiting_status(job.status_before, call_may_have_left=False).value,
        )
    else:
        maybe_sent = call_left
        status = waiting_status(job.status_before, call_may_have_left=call_left).value
    result = session.execute(
        update(CancelJob)
        .where(*_held(job))
        .values(
            status=status,
            needs_status_check=CancelJob.needs_status_check | maybe_sent,
            next_attempt_at=now + timedelta(seconds=after_seconds),
            updated_at=now,
            **NOT_HELD,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CallRecord:
    """One call to the provider as it happened, what it meant, and where it leaves its job:
    what `record_calls` writes."""

    job: ClaimedJob
    number: int  # the call's number among the job's calls (status checks included)
    kind: AttemptKind
    started_at: datetime
    finished_at: datetime
    result: CallResult
    decision: Decision
    update: JobUpdate
    rate_wait_seconds: float = 0.0


def record_calls(session: Db, records: Sequence[CallRecord]) -> set[int]:
    """Write each call's attempt row and apply its update to its job, in the caller's
    transaction and in order; a job that becomes terminal gets its outcome event here.

    The attempt rows are written even for jobs that are no longer ours (the calls happened); a
    job itself changes only while we still hold it. Returns the ids of the jobs that did."""
    if not records:
        return set()
    session.execute(insert(CancelAttempt), [_attempt_row(r) for r in records])
    # Consecutive records that set the same columns go in one executemany; a job's records stay
    # in order (a status check's before its cancel).
    group: list[CallRecord] = []
    for record in [*records, None]:
        if group and (record is None or _job_values(record).keys() != _job_values(group[0]).keys()):
            _update_held(session, group)
            group = []
        if record is not None:
            group.append(record)
    # Which jobs took their last record: their row now says what it said (a job taken back
    # meanwhile does not), and the terminal ones get their event.
    last = {record.job.id: record for record in records}
    held: set[int] = set()
    finished: list[tuple[Mapping[Any, Any], datetime]] = []
    rows = session.execute(
        select(*_EVENT_COLUMNS, _JOBS.c.updated_at).where(_JOBS.c.id.in_(list(last)))
    )
    for row in rows:
        record = last[row.id]
        if row.updated_at == record.finished_at and row.status == record.update.status.value:
            held.add(row.id)
            if record.update.final:
                finished.append((row._mapping, record.finished_at))
    _write_finished_events(session, finished)
    return held


def _update_held(session: Db, records: Sequence[CallRecord]) -> None:
    """Apply records that set the same columns, each to its job only while we still hold it."""
    columns = _job_values(records[0])
    session.execute(
        update(_JOBS)
        .where(
            _JOBS.c.id == bindparam("held_id"),
            _JOBS.c.dispatch_token == bindparam("held_token"),
            _JOBS.c.status == JobStatus.RUNNING.value,
        )
        .values({name: bindparam(f"v_{name}") for name in columns}),
        [
            {
                "held_id": r.job.id,
                "held_token": r.job.token,
                **{f"v_{name}": value for name, value in _job_values(r).items()},
            }
            for r in records
        ],
    )


def _attempt_row(record: CallRecord) -> dict[str, Any]:
    message, body, http_status = _gist(record.result)
    return {
        "job_id": record.job.id,
        "number": record.number,
        "kind": record.kind.value,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_ms": record.result.duration_ms,
        "http_status": http_status,
        "outcome": record.decision.outcome.value,
        "message": message,
        "response_body": body,
        "counted": record.kind is AttemptKind.CANCEL and record.decision.counts,
        "retry_in_ms": None
        if record.update.retry_in_seconds is None
        else int(record.update.retry_in_seconds * 1000),
        "rate_wait_ms": int(record.rate_wait_seconds * 1000),
    }


def _job_values(record: CallRecord) -> dict[str, Any]:
    message, _, http_status = _gist(record.result)
    values = dict(record.update.values)
    values.update(
        status=record.update.status.value,
        last_http_status=http_status,
        last_message=message,
        updated_at=record.finished_at,
    )
    if record.decision.errors is not None:
        values["last_errors"] = errors_json(record.decision.errors)
    if record.kind is AttemptKind.CANCEL:
        values["in_call_since"] = None
    if not record.update.proceed:
        values.update(NOT_HELD)
    return values


def _gist(result: CallResult) -> tuple[str | None, str | None, int | None]:
    """(message, body kept, HTTP status) of a call's result."""
    if isinstance(result, Answer):
        message = result.message or (None if result.body is not None else _first_line(result.text))
        return message, result.text[:BODY_KEEP_CHARS], result.status
    return result.message, None, None


# -- outcome events ---------------------------------------------------------------------------

_EVENT_COLUMNS = tuple(_JOBS.c[name] for name in JOB_COLUMNS)


def _write_finished_events(
    session: Db, finished: Sequence[tuple[Mapping[Any, Any], datetime]]
) -> list[int]:
    """Jobs that just became terminal: each its `cancel_job.finished` event, in the same
    transaction (SPEC.md, "Outcome events"), due for delivery at once. Returns the event ids."""
    if not finished:
        return []
    rows = [
        {
            "job_id": job["id"],
            "type": EVENT_FINISHED,
            "created_at": at,
            "payload": {},
            "next_delivery_at": at,
        }
        for job, at in finished
    ]
    ids = list(
        session.scalars(
            insert(CancelEvent).returning(CancelEvent.id, sort_by_parameter_order=True), rows
        )
    )
    events = cast(Table, CancelEvent.__table__)
    session.execute(
        update(events).where(events.c.id == bindparam("event_id")).values(payload=bindparam("doc")),
        [
            {"event_id": event_id, "doc": finished_payload(event_id, at, job)}
            for event_id, (job, at) in zip(ids, finished, strict=True)
        ],
    )
    return ids


def _write_finished_event(session: Db, job: Mapping[Any, Any], now: datetime) -> int:
    return _write_finished_events(session, [(job, now)])[0]


def _first_line(text: str, limit: int = 200) -> str | None:
    """A non-JSON body's gist for `message`: its first non-blank line (an nginx <title>, say)."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return None


# -- ops -------------------------------------------------------------------------------------


def _round_again(now: datetime) -> Any:
    return (
        update(CancelJob)
        .where(CancelJob.status.in_(RETRYABLE))
        .values(round_start_attempts=CancelJob.attempts, **round_again_values(now))
        .returning(CancelJob.id)
        # No ORM objects are loaded here: nothing in the session to keep in step.
        .execution_options(synchronize_session=False)
    )


def send_round_again(
    session: Session, job_ids: Sequence[int], now: datetime
) -> tuple[set[int], set[int]]:
    """Send dead or failed jobs round again in the caller's transaction; returns (sent, refused
    by the unique index because the order has another active job). A job no longer dead or
    failed is in neither. One UPDATE for all under a SAVEPOINT; if the index refuses it (an
    enqueue raced us), one per job, each under its own SAVEPOINT."""
    if not job_ids:
        return set(), set()
    try:
        with session.begin_nested():
            return set(session.scalars(_round_again(now).where(CancelJob.id.in_(job_ids)))), set()
    except IntegrityError:
        pass
    done: set[int] = set()
    refused: set[int] = set()
    for job_id in job_ids:
        try:
            with session.begin_nested():
                if session.scalars(_round_again(now).where(CancelJob.id == job_id)).first():
                    done.add(job_id)
        except IntegrityError:
            refused.add(job_id)
    return done, refused
