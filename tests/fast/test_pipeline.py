"""The task and the scheduler together, on SQLite with a fake provider transport and a hand-moved
clock: what a user sees in the job table and what the provider saw."""

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from fpcancel.answers import AnswerLost, ConnectFailed
from fpcancel.feed import BATCH_MAX, Scheduler
from fpcancel.models.tables import CancelAttempt, CancelJob
from fpcancel.producer import Producer
from fpcancel.runtime import Runtime
from fpcancel.tasks import run_job, run_jobs
from tests.fakes import (
    TOKEN,
    Clock,
    FakeTransport,
    Reply,
    documented,
    drive,
    pending,
    sqlite_runtime,
)


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runtime(tmp_path: Path, transport: FakeTransport, clock: Clock) -> Runtime:
    rt = sqlite_runtime(tmp_path, transport, clock)
    yield rt
    rt.close()


def enqueue(rt: Runtime, order: str, note: str = "out of stock", lane: str = "live") -> int:
    # Publishing goes to Celery's memory broker; the tests run the jobs by hand from the table.
    return Producer(rt.sessions, rt.app, rt.clock).enqueue(order, note, lane=lane).id


def job(rt: Runtime, job_id: int) -> CancelJob:
    with rt.sessions() as s:
        found = s.get(CancelJob, job_id)
        assert found is not None
        return found


def calls(rt: Runtime, job_id: int) -> list[CancelAttempt]:
    with rt.sessions() as s:
        return list(
            s.scalars(
                select(CancelAttempt)
                .where(CancelAttempt.job_id == job_id)
                .order_by(CancelAttempt.number)
            )
        )


def test_each_documented_answer_ends_the_job_in_its_status(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """202, 400 paid, 404, 417 each end the job after one POST, in the SPEC's status."""
    transport.script("ODR1", documented(202))
    transport.script("ODR2", documented(400))
    transport.script("ODR3", documented(404))
    transport.script("ODR4", documented(417))
    ids = [enqueue(runtime, f"ODR{i}") for i in range(1, 5)]
    drive(runtime, clock, rounds=60)
    assert [job(runtime, i).status for i in ids] == [
        "succeeded",
        "already_paid",
        "not_found",
        "invalid_payload",
    ]
    assert [len(calls(runtime, i)) for i in ids] == [1, 1, 1, 1]
    assert json.loads(job(runtime, ids[3]).last_errors or "null") == {
        "cancellationNote": ["The cancellation note field is required."]
    }
    assert all(job(runtime, i).finished_at is not None for i in ids)


def test_every_call_carries_the_token_and_a_json_note(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """The provider sees the bearer token, a JSON cancellationNote and fpcancel's User-Agent."""
    enqueue(runtime, "ODR1", "  customer changed their mind  ")
    drive(runtime, clock, rounds=60)
    (request,) = transport.requests
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("fpcancel/")
    assert json.loads(request.body or b"") == {"cancellationNote": "customer changed their mind"}
    assert request.url == "https://provider.test/api/v1/connect/orders/cancel/ODR1"


def test_a_510_is_retried_with_a_status_check_and_a_404_is_not(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """Two 510s then 202: succeeded after 3 POSTs, each retry preceded by a status check; growing delay bounds."""
    transport.script("ODR1", documented(510), documented(510), documented(202))
    transport.script("ODR2", documented(404))
    first, second = enqueue(runtime, "ODR1"), enqueue(runtime, "ODR2")
    drive(runtime, clock, rounds=60)
    rows = calls(runtime, first)
    assert [c.kind for c in rows] == ["cancel", "status_check", "cancel", "status_check", "cancel"]
    assert [c.outcome for c in rows if c.kind == "cancel"] == [
        "ambiguous",
        "ambiguous",
        "succeeded",
    ]
    assert job(runtime, first).status == "succeeded" and job(runtime, first).attempts == 3
    assert job(runtime, second).status == "not_found" and len(transport.calls("ODR2")) == 1


def test_retry_delays_grow_with_the_attempt_number(
    tmp_path: Path, transport: FakeTransport, clock: Clock
) -> None:
    """With the jitter at its top, delay n is min(max, base * 2^(n-1)): 0.2, 0.4, 0.8 s."""
    rt = sqlite_runtime(tmp_path, transport, clock, http_timeout_seconds=0.01, max_attempts=4)
    for _ in range(3):
        transport.requests.clear()
    timed_out = Reply(408, {"message": "Request Timeout"})
    transport.script("ODR1", timed_out, timed_out, timed_out)
    job_id = enqueue(rt, "ODR1")
    drive(rt, clock, step=0.1)
    delays = [c.retry_in_ms for c in calls(rt, job_id) if c.retry_in_ms is not None]
    assert delays == [200, 400, 800]
    assert job(rt, job_id).status == "succeeded"
    rt.close()


def test_an_always_failing_order_is_dead_after_max_attempts_posts(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """Always 510: dead with exactly FPCANCEL_MAX_ATTEMPTS (4) POSTs and a final status check."""
    transport.script("ODR1", *[documented(510)] * 10)
    job_id = enqueue(runtime, "ODR1")
    drive(runtime, clock, rounds=60)
    assert job(runtime, job_id).status == "dead"
    assert len(transport.calls("ODR1", "cancel")) == 4
    assert job(runtime, job_id).attempts == 4


def test_an_answer_lost_after_the_cancel_applied_is_settled_by_the_status_check(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """A read timeout, then the order shows CANCELLED: succeeded with exactly one POST."""
    transport.script("ODR1", Reply(0, raise_=AnswerLost("read timeout")))
    transport.status_script("ODR1", Reply(200, {"data": {"status": "CANCELLED"}}))
    job_id = enqueue(runtime, "ODR1")
    drive(runtime, clock, rounds=60)
    assert job(runtime, job_id).status == "succeeded"
    assert len(transport.calls("ODR1", "cancel")) == 1
    assert [c.outcome for c in calls(runtime, job_id)] == ["ambiguous", "order_cancelled"]


def test_a_refused_token_never_ends_a_job_and_costs_no_attempt(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """401 twice: the job waits (retrying, 0 attempts), then succeeds once the token works."""
    transport.script(
        "ODR1",
        Reply(401, {"message": "Unauthenticated."}),
        Reply(401, {"message": "Unauthenticated."}),
        documented(202),
    )
    job_id = enqueue(runtime, "ODR1")
    run_job(runtime, *pending(runtime)[0])
    assert (job(runtime, job_id).status, job(runtime, job_id).attempts) == ("retrying", 0)
    assert runtime.limiter.paused_for() > 0
    runtime.limiter.clear_pause("unauthorized")
    drive(runtime, clock, step=2.0)
    assert job(runtime, job_id).status == "succeeded" and job(runtime, job_id).attempts == 1


def test_a_second_delivery_of_the_same_message_does_not_call_again(
    runtime: Runtime, transport: FakeTransport
) -> None:
    """The same (job, token) message twice: one POST, the second run is skipped."""
    enqueue(runtime, "ODR1")
    ((job_id, token),) = pending(runtime)
    assert run_job(runtime, job_id, token) == "succeeded"
    assert run_job(runtime, job_id, token) == "skipped"
    assert len(transport.requests) == 1


def test_enqueueing_an_active_order_again_returns_the_first_job(runtime: Runtime) -> None:
    """Dedup: a second enqueue of a queued order makes no new job."""
    producer = Producer(runtime.sessions, runtime.app, runtime.clock)
    first = producer.enqueue("ODR1", "a")
    second = producer.enqueue("ODR1", "b")
    assert (second.id, second.created) == (first.id, False)


def test_customers_are_sent_before_bulk(runtime: Runtime, clock: Clock) -> None:
    """With room for two, the scheduler sends the live job ahead of older bulk ones."""
    for i in range(5):
        enqueue(runtime, f"ODR{i}", lane="bulk")
    enqueue(runtime, "ODR9")  # live: published at once
    with runtime.sessions.begin() as s:  # as if its publish had failed
        s.execute(CancelJob.__table__.update().values(dispatch_token=None))
    clock.advance(1)
    scheduler = Scheduler(runtime, member="test")
    with runtime.sessions.begin() as s:
        picked, _ = scheduler.pick_due(s, clock(), room=2)
    orders = {job(runtime, d.job_id).order_uuid: d.lane for d in picked}
    assert orders == {"ODR9": "live", "ODR0": "bulk"}


def test_a_lost_message_is_sent_again_but_a_waiting_job_is_not(
    runtime: Runtime, clock: Clock
) -> None:
    """Sent but never claimed for longer than the dispatch lease: re-sent with a new token."""
    job_id = enqueue(runtime, "ODR1")
    ((_, old_token),) = pending(runtime)
    scheduler = Scheduler(runtime, member="test")
    clock.advance(1)
    assert scheduler.round().sent == 0  # sent a second ago: still in flight, not lost
    clock.advance(runtime.settings.dispatch_lease_seconds)
    report = scheduler.round()
    assert (report.sent, report.resent) == (1, 1)
    ((_, new_token),) = pending(runtime)
    assert new_token != old_token
    assert run_job(runtime, job_id, old_token) == "skipped"


def test_a_job_whose_worker_died_mid_call_is_checked_before_posting_again(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """Claim expired after the POST left: the scheduler takes it back and a status check comes first."""
    from fpcancel import jobstore as jobs

    transport.status_script("ODR1", Reply(200, {"data": {"status": "CANCELLED"}}))
    job_id = enqueue(runtime, "ODR1")
    ((_, token),) = pending(runtime)
    with runtime.sessions.begin() as s:
        claimed = jobs.claim_job(s, job_id, token, clock(), lease_seconds=10)
        assert claimed is not None
        jobs.mark_in_call(s, claimed, clock())
    clock.advance(11)  # the worker died: nothing recorded, claim expired
    report = Scheduler(runtime, member="test").round()
    assert report.reclaimed == 1
    assert job(runtime, job_id).needs_status_check
    drive(runtime, clock, rounds=60)
    assert job(runtime, job_id).status == "succeeded"
    assert transport.calls("ODR1", "cancel") == []


def test_a_job_that_keeps_losing_its_worker_fails_with_a_reason(
    runtime: Runtime, clock: Clock
) -> None:
    """After FPCANCEL_MAX_LOST_CLAIMS expired claims the job fails instead of looping."""
    from fpcancel import jobstore as jobs

    job_id = enqueue(runtime, "ODR1")
    scheduler = Scheduler(runtime, member="test")
    for _ in range(runtime.settings.max_lost_claims):
        clock.advance(runtime.settings.dispatch_lease_seconds + 1)
        scheduler.round()
        ((_, token),) = pending(runtime)
        with runtime.sessions.begin() as s:
            assert jobs.claim_job(s, job_id, token, clock(), lease_seconds=1) is not None
        clock.advance(2)
        scheduler.round()
    found = job(runtime, job_id)
    assert found.status == "failed"
    assert "lost" in (found.last_message or "")


def test_a_large_waiting_bulk_is_fed_a_little_at_a_time_and_never_resent_wholesale(
    runtime: Runtime, clock: Clock
) -> None:
    """1,000 bulk jobs waiting their turn: each round sends only what the fleet can start soon,
    and after the dispatch lease only those unclaimed few are sent again."""
    from fpcancel.bulk import BulkRow

    Producer(runtime.sessions, runtime.app, runtime.clock).enqueue_bulk(
        [BulkRow(f"ODR{i}", "n", i) for i in range(1000)]
    )
    runtime.fleet.register("w1", 8, 60)
    scheduler = Scheduler(runtime, member="test")
    first = scheduler.round()
    # At most two messages of at most BATCH_MAX jobs for each of the 6 threads not kept free.
    assert 0 < first.sent <= 6 * 2 * BATCH_MAX < 1000
    clock.advance(1)
    assert scheduler.round().sent == 0  # nothing claimed yet: no room, nothing lost
    clock.advance(runtime.settings.dispatch_lease_seconds)
    again = scheduler.round()
    assert (again.sent, again.resent) == (first.sent, first.sent)
    with runtime.sessions() as s:
        sent = s.scalar(
            select(func.count()).select_from(CancelJob).where(CancelJob.dispatch_token.is_not(None))
        )
    assert sent == first.sent


@pytest.mark.parametrize(
    "rate, threads, target, batch",
    [
        (4, 1, 4, 2),  # 240/60, one thread: two messages of two jobs (half a second each)
        (4, 2, 4, 1),  # 240/60, two threads
        (4, 24, 9, 1),  # 240/60, 3 x 8: two seconds of budget, one job a message
        (10, 24, 21, 1),  # 10/1 s, 3 x 8
        (10_000, 8, 384, 32),  # the limit far away: full batches, two per usable thread
    ],
)
def test_the_feed_keeps_two_seconds_of_budget_in_flight_in_small_messages(
    rate: float, threads: int, target: int, batch: int
) -> None:
    """In flight: about two seconds of the budget, at most two messages per thread (a quarter
    of the threads kept free for customers); a message holds a thread for half a second at most."""
    from fpcancel.feed import feed_plan

    plan = feed_plan(rate, threads)
    assert (plan.target, plan.batch) == (target, batch)
    usable = threads - threads // 4
    assert plan.batch / (rate / usable) <= 0.5 or plan.batch == 1


def test_a_provider_outage_spends_no_attempt_and_every_job_ends_as_its_answers_say(
    runtime: Runtime, transport: FakeTransport, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC.md, "Provider-wide trouble": connections refused for ten minutes (of the hand-moved
    clock), then the provider is back: no job spent an attempt, the fleet only probed now and
    then, and every job ends as its answers say (a 510 afterwards still counts)."""
    from fpcancel import tasks
    from fpcancel.pauses import PROBE_SECONDS
    from fpcancel.ratelimit import Slot

    def ask_once(limiter: Any, lane: str, **_: Any) -> tuple[Slot | None, float]:
        granted = limiter.acquire(lane, "thread")  # a thread that would wait gives the job back
        return (granted if isinstance(granted, Slot) else None), 0.0

    monkeypatch.setattr(tasks, "wait_for_slot", ask_once)
    down = {"until": clock.now + timedelta(minutes=10)}
    orders = [f"ODR{i}" for i in range(20)]
    ids = [enqueue(runtime, order, lane="bulk") for order in orders]

    def refuse_while_down(request: Any) -> Reply | None:
        return Reply(0, raise_=ConnectFailed("refused")) if clock.now < down["until"] else None

    transport.intercept = refuse_while_down
    scheduler = Scheduler(runtime, member="test")
    tries_while_down = 0
    while clock.now < down["until"]:
        for job_id, token in pending(runtime):
            before = len(transport.requests)
            run_job(runtime, job_id, token)
            tries_while_down += len(transport.requests) - before
        clock.advance(1)
        scheduler.round()
    minutes = 10
    assert tries_while_down <= 20 * minutes  # a few probes a minute, not every job over and over
    assert tries_while_down >= minutes * 60 / PROBE_SECONDS - 2  # but it did probe
    with runtime.sessions() as s:
        assert s.scalar(select(func.sum(CancelJob.attempts))) == 0
    transport.script("ODR5", documented(510))  # after the outage: about the order, and counts
    drive(runtime, clock, step=1)
    assert {job(runtime, i).status for i in ids} == {"succeeded"}
    assert job(runtime, ids[5]).attempts == 2
    assert sum(job(runtime, i).attempts for i in ids) == 21


class _HeldUpAfterGrant:
    """The fleet's limiter, with the worker held up between the grant and the call (the answer's
    way back from Redis, a garbage collection): the call leaves late though nothing after the
    grant was slow."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.late: list[float] = []  # moved on their own (a message's last call)
        self.carried: list[float] = []  # moved with the thread's next ask for a slot

    def acquire(self, lane: str, caller: str, late: Any = None) -> Any:
        if late is not None:
            self.carried.append(late.late_seconds)
        granted = self._inner.acquire(lane, caller, late)
        time.sleep(0.05)
        return granted

    def left_late(self, slot: Any, late_seconds: float) -> None:
        self.late.append(late_seconds)
        self._inner.left_late(slot, late_seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_call_held_up_after_its_grant_moves_its_stamp(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """The provider's window opens when the call arrives: a call that left 50 ms after it was
    granted is re-stamped by at least that much, or the fleet's log would run ahead of the
    provider's window."""
    limiter = _HeldUpAfterGrant(runtime.limiter)
    runtime.limiter = limiter  # type: ignore[assignment]
    transport.script("ODR1", documented(202))
    enqueue(runtime, "ODR1")
    drive(runtime, clock, rounds=10)
    assert len(limiter.late) == 1 and limiter.late[0] >= 0.05


def test_a_batch_moves_each_late_call_s_stamp_with_its_next_ask(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """In a message of several jobs, a call that left late is re-stamped by the thread's next ask
    for a slot (no round trip of its own); only the message's last call is re-stamped alone."""
    for order in ("ODR1", "ODR2", "ODR3"):
        transport.script(order, documented(202))
        enqueue(runtime, order, lane="bulk")
    Scheduler(runtime, member="test").round()
    limiter = _HeldUpAfterGrant(runtime.limiter)
    runtime.limiter = limiter  # type: ignore[assignment]
    assert run_jobs(runtime, sorted(pending(runtime))) == ["succeeded"] * 3
    assert len(limiter.carried) == 2 and min(limiter.carried) >= 0.05
    assert len(limiter.late) == 1 and limiter.late[0] >= 0.05


class _SecondCallWaits:
    """The fleet's limiter, making a message's second call wait once (a pause), and noting how
    many calls the table holds when that call asks again."""

    def __init__(self, inner: Any, rt: Runtime) -> None:
        self._inner, self._rt = inner, rt
        self.asked = 0
        self.rows_seen_after_wait: int | None = None

    def acquire(self, lane: str, caller: str, late: Any = None) -> Any:
        self.asked += 1
        if self.asked == 2:
            return 5.0  # a pause
        if self.asked == 3:
            with self._rt.sessions() as s:
                self.rows_seen_after_wait = s.scalar(select(func.count(CancelAttempt.id)))
        return self._inner.acquire(lane, caller, late)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_message_writes_down_its_calls_before_its_thread_waits_for_a_slot(
    runtime: Runtime, transport: FakeTransport, clock: Clock
) -> None:
    """A batch whose next call must wait (the fleet paused, the provider away) has its calls so
    far on record first: a probe's row shows at once, not when the whole batch ends."""
    transport.script("ODR1", documented(202))
    transport.script("ODR2", documented(202))
    for order in ("ODR1", "ODR2"):
        enqueue(runtime, order, lane="bulk")
    Scheduler(runtime, member="test").round()
    limiter = _SecondCallWaits(runtime.limiter, runtime)
    runtime.limiter = limiter  # type: ignore[assignment]
    assert run_jobs(runtime, sorted(pending(runtime))) == ["succeeded", "succeeded"]
    assert limiter.rows_seen_after_wait == 1
