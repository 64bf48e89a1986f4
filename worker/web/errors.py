"""Every error the HTTP service gives, as one JSON shape (Stripe's, short):

    {"error": "one line saying what went wrong", "details": [{"field": ..., "reason": ...}, ...]}

`details` names each bad field (`field`), CSV line (`line`) or JSON row (`row`); it is empty
when there is nothing more to say. fpcancel's own errors are translated here, in one place:

    ValidationError  422  (the field it names)      UnknownJobError   404
    BulkInputError   422  (every bad line: the first 50, and `count`)
    JobStateError    409                             database away     503
    anything else    500  (logged with its traceback; the answer says nothing more)

A browser on a dashboard page (it accepts text/html, the path is not /v1/ or /healthz) gets the
same status and message as a page instead.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException

from fpcancel.bulk import BulkInputError
from fpcancel.errors import JobStateError, UnknownJobError, ValidationError

log = logging.getLogger("fpcancel.web")

API_PATHS = ("/v1/", "/healthz", "/openapi.json")


class ApiError(Exception):
    """An answer other than success: the status, one line and the details."""

    def __init__(
        self,
        status: int,
        error: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details or []
        self.headers = headers
        self.extra = extra


def error_body(error: str, details: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"error": error, "details": details, **extra}


def wants_page(request: Request) -> bool:
    """A browser on a dashboard path: show the error as a page."""
    if request.url.path.startswith(API_PATHS):
        return False
    return "text/html" in request.headers.get("accept", "")


def _answer(request: Request, exc: ApiError) -> Response:
    if wants_page(request):
        templates = getattr(request.app.state, "templates", None)
        if templates is not None:
            return HTMLResponse(
                templates.get_template("error.html").render(
                    status=exc.status, error=exc.error, details=exc.details
                ),
                status_code=exc.status,
                headers=exc.headers,
            )
    return JSONResponse(
        error_body(exc.error, exc.details, **exc.extra), status_code=exc.status, headers=exc.headers
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    """`("body", "rows", 3, "note")` → `rows[3].note`; `("query", "limit")` → `limit`."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _reason(error: dict[str, Any]) -> str:
    kind, message = error.get("type", ""), str(error.get("msg", ""))
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return "is not valid JSON"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    if kind == "model_attributes_type" or kind == "dict_type":
        return "must be a JSON object"
    return message.removeprefix("Value error, ")


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"field": _field_name(tuple(e.get("loc", ()))), "reason": _reason(e)} for e in errors]


def bulk_details(exc: BulkInputError, unit: str) -> list[dict[str, Any]]:
    return [{unit: number, "reason": reason} for number, reason in exc.problems]


def bulk_error(exc: BulkInputError, unit: str = "line") -> ApiError:
    noun = f"bad {unit}" + ("s" if exc.count != 1 else "")
    return ApiError(
        422, f"{exc.count} {noun}; nothing was enqueued", bulk_details(exc, unit), count=exc.count
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _answer(request, exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no such path: {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
        return _answer(request, ApiError(exc.status_code, message, headers=headers))

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = validation_details(list(exc.errors()))
        return _answer(request, ApiError(422, "invalid request; nothing was written", details))

    async def on_value(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ValidationError)
        error = ApiError(
            422, f"{exc.field}: {exc.reason}", [{"field": exc.field, "reason": exc.reason}]
        )
        return _answer(request, error)

    async def on_bulk(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BulkInputError)
        return _answer(request, bulk_error(exc))

    async def on_unknown(request: Request, exc: Exception) -> Response:
        return _answer(request, ApiError(404, str(exc)))

    async def on_state(request: Request, exc: Exception) -> Response:
        return _answer(request, ApiError(409, str(exc)))

    async def on_data(request: Request, exc: Exception) -> Response:
        # A value the validators should have refused first: still the input's fault.
        return _answer(request, ApiError(422, "the database refused a value; nothing was written"))

    async def on_database(request: Request, exc: Exception) -> Response:
        log.error("database unreachable or failing: %s", type(exc).__name__)
        return _answer(request, ApiError(503, "the database is unreachable; try again later"))

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _answer(request, ApiError(500, "internal error; it has been logged"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(BulkInputError, on_bulk)
    app.add_exception_handler(ValidationError, on_value)
    app.add_exception_handler(UnknownJobError, on_unknown)
    app.add_exception_handler(JobStateError, on_state)
    app.add_exception_handler(DataError, on_data)
    app.add_exception_handler(OperationalError, on_database)
    app.add_exception_handler(Exception, on_crash)
