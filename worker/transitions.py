"""Where a job goes after a call: pure functions from (job, decision, policy, now) to its new state.

The task applies the `JobUpdate` these return; nothing here touches the database or the clock.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from models.tables import JobStatus
from worker.decisions import Decision, retry_delay_seconds


@dataclass(frozen=True)
class Policy:
    """The settings transitions depend on (SPEC.md, "Configuration")."""

    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    http_timeout_seconds: float


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

    def attempts_in_round(self) -> int:
        return self.attempts - self.round_start_attempts


@dataclass(frozen=True)
class JobUpdate:
    """The job's new column values; `release` means it goes back to wait, `proceed` that the
    same run goes on to a cancel POST (after a status check that settled nothing)."""

    status: JobStatus
    values: dict[str, Any] = field(default_factory=dict)
    retry_in_seconds: float | None = None
    proceed: bool = False

    @property
    def final(self) -> bool:
        return self.status not in (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.RETRYING)


def _finish(status: JobStatus, now: datetime, **values: Any) -> JobUpdate:
    return JobUpdate(
        status,
        {
            "finished_at": now,
            "next_attempt_at": None,
            "needs_status_check": False,
            **values,
        },
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
        # Not the order's fault: back to wait out the pause, no attempt spent.
        return _wait(now, pause_seconds, check=job.needs_status_check, attempts=attempts)
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
