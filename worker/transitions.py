"""The job's state machine, as pure functions from (job, what happened, policy, now) to its new
column values. `fpcancel.jobstore` applies what these return; nothing here touches the database,
the network or a clock of its own.

    enqueue ──▶ queued ──claim──▶ running ──call──▶ succeeded | already_paid | not_found
                  ▲  ▲               │  │                     | invalid_payload | dead | failed
                  │  └──release──────┘  │
                  │  (no slot, stopping)│ try again later (5xx, timeout, 429, a refused token)
                  │                     ▼
       jobs retry └──── dead, failed  retrying ──claim──▶ running ...
                                        ▲
                          worker lost ──┘ (or `failed` when lost too often)

The rules that decide each arrow live here once: a new row's values (`new_job_values`), which
waiting status a job goes back to (`waiting_status`), what "no longer held by a worker" resets
(`NOT_HELD`), a call's consequence (`after_cancel`, `after_status_check`), a lost worker's job
(`after_lost_claim`) and a job sent round again by ops (`round_again_values`).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from fpcancel.backoff import retry_delay_seconds
from fpcancel.classify import Decision
from fpcancel.statuses import TERMINAL_STATUSES, JobStatus

# A job no worker holds: no message in flight, no claim, no call on the wire.
NOT_HELD: Mapping[str, Any] = MappingProxyType(
    {"dispatch_token": None, "dispatched_at": None, "claimed_until": None, "in_call_since": None}
)


@dataclass(frozen=True)
class Policy:
    """The settings transitions depend on (SPEC.md, "Configuration"; README, "More settings")."""

    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    http_timeout_seconds: float
    max_lost_claims: int = 3


@dataclass(frozen=True)
class ClaimedJob:
    """A job as the worker that holds its claim sees it."""

    id: int
    order_uuid: str
    note: str
    lane: str
    status_before: str
    attempts: int
    round_start_attempts: int
    needs_status_check: bool
    token: str
    calls_made: int = 0  # calls of this job recorded before this claim (status checks too)

    def attempts_in_round(self) -> int:
        return self.attempts - self.round_start_attempts


@dataclass(frozen=True)
class LostClaim:
    """A running job whose worker's claim expired (the worker died or stalled)."""

    id: int
    attempts: int
    round_start_attempts: int
    call_may_have_left: bool  # a cancel was on the wire, or an earlier one is still unsettled
    lost_claims: int


@dataclass(frozen=True)
class JobUpdate:
    """The job's new column values; `retry_in_seconds` when it waits for another try, `proceed`
    when the same run goes on to a cancel POST (after a status check that settled nothing)."""

    status: JobStatus
    values: dict[str, Any] = field(default_factory=dict)
    retry_in_seconds: float | None = None
    proceed: bool = False

    @property
    def final(self) -> bool:
        return self.status in TERMINAL_STATUSES


def new_job_values(
    *,
    order_uuid: str,
    note: str,
    source: str | None,
    lane: str,
    now: datetime,
    dispatch_token: str | None = None,
) -> dict[str, Any]:
    """Every column of a new job, whichever way it is written (one insert or a bulk file)."""
    return {
        "order_uuid": order_uuid,
        "note": note,
        "source": source,
        "lane": lane,
        "status": JobStatus.QUEUED.value,
        "attempts": 0,
        "round_start_attempts": 0,
        "needs_status_check": False,
        "lost_claims": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "dispatch_token": dispatch_token,
        "dispatched_at": now if dispatch_token else None,
    }


def waiting_status(status_before: str, *, call_may_have_left: bool) -> JobStatus:
    """The status a job waits in when it goes back: `queued` until a call of this round was
    answered or may have left, `retrying` after (SPEC.md: another attempt is due)."""
    if call_may_have_left or status_before == JobStatus.RETRYING:
        return JobStatus.RETRYING
    return JobStatus.QUEUED


def _finish(status: JobStatus, now: datetime, **values: Any) -> JobUpdate:
    return JobUpdate(
        status,
        {"finished_at": now, "next_attempt_at": None, "needs_status_check": False, **values},
    )


def _wait(now: datetime, seconds: float, *, check: bool, **values: Any) -> JobUpdate:
    return JobUpdate(
        JobStatus.RETRYING,
        {
            "next_attempt_at": now + timedelta(seconds=seconds),
            "needs_status_check": check,
            **values,
        },
        retry_in_seconds=seconds,
    )


def after_cancel(
    job: ClaimedJob,
    decision: Decision,
    policy: Policy,
    now: datetime,
    pause_seconds: float = 0.0,
    rng: Callable[[], float] | None = None,
) -> JobUpdate:
    """The job's state after a cancel POST that `decision` describes."""
    attempts = job.attempts + (1 if decision.counts else 0)
    if decision.final is not None:
        return _finish(decision.final, now, attempts=attempts)
    if decision.block is not None:
        # Not the order's fault: back to wait out the pause, no attempt spent (a POST that may
        # have left is settled by a status check first).
        check = job.needs_status_check or decision.ambiguous
        return _wait(now, pause_seconds, check=check, attempts=attempts)
    used = attempts - job.round_start_attempts
    if used >= policy.max_attempts:
        if decision.ambiguous:
            # The last POST may have cancelled the order: one status check decides dead or not.
            return _wait(now, policy.http_timeout_seconds, check=True, attempts=attempts)
        return _finish(JobStatus.DEAD, now, attempts=attempts)
    kwargs = {"rng": rng} if rng is not None else {}
    delay = retry_delay_seconds(
        used,
        policy.retry_base_seconds,
        policy.retry_max_seconds,
        decision.retry_after_seconds,
        **kwargs,
    )
    if decision.ambiguous:
        # Give the provider time to finish what it may be doing before we ask about it.
        delay = max(delay, policy.http_timeout_seconds)
    return _wait(now, delay, check=decision.ambiguous, attempts=attempts)


def after_status_check(
    job: ClaimedJob, decision: Decision, policy: Policy, now: datetime, pause_seconds: float = 0.0
) -> JobUpdate:
    """The job's state after a status check: settled, paused, dead, or on to a cancel POST."""
    if decision.final is not None:
        return _finish(decision.final, now)
    if decision.block is not None:
        return _wait(now, pause_seconds, check=True)
    if job.attempts_in_round() >= policy.max_attempts:
        return _finish(JobStatus.DEAD, now)
    return JobUpdate(JobStatus.RUNNING, {"needs_status_check": False}, proceed=True)


def after_lost_claim(job: LostClaim, policy: Policy, now: datetime) -> JobUpdate:
    """A job whose worker was lost waits again (with a status check first if a cancel may have
    left, once the provider can have finished it), or fails when its workers keep dying."""
    lost = job.lost_claims + 1
    if lost >= policy.max_lost_claims:
        return _finish(
            JobStatus.FAILED,
            now,
            lost_claims=lost,
            last_message=f"its worker was lost {lost} times while holding this job",
            **NOT_HELD,
        )
    wait = policy.http_timeout_seconds if job.call_may_have_left else 0.0
    had_calls = job.attempts > job.round_start_attempts
    status = waiting_status(
        JobStatus.RETRYING if had_calls else JobStatus.QUEUED,
        call_may_have_left=job.call_may_have_left,
    )
    return JobUpdate(
        status,
        {
            "next_attempt_at": now + timedelta(seconds=wait),
            "needs_status_check": job.call_may_have_left,
            "lost_claims": lost,
            **NOT_HELD,
        },
    )


def round_again_values(now: datetime) -> dict[str, Any]:
    """A dead or failed job sent round again by ops (`jobs retry`); the store also moves
    `round_start_attempts` up to `attempts`, so the job gets FPCANCEL_MAX_ATTEMPTS more."""
    return {
        "status": JobStatus.QUEUED.value,
        "next_attempt_at": now,
        "finished_at": None,
        "needs_status_check": False,
        "lost_claims": 0,
        "updated_at": now,
        **NOT_HELD,
    }
