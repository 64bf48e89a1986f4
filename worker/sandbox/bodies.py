"""What the sandbox sends: the provider's documented JSON bodies, nginx's HTML error pages, and
Laravel's validation messages for a cancellation note."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

SERVER_HEADER: Final = "nginx/1.24.0 (Ubuntu)"
# Bigger bodies are no cancellation note; refusing them keeps a runaway client from eating memory.
MAX_BODY_BYTES: Final = 1 << 20
JSON: Final = "application/json"


@dataclass
class Reply:
    """What the handler sends: status, body, headers; or nothing, after a delay, for drop/late."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    delay_seconds: float = 0.0


def json_bytes(data: object) -> bytes:
    # Laravel sends compact JSON; so does the sandbox, which also keeps bodies small.
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def data_body(code: int, status_message: str, message: str, data: Any = None) -> bytes:
    return json_bytes(
        {
            "status_code": code,
            "status_message": status_message,
            "message": message,
            "is_data": data is not None,
            "data": data,
        }
    )


def error_body(
    code: int, status_message: str, message: str, errors: Any = None, *, is_error: bool = True
) -> bytes:
    return json_bytes(
        {
            "status_code": code,
            "status_message": status_message,
            "message": message,
            "is_error": is_error,
            "errors": errors,
        }
    )


CANCELLED_BODY: Final = data_body(202, "OK", "cancelledOrderSuccessfully")
NOT_FOUND_BODY: Final = data_body(404, "Not Found", "orderNotFound")
# The documented 400 says is_error false: business-rule refusals are not errors to Front Payment.
ALREADY_PAID_BODY: Final = error_body(
    400, "Conflict of Business Logic", "orderStatusAlreadyPaid", is_error=False
)
NOT_CANCELLABLE_BODY: Final = error_body(
    400, "Conflict of Business Logic", "orderStatusNotCancellable", is_error=False
)
# Verbatim from the docs, "Array" included: a client must cope with whatever `errors` holds.
EXECUTION_BODY: Final = error_body(
    510, "Execution Exception Occurred", "Something Went Wrong", "Array"
)
# What a scripted bare `417` step says is wrong: a refusal the real validation would not make.
SCRIPTED_NOTE_ERROR: Final = "The cancellation note field format is invalid."
UNAUTHENTICATED_BODY: Final = json_bytes({"message": "Unauthenticated."})
TOO_MANY_BODY: Final = json_bytes({"message": "Too Many Attempts."})
BASE_HEADERS: Final = (("cache-control", "no-cache, private"),)


def phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _html_page(code: int) -> bytes:
    """nginx's own error page, which is what a proxy failure or a wrong URL returns."""
    title = f"{code} {phrase(code)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        f"<hr><center>{SERVER_HEADER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode("ascii")


def html_answer(code: int) -> Reply:
    return Reply(code, _html_page(code), content_type="text/html")


def note_errors(content_type: str | None, payload: Any) -> list[str]:
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
