"""The provider's call budget, shared by every worker on every host through Redis.

Promise (SPEC.md, "Rate and lanes"): no more than N calls start in any W seconds, status checks
included. The limiter keeps a log of call start times in a Redis sorted set, stamped with Redis's
own clock so that hosts' clocks do not matter, and grants or refuses a call in one Lua script. Its
window is W plus a small margin (0.2 % + 10 ms) for the jitter between a call leaving and its
arrival at the provider.

Pace: the fleet's calls are spread evenly, one every W/N (with the margin), never in bursts of
N. A grant may come at most half a pace before its place (`PACE_EARLY`), so a thread that wakes
a little late loses nothing, and a call after an idle spell goes at once. A burst of N calls
at the start of every window would reach the provider together and be queued there: those
queued last arrive late, and a late arrival lands among the next window's calls. Spread, each
call arrives alone, and the next window's first call follows the last one by a whole pace.
Throughput is the same: N calls every W.

Following the provider's window (Laravel's: a fixed window that opens at the first call arriving
after the last one ended, `frontpayment-api.md`):

- A call that leaves late (a cold connection's handshake, a thread descheduled or a garbage
  collection between asking for its slot and its bytes reaching the socket) moves its stamp to
  when it really left: the window it may open at the provider opens late, and ours follows, so
  the next window's calls never land in it. The move rides on the thread's next `acquire` when
  one follows at once (a batch's next call: no extra round trip), else it is `left_late`.
- Every answer's `x-ratelimit-remaining` places its call in one of the provider's windows
  (`saw_remaining`): a count that goes up means a new window began. The provider's window opened
  no later than the first call we saw in it arrived, so when the provider says none remain, the
  fleet waits until one window after that call (exact when it answered N-1: it opened the
  window), not a whole window from now (`window_full_for`).

Lanes: a `live` caller that has to wait registers itself; while one waits, `bulk` callers are
refused, so customers take the next free slot. Bulk gets every slot that no customer is waiting
for, so it is never starved for good.

Pauses: a 429, a refused token or a wrong URL pauses every worker's calls (`pause`). When the
provider as a whole is away (`note_trouble`: connections refused, no answers, proxy pages, and no
call through for a while; the rule is `fpcancel.pauses.provider_away`), every worker stops and
the limiter grants one probe call every `PROBE_SECONDS`; the first call that goes through
(`note_success`) ends it.
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from fpcancel.pauses import AWAY_AFTER_SECONDS, AWAY_AFTER_TROUBLES, PROBE_SECONDS
from fpcancel.settings import RateLimit
from fpcancel.statuses import SETUP_FAULTS, PauseReason

PREFIX = "fpcancel:rate:"
# A live waiter that stops asking (its worker died) stops holding bulk back after this long;
# waiters ask again at least every ASK_AGAIN_SECONDS, so a live one never loses its place.
LIVE_WAITER_TTL_MS = 3000
ASK_AGAIN_SECONDS = 1.0
# A wait this long is a pause, not the pace: worth writing down what was done before it.
LONG_WAIT_SECONDS = 1.0
# A call that leaves more than this after its grant has its stamp moved.
LATE_SECONDS = 0.002
# A call may be granted this share of a pace before its place in the pace.
PACE_EARLY = 0.5
# Successes are told to Redis at most this often per process: they only restart counts.
SUCCESS_NOTE_SECONDS = 0.5
PAUSE_KINDS = ("rate", "setup", "away")


def _pause_key(reason: PauseReason) -> str:
    """Setup faults share one pause (it grows while any of them lasts); the rate and the
    provider's absence have their own."""
    if reason is PauseReason.PROVIDER_AWAY:
        return "away"
    return "setup" if reason in SETUP_FAULTS else "rate"


def window_with_margin_ms(limit: RateLimit) -> int:
    """W plus 0.2 % and 10 ms: room for the jitter between a call leaving and its arrival at the
    provider (calls that leave late are re-stamped, so this covers the network alone); costs
    1.2 % of the budget at 10/1 s and 0.2 % at 240/60."""
    return int(limit.per_seconds * 1000 * 1.002) + 10


def pace_ms(limit: RateLimit) -> float:
    """The fleet's calls are this far apart: the window (with its margin) over N."""
    return window_with_margin_ms(limit) / limit.calls


@dataclass(frozen=True)
class Slot:
    """A granted call: its entry in the fleet's log, when it was stamped (the limiter's clock,
    milliseconds), and `asked_at`, this process's `perf_counter()` as it asked for the slot (the
    stamp is no earlier): how late the call leaves is counted from there, so a pause between
    the grant and the send (the answer's way back from Redis, a garbage collection) counts."""

    member: str
    stamp_ms: float
    asked_at: float


@dataclass(frozen=True)
class LateCall:
    """The call of `slot` left `late_seconds` after it asked for its slot: its stamp moves by
    that much."""

    slot: Slot
    late_seconds: float

    @property
    def stamp_ms(self) -> int:
        """When it really left, on the limiter's clock."""
        return int(self.slot.stamp_ms + self.late_seconds * 1000)


@dataclass(frozen=True)
class ActivePause:
    """A pause in force (read only, for the dashboard): `rate`, `setup` or `away`, seconds
    left, and the reasons behind it (a setup pause covers unauthorized, misrouted, not_sent)."""

    kind: str
    seconds_left: float
    reasons: tuple[str, ...]


class Limiter(Protocol):
    def acquire(self, lane: str, caller: str, late: LateCall | None = None) -> Slot | float:
        """A `Slot` when a call may start now (and it is counted); else seconds to wait.
        `late` (the caller's previous call left late) is moved first, as `left_late` would."""

    def try_acquire(self, lane: str, caller: str) -> float:
        """`acquire`, as 0 when granted."""

    def left_late(self, slot: Slot, late_seconds: float) -> None:
        """The call of `slot` left `late_seconds` after it was asked for: move its stamp."""

    def saw_remaining(self, stamp_ms: float, remaining: int) -> None:
        """The call stamped `stamp_ms` (after any re-stamp) was answered `remaining` calls left in
        the provider's window."""

    def pause(self, reason: PauseReason, seconds: float) -> None:
        """Stop every worker's calls for `seconds` (a longer pause already set wins)."""

    def paused_for(self) -> float:
        """Seconds until calls may start again (0 when not paused)."""

    def window_full_for(self) -> float:
        """The provider said none remain: seconds until its window ends, as far as its countdown
        told us where it opened; else until our own window frees a slot, or a whole window when
        ours has room (the budget is shared with someone else)."""

    def clear_pause(self, reason: PauseReason) -> None: ...

    def note_failure(self, reason: PauseReason) -> int:
        """Count one more refusal in a row for `reason`; returns the count."""

    def note_success(self) -> None:
        """A call went through: refusal and trouble counts start again, a provider thought away
        is back."""

    def note_trouble(self) -> bool:
        """A call found no provider (see `fpcancel.pauses.provider_trouble`); returns whether the
        provider is now taken as away (every worker pauses, one probe at a time)."""

    def active_pauses(self) -> list[ActivePause]:
        """Read only: the pauses in force now and why."""


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: calls, pause:rate, pause:setup, live waiters, pause:away, away flag, next call's place
# ARGV: limit, window ms, lane, caller, waiter ttl ms, nonce, probe ms, pace ms, early ms,
#       a late call's member ('' for none), its new stamp ms
# Returns {wait ms, stamp ms}: wait 0 and the stamp when granted.
_ACQUIRE = (
    _NOW
    + """
if ARGV[10] ~= '' then
  -- The caller's previous call left late: its stamp moves first (as _LEFT_LATE).
  redis.call('ZADD', KEYS[1], tonumber(ARGV[11]), ARGV[10])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lane = ARGV[3]
local caller = ARGV[4]
local waiter_ttl = tonumber(ARGV[5])
local nonce = ARGV[6]
local probe = tonumber(ARGV[7])
local pace = tonumber(ARGV[8])
local early = tonumber(ARGV[9])
local paused = 0
for _, key in ipairs({KEYS[2], KEYS[3], KEYS[5]}) do
  local untill = tonumber(redis.call('GET', key) or '0')
  if untill - now > paused then paused = untill - now end
end
if paused > 0 then return {paused, 0} end
local away = redis.call('GET', KEYS[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local place = tonumber(redis.call('GET', KEYS[7]) or '0')
local wait = math.max(0, place - early - now)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + window - now)
end
if lane ~= 'live' and redis.call('ZCARD', KEYS[4]) > 0 and not away then
  -- A customer waits for the next call: bulk asks again after it.
  return {math.max(1, math.ceil(wait + pace)), 0}
end
if wait <= 0 then
  redis.call('ZADD', KEYS[1], now, nonce)
  redis.call('PEXPIRE', KEYS[1], window * 2)
  redis.call('SET', KEYS[7], math.max(place, now) + pace, 'PX', window * 2)
  redis.call('ZREM', KEYS[4], caller)
  if away then
    -- The provider is away: this call is the probe; the next may go in `probe` ms.
    redis.call('SET', KEYS[5], now + probe, 'PX', probe + 3600000)
  end
  return {0, now}
end
wait = math.max(1, math.ceil(wait))
if lane == 'live' then
  -- Held until the call it waits for may go, and a little after, so it keeps its place.
  redis.call('ZADD', KEYS[4], now + wait + waiter_ttl, caller)
  redis.call('PEXPIRE', KEYS[4], wait + waiter_ttl)
end
return {wait, 0}
"""
)

# KEYS: calls; ARGV: member, new stamp ms, window ms
_LEFT_LATE = """
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 0
"""

# KEYS: first seen in the window, last remaining, last stamp; ARGV: stamp ms, remaining, window
# The first call we know of in the provider's current window: a new one when the count went up
# for a later call (answers come in any order), or when the one we knew of is a window old.
_SAW_REMAINING = """
local stamp = tonumber(ARGV[1])
local remaining = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local first = tonumber(redis.call('GET', KEYS[1]) or '-1')
local last_remaining = tonumber(redis.call('GET', KEYS[2]) or '-1')
local last_stamp = tonumber(redis.call('GET', KEYS[3]) or '-1')
local new_window = first < 0 or stamp - first >= window
  or (stamp > last_stamp and remaining > last_remaining)
if new_window or stamp < first then
  redis.call('SET', KEYS[1], stamp, 'PX', window * 2)
end
if stamp >= last_stamp then
  redis.call('SET', KEYS[2], remaining, 'PX', window * 2)
  redis.call('SET', KEYS[3], stamp, 'PX', window * 2)
end
return 0
"""

_PAUSE = (
    _NOW
    + """
local untill = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untill > current then
  redis.call('SET', KEYS[1], untill, 'PX', tonumber(ARGV[1]) + 1000)
end
return untill - now
"""
)

_PAUSED_FOR = (
    _NOW
    + """
local paused = 0
for _, key in ipairs(KEYS) do
  local untill = tonumber(redis.call('GET', key) or '0')
  if untill - now > paused then paused = untill - now end
end
return paused
"""
)

# KEYS: calls, window opened; ARGV: window ms
_WINDOW_FULL_FOR = (
    _NOW
    + """
local window = tonumber(ARGV[1])
local opened = tonumber(redis.call('GET', KEYS[2]) or '0')
if opened + window > now then return opened + window - now end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] == nil then return window end
return math.max(0, tonumber(oldest[2]) + window - now)
"""
)

# KEYS: troubles, trouble since, last success, away flag, pause:away
# ARGV: troubles to be away, ms without success to be away, probe ms
_NOTE_TROUBLE = (
    _NOW
    + """
local last_ok = tonumber(redis.call('GET', KEYS[3]) or '0')
local since = tonumber(redis.call('GET', KEYS[2]) or '0')
if since == 0 or since <= last_ok then
  -- A call went through since the troubles began: count from here.
  redis.call('SET', KEYS[2], now, 'PX', 3600000)
  redis.call('SET', KEYS[1], 0, 'PX', 3600000)
end
local n = redis.call('INCR', KEYS[1])
local probe = tonumber(ARGV[3])
if redis.call('GET', KEYS[4]) then
  redis.call('SET', KEYS[5], now + probe, 'PX', probe + 3600000)
  return 1
end
if n >= tonumber(ARGV[1]) and now - last_ok >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[4], 1)
  redis.call('SET', KEYS[5], now + probe, 'PX', probe + 3600000)
  return 1
end
return 0
"""
)

# KEYS: last success, away flag, pause:away, troubles, trouble since, failure keys...
_NOTE_SUCCESS = (
    _NOW
    + """
redis.call('SET', KEYS[1], now, 'PX', 86400000)
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 0
"""
)


class RedisLimiter:
    """The fleet-wide limiter; every method is one round trip to Redis."""

    def __init__(self, redis: Redis, limit: RateLimit, *, namespace: str = "fpcancel") -> None:
        self._redis = redis
        self._limit = limit
        self._window_ms = window_with_margin_ms(limit)
        self._pace_ms = pace_ms(limit)
        base = f"{PREFIX}{namespace}:"
        self._calls_key = base + "calls"
        self._place_key = base + "next-place"
        self._waiters_key = base + "live-waiters"
        self._pause_prefix = base + "pause:"
        self._failures_key = base + "failures:"
        self._opened_key = base + "window-opened"
        self._away_key = base + "away"
        self._troubles_key = base + "troubles"
        self._trouble_since_key = base + "trouble-since"
        self._last_success_key = base + "last-success"
        self._success_noted_at = -1e9
        self._acquire = redis.register_script(_ACQUIRE)
        self._left_late = redis.register_script(_LEFT_LATE)
        self._saw = redis.register_script(_SAW_REMAINING)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)
        self._window_full_for = redis.register_script(_WINDOW_FULL_FOR)
        self._note_trouble = redis.register_script(_NOTE_TROUBLE)
        self._note_success = redis.register_script(_NOTE_SUCCESS)

    def acquire(self, lane: str, caller: str, late: LateCall | None = None) -> Slot | float:
        keys = [
            self._calls_key,
            self._pause_prefix + "rate",
            self._pause_prefix + "setup",
            self._waiters_key,
            self._pause_prefix + "away",
            self._away_key,
            self._place_key,
        ]
        nonce = uuid.uuid4().hex
        args: list[str | int] = [
            self._limit.calls,
            self._window_ms,
            lane,
            caller,
            LIVE_WAITER_TTL_MS,
            nonce,
            int(PROBE_SECONDS * 1000),
            repr(self._pace_ms),
            repr(self._pace_ms * PACE_EARLY),
            late.slot.member if late is not None else "",
            late.stamp_ms if late is not None else 0,
        ]
        asked = time.perf_counter()
        wait_ms, stamp_ms = self._acquire(keys=keys, args=args)
        if int(wait_ms) > 0:
            return int(wait_ms) / 1000
        return Slot(nonce, float(stamp_ms), asked)

    def try_acquire(self, lane: str, caller: str) -> float:
        granted = self.acquire(lane, caller)
        return 0.0 if isinstance(granted, Slot) else granted

    def left_late(self, slot: Slot, late_seconds: float) -> None:
        stamp = LateCall(slot, late_seconds).stamp_ms
        self._left_late(keys=[self._calls_key], args=[slot.member, stamp, self._window_ms])

    def saw_remaining(self, stamp_ms: float, remaining: int) -> None:
        keys = [self._opened_key, self._opened_key + ":remaining", self._opened_key + ":stamp"]
        self._saw(keys=keys, args=[int(stamp_ms), remaining, self._window_ms])

    def pause(self, reason: PauseReason, seconds: float) -> None:
        key = self._pause_prefix + _pause_key(reason)
        self._pause(keys=[key], args=[max(1, int(seconds * 1000))])

    def paused_for(self) -> float:
        keys = [self._pause_prefix + kind for kind in PAUSE_KINDS]
        return int(self._paused_for(keys=keys)) / 1000

    def window_full_for(self) -> float:
        keys = [self._calls_key, self._opened_key]
        return int(self._window_full_for(keys=keys, args=[self._window_ms])) / 1000

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
        # Every call that goes through says so, but twice a second per process is plenty: it
        # only restarts counts (and ends an outage, which no call went through during).
        now = time.monotonic()
        if now - self._success_noted_at < SUCCESS_NOTE_SECONDS:
            return
        self._success_noted_at = now
        keys = [
            self._last_success_key,
            self._away_key,
            self._pause_prefix + "away",
            self._troubles_key,
            self._trouble_since_key,
            *(self._failures_key + r.value for r in SETUP_FAULTS),
        ]
        self._note_success(keys=keys)

    def note_trouble(self) -> bool:
        self._success_noted_at = -1e9  # the next success must be told at once
        keys = [
            self._troubles_key,
            self._trouble_since_key,
            self._last_success_key,
            self._away_key,
            self._pause_prefix + "away",
        ]
        args = [AWAY_AFTER_TROUBLES, int(AWAY_AFTER_SECONDS * 1000), int(PROBE_SECONDS * 1000)]
        return bool(self._note_trouble(keys=keys, args=args))

    def active_pauses(self) -> list[ActivePause]:
        """Read only: the pauses in force now and why, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        for kind in PAUSE_KINDS:
            pipe.get(self._pause_prefix + kind)
        for reason in PauseReason:
            pipe.get(self._failures_key + reason.value)
        (seconds, micros), *values = pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        untils, counts = values[: len(PAUSE_KINDS)], values[len(PAUSE_KINDS) :]
        failing = {r for r, n in zip(PauseReason, counts, strict=True) if int(n or 0) > 0}
        return _active([(int(u or 0) - now_ms) / 1000 for u in untils], failing)


class LocalLimiter:
    """The same promise inside one process, for the embedded demo (memory broker, no Redis).

    `paced=False` grants calls in bursts (at most N in any W still): for a clock that only a
    test moves, where a pace would never pass."""

    def __init__(
        self, limit: RateLimit, clock: Callable[[], float] = time.monotonic, *, paced: bool = True
    ) -> None:
        self._limit = limit
        self._window = window_with_margin_ms(limit) / 1000
        self._pace = pace_ms(limit) / 1000 if paced else 0.0
        self._place = 0.0  # where the next call goes in the pace
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[str, float] = {}  # member -> stamp (seconds)
        self._live_waiters: dict[str, float] = {}
        self._paused_until: dict[str, float] = {}
        self._failures: dict[PauseReason, int] = {}
        self._opened = -1.0  # the first call seen in the provider's window (seconds)
        self._seen_remaining = -1
        self._seen_stamp = -1.0
        self._away = False
        self._troubles = 0
        self._trouble_since = 0.0
        self._last_success = 0.0

    def _prune(self, now: float) -> None:
        self._calls = {m: s for m, s in self._calls.items() if s > now - self._window}

    def acquire(self, lane: str, caller: str, late: LateCall | None = None) -> Slot | float:
        asked = time.perf_counter()
        if late is not None:
            self.left_late(late.slot, late.late_seconds)
        with self._lock:
            now = self._clock()
            paused = max([u - now for u in self._paused_until.values()] + [0.0])
            if paused > 0:
                return paused
            self._prune(now)
            self._live_waiters = {c: t for c, t in self._live_waiters.items() if t > now}
            wait = max(0.0, self._place - self._pace * PACE_EARLY - now)
            if len(self._calls) >= self._limit.calls:
                wait = max(wait, min(self._calls.values()) + self._window - now)
            if lane != "live" and self._live_waiters and not self._away:
                return max(0.001, wait + self._pace)  # a customer goes first
            if wait <= 0:
                member = uuid.uuid4().hex
                self._calls[member] = now
                self._place = max(self._place, now) + self._pace
                self._live_waiters.pop(caller, None)
                if self._away:
                    self._paused_until["away"] = now + PROBE_SECONDS  # this call is the probe
                return Slot(member, now * 1000, asked)
            wait = max(0.001, wait)
            if lane == "live":
                self._live_waiters[caller] = now + wait + LIVE_WAITER_TTL_MS / 1000
            return wait

    def try_acquire(self, lane: str, caller: str) -> float:
        granted = self.acquire(lane, caller)
        return 0.0 if isinstance(granted, Slot) else granted

    def left_late(self, slot: Slot, late_seconds: float) -> None:
        with self._lock:
            self._calls[slot.member] = slot.stamp_ms / 1000 + late_seconds

    def saw_remaining(self, stamp_ms: float, remaining: int) -> None:
        with self._lock:
            stamp = stamp_ms / 1000
            new_window = (
                self._opened < 0
                or stamp - self._opened >= self._window
                or (stamp > self._seen_stamp and remaining > self._seen_remaining)
            )
            if new_window or stamp < self._opened:
                self._opened = stamp
            if stamp >= self._seen_stamp:
                self._seen_remaining, self._seen_stamp = remaining, stamp

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
            if self._opened >= 0 and self._opened + self._window > now:
                return self._opened + self._window - now
            self._prune(now)
            oldest = min(self._calls.values(), default=None)
            return (oldest + self._window - now) if oldest is not None else self._window

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
            self._last_success = self._clock()
            self._away = False
            self._paused_until.pop("away", None)
            self._troubles, self._trouble_since = 0, 0.0

    def note_trouble(self) -> bool:
        with self._lock:
            now = self._clock()
            if self._trouble_since == 0 or self._trouble_since <= self._last_success:
                self._trouble_since, self._troubles = now, 0
            self._troubles += 1
            if not self._away and (
                self._troubles >= AWAY_AFTER_TROUBLES
                and now - self._last_success >= AWAY_AFTER_SECONDS
            ):
                self._away = True
            if self._away:
                self._paused_until["away"] = now + PROBE_SECONDS
            return self._away

    def active_pauses(self) -> list[ActivePause]:
        with self._lock:
            now = self._clock()
            left = [self._paused_until.get(kind, 0.0) - now for kind in PAUSE_KINDS]
            return _active(left, {r for r, n in self._failures.items() if n > 0})


def _active(seconds_left: list[float], failing: set[PauseReason]) -> list[ActivePause]:
    """The pauses with time left; a setup pause names the setup faults counted in a row."""
    found = []
    for kind, left in zip(PAUSE_KINDS, seconds_left, strict=True):
        if left <= 0:
            continue
        if kind == "rate":
            reasons: list[str] = [PauseReason.RATE_LIMITED.value]
        elif kind == "away":
            reasons = [PauseReason.PROVIDER_AWAY.value]
        else:
            reasons = [r.value for r in PauseReason if _pause_key(r) == kind and r in failing]
        found.append(ActivePause(kind, round(left, 1), tuple(reasons)))
    return found


def wait_for_slot(
    limiter: Limiter,
    lane: str,
    *,
    max_wait_seconds: float,
    stop: threading.Event,
    caller: str | None = None,
    before_waiting: Callable[[], None] | None = None,
    late: LateCall | None = None,
) -> tuple[Slot | None, float]:
    """Wait (without holding anything but the job's claim) until a call may start.

    Returns (the slot, or None when none came in time; seconds waited). Gives up after
    `max_wait_seconds`, or as soon as `stop` is set (the worker is shutting down), so the job
    can go back untouched. `before_waiting` runs once, before a wait of `LONG_WAIT_SECONDS` or
    more (a batch's thread writes down the calls it made before it sits out a pause; the pace's
    short waits leave a batch one transaction). `late` (the thread's previous call left late)
    rides on the first ask.
    """
    caller = caller or uuid.uuid4().hex
    started = time.monotonic()
    while True:
        granted = limiter.acquire(lane, caller, late)
        late = None
        waited = time.monotonic() - started
        if isinstance(granted, Slot):
            return granted, waited
        remaining = max_wait_seconds - waited
        if remaining <= 0 or stop.is_set():
            return None, waited
        if before_waiting is not None and granted >= LONG_WAIT_SECONDS:
            before_waiting()
            before_waiting = None
            continue  # the wait is asked for again, from now
        if stop.wait(min(granted, remaining, ASK_AGAIN_SECONDS)):
            return None, time.monotonic() - started
