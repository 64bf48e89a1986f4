"""What a provider answer means for a job (SPEC.md, "Job statuses"), and how long to wait."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpcancel.answers import Answer, AnswerLost, ConnectFailed
from fpcancel.classify import (
    Decision,
    Outcome,
    classify_cancel,
    classify_status_check,
    errors_json,
)
from fpcancel.provider import parse_answer
from fpcancel.statuses import JobStatus, PauseReason

NOW = 1_750_000_000.0  # an epoch second the tests pretend it is
JSON = {"Content-Type": "application/json"}
HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
)
HTML_404 = b"<html><head><title>404 Not Found</title></head><body>nginx/1.24.0</body></html>"
# The statuses one answer can end a job in (`dead` comes only from running out of attempts).
ONE_ANSWER_FINALS = {
    JobStatus.SUCCEEDED,
    JobStatus.ALREADY_PAID,
    JobStatus.NOT_FOUND,
    JobStatus.INVALID_PAYLOAD,
    JobStatus.FAILED,
}


def api(
    status: int, message: str | None, headers: dict[str, str] | None = None, **fields: Any
) -> Answer:
    """An answer shaped like Front Payment's JSON, as it comes over the wire."""
    body = {"status_code": status, "status_message": "x", "message": message, **fields}
    return parse_answer(status, json.dumps(body).encode(), {**JSON, **(headers or {})})


def html(status: int, page: bytes = HTML_502, headers: dict[str, str] | None = None) -> Answer:
    """A proxy's HTML page."""
    return parse_answer(status, page, {"Content-Type": "text/html", **(headers or {})})


def order_status(status: str) -> Answer:
    """A 200 from GET /connect/orders/status/{id} with `data.status`."""
    data = {"uuid": "ODR1649249709", "status": status, "orderAmount": 40, "refundedAmount": 0}
    return api(200, "Order Status Retrieved Successfully", is_data=True, data=data)


def kind(decision: Decision) -> str:
    """Which of the three things a decision says, checking it says exactly one."""
    said = [
        name
        for name, yes in (
            ("final", decision.final is not None),
            ("block", decision.block is not None),
            ("retry", decision.retry),
        )
        if yes
    ]
    assert len(said) == 1, f"{decision} says {said}"
    return said[0]


# -- classify_cancel: the SPEC's table, row by row ---------------------------------------------


def test_202_cancelled_succeeds() -> None:
    """202 `cancelledOrderSuccessfully` ends the job `succeeded`, and the POST counts."""
    decision = classify_cancel(api(202, "cancelledOrderSuccessfully", is_data=False, data=None))
    assert kind(decision) == "final"
    assert decision.final is JobStatus.SUCCEEDED
    assert decision.outcome is Outcome.SUCCEEDED
    assert decision.counts


def test_other_2xx_with_the_message_succeeds_too() -> None:
    """A 200 carrying `cancelledOrderSuccessfully` counts as succeeded."""
    assert classify_cancel(api(200, "cancelledOrderSuccessfully")).final is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    "answer",
    [
        parse_answer(204, b"", {}),
        parse_answer(200, b"OK", {"Content-Type": "text/plain"}),
        html(200, b"<html>Welcome to nginx!</html>"),
        api(202, "Order Status Retrieved Successfully"),
        api(202, None),
    ],
    ids=["204-empty", "200-text", "200-html", "202-other-message", "202-null-message"],
)
def test_2xx_without_the_message_is_ambiguous(answer: Answer) -> None:
    """A 2xx without `cancelledOrderSuccessfully` is no success: check the status, then retry."""
    decision = classify_cancel(answer)
    assert kind(decision) == "retry"
    assert decision.ambiguous
    assert decision.outcome is Outcome.AMBIGUOUS


def test_400_already_paid_is_final() -> None:
    """400 `orderStatusAlreadyPaid` ends the job `already_paid`."""
    decision = classify_cancel(api(400, "orderStatusAlreadyPaid", is_error=False, errors=None))
    assert decision.final is JobStatus.ALREADY_PAID
    assert decision.outcome is Outcome.ALREADY_PAID
    assert decision.counts


@pytest.mark.parametrize(
    "answer",
    [
        api(400, "orderStatusNotCancellable"),
        api(400, None),
        html(400, b"<html>400 Bad Request</html>"),
    ],
    ids=["other-message", "no-message", "html"],
)
def test_400_with_another_message_is_ambiguous_and_retried(answer: Answer) -> None:
    """A 400 with an unknown message may or may not have cancelled: retry, status check first."""
    decision = classify_cancel(answer)
    assert kind(decision) == "retry"
    assert decision.ambiguous
    assert decision.counts


def test_404_order_not_found_is_final() -> None:
    """404 `orderNotFound` ends the job `not_found`."""
    decision = classify_cancel(api(404, "orderNotFound", is_data=False, data=None))
    assert decision.final is JobStatus.NOT_FOUND
    assert decision.outcome is Outcome.NOT_FOUND


@pytest.mark.parametrize(
    "answer",
    [html(404, HTML_404), api(404, "Not Found"), parse_answer(404, b"", {})],
    ids=["html", "json-other-message", "empty"],
)
def test_404_without_order_not_found_blocks_as_misrouted(answer: Answer) -> None:
    """A 404 that is not the API's says the URL is wrong: block, never terminal, never counted."""
    decision = classify_cancel(answer)
    assert kind(decision) == "block"
    assert decision.block is PauseReason.MISROUTED
    assert decision.final is None
    assert not decision.counts


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_blocks_as_misrouted(status: int) -> None:
    """A redirect means the base URL is wrong, not the order: block, do not count."""
    decision = classify_cancel(parse_answer(status, b"", {"Location": "https://elsewhere/"}))
    assert decision.block is PauseReason.MISROUTED
    assert not decision.counts


def test_417_is_invalid_payload_and_keeps_the_errors() -> None:
    """417 `payloadValidationErrors` ends `invalid_payload`, keeping the API's `errors`."""
    errors = {"cancellationNote": ["The cancellation note field is required."]}
    decision = classify_cancel(api(417, "payloadValidationErrors", is_error=True, errors=errors))
    assert decision.final is JobStatus.INVALID_PAYLOAD
    assert decision.outcome is Outcome.INVALID_PAYLOAD
    assert decision.errors == errors
    text = errors_json(decision.errors)
    assert text is not None and json.loads(text) == errors


def test_errors_json_of_nothing_is_nothing() -> None:
    """A job without a 417 keeps no errors text."""
    assert errors_json(None) is None


@pytest.mark.parametrize(
    "answer",
    [
        api(510, "Something Went Wrong", is_error=True, errors="Array"),
        api(500, "Server Error"),
        html(502),
        html(504, b"<html>504 Gateway Time-out</html>"),
        api(503, "Service Unavailable"),
        parse_answer(503, b"", {}),
    ],
    ids=["510", "500-json", "502-html", "504-html", "503-json", "503-empty"],
)
def test_server_errors_are_ambiguous_and_retried(answer: Answer) -> None:
    """510 and other 5xx (JSON or a proxy's HTML) may have cancelled: retry after a status check."""
    decision = classify_cancel(answer)
    assert kind(decision) == "retry"
    assert decision.ambiguous
    assert decision.counts
    assert decision.retry_after_seconds is None


def test_503_with_retry_after_passes_the_delay_on() -> None:
    """A 503's `Retry-After: 30` becomes the decision's retry_after_seconds."""
    decision = classify_cancel(api(503, "Service Unavailable", {"Retry-After": "30"}), NOW)
    assert kind(decision) == "retry"
    assert decision.retry_after_seconds == 30


def test_503_with_retry_after_as_a_date() -> None:
    """`Retry-After` may be an HTTP date: the wait is that date minus now."""
    when = format_datetime(datetime.fromtimestamp(NOW + 45, tz=UTC), usegmt=True)
    decision = classify_cancel(html(503, headers={"Retry-After": when}), NOW)
    assert decision.retry_after_seconds == pytest.approx(45, abs=1)


def test_503_with_a_past_retry_after_date_waits_nothing_extra() -> None:
    """A `Retry-After` date already past asks for no wait (never a negative one)."""
    when = format_datetime(datetime.fromtimestamp(NOW - 600, tz=UTC), usegmt=True)
    assert classify_cancel(html(503, headers={"Retry-After": when}), NOW).retry_after_seconds == 0


def test_503_with_garbage_retry_after_is_ignored() -> None:
    """An unreadable `Retry-After` is no instruction at all, not a crash."""
    decision = classify_cancel(html(503, headers={"Retry-After": "soon-ish"}), NOW)
    assert decision.ambiguous
    assert decision.retry_after_seconds is None


def test_429_blocks_as_rate_limited_and_honours_retry_after() -> None:
    """429 pauses the fleet for `Retry-After` seconds; the POST does not count."""
    answer = api(
        429, "Too Many Attempts.", {"Retry-After": "7", "X-RateLimit-Reset": str(int(NOW) + 99)}
    )
    decision = classify_cancel(answer, NOW)
    assert kind(decision) == "block"
    assert decision.block is PauseReason.RATE_LIMITED
    assert decision.outcome is Outcome.RATE_LIMITED
    assert not decision.counts
    assert decision.retry_after_seconds == 7


def test_429_with_only_ratelimit_reset_waits_until_the_reset() -> None:
    """Without `Retry-After`, a 429's `X-RateLimit-Reset` (epoch seconds) gives the wait."""
    answer = api(429, "Too Many Attempts.", {"X-RateLimit-Reset": str(int(NOW) + 12)})
    assert classify_cancel(answer, NOW).retry_after_seconds == pytest.approx(12)


def test_429_without_any_hint_still_blocks() -> None:
    """A bare 429 blocks and leaves the pause length to the worker's own rule."""
    decision = classify_cancel(parse_answer(429, b"", {}), NOW)
    assert decision.block is PauseReason.RATE_LIMITED
    assert decision.retry_after_seconds is None


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "message", ["Unauthenticated.", "orderNotFound", "cancelledOrderSuccessfully"]
)
def test_401_and_403_block_as_unauthorized_and_are_never_final(status: int, message: str) -> None:
    """A refused token is not the order's fault: block, never final, never counted."""
    decision = classify_cancel(api(status, message))
    assert kind(decision) == "block"
    assert decision.block is PauseReason.UNAUTHORIZED
    assert decision.final is None
    assert not decision.counts


@pytest.mark.parametrize("status", [402, 405, 406, 409, 410, 413, 415, 418, 422, 451])
def test_other_4xx_fail_for_good(status: int) -> None:
    """An unexpected 4xx is something no retry can fix: the job ends `failed`."""
    decision = classify_cancel(api(status, "Whatever"))
    assert kind(decision) == "final"
    assert decision.final is JobStatus.FAILED
    assert decision.counts


def test_408_is_a_timeout_and_is_retried() -> None:
    """408 (the server timed out reading the request) is retried, not a final failure."""
    decision = classify_cancel(api(408, "Request Timeout"))
    assert kind(decision) == "retry"
    assert decision.counts


def test_connect_failure_is_retried_without_a_status_check() -> None:
    """A request that never left is safe to resend: retry, not ambiguous, and no attempt is spent
    (no POST was made; SPEC.md, "Provider-wide trouble")."""
    decision = classify_cancel(ConnectFailed("cannot connect: NewConnectionError"))
    assert kind(decision) == "retry"
    assert decision.outcome is Outcome.RETRYABLE
    assert not decision.ambiguous
    assert not decision.counts


def test_lost_answer_is_ambiguous() -> None:
    """A read timeout or dropped connection may have cancelled: retry after a status check."""
    decision = classify_cancel(AnswerLost("read timeout: no answer in time"))
    assert kind(decision) == "retry"
    assert decision.outcome is Outcome.AMBIGUOUS
    assert decision.ambiguous
    assert decision.counts


def test_headers_are_read_whatever_their_case() -> None:
    """`RETRY-AFTER` from the wire is the same header as `Retry-After`."""
    assert classify_cancel(html(503, headers={"RETRY-AFTER": "9"})).retry_after_seconds == 9


# -- classify_status_check ----------------------------------------------------------------------


def test_status_cancelled_settles_as_succeeded() -> None:
    """An order found `CANCELLED` ends the job `succeeded`; the check is not a cancel attempt."""
    decision = classify_status_check(order_status("CANCELLED"))
    assert decision.final is JobStatus.SUCCEEDED
    assert decision.outcome is Outcome.ORDER_CANCELLED
    assert not decision.counts


def test_status_paid_settles_as_already_paid() -> None:
    """An order found `PAID` ends the job `already_paid`."""
    decision = classify_status_check(order_status("PAID"))
    assert decision.final is JobStatus.ALREADY_PAID
    assert not decision.counts


def test_status_404_order_not_found_settles_as_not_found() -> None:
    """404 `orderNotFound` on the status call ends the job `not_found`."""
    decision = classify_status_check(api(404, "orderNotFound"))
    assert decision.final is JobStatus.NOT_FOUND
    assert not decision.counts


@pytest.mark.parametrize("status", ["SENT", "INVOICED", "REFUNDED", "sent"])
def test_an_open_order_is_posted_again(status: str) -> None:
    """Any other order status means the cancel did not happen: POST again, not final."""
    decision = classify_status_check(order_status(status))
    assert kind(decision) == "retry"
    assert decision.outcome is Outcome.ORDER_OPEN
    assert not decision.counts


@pytest.mark.parametrize(
    "result",
    [
        AnswerLost("read timeout"),
        ConnectFailed("connect timeout"),
        api(510, "Something Went Wrong"),
        html(502),
        api(200, "Order Status Retrieved Successfully"),
    ],
    ids=["answer-lost", "connect-failed", "510", "502-html", "200-without-data"],
)
def test_a_failed_status_check_posts_again(result: Any) -> None:
    """No usable answer to the status check: carry on and POST again, nothing final."""
    decision = classify_status_check(result)
    assert kind(decision) == "retry"
    assert decision.outcome is Outcome.CHECK_FAILED
    assert not decision.counts


@pytest.mark.parametrize("status", [401, 403])
def test_status_check_unauthorized_blocks(status: int) -> None:
    """A refused token on the status call blocks the fleet too."""
    decision = classify_status_check(api(status, "Unauthenticated."))
    assert decision.block is PauseReason.UNAUTHORIZED
    assert decision.final is None


def test_status_check_429_blocks_with_retry_after() -> None:
    """A 429 on the status call pauses for its `Retry-After`."""
    decision = classify_status_check(api(429, "Too Many Attempts.", {"Retry-After": "3"}), NOW)
    assert decision.block is PauseReason.RATE_LIMITED
    assert decision.retry_after_seconds == 3


def test_status_check_html_404_blocks_as_misrouted() -> None:
    """An HTML 404 on the status call says the URL is wrong, not that the order is missing."""
    decision = classify_status_check(html(404, HTML_404))
    assert decision.block is PauseReason.MISROUTED
    assert decision.final is None


# -- the classifiers never crash and always say one thing ---------------------------------------

KNOWN_MESSAGES = [
    "cancelledOrderSuccessfully",
    "orderStatusAlreadyPaid",
    "orderNotFound",
    "payloadValidationErrors",
    "Something Went Wrong",
    "Too Many Attempts.",
]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.fixed_dictionaries(
    {},
    optional={
        "message": st.one_of(st.sampled_from(KNOWN_MESSAGES), json_values),
        "status_code": json_values,
        "errors": json_values,
        "data": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"status": st.one_of(st.sampled_from(["CANCELLED", "PAID", "SENT"]), json_values)}
            ),
        ),
    },
)
bodies = st.one_of(
    json_objects.map(lambda obj: json.dumps(obj).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=200),
    st.just(b""),
)
header_values = st.one_of(
    st.text(max_size=40),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.just("Wed, 21 Oct 2015 07:28:00 GMT"),
)
headers = st.dictionaries(
    st.sampled_from(
        [
            "Retry-After",
            "retry-after",
            "X-RateLimit-Reset",
            "X-RateLimit-Remaining",
            "Content-Type",
            "X-Other",
        ]
    ),
    header_values,
    max_size=4,
)
results = st.one_of(
    st.builds(parse_answer, st.integers(100, 599), bodies, headers),
    st.builds(AnswerLost, st.text(max_size=20)),
    st.builds(ConnectFailed, st.text(max_size=20)),
)


def _consistent(decision: Decision) -> str:
    said = kind(decision)
    if said == "block":
        assert not decision.counts, "a blocked call must not count as an attempt"
        assert not decision.ambiguous
    if said == "final":
        assert not decision.ambiguous
        assert decision.final in ONE_ANSWER_FINALS
    if decision.retry_after_seconds is not None:
        assert decision.retry_after_seconds >= 0
        assert not math.isnan(decision.retry_after_seconds)
    return said


@given(results, st.floats(0, 4e9))
def test_any_cancel_answer_gives_one_consistent_decision(result: Any, now: float) -> None:
    """Any status, body and headers: exactly one of final/block/retry, never an exception."""
    decision = classify_cancel(result, now)
    said = _consistent(decision)
    if isinstance(result, Answer):
        if result.status in (401, 403, 429):
            assert said == "block"
        if result.status >= 500:
            assert said == "retry" and decision.ambiguous
        if decision.final is JobStatus.SUCCEEDED:
            assert 200 <= result.status < 300 and result.message == "cancelledOrderSuccessfully"
        if decision.final is JobStatus.NOT_FOUND:
            assert result.status == 404 and result.message == "orderNotFound"
        if decision.errors is not None:
            assert result.status == 417
        if said != "block":
            assert decision.counts, "every cancel POST that reached the API counts"
    else:
        # A POST that may have left counts; one that never left (no connection) does not.
        assert said == "retry" and decision.counts == result.sent


@given(results, st.floats(0, 4e9))
def test_any_status_check_answer_gives_one_consistent_decision(result: Any, now: float) -> None:
    """Any status-check answer: one consistent decision, never counted, never an exception."""
    decision = classify_status_check(result, now)
    said = _consistent(decision)
    assert not decision.counts
    assert not decision.ambiguous
    if said == "final":
        assert isinstance(result, Answer) and result.status in (200, 404)
        assert decision.final in (JobStatus.SUCCEEDED, JobStatus.ALREADY_PAID, JobStatus.NOT_FOUND)
    if isinstance(result, Answer) and result.status in (401, 403, 429):
        assert said == "block"
