"""The cancel task: claim the job, call, classify, record, then finish or schedule.

Every decision is made by the pure core (`fpcancel.classify`: what an answer means;
`fpcancel.pauses`: what it means for the fleet; `fpcancel.transitions`: where the job goes) and
every write goes through `fpcancel.jobstore`. This module only carries them out, one short
transaction at a time, and never holds a database connection while it waits for the rate limiter
or the provider.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from celery import shared_task
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from fpcancel import jobstore, metrics
from fpcancel.answers import Answer, CallResult, ProviderError
from fpcancel.app import TASK_NAME
from fpcancel.classify import Decision, classify_cancel, classify_status_check
from fpcancel.pauses import pause_seconds, plan_pause
from fpcancel.ratelimit import wait_for_slot
from fpcancel.runtime import Runtime, current
from fpcancel.statuses import AttemptKind, PauseReason
from fpcancel.transitions import ClaimedJob, JobUpdate, after_cancel, after_status_check

log = logging.getLogger("fpcancel.calls")
T = TypeVar("T")


@shared_task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def cancel_order(job_id: int, token: str) -> str:
    """Celery's entry point; the work is in `run_job`."""
    return run_job(current(), job_id, token)


def in_transaction(runtime: Runtime, work: Callable[[Session], T], *, patience: float = 0) -> T:
    """Run `work` in one transaction; while the database is away, keep trying for `patience`
    seconds (an answer already received must not be forgotten)."""
    retrying = Retrying(
        retry=retry_if_exception_type((OperationalError, InterfaceError)),
        stop=stop_after_delay(patience),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )
    for attempt in retrying:
        with attempt, runtime.sessions.begin() as session:
            return work(session)
    raise AssertionError("unreachable")


def run_job(runtime: Runtime, job_id: int, token: str) -> str:
    """Handle one message for one job; returns what happened, for logs and tests."""
    settings = runtime.settings
    now = runtime.clock()
    job = in_transaction(
        runtime, lambda s: jobstore.claim_job(s, job_id, token, now, settings.claim_lease_seconds)
    )
    if job is None:
        return "skipped"  # a duplicate or stale message: someone else has (or had) this job
    try:
        if job.needs_status_check:
            outcome = _status_check(runtime, job)
            if outcome != "proceed":
                return outcome
        return _cancel(runtime, job)
    except Exception:
        log.exception(
            "job=%s order=%s: unexpected error; the job goes back", job.id, job.order_uuid
        )
        _give_back(runtime, job, after_seconds=settings.retry_base_seconds)
        return "error"


def _slot(runtime: Runtime, job: ClaimedJob) -> float | None:
    """Seconds waited for a rate-limit slot, or None when the job went back without one."""
    granted, waited = wait_for_slot(
        runtime.limiter,
        job.lane,
        max_wait_seconds=runtime.settings.rate_limit_wait_seconds,
        stop=runtime.stop,
    )
    metrics.RATE_WAIT.labels(job.lane).observe(waited)
    if not granted:
        # Not our turn (or we are stopping): the job goes back untouched, no attempt spent.
        _give_back(runtime, job, after_seconds=runtime.limiter.paused_for(), call_left=False)
        return None
    return waited


def _give_back(
    runtime: Runtime, job: ClaimedJob, *, after_seconds: float, call_left: bool | None = None
) -> None:
    now = runtime.clock()
    in_transaction(
        runtime,
        lambda s: jobstore.release_job(s, job, now, after_seconds, call_left=call_left),
        patience=30,
    )


def _status_check(runtime: Runtime, job: ClaimedJob) -> str:
    assert runtime.client is not None
    client = runtime.client
    call = _call(
        runtime, job, AttemptKind.STATUS_CHECK, lambda: client.order_status(job.order_uuid)
    )
    if call is None:
        return "released"
    decision = classify_status_check(call.result, call.finished.timestamp())
    pause = _heed(runtime, decision, call.result)
    update = after_status_check(job, decision, runtime.policy, call.finished, pause)
    _record(runtime, job, call, decision, update)
    return "proceed" if update.proceed else update.status.value


def _cancel(runtime: Runtime, job: ClaimedJob) -> str:
    assert runtime.client is not None
    client = runtime.client
    # Marked before the wait, so the POST leaves the moment its slot is granted: the gap between
    # the limiter's stamp and the provider's arrival time is what the limiter's margin covers.
    in_transaction(runtime, lambda s: jobstore.mark_in_call(s, job, runtime.clock()), patience=10)
    call = _call(
        runtime, job, AttemptKind.CANCEL, lambda: client.cancel_order(job.order_uuid, job.note)
    )
    if call is None:
        return "released"
    decision = classify_cancel(call.result, call.finished.timestamp())
    pause = _heed(runtime, decision, call.result)
    update = after_cancel(job, decision, runtime.policy, call.finished, pause, runtime.rng)
    _record(runtime, job, call, decision, update)
    return update.status.value


def _call(
    runtime: Runtime, job: ClaimedJob, kind: AttemptKind, send: Callable[[], Answer]
) -> "Call | None":
    """Wait for a rate-limit slot, then make the call; None when the job went back instead."""
    waited = _slot(runtime, job)
    if waited is None:
        return None
    started = runtime.clock()
    result: CallResult
    try:
        result = send()
    except ProviderError as exc:
        result = exc
    return Call(kind, started, runtime.clock(), waited, result)


@dataclass(frozen=True)
class Call:
    """One provider call as it happened."""

    kind: AttemptKind
    started: datetime
    finished: datetime
    rate_wait_seconds: float
    result: CallResult


def _record(
    runtime: Runtime, job: ClaimedJob, call: Call, decision: Decision, update: JobUpdate
) -> None:
    """Write the attempt; keep trying while the database is away, for as long as we hold the job."""
    held = in_transaction(
        runtime,
        lambda s: jobstore.record_call(
            s,
            job,
            kind=call.kind,
            started_at=call.started,
            finished_at=call.finished,
            result=call.result,
            decision=decision,
            update_=update,
            rate_wait_seconds=call.rate_wait_seconds,
        ),
        patience=runtime.settings.claim_lease_seconds,
    )
    result = call.result
    http_status = result.status if isinstance(result, Answer) else None
    metrics.CALLS.labels(call.kind.value, decision.outcome.value, str(http_status or "none")).inc()
    metrics.CALL_SECONDS.labels(call.kind.value).observe(result.duration_ms / 1000)
    if update.final and held:
        metrics.FINISHED.labels(update.status.value).inc()
    attempts = job.attempts + (1 if call.kind is AttemptKind.CANCEL and decision.counts else 0)
    log.info(
        "job=%s order=%s kind=%s attempts=%s outcome=%s http=%s duration_ms=%s rate_wait_ms=%d%s",
        job.id,
        job.order_uuid,
        call.kind.value,
        attempts,
        decision.outcome.value,
        http_status or "-",
        result.duration_ms,
        call.rate_wait_seconds * 1000,
        "" if held else " (the job was taken back meanwhile; its status will be checked)",
        extra={
            "fields": {
                "job_id": job.id,
                "order_uuid": job.order_uuid,
                "kind": call.kind.value,
                "attempts": attempts,
                "outcome": decision.outcome.value,
                "http_status": http_status,
                "duration_ms": result.duration_ms,
                "rate_wait_ms": int(call.rate_wait_seconds * 1000),
            }
        },
    )


def _heed(runtime: Runtime, decision: Decision, result: CallResult) -> float:
    """Carry out what the call means for the fleet (`fpcancel.pauses`); returns the pause."""
    limiter, settings = runtime.limiter, runtime.settings
    plan = plan_pause(decision, result)
    if plan.went_through:
        limiter.note_success()
    if plan.reason is None:
        return 0.0
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
        return 0.0  # the provider's window is spent, but this call went through
    metrics.PAUSES.labels(plan.reason.value).inc()
    status = result.status if isinstance(result, Answer) else "-"
    if plan.reason is PauseReason.RATE_LIMITED:
        log.warning("provider answered 429: every worker pauses calls for %.1f s", seconds)
    else:
        log.error(
            "%s (HTTP %s, %d in a row): every worker pauses calls for %.1f s; %s",
            _FAULTS[plan.reason],
            status,
            failures,
            seconds,
            _FIXES[plan.reason],
        )
    return seconds


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
