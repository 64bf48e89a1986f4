"""The feed (each worker's scheduler): the job table is the queue of record, and this loop feeds
the broker from it.

Every `fpcancel worker` runs one; a lease in Redis lets one of them act at a time, and each change
is a conditional update besides (`FOR UPDATE SKIP LOCKED` on PostgreSQL, in `fpcancel.jobstore`),
so two feeds never send the same job. Each round it:

1. takes back jobs whose worker died holding them (the claim expired): they wait again, with a
   status check first if a cancel may have left; a job that loses its worker too often fails;
2. sends jobs that are due (`next_attempt_at` has passed), customers (`live`) before `bulk`, but
   only as many as the fleet can start soon (the rate limit and the fleet's threads): a 100,000-job
   bulk waits in the table, not in Redis or in a worker's memory;
3. sends again jobs whose message was lost: sent longer than `dispatch_lease_seconds` ago and
   never claimed. A job waiting its turn in the table was never sent, so it is never "lost".
"""

import logging
import math
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fpcancel import jobstore, metrics
from fpcancel.app import publish
from fpcancel.jobstore import Dispatch
from fpcancel.models.tables import CancelJob
from fpcancel.runtime import Runtime
from fpcancel.statuses import LANES, JobStatus

log = logging.getLogger("fpcancel.scheduler")


@dataclass
class RoundReport:
    led: bool = False
    reclaimed: int = 0
    failed: int = 0
    sent: int = 0
    resent: int = 0
    publish_failed: bool = False


class Scheduler:
    def __init__(self, runtime: Runtime, member: str | None = None, threads: int = 0) -> None:
        self.runtime = runtime
        self.member = member or uuid.uuid4().hex[:12]
        self.threads = threads
        self._counted_at: datetime | None = None

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run rounds every `scheduler_interval_seconds` until `stop` is set."""
        interval = self.runtime.settings.scheduler_interval_seconds
        while not stop.is_set():
            try:
                self.round()
            except Exception:  # the loop must outlive a database or broker outage
                log.exception("scheduler round failed; trying again in %.1f s", interval)
            stop.wait(interval)
        self.runtime.fleet.resign(self.member)
        self.runtime.fleet.unregister(self.member)

    def start(self) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(self.runtime.stop,), name="fpcancel-scheduler", daemon=True
        )
        thread.start()
        return thread

    def round(self) -> RoundReport:
        rt, settings = self.runtime, self.runtime.settings
        report = RoundReport()
        lease = max(5.0, 5 * settings.scheduler_interval_seconds)
        if self.threads:
            rt.fleet.register(self.member, self.threads, lease * 2)
        if not rt.fleet.lead(self.member, lease):
            return report
        report.led = True
        now = rt.clock()
        with rt.sessions.begin() as session:
            report.reclaimed, report.failed = jobstore.take_back_expired(session, now, rt.policy)
            if self._gauges_due(now):
                self.count_jobs(session)
        metrics.RECLAIMED.inc(report.reclaimed)
        if rt.limiter.paused_for() > 0:
            return report  # nothing can start now; what is sent would only come back
        with rt.sessions.begin() as session:
            room = self.room(session, now)
            dispatches, report.resent = self.pick_due(session, now, room)
        if dispatches:
            try:
                report.sent = publish(rt.app, dispatches)
                metrics.SENT.inc(report.sent)
                metrics.RESENT.inc(report.resent)
            except Exception as exc:
                report.publish_failed = True
                log.warning(
                    "broker unreachable (%s); %d jobs wait in the table", exc, len(dispatches)
                )
                with rt.sessions.begin() as session:
                    jobstore.clear_dispatch(session, dispatches)
        return report

    def _gauges_due(self, now: datetime) -> bool:
        """Count jobs by status for the gauges every 10 s, not every round."""
        if self._counted_at is not None and (now - self._counted_at).total_seconds() < 10:
            return False
        self._counted_at = now
        return True

    # -- the steps, each in the caller's transaction -------------------------------------------

    def count_jobs(self, session: Session) -> None:
        """The `fpcancel_jobs` gauge: jobs that are not finished (the indexes keep this cheap)."""
        counts = dict.fromkeys(("queued", "retrying", "running"), 0)
        rows = session.execute(
            select(CancelJob.status, func.count())
            .where(CancelJob.status.in_(tuple(counts)))
            .group_by(CancelJob.status)
        ).all()
        counts.update({status: count for status, count in rows})
        for status, count in counts.items():
            metrics.JOBS.labels(status).set(count)

    def room(self, session: Session, now: datetime) -> int:
        """How many more jobs may be in flight: about two seconds of the rate budget (enough to
        keep every slot used between rounds), leaving a quarter of the fleet's threads free for
        customers' jobs that skip the scheduler."""
        settings = self.runtime.settings
        ahead = max(2.0, 2 * settings.scheduler_interval_seconds)
        want = math.ceil(settings.rate_limit.per_second * ahead) + 1
        threads = self.runtime.fleet.threads()
        if threads:
            want = min(want, max(1, threads - math.ceil(threads / 4)))
        # In flight: held by a worker, or sent recently. A message older than the dispatch lease
        # is lost and must not hold its place, or lost messages would stop the scheduler.
        lost_before = now - timedelta(seconds=settings.dispatch_lease_seconds)
        in_flight = session.execute(
            select(func.count())
            .select_from(CancelJob)
            .where(
                CancelJob.dispatch_token.is_not(None),
                (CancelJob.status == JobStatus.RUNNING.value)
                | (CancelJob.dispatched_at >= lost_before),
            )
        ).scalar_one()
        return max(0, want - in_flight)

    def pick_due(self, session: Session, now: datetime, room: int) -> tuple[list[Dispatch], int]:
        """Mark up to `room` due jobs as sent (customers first); plus how many of them are
        re-sends of lost messages."""
        lost_before = now - timedelta(seconds=self.runtime.settings.dispatch_lease_seconds)
        return jobstore.dispatch_due(
            session, now, room, LANES, lost_before, make_token=lambda: uuid.uuid4().hex
        )
