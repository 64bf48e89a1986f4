"""The sandbox as the shop: a webhook receiver at `POST /_sandbox/webhook` that checks each
delivery's Standard Webhooks signature and keeps what arrived, so tests and the demo can show the
shop being told. It can misbehave on purpose: fail its next N deliveries, answer any status,
answer late.

    PUT /_sandbox/receiver  {"secret": "whsec_...", "fail_next": 2, "status": 204,
                             "delay_seconds": 0}
    GET /_sandbox/webhooks  {"received": [{"id", "timestamp", "verified", "status", "payload",
                             "time", "body", "signature"}, ...]}      DELETE clears them
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from fpcancel.sandbox.bodies import Reply, json_bytes
from fpcancel.webhooks import secret_key, signature

# Standard Webhooks' tolerance for a timestamp away from the receiver's clock.
TOLERANCE_SECONDS = 300
RECEIVER_KEYS = ("secret", "fail_next", "status", "delay_seconds")


class WebhookReceiver:
    """What a shop's webhook endpoint does, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: bytes | None = None
        self.fail_next = 0
        self.status = 204
        self.delay_seconds = 0.0
        self._received: list[dict[str, Any]] = []

    def configure(self, config: Mapping[str, Any]) -> None:
        """Apply `secret` (`whsec_...`, or null to accept unsigned), `fail_next`, `status`,
        `delay_seconds`; all checked before any changes."""
        unknown = set(config) - set(RECEIVER_KEYS)
        if unknown:
            raise ValueError(f"unknown receiver keys: {sorted(unknown)}")
        updates: dict[str, Any] = {}
        if "secret" in config:
            secret = config["secret"]
            if secret is not None and not isinstance(secret, str):
                raise ValueError("secret must be a whsec_ string or null")
            updates["_key"] = None if secret is None else secret_key(secret)
        for name, low, high in (("fail_next", 0, 10**6), ("status", 100, 599)):
            if name in config:
                value = config[name]
                if (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or not low <= value <= high
                ):
                    raise ValueError(f"{name} must be a whole number in {low}-{high}")
                updates[name] = value
        if "delay_seconds" in config:
            delay = config["delay_seconds"]
            if (
                not isinstance(delay, int | float)
                or isinstance(delay, bool)
                or not 0 <= delay <= 60
            ):
                raise ValueError("delay_seconds must be 0-60")
            updates["delay_seconds"] = float(delay)
        with self._lock:
            for name, value in updates.items():
                setattr(self, name, value)

    def receive(self, headers: Mapping[str, str], raw: bytes) -> Reply:
        """One delivery: check its signature, keep it, answer as configured."""
        arrived = time.time()
        lowered = {name.lower(): value for name, value in headers.items()}
        message_id = lowered.get("webhook-id", "")
        stamp = lowered.get("webhook-timestamp", "")
        with self._lock:
            verified = self._verified(message_id, stamp, lowered.get("webhook-signature", ""), raw)
            if self.fail_next > 0:
                self.fail_next -= 1
                status = 503
            else:
                status = self.status
            delay = self.delay_seconds
            try:
                payload: Any = json.loads(raw.decode("utf-8"))
            except ValueError:
                payload = None
            self._received.append(
                {
                    "id": message_id,
                    "timestamp": stamp,
                    "verified": verified,
                    "status": status,
                    "payload": payload,
                    "time": arrived,
                    # As they came, so a test can check them with another implementation.
                    "body": raw.decode("utf-8", errors="replace"),
                    "signature": lowered.get("webhook-signature", ""),
                }
            )
        return Reply(status, json_bytes({"ok": 200 <= status < 300}), delay_seconds=delay)

    def _verified(self, message_id: str, stamp: str, signatures: str, raw: bytes) -> bool:
        if self._key is None:
            return False
        try:
            timestamp = int(stamp)
        except ValueError:
            return False
        if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
            return False
        expected = signature(self._key, message_id, timestamp, raw)
        return any(hmac.compare_digest(expected, given) for given in signatures.split())

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._received]

    def clear(self) -> int:
        with self._lock:
            count = len(self._received)
            self._received = []
            return count
