"""What a provider's answer means for its job, as pure functions: no network, no database, no
clock of their own.

`classify_cancel` and `classify_status_check` turn what a call returned (an `Answer` or a
`ProviderError`) into a `Decision`: the job ends in a status, the fleet pauses (the call said
nothing about the order), or it is tried again, after a status check when the call may have
cancelled the order. `retry_after` reads how long the provider asked us to wait.
"""

import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from fpcancel.answers import Answer, CallResult, RequestNotBuilt, TransportError
from fpcancel.statuses import JobStatus, PauseReason

CANCELLED_MESSAGE = "cancelledOrderSuccessfully"
ALREADY_PAID_MESSAGE = "orderStatusAlreadyPaid"
NOT_FOUND_MESSAGE = "orderNotFound"
INVALID_PAYLOAD_MESSAGE = "payloadValidationErrors"
# A provider asking for more than a day is wrong or hostile; waiting a day is the most we honour.
MAX_RETRY_AFTER_SECONDS = 86_400.0


class Outcome(StrEnum):
    """What one call ended as; stored in `cancel_attempts.outcome`."""

    # cancel calls
    SUCCEEDED = "succeeded"
    ALREADY_PAID = "already_paid"
    NOT_FOUND = "not_found"
    INVALID_PAYLOAD = "invalid_payload"
    FAILED = "failed"
    RETRYABLE = "retryable"  # failed before the provider could act: resend
    AMBIGUOUS = "ambiguous"  # may have cancelled: check the order's status before resending
    # status checks
    ORDER_CANCELLED = "order_cancelled"
    ORDER_PAID = "order_paid"
    ORDER_NOT_FOUND = "order_not_found"
    ORDER_OPEN = "order_open"  # any other status: cancel again
    CHECK_FAILED = "check_failed"  # no usable answer: cancel again, as SPEC.md says
    # either kind: the call says nothing about the order; the fleet pauses (`fpcancel.pauses`)
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    MISROUTED = "misrouted"
    NOT_SENT = "not_sent"  # the request could not be built: nothing left


@dataclass(frozen=True)
class Decision:
    """What a call means for its job.

    Exactly one of: `final` (the job ends in that status), `block` (the call said nothing about
    the order; pause and put the job back), or a retry (`ambiguous` says whether the order's status
    must be checked first).
    """

    outcome: Outcome
    final: JobStatus | None = None
    block: PauseReason | None = None
    ambiguous: bool = False
    retry_after_seconds: float | None = None
    counts: bool = True  # does this cancel POST count against FPCANCEL_MAX_ATTEMPTS
    errors: Any = None  # a 417's `errors`

    @property
    def retry(self) -> bool:
        return self.final is None and self.block is None


def _blocked(outcome: Outcome, block: PauseReason, answer: Answer, now: float) -> Decision:
    return Decision(
        outcome, block=block, counts=False, retry_after_seconds=retry_after(answer, now)
    )


def _not_sent() -> Decision:
    return Decision(Outcome.NOT_SENT, block=PauseReason.NOT_SENT, counts=False)


def classify_cancel(result: CallResult, now_epoch: float = 0.0) -> Decision:
    """The SPEC's table of cancel answers (SPEC.md, "Job statuses"), never raising."""
    if isinstance(result, RequestNotBuilt) or not isinstance(result, Answer | TransportError):
        return _not_sent()
    if isinstance(result, TransportError):
        if result.sent:
            return Decision(Outcome.AMBIGUOUS, ambiguous=True)
        # Never left: no POST was made, so no attempt was spent (SPEC.md, "Provider-wide trouble").
        return Decision(Outcome.RETRYABLE, counts=False)
    answer = result
    status, message = answer.status, answer.message
    if status in (401, 403):
        return _blocked(Outcome.UNAUTHORIZED, PauseReason.UNAUTHORIZED, answer, now_epoch)
    if status == 429:
        return _blocked(Outcome.RATE_LIMITED, PauseReason.RATE_LIMITED, answer, now_epoch)
    if 200 <= status < 300:
        if message == CANCELLED_MESSAGE:
            return Decision(Outcome.SUCCEEDED, final=JobStatus.SUCCEEDED)
        # A 2xx without the message (a proxy page, an empty body) may or may not have cancelled.
        return Decision(Outcome.AMBIGUOUS, ambiguous=True)
    if status == 400:
        if message == ALREADY_PAID_MESSAGE:
            return Decision(Outcome.ALREADY_PAID, final=JobStatus.ALREADY_PAID)
        return Decision(Outcome.AMBIGUOUS, ambiguous=True)
    if status == 404:
        if message == NOT_FOUND_MESSAGE:
            return Decision(Outcome.NOT_FOUND, final=JobStatus.NOT_FOUND)
        return _blocked(Outcome.MISROUTED, PauseReason.MISROUTED, answer, now_epoch)
    if status == 417 and isinstance(answer.body, dict):
        return Decision(
            Outcome.INVALID_PAYLOAD,
            final=JobStatus.INVALID_PAYLOAD,
            errors=answer.body.get("errors"),
        )
    if 300 <= status < 400:
        return _blocked(Outcome.MISROUTED, PauseReason.MISROUTED, answer, now_epoch)
    if status >= 500:
        return Decision(
            Outcome.AMBIGUOUS, ambiguous=True, retry_after_seconds=retry_after(answer, now_epoch)
        )
    if status == 408:
        return Decision(Outcome.RETRYABLE, retry_after_seconds=retry_after(answer, now_epoch))
    if answer.body is None:
        # Not JSON (a proxy's page): not the API's answer, so it may or may not have cancelled.
        return Decision(Outcome.AMBIGUOUS, ambiguous=True)
    return Decision(Outcome.FAILED, final=JobStatus.FAILED)


def classify_status_check(result: CallResult, now_epoch: float = 0.0) -> Decision:
    """A status check settles an ambiguous cancel, or says to cancel again."""
    if isinstance(result, RequestNotBuilt) or not isinstance(result, Answer | TransportError):
        return _not_sent()
    if isinstance(result, TransportError):
        return Decision(Outcome.CHECK_FAILED, counts=False)
    answer = result
    if answer.status in (401, 403):
        return _blocked(Outcome.UNAUTHORIZED, PauseReason.UNAUTHORIZED, answer, now_epoch)
    if answer.status == 429:
        return _blocked(Outcome.RATE_LIMITED, PauseReason.RATE_LIMITED, answer, now_epoch)
    if answer.status == 404:
        if answer.message == NOT_FOUND_MESSAGE:
            return Decision(Outcome.ORDER_NOT_FOUND, final=JobStatus.NOT_FOUND, counts=False)
        return _blocked(Outcome.MISROUTED, PauseReason.MISROUTED, answer, now_epoch)
    if answer.status == 200:
        order_status = order_status_of(answer)
        if order_status == "CANCELLED":
            return Decision(Outcome.ORDER_CANCELLED, final=JobStatus.SUCCEEDED, counts=False)
        if order_status == "PAID":
            return Decision(Outcome.ORDER_PAID, final=JobStatus.ALREADY_PAID, counts=False)
        if order_status is not None:
            return Decision(Outcome.ORDER_OPEN, counts=False)
    return Decision(Outcome.CHECK_FAILED, counts=False)


def order_status_of(answer: Answer) -> str | None:
    """`data.status` of a status answer, upper-cased, when there is one."""
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    status = data.get("status") if isinstance(data, dict) else None
    return status.upper() if isinstance(status, str) else None


def retry_after(answer: Answer, now_epoch: float) -> float | None:
    """Seconds the provider asked us to wait: `Retry-After` (seconds or a date), else
    `X-RateLimit-Reset` (epoch seconds) on a 429; at most a day. None when it said nothing
    usable."""
    seconds = _asked_wait(answer, now_epoch)
    if seconds is None or seconds != seconds:  # NaN
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _asked_wait(answer: Answer, now_epoch: float) -> float | None:
    raw = answer.headers.get("retry-after", "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - now_epoch)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    reset = answer.headers.get("x-ratelimit-reset", "").strip()
    if reset and answer.status == 429:
        try:
            return max(0.0, float(reset) - now_epoch)
        except ValueError:
            return None
    return None


def errors_json(errors: Any) -> str | None:
    """A 417's `errors`, kept as JSON text on the job."""
    if errors is None:
        return None
    return json.dumps(errors, ensure_ascii=False, default=str)[:4000]
