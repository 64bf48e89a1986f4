"""The sandbox as a provider: orders and their scripts, the call log and the configuration behind
one lock, turning a parsed request into an answer."""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from fpcancel.sandbox.bodies import (
    ALREADY_PAID_BODY,
    BASE_HEADERS,
    CANCELLED_BODY,
    EXECUTION_BODY,
    NOT_CANCELLABLE_BODY,
    NOT_FOUND_BODY,
    SCRIPTED_NOTE_ERROR,
    TOO_MANY_BODY,
    UNAUTHENTICATED_BODY,
    Reply,
    data_body,
    error_body,
    html_answer,
    json_bytes,
    note_errors,
    phrase,
)
from fpcancel.sandbox.ratewindows import (
    Limiter,
    admitted_arrivals,
    check_rate_mode,
    coerce_rate_limit,
    make_limiter,
    max_calls_in_window,
)
from fpcancel.sandbox.receiver import WebhookReceiver
from fpcancel.sandbox.steps import REAL_STEP, Step, check_script, parse_step

API_PREFIX: Final = "/api/v1"
CANCEL_PREFIX: Final = API_PREFIX + "/connect/orders/cancel/"
STATUS_PREFIX: Final = API_PREFIX + "/connect/orders/status/"
ORDER_STATUSES: Final = frozenset({"SENT", "PAID", "INVOICED", "CANCELLED", "REFUNDED", "MISSING"})
UNKNOWN_ORDER_MODES: Final = ("open", "missing")
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
class ProviderRequest:
    arrival: float
    arrival_monotonic: float
    method: str
    kind: str
    order_id: str | None
    bearer: str | None
    content_type: str | None
    payload: Any


class SandboxState:
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
        self.limiter: Limiter | None = None
        self.receiver = WebhookReceiver()  # the shop's side: webhooks fpcancel delivers
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
            updates["rate_limit"] = coerce_rate_limit(config["rate_limit"])
        if "rate_mode" in config:
            updates["rate_mode"] = check_rate_mode(config["rate_mode"])
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
                self.limiter = make_limiter(self.rate_limit, self.rate_mode)

    def set_order(self, order_id: str, status: str, script: object, status_script: object) -> None:
        entry = OrderScript(
            _check_status(status),
            check_script(script, "script"),
            check_script(status_script, "status_script"),
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
            orders[_check_order_id(order_id)] = order_from_json(spec, where=f"order {order_id!r}: ")
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

    def provider_call(self, request: ProviderRequest) -> Reply:
        """Reply one provider call: auth, rate limit, scripted step, real behaviour; and log it.

        The answer leaves ``answer_delay_seconds`` after the call arrived (plus a ``slow:S``
        step's S); the order changes and the rate-limit headers are read when it does."""
        with self.lock:
            due = request.arrival_monotonic + self.answer_delay_seconds
            early = self._screen(request)
            step = REAL_STEP if early is not None else self._next_step(request)
        if early is not None:
            sleep_until(due)
            return early
        if step.action == "slow":
            due += step.seconds
        sleep_until(due)
        with self.lock:
            return self._finish(request, step)

    def _screen(self, request: ProviderRequest) -> Reply | None:
        """The answer for a call that never reaches the API (wrong URL, no token, over the
        limit), logged; None for an admitted call (counted by the limiter)."""
        if request.kind == "other":
            answer = html_answer(404)
            self._log(request, self._authorized(request.bearer), answer.status, "real")
            return answer
        if not self._authorized(request.bearer):
            answer = Reply(401, UNAUTHENTICATED_BODY, headers=list(BASE_HEADERS))
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

    def _limit_headers(self, request: ProviderRequest) -> list[tuple[str, str]]:
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

    def _too_many(self, retry_after: int, reset_epoch: int) -> Reply:
        headers = [
            *BASE_HEADERS,
            ("Retry-After", str(retry_after)),
            ("X-RateLimit-Reset", str(reset_epoch)),
        ]
        if self.limiter is not None:
            headers += [
                ("x-ratelimit-limit", str(self.limiter.calls)),
                ("x-ratelimit-remaining", "0"),
            ]
        return Reply(429, TOO_MANY_BODY, headers=headers)

    def _next_step(self, request: ProviderRequest) -> Step:
        entry = self.orders.get(request.order_id) if request.order_id is not None else None
        if entry is not None:
            script = entry.script if request.kind == "cancel" else entry.status_script
            if script:
                return parse_step(script.pop(0))
        return REAL_STEP

    def _finish(self, request: ProviderRequest, step: Step) -> Reply:
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
            answer = html_answer(step.code)
            if step.retry_after is not None:
                answer.headers.append(("Retry-After", str(step.retry_after)))
        else:
            answer = self._real(request)
            answer.headers = [*BASE_HEADERS, *limit_headers]
            if step.action == "late":
                answer.delay_seconds = step.seconds
            elif step.action == "drop":
                answer.drop = True
            elif step.action == "apply-510":
                answer.status, answer.body = 510, EXECUTION_BODY
        self._log(request, True, None if answer.drop else answer.status, step.text)
        return answer

    def _scripted_answer(self, step: Step) -> Reply:
        code = step.code
        headers = list(BASE_HEADERS)
        if code == 401:
            body = (
                UNAUTHENTICATED_BODY
                if step.message is None
                else json_bytes({"message": step.message})
            )
        elif code == 429:
            body = TOO_MANY_BODY if step.message is None else json_bytes({"message": step.message})
            retry_after = 1 if step.retry_after is None else step.retry_after
            headers += [
                ("Retry-After", str(retry_after)),
                ("X-RateLimit-Reset", str(math.floor(self.clock()) + retry_after)),
            ]
            return Reply(429, body, headers=headers)
        elif code == 510 and step.message is None:
            body = EXECUTION_BODY
        elif code == 417:
            body = error_body(
                417,
                "Client Error",
                step.message or "payloadValidationErrors",
                {"cancellationNote": [SCRIPTED_NOTE_ERROR]},
            )
        elif code == 400:
            body = error_body(
                400,
                "Conflict of Business Logic",
                step.message or "someUnknownBusinessRule",
                is_error=False,
            )
        else:
            body = error_body(code, phrase(code), step.message or "Something Went Wrong")
        if step.retry_after is not None:
            headers.append(("Retry-After", str(step.retry_after)))
        return Reply(code, body, headers=headers)

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

    def _real(self, request: ProviderRequest) -> Reply:
        if request.kind == "status":
            entry = self._lookup(request.order_id)
            if entry is None:
                return Reply(404, NOT_FOUND_BODY)
            data = {
                "uuid": request.order_id,
                "status": entry.status,
                "orderAmount": 40,
                "refundedAmount": 0,
            }
            return Reply(200, data_body(200, "OK", "Order Status Retrieved Successfully", data))
        errors = note_errors(request.content_type, request.payload)
        if not errors and len(request.payload["cancellationNote"]) > self.max_note_length:
            errors = [
                "The cancellation note field must not be greater than "
                f"{self.max_note_length} characters."
            ]
        if errors:
            return Reply(
                417,
                error_body(
                    417, "Client Error", "payloadValidationErrors", {"cancellationNote": errors}
                ),
            )
        entry = self._lookup(request.order_id)
        if entry is None:
            return Reply(404, NOT_FOUND_BODY)
        if entry.status == "PAID":
            return Reply(400, ALREADY_PAID_BODY)
        if entry.status in ("SENT", "INVOICED"):
            entry.status = "CANCELLED"
            return Reply(202, CANCELLED_BODY)
        return Reply(400, NOT_CANCELLABLE_BODY)

    def _log(
        self,
        request: ProviderRequest,
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


def order_from_json(spec: object, where: str = "") -> OrderScript:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}an order must be an object with status, script, status_script")
    unknown = set(spec) - {"status", "script", "status_script"}
    if unknown:
        raise ValueError(f"{where}unknown order keys: {sorted(unknown)}")
    try:
        return OrderScript(
            _check_status(spec.get("status", "SENT")),
            check_script(spec.get("script"), "script"),
            check_script(spec.get("status_script"), "status_script"),
        )
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def sleep_until(due_monotonic: float) -> None:
    wait = due_monotonic - time.monotonic()
    if wait > 0:
        time.sleep(wait)
