"""The shared call budget (SPEC.md, "Rate and lanes"): N calls in any W s, live before bulk."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import fakeredis
import pytest

from worker.ratelimit import LocalLimiter, RedisLimiter, wait_for_slot
from worker.settings import RateLimit

# The window the limiter may keep beyond W for send-time jitter (SPEC: "a small margin").
MARGIN_SECONDS = 0.1


def max_wait(limit: RateLimit) -> float:
    return limit.per_seconds * 1.01 + MARGIN_SECONDS


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def redis() -> Iterator[fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


def sleep_past(wait: float) -> None:
    """Let real time pass (Redis stamps calls with its own clock); nothing asserts on it."""
    time.sleep(wait + 0.03)


# -- LocalLimiter with a hand-moved clock --------------------------------------------------------


def test_local_grants_at_most_n_in_a_window() -> None:
    """Of 10 immediate asks against 4/60, only 4 are granted; the rest wait 0 < wait ≤ W."""
    limit = RateLimit(4, 60)
    limiter = LocalLimiter(limit, clock=Clock())
    waits = [limiter.try_acquire("live", f"c{i}") for i in range(10)]
    assert waits[:4] == [0, 0, 0, 0]
    assert all(0 < w <= max_wait(limit) for w in waits[4:])


def test_local_grants_resume_once_the_wait_has_passed() -> None:
    """After the returned wait, the next call is granted (and not a moment before)."""
    clock = Clock()
    limiter = LocalLimiter(RateLimit(3, 10), clock=clock)
    for i in range(3):
        assert limiter.try_acquire("live", f"c{i}") == 0
        clock.advance(1)
    wait = limiter.try_acquire("live", "late")
    assert 0 < wait <= max_wait(RateLimit(3, 10))
    clock.advance(wait - 0.01)
    assert limiter.try_acquire("live", "late") > 0
    clock.advance(0.02)
    assert limiter.try_acquire("live", "late") == 0
    assert limiter.try_acquire("live", "later") > 0  # only the oldest slot has freed


def test_local_never_exceeds_n_in_any_window_over_a_long_run() -> None:
    """Callers asking every 50 ms for two minutes never get more than N starts in any W."""
    clock = Clock()
    limit = RateLimit(5, 2)
    limiter = LocalLimiter(limit, clock=clock)
    starts: list[float] = []
    for i in range(2400):
        if limiter.try_acquire("bulk" if i % 3 else "live", f"c{i % 7}") == 0:
            starts.append(clock())
        clock.advance(0.05)
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + limit.per_seconds]
        assert len(in_window) <= limit.calls
    assert len(starts) >= 100  # and it does keep granting


def test_local_bulk_is_refused_while_a_live_caller_waits() -> None:
    """A customer waiting for a slot holds bulk back, and takes the next free slot itself."""
    clock = Clock()
    limiter = LocalLimiter(RateLimit(2, 2), clock=clock)
    assert limiter.try_acquire("bulk", "b1") == 0
    assert limiter.try_acquire("bulk", "b2") == 0
    live_wait = limiter.try_acquire("live", "customer")
    assert live_wait > 0
    assert limiter.try_acquire("bulk", "b3") > 0
    clock.advance(live_wait)
    assert limiter.try_acquire("bulk", "b3") > 0, "bulk took the slot a customer was waiting for"
    assert limiter.try_acquire("live", "customer") == 0
    assert limiter.try_acquire("bulk", "b3") == 0  # with no customer waiting, bulk goes on


def test_local_live_keeps_its_place_through_a_wait_longer_than_3_seconds() -> None:
    """A customer told to wait 10 s and coming back then still gets the slot ahead of bulk."""
    clock = Clock()
    limiter = LocalLimiter(RateLimit(2, 10), clock=clock)
    assert limiter.try_acquire("bulk", "b1") == 0
    assert limiter.try_acquire("bulk", "b2") == 0
    live_wait = limiter.try_acquire("live", "customer")
    assert live_wait > 0
    clock.advance(live_wait)
    assert limiter.try_acquire("bulk", "b3") > 0, "bulk took the slot a customer was waiting for"
    assert limiter.try_acquire("live", "customer") == 0
    assert limiter.try_acquire("bulk", "b3") == 0  # with no customer waiting, bulk goes on


def test_local_bulk_is_not_held_back_by_a_waiter_that_went_away() -> None:
    """A live caller that stopped asking (its worker died) stops blocking bulk after a few s."""
    clock = Clock()
    limiter = LocalLimiter(RateLimit(1, 1), clock=clock)
    assert limiter.try_acquire("bulk", "b1") == 0
    assert limiter.try_acquire("live", "ghost") > 0
    clock.advance(10)
    assert limiter.try_acquire("bulk", "b2") == 0


def test_local_pause_refuses_every_caller() -> None:
    """pause() makes every try_acquire wait for the pause, and paused_for() reports it."""
    clock = Clock()
    limiter = LocalLimiter(RateLimit(100, 1), clock=clock)
    limiter.pause("rate_limited", 7)
    assert limiter.paused_for() == pytest.approx(7)
    assert limiter.try_acquire("live", "c") == pytest.approx(7)
    clock.advance(7.01)
    assert limiter.paused_for() == 0
    assert limiter.try_acquire("live", "c") == 0


def test_local_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    """When two workers pause for different times, the longer pause stands."""
    limiter = LocalLimiter(RateLimit(100, 1), clock=Clock())
    limiter.pause("rate_limited", 30)
    limiter.pause("rate_limited", 2)
    assert limiter.paused_for() == pytest.approx(30)


def test_local_clear_pause_lets_calls_through_again() -> None:
    """clear_pause (a new token was set) lifts the pause at once."""
    limiter = LocalLimiter(RateLimit(100, 1), clock=Clock())
    limiter.pause("unauthorized", 600)
    assert limiter.try_acquire("live", "c") > 0
    limiter.clear_pause("unauthorized")
    assert limiter.paused_for() == 0
    assert limiter.try_acquire("live", "c") == 0


def test_local_failures_count_up_and_success_resets_them() -> None:
    """note_failure counts refusals in a row; a call that goes through starts the count again."""
    limiter = LocalLimiter(RateLimit(100, 1), clock=Clock())
    assert [limiter.note_failure("unauthorized") for _ in range(3)] == [1, 2, 3]
    assert limiter.note_failure("misrouted") == 1
    limiter.note_success()
    assert limiter.note_failure("unauthorized") == 1
    assert limiter.note_failure("misrouted") == 1


def test_local_window_full_for() -> None:
    """An empty window reports a whole window; a used one, the time until its oldest call frees."""
    clock = Clock()
    limit = RateLimit(2, 10)
    limiter = LocalLimiter(limit, clock=clock)
    assert limit.per_seconds <= limiter.window_full_for() <= max_wait(limit)
    limiter.try_acquire("live", "c")
    clock.advance(4)
    assert limit.per_seconds - 4 <= limiter.window_full_for() <= max_wait(limit) - 4


# -- RedisLimiter on fakeredis (Lua via lupa) ---------------------------------------------------


def test_redis_grants_at_most_n_in_a_window(redis: fakeredis.FakeRedis) -> None:
    """Of 8 immediate asks against 3/60, only 3 are granted; the rest wait 0 < wait ≤ W."""
    limit = RateLimit(3, 60)
    limiter = RedisLimiter(redis, limit)
    waits = [limiter.try_acquire("live", f"c{i}") for i in range(8)]
    assert waits[:3] == [0, 0, 0]
    assert all(0 < w <= max_wait(limit) for w in waits[3:])


def test_redis_budget_is_shared_by_every_worker(redis: fakeredis.FakeRedis) -> None:
    """Two limiters (two worker hosts) on the same Redis share one budget."""
    limit = RateLimit(3, 60)
    a, b = RedisLimiter(redis, limit), RedisLimiter(redis, limit)
    granted = [lim.try_acquire("bulk", f"c{i}") == 0 for i, lim in enumerate([a, b, a, b, a, b])]
    assert granted.count(True) == 3


def test_redis_namespaces_keep_budgets_apart(redis: fakeredis.FakeRedis) -> None:
    """A limiter in another namespace (another token) has its own budget."""
    limit = RateLimit(1, 60)
    assert RedisLimiter(redis, limit, namespace="a").try_acquire("live", "c") == 0
    assert RedisLimiter(redis, limit, namespace="b").try_acquire("live", "c") == 0
    assert RedisLimiter(redis, limit, namespace="a").try_acquire("live", "c") > 0


def test_redis_grants_resume_after_the_wait(redis: fakeredis.FakeRedis) -> None:
    """Once the returned wait has passed, calls are granted again."""
    limit = RateLimit(3, 0.2)
    limiter = RedisLimiter(redis, limit)
    assert [limiter.try_acquire("live", f"c{i}") for i in range(3)] == [0, 0, 0]
    wait = limiter.try_acquire("live", "late")
    assert 0 < wait <= max_wait(limit)
    sleep_past(wait)
    assert limiter.try_acquire("live", "late") == 0


def test_redis_bulk_is_refused_while_a_live_caller_waits(redis: fakeredis.FakeRedis) -> None:
    """A customer waiting for a slot holds bulk back, and gets the next free slot itself."""
    limit = RateLimit(3, 0.2)
    limiter = RedisLimiter(redis, limit)
    assert [limiter.try_acquire("bulk", f"b{i}") for i in range(3)] == [0, 0, 0]
    wait = limiter.try_acquire("live", "customer")
    assert wait > 0
    sleep_past(wait)
    assert limiter.try_acquire("bulk", "b-late") > 0, (
        "bulk took the slot a customer was waiting for"
    )
    assert limiter.try_acquire("live", "customer") == 0
    assert limiter.try_acquire("bulk", "b-late") == 0  # the customer is served: bulk goes on


def test_redis_pause_refuses_every_caller(redis: fakeredis.FakeRedis) -> None:
    """pause() makes try_acquire return the remaining pause, on every worker."""
    limit = RateLimit(100, 1)
    limiter, other = RedisLimiter(redis, limit), RedisLimiter(redis, limit)
    limiter.pause("rate_limited", 30)
    assert 29 < other.paused_for() <= 30
    assert 29 < other.try_acquire("live", "c") <= 30
    assert 29 < other.try_acquire("bulk", "c") <= 30


def test_redis_longer_pause_wins(redis: fakeredis.FakeRedis) -> None:
    """A shorter pause set later does not shorten a longer one."""
    limiter = RedisLimiter(redis, RateLimit(100, 1))
    limiter.pause("unauthorized", 120)
    limiter.pause("misrouted", 5)
    limiter.pause("unauthorized", 5)
    assert limiter.paused_for() > 100


def test_redis_pause_ends(redis: fakeredis.FakeRedis) -> None:
    """A short pause passes and calls flow again."""
    limiter = RedisLimiter(redis, RateLimit(100, 1))
    limiter.pause("rate_limited", 0.1)
    wait = limiter.try_acquire("live", "c")
    assert wait > 0
    sleep_past(wait)
    assert limiter.paused_for() == 0
    assert limiter.try_acquire("live", "c") == 0


def test_redis_clear_pause_lets_calls_through(redis: fakeredis.FakeRedis) -> None:
    """clear_pause lifts the pause at once and restarts the refusal count."""
    limiter = RedisLimiter(redis, RateLimit(100, 1))
    assert limiter.note_failure("unauthorized") == 1
    limiter.pause("unauthorized", 600)
    assert limiter.try_acquire("live", "c") > 0
    limiter.clear_pause("unauthorized")
    assert limiter.paused_for() == 0
    assert limiter.try_acquire("live", "c") == 0
    assert limiter.note_failure("unauthorized") == 1


def test_redis_failures_count_up_and_success_resets_them(redis: fakeredis.FakeRedis) -> None:
    """note_failure counts refusals in a row across workers; note_success starts them again."""
    limiter, other = RedisLimiter(redis, RateLimit(100, 1)), RedisLimiter(redis, RateLimit(100, 1))
    assert limiter.note_failure("unauthorized") == 1
    assert other.note_failure("unauthorized") == 2
    assert limiter.note_failure("misrouted") == 1
    other.note_success()
    assert limiter.note_failure("unauthorized") == 1
    assert limiter.note_failure("misrouted") == 1


def test_redis_window_full_for(redis: fakeredis.FakeRedis) -> None:
    """An empty window reports a whole window; a used one, no more than a window."""
    limit = RateLimit(2, 60)
    limiter = RedisLimiter(redis, limit)
    assert limit.per_seconds <= limiter.window_full_for() <= max_wait(limit)
    limiter.try_acquire("live", "c")
    assert 0 < limiter.window_full_for() <= max_wait(limit)


def test_redis_same_caller_twice_in_one_millisecond_counts_twice(
    redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every grant is counted, even two to the same caller within one Redis millisecond."""
    from fakeredis.commands_mixins import server_mixin

    class FrozenTime:
        """Redis's TIME stands still, as it does for calls inside one millisecond."""

        @staticmethod
        def time() -> float:
            return 1_750_000_000.0005

    monkeypatch.setattr(server_mixin, "time", FrozenTime)
    limiter = RedisLimiter(redis, RateLimit(2, 60))
    waits = [limiter.try_acquire("live", "worker-1") for _ in range(3)]
    assert waits[:2] == [0, 0]
    assert waits[2] > 0, f"a third call was granted against 2/60: {waits}"


def test_local_same_caller_twice_counts_twice() -> None:
    """LocalLimiter counts every grant, even repeated ones to one caller at the same instant."""
    limiter = LocalLimiter(RateLimit(2, 60), clock=Clock())
    waits = [limiter.try_acquire("live", "worker-1") for _ in range(3)]
    assert waits[:2] == [0, 0] and waits[2] > 0


# -- wait_for_slot ------------------------------------------------------------------------------


class CountingLimiter(LocalLimiter):
    """A LocalLimiter that counts how often it was asked."""

    asks = 0

    def try_acquire(self, lane: str, caller: str) -> float:
        self.asks += 1
        return super().try_acquire(lane, caller)


def test_wait_for_slot_gives_up_at_once_when_stopping() -> None:
    """A stopping worker asks once, finds no slot and returns (False, _) without waiting it out."""
    limiter = CountingLimiter(RateLimit(1, 3600), clock=Clock())
    assert limiter.try_acquire("live", "first") == 0
    stop = threading.Event()
    stop.set()
    granted, waited = wait_for_slot(limiter, "live", max_wait_seconds=3600, stop=stop)
    assert granted is False
    assert limiter.asks == 2  # the fill above, then one ask
    assert waited < 3600


def test_wait_for_slot_returns_a_free_slot() -> None:
    """With room in the budget a slot is granted, and it is counted."""
    limiter = LocalLimiter(RateLimit(1, 3600), clock=Clock())
    granted, _ = wait_for_slot(limiter, "bulk", max_wait_seconds=1, stop=threading.Event())
    assert granted is True
    assert limiter.try_acquire("bulk", "next") > 0


def test_wait_for_slot_gives_up_after_max_wait() -> None:
    """A slot that will not free within max_wait_seconds is not waited for."""
    limiter = LocalLimiter(RateLimit(1, 3600), clock=Clock())
    limiter.try_acquire("live", "first")
    granted, _ = wait_for_slot(limiter, "live", max_wait_seconds=0.05, stop=threading.Event())
    assert granted is False


def test_wait_for_slot_is_woken_by_stop() -> None:
    """Setting stop while a worker waits for a slot ends the wait with (False, _)."""
    limiter = LocalLimiter(RateLimit(1, 3600), clock=Clock())
    limiter.try_acquire("live", "first")
    stop = threading.Event()
    result: list[tuple[bool, float]] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            wait_for_slot(limiter, "live", max_wait_seconds=3600, stop=stop)
        )
    )
    waiter.start()
    stop.set()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert result and result[0][0] is False
