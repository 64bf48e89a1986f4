"""The shared call budget (SPEC.md, "Rate and lanes"): N calls in any W s, spread evenly, live
before bulk.

One contract, run against both limiters: `LocalLimiter` (one process, the demo) and
`RedisLimiter` (the fleet, on fakeredis with its Lua scripts), each on a clock the test moves by
hand (Redis's `TIME` included).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise

import fakeredis
import pytest

from fpcancel.pauses import AWAY_AFTER_SECONDS, PROBE_SECONDS
from fpcancel.ratelimit import (
    PACE_EARLY,
    LateCall,
    Limiter,
    LocalLimiter,
    RedisLimiter,
    Slot,
    pace_ms,
    wait_for_slot,
)
from fpcancel.settings import RateLimit
from fpcancel.statuses import PauseReason

# The window the limiter may keep beyond W for send-time jitter (SPEC: "a small margin").
MARGIN_SECONDS = 0.1


def max_wait(limit: RateLimit) -> float:
    return limit.per_seconds * 1.01 + MARGIN_SECONDS


class Clock:
    """A clock the test moves by hand; it starts at the real time, as Redis's would."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:  # what fakeredis asks for Redis's TIME
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeLimiter = Callable[[RateLimit], Limiter]


def grant(limiter: Limiter, clock: Clock, lane: str = "bulk", caller: str = "c") -> Slot:
    """Ask until granted, waiting (on the hand clock) as long as each answer says."""
    for _ in range(100):
        got = limiter.acquire(lane, caller)
        if isinstance(got, Slot):
            return got
        assert got > 0
        clock.advance(got)
    raise AssertionError("never granted")


def grant_times(limiter: Limiter, clock: Clock, calls: int) -> list[float]:
    """When each of `calls` calls in a row was granted, each asked as soon as allowed."""
    times = []
    for _ in range(calls):
        grant(limiter, clock)
        times.append(clock())
    return times


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def redis(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    from fakeredis.commands_mixins import server_mixin

    monkeypatch.setattr(server_mixin, "time", clock)
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.fixture(params=["local", "redis"])
def make_limiter(request: pytest.FixtureRequest, clock: Clock) -> MakeLimiter:
    if request.param == "local":
        return lambda limit: LocalLimiter(limit, clock=clock)
    redis = request.getfixturevalue("redis")
    return lambda limit: RedisLimiter(redis, limit)


# -- the contract, for both limiters ------------------------------------------------------------


def test_grants_at_most_n_in_a_window(make_limiter: MakeLimiter, clock: Clock) -> None:
    """Callers asking as soon as they may: never more than 4 grants in any 60 s against 4/60,
    and the fifth no later than a window (with its margin) after the first."""
    limit = RateLimit(4, 60)
    times = grant_times(make_limiter(limit), clock, 12)
    for first, fifth in zip(times, times[4:], strict=False):
        assert limit.per_seconds <= fifth - first <= max_wait(limit)


def test_calls_are_spread_evenly_not_sent_in_bursts(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """Ten callers asking at once against 10/1 s: one goes now, the others one pace apart
    (W/N with the margin), so the provider never gets a window's calls together; a full
    window's worth still takes one window."""
    limit = RateLimit(10, 1)
    limiter = make_limiter(limit)
    pace = pace_ms(limit) / 1000
    assert limiter.try_acquire("bulk", "a") == 0
    assert 0 < limiter.try_acquire("bulk", "b") <= pace * PACE_EARLY + 0.001
    times = grant_times(limiter, clock, 30)
    gaps = [b - a for a, b in pairwise(times)]
    assert min(gaps) >= pace * (1 - PACE_EARLY) - 0.001
    assert times[20] - times[10] == pytest.approx(10 * pace, abs=0.002)


def test_a_caller_a_little_late_loses_no_place(make_limiter: MakeLimiter, clock: Clock) -> None:
    """Calls have places one pace apart and may go half a pace early. A thread that wakes a
    little after that still goes, and the next call keeps its place: lateness does not add up
    into a slower pace."""
    limit = RateLimit(10, 1)
    limiter = make_limiter(limit)
    pace = pace_ms(limit) / 1000
    times = grant_times(limiter, clock, 3)  # places 0, 1, 2 paces; granted at 0, 0.5, 1.5
    assert times[2] - times[0] == pytest.approx(1.5 * pace, abs=0.002)
    clock.advance(1.3 * pace)  # the fourth's place is 3 paces: it may go from 2.5; it asks at 2.8
    assert limiter.try_acquire("bulk", "late") == 0
    following = grant_times(limiter, clock, 1)[0]
    assert following - times[0] == pytest.approx(3.5 * pace, abs=0.002)  # place 4, half early


def test_a_call_after_a_quiet_spell_goes_at_once(make_limiter: MakeLimiter, clock: Clock) -> None:
    """The pace holds calls apart; it does not hold a customer back after a quiet minute."""
    limiter = make_limiter(RateLimit(4, 60))
    grant_times(limiter, clock, 2)
    clock.advance(61)
    assert limiter.try_acquire("live", "customer") == 0


def test_grants_resume_once_the_wait_has_passed(make_limiter: MakeLimiter, clock: Clock) -> None:
    """After the returned wait, the next call is granted (and not a moment before)."""
    limit = RateLimit(3, 10)
    limiter = make_limiter(limit)
    grant_times(limiter, clock, 3)
    wait = limiter.try_acquire("live", "late")
    assert 0 < wait <= max_wait(limit)
    clock.advance(wait - 0.01)
    assert limiter.try_acquire("live", "late") > 0
    clock.advance(0.02)
    assert limiter.try_acquire("live", "late") == 0
    assert limiter.try_acquire("live", "later") > 0  # the next call's place is a pace away


def test_never_exceeds_n_in_any_window_over_a_long_run(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """Callers asking every 50 ms for a minute never get more than N starts in any W."""
    limit = RateLimit(5, 2)
    limiter = make_limiter(limit)
    starts: list[float] = []
    for i in range(1200):
        if limiter.try_acquire("bulk" if i % 3 else "live", f"c{i % 7}") == 0:
            starts.append(clock())
        clock.advance(0.05)
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + limit.per_seconds]
        assert len(in_window) <= limit.calls
    assert len(starts) >= 100  # and it does keep granting


def test_bulk_is_refused_while_a_live_caller_waits(make_limiter: MakeLimiter, clock: Clock) -> None:
    """A customer waiting for a slot holds bulk back, and takes the next free slot itself."""
    limiter = make_limiter(RateLimit(2, 2))
    grant(limiter, clock, "bulk", "b1")
    grant(limiter, clock, "bulk", "b2")
    live_wait = limiter.try_acquire("live", "customer")
    assert live_wait > 0
    assert limiter.try_acquire("bulk", "b3") > 0
    clock.advance(live_wait)
    assert limiter.try_acquire("bulk", "b3") > 0, "bulk took the slot a customer was waiting for"
    assert limiter.try_acquire("live", "customer") == 0
    grant(limiter, clock, "bulk", "b3")  # with no customer waiting, bulk goes on


def test_live_keeps_its_place_through_a_wait_longer_than_3_seconds(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """A customer told to wait 10 s and coming back then still gets the slot ahead of bulk."""
    limiter = make_limiter(RateLimit(2, 10))
    grant(limiter, clock, "bulk", "b1")
    grant(limiter, clock, "bulk", "b2")
    live_wait = limiter.try_acquire("live", "customer")
    assert live_wait > 0
    clock.advance(live_wait)
    assert limiter.try_acquire("bulk", "b3") > 0, "bulk took the slot a customer was waiting for"
    assert limiter.try_acquire("live", "customer") == 0
    grant(limiter, clock, "bulk", "b3")


def test_bulk_is_not_held_back_by_a_waiter_that_went_away(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """A live caller that stopped asking (its worker died) stops blocking bulk after a few s."""
    limiter = make_limiter(RateLimit(1, 1))
    assert limiter.try_acquire("bulk", "b1") == 0
    assert limiter.try_acquire("live", "ghost") > 0
    clock.advance(10)
    assert limiter.try_acquire("bulk", "b2") == 0


def test_a_pause_refuses_every_caller_until_it_ends(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """pause() makes every try_acquire wait for the pause, and paused_for() reports it."""
    limiter = make_limiter(RateLimit(100, 1))
    limiter.pause(PauseReason.RATE_LIMITED, 7)
    assert limiter.paused_for() == pytest.approx(7, abs=0.01)
    assert limiter.try_acquire("live", "c") == pytest.approx(7, abs=0.01)
    assert limiter.try_acquire("bulk", "c") == pytest.approx(7, abs=0.01)
    clock.advance(7.01)
    assert limiter.paused_for() == 0
    assert limiter.try_acquire("live", "c") == 0


def test_a_shorter_pause_does_not_cut_a_longer_one(make_limiter: MakeLimiter) -> None:
    """When workers pause for different times, and for different setup faults, the longer stands."""
    limiter = make_limiter(RateLimit(100, 1))
    limiter.pause(PauseReason.UNAUTHORIZED, 120)
    limiter.pause(PauseReason.MISROUTED, 5)
    limiter.pause(PauseReason.UNAUTHORIZED, 5)
    assert limiter.paused_for() > 100


def test_clear_pause_lets_calls_through_again(make_limiter: MakeLimiter) -> None:
    """clear_pause (a new token was set) lifts the pause at once and restarts the count."""
    limiter = make_limiter(RateLimit(100, 1))
    assert limiter.note_failure(PauseReason.UNAUTHORIZED) == 1
    limiter.pause(PauseReason.UNAUTHORIZED, 600)
    assert limiter.try_acquire("live", "c") > 0
    limiter.clear_pause(PauseReason.UNAUTHORIZED)
    assert limiter.paused_for() == 0
    assert limiter.try_acquire("live", "c") == 0
    assert limiter.note_failure(PauseReason.UNAUTHORIZED) == 1


def test_failures_count_up_and_success_resets_them(make_limiter: MakeLimiter) -> None:
    """note_failure counts refusals in a row per reason; a call that goes through resets them."""
    limiter = make_limiter(RateLimit(100, 1))
    assert [limiter.note_failure(PauseReason.UNAUTHORIZED) for _ in range(3)] == [1, 2, 3]
    assert limiter.note_failure(PauseReason.MISROUTED) == 1
    limiter.note_success()
    assert limiter.note_failure(PauseReason.UNAUTHORIZED) == 1
    assert limiter.note_failure(PauseReason.MISROUTED) == 1


def test_window_full_for(make_limiter: MakeLimiter, clock: Clock) -> None:
    """An empty window reports a whole window; a used one, the time until its oldest call frees."""
    limit = RateLimit(2, 10)
    limiter = make_limiter(limit)
    assert limit.per_seconds <= limiter.window_full_for() <= max_wait(limit)
    limiter.try_acquire("live", "c")
    clock.advance(4)
    assert limit.per_seconds - 4 <= limiter.window_full_for() <= max_wait(limit) - 4


def test_the_same_caller_twice_at_one_instant_counts_twice(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """Every grant is counted, even two to the same caller within one (Redis) millisecond."""
    limit = RateLimit(2, 60)
    limiter = make_limiter(limit)
    early = pace_ms(limit) / 1000 * PACE_EARLY + 0.002  # Redis's clock counts whole ms
    assert limiter.try_acquire("live", "worker-1") == 0
    clock.advance(early)
    assert limiter.try_acquire("live", "worker-1") == 0
    clock.advance(2 * early)
    assert limiter.try_acquire("live", "worker-1") > 0  # its place has come; the window is full


@pytest.mark.parametrize("moved_by", ["left_late", "the next ask"])
def test_a_call_that_left_late_frees_its_slot_late(
    make_limiter: MakeLimiter, clock: Clock, moved_by: str
) -> None:
    """A window's first call left 300 ms after its grant (a cold connection): the provider's
    window opened then, so the slot frees 300 ms later than its grant alone would say; the same
    whether the stamp moves on its own or with the thread's next ask (refused: the window is
    full)."""
    limit = RateLimit(1, 1)
    limiter = make_limiter(limit)
    slot = limiter.acquire("bulk", "c")
    assert isinstance(slot, Slot)
    if moved_by == "left_late":
        limiter.left_late(slot, 0.3)
    else:
        assert not isinstance(limiter.acquire("bulk", "c", LateCall(slot, 0.3)), Slot)
    clock.advance(max_wait(limit) - 0.09)  # past the grant's window, not past the send's
    assert limiter.try_acquire("bulk", "c") > 0
    clock.advance(0.3)
    assert limiter.try_acquire("bulk", "c") == 0


def test_the_provider_s_countdown_says_when_its_window_ends(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """The provider said none remain while our window had room (someone else spends on the
    token): the fleet waits for the provider's window to end, placed by its countdown, not a
    whole window from now."""
    limit = RateLimit(10, 60)
    limiter = make_limiter(limit)
    assert limiter.window_full_for() >= 60  # nothing known: a whole window, to be safe
    slot = limiter.acquire("bulk", "c")
    assert isinstance(slot, Slot)
    limiter.saw_remaining(slot.stamp_ms, 9)  # N-1: this call opened the provider's window
    clock.advance(20)
    later = limiter.acquire("bulk", "d")
    assert isinstance(later, Slot)
    limiter.saw_remaining(later.stamp_ms, 0)  # none left, though our own window has room
    clock.advance(25)
    assert 14 < limiter.window_full_for() <= max_wait(limit) - 45
    clock.advance(20)  # the provider's window has ended: a new one is seen when counts go up
    third = limiter.acquire("bulk", "e")
    assert isinstance(third, Slot)
    limiter.saw_remaining(third.stamp_ms, 9)
    assert limiter.window_full_for() > 59


def test_a_provider_away_pauses_everyone_but_one_probe_at_a_time(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """Three calls that found no provider, and none through for a while: every caller waits;
    one probe goes every PROBE_SECONDS; the first call through ends it."""
    limiter = make_limiter(RateLimit(100, 1))
    clock.advance(AWAY_AFTER_SECONDS + 1)
    assert [limiter.note_trouble() for _ in range(3)] == [False, False, True]
    assert limiter.paused_for() == pytest.approx(PROBE_SECONDS, abs=0.05)
    assert limiter.try_acquire("live", "a") > 0
    clock.advance(PROBE_SECONDS)
    assert isinstance(limiter.acquire("bulk", "probe"), Slot)  # the probe
    assert limiter.try_acquire("live", "b") > 0  # and only it
    assert limiter.note_trouble() is True  # it found nobody: the next in PROBE_SECONDS
    clock.advance(PROBE_SECONDS)
    assert isinstance(limiter.acquire("bulk", "probe"), Slot)
    limiter.note_success()  # it went through: everyone goes on
    assert limiter.paused_for() == 0
    grant(limiter, clock, "live", "b")
    assert [p.kind for p in limiter.active_pauses()] == []


def test_troubles_between_successes_are_not_an_outage(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """Calls that fail now and then among calls that go through never pause the fleet."""
    limiter = make_limiter(RateLimit(100, 1))
    for _ in range(20):
        assert limiter.note_trouble() is False
        clock.advance(0.3)
        limiter.note_success()
        clock.advance(0.3)
    assert limiter.paused_for() == 0


# -- what only the fleet's limiter does ---------------------------------------------------------


def test_the_budget_is_shared_by_every_worker(redis: fakeredis.FakeRedis, clock: Clock) -> None:
    """Two limiters (two worker hosts) on the same Redis share one budget, one pace and one
    pause."""
    limit = RateLimit(3, 60)
    a, b = RedisLimiter(redis, limit), RedisLimiter(redis, limit)
    assert a.try_acquire("bulk", "a") == 0
    assert b.try_acquire("bulk", "b") > 0  # a pace after a's call
    times = [clock()]
    for lim in [b, a, b]:
        grant(lim, clock)
        times.append(clock())
    assert times[3] - times[0] >= limit.per_seconds  # the fourth waited for the first to leave
    a.pause(PauseReason.RATE_LIMITED, 30)
    assert 29 < b.paused_for() <= 30
    assert a.note_failure(PauseReason.UNAUTHORIZED) == 1
    assert b.note_failure(PauseReason.UNAUTHORIZED) == 2


def test_namespaces_keep_budgets_apart(redis: fakeredis.FakeRedis) -> None:
    """A limiter in another namespace (another token) has its own budget."""
    limit = RateLimit(1, 60)
    assert RedisLimiter(redis, limit, namespace="a").try_acquire("live", "c") == 0
    assert RedisLimiter(redis, limit, namespace="b").try_acquire("live", "c") == 0
    assert RedisLimiter(redis, limit, namespace="a").try_acquire("live", "c") > 0


# -- wait_for_slot ------------------------------------------------------------------------------


class CountingLimiter(LocalLimiter):
    """A LocalLimiter that counts how often it was asked."""

    asks = 0

    def acquire(self, lane: str, caller: str, late: LateCall | None = None) -> Slot | float:
        self.asks += 1
        return super().acquire(lane, caller, late)


def test_wait_for_slot_gives_up_at_once_when_stopping() -> None:
    """A stopping worker asks once, finds no slot and returns (False, _) without waiting it out."""
    limiter = CountingLimiter(RateLimit(1, 3600), clock=Clock())
    assert limiter.try_acquire("live", "first") == 0
    stop = threading.Event()
    stop.set()
    granted, waited = wait_for_slot(limiter, "live", max_wait_seconds=3600, stop=stop)
    assert granted is None
    assert limiter.asks == 2  # the fill above, then one ask
    assert waited < 3600


def test_wait_for_slot_returns_a_free_slot() -> None:
    """With room in the budget a slot is granted, and it is counted."""
    limiter = LocalLimiter(RateLimit(1, 3600), clock=Clock())
    granted, _ = wait_for_slot(limiter, "bulk", max_wait_seconds=1, stop=threading.Event())
    assert isinstance(granted, Slot)
    assert limiter.try_acquire("bulk", "next") > 0


def test_wait_for_slot_gives_up_after_max_wait() -> None:
    """A slot that will not free within max_wait_seconds is not waited for."""
    limiter = LocalLimiter(RateLimit(1, 3600), clock=Clock())
    limiter.try_acquire("live", "first")
    granted, _ = wait_for_slot(limiter, "live", max_wait_seconds=0.05, stop=threading.Event())
    assert granted is None


def test_wait_for_slot_is_woken_by_stop() -> None:
    """Setting stop while a worker waits for a slot ends the wait with (False, _)."""
    limiter = LocalLimiter(RateLimit(1, 3600), clock=Clock())
    limiter.try_acquire("live", "first")
    stop = threading.Event()
    result: list[tuple[Slot | None, float]] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            wait_for_slot(limiter, "live", max_wait_seconds=3600, stop=stop)
        )
    )
    waiter.start()
    stop.set()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert result and result[0][0] is None
