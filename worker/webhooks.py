"""Signed webhooks as the Standard Webhooks specification says, and what a delivery try means for
its event; pure functions, no I/O.

A delivery is a POST of the event's payload (compact JSON) with three headers:

    webhook-id         the event id, the same on every try (receivers dedupe by it)
    webhook-timestamp  Unix seconds of this try
    webhook-signature  "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

The key is the base64-decoded part of FPCANCEL_WEBHOOK_SECRET (`whsec_<base64>`). Any 2xx is
delivered; anything else, or no answer within the timeout, is tried again with full-jitter
backoff until FPCANCEL_WEBHOOK_MAX_ATTEMPTS tries have counted, then the event's delivery is
`failed`. While the receiver as a whole is away (tries of several events in a row fail), tries
are probes that do not count: an outage of any length fails no event.
"""

import base64
import binascii
import hashlib
import hmac
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fpcancel.backoff import retry_delay_seconds
from fpcancel.statuses import DeliveryStatus

SECRET_PREFIX = "whsec_"
TIMEOUT_SECONDS = 10.0
# Tries of this many different events failing in a row mean the receiver, not an event, is at
# fault: deliveries pause and one probe goes every PROBE_SECONDS (or the backoff cap, if shorter)
# until one is answered with a 2xx.
AWAY_AFTER_FAILURES = 3
PROBE_SECONDS = 30.0


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError (never quoting it) when malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX} followed by base64")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX} is not base64") from None
    if len(key) < 16:
        raise ValueError("the key is shorter than 16 bytes (the spec asks for 24 to 64)")
    return key


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The bytes sent and signed: compact JSON in the SPEC's key order."""
    data = payload.get("data", {})
    ordered = {
        "id": payload.get("id"),
        "type": payload.get("type"),
        "timestamp": payload.get("timestamp"),
        "data": {key: data[key] for key in PAYLOAD_DATA_KEYS if key in data},
    }
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, event_id: int, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": str(event_id),
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, str(event_id), timestamp, body),
    }


# The job's fields in an event's `data` (SPEC.md, "Outcome events"), in this order.
PAYLOAD_DATA_KEYS = (
    "job_id",
    "order_uuid",
    "status",
    "source",
    "lane",
    "attempts",
    "last_http_status",
    "last_message",
    "created_at",
    "finished_at",
)


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float

    @property
    def probe_seconds(self) -> float:
        """How often a probe goes while the receiver is away: PROBE_SECONDS, or the backoff cap
        when that is shorter (never less than 0.2 s)."""
        return max(0.2, min(PROBE_SECONDS, self.retry_max_seconds))


@dataclass(frozen=True)
class TryOutcome:
    """What one try's result means for its event."""

    delivery: DeliveryStatus
    counted: bool
    next_delivery_at: datetime | None


def delivered(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def after_try(
    *,
    status: int | None,
    attempts_before: int,
    receiver_away: bool,
    policy: DeliveryPolicy,
    now: datetime,
    rng: Callable[[], float] | None = None,
) -> TryOutcome:
    """The event after a try answered `status` (None: no answer): delivered on a 2xx; else tried
    again after a full-jitter delay, or `failed` once the counted tries ran out. A probe while
    the receiver is away counts nothing and waits PROBE_SECONDS."""
    if delivered(status):
        return TryOutcome(DeliveryStatus.DELIVERED, True, None)
    if receiver_away:
        probe = timedelta(seconds=policy.probe_seconds)
        return TryOutcome(DeliveryStatus.WAITING, False, now + probe)
    attempts = attempts_before + 1
    if attempts >= policy.max_attempts:
        return TryOutcome(DeliveryStatus.FAILED, True, None)
    delay = retry_delay_seconds(
        attempts, policy.retry_base_seconds, policy.retry_max_seconds, rng=rng or random.random
    )
    return TryOutcome(DeliveryStatus.WAITING, True, now + timedelta(seconds=delay))


def receiver_away(failures_in_a_row: int) -> bool:
    """Several different events' tries failed with nothing delivered between: the receiver."""
    return failures_in_a_row >= AWAY_AFTER_FAILURES
