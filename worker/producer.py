"""What producers call: `enqueue_cancel` for one order, `enqueue_bulk` for a stock-out.

The job is committed first and published after, so a broker outage loses nothing: the job waits
in the table and the scheduler sends it. The CLI's `enqueue` and `enqueue-bulk` call these same
functions.

    import fpcancel
    job_id = fpcancel.enqueue_cancel("ODR123456789", "customer changed their mind", source="shop")
"""

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fpcancel import jobstore
from fpcancel.app import make_celery, publish
from fpcancel.bulk import BulkResult, BulkRow, write_bulk
from fpcancel.models.db import make_engine, make_session_factory, utcnow
from fpcancel.settings import Settings
from fpcancel.transitions import new_job_values
from fpcancel.validation import clean_lane, clean_note, clean_order_uuid, clean_source

log = logging.getLogger("fpcancel.producer")


@dataclass(frozen=True)
class Enqueued:
    """What `enqueue` did: the job's id and status, whether it is new, whether it reached the
    broker already (if not, the scheduler sends it); and a new job's columns as written
    (`values`, None for the order's existing job), so a caller can show it without reading it
    back."""

    id: int
    order_uuid: str
    status: str
    created: bool
    published: bool
    values: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


class Producer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        app: Celery,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.app = app
        self.clock = clock
        engine = sessions.kw["bind"]
        assert isinstance(engine, Engine)
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: Settings) -> "Producer":
        engine = make_engine(settings.database_url)
        return cls(make_session_factory(engine), make_celery(settings))

    def enqueue(
        self, order_uuid: str, note: str, source: str | None = None, lane: str = "live"
    ) -> Enqueued:
        """Validate, write the job (or find the order's active one), then publish a live job."""
        order_uuid = clean_order_uuid(order_uuid)
        note = clean_note(note)
        source = clean_source(source)
        lane = clean_lane(lane)
        now = self.clock()
        # Customers' jobs go straight to the broker; bulk ones wait for the scheduler's pace.
        token = uuid.uuid4().hex if lane == "live" else None
        # A Core connection, not an ORM session: this runs inside a customer's web request, and
        # the ORM's bookkeeping would cost more than the INSERT (bench/enqueue_latency.py).
        values = new_job_values(
            order_uuid=order_uuid,
            note=note,
            source=source,
            lane=lane,
            now=now,
            dispatch_token=token,
        )
        with self.engine.begin() as connection:
            job = jobstore.insert_jobs(connection, [values])[0]
        published = False
        if job.created and token is not None:
            try:
                publish(self.app, [jobstore.Dispatch(job.id, token, lane)])
                published = True
            except Exception as exc:
                log.warning(
                    "broker unreachable (%s): job %s is saved and the scheduler will send it",
                    type(exc).__name__,
                    job.id,
                )
                with self.engine.begin() as connection:
                    jobstore.clear_dispatch(connection, [jobstore.Dispatch(job.id, token, lane)])
        written = values if job.created else None
        return Enqueued(job.id, job.order_uuid, job.status, job.created, published, written)

    def enqueue_bulk(
        self,
        rows: Iterable[BulkRow | tuple[str, str]],
        source: str | None = None,
        lane: str = "bulk",
        progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Write many jobs (already validated rows), batch by batch; the scheduler sends them."""
        source = clean_source(source)
        lane = clean_lane(lane)
        return write_bulk(
            self.sessions, rows, source=source, lane=lane, now=self.clock, progress=progress
        )
