"""The sandbox answers like Front Payment over real HTTP, and misbehaves exactly as scripted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from fpcancel.cli import main
from fpcancel.sandbox import (
    OrderScript,
    SandboxControl,
    SandboxServer,
    admitted_arrivals,
    fixed_windows,
    max_calls_in_window,
    parse_rate_limit,
)
from fpcancel.sandbox.state import _digest

TOKEN = "sandbox-test-token-7f3a9c"
NOTE = "Customer asked to cancel"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(token=TOKEN) as server:
        yield server


def _session(token: str | None = TOKEN) -> requests.Session:
    session = requests.Session()
    # A proxy from the environment must not stand between the tests and a loopback server.
    session.trust_env = False
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


@pytest.fixture
def client() -> Iterator[requests.Session]:
    with _session() as session:
        yield session


def cancel(
    session: requests.Session,
    server: SandboxServer,
    order_id: str,
    payload: Any = None,
    **kwargs: Any,
) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    if "data" not in kwargs and "json" not in kwargs:
        kwargs["json"] = {"cancellationNote": NOTE} if payload is None else payload
    return session.post(f"{server.base_url}/connect/orders/cancel/{order_id}", **kwargs)


def status(session: requests.Session, server: SandboxServer, order_id: str) -> requests.Response:
    return session.get(f"{server.base_url}/connect/orders/status/{order_id}", timeout=5)


def order_status(session: requests.Session, server: SandboxServer, order_id: str) -> str:
    answer = status(session, server, order_id)
    assert answer.status_code == 200
    result: str = answer.json()["data"]["status"]
    return result


# --- documented answers --------------------------------------------------------------------------


@pytest.mark.parametrize("initial", ["SENT", "INVOICED"])
def test_cancel_of_open_order_answers_202_and_cancels_it(
    sandbox: SandboxServer, client: requests.Session, initial: str
) -> None:
    """A SENT or INVOICED order answers the documented 202 and is CANCELLED afterwards."""
    sandbox.set_order("ODR100", initial)
    answer = cancel(client, sandbox, "ODR100")
    assert answer.status_code == 202
    assert answer.json() == {
        "status_code": 202,
        "status_message": "OK",
        "message": "cancelledOrderSuccessfully",
        "is_data": False,
        "data": None,
    }
    assert order_status(client, sandbox, "ODR100") == "CANCELLED"


def test_cancel_of_paid_order_answers_400_already_paid(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """A PAID order answers the documented 400 orderStatusAlreadyPaid and stays PAID."""
    sandbox.set_order("ODR101", "PAID")
    answer = cancel(client, sandbox, "ODR101")
    assert answer.status_code == 400
    assert answer.json() == {
        "status_code": 400,
        "status_message": "Conflict of Business Logic",
        "message": "orderStatusAlreadyPaid",
        "is_error": False,
        "errors": None,
    }
    assert order_status(client, sandbox, "ODR101") == "PAID"


@pytest.mark.parametrize("initial", ["CANCELLED", "REFUNDED"])
def test_cancel_of_closed_order_answers_400_not_cancellable(
    sandbox: SandboxServer, client: requests.Session, initial: str
) -> None:
    """A CANCELLED or REFUNDED order answers 400 orderStatusNotCancellable and keeps its status."""
    sandbox.set_order("ODR102", initial)
    answer = cancel(client, sandbox, "ODR102")
    assert answer.status_code == 400
    assert answer.json()["message"] == "orderStatusNotCancellable"
    assert answer.json()["status_message"] == "Conflict of Business Logic"
    assert order_status(client, sandbox, "ODR102") == initial


def test_missing_order_answers_404_on_cancel_and_status(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """A MISSING order answers the documented 404 orderNotFound to both calls."""
    sandbox.set_order("ODR103", "MISSING")
    expected = {
        "status_code": 404,
        "status_message": "Not Found",
        "message": "orderNotFound",
        "is_data": False,
        "data": None,
    }
    for answer in (cancel(client, sandbox, "ODR103"), status(client, sandbox, "ODR103")):
        assert answer.status_code == 404
        assert answer.json() == expected


def test_status_answers_documented_body_and_headers(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """A status GET answers 200 with uuid/status/amounts and the provider's headers."""
    sandbox.set_order("ODR1649249709", "PAID")
    answer = status(client, sandbox, "ODR1649249709")
    assert answer.status_code == 200
    assert answer.json() == {
        "status_code": 200,
        "status_message": "OK",
        "message": "Order Status Retrieved Successfully",
        "is_data": True,
        "data": {"uuid": "ODR1649249709", "status": "PAID", "orderAmount": 40, "refundedAmount": 0},
    }
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["server"] == "nginx/1.24.0 (Ubuntu)"
    assert answer.headers["x-ratelimit-limit"] == "240"
    assert answer.headers["x-ratelimit-remaining"] == "239"
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    assert answer.raw.version == 11  # HTTP/1.1, so clients keep the connection


@pytest.mark.parametrize("order_id", ["ODR%2F1", "ODR%201", "X" * 65, "ODR%C3%A91"])
def test_malformed_order_id_answers_404_order_not_found(
    sandbox: SandboxServer, client: requests.Session, order_id: str
) -> None:
    """An id that is not 1-64 of A-Za-z0-9_- (after unquoting) answers 404 orderNotFound."""
    for answer in (cancel(client, sandbox, order_id), status(client, sandbox, order_id)):
        assert answer.status_code == 404
        assert answer.json()["message"] == "orderNotFound"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/connect/orders/cancel/ODR1"),
        ("POST", "/api/v1/connect/orders/status/ODR1"),
        ("POST", "/api/v2/connect/orders/cancel/ODR1"),
        ("GET", "/"),
    ],
)
def test_wrong_url_answers_nginx_html_404(
    sandbox: SandboxServer, client: requests.Session, method: str, path: str
) -> None:
    """A wrong method or path answers nginx's HTML 404, not JSON, and is logged as kind other."""
    root = sandbox.base_url.removesuffix("/api/v1")
    answer = client.request(method, root + path, timeout=5)
    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == "text/html"
    assert "<center><h1>404 Not Found</h1></center>" in answer.text
    assert [call["kind"] for call in sandbox.calls()] == ["other"]


# --- validation ----------------------------------------------------------------------------------

REQUIRED = ["The cancellation note field is required."]


@pytest.mark.parametrize(
    ("kwargs", "errors"),
    [
        ({"json": {}}, REQUIRED),
        ({"json": {"cancellationNote": ""}}, REQUIRED),
        ({"json": {"cancellationNote": "   "}}, REQUIRED),
        ({"json": {"cancellationNote": None}}, REQUIRED),
        ({"json": ["not", "an", "object"]}, REQUIRED),
        ({"data": b"cancellationNote=hello"}, REQUIRED),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, REQUIRED),
        # JSON sent without saying so is not read, as Laravel does.
        ({"data": json.dumps({"cancellationNote": NOTE})}, REQUIRED),
        ({"json": {"cancellationNote": 42}}, ["The cancellation note field must be a string."]),
    ],
)
def test_bad_payload_answers_417_and_changes_nothing(
    sandbox: SandboxServer, client: requests.Session, kwargs: dict[str, Any], errors: list[str]
) -> None:
    """A missing, blank, non-string or non-JSON note answers 417 with Laravel's message."""
    sandbox.set_order("ODR104")
    answer = cancel(client, sandbox, "ODR104", **kwargs)
    assert answer.status_code == 417
    assert answer.json() == {
        "status_code": 417,
        "status_message": "Client Error",
        "message": "payloadValidationErrors",
        "is_error": True,
        "errors": {"cancellationNote": errors},
    }
    assert order_status(client, sandbox, "ODR104") == "SENT"


def test_note_longer_than_limit_answers_417() -> None:
    """A note over max_note_length answers 417 with the length message; one at the limit passes."""
    with SandboxServer(max_note_length=10) as server, _session() as session:
        too_long = cancel(session, server, "ODR105", {"cancellationNote": "x" * 11})
        assert too_long.status_code == 417
        assert too_long.json()["errors"] == {
            "cancellationNote": [
                "The cancellation note field must not be greater than 10 characters."
            ]
        }
        assert cancel(session, server, "ODR105", {"cancellationNote": "x" * 10}).status_code == 202


# --- scripts -------------------------------------------------------------------------------------


def test_scripted_510_then_real_behaviour(sandbox: SandboxServer, client: requests.Session) -> None:
    """A '510' step answers the documented 510 without cancelling; the next call is real."""
    sandbox.set_order("ODR200", script=["510"])
    first = cancel(client, sandbox, "ODR200")
    assert first.status_code == 510
    assert first.json() == {
        "status_code": 510,
        "status_message": "Execution Exception Occurred",
        "message": "Something Went Wrong",
        "is_error": True,
        "errors": "Array",
    }
    assert order_status(client, sandbox, "ODR200") == "SENT"
    assert cancel(client, sandbox, "ODR200").status_code == 202
    assert [call["step"] for call in sandbox.calls("ODR200", "cancel")] == ["510", "real"]


@pytest.mark.parametrize("code", [502, 504, 404])
def test_scripted_html_error_page(
    sandbox: SandboxServer, client: requests.Session, code: int
) -> None:
    """An 'NNN-html' step answers nginx's HTML page with that status, not JSON."""
    sandbox.set_order("ODR201", script=[f"{code}-html"])
    answer = cancel(client, sandbox, "ODR201")
    assert answer.status_code == code
    assert answer.headers["Content-Type"] == "text/html"
    assert answer.text.startswith("<html>")
    assert "nginx/1.24.0 (Ubuntu)" in answer.text
    with pytest.raises(ValueError):
        answer.json()


def test_scripted_retry_after_header(sandbox: SandboxServer, client: requests.Session) -> None:
    """'503:retry-after=2' answers a JSON 503 carrying 'Retry-After: 2'."""
    sandbox.set_order("ODR202", script=["503:retry-after=2"])
    answer = cancel(client, sandbox, "ODR202")
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "2"
    assert answer.json()["status_code"] == 503
    assert answer.json()["message"] == "Something Went Wrong"


def test_scripted_codes_and_messages(sandbox: SandboxServer, client: requests.Session) -> None:
    """Bare codes, '400:message', '401' and '429' answer the matching JSON bodies in order."""
    sandbox.set_order("ODR203", script=["500", "400", "400:orderIsLocked", "401", "429"])
    answers = [cancel(client, sandbox, "ODR203") for _ in range(5)]
    assert [a.status_code for a in answers] == [500, 400, 400, 401, 429]
    assert answers[0].json()["status_message"] == "Internal Server Error"
    assert answers[0].json()["message"] == "Something Went Wrong"
    assert answers[1].json()["message"] == "someUnknownBusinessRule"
    assert answers[2].json()["message"] == "orderIsLocked"
    assert answers[3].json() == {"message": "Unauthenticated."}
    assert answers[4].json() == {"message": "Too Many Attempts."}
    assert answers[4].headers["Retry-After"] == "1"
    assert order_status(client, sandbox, "ODR203") == "SENT"


def test_status_script_is_consumed_by_status_calls_only(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """status_script steps apply to status GETs; cancel POSTs leave them alone."""
    sandbox.set_order("ODR204", status_script=["510", "502-html"])
    assert cancel(client, sandbox, "ODR204").status_code == 202
    assert status(client, sandbox, "ODR204").status_code == 510
    assert status(client, sandbox, "ODR204").status_code == 502
    assert order_status(client, sandbox, "ODR204") == "CANCELLED"


def test_late_answer_times_out_but_cancel_took_effect(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """'late:S': the client times out, yet a later status GET shows the order CANCELLED."""
    sandbox.set_order("ODR205", script=["late:1.5"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        cancel(client, sandbox, "ODR205", timeout=(2, 0.2))
    assert order_status(client, sandbox, "ODR205") == "CANCELLED"
    assert sandbox.calls("ODR205", "cancel")[0]["status"] == 202


def test_drop_closes_connection_after_cancelling(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """'drop': the client sees a connection error, the order is CANCELLED, the log says None."""
    sandbox.set_order("ODR206", script=["drop"])
    with pytest.raises(requests.exceptions.ConnectionError):
        cancel(client, sandbox, "ODR206")
    assert order_status(client, sandbox, "ODR206") == "CANCELLED"
    call = sandbox.calls("ODR206", "cancel")[0]
    assert (call["status"], call["step"]) == (None, "drop")
    assert sandbox.stats()["by_status"]["dropped"] == 1


def test_apply_510_cancels_but_answers_510(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """'apply-510': the answer is 510, but the order is CANCELLED."""
    sandbox.set_order("ODR207", script=["apply-510"])
    assert cancel(client, sandbox, "ODR207").status_code == 510
    assert order_status(client, sandbox, "ODR207") == "CANCELLED"


def test_slow_step_delays_then_behaves_really(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """'slow:S' answers the real 202, S seconds later."""
    sandbox.set_order("ODR208", script=["slow:0.2"])
    started = time.monotonic()
    answer = cancel(client, sandbox, "ODR208")
    assert time.monotonic() - started >= 0.2
    assert answer.status_code == 202


@pytest.mark.parametrize(
    "step",
    [
        "bogus",
        "5xx",
        "099",
        "204",
        "600",
        "slow",
        "slow:-1",
        "late:abc",
        "502-html:oops",
        "503:retry-after=x",
        "400:",
        "OK",
        "",
    ],
)
def test_unknown_step_is_refused_up_front(sandbox: SandboxServer, step: str) -> None:
    """A malformed step raises ValueError in set_order and load_scenario; nothing changes."""
    sandbox.set_order("ODR209", "PAID", script=["510"])
    with pytest.raises(ValueError):
        sandbox.set_order("ODR209", script=["ok", step])
    with pytest.raises(ValueError):
        sandbox.load_scenario({"orders": {"ODR1": {}, "ODR209": {"status_script": [step]}}})
    assert sandbox.order("ODR209") == OrderScript("PAID", ["510"], [])
    assert sandbox.order("ODR1") is None


def test_set_order_refuses_bad_status_and_id(sandbox: SandboxServer) -> None:
    """An unknown status or a malformed order id raises ValueError."""
    with pytest.raises(ValueError, match="status"):
        sandbox.set_order("ODR1", "sent")
    with pytest.raises(ValueError, match="order id"):
        sandbox.set_order("ODR 1")


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer ", TOKEN]
)
def test_bad_or_missing_token_answers_401(
    sandbox: SandboxServer, authorization: str | None
) -> None:
    """A call without the exact bearer token answers Laravel's 401 and cancels nothing."""
    sandbox.set_order("ODR300")
    with _session(token=None) as session:
        if authorization is not None:
            session.headers["Authorization"] = authorization
        answer = cancel(session, sandbox, "ODR300")
    assert answer.status_code == 401
    assert answer.json() == {"message": "Unauthenticated."}
    assert sandbox.order("ODR300") == OrderScript("SENT")
    assert sandbox.calls("ODR300")[0]["authorized"] is False


def test_set_token_switches_at_runtime(sandbox: SandboxServer, client: requests.Session) -> None:
    """After set_token the old token gets 401 and the new one works; None accepts any bearer."""
    sandbox.set_token("rotated-token")
    assert status(client, sandbox, "ODR301").status_code == 401
    with _session("rotated-token") as rotated:
        assert status(rotated, sandbox, "ODR301").status_code == 200
    sandbox.set_token(None)
    with _session("anything-at-all") as anyone:
        assert status(anyone, sandbox, "ODR301").status_code == 200
    with _session(token=None) as nobody:
        assert status(nobody, sandbox, "ODR301").status_code == 401


def test_call_log_never_holds_the_token(sandbox: SandboxServer, client: requests.Session) -> None:
    """Calls are logged with their fields, but the token appears nowhere: log, stats or state."""
    sandbox.set_order("ODR302")
    cancel(client, sandbox, "ODR302")
    cancel(client, sandbox, "ODR302", data="plain text", headers={"Content-Type": "text/plain"})
    with _session("wrong-" + TOKEN) as wrong:
        status(wrong, sandbox, "ODR302")
    calls = sandbox.calls()
    assert [(c["seq"], c["kind"], c["status"], c["authorized"]) for c in calls] == [
        (1, "cancel", 202, True),
        (2, "cancel", 417, True),
        (3, "status", 401, False),
    ]
    first = calls[0]
    assert first["method"] == "POST"
    assert first["order"] == "ODR302"
    assert first["content_type"] == "application/json"
    assert first["body"] == {"cancellationNote": NOTE}
    assert first["step"] == "real"
    assert abs(first["time"] - time.time()) < 60
    assert calls[1]["body"] == "plain text"
    assert calls[2]["body"] is None
    everything = json.dumps([calls, sandbox.stats()]) + repr(vars(sandbox._state))
    assert TOKEN not in everything


def test_calls_returns_copies(sandbox: SandboxServer, client: requests.Session) -> None:
    """Mutating what calls() returns does not change the log; clear_calls empties it."""
    cancel(client, sandbox, "ODR303")
    sandbox.calls()[0]["body"]["cancellationNote"] = "tampered"
    assert sandbox.calls()[0]["body"] == {"cancellationNote": NOTE}
    sandbox.clear_calls()
    assert sandbox.calls() == []
    assert sandbox.stats()["calls"] == 0


# --- rate limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["laravel", "sliding"])
def test_rate_limit_refuses_the_call_over_the_limit(mode: str) -> None:
    """With 3/1, the fourth call answers 429 with Retry-After and reset; remaining counts down."""
    with SandboxServer(rate_limit=(3, 1.0), rate_mode=mode) as server, _session() as session:
        accepted = [status(session, server, "ODR400") for _ in range(3)]
        assert [a.headers["x-ratelimit-remaining"] for a in accepted] == ["2", "1", "0"]
        assert {a.headers["x-ratelimit-limit"] for a in accepted} == {"3"}
        refused = cancel(session, server, "ODR400")
        assert refused.status_code == 429
        assert refused.json() == {"message": "Too Many Attempts."}
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert 0 <= int(refused.headers["X-RateLimit-Reset"]) - time.time() <= 2
        assert server.order("ODR400") == OrderScript("SENT")
        assert server.calls(kind="cancel")[0]["status"] == 429


def test_sliding_mode_refused_calls_are_not_counted() -> None:
    """Sliding mode: a 429 takes no slot; once the oldest call leaves the window, the next is accepted."""
    window = 0.6
    with (
        SandboxServer(rate_limit=(2, window), rate_mode="sliding") as server,
        _session() as session,
    ):
        assert status(session, server, "ODR401").status_code == 200
        first_done = time.monotonic()
        time.sleep(window / 2)
        assert status(session, server, "ODR401").status_code == 200
        assert [status(session, server, "ODR401").status_code for _ in range(3)] == [429] * 3
        time.sleep(max(0.0, first_done + window + 0.02 - time.monotonic()))
        # Only the second call is still in the window; counted 429s would make this one a 429 too.
        assert status(session, server, "ODR401").status_code == 200


def test_rate_limit_is_per_token_and_can_be_switched_off() -> None:
    """Each bearer has its own window; set_rate_limit(None) lifts the limit and its headers."""
    with SandboxServer(rate_limit=(1, 60.0)) as server, _session("a") as a, _session("b") as b:
        assert status(a, server, "ODR402").status_code == 200
        assert status(a, server, "ODR402").status_code == 429
        assert status(b, server, "ODR402").status_code == 200
        server.set_rate_limit(None)
        answer = status(a, server, "ODR402")
        assert answer.status_code == 200
        assert "x-ratelimit-remaining" not in answer.headers


@pytest.mark.parametrize(
    ("text", "expected"), [("240/60", (240, 60.0)), ("20/2", (20, 2.0)), (" 5 / 0.5 ", (5, 0.5))]
)
def test_parse_rate_limit_accepts_calls_per_seconds(text: str, expected: tuple[int, float]) -> None:
    """'CALLS/SECONDS' parses to (calls, seconds)."""
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize("text", ["", "240", "240/", "/60", "x/60", "0/60", "5/0", "5/-1", "5/nan"])
def test_parse_rate_limit_refuses_malformed_text(text: str) -> None:
    """Anything else raises ValueError naming the expected form or the bad number."""
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate_limit(text)


# --- Laravel's fixed window ------------------------------------------------------------------------


class FakeClock:
    """The sandbox's clock in epoch seconds, moved by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _at(
    clock: FakeClock, at: float, session: requests.Session, server: SandboxServer
) -> requests.Response:
    """A status call arriving at `at` on the sandbox's clock."""
    clock.now = at
    return status(session, server, "ODR450")


def _remaining(answer: requests.Response) -> str:
    return str(answer.headers["x-ratelimit-remaining"])


@pytest.fixture
def laravel() -> Iterator[tuple[SandboxServer, FakeClock]]:
    """A Laravel-mode sandbox allowing 3 calls per 10 s, on a hand-moved clock."""
    clock = FakeClock()
    with SandboxServer(rate_limit=(3, 10.0), clock=clock) as server:
        yield server, clock


def test_laravel_window_opens_at_the_first_call_and_remaining_counts_down(
    laravel: tuple[SandboxServer, FakeClock], client: requests.Session
) -> None:
    """The first call opens a 10 s window (remaining 2), then 1 and 0; the next call in it is a
    429; the first call at the window's end opens the next one with remaining N-1."""
    server, clock = laravel
    answers = [_at(clock, t, client, server) for t in (1000.4, 1004.0, 1010.3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [_remaining(a) for a in answers] == ["2", "1", "0"]
    assert {a.headers["x-ratelimit-limit"] for a in answers} == {"3"}
    assert _at(clock, 1010.39, client, server).status_code == 429
    next_window = _at(clock, 1010.4, client, server)
    assert (next_window.status_code, _remaining(next_window)) == (200, "2")


def test_laravel_window_follows_a_late_first_call(
    laravel: tuple[SandboxServer, FakeClock], client: requests.Session
) -> None:
    """A window opened late (after a quiet spell) ends late: calls a whole W after the previous
    window's start still count against it, and after a gap the next window opens at the next call."""
    server, clock = laravel
    for t in (1000.0, 1000.1, 1000.2):
        assert _at(clock, t, client, server).status_code == 200
    # Quiet until 1013.7: the next window opens there, not at 1010 or 1020.
    assert [_remaining(_at(clock, t, client, server)) for t in (1013.7, 1020.0, 1023.0)] == [
        "2",
        "1",
        "0",
    ]
    assert _at(clock, 1023.69, client, server).status_code == 429
    assert _at(clock, 1023.7, client, server).status_code == 200


def test_laravel_429_carries_laravels_headers_in_whole_seconds(
    laravel: tuple[SandboxServer, FakeClock], client: requests.Session
) -> None:
    """A 429 says Too Many Attempts with remaining 0, Retry-After = floor(opened + W) - floor(now)
    and X-RateLimit-Reset = floor(now) + Retry-After; never a Retry-After under 1."""
    server, clock = laravel
    for t in (1000.7, 1001.0, 1001.5):
        _at(clock, t, client, server)
    refused = _at(clock, 1002.2, client, server)
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too Many Attempts."}
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    # The window really ends at 1010.7; Laravel's timer says 1010.
    assert (refused.headers["Retry-After"], refused.headers["X-RateLimit-Reset"]) == ("8", "1010")
    # Laravel would say 0 in the window's last fraction of a second; the sandbox says 1.
    last = _at(clock, 1010.5, client, server)
    assert (last.headers["Retry-After"], last.headers["X-RateLimit-Reset"]) == ("1", "1011")


def test_laravel_refused_calls_neither_count_nor_stretch_the_window(
    laravel: tuple[SandboxServer, FakeClock], client: requests.Session
) -> None:
    """429s take no hit and do not move the window: its end is still opened + W, and the next
    window's first call gets remaining N-1."""
    server, clock = laravel
    for t in (1000.0, 1001.0, 1002.0):
        _at(clock, t, client, server)
    assert [_at(clock, t, client, server).status_code for t in (1003.0, 1009.0, 1009.99)] == [
        429
    ] * 3
    first = _at(clock, 1010.0, client, server)
    assert (first.status_code, _remaining(first)) == (200, "2")
    assert server.stats()["rate"]["refused"] == 3


def _hits(server: SandboxServer, clock: FakeClock) -> int:
    """Calls TOKEN's open window has admitted (read from inside, to order calls in a test)."""
    limiter = server._state.limiter
    assert limiter is not None
    return limiter.calls - limiter.remaining(_digest(TOKEN), clock.now)


def test_laravel_remaining_is_read_when_the_answer_is_built(
    laravel: tuple[SandboxServer, FakeClock],
) -> None:
    """As Laravel reads remaining after the controller ran: calls admitted while a slow call was
    being answered lower its remaining; a window that expired meanwhile reads as a full N."""
    server, clock = laravel
    server.set_order("ODR451", script=["slow:0.4"])
    server.set_order("ODR452", script=["slow:0.4"])

    def slow_call(order: str, out: list[requests.Response]) -> threading.Thread:
        def run() -> None:
            with _session() as session:
                out.append(cancel(session, server, order))

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    overlapped: list[requests.Response] = []
    thread = slow_call("ODR451", overlapped)
    wait_for(lambda: _hits(server, clock) == 1)
    with _session() as session:
        # Two more calls in the same window while the slow one is still being answered.
        assert [_remaining(status(session, server, "ODR450")) for _ in range(2)] == ["1", "0"]
    thread.join(5)
    assert (overlapped[0].status_code, _remaining(overlapped[0])) == (202, "0")

    clock.now = 1020.0
    expired: list[requests.Response] = []
    thread = slow_call("ODR452", expired)
    wait_for(lambda: _hits(server, clock) == 1)
    clock.now = 1031.0  # its window has ended before its answer is built
    thread.join(5)
    assert (expired[0].status_code, _remaining(expired[0])) == (202, "3")


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_each_token_has_its_own_laravel_window(
    laravel: tuple[SandboxServer, FakeClock],
) -> None:
    """Another bearer's calls neither count against a token's window nor move it."""
    server, clock = laravel
    with _session("a") as a, _session("b") as b:
        for t in (1000.0, 1001.0, 1002.0):
            _at(clock, t, a, server)
        assert _at(clock, 1003.0, a, server).status_code == 429
        assert _remaining(_at(clock, 1003.0, b, server)) == "2"


def test_answer_delay_answers_late_but_counts_the_call_at_arrival(
    client: requests.Session,
) -> None:
    """answer_delay_seconds: the answer leaves no sooner than the delay, and the call is logged
    and counted at its arrival time."""
    clock = FakeClock()
    with SandboxServer(rate_limit=(2, 10.0), answer_delay_seconds=0.2, clock=clock) as server:
        started = time.monotonic()
        answer = status(client, server, "ODR460")
        assert time.monotonic() - started >= 0.2
        assert (answer.status_code, _remaining(answer)) == (200, "1")
        assert server.calls()[0]["time"] == 1000.0


def test_rate_mode_and_answer_delay_are_validated() -> None:
    """An unknown rate_mode or a negative or non-number delay is refused, in config and scenarios."""
    with SandboxServer() as server:
        for config in ({"rate_mode": "fixed"}, {"answer_delay_seconds": -0.1}):
            with pytest.raises(ValueError):
                server.load_scenario(config)
        with pytest.raises(ValueError, match="answer_delay_seconds"):
            server.set_answer_delay(float("nan"))
        with pytest.raises(ValueError, match="rate_mode"):
            server.set_rate_limit((2, 1.0), mode="token-bucket")
        server.load_scenario({"rate_mode": "sliding", "answer_delay_seconds": 0})
        assert server.stats()["rate"]["mode"] == "sliding"
    with pytest.raises(ValueError, match="rate_mode"):
        SandboxServer(rate_mode="fixed")


# --- rate accounting -------------------------------------------------------------------------------


def test_max_calls_in_window_is_a_sliding_scan_over_arrivals() -> None:
    """The most arrivals in any half-open W-second span, wherever it starts."""
    assert max_calls_in_window([], 1.0) == 0
    assert max_calls_in_window([5.0], 1.0) == 1
    assert max_calls_in_window([0.0, 0.5, 0.99, 1.0, 1.2], 1.0) == 4  # 0.5 .. 1.2
    assert max_calls_in_window([0.0, 1.0, 2.0, 3.0], 1.0) == 1  # W apart is another window
    assert max_calls_in_window([0.0, 0.999, 1.998], 1.0) == 2


def test_fixed_windows_opens_each_at_the_first_call_after_the_last_ended() -> None:
    """Admitted arrivals regroup into Laravel's windows: (opened at, calls)."""
    assert fixed_windows([0.0, 0.4, 0.99, 1.0, 1.5, 3.2, 4.19, 4.2], 1.0) == [
        (0.0, 3),
        (1.0, 2),
        (3.2, 2),
        (4.2, 1),
    ]


def test_stats_count_admitted_refused_and_the_worst_window(
    laravel: tuple[SandboxServer, FakeClock], client: requests.Session
) -> None:
    """Fixed windows let 2N calls through across a boundary: the stats' worst window says so;
    429s, unauthorized and wrong-URL calls are not admitted."""
    server, clock = laravel
    times = (1000.0, 1009.7, 1009.8, 1010.0, 1010.1, 1010.2)
    codes = [_at(clock, t, client, server).status_code for t in times]
    assert codes == [200, 200, 200, 200, 200, 200]
    assert _at(clock, 1010.3, client, server).status_code == 429
    with _session(token=None) as nobody:
        assert status(nobody, server, "ODR450").status_code == 401
    assert client.get(server.root_url + "/nowhere", timeout=5).status_code == 404
    assert server.stats()["rate"] == {
        "mode": "laravel",
        "limit": 3,
        "window_seconds": 10.0,
        "admitted": 6,
        "refused": 1,
        "worst_window": 5,  # 1009.7 .. 1010.2
    }
    calls = server.calls()
    assert [c["throttled"] for c in calls] == [False] * 6 + [True, False, False]
    assert admitted_arrivals(calls) == list(times)
    server.set_rate_limit(None)
    assert server.stats()["rate"]["worst_window"] is None


# --- the documented 417 ----------------------------------------------------------------------------


def test_scripted_417_answers_the_documented_validation_error(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """A bare '417' step answers payloadValidationErrors with field errors and cancels nothing;
    '417:text' sets the message."""
    sandbox.set_order("ODR470", script=["417", "417:somethingElse"])
    answer = cancel(client, sandbox, "ODR470")
    assert answer.status_code == 417
    assert answer.json() == {
        "status_code": 417,
        "status_message": "Client Error",
        "message": "payloadValidationErrors",
        "is_error": True,
        "errors": {"cancellationNote": ["The cancellation note field format is invalid."]},
    }
    assert cancel(client, sandbox, "ODR470").json()["message"] == "somethingElse"
    assert order_status(client, sandbox, "ODR470") == "SENT"


# --- the command ---------------------------------------------------------------------------------


def test_sandbox_command_takes_rate_mode_and_answer_delay() -> None:
    """`fpcancel sandbox --rate-mode sliding --answer-delay S` serves in that mode; bad values
    exit 2."""
    for bad in (["--rate-mode", "fixed"], ["--answer-delay", "-1"]):
        assert CliRunner().invoke(main, ["sandbox", *bad]).exit_code == 2
    command = [str(Path(sys.executable).with_name("fpcancel")), "sandbox", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--rate-limit", "1/60", "--rate-mode", "sliding", "--answer-delay", "0.01"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        base_url = process.stderr.readline().strip().rpartition("=")[2]
        control = SandboxControl(base_url)
        with _session() as session:
            codes = [
                session.get(f"{base_url}/connect/orders/status/ODR480", timeout=5).status_code
                for _ in range(2)
            ]
        assert codes == [200, 429]
        assert control.stats()["rate"]["mode"] == "sliding"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(5)


# --- unknown orders ------------------------------------------------------------------------------


def test_unknown_orders_open_creates_them_as_sent(
    sandbox: SandboxServer, client: requests.Session
) -> None:
    """In 'open' mode an order never registered exists as SENT and can be cancelled."""
    assert order_status(client, sandbox, "ODR500") == "SENT"
    assert sandbox.order("ODR500") == OrderScript("SENT")
    assert cancel(client, sandbox, "ODR501").status_code == 202
    assert sandbox.order("ODR501") == OrderScript("CANCELLED")


def test_unknown_orders_missing_answers_404() -> None:
    """In 'missing' mode an order never registered answers 404 and is not created."""
    with SandboxServer(unknown_orders="missing") as server, _session() as session:
        assert cancel(session, server, "ODR502").json()["message"] == "orderNotFound"
        assert status(session, server, "ODR502").status_code == 404
        assert server.order("ODR502") is None
        server.set_order("ODR502")
        assert cancel(session, server, "ODR502").status_code == 202


# --- control -------------------------------------------------------------------------------------


def test_sandbox_control_round_trip(sandbox: SandboxServer, client: requests.Session) -> None:
    """SandboxControl drives a running sandbox over HTTP like the Python API does."""
    control = SandboxControl(sandbox.base_url + "/")
    assert control.root_url == sandbox.root_url
    control.load_scenario(
        {"orders": {"ODR600": {"status": "PAID"}, "ODR601": {"script": ["510"]}}, "token": None}
    )
    control.set_order(
        "ODR602", "INVOICED", script=["503:retry-after=4"], status_script=["504-html"]
    )
    assert control.order("ODR602") == OrderScript("INVOICED", ["503:retry-after=4"], ["504-html"])
    assert control.order("ODR999") is None

    assert cancel(client, sandbox, "ODR600").status_code == 400
    assert cancel(client, sandbox, "ODR601").status_code == 510
    with _session("any-token-now") as anyone:
        assert cancel(anyone, sandbox, "ODR602").status_code == 503
    assert [c["status"] for c in control.calls(kind="cancel")] == [400, 510, 503]
    assert [c["step"] for c in control.calls("ODR601")] == ["510"]
    assert control.stats() == {
        "calls": 3,
        "by_status": {"400": 1, "510": 1, "503": 1},
        "orders": {"PAID": 1, "SENT": 1, "INVOICED": 1},
        "rate": {
            "mode": "laravel",
            "limit": 240,
            "window_seconds": 60.0,
            "admitted": 3,
            "refused": 0,
            "worst_window": 3,
        },
    }

    control.clear_calls()
    assert control.calls() == []
    control.set_token("control-token")
    assert status(client, sandbox, "ODR600").status_code == 401
    control.set_rate_limit((1, 60.0))
    with _session("control-token") as session:
        assert status(session, sandbox, "ODR600").status_code == 200
        assert status(session, sandbox, "ODR600").status_code == 429
    control.set_rate_limit("2/60", mode="sliding")
    control.set_answer_delay(0.01)
    assert control.stats()["rate"]["mode"] == "sliding"
    control.set_rate_limit(None)
    with pytest.raises(ValueError, match="unknown script step"):
        control.set_order("ODR603", script=["nonsense"])
    with pytest.raises(ValueError, match="rate limit"):
        control.set_rate_limit("fast")
    with pytest.raises(ValueError, match="rate_mode"):
        control.set_rate_limit("2/60", mode="fixed")
    with pytest.raises(ValueError, match="answer_delay_seconds"):
        control.set_answer_delay(-1)


def test_control_endpoints_refuse_bad_input(sandbox: SandboxServer) -> None:
    """Bad control input answers 400 with an 'error', unknown endpoints 404; no auth needed."""
    with _session(token=None) as session:
        root = sandbox.root_url
        bad_json = session.put(f"{root}/_sandbox/orders/ODR1", data=b"{", timeout=5)
        assert bad_json.status_code == 400
        assert "error" in bad_json.json()
        bad_key = session.put(f"{root}/_sandbox/config", json={"colour": "red"}, timeout=5)
        assert bad_key.status_code == 400
        assert session.get(f"{root}/_sandbox/nothing", timeout=5).status_code == 404
        assert session.get(f"{root}/_sandbox/stats", timeout=5).json()["calls"] == 0


# --- serving -------------------------------------------------------------------------------------


def test_concurrent_calls_are_all_answered() -> None:
    """8 threads x 50 keep-alive calls are all answered correctly and all logged."""
    results: list[int] = []
    lock = threading.Lock()

    def worker(number: int, server: SandboxServer) -> None:
        with _session() as session:
            codes = []
            for i in range(25):
                codes.append(cancel(session, server, f"ODR7{number}x{i}").status_code)
                codes.append(status(session, server, f"ODR7{number}x{i}").status_code)
        with lock:
            results.extend(codes)

    with SandboxServer(rate_limit=None) as server:
        threads = [threading.Thread(target=worker, args=(n, server)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results) == [200] * 200 + [202] * 200
        stats = server.stats()
        assert stats["calls"] == 400
        assert stats["orders"] == {"CANCELLED": 200}
        assert sorted(c["seq"] for c in server.calls()) == list(range(1, 401))


def test_stop_cuts_keep_alive_connections() -> None:
    """After stop(), a client holding a kept-alive connection gets a connection error."""
    server = SandboxServer().start()
    with _session() as session:
        assert status(session, server, "ODR800").status_code == 200
        server.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            status(session, server, "ODR800")
    server.stop()  # a second stop is harmless


def test_serve_forever_returns_cleanly_on_sigterm() -> None:
    """serve_forever in a process stops on SIGTERM and the process exits 0."""
    code = (
        "from fpcancel.sandbox import SandboxServer\n"
        "server = SandboxServer(port=0)\n"
        "print(server.port, flush=True)\n"
        "server.serve_forever()\n"
        "print('stopped', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with _session() as session:
            answer = session.get(
                f"http://127.0.0.1:{port}/api/v1/connect/orders/status/ODR900", timeout=5
            )
            assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert out.strip() == "stopped"
