"""The provider's call budget, shared by every worker on every host through Redis.

Promise (SPEC.md, "Rate and lanes"): no more than N calls start in any W seconds, status checks
included. The limiter keeps a sliding log of call start times in a Redis sorted set, stamped with
Redis's own clock so that hosts' clocks do not matter, and grants or refuses a call in one Lua
script. The window it keeps is W plus a small margin (0.5 % + 25 ms), so that the jitter between
our stamp and the provider's arrival time cannot make the provider see N+1 calls in its W.

Lanes: a `live` caller that has to wait registers itself; while one waits, `bulk` callers are
refused, so customers take the next free slot. Bulk gets every slot that no customer is waiting
for, so it is never starved for good.

Pauses: a 429, a refused token or a wrong URL pauses every worker's calls (`pause`); the
limiter refuses until the pause has passed.
"""

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from fpcancel.settings import RateLimit
from fpcancel.statuses import SETUP_FAULTS, PauseReason


def _pause_key(reason: PauseReason) -> str:
    """Setup faults share one pause (it grows while any of them lasts); the rate has its own."""
    return "setup" if reason in SETUP_FAULTS else "rate"


@dataclass(frozen=True)
class ActivePause:
    """A pause in force (read only, for the dashboard): `rate` or `setup`, seconds left, and
    the reasons counted in a row for it (a setup pause covers unauthorized, misrouted, not_sent)."""

    kind: str
    seconds_left: float
    reasons: tuple[str, ...]


PREFIX = "fpcancel:rate:"
# A live waiter that stops asking (its worker died) stops holding bulk back after this long;
# waiters ask again at least every ASK_AGAIN_SECONDS, so a live one never loses its place.
LIVE_WAITER_TTL_MS = 3000
ASK_AGAIN_SECONDS = 1.0


def window_with_margin_ms(limit: RateLimit) -> int:
    """W plus 0.5 % and 25 ms: room for the jitter between our stamp and the provider's arrival
    time (a thread switch, a send), costing ~1.7 % of the budget at 20/2 and 0.5 % at 240/60."""
    return int(limit.per_seconds * 1000 * 1.005) + 25


class Limiter(Protocol):
    def try_acquire(self, lane: str, caller: str) -> float:
        """0 when a call may start now (and it is counted); else seconds to wait first."""

    def pause(self, reason: PauseReason, seconds: float) -> None:
        """Stop every worker's calls for `seconds` (a longer pause already set wins)."""

    def paused_for(self) -> float:
        """Seconds until calls may start again (0 when not paused)."""

    def window_full_for(self) -> float:
        """The provider said none remain: seconds until our own window frees a slot, or a
        whole window when ours has room (the budget is shared with someone else)."""

    def clear_pause(self, reason: PauseReason) -> None: ...

    def note_failure(self, reason: PauseReason) -> int:
        """Count one more refusal in a row for `reason`; returns the count."""

    def note_success(self) -> None:
        """A call went through: the refusal counts start again."""


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lane = ARGV[3]
local caller = ARGV[4]
local waiter_ttl = tonumber(ARGV[5])
local nonce = ARGV[6]
local paused = 0
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  local untill = tonumber(redis.call('GET', key) or '0')
  if untill - now > paused then paused = untill - now end
end
if paused > 0 then return paused end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if lane ~= 'live' and redis.call('ZCARD', KEYS[4]) > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then return math.max(1, tonumber(oldest[2]) + window - now) end
  return 20
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, nonce)
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('ZREM', KEYS[4], caller)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = math.max(1, tonumber(oldest[2]) + window - now)
if lane == 'live' then
  -- Held until the slot it waits for has freed, and a little after, so it keeps its place.
  redis.call('ZADD', KEYS[4], now + wait + waiter_ttl, caller)
  redis.call('PEXPIRE', KEYS[4], wait + waiter_ttl)
end
return wait
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untill = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untill > current then
  redis.call('SET', KEYS[1], untill, 'PX', tonumber(ARGV[1]) + 1000)
end
return untill - now
"""

_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = 0
for _, key in ipairs(KEYS) do
  local untill = tonumber(redis.call('GET', key) or '0')
  if untill - now > paused then paused = untill - now end
end
return paused
"""

_WINDOW_FULL_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] == nil then return window end
return math.max(0, tonumber(oldest[2]) + window - now)
"""


class RedisLimiter:
    """The fleet-wide limiter; every method is one round trip to Redis."""

    def __init__(self, redis: Redis, limit: RateLimit, *, namespace: str = "fpcancel") -> None:
        self._redis = redis
        self._limit = limit
        self._window_ms = window_with_margin_ms(limit)
        base = f"{PREFIX}{namespace}:"
        self._calls_key = base + "calls"
        self._waiters_key = base + "live-waiters"
        self._pause_prefix = base + "pause:"
        self._failures_key = base + "failures:"
        self._success_noted_at = -1e9
        self._acquire = redis.register_script(_ACQUIRE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)
        self._window_full_for = redis.register_script(_WINDOW_FULL_FOR)

    def try_acquire(self, lane: str, caller: str) -> float:
        keys = [
            self._calls_key,
            self._pause_prefix + "rate",
            self._pause_prefix + "setup",
            self._waiters_key,
        ]
        args: list[str | int] = [
            self._limit.calls,
            self._window_ms,
            lane,
            caller,
            LIVE_WAITER_TTL_MS,
            uuid.uuid4().hex,
        ]
        return int(self._acquire(keys=keys, args=args)) / 1000

    def pause(self, reason: PauseReason, seconds: float) -> None:
        key = self._pause_prefix + _pause_key(reason)
        self._pause(keys=[key], args=[max(1, int(seconds * 1000))])

    def paused_for(self) -> float:
        keys = [self._pause_prefix + "rate", self._pause_prefix + "setup"]
        return int(self._paused_for(keys=keys)) / 1000

    def window_full_for(self) -> float:
        args = [self._limit.calls, self._window_ms]
        return int(self._window_full_for(keys=[self._calls_key], args=args)) / 1000

    def clear_pause(self, reason: PauseReason) -> None:
        self._redis.delete(
            self._pause_prefix + _pause_key(reason), self._failures_key + reason.value
        )

    def note_failure(self, reason: PauseReason) -> int:
        key = self._failures_key + reason.value
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 3600)
        count, _ = pipe.execute()
        return int(count)

    def note_success(self) -> None:
        # Every call that goes through says so, but one reset a second per process is plenty:
        # a setup fault's count only has to start again once the setup works.
        now = time.monotonic()
        if now - self._success_noted_at < 1.0:
            return
        self._success_noted_at = now
        self._redis.delete(*(self._failures_key + r.value for r in SETUP_FAULTS))

    def active_pauses(self) -> list[ActivePause]:
        """Read only: the pauses in force now and why, in one round trip."""
        kinds = ("rate", "setup")
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        for kind in kinds:
            pipe.get(self._pause_prefix + kind)
        for reason in PauseReason:
            pipe.get(self._failures_key + reason.value)
        (seconds, micros), *values = pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        untils, counts = values[: len(kinds)], values[len(kinds) :]
        failing = {r for r, n in zip(PauseReason, counts, strict=True) if int(n or 0) > 0}
        return _active(kinds, [(int(u or 0) - now_ms) / 1000 for u in untils], failing)


class LocalLimiter:
    """The same promise inside one process, for the embedded demo (memory broker, no Redis)."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window_with_margin_ms(limit) / 1000
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: deque[float] = deque()
        self._live_waiters: dict[str, float] = {}
        self._paused_until: dict[str, float] = {}
        self._failures: dict[PauseReason, int] = {}

    def try_acquire(self, lane: str, caller: str) -> float:
        with self._lock:
            now = self._clock()
            paused = max([u - now for u in self._paused_until.values()] + [0.0])
            if paused > 0:
                return paused
            while self._calls and self._calls[0] <= now - self._window:
                self._calls.popleft()
            self._live_waiters = {c: t for c, t in self._live_waiters.items() if t > now}
            next_free = (self._calls[0] + self._window - now) if self._calls else 0.02
            if lane != "live" and self._live_waiters:
                return max(0.001, next_free)
            if len(self._calls) < self._limit.calls:
                self._calls.append(now)
                self._live_waiters.pop(caller, None)
                return 0.0
            wait = max(0.001, next_free)
            if lane == "live":
                self._live_waiters[caller] = now + wait + LIVE_WAITER_TTL_MS / 1000
            return wait

    def pause(self, reason: PauseReason, seconds: float) -> None:
        with self._lock:
            key = _pause_key(reason)
            until = self._clock() + seconds
            self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)

    def paused_for(self) -> float:
        with self._lock:
            now = self._clock()
            return max([u - now for u in self._paused_until.values()] + [0.0])

    def window_full_for(self) -> float:
        with self._lock:
            now = self._clock()
            while self._calls and self._calls[0] <= now - self._window:
                self._calls.popleft()
            return (self._calls[0] + self._window - now) if self._calls else self._window

    def clear_pause(self, reason: PauseReason) -> None:
        with self._lock:
            self._paused_until.pop(_pause_key(reason), None)
            self._failures.pop(reason, None)

    def note_failure(self, reason: PauseReason) -> int:
        with self._lock:
            self._failures[reason] = self._failures.get(reason, 0) + 1
            return self._failures[reason]

    def note_success(self) -> None:
        with self._lock:
            for reason in SETUP_FAULTS:
                self._failures.pop(reason, None)

    def active_pauses(self) -> list[ActivePause]:
        with self._lock:
            now = self._clock()
            kinds = ("rate", "setup")
            left = [self._paused_until.get(kind, 0.0) - now for kind in kinds]
            return _active(kinds, left, {r for r, n in self._failures.items() if n > 0})


def _active(
    kinds: tuple[str, ...], seconds_left: list[float], failing: set[PauseReason]
) -> list[ActivePause]:
    """The pauses with time left; a setup pause names the setup faults counted in a row."""
    found = []
    for kind, left in zip(kinds, seconds_left, strict=True):
        if left <= 0:
            continue
        reasons = [r.value for r in PauseReason if _pause_key(r) == kind and r in failing]
        if kind == "rate":
            reasons = [PauseReason.RATE_LIMITED.value]
        found.append(ActivePause(kind, round(left, 1), tuple(reasons)))
    return found


def wait_for_slot(
    limiter: Limiter,
    lane: str,
    *,
    max_wait_seconds: float,
    stop: threading.Event,
    caller: str | None = None,
) -> tuple[bool, float]:
    """Wait (without holding anything but the job's claim) until a call may start.

    Returns (granted, seconds waited). Gives up after `max_wait_seconds`, or as soon as `stop`
    is set (the worker is shutting down), so the job can go back untouched.
    """
    caller = caller or uuid.uuid4().hex
    started = time.monotonic()
    while True:
        wait = limiter.try_acquire(lane, caller)
        waited = time.monotonic() - started
        if wait <= 0:
            return True, waited
        remaining = max_wait_seconds - waited
        if remaining <= 0 or stop.is_set():
            return False, waited
        if stop.wait(min(wait, remaining, ASK_AGAIN_SECONDS)):
            return False, time.monotonic() - started
