"""Outcome events (SPEC.md, "Outcome events"): the payload a shop receives, and how events are
read. `fpcancel.jobstore` writes an event in the same transaction that makes a job terminal;
`fpcancel.outbox` keeps their delivery state.

    {"id": 17, "type": "cancel_job.finished", "timestamp": "2026-11-28T10:00:00Z",
     "data": {"job_id", "order_uuid", "status", "source", "lane", "attempts",
              "last_http_status", "last_message", "created_at", "finished_at"}}
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fpcancel.models.tables import CancelEvent, WebhookDelivery
from fpcancel.statuses import EVENT_FINISHED
from fpcancel.times import iso
from fpcancel.webhooks import PAYLOAD_DATA_KEYS

# The job columns an event's `data` is made of (`job_id` is the job's `id`).
JOB_COLUMNS = tuple("id" if key == "job_id" else key for key in PAYLOAD_DATA_KEYS)
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


def finished_payload(event_id: int, created_at: datetime, job: Mapping[Any, Any]) -> dict[str, Any]:
    """The `cancel_job.finished` payload of event `event_id` for a job that just ended."""
    data = {key: job["id" if key == "job_id" else key] for key in PAYLOAD_DATA_KEYS}
    for key in ("created_at", "finished_at"):
        value = data[key]
        data[key] = iso(value) if isinstance(value, datetime) else value
    return {"id": event_id, "type": EVENT_FINISHED, "timestamp": iso(created_at), "data": data}


def read_events(
    session: Session, after: int = 0, limit: int = DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """Payloads of the events with an id above `after`, oldest first, at most `limit`."""
    rows = session.scalars(
        select(CancelEvent.payload)
        .where(CancelEvent.id > after)
        .order_by(CancelEvent.id)
        .limit(limit)
    )
    return [dict(payload) for payload in rows]


def job_events(session: Session, job_id: int) -> list[dict[str, Any]]:
    """A job's events, oldest first, each with its delivery state and every delivery try."""
    events = list(
        session.scalars(
            select(CancelEvent).where(CancelEvent.job_id == job_id).order_by(CancelEvent.id)
        )
    )
    tries: dict[int, list[dict[str, Any]]] = {event.id: [] for event in events}
    if events:
        for row in session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_(list(tries)))
            .order_by(WebhookDelivery.event_id, WebhookDelivery.attempt)
        ):
            tries[row.event_id].append(delivery_dict(row))
    return [
        {
            "id": event.id,
            "type": event.type,
            "created_at": iso(event.created_at),
            "delivery": event.delivery,
            "delivery_attempts": event.delivery_attempts,
            "next_delivery_at": iso(event.next_delivery_at),
            "delivered_at": iso(event.delivered_at),
            "payload": event.payload,
            "deliveries": tries[event.id],
        }
        for event in events
    ]


def delivery_dict(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "attempt": row.attempt,
        "started_at": iso(row.started_at),
        "duration_ms": row.duration_ms,
        "http_status": row.http_status,
        "error": row.error,
        "counted": row.counted,
    }
