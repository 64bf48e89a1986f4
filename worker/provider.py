"""Front Payment's order API over `requests`: the one place HTTP turns into fpcancel's types.

A call returns an `Answer` or raises a `ProviderError` (the tree is drawn in `fpcancel.answers`):
`RequestNotBuilt` when `requests` refuses to build it, `ConnectFailed` when it never left,
`AnswerLost` when it may have arrived. Nothing here raises a `requests` exception, and nothing
here puts the token in a message. Every answer is redacted (`fpcancel.redaction`) before it
leaves this module: a proxy page that echoes the request's headers never carries the token into a
table, a log or a terminal. At most
`BODY_READ_BYTES` of a body are read, so a hostile or broken answer cannot exhaust memory.
"""

import json
import threading
from collections.abc import Mapping
from dataclasses import replace
from time import perf_counter
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from fpcancel import __version__
from fpcancel.answers import (
    Answer,
    AnswerLost,
    ConnectFailed,
    RequestNotBuilt,
    TransportError,
)
from fpcancel.redaction import Redactor
from fpcancel.validation import clean_order_uuid

USER_AGENT = f"fpcancel/{__version__} (+https://github.com/fpcancel/fpcancel)"
BODY_KEEP_CHARS = 2000
# The API's answers are a few hundred bytes; past this the rest is not read (and not JSON).
BODY_READ_BYTES = 64 * 1024
# The headers decisions read; everything else stays behind.
KEPT_HEADERS = (
    "content-type",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


# When this thread's request left: set as the request is handed over, and again each time its
# bytes are written to the socket, so whatever held the request up on its way out (a new
# connection's handshake, a garbage collection, a thread that waited for the interpreter) shows
# as lateness: the limiter re-stamps a late call.
_LEFT = threading.local()


class _TimedHTTPConnection(HTTPConnection):
    def send(self, data: Any) -> None:
        super().send(data)
        _LEFT.at = perf_counter()


class _TimedHTTPSConnection(HTTPSConnection):
    def send(self, data: Any) -> None:
        super().send(data)
        _LEFT.at = perf_counter()


class _TimedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


class _TimedAdapter(HTTPAdapter):
    """`requests`' adapter, with connections that note when a request leaves after connecting."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}


def _transport_error(exc: requests.RequestException, duration_ms: int) -> TransportError:
    """Map a `requests` exception to ours, by whether the request can have left."""
    if isinstance(exc, requests.ConnectTimeout):
        return ConnectFailed("connect timeout", duration_ms)
    if isinstance(exc, requests.ReadTimeout):
        return AnswerLost("read timeout: no answer in time", duration_ms)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, NewConnectionError | NameResolutionError | ConnectTimeoutError):
            return ConnectFailed(f"cannot connect: {type(cause).__name__}", duration_ms)
        cause = cause.__context__ or cause.__cause__ or _first_arg_exception(cause)
    return AnswerLost(f"connection failed: {type(exc).__name__}: {_innermost(exc)}", duration_ms)


def _first_arg_exception(exc: BaseException) -> BaseException | None:
    # urllib3 wraps the cause in MaxRetryError.reason / ProtocolError.args, not __cause__.
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    for arg in exc.args:
        if isinstance(arg, BaseException):
            return arg
    return None


def _innermost(exc: BaseException) -> str:
    seen: BaseException = exc
    nxt = _first_arg_exception(seen)
    while nxt is not None and nxt is not seen:
        seen = nxt
        nxt = _first_arg_exception(seen)
    return type(seen).__name__


class FrontPaymentClient:
    """Calls Front Payment's cancel and status endpoints.

    One `requests.Session` per thread (sessions are not thread-safe), each with a connection pool
    of `pool_size`. Pass `session_factory` to hand it a fake transport in tests.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 8,
        session_factory: Any = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._auth_header = f"Bearer {token}"
        self._redactor = redactor if redactor is not None else Redactor([token])
        self._timeout = (connect_timeout, read_timeout)
        self._pool_size = pool_size
        self._session_factory = session_factory or self._new_session
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"FrontPaymentClient({self._base_url!r}, token=***)"

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = _TimedAdapter(pool_connections=1, pool_maxsize=self._pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.trust_env = False  # no proxy or netrc from the environment changes where calls go
        return session

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            self._local.session = session
        return session

    def cancel_order(self, order_uuid: str, note: str) -> Answer:
        """POST /connect/orders/cancel/{id} with `{"cancellationNote": note}`."""
        return self._call("POST", "cancel", order_uuid, {"cancellationNote": note})

    def order_status(self, order_uuid: str) -> Answer:
        """GET /connect/orders/status/{id}."""
        return self._call("GET", "status", order_uuid, None)

    def _call(self, method: str, action: str, order_uuid: str, payload: Any) -> Answer:
        order = quote(clean_order_uuid(order_uuid), safe="")
        url = f"{self._base_url}/connect/orders/{action}/{order}"
        headers = {
            "Authorization": self._auth_header,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        data = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(payload).encode()
        session = self._session()
        try:
            prepared = session.prepare_request(
                requests.Request(method, url, data=data, headers=headers)
            )
        except (requests.RequestException, ValueError) as exc:
            # Never the exception's text: it may quote the header it refused.
            raise RequestNotBuilt(f"request not built: {type(exc).__name__}") from None
        started = _LEFT.at = perf_counter()
        try:
            response = session.send(
                prepared, timeout=self._timeout, allow_redirects=False, stream=True
            )
            try:
                raw = _read_capped(response)
            finally:
                response.close()
        except requests.RequestException as exc:
            error = _transport_error(exc, _ms_since(started))
            error.left_at = _LEFT.at if error.sent else None
            raise error from None
        answer = parse_answer(
            response.status_code, raw, response.headers, _ms_since(started), self._redactor
        )
        return replace(answer, left_at=_LEFT.at)

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


def _read_capped(response: requests.Response) -> bytes:
    """The body, or its first `BODY_READ_BYTES` when it is longer (the rest is left unread and
    the connection closed)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= BODY_READ_BYTES:
            break
    return b"".join(chunks)[:BODY_READ_BYTES]


def parse_answer(
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    duration_ms: int = 0,
    redactor: Redactor | None = None,
) -> Answer:
    """An `Answer` from what came over the wire, secrets redacted; a body that is not JSON (or
    was cut at `BODY_READ_BYTES`) stays text."""
    redact = redactor or Redactor()
    text = raw.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text) if text.strip() else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested past the parser's depth
        body = None
    lowered = {name.lower(): value for name, value in headers.items()}
    kept = {name: redact.text(lowered[name]) for name in KEPT_HEADERS if name in lowered}
    return Answer(status, redact.data(body), redact.text(text)[:BODY_KEEP_CHARS], kept, duration_ms)


def _ms_since(started: float) -> int:
    return int((perf_counter() - started) * 1000)
