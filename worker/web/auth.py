"""Who is asking: bearer API keys with scopes, and the dashboard's signed session cookie.

API: `Authorization: Bearer <key>`. No key, an unknown or a revoked one → 401; a key without the
scope the route needs → 403. The key's name goes into the request's log line.

Dashboard: signing in with an `ops` key sets `fpcancel_session`, HttpOnly, SameSite=Strict (and
Secure when the request came over https), holding `key id.expiry.nonce.signature`, signed with
HMAC-SHA256 under the server's secret (FPCANCEL_WEB_SECRET, or a random one per process). Each
page checks the signature, the expiry and that the key is still live and `ops`: revoking the key
ends its sessions. Every form that changes something carries a CSRF token derived from the
session (HMAC of it under the secret) and is refused without it; the sign-in form's token is
bound the same way to a short-lived `fpcancel_signin` cookie.
"""

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from fpcancel.statuses import ApiScope
from fpcancel.web.errors import ApiError
from fpcancel.web.keys import KeyInfo, authenticate, get_key, touch
from fpcancel.web.services import WebServices

SESSION_COOKIE = "fpcancel_session"
SIGNIN_COOKIE = "fpcancel_signin"
SESSION_SECONDS = 12 * 3600
SIGNIN_SECONDS = 600
TOUCH_EVERY_SECONDS = 60.0
# A key found live is believed for this long without asking the database again: a busy shop's
# requests do not each cost a lookup, and a revoked key is refused within this time.
KEY_CACHE_SECONDS = 1.0
CSRF_FIELD = "csrf_token"


def services_of(request: Request) -> WebServices:
    services: WebServices = request.app.state.services
    return services


class KeyChecker:
    """Finds the key a request presents. A live key is remembered (by its hash) for
    KEY_CACHE_SECONDS; unknown keys are never remembered, so a new key works at once.
    `last_used_at` is written at most once a minute per key."""

    def __init__(self, services: WebServices, cache_seconds: float = KEY_CACHE_SECONDS) -> None:
        self._services = services
        self._cache_seconds = cache_seconds
        self._touched: dict[int, float] = {}
        self._live: dict[str, tuple[KeyInfo, float]] = {}
        self._lock = threading.Lock()

    def find(self, presented: str) -> KeyInfo | None:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._live.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        with self._services.sessions() as session:
            info = authenticate(session, presented)
        with self._lock:
            if info is None:
                self._live.pop(digest, None)
            else:
                if len(self._live) > 10_000:  # keys come and go; forget the expired ones
                    self._live = {k: v for k, v in self._live.items() if v[1] > now}
                self._live[digest] = (info, now + self._cache_seconds)
        if info is not None:
            self._maybe_touch(info.id)
        return info

    def _maybe_touch(self, key_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key_id, -TOUCH_EVERY_SECONDS) < TOUCH_EVERY_SECONDS:
                return
            self._touched[key_id] = now
        with self._services.sessions.begin() as session:
            touch(session, key_id, self._services.clock())


def authorize(request: Request, needed: ApiScope) -> KeyInfo:
    """The request's key, which must allow `needed` (401 / 403 otherwise). Blocking: call it
    from a sync route or a thread."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header:
        raise ApiError(
            401,
            "no API key: send Authorization: Bearer <key> (fpcancel keys create)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(
            401,
            "the Authorization header must be Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    checker: KeyChecker = request.app.state.key_checker
    info = checker.find(presented.strip())
    if info is None:
        raise ApiError(
            401,
            "unknown or revoked API key",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    request.state.key_name = info.name
    if not info.allows(needed):
        raise ApiError(
            403,
            f"this key's scope is {info.scope}; this needs {needed.value} (or ops)",
            [{"field": "scope", "reason": f"needs {needed.value}"}],
        )
    return info


def require(needed: ApiScope) -> Callable[[Request], KeyInfo]:
    """A route dependency: the request's key, which must allow `needed`."""

    def check(request: Request) -> KeyInfo:
        return authorize(request, needed)

    return check


# -- the dashboard's session ---------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _sign(secret: bytes, purpose: str, text: str) -> str:
    return _b64(hmac.new(secret, f"{purpose}|{text}".encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class DashboardUser:
    key: KeyInfo
    session: str  # the signed part of the cookie, which the CSRF token is derived from

    def csrf_token(self, secret: bytes) -> str:
        return _sign(secret, "csrf", self.session)


def session_cookie(secret: bytes, key_id: int, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
    body = f"{key_id}.{expires}.{secrets.token_urlsafe(12)}"
    return f"{body}.{_sign(secret, 'session', body)}"


def read_session(secret: bytes, cookie: str, now: float | None = None) -> tuple[int, str] | None:
    """(key id, signed part) of a cookie that is ours and unexpired, else None."""
    body, _, signature = cookie.rpartition(".")
    parts = body.split(".")
    if len(parts) != 3 or not hmac.compare_digest(signature, _sign(secret, "session", body)):
        return None
    key_id, expires, _ = parts
    if not (key_id.isdigit() and expires.isdigit()):
        return None
    if int(expires) < (now if now is not None else time.time()):
        return None
    return int(key_id), body


class SignInRequired(Exception):
    """No live ops session: the dashboard sends the browser to /signin."""


def dashboard_user(request: Request) -> DashboardUser:
    """A route dependency for dashboard pages: the signed-in ops key, or `SignInRequired`."""
    services = services_of(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    found = read_session(services.secret, cookie) if cookie else None
    if found is None:
        raise SignInRequired()
    key_id, body = found
    with services.sessions() as session:
        key = get_key(session, key_id)
    if key is None or key.revoked_at is not None or not key.allows(ApiScope.OPS):
        raise SignInRequired()
    request.state.key_name = key.name
    return DashboardUser(key, body)


def check_csrf(request: Request, user: DashboardUser, token: str | None) -> None:
    """403 unless `token` is this session's CSRF token."""
    expected = user.csrf_token(services_of(request).secret)
    if not token or not hmac.compare_digest(token, expected):
        raise ApiError(
            403,
            "this form's CSRF token is missing or wrong; reload the page and try again",
            [{"field": CSRF_FIELD, "reason": "missing or wrong"}],
        )


def signin_nonce() -> str:
    return secrets.token_urlsafe(16)


def signin_token(secret: bytes, nonce: str) -> str:
    return _sign(secret, "signin", nonce)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"
