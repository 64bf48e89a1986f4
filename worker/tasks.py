"""The cancel task: claim a message's jobs, then for each call, classify, decide; record them all
in one transaction.

Every decision is made by the pure core (`fpcancel.classify`: what an answer means;
`fpcancel.pauses`: what it means for the fleet; `fpcancel.transitions`: where the job goes) and
every write goes through `fpcancel.jobstore`. This module only carries them out, and never holds
a database connection while it waits for the rate limiter or the provider.

A message carries one job (a customer's, or a retry) or, when the rate is high, a few (the feed
sizes them so a batch never holds a thread for long): a batch is claimed in one transaction and
its calls are recorded in one, which is what lets one worker keep up with a fast provider.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar

from celery import shared_task
from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from fpcancel import jobstore, metrics
from fpcancel.answers import Answer, CallResult, ProviderError
from fpcancel.app import BATCH_TASK_NAME, TASK_NAME
from fpcancel.classify import Decision, classify_cancel, classify_status_check
from fpcancel.jobstore import CallRecord
from fpcancel.pauses import (
    PROBE_SECONDS,
    away_decision,
    pause_seconds,
    plan_pause,
    provider_limit,
    provider_trouble,
    remaining_calls,
)
from fpcancel.ratelimit import LATE_SECONDS, LateCall, Slot, wait_for_slot
from fpcancel.runtime import Runtime, current
from fpcancel.statuses import AttemptKind, PauseReason
from fpcancel.transitions import ClaimedJob, after_cancel, after_status_check

log = logging.getLogger("fpcancel.calls")
T = TypeVar("T")


@shared_task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def cancel_order(job_id: int, token: str) -> str:
    """Celery's entry point for a message of one job."""
    return run_job(current(), job_id, token)


@shared_task(name=BATCH_TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def cancel_orders(items: list[list[Any]]) -> list[str]:
    """Celery's entry point for a message of several jobs: [[job_id, token], ...]."""
    return run_jobs(current(), [(int(job_id), str(token)) for job_id, token in items])


def in_transaction(runtime: Runtime, work: Callable[[Connection], T], *, patience: float = 0) -> T:
    """Run `work` in one transaction (a Core connection: the task's writes need no ORM); while
    the database is away, keep trying for `patience` seconds (an answer already received must
    not be forgotten)."""
    retrying = Retrying(
        retry=retry_if_exception_type((OperationalError, InterfaceError)),
        stop=stop_after_delay(patience),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )
    for attempt in retrying:
        with attempt, runtime.engine.begin() as connection:
            return work(connection)
    raise AssertionError("unreachable")


def run_job(runtime: Runtime, job_id: int, token: str) -> str:
    """Handle a message of one job; returns what happened, for logs and tests."""
    return run_jobs(runtime, [(job_id, token)])[0]


def run_jobs(runtime: Runtime, items: Sequence[tuple[int, str]]) -> list[str]:
    """Handle one message: claim its jobs, run each (a status check first when one is due,
    then the cancel), record every call and every job's new state in one transaction. Returns
    what happened to each job of the message ("skipped" for one not claimed: a duplicate or
    stale message)."""
    settings = runtime.settings
    now = runtime.clock()
    lease = settings.claim_lease_seconds + (len(items) - 1) * settings.call_budget_seconds
    claimed = in_transaction(runtime, lambda c: jobstore.claim_jobs(c, items, now, lease))
    batch = _Batch(runtime)
    outcomes = {job.id: batch.run(job) for job in claimed}
    batch.settle_late()
    batch.flush()
    if claimed:
        runtime.fleet.wake()  # a thread is free: the feed may send more
    return [outcomes.get(job_id, "skipped") for job_id, _ in items]


@dataclass(frozen=True)
class _Release:
    """A job going back to wait, untouched by this run's calls."""

    job: ClaimedJob
    after_seconds: float
    call_left: bool | None


@dataclass
class _Batch:
    """One message's writes, kept in order and applied in one transaction by `flush`."""

    runtime: Runtime
    writes: list[CallRecord | _Release] = field(default_factory=list)
    # The last call left late: its stamp moves with the thread's next ask for a slot (one
    # round trip for both), or by `settle_late` when the message ends.
    late: LateCall | None = None

    def run(self, job: ClaimedJob) -> str:
        runtime = self.runtime
        if runtime.stop.is_set():
            return self._release(job, 0.0, call_left=False)  # stopping: back untouched
        try:
            number = job.calls_made
            if job.needs_status_check:
                record = self._call(job, AttemptKind.STATUS_CHECK, number + 1)
                if record is None:
                    return "released"
                number += 1
                if not record.update.proceed:
                    return record.update.status.value
            record = self._call(job, AttemptKind.CANCEL, number + 1)
            return "released" if record is None else record.update.status.value
        except Exception:
            log.exception(
                "job=%s order=%s: unexpected error; the job goes back", job.id, job.order_uuid
            )
            return self._release(job, runtime.settings.retry_base_seconds, call_left=None)

    def _call(self, job: ClaimedJob, kind: AttemptKind, number: int) -> CallRecord | None:
        """Wait for a rate-limit slot, make the call, decide; None when the job went back
        without one."""
        runtime = self.runtime
        late, self.late = self.late, None
        slot, waited = _slot(runtime, job, before_waiting=self.flush, late=late)
        if slot is None:
            self._release(job, runtime.limiter.paused_for(), call_left=False)
            return None
        assert runtime.client is not None
        client = runtime.client
        started = runtime.clock()
        result: CallResult
        try:
            if kind is AttemptKind.CANCEL:
                result = client.cancel_order(job.order_uuid, job.note)
            else:
                result = client.order_status(job.order_uuid)
        except ProviderError as exc:
            result = exc
        finished = runtime.clock()
        self.late = _follow_window(runtime, slot, result)
        if kind is AttemptKind.CANCEL:
            decision, pause = _heed(runtime, classify_cancel(result, finished.timestamp()), result)
            update = after_cancel(job, decision, runtime.policy, finished, pause, runtime.rng)
        else:
            checked = classify_status_check(result, finished.timestamp())
            decision, pause = _heed(runtime, checked, result)
            update = after_status_check(job, decision, runtime.policy, finished, pause)
        record = CallRecord(job, number, kind, started, finished, result, decision, update, waited)
        self.writes.append(record)
        return record

    def settle_late(self) -> None:
        """Move the last call's stamp now if it left late: no ask for a slot follows."""
        if self.late is not None:
            self.runtime.limiter.left_late(self.late.slot, self.late.late_seconds)
            self.late = None

    def _release(self, job: ClaimedJob, after_seconds: float, *, call_left: bool | None) -> str:
        self.writes.append(_Release(job, after_seconds, call_left))
        return "released" if call_left is not None else "error"

    def flush(self) -> None:
        """Apply the writes so far in order, in one transaction; keep trying while the
        database is away, for as long as we hold the jobs. Called at the message's end, and
        before its thread waits out a pause for a slot: a call made is on record while the
        fleet sits the pause out (a probe's row shows at once, not when the batch ends)."""
        if not self.writes:
            return
        runtime = self.runtime
        now = runtime.clock()

        def write(connection: Connection) -> set[int]:
            held: set[int] = set()
            pending: list[CallRecord] = []
            for item in [*self.writes, None]:
                if isinstance(item, CallRecord):
                    pending.append(item)
                    continue
                held |= jobstore.record_calls(connection, pending)
                pending = []
                if isinstance(item, _Release):
                    jobstore.release_job(
                        connection, item.job, now, item.after_seconds, call_left=item.call_left
                    )
            return held

        held = in_transaction(runtime, write, patience=runtime.settings.claim_lease_seconds)
        for item in self.writes:
            if isinstance(item, CallRecord):
                _observe(item, held=item.job.id in held)
        self.writes = []


def _slot(
    runtime: Runtime,
    job: ClaimedJob,
    before_waiting: Callable[[], None],
    late: LateCall | None,
) -> tuple[Slot | None, float]:
    """A rate-limit slot and the seconds waited for it; no slot when none came in time (or we
    are stopping): the job then goes back untouched, no attempt spent. `late` (the thread's
    previous call) is re-stamped by the first ask."""
    slot, waited = wait_for_slot(
        runtime.limiter,
        job.lane,
        max_wait_seconds=runtime.settings.rate_limit_wait_seconds,
        stop=runtime.stop,
        before_waiting=before_waiting,
        late=late,
    )
    metrics.RATE_WAIT.labels(job.lane).observe(waited)
    return slot, waited


def _follow_window(runtime: Runtime, slot: Slot, result: CallResult) -> LateCall | None:
    """Keep the fleet's log where the provider's window is: the provider's countdown places
    each call in its windows. Returns the call when it left late, for the caller to move its
    stamp (with its next ask for a slot)."""
    limiter, configured = runtime.limiter, runtime.settings.rate_limit.calls
    late = max(0.0, result.left_at - slot.asked_at) if result.left_at is not None else 0.0
    moved = LateCall(slot, late) if late > LATE_SECONDS else None
    if not isinstance(result, Answer):
        return moved
    remaining = remaining_calls(result)
    if remaining is not None:
        limiter.saw_remaining(slot.stamp_ms + late * 1000, remaining)
    said = provider_limit(result)
    if said is not None and said != configured:
        _say_once(
            "limit",
            "the provider counts %d calls a window; FPCANCEL_RATE_LIMIT says %s",
            said,
            runtime.settings.rate_limit,
        )
    if moved is not None and (result.status == 429 or remaining == 0):
        # The fleet is about to wait for the window to free (`window_full_for` reads the log):
        # the log must say when this call really left first.
        limiter.left_late(slot, late)
        return None
    return moved


def _observe(record: CallRecord, *, held: bool) -> None:
    """One log line and the metrics of a recorded call."""
    job, decision, result = record.job, record.decision, record.result
    http_status = result.status if isinstance(result, Answer) else None
    metrics.CALLS.labels(
        record.kind.value, decision.outcome.value, str(http_status or "none")
    ).inc()
    metrics.CALL_SECONDS.labels(record.kind.value).observe(result.duration_ms / 1000)
    if record.update.final and held:
        metrics.FINISHED.labels(record.update.status.value).inc()
    counted = record.kind is AttemptKind.CANCEL and decision.counts
    attempts = job.attempts + (1 if counted else 0)
    log.info(
        "job=%s order=%s kind=%s attempts=%s outcome=%s http=%s duration_ms=%s rate_wait_ms=%d%s",
        job.id,
        job.order_uuid,
        record.kind.value,
        attempts,
        decision.outcome.value,
        http_status or "-",
        result.duration_ms,
        record.rate_wait_seconds * 1000,
        "" if held else " (the job was taken back meanwhile; its status will be checked)",
        extra={
            "fields": {
                "job_id": job.id,
                "order_uuid": job.order_uuid,
                "kind": record.kind.value,
                "attempts": attempts,
                "outcome": decision.outcome.value,
                "http_status": http_status,
                "duration_ms": result.duration_ms,
                "rate_wait_ms": int(record.rate_wait_seconds * 1000),
            }
        },
    )


def _heed(runtime: Runtime, decision: Decision, result: CallResult) -> tuple[Decision, float]:
    """Carry out what the call means for the fleet (`fpcancel.pauses`); returns the decision
    (changed when the provider as a whole is away: then no call is the order's fault) and the
    pause."""
    limiter, settings = runtime.limiter, runtime.settings
    if provider_trouble(result) and limiter.note_trouble():
        decision = away_decision(decision)
        _say_once(
            "away",
            "provider unreachable (no call gets through): every worker pauses, one probe call "
            "every %.0f s; no attempt is spent meanwhile",
            PROBE_SECONDS,
            level=logging.ERROR,
        )
    plan = plan_pause(decision, result)
    if plan.went_through:
        limiter.note_success()
    if plan.reason is None:
        return decision, 0.0
    failures = limiter.note_failure(plan.reason) if plan.grows else 0
    seconds = pause_seconds(
        plan,
        failures_in_a_row=failures,
        window_frees_in=limiter.window_full_for() if plan.until_window_frees else 0.0,
        rate_window_seconds=settings.rate_limit.per_seconds,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
    )
    limiter.pause(plan.reason, seconds)
    if plan.until_window_frees:
        return decision, 0.0  # the provider's window is spent, but this call went through
    metrics.PAUSES.labels(plan.reason.value).inc()
    status = result.status if isinstance(result, Answer) else "-"
    if plan.reason is PauseReason.RATE_LIMITED:
        log.warning("provider answered 429: every worker pauses calls for %.1f s", seconds)
    elif plan.reason in _FAULTS:
        log.error(
            "%s (HTTP %s, %d in a row): every worker pauses calls for %.1f s; %s",
            _FAULTS[plan.reason],
            status,
            failures,
            seconds,
            _FIXES[plan.reason],
        )
    return decision, seconds


_said_at: dict[str, float] = {}


def _say_once(topic: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
    """Log `message` at most once a minute per topic (a fleet-wide condition, not per call)."""
    now = perf_counter()
    if now - _said_at.get(topic, -1e9) >= 60:
        _said_at[topic] = now
        log.log(level, message, *args)


_FAULTS = {
    PauseReason.UNAUTHORIZED: "provider refused the token",
    PauseReason.MISROUTED: "provider URL looks wrong (an answer that is not the API's)",
    PauseReason.NOT_SENT: "a request to the provider could not be built",
}
_FIXES = {
    PauseReason.UNAUTHORIZED: "fix FRONTPAYMENT_TOKEN and restart the workers",
    PauseReason.MISROUTED: "check FRONTPAYMENT_BASE_URL",
    PauseReason.NOT_SENT: "check FRONTPAYMENT_BASE_URL and FRONTPAYMENT_TOKEN",
}
