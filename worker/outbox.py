"""The webhook outbox: every write to an event's delivery state and to `webhook_deliveries`.

    waiting ──claim_due──▶ (held by a deliverer) ──record_tries──▶ delivered
       ▲                          │                            └─▶ waiting (later) | failed
       └────── release ───────────┘ (not tried: the receiver went away)
    delivered | failed | waiting ──redeliver──▶ waiting (due now, its tries counted afresh)

Events wait in the table, however many (a 100,000-event backlog costs no memory and nothing in
Redis); deliverers take small batches with a lease, `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
two never hold the same event, and a deliverer that dies only delays its batch by the lease.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from fpcancel.errors import UnknownEventError
from fpcancel.models.tables import CancelEvent, WebhookDelivery
from fpcancel.statuses import DeliveryStatus
from fpcancel.webhooks import TryOutcome

WAITING = DeliveryStatus.WAITING.value
ERROR_KEEP_CHARS = 500


@dataclass(frozen=True)
class HeldEvent:
    """An event a deliverer holds: what to send and how many tries it has used."""

    id: int
    payload: dict[str, Any]
    attempts: int  # counted tries in this round (FPCANCEL_WEBHOOK_MAX_ATTEMPTS caps them)
    next_try_number: int  # the number its next `webhook_deliveries` row gets


@dataclass(frozen=True)
class TryRecord:
    """One try as it happened, and what it means for the event."""

    event: HeldEvent
    started_at: datetime
    duration_ms: int
    http_status: int | None
    error: str | None
    outcome: TryOutcome


def claim_due(
    session: Session, now: datetime, limit: int, lease_seconds: float, token: str
) -> list[HeldEvent]:
    """Hold up to `limit` due events (oldest first) for `lease_seconds`: one UPDATE of the
    rows a sub-select picks (`FOR UPDATE SKIP LOCKED` on PostgreSQL)."""
    due = (
        select(CancelEvent.id)
        .where(
            CancelEvent.delivery == WAITING,
            CancelEvent.next_delivery_at <= now,
            CancelEvent.claimed_until.is_(None) | (CancelEvent.claimed_until < now),
        )
        .order_by(CancelEvent.next_delivery_at, CancelEvent.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    rows = session.execute(
        update(CancelEvent)
        .where(CancelEvent.id.in_(due.scalar_subquery()), CancelEvent.delivery == WAITING)
        .values(claim_token=token, claimed_until=now + timedelta(seconds=lease_seconds))
        .returning(CancelEvent.id, CancelEvent.payload, CancelEvent.delivery_attempts)
        .execution_options(synchronize_session=False)
    ).all()
    if not rows:
        return []
    numbers = dict(
        session.execute(
            select(WebhookDelivery.event_id, func.max(WebhookDelivery.attempt))
            .where(WebhookDelivery.event_id.in_([row.id for row in rows]))
            .group_by(WebhookDelivery.event_id)
        ).all()
    )
    return sorted(
        (
            HeldEvent(
                row.id, dict(row.payload), row.delivery_attempts, (numbers.get(row.id) or 0) + 1
            )
            for row in rows
        ),
        key=lambda event: event.id,
    )


def record_tries(session: Session, tries: Sequence[TryRecord], token: str) -> None:
    """Each try's row, and its event's new delivery state (only while still held)."""
    if not tries:
        return
    session.execute(
        insert(WebhookDelivery),
        [
            {
                "event_id": t.event.id,
                "attempt": t.event.next_try_number,
                "started_at": t.started_at,
                "duration_ms": t.duration_ms,
                "http_status": t.http_status,
                "error": None if t.error is None else t.error[:ERROR_KEEP_CHARS],
                "counted": t.outcome.counted,
            }
            for t in tries
        ],
    )
    events = cast(Table, CancelEvent.__table__)
    session.execute(
        update(events)
        .where(events.c.id == bindparam("event_id"), events.c.claim_token == token)
        .values(
            delivery=bindparam("delivery"),
            delivery_attempts=bindparam("attempts"),
            next_delivery_at=bindparam("due"),
            delivered_at=bindparam("done"),
            claim_token=None,
            claimed_until=None,
        ),
        [
            {
                "event_id": t.event.id,
                "delivery": t.outcome.delivery.value,
                "attempts": t.event.attempts + (1 if t.outcome.counted else 0),
                "due": t.outcome.next_delivery_at,
                "done": t.started_at + timedelta(milliseconds=t.duration_ms)
                if t.outcome.delivery is DeliveryStatus.DELIVERED
                else None,
            }
            for t in tries
        ],
    )


def release(session: Session, events: Iterable[HeldEvent], token: str, due: datetime) -> None:
    """Events held but not tried go back to wait until `due`, nothing spent."""
    ids = [event.id for event in events]
    if ids:
        session.execute(
            update(CancelEvent)
            .where(CancelEvent.id.in_(ids), CancelEvent.claim_token == token)
            .values(next_delivery_at=due, claim_token=None, claimed_until=None)
        )


def redeliver(
    session: Session, now: datetime, event_ids: Sequence[int] = (), *, failed: bool = False
) -> list[int]:
    """`events redeliver`: the given events (all must exist: `UnknownEventError` names every
    one that does not), or every failed one, wait again, due now, with their tries counted
    afresh; their earlier tries stay. Returns the ids."""
    if event_ids:
        found = set(session.scalars(select(CancelEvent.id).where(CancelEvent.id.in_(event_ids))))
        unknown = [i for i in event_ids if i not in found]
        if unknown:
            raise UnknownEventError("; ".join(f"event {i}: no such event" for i in unknown))
        where: Any = CancelEvent.id.in_(event_ids)
    elif failed:
        where = CancelEvent.delivery == DeliveryStatus.FAILED.value
    else:
        return []
    changed = session.scalars(
        update(CancelEvent)
        .where(where)
        .values(
            delivery=WAITING,
            delivery_attempts=0,
            next_delivery_at=now,
            delivered_at=None,
            claim_token=None,
            claimed_until=None,
        )
        .returning(CancelEvent.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(changed)
