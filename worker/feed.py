"""The feed (each worker's scheduler): the job table is the queue of record, and this loop feeds
the broker from it.

Every `fpcancel worker` runs one; a lease in Redis lets one of them act at a time, and each change
is a conditional update besides (`FOR UPDATE SKIP LOCKED` on PostgreSQL, in `fpcancel.jobstore`),
so two feeds never send the same job. Each round it:

1. takes back jobs whose worker died holding them (the claim expired): they wait again, with a
   status check first if a cancel may have left; a job that loses its worker too often fails;
2. sends jobs that are due (`next_attempt_at` has passed), customers (`live`) before `bulk`, but
   only as many as the fleet can start soon (`feed_plan`: about two seconds of the rate budget,
   at most two messages per thread): a 100,000-job bulk waits in the table, not in Redis or in
   a worker's memory. When the rate is high a message carries a few jobs (never more than a
   thread's share of half a second of the budget), so a worker's per-message costs are shared;
3. sends again jobs whose message was lost: sent longer than `dispatch_lease_seconds` ago and
   never claimed. A job waiting its turn in the table was never sent, so it is never "lost".

Rounds run when a worker thread finishes a message (`Fleet.wake`), so the fleet never waits for
the next round to get more work, and at least every `scheduler_interval_seconds`; taking back
lost workers' jobs and counting the gauges happen once an interval.
"""

import logging
import math
import threading
import time
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
AHEAD_SECONDS = 2.0  # jobs in flight cover about this much of the rate budget
# Jobs per message at most: a message's own costs (Celery's, the claim, a feed round) are shared
# by its jobs; at a far-away limit 32 cost a worker 10 % less CPU per job than 16. A worker that
# dies holding one leaves its jobs until their lease ends (longer with each job of the batch).
BATCH_MAX = 32
BATCH_HOLD_SECONDS = 0.5  # a batch holds its thread for no longer than this at its rate share


@dataclass(frozen=True)
class FeedPlan:
    """How much work the fleet should have in flight, and how it is packed into messages."""

    target: int  # jobs in flight (sent and not yet finished)
    batch: int  # jobs per message


def feed_plan(rate_per_second: float, threads: int) -> FeedPlan:
    """Enough jobs in flight to use about AHEAD_SECONDS of the rate budget, but no more than two
    messages per thread (a quarter of the threads is kept free for customers' jobs, which skip
    the feed); a message carries as many jobs as a thread's share of the rate makes in
    BATCH_HOLD_SECONDS (at least one, at most BATCH_MAX). Pure."""
    usable = max(1, threads - threads // 4)
    share = rate_per_second / usable
    batch = max(1, min(BATCH_MAX, math.floor(share * BATCH_HOLD_SECONDS)))
    target = min(math.ceil(rate_per_second * AHEAD_SECONDS) + 1, usable * batch * 2)
    return FeedPlan(target, batch)


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
        self._housekept_at: datetime | None = None
        self._lead_checked_at = -1e9
        self._led = False
        self._threads = 0

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run rounds until `stop` is set: the leader when a thread frees or every
        `scheduler_interval_seconds`, the others every interval (to lead when it falls free)."""
        interval = self.runtime.settings.scheduler_interval_seconds
        while not stop.is_set():
            led = False
            try:
                led = self.round().led
            except Exception:  # the loop must outlive a database or broker outage
                log.exception("scheduler round failed; trying again in %.1f s", interval)
            if led and not stop.is_set():
                self.runtime.fleet.wait_for_work(interval)
            else:
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
        if not self._leading():
            return report
        report.led = True
        now = rt.clock()
        if self._housekeeping_due(now):
            with rt.sessions.begin() as session:
                report.reclaimed, report.failed = jobstore.take_back_expired(
                    session, now, rt.policy
                )
                if self._gauges_due(now):
                    self.count_jobs(session)
            metrics.RECLAIMED.inc(report.reclaimed)
        if rt.limiter.paused_for() > settings.rate_limit_wait_seconds:
            # Nothing can start for a while; what is sent would only come back. A shorter
            # pause (the provider's window is spent) is waited out by threads holding jobs, so
            # the next window's calls leave the moment it opens.
            return report
        plan = feed_plan(settings.rate_limit.per_second, self._threads)
        with rt.sessions.begin() as session:
            room = plan.target - self.in_flight(session, now)
            dispatches, report.resent = self.pick_due(session, now, room) if room > 0 else ([], 0)
        if dispatches:
            try:
                report.sent = publish(rt.app, dispatches, batch=plan.batch)
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

    def _leading(self) -> bool:
        """Take or keep the feed's lead, and say this member is alive. Rounds come at every
        thread's wake-up; the lease (5 intervals, at least 5 s) is renewed once it is a fifth
        spent, not at each."""
        fleet = self.runtime.fleet
        lease = max(5.0, 5 * self.runtime.settings.scheduler_interval_seconds)
        now = time.monotonic()
        if now < self._lead_checked_at + lease / 5:
            return self._led
        self._lead_checked_at = now
        if self.threads:
            fleet.register(self.member, self.threads, lease * 2)
        self._led = fleet.lead(self.member, lease)
        self._threads = fleet.threads()
        return self._led

    def _housekeeping_due(self, now: datetime) -> bool:
        """Take back lost workers' jobs once an interval, not at every wake-up."""
        interval = self.runtime.settings.scheduler_interval_seconds
        if self._housekept_at is not None and (now - self._housekept_at).total_seconds() < interval:
            return False
        self._housekept_at = now
        return True

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

    def in_flight(self, session: Session, now: datetime) -> int:
        """Jobs held by a worker, or sent recently. A message older than the dispatch lease is
        lost and must not hold its place, or lost messages would stop the feed. (The partial
        index on sent jobs keeps this count small whatever the table's size.)"""
        lost_before = now - timedelta(seconds=self.runtime.settings.dispatch_lease_seconds)
        return int(
            session.execute(
                select(func.count())
                .select_from(CancelJob)
                .where(
                    CancelJob.dispatch_token.is_not(None),
                    (CancelJob.status == JobStatus.RUNNING.value)
                    | (CancelJob.dispatched_at >= lost_before),
                )
            ).scalar_one()
        )

    def pick_due(self, session: Session, now: datetime, room: int) -> tuple[list[Dispatch], int]:
        """Mark up to `room` due jobs as sent (customers first); plus how many of them are
        re-sends of lost messages."""
        lost_before = now - timedelta(seconds=self.runtime.settings.dispatch_lease_seconds)
        return jobstore.dispatch_due(
            session, now, room, LANES, lost_before, make_token=lambda: uuid.uuid4().hex
        )
