"""A local stand-in for Front Payment's order API, for tests, benchmarks, the demo and users.

``SandboxServer`` answers the two calls fpcancel makes, with the documented bodies and headers:

- ``POST /api/v1/connect/orders/cancel/{ORDER_ID}`` with JSON ``{"cancellationNote": "..."}``
- ``GET /api/v1/connect/orders/status/{ORDER_ID}``

Any other path gets nginx's HTML 404, as a wrong URL does in production. A provider call is checked
in this order: bearer token (401), rate limit (429), the order's next scripted step, real behaviour.

Rate limit, per bearer token, ``N`` calls per ``W`` seconds (``rate_limit=(N, W)``), in one of two
modes (``rate_mode``):

- ``"laravel"`` (the default) counts as the provider does, with Laravel's ``ThrottleRequests``
  middleware and ``RateLimiter::hit``: a fixed window per key that opens at the first call arriving
  after the previous window expired and lasts W; up to N calls are admitted in it. An admitted call
  carries ``x-ratelimit-limit: N`` and ``x-ratelimit-remaining: N - hits``, read when the answer is
  built (after the answer delay or a ``slow:S`` step), as Laravel reads it after the controller
  ran: calls that arrived meanwhile count, and a window that expired meanwhile reads as N. Past N
  the answer is 429 ``{"message": "Too Many Attempts."}`` with ``x-ratelimit-remaining: 0``,
  ``Retry-After`` and ``X-RateLimit-Reset``, in Laravel's whole-second maths: the window's timer is
  ``floor(opened + W)`` in epoch seconds, ``Retry-After = timer - floor(now)`` and
  ``X-RateLimit-Reset = floor(now) + Retry-After``. So, as in production, ``Retry-After`` can be up
  to a second short of the window's real end and the reset time up to a second early. Refused calls
  are not counted and never open a window. Deviations from Laravel: W may be fractional (tests use
  sub-second windows; times are kept as floats, as Redis's millisecond expiry keeps them), and
  ``Retry-After`` is at least 1 where Laravel's ``max(0, ...)`` sends 0 in the last fraction of a
  second before the window ends.
- ``"sliding"``: a strict sliding window, at most N admitted calls in any W seconds; remaining is
  N minus the calls admitted in the last W seconds when the answer is built; ``Retry-After`` is
  the wait until the oldest admitted call leaves the window, rounded up.

``answer_delay_seconds`` makes every provider call answer that long after it arrived (the call is
counted at its arrival), to simulate a provider that takes, say, 30 ms per answer.

Real behaviour: SENT and INVOICED orders become CANCELLED (202); PAID gives 400
``orderStatusAlreadyPaid``; CANCELLED and REFUNDED give 400 ``orderStatusNotCancellable``; MISSING
orders and malformed ids give 404 ``orderNotFound``; a payload without a usable ``cancellationNote``
gives 417 (checked first, as Laravel validates before it looks the order up). Orders nobody
registered are created as SENT (``unknown_orders="open"``) or treated as MISSING (``"missing"``).

Scripts make an order misbehave on purpose. ``script`` steps are consumed one per cancel POST,
``status_script`` steps one per status GET; once a script is empty, real behaviour resumes:

==========================  ====================================================================
``ok``                      real behaviour
``510``                     the documented 510 body; nothing changes
``NNN``                     JSON error with that status (``400``: ``someUnknownBusinessRule``)
``NNN:text``                the same with ``message`` set to ``text``
``NNN:retry-after=S``       adds ``Retry-After: S`` (combines: ``400:text:retry-after=S``)
``NNN-html``                nginx's HTML error page with that status (``502-html``, ``504-html``)
``417``                     the documented 417 ``payloadValidationErrors`` with field ``errors``
``401`` / ``429``           Laravel's ``Unauthenticated.`` / ``Too Many Attempts.`` (retry 1 s)
``slow:S``                  wait S seconds, then real behaviour
``late:S``                  real behaviour at once (the cancel takes effect), answer S seconds later
``drop``                    real behaviour, then close the connection without answering
``apply-510``               real behaviour, but answer 510
==========================  ====================================================================

Control endpoints under ``/_sandbox/`` (no auth, no rate limit) let ``SandboxControl`` drive a
sandbox in another process: ``PUT|GET /_sandbox/orders/{id}``, ``GET|DELETE /_sandbox/calls``,
``PUT /_sandbox/config`` (keys ``token``, ``rate_limit``, ``rate_mode``, ``answer_delay_seconds``,
``unknown_orders``, ``max_note_length``), ``POST /_sandbox/scenario`` (``orders`` and the same
keys), ``GET /_sandbox/stats``.

Rate accounting: every logged call says whether the rate limit refused it (``throttled``); the
stats' ``rate`` object counts ``admitted`` calls (authorized API calls the limit let through),
``refused`` ones (the limit's 429s) and the ``worst_window``: the most admitted calls whose arrival
times fall within any W seconds, the promise "never more than N calls in any W seconds" checked by
a sliding scan. ``admitted_arrivals``, ``max_calls_in_window`` and ``fixed_windows`` compute the
same from a call log, for benchmarks.

The bearer token is never kept: the server holds only its SHA-256 digest, and the call log records
whether a call was authorized, never the header.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import math
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Final

__all__ = [
    "ORDER_STATUSES",
    "RATE_MODES",
    "OrderScript",
    "SandboxControl",
    "SandboxServer",
    "admitted_arrivals",
    "fixed_windows",
    "max_calls_in_window",
    "parse_rate_limit",
]

SERVER_HEADER: Final = "nginx/1.24.0 (Ubuntu)"
API_PREFIX: Final = "/api/v1"
CANCEL_PREFIX: Final = API_PREFIX + "/connect/orders/cancel/"
STATUS_PREFIX: Final = API_PREFIX + "/connect/orders/status/"
CONTROL_PREFIX: Final = "/_sandbox"

ORDER_STATUSES: Final = frozenset({"SENT", "PAID", "INVOICED", "CANCELLED", "REFUNDED", "MISSING"})
UNKNOWN_ORDER_MODES: Final = ("open", "missing")
RATE_MODES: Final = ("laravel", "sliding")
CONFIG_KEYS: Final = (
    "token",
    "rate_limit",
    "rate_mode",
    "answer_delay_seconds",
    "unknown_orders",
    "max_note_length",
)
CALL_KINDS: Final = ("cancel", "status", "other")

_ORDER_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STEP_CODE_RE: Final = re.compile(r"(\d{3})(-html)?")
# Bigger bodies are no cancellation note; refusing them keeps a runaway client from eating memory.
_MAX_BODY_BYTES: Final = 1 << 20
_JSON: Final = "application/json"


def parse_rate_limit(text: str) -> tuple[int, float]:
    """Parse ``"CALLS/SECONDS"``: ``"240/60"`` -> ``(240, 60.0)``; ValueError says what's wrong."""
    calls_text, sep, seconds_text = text.strip().partition("/")
    try:
        if not sep:
            raise ValueError
        calls = int(calls_text.strip())
        seconds = float(seconds_text.strip())
    except ValueError:
        raise ValueError(
            f"rate limit must look like CALLS/SECONDS, e.g. '240/60'; got {text!r}"
        ) from None
    _check_rate_limit((calls, seconds))
    return calls, seconds


def _check_rate_limit(limit: tuple[int, float]) -> None:
    calls, seconds = limit
    if calls < 1:
        raise ValueError(f"rate limit calls must be at least 1; got {calls}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"rate limit window must be a positive number of seconds; got {seconds}")


def _coerce_rate_limit(value: object) -> tuple[int, float] | None:
    """Accept ``None``, ``"20/2"`` or a ``(calls, seconds)`` pair, as Python or JSON give it."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_rate_limit(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    ):
        limit = (value[0], float(value[1]))
        _check_rate_limit(limit)
        return limit
    raise ValueError(
        f"rate limit must be 'CALLS/SECONDS', a (calls, seconds) pair or null; got {value!r}"
    )


def _check_rate_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode not in RATE_MODES:
        raise ValueError(f"rate_mode must be one of {list(RATE_MODES)}; got {mode!r}")
    return mode


def _check_delay(seconds: object, name: str = "answer_delay_seconds") -> float:
    if (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ValueError(f"{name} must be a number of seconds, 0 or more; got {seconds!r}")
    return float(seconds)


def _check_order_id(order_id: object) -> str:
    if not isinstance(order_id, str) or not _ORDER_ID_RE.fullmatch(order_id):
        raise ValueError(f"order id must be 1-64 characters of A-Za-z0-9_-; got {order_id!r}")
    return order_id


def _check_status(status: object) -> str:
    if not isinstance(status, str) or status not in ORDER_STATUSES:
        raise ValueError(f"order status must be one of {sorted(ORDER_STATUSES)}; got {status!r}")
    return status


def _check_token(token: object) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        # A token with blanks could never arrive intact in a Bearer header.
        raise ValueError("token must be a non-empty string without whitespace, or null")
    return token


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


# --- the step language ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """One parsed script step; ``action`` is real, answer, html, slow, late, drop or apply-510."""

    text: str
    action: str
    code: int = 0
    message: str | None = None
    retry_after: int | None = None
    seconds: float = 0.0


_REAL_STEP: Final = _Step("real", "real")


def _parse_step(text: object) -> _Step:
    """Parse one step of the step language; ValueError names the step and what was expected."""
    if not isinstance(text, str):
        raise ValueError(f"script step must be a string; got {text!r}")
    if text in ("ok", "drop", "apply-510"):
        return _Step(text, "real" if text == "ok" else text)
    head, sep, rest = text.partition(":")
    if head in ("slow", "late"):
        try:
            seconds = float(rest)
        except ValueError:
            seconds = -1.0
        if not sep or not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"step {text!r}: {head} needs seconds, e.g. '{head}:0.5'")
        return _Step(text, head, seconds=seconds)
    match = _STEP_CODE_RE.fullmatch(head)
    if match is None:
        raise ValueError(
            f"unknown script step {text!r}; expected ok, drop, apply-510, slow:S, late:S, "
            "NNN, NNN:message, NNN:retry-after=S or NNN-html"
        )
    code = int(match.group(1))
    # 1xx, 204 and 304 answers cannot carry the body every step sends.
    if not 200 <= code <= 599 or code in (204, 304):
        raise ValueError(f"step {text!r}: status must be 200-599 and not 204 or 304")
    html = match.group(2) is not None
    message: str | None = None
    retry_text: str | None = None
    if sep:
        if rest.startswith("retry-after="):
            retry_text = rest.removeprefix("retry-after=")
        else:
            message, marker, tail = rest.rpartition(":retry-after=")
            if marker:
                retry_text = tail
            else:
                message = rest
            if not message:
                raise ValueError(f"step {text!r}: the message after ':' is empty")
            if html:
                raise ValueError(f"step {text!r}: an HTML page takes no message")
    retry_after: int | None = None
    if retry_text is not None:
        if not retry_text.isdigit():
            raise ValueError(
                f"step {text!r}: retry-after needs whole seconds, e.g. 'retry-after=2'"
            )
        retry_after = int(retry_text)
    return _Step(text, "html" if html else "answer", code, message, retry_after)


def _check_script(script: object, name: str) -> list[str]:
    if script is None:
        return []
    if not isinstance(script, (list, tuple)):
        raise ValueError(f"{name} must be a list of steps; got {script!r}")
    for step in script:
        _parse_step(step)
    return list(script)


# --- answers -------------------------------------------------------------------------------------


@dataclass
class _Answer:
    """What the handler sends: status, body, headers; or nothing, after a delay, for drop/late."""

    status: int
    body: bytes
    content_type: str = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    delay_seconds: float = 0.0


def _json_bytes(data: object) -> bytes:
    # Laravel sends compact JSON; so does the sandbox, which also keeps bodies small.
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def _data_body(code: int, status_message: str, message: str, data: Any = None) -> bytes:
    return _json_bytes(
        {
            "status_code": code,
            "status_message": status_message,
            "message": message,
            "is_data": data is not None,
            "data": data,
        }
    )


def _error_body(
    code: int, status_message: str, message: str, errors: Any = None, *, is_error: bool = True
) -> bytes:
    return _json_bytes(
        {
            "status_code": code,
            "status_message": status_message,
            "message": message,
            "is_error": is_error,
            "errors": errors,
        }
    )


_CANCELLED_BODY: Final = _data_body(202, "OK", "cancelledOrderSuccessfully")
_NOT_FOUND_BODY: Final = _data_body(404, "Not Found", "orderNotFound")
# The documented 400 says is_error false: business-rule refusals are not errors to Front Payment.
_ALREADY_PAID_BODY: Final = _error_body(
    400, "Conflict of Business Logic", "orderStatusAlreadyPaid", is_error=False
)
_NOT_CANCELLABLE_BODY: Final = _error_body(
    400, "Conflict of Business Logic", "orderStatusNotCancellable", is_error=False
)
# Verbatim from the docs, "Array" included: a client must cope with whatever `errors` holds.
_EXECUTION_BODY: Final = _error_body(
    510, "Execution Exception Occurred", "Something Went Wrong", "Array"
)
# What a scripted bare `417` step says is wrong: a refusal the real validation would not make.
_SCRIPTED_NOTE_ERROR: Final = "The cancellation note field format is invalid."
_UNAUTHENTICATED_BODY: Final = _json_bytes({"message": "Unauthenticated."})
_TOO_MANY_BODY: Final = _json_bytes({"message": "Too Many Attempts."})
_BASE_HEADERS: Final = (("cache-control", "no-cache, private"),)


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _html_page(code: int) -> bytes:
    """nginx's own error page, which is what a proxy failure or a wrong URL returns."""
    title = f"{code} {_phrase(code)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        f"<hr><center>{SERVER_HEADER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode("ascii")


def _html_answer(code: int) -> _Answer:
    return _Answer(code, _html_page(code), content_type="text/html")


def _note_errors(content_type: str | None, payload: Any) -> list[str]:
    """Laravel's validation messages for ``cancellationNote``; empty when the note is fine."""
    # Laravel reads a JSON body only when the request says it is JSON; else the field is absent.
    is_json = content_type is not None and "json" in content_type.lower()
    note = payload.get("cancellationNote") if is_json and isinstance(payload, dict) else None
    # Laravel trims strings and turns "" into null before validating, so blanks count as missing.
    if note is None or (isinstance(note, str) and not note.strip()):
        return ["The cancellation note field is required."]
    if not isinstance(note, str):
        return ["The cancellation note field must be a string."]
    return []


@dataclass
class OrderScript:
    """One order's state: its status and the steps its next calls will follow."""

    status: str = "SENT"
    script: list[str] = field(default_factory=list)
    status_script: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The control endpoints' JSON form (lists copied)."""
        return {
            "status": self.status,
            "script": list(self.script),
            "status_script": list(self.status_script),
        }


@dataclass(frozen=True)
class _ProviderRequest:
    arrival: float
    arrival_monotonic: float
    method: str
    kind: str
    order_id: str | None
    bearer: str | None
    content_type: str | None
    payload: Any


@dataclass(frozen=True)
class _Admission:
    """A rate-limit verdict; ``retry_after`` and ``reset_epoch`` are for refusals only."""

    admitted: bool
    retry_after: int = 0
    reset_epoch: int = 0


@dataclass
class _Window:
    """One key's Laravel window: when it opened and the calls it admitted."""

    opened_at: float
    hits: int = 0


class _LaravelWindow:
    """Laravel's ``RateLimiter``: per key, a fixed window that the first call after the previous
    one expired opens; up to N hits in it. Times are epoch seconds (floats)."""

    mode = "laravel"

    def __init__(self, limit: tuple[int, float]) -> None:
        self.calls, self.seconds = limit
        self._windows: dict[bytes, _Window] = {}

    def _open_window(self, key: bytes, now: float) -> _Window | None:
        window = self._windows.get(key)
        if window is None or now >= window.opened_at + self.seconds:
            return None  # expired: the cache has forgotten the counter and the timer
        return window

    def admit(self, key: bytes, now: float) -> _Admission:
        """``tooManyAttempts`` then ``hit``: refused calls are not counted."""
        window = self._open_window(key, now)
        if window is None:
            window = self._windows[key] = _Window(now)
        if window.hits >= self.calls:
            # availableIn(): the timer holds floor(opened + W); both sides are whole seconds.
            timer = math.floor(window.opened_at + self.seconds)
            retry_after = max(1, timer - math.floor(now))
            return _Admission(False, retry_after, math.floor(now) + retry_after)
        window.hits += 1
        return _Admission(True)

    def remaining(self, key: bytes, now: float) -> int:
        """``retriesLeft``: N minus the hits of the window open at ``now`` (N if none is)."""
        window = self._open_window(key, now)
        return max(0, self.calls - (0 if window is None else window.hits))


class _SlidingWindow:
    """Strict sliding window per key: at most N admitted calls in any W seconds."""

    mode = "sliding"

    def __init__(self, limit: tuple[int, float]) -> None:
        self.calls, self.seconds = limit
        self._admitted: dict[bytes, deque[float]] = {}

    def _window(self, key: bytes, now: float) -> deque[float]:
        window = self._admitted.setdefault(key, deque())
        horizon = now - self.seconds
        while window and window[0] <= horizon:
            window.popleft()
        return window

    def admit(self, key: bytes, now: float) -> _Admission:
        """Refused calls are not counted."""
        window = self._window(key, now)
        if len(window) >= self.calls:
            retry_after = max(1, math.ceil(window[0] + self.seconds - now))
            return _Admission(False, retry_after, int(now) + retry_after)
        window.append(now)
        return _Admission(True)

    def remaining(self, key: bytes, now: float) -> int:
        return max(0, self.calls - len(self._window(key, now)))


_Limiter = _LaravelWindow | _SlidingWindow


def _make_limiter(limit: tuple[int, float] | None, mode: str) -> _Limiter | None:
    if limit is None:
        return None
    return _LaravelWindow(limit) if mode == "laravel" else _SlidingWindow(limit)


# --- rate accounting -----------------------------------------------------------------------------


def admitted_arrivals(calls: Iterable[Mapping[str, Any]]) -> list[float]:
    """Arrival times (epoch seconds, sorted) of the calls the rate limit let through: authorized
    cancel and status calls that were not refused with a 429 by the limit."""
    return sorted(
        float(call["time"])
        for call in calls
        if call["authorized"] and call["kind"] != "other" and not call.get("throttled", False)
    )


def max_calls_in_window(arrivals: Sequence[float], window_seconds: float) -> int:
    """The most arrivals within any ``window_seconds`` (a half-open span ``[t, t + W)``, as a
    Laravel window is): what "never more than N calls in any W seconds" is checked against.
    ``arrivals`` must be sorted."""
    worst = first = 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] >= window_seconds:
            first += 1
        worst = max(worst, last - first + 1)
    return worst


def fixed_windows(arrivals: Sequence[float], window_seconds: float) -> list[tuple[float, int]]:
    """The provider's windows as Laravel opens them from admitted arrivals (sorted): each opens at
    the first arrival at or after the previous one's end; ``[(opened_at, calls), ...]``."""
    windows: list[tuple[float, int]] = []
    for at in arrivals:
        if windows and at < windows[-1][0] + window_seconds:
            opened, count = windows[-1]
            windows[-1] = (opened, count + 1)
        else:
            windows.append((at, 1))
    return windows


# --- the sandbox's state and behaviour -----------------------------------------------------------


class _SandboxState:
    """Orders, call log and config behind one lock; turns a parsed request into an answer."""

    def __init__(
        self,
        token: str | None,
        rate_limit: tuple[int, float] | None,
        unknown_orders: str,
        max_note_length: int,
        *,
        rate_mode: str = "laravel",
        answer_delay_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.orders: dict[str, OrderScript] = {}
        self.calls: list[dict[str, Any]] = []
        self.seq = 0
        self.by_status: dict[str, int] = {}
        self.token_digest: bytes | None = None
        self.rate_limit: tuple[int, float] | None = None
        self.rate_mode = "laravel"
        self.limiter: _Limiter | None = None
        self.answer_delay_seconds = 0.0
        self.unknown_orders = "open"
        self.max_note_length = 1000
        self.configure(
            {
                "token": token,
                "rate_limit": rate_limit,
                "rate_mode": rate_mode,
                "answer_delay_seconds": answer_delay_seconds,
                "unknown_orders": unknown_orders,
                "max_note_length": max_note_length,
            }
        )

    # configuration ------------------------------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        """Validate every given setting, then apply them together; absent keys stay as they are.

        A new ``rate_limit`` or ``rate_mode`` starts every key's window empty."""
        unknown = set(config) - set(CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        updates: dict[str, Any] = {}
        if "token" in config:
            token = _check_token(config["token"])
            updates["token_digest"] = None if token is None else _digest(token)
        if "rate_limit" in config:
            updates["rate_limit"] = _coerce_rate_limit(config["rate_limit"])
        if "rate_mode" in config:
            updates["rate_mode"] = _check_rate_mode(config["rate_mode"])
        if "answer_delay_seconds" in config:
            updates["answer_delay_seconds"] = _check_delay(config["answer_delay_seconds"])
        if "unknown_orders" in config:
            mode = config["unknown_orders"]
            if mode not in UNKNOWN_ORDER_MODES:
                raise ValueError(
                    f"unknown_orders must be one of {list(UNKNOWN_ORDER_MODES)}; got {mode!r}"
                )
            updates["unknown_orders"] = mode
        if "max_note_length" in config:
            length = config["max_note_length"]
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise ValueError(f"max_note_length must be a positive integer; got {length!r}")
            updates["max_note_length"] = length
        with self.lock:
            for name, value in updates.items():
                setattr(self, name, value)
            if "rate_limit" in updates or "rate_mode" in updates:
                self.limiter = _make_limiter(self.rate_limit, self.rate_mode)

    def set_order(self, order_id: str, status: str, script: object, status_script: object) -> None:
        entry = OrderScript(
            _check_status(status),
            _check_script(script, "script"),
            _check_script(status_script, "status_script"),
        )
        _check_order_id(order_id)
        with self.lock:
            self.orders[order_id] = entry

    def load_scenario(self, data: object) -> None:
        """Replace every order with the scenario's and apply its config; all validated first."""
        if not isinstance(data, dict):
            raise ValueError("a scenario must be a JSON object")
        unknown = set(data) - {"orders", *CONFIG_KEYS}
        if unknown:
            raise ValueError(f"unknown scenario keys: {sorted(unknown)}")
        raw_orders = data.get("orders", {})
        if not isinstance(raw_orders, dict):
            raise ValueError(
                "scenario 'orders' must map order ids to {status, script, status_script}"
            )
        orders: dict[str, OrderScript] = {}
        for order_id, spec in raw_orders.items():
            orders[_check_order_id(order_id)] = _order_from_json(
                spec, where=f"order {order_id!r}: "
            )
        self.configure({key: value for key, value in data.items() if key != "orders"})
        with self.lock:
            self.orders = orders

    def order(self, order_id: str) -> OrderScript | None:
        with self.lock:
            entry = self.orders.get(order_id)
            return (
                None
                if entry is None
                else OrderScript(entry.status, list(entry.script), list(entry.status_script))
            )

    def calls_matching(self, order_id: str | None, kind: str | None) -> list[dict[str, Any]]:
        if kind is not None and kind not in CALL_KINDS:
            raise ValueError(f"kind must be one of {list(CALL_KINDS)}; got {kind!r}")
        with self.lock:
            chosen = [
                call
                for call in self.calls
                if (order_id is None or call["order"] == order_id)
                and (kind is None or call["kind"] == kind)
            ]
        # Bodies are never mutated here, but a caller might mutate what it gets.
        return [{**call, "body": copy.deepcopy(call["body"])} for call in chosen]

    def clear_calls(self) -> int:
        with self.lock:
            count = len(self.calls)
            self.calls = []
            self.by_status = {}
        return count

    def stats(self) -> dict[str, Any]:
        with self.lock:
            orders: dict[str, int] = {}
            for entry in self.orders.values():
                orders[entry.status] = orders.get(entry.status, 0) + 1
            arrivals = admitted_arrivals(self.calls)
            refused = sum(1 for call in self.calls if call["throttled"])
            limit = self.rate_limit
            return {
                "calls": len(self.calls),
                "by_status": dict(self.by_status),
                "orders": orders,
                "rate": {
                    "mode": self.rate_mode,
                    "limit": None if limit is None else limit[0],
                    "window_seconds": None if limit is None else limit[1],
                    "admitted": len(arrivals),
                    "refused": refused,
                    "worst_window": (
                        None if limit is None else max_calls_in_window(arrivals, limit[1])
                    ),
                },
            }

    # provider calls -----------------------------------------------------------------------------

    def provider_call(self, request: _ProviderRequest) -> _Answer:
        """Answer one provider call: auth, rate limit, scripted step, real behaviour; and log it.

        The answer leaves ``answer_delay_seconds`` after the call arrived (plus a ``slow:S``
        step's S); the order changes and the rate-limit headers are read when it does."""
        with self.lock:
            due = request.arrival_monotonic + self.answer_delay_seconds
            early = self._screen(request)
            step = _REAL_STEP if early is not None else self._next_step(request)
        if early is not None:
            _sleep_until(due)
            return early
        if step.action == "slow":
            due += step.seconds
        _sleep_until(due)
        with self.lock:
            return self._finish(request, step)

    def _screen(self, request: _ProviderRequest) -> _Answer | None:
        """The answer for a call that never reaches the API (wrong URL, no token, over the
        limit), logged; None for an admitted call (counted by the limiter)."""
        if request.kind == "other":
            answer = _html_answer(404)
            self._log(request, self._authorized(request.bearer), answer.status, "real")
            return answer
        if not self._authorized(request.bearer):
            answer = _Answer(401, _UNAUTHENTICATED_BODY, headers=list(_BASE_HEADERS))
            self._log(request, False, answer.status, "real")
            return answer
        if self.limiter is None:
            return None
        # Only authorized callers get here: the digest of a non-empty bearer is the key.
        admission = self.limiter.admit(_digest(request.bearer or ""), request.arrival)
        if admission.admitted:
            return None
        answer = self._too_many(admission.retry_after, admission.reset_epoch)
        self._log(request, True, answer.status, "real", throttled=True)
        return answer

    def _limit_headers(self, request: _ProviderRequest) -> list[tuple[str, str]]:
        """``x-ratelimit-*`` as Laravel adds them after the controller ran: remaining read now."""
        if self.limiter is None:
            return []
        remaining = self.limiter.remaining(_digest(request.bearer or ""), self.clock())
        return [
            ("x-ratelimit-limit", str(self.limiter.calls)),
            ("x-ratelimit-remaining", str(remaining)),
        ]

    def _authorized(self, bearer: str | None) -> bool:
        if not bearer:
            return False
        if self.token_digest is None:
            return True
        return hmac.compare_digest(_digest(bearer), self.token_digest)

    def _too_many(self, retry_after: int, reset_epoch: int) -> _Answer:
        headers = [
            *_BASE_HEADERS,
            ("Retry-After", str(retry_after)),
            ("X-RateLimit-Reset", str(reset_epoch)),
        ]
        if self.limiter is not None:
            headers += [
                ("x-ratelimit-limit", str(self.limiter.calls)),
                ("x-ratelimit-remaining", "0"),
            ]
        return _Answer(429, _TOO_MANY_BODY, headers=headers)

    def _next_step(self, request: _ProviderRequest) -> _Step:
        entry = self.orders.get(request.order_id) if request.order_id is not None else None
        if entry is not None:
            script = entry.script if request.kind == "cancel" else entry.status_script
            if script:
                return _parse_step(script.pop(0))
        return _REAL_STEP

    def _finish(self, request: _ProviderRequest, step: _Step) -> _Answer:
        """Apply the step (under the lock), log the call and return what to send."""
        limit_headers = self._limit_headers(request)
        if step.action == "answer":
            answer = self._scripted_answer(step)
            if step.code == 429:
                limit_headers = [
                    (name, "0" if name == "x-ratelimit-remaining" else value)
                    for name, value in limit_headers
                ]
            answer.headers = [*answer.headers, *limit_headers]
        elif step.action == "html":
            answer = _html_answer(step.code)
            if step.retry_after is not None:
                answer.headers.append(("Retry-After", str(step.retry_after)))
        else:
            answer = self._real(request)
            answer.headers = [*_BASE_HEADERS, *limit_headers]
            if step.action == "late":
                answer.delay_seconds = step.seconds
            elif step.action == "drop":
                answer.drop = True
            elif step.action == "apply-510":
                answer.status, answer.body = 510, _EXECUTION_BODY
        self._log(request, True, None if answer.drop else answer.status, step.text)
        return answer

    def _scripted_answer(self, step: _Step) -> _Answer:
        code = step.code
        headers = list(_BASE_HEADERS)
        if code == 401:
            body = (
                _UNAUTHENTICATED_BODY
                if step.message is None
                else _json_bytes({"message": step.message})
            )
        elif code == 429:
            body = (
                _TOO_MANY_BODY if step.message is None else _json_bytes({"message": step.message})
            )
            retry_after = 1 if step.retry_after is None else step.retry_after
            headers += [
                ("Retry-After", str(retry_after)),
                ("X-RateLimit-Reset", str(math.floor(self.clock()) + retry_after)),
            ]
            return _Answer(429, body, headers=headers)
        elif code == 510 and step.message is None:
            body = _EXECUTION_BODY
        elif code == 417:
            body = _error_body(
                417,
                "Client Error",
                step.message or "payloadValidationErrors",
                {"cancellationNote": [_SCRIPTED_NOTE_ERROR]},
            )
        elif code == 400:
            body = _error_body(
                400,
                "Conflict of Business Logic",
                step.message or "someUnknownBusinessRule",
                is_error=False,
            )
        else:
            body = _error_body(code, _phrase(code), step.message or "Something Went Wrong")
        if step.retry_after is not None:
            headers.append(("Retry-After", str(step.retry_after)))
        return _Answer(code, body, headers=headers)

    def _lookup(self, order_id: str | None) -> OrderScript | None:
        """The order as the provider sees it; None when it does not exist."""
        if order_id is None or not _ORDER_ID_RE.fullmatch(order_id):
            return None
        entry = self.orders.get(order_id)
        if entry is None and self.unknown_orders == "open":
            entry = self.orders[order_id] = OrderScript()
        if entry is None or entry.status == "MISSING":
            return None
        return entry

    def _real(self, request: _ProviderRequest) -> _Answer:
        if request.kind == "status":
            entry = self._lookup(request.order_id)
            if entry is None:
                return _Answer(404, _NOT_FOUND_BODY)
            data = {
                "uuid": request.order_id,
                "status": entry.status,
                "orderAmount": 40,
                "refundedAmount": 0,
            }
            return _Answer(200, _data_body(200, "OK", "Order Status Retrieved Successfully", data))
        errors = _note_errors(request.content_type, request.payload)
        if not errors and len(request.payload["cancellationNote"]) > self.max_note_length:
            errors = [
                "The cancellation note field must not be greater than "
                f"{self.max_note_length} characters."
            ]
        if errors:
            return _Answer(
                417,
                _error_body(
                    417, "Client Error", "payloadValidationErrors", {"cancellationNote": errors}
                ),
            )
        entry = self._lookup(request.order_id)
        if entry is None:
            return _Answer(404, _NOT_FOUND_BODY)
        if entry.status == "PAID":
            return _Answer(400, _ALREADY_PAID_BODY)
        if entry.status in ("SENT", "INVOICED"):
            entry.status = "CANCELLED"
            return _Answer(202, _CANCELLED_BODY)
        return _Answer(400, _NOT_CANCELLABLE_BODY)

    def _log(
        self,
        request: _ProviderRequest,
        authorized: bool,
        status: int | None,
        step: str,
        *,
        throttled: bool = False,
    ) -> None:
        self.seq += 1
        self.calls.append(
            {
                "seq": self.seq,
                "time": request.arrival,
                "method": request.method,
                "kind": request.kind,
                "order": request.order_id,
                "authorized": authorized,
                "content_type": request.content_type,
                "body": request.payload,
                "status": status,
                "step": step,
                "throttled": throttled,
            }
        )
        key = "dropped" if status is None else str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1


def _order_from_json(spec: object, where: str = "") -> OrderScript:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}an order must be an object with status, script, status_script")
    unknown = set(spec) - {"status", "script", "status_script"}
    if unknown:
        raise ValueError(f"{where}unknown order keys: {sorted(unknown)}")
    try:
        return OrderScript(
            _check_status(spec.get("status", "SENT")),
            _check_script(spec.get("script"), "script"),
            _check_script(spec.get("status_script"), "status_script"),
        )
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


# --- HTTP ----------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Benchmarks open many connections at once; the default backlog of 5 would refuse some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: _SandboxState, verbose: bool) -> None:
        self.state = state
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, so a stopped sandbox answers nothing more."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: its handler closed it meanwhile.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (late steps, timeouts, stop()) are normal here, not errors.
        if self.verbose or not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_HEADER
    # A buffered writer sends each answer in one write when the request ends; with Nagle off that
    # avoids the 40 ms delayed-ACK stall that separate header and body writes cause on keep-alive.
    wbufsize = -1
    disable_nagle_algorithm = True
    # Idle keep-alive connections free their thread after this long.
    timeout = 120
    server: _HTTPServer

    def version_string(self) -> str:
        return SERVER_HEADER

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        arrival = (self.server.state.clock(), time.monotonic())
        raw = self._read_body()
        if raw is None:
            return
        split = urllib.parse.urlsplit(self.path)
        try:
            if split.path == CONTROL_PREFIX or split.path.startswith(CONTROL_PREFIX + "/"):
                answer = _control_call(
                    self.server.state, self.command, split.path, split.query, raw
                )
            else:
                answer = self.server.state.provider_call(
                    self._provider_request(arrival, split.path, raw)
                )
        except Exception:
            # A sandbox bug must not leave the client hanging; the traceback still goes to stderr.
            traceback.print_exc()
            answer = _Answer(500, _json_bytes({"error": "sandbox internal error"}))
        self._send(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _provider_request(
        self, arrival: tuple[float, float], path: str, raw: bytes
    ) -> _ProviderRequest:
        kind, order_id = "other", None
        for prefix, method, name in (
            (CANCEL_PREFIX, "POST", "cancel"),
            (STATUS_PREFIX, "GET", "status"),
        ):
            segment = path.removeprefix(prefix)
            if self.command == method and segment != path and segment and "/" not in segment:
                kind, order_id = name, urllib.parse.unquote(segment)
        scheme, _, credentials = (self.headers.get("Authorization") or "").strip().partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        payload: Any = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
        return _ProviderRequest(
            *arrival,
            self.command,
            kind,
            order_id,
            bearer or None,
            self.headers.get("Content-Type"),
            payload,
        )

    def _read_body(self) -> bytes | None:
        """The request body (chunked or sized); None after answering a malformed one."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    return self._refuse(400, "malformed chunked body")
                total += size
                if total > _MAX_BODY_BYTES:
                    return self._refuse(413, "body too large")
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return self._refuse(400, "malformed Content-Length")
        if length < 0:
            return self._refuse(400, "malformed Content-Length")
        if length > _MAX_BODY_BYTES:
            return self._refuse(413, "body too large")
        return self.rfile.read(length) if length else b""

    def _refuse(self, status: int, reason: str) -> bytes | None:
        """Answer a body that cannot be read and give None; the connection is closed after."""
        self.close_connection = True
        self._send(
            _Answer(status, _json_bytes({"error": reason}), headers=[("Connection", "close")])
        )
        return None

    def _send(self, answer: _Answer) -> None:
        if answer.delay_seconds > 0:
            time.sleep(answer.delay_seconds)
        if answer.drop:
            self.close_connection = True
            self.log_message('"%s" dropped without an answer', self.requestline)
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)


def _control_call(state: _SandboxState, method: str, path: str, query: str, raw: bytes) -> _Answer:
    """Serve ``/_sandbox/...``; bad input is a 400 with ``{"error": ...}``."""
    parts = path.removeprefix(CONTROL_PREFIX).strip("/").split("/")
    route = parts[0] if parts else ""
    allowed: tuple[str, ...]
    try:
        if route == "orders" and len(parts) == 2:
            allowed = ("GET", "PUT")
            order_id = urllib.parse.unquote(parts[1])
            if method == "PUT":
                spec = _order_from_json(_control_json(raw))
                state.set_order(order_id, spec.status, spec.script, spec.status_script)
                return _control_answer(200, {"order": order_id, **spec.to_json()})
            if method == "GET":
                entry = state.order(order_id)
                if entry is None:
                    return _control_answer(404, {"error": f"no order {order_id!r}"})
                return _control_answer(200, {"order": order_id, **entry.to_json()})
        elif route == "calls" and len(parts) == 1:
            allowed = ("GET", "DELETE")
            if method == "GET":
                params = urllib.parse.parse_qs(query)
                order = params.get("order", [None])[-1]
                kind = params.get("kind", [None])[-1]
                return _control_answer(200, {"calls": state.calls_matching(order, kind)})
            if method == "DELETE":
                return _control_answer(200, {"cleared": state.clear_calls()})
        elif route == "config" and len(parts) == 1:
            allowed = ("PUT",)
            if method == "PUT":
                config = _control_json(raw)
                if not isinstance(config, dict):
                    raise ValueError("config must be a JSON object")
                state.configure(config)
                return _control_answer(200, {"ok": True})
        elif route == "scenario" and len(parts) == 1:
            allowed = ("POST",)
            if method == "POST":
                state.load_scenario(_control_json(raw))
                return _control_answer(200, {"ok": True})
        elif route == "stats" and len(parts) == 1:
            allowed = ("GET",)
            if method == "GET":
                return _control_answer(200, state.stats())
        else:
            return _control_answer(404, {"error": f"no control endpoint {path}"})
    except ValueError as error:
        return _control_answer(400, {"error": str(error)})
    return _Answer(
        405,
        _json_bytes({"error": f"{method} not allowed on {path}"}),
        headers=[("Allow", ", ".join(allowed))],
    )


def _control_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        raise ValueError("the body must be JSON") from None


def _control_answer(status: int, data: object) -> _Answer:
    return _Answer(status, _json_bytes(data))


def _sleep_until(due_monotonic: float) -> None:
    wait = due_monotonic - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --- public API ----------------------------------------------------------------------------------


class SandboxServer:
    """A threaded HTTP/1.1 stand-in for Front Payment, in this process.

    ``port=0`` picks a free port (see ``port``/``base_url``); the socket is bound at construction.
    ``token=None`` accepts any non-empty bearer; ``rate_limit=(N, W)`` allows N calls per W seconds
    per token (``None``: unlimited), counted as ``rate_mode`` says (``"laravel"``: fixed windows
    opened by the first call, as the provider counts; ``"sliding"``: a strict sliding window);
    ``answer_delay_seconds`` delays every answer; ``unknown_orders`` is ``"open"`` (unregistered
    orders exist as SENT) or ``"missing"``. ``clock`` gives the time in epoch seconds that calls
    are stamped and counted with (tests inject one). Use as a context manager, or
    ``start()``/``stop()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        rate_limit: tuple[int, float] | None = (240, 60.0),
        rate_mode: str = "laravel",
        answer_delay_seconds: float = 0.0,
        unknown_orders: str = "open",
        max_note_length: int = 1000,
        verbose: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = _SandboxState(
            token,
            rate_limit,
            unknown_orders,
            max_note_length,
            rate_mode=rate_mode,
            answer_delay_seconds=answer_delay_seconds,
            clock=clock,
        )
        self._host = host
        self._httpd = _HTTPServer((host, port), self._state, verbose)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The API root to give a client, e.g. ``http://127.0.0.1:8765/api/v1``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def root_url(self) -> str:
        """The server root, for ``SandboxControl``."""
        return self.base_url.removesuffix(API_PREFIX)

    def start(self) -> SandboxServer:
        """Serve in a daemon thread; return self."""
        if self._closed or self._thread is not None:
            raise RuntimeError("a SandboxServer can be started once")
        # A short poll keeps stop() quick for tests that start a server each; idle polls are cheap.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fp-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; safe to call twice."""
        if self._closed:
            return
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in this thread until KeyboardInterrupt or SIGTERM, then close; for the CLI."""
        if self._closed or self._thread is not None:
            raise RuntimeError("a SandboxServer can be started once")
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
        if in_main_thread:
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self._close()

    def set_order(
        self,
        order_id: str,
        status: str = "SENT",
        script: list[str] | None = None,
        status_script: list[str] | None = None,
    ) -> None:
        """Register or replace an order; all steps are validated (ValueError) before any change."""
        self._state.set_order(order_id, status, script, status_script)

    def order(self, order_id: str) -> OrderScript | None:
        """A copy of the order's state, or None if it was never registered or auto-created."""
        return self._state.order(order_id)

    def calls(self, order_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Copies of the logged provider calls, oldest first, filtered by order and kind."""
        return self._state.calls_matching(order_id, kind)

    def clear_calls(self) -> None:
        """Forget the call log and its counters."""
        self._state.clear_calls()

    def set_token(self, token: str | None) -> None:
        """Require this bearer token from now on; None accepts any non-empty bearer."""
        self._state.configure({"token": token})

    def set_rate_limit(
        self, rate_limit: tuple[int, float] | str | None, mode: str | None = None
    ) -> None:
        """Switch the rate limit (``(20, 2.0)``, ``"20/2"`` or None) and, if given, its mode
        (``"laravel"`` or ``"sliding"``); windows start empty."""
        config: dict[str, Any] = {"rate_limit": rate_limit}
        if mode is not None:
            config["rate_mode"] = mode
        self._state.configure(config)

    def set_answer_delay(self, seconds: float) -> None:
        """Answer every provider call this many seconds after it arrived (0: at once)."""
        self._state.configure({"answer_delay_seconds": seconds})

    def load_scenario(self, data: dict[str, Any]) -> None:
        """Replace all orders with ``data["orders"]`` and apply any of ``token``, ``rate_limit``,
        ``rate_mode``, ``answer_delay_seconds``, ``unknown_orders``, ``max_note_length``; nothing
        changes if anything is invalid.

        Example: ``{"orders": {"ODR1": {"status": "PAID", "script": ["510"]}},
        "rate_limit": "20/2", "rate_mode": "laravel"}``.
        """
        self._state.load_scenario(data)

    def stats(self) -> dict[str, Any]:
        """``{"calls": n, "by_status": {"202": n, ...}, "orders": {status: count}, "rate": {...}}``.

        ``rate``: ``mode``, ``limit`` (N), ``window_seconds`` (W), ``admitted`` (calls the limit
        let through), ``refused`` (its 429s) and ``worst_window`` (the most admitted calls within
        any W seconds; None without a limit), over the call log since it was last cleared.
        """
        return self._state.stats()


class SandboxControl:
    """Drive a sandbox in another process through its ``/_sandbox/`` endpoints.

    Invalid input raises ValueError with the sandbox's reason, as ``SandboxServer`` does.
    """

    def __init__(self, root_url: str, timeout: float = 10.0) -> None:
        root = root_url.rstrip("/")
        self.root_url = root.removesuffix(API_PREFIX).rstrip("/")
        self.timeout = timeout
        # The sandbox is local: a proxy from the environment would only get in the way.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def set_order(
        self,
        order_id: str,
        status: str = "SENT",
        script: list[str] | None = None,
        status_script: list[str] | None = None,
    ) -> None:
        """Register or replace an order."""
        self._request(
            "PUT",
            f"/orders/{urllib.parse.quote(order_id, safe='')}",
            {"status": status, "script": script or [], "status_script": status_script or []},
        )

    def order(self, order_id: str) -> OrderScript | None:
        """The order's state, or None if the sandbox has no such order."""
        data = self._request(
            "GET", f"/orders/{urllib.parse.quote(order_id, safe='')}", missing_ok=True
        )
        if data is None:
            return None
        return OrderScript(data["status"], list(data["script"]), list(data["status_script"]))

    def calls(self, order_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """The logged provider calls, filtered by order and kind."""
        params = {
            name: value
            for name, value in (("order", order_id), ("kind", kind))
            if value is not None
        }
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        calls: list[dict[str, Any]] = self._request("GET", f"/calls{query}")["calls"]
        return calls

    def clear_calls(self) -> None:
        """Forget the call log."""
        self._request("DELETE", "/calls")

    def set_token(self, token: str | None) -> None:
        """Require this bearer token; None accepts any."""
        self._request("PUT", "/config", {"token": token})

    def set_rate_limit(
        self, rate_limit: tuple[int, float] | str | None, mode: str | None = None
    ) -> None:
        """Switch the rate limit (``(20, 2.0)``, ``"20/2"`` or None) and, if given, its mode."""
        if isinstance(rate_limit, tuple):
            rate_limit = f"{rate_limit[0]}/{float(rate_limit[1])!r}"
        config: dict[str, Any] = {"rate_limit": rate_limit}
        if mode is not None:
            config["rate_mode"] = mode
        self._request("PUT", "/config", config)

    def set_answer_delay(self, seconds: float) -> None:
        """Answer every provider call this many seconds after it arrived."""
        self._request("PUT", "/config", {"answer_delay_seconds": seconds})

    def load_scenario(self, data: dict[str, Any]) -> None:
        """Replace all orders and apply the scenario's config."""
        self._request("POST", "/scenario", data)

    def stats(self) -> dict[str, Any]:
        """Call and order counts and the rate accounting, as ``SandboxServer.stats``."""
        stats: dict[str, Any] = self._request("GET", "/stats")
        return stats

    def _request(
        self, method: str, path: str, payload: object = None, *, missing_ok: bool = False
    ) -> Any:
        data = None if payload is None else _json_bytes(payload)
        request = urllib.request.Request(
            f"{self.root_url}{CONTROL_PREFIX}{path}",
            data=data,
            method=method,
            headers={"Content-Type": _JSON, "Accept": _JSON},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                text = error.read().decode("utf-8", errors="replace")
            if error.code == 404 and missing_ok:
                return None
            try:
                reason = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                reason = text[:200]
            if error.code == 400:
                raise ValueError(reason) from None
            raise RuntimeError(
                f"sandbox control {method} {path}: HTTP {error.code}: {reason}"
            ) from None
