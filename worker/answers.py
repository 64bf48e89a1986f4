"""What a call to the provider returned, as fpcancel's own types; no I/O here.

    Answer                      the provider answered: status, parsed JSON or raw text, headers
    ProviderError               no usable answer; `message` says why (never the token)
    ├── RequestNotBuilt         the request could not even be built (a bad header or URL): a
    │                           local fault, nothing left, never the order's
    └── TransportError          no answer came back
        ├── ConnectFailed       the request never left (refused, DNS, connect timeout)
        └── AnswerLost          the request may have arrived (read timeout, dropped connection)

`fpcancel.provider` is the one place that turns `requests` into these; the classifier
(`fpcancel.classify`) reads them.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Answer:
    """What the provider answered to one call (secrets already redacted)."""

    status: int
    body: Any  # the parsed JSON, or None when the body is not JSON
    text: str  # the raw body, trimmed
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names, the ones kept
    duration_ms: int = 0
    left_at: float | None = None  # perf_counter() when the request's bytes were written

    @property
    def message(self) -> str | None:
        """The API's `message` field, when the body is a JSON object that has one."""
        if isinstance(self.body, dict):
            value = self.body.get("message")
            return value if isinstance(value, str) else None
        return None


class ProviderError(Exception):
    """Base of what a provider call raises instead of answering."""

    def __init__(self, message: str, duration_ms: int = 0, left_at: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.duration_ms = duration_ms
        self.left_at = left_at  # perf_counter() when the request left, if it did


class RequestNotBuilt(ProviderError):
    """The request could not be built (a header or URL the HTTP library refuses): nothing left."""


class TransportError(ProviderError):
    """No HTTP answer came back."""

    sent = True


class ConnectFailed(TransportError):
    """The request never reached the provider."""

    sent = False


class AnswerLost(TransportError):
    """The request may have reached the provider, but its answer did not reach us."""


CallResult = Answer | ProviderError
