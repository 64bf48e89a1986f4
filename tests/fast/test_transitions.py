"""Where a job goes after a call (SPEC.md, "Job statuses"): attempts, delays, checks, dead."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpcancel.answers import Answer, AnswerLost, ConnectFailed
from fpcancel.classify import Decision, classify_cancel, classify_status_check
from fpcancel.pauses import pause_seconds, plan_pause
from fpcancel.provider import parse_answer
from fpcancel.statuses import JobStatus, PauseReason
from fpcancel.transitions import (
    ClaimedJob,
    JobUpdate,
    LostClaim,
    Policy,
    after_cancel,
    after_lost_claim,
    after_status_check,
    round_again_values,
    waiting_status,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
POLICY = Policy(
    max_attempts=8, retry_base_seconds=5.0, retry_max_seconds=900.0, http_timeout_seconds=15.0
)


def job(attempts: int = 0, round_start: int = 0, needs_check: bool = False) -> ClaimedJob:
    return ClaimedJob(
        id=1,
        order_uuid="ODR123456789",
        note="Customer asked to cancel",
        lane="live",
        status_before="queued" if attempts == 0 else "retrying",
        attempts=attempts,
        round_start_attempts=round_start,
        needs_status_check=needs_check,
        token="claim-token",
    )


def api(
    status: int, message: str, headers: dict[str, str] | None = None, **fields: object
) -> Answer:
    body = {"status_code": status, "message": message, **fields}
    return parse_answer(status, json.dumps(body).encode(), headers or {})


def order_is(status: str) -> Decision:
    return classify_status_check(
        api(200, "Order Status Retrieved Successfully", data={"status": status})
    )


SUCCEEDED = classify_cancel(api(202, "cancelledOrderSuccessfully"))
CONNECT_FAILED = classify_cancel(ConnectFailed("cannot connect: NewConnectionError"))
# A failure that is retried and counts, and needs no status check: the provider timed the
# request out before acting on it.
TIMED_OUT_408 = classify_cancel(api(408, "Request Timeout"))
ANSWER_LOST = classify_cancel(AnswerLost("read timeout: no answer in time"))
SERVER_510 = classify_cancel(api(510, "Something Went Wrong"))
RATE_LIMITED = classify_cancel(api(429, "Too Many Attempts.", {"Retry-After": "7"}))
UNAUTHORIZED = classify_cancel(api(401, "Unauthenticated."))
MISROUTED = classify_cancel(parse_answer(404, b"<html>404 Not Found</html>", {}))
ORDER_OPEN = order_is("SENT")
ORDER_CANCELLED = order_is("CANCELLED")
ORDER_PAID = order_is("PAID")
CHECK_FAILED = classify_status_check(AnswerLost("read timeout"))


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def apply(j: ClaimedJob, update: JobUpdate) -> ClaimedJob:
    """The job as the next claim would see it after `update` was written."""
    values = update.values
    return replace(
        j,
        status_before=update.status.value,
        attempts=values.get("attempts", j.attempts),
        needs_status_check=values.get("needs_status_check", j.needs_status_check),
    )


# -- finishing ----------------------------------------------------------------------------------


def test_success_finishes_the_job_with_finished_at() -> None:
    """A 202 ends the job `succeeded` with finished_at, no next_attempt_at, and the POST counted."""
    update = after_cancel(job(attempts=2), SUCCEEDED, POLICY, NOW)
    assert update.status is JobStatus.SUCCEEDED
    assert update.final
    assert update.values["finished_at"] == NOW
    assert update.values["next_attempt_at"] is None
    assert update.values["attempts"] == 3
    assert not update.values["needs_status_check"]


@pytest.mark.parametrize(
    ("decision", "status"),
    [
        (classify_cancel(api(400, "orderStatusAlreadyPaid")), JobStatus.ALREADY_PAID),
        (classify_cancel(api(404, "orderNotFound")), JobStatus.NOT_FOUND),
        (
            classify_cancel(api(417, "payloadValidationErrors", errors={"x": ["y"]})),
            JobStatus.INVALID_PAYLOAD,
        ),
        (classify_cancel(api(409, "conflict")), JobStatus.FAILED),
    ],
)
def test_terminal_answers_finish_the_job(decision: Decision, status: JobStatus) -> None:
    """Paid, not found, invalid payload and unexpected 4xx end the job at once, attempts or not."""
    update = after_cancel(job(), decision, POLICY, NOW)
    assert update.status is status
    assert update.final
    assert update.values["finished_at"] == NOW
    assert update.values["attempts"] == 1


# -- retrying -----------------------------------------------------------------------------------


@pytest.mark.parametrize("attempts_before", range(0, 7))
def test_retry_is_scheduled_within_the_backoff_bound(attempts_before: int) -> None:
    """A retryable failure bumps attempts and sets next_attempt_at = now + a delay within bounds."""
    update = after_cancel(
        job(attempts=attempts_before), TIMED_OUT_408, POLICY, NOW, rng=fixed(0.999)
    )
    attempts = attempts_before + 1
    bound = min(900.0, 5.0 * 2 ** (attempts - 1))
    assert update.status is JobStatus.RETRYING
    assert not update.final
    assert update.values["attempts"] == attempts
    assert update.retry_in_seconds is not None
    assert 0.99 * bound < update.retry_in_seconds <= bound
    assert update.values["next_attempt_at"] == NOW + timedelta(seconds=update.retry_in_seconds)
    assert update.values["needs_status_check"] is False
    assert "finished_at" not in update.values


def test_retry_delay_can_be_zero_with_full_jitter() -> None:
    """Full jitter: at rng=0 a non-ambiguous retry is due at once."""
    update = after_cancel(job(), TIMED_OUT_408, POLICY, NOW, rng=fixed(0.0))
    assert update.values["next_attempt_at"] == NOW


def test_a_longer_retry_after_pushes_the_retry_back() -> None:
    """A 503 with `Retry-After: 120` is not retried before 120 s."""
    decision = classify_cancel(api(503, "Service Unavailable", {"Retry-After": "120"}))
    update = after_cancel(job(), decision, POLICY, NOW, rng=fixed(0.5))
    assert update.values["next_attempt_at"] >= NOW + timedelta(seconds=120)


@pytest.mark.parametrize("decision", [ANSWER_LOST, SERVER_510], ids=["answer-lost", "510"])
def test_ambiguous_failure_waits_for_a_status_check(decision: Decision) -> None:
    """An ambiguous failure marks the job for a status check no sooner than the HTTP timeout."""
    update = after_cancel(job(), decision, POLICY, NOW, rng=fixed(0.0))
    assert update.status is JobStatus.RETRYING
    assert update.values["needs_status_check"] is True
    assert update.values["attempts"] == 1
    assert update.values["next_attempt_at"] == NOW + timedelta(seconds=15)


def test_ambiguous_failure_keeps_a_longer_backoff() -> None:
    """When the backoff is longer than the HTTP timeout, the status check waits for the backoff."""
    update = after_cancel(job(attempts=5), ANSWER_LOST, POLICY, NOW, rng=fixed(0.999))
    assert update.values["needs_status_check"] is True
    assert 15 < update.retry_in_seconds <= min(900, 5 * 2**5)  # type: ignore[operator]


# -- running out --------------------------------------------------------------------------------


def test_the_max_attempts_th_retryable_failure_kills_the_job() -> None:
    """The 8th retryable failure (of 8 allowed) ends the job `dead` with attempts = 8."""
    update = after_cancel(job(attempts=7), TIMED_OUT_408, POLICY, NOW)
    assert update.status is JobStatus.DEAD
    assert update.final
    assert update.values["attempts"] == 8
    assert update.values["finished_at"] == NOW


def test_a_job_that_never_connects_spends_no_attempt() -> None:
    """SPEC.md, "Provider-wide trouble": a connection never made is no POST; a job that meets
    nothing but refused connections keeps all its attempts, however long it lasts."""
    j = job()
    for _ in range(50):
        update = after_cancel(j, CONNECT_FAILED, POLICY, NOW, rng=fixed(0.3))
        j = apply(j, update)
        assert not update.final
    assert j.attempts == 0


def test_a_job_that_times_out_gets_exactly_max_attempts_posts() -> None:
    """Run to the end: counted failures make exactly FPCANCEL_MAX_ATTEMPTS POSTs, then `dead`."""
    j, posts = job(), 0
    while True:
        posts += 1
        update = after_cancel(j, TIMED_OUT_408, POLICY, NOW, rng=fixed(0.3))
        j = apply(j, update)
        if update.final:
            break
        assert posts < 100, "the job never ends"
    assert (update.status, posts, j.attempts) == (JobStatus.DEAD, 8, 8)


def test_a_retried_dead_job_gets_max_attempts_more_posts() -> None:
    """`jobs retry` on a job dead at 8 attempts gives it 8 more POSTs: dead again at 16, not 9."""
    j, posts = job(attempts=8, round_start=8), 0
    while True:
        posts += 1
        update = after_cancel(j, TIMED_OUT_408, POLICY, NOW, rng=fixed(0.1))
        j = apply(j, update)
        if update.final:
            break
        assert posts < 100
    assert (update.status, posts, j.attempts) == (JobStatus.DEAD, 8, 16)


def test_a_retried_job_backs_off_from_the_start_again() -> None:
    """The first retry of a new round waits like a first retry, not like the 9th."""
    update = after_cancel(
        job(attempts=8, round_start=8), TIMED_OUT_408, POLICY, NOW, rng=fixed(0.999)
    )
    assert update.status is JobStatus.RETRYING
    assert update.values["attempts"] == 9
    assert update.retry_in_seconds is not None and update.retry_in_seconds <= 5.0


def test_a_retried_job_status_check_uses_the_round() -> None:
    """A status check in a new round with attempts left goes on to POST, not to `dead`."""
    update = after_status_check(
        job(attempts=10, round_start=8, needs_check=True), ORDER_OPEN, POLICY, NOW
    )
    assert update.proceed


# -- whatever happens, the job stays within its contract ----------------------------------------

cancel_decisions = st.sampled_from(
    [SUCCEEDED, CONNECT_FAILED, ANSWER_LOST, SERVER_510, RATE_LIMITED, UNAUTHORIZED, MISROUTED]
    + [
        classify_cancel(api(s, m))
        for s, m in [(400, "orderStatusAlreadyPaid"), (400, "x"), (418, "x")]
    ]
    + [classify_cancel(api(503, "x", {"Retry-After": str(s)})) for s in (0, 30, 3600)]
)


@given(
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(1, 12),
    cancel_decisions,
    st.floats(0, 1, exclude_max=True),
    st.floats(0, 1000),
)
def test_after_cancel_keeps_the_job_consistent(
    round_start: int, used: int, max_attempts: int, decision: Decision, r: float, pause: float
) -> None:
    """Any job and decision: attempts move by ≤ 1, finals stamp finished_at, waits lie ahead."""
    policy = replace(POLICY, max_attempts=max_attempts)
    used = min(used, max_attempts - 1)  # a job with no POST left is never sent to cancel
    before = job(attempts=round_start + used, round_start=round_start)
    update = after_cancel(before, decision, policy, NOW, pause, rng=fixed(r))
    attempts = update.values["attempts"]
    assert attempts == before.attempts + (1 if decision.counts else 0)
    assert attempts - round_start <= max_attempts
    if update.final:
        assert update.values["finished_at"] == NOW
        assert update.values["next_attempt_at"] is None
    else:
        assert update.status is JobStatus.RETRYING
        assert update.values["next_attempt_at"] >= NOW
        assert "finished_at" not in update.values
    if update.status is JobStatus.DEAD:
        assert attempts - round_start == max_attempts and not decision.ambiguous


def test_a_huge_retry_after_still_schedules_the_job() -> None:
    """A 503 with `Retry-After: 999999999999` leaves the job retrying with its POST counted."""
    decision = classify_cancel(api(503, "Service Unavailable", {"Retry-After": "999999999999"}))
    update = after_cancel(job(), decision, POLICY, NOW, rng=fixed(0.5))
    assert update.status is JobStatus.RETRYING
    assert update.values["attempts"] == 1
    assert update.values["next_attempt_at"] > NOW


# -- the waiting status, a lost worker's job, a new row ---------------------------------------


@pytest.mark.parametrize(
    "before, may_have_left, expected",
    [
        ("queued", False, JobStatus.QUEUED),
        ("queued", True, JobStatus.RETRYING),
        ("retrying", False, JobStatus.RETRYING),
        ("retrying", True, JobStatus.RETRYING),
    ],
)
def test_a_job_waits_as_queued_until_a_call_of_its_round_may_have_left(
    before: str, may_have_left: bool, expected: JobStatus
) -> None:
    """One rule for every way back to waiting: `retrying` once a call was answered or may have
    left, otherwise as it was."""
    assert waiting_status(before, call_may_have_left=may_have_left) is expected


def lost(**overrides: object) -> LostClaim:
    values: dict[str, object] = dict(
        id=7, attempts=0, round_start_attempts=0, call_may_have_left=False, lost_claims=0
    )
    values.update(overrides)
    return LostClaim(**values)  # type: ignore[arg-type]


def test_a_lost_worker_s_job_waits_again_at_once_when_nothing_left() -> None:
    """Nothing was on the wire: the job is due now, queued as before, no status check."""
    change = after_lost_claim(lost(), POLICY, NOW)
    assert change.status is JobStatus.QUEUED and not change.final
    assert change.values["next_attempt_at"] == NOW
    assert change.values["needs_status_check"] is False
    assert change.values["lost_claims"] == 1
    assert change.values["dispatch_token"] is None and change.values["claimed_until"] is None


def test_a_lost_worker_s_cancel_is_settled_by_a_status_check_after_the_timeout() -> None:
    """A POST may have left: the next call is a status check, once the provider can have
    finished it (FPCANCEL_HTTP_TIMEOUT_SECONDS later), and the job is `retrying`."""
    change = after_lost_claim(lost(attempts=2, call_may_have_left=True), POLICY, NOW)
    assert change.status is JobStatus.RETRYING
    assert change.values["needs_status_check"] is True
    assert change.values["next_attempt_at"] == NOW + timedelta(seconds=15)


def test_a_job_whose_workers_keep_dying_fails_with_the_reason() -> None:
    """The third lost worker (FPCANCEL_MAX_LOST_CLAIMS) ends the job `failed`, saying why."""
    change = after_lost_claim(lost(lost_claims=2), POLICY, NOW)
    assert change.status is JobStatus.FAILED and change.final
    assert change.values["finished_at"] == NOW
    assert "lost 3 times" in change.values["last_message"]


def test_a_round_again_resets_what_a_round_counts() -> None:
    """`jobs retry`: queued now, unfinished, no check, no lost workers, nothing held."""
    values = round_again_values(NOW)
    assert values["status"] == "queued" and values["next_attempt_at"] == NOW
    assert values["finished_at"] is None and values["lost_claims"] == 0
    assert values["needs_status_check"] is False and values["in_call_since"] is None


# -- the fleet pause ------------------------------------------------------------------------------


def plan_seconds(decision: Decision, result: Answer, failures: int = 1) -> tuple[object, float]:
    plan = plan_pause(decision, result)
    seconds = pause_seconds(
        plan,
        failures_in_a_row=failures,
        window_frees_in=3.5,
        rate_window_seconds=60,
        retry_base_seconds=5,
        retry_max_seconds=900,
    )
    return plan.reason, seconds


def test_the_fleet_pause_for_each_kind_of_answer() -> None:
    """429 waits Retry-After and a second (Laravel's whole seconds can be a second short); a
    refused token, a wrong URL or an unbuildable request double from the retry base; remaining
    0 waits for the provider's window to end; anything else, no pause."""
    answer_429 = api(429, "Too Many Attempts.", {"Retry-After": "7"})
    assert plan_seconds(RATE_LIMITED, answer_429) == (PauseReason.RATE_LIMITED, 8)
    bare_429 = api(429, "Too Many Attempts.")
    assert plan_seconds(classify_cancel(bare_429), bare_429) == (PauseReason.RATE_LIMITED, 60)
    answer_401 = api(401, "Unauthenticated.")
    assert plan_seconds(UNAUTHORIZED, answer_401, failures=3) == (PauseReason.UNAUTHORIZED, 20)
    spent = api(202, "cancelledOrderSuccessfully", {"x-ratelimit-remaining": "0"})
    assert plan_seconds(SUCCEEDED, spent) == (PauseReason.RATE_LIMITED, 3.5)
    ok = api(202, "cancelledOrderSuccessfully", {"x-ratelimit-remaining": "3"})
    assert plan_seconds(SUCCEEDED, ok) == (None, 0)


def test_a_call_that_went_through_ends_a_setup_fault_and_a_transport_error_does_not() -> None:
    """Only an answer from the API (not refused) resets the doubling."""
    assert plan_pause(SUCCEEDED, api(202, "cancelledOrderSuccessfully")).went_through
    assert not plan_pause(UNAUTHORIZED, api(401, "Unauthenticated.")).went_through
    failed = ConnectFailed("refused")
    assert not plan_pause(classify_cancel(failed), failed).went_through
