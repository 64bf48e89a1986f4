"""The HTTP layer every request passes, as one plain ASGI middleware (cheap on the hot path):

- body limits: a body over its limit is refused with 413, by its Content-Length before any of it
  is read, or as soon as the bytes read pass the limit (a chunked body has no length);
- security headers on every answer: a Content-Security-Policy that allows no script at all
  (the dashboard needs none), no framing, no sniffing, no referrer, and no caching of pages;
- one log line per request: method, path, status, milliseconds and the API key's NAME (never
  the key; `-` when there was none).

Limits (README.md, "HTTP service"): 64 KiB for any body, except the bulk endpoint and the
dashboard's upload: 64 MiB of CSV (about a million lines), 16 MiB of JSON rows (checked by the
route, which knows the content type).
"""

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fpcancel.web.errors import ApiError, error_body

log = logging.getLogger("fpcancel.web")

KIB = 1024
MIB = 1024 * KIB
BODY_MAX_BYTES = 64 * KIB
BULK_MAX_BYTES = 64 * MIB
JSON_BULK_MAX_BYTES = 16 * MIB
BULK_PATHS = ("/v1/cancellations/bulk", "/upload")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
NO_STORE = (b"cache-control", b"no-store")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def body_limit_bytes(path: str) -> int:
    return BULK_MAX_BYTES if path in BULK_PATHS else BODY_MAX_BYTES


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the body is larger than {limit // KIB:,} KiB, the limit here",
        [{"field": "body", "reason": f"at most {limit:,} bytes"}],
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HttpLayer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status = [500]
        cache = not path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if cache:
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        limit = body_limit_bytes(path)
        length = _content_length(scope)
        try:
            if length is not None and length > limit:
                await _refuse(send_with_headers, too_large(limit))
                return
            seen = [0]

            async def counted_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        raise too_large(limit)
                return message

            await self.app(scope, counted_receive, send_with_headers)
        finally:
            key_name = scope.get("state", {}).get("key_name") or "-"
            log.info(
                "%s %s %d %.1fms key=%s",
                scope["method"],
                path,
                status[0],
                (time.perf_counter() - started) * 1000,
                key_name,
            )


async def _refuse(send: Send, error: ApiError) -> None:
    body = json.dumps(error_body(error.error, error.details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
