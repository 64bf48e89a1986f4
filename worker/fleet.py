"""What the workers of one fleet know of each other through Redis: who runs the feed now, how many
task threads the fleet has (the feed sends no more work than they can take), and a wake-up call
for the feed when a thread frees (so it refills at once, not at its next round)."""

import threading
import time
from typing import Protocol

from redis import Redis

PREFIX = "fpcancel:fleet:"


class Fleet(Protocol):
    def lead(self, member: str, ttl_seconds: float) -> bool:
        """Take or keep the scheduler's lead for `ttl_seconds`; False if another member has it."""

    def resign(self, member: str) -> None: ...

    def register(self, member: str, threads: int, ttl_seconds: float) -> None:
        """Say this member is alive with `threads` task threads, until `ttl_seconds` from now."""

    def unregister(self, member: str) -> None: ...

    def threads(self) -> int:
        """Task threads of every live member."""

    def wake(self) -> None:
        """Tell the feed that a thread finished its message (cheap; repeated calls coalesce)."""

    def wait_for_work(self, timeout: float) -> None:
        """The feed's nap: until a `wake` or `timeout` seconds."""


_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisFleet:
    def __init__(self, redis: Redis, namespace: str = "fpcancel") -> None:
        self._redis = redis
        self._lead_key = f"{PREFIX}{namespace}:scheduler"
        self._members_key = f"{PREFIX}{namespace}:members"
        self._wake_key = f"{PREFIX}{namespace}:wake"
        self._lead = redis.register_script(_LEAD)
        self._resign = redis.register_script(_RESIGN)

    def lead(self, member: str, ttl_seconds: float) -> bool:
        ttl_ms = max(100, int(ttl_seconds * 1000))
        return bool(self._lead(keys=[self._lead_key], args=[member, ttl_ms]))

    def resign(self, member: str) -> None:
        self._resign(keys=[self._lead_key], args=[member])

    def register(self, member: str, threads: int, ttl_seconds: float) -> None:
        self._redis.hset(self._members_key, member, f"{threads}:{time.time() + ttl_seconds}")

    def unregister(self, member: str) -> None:
        self._redis.hdel(self._members_key, member)

    def threads(self) -> int:
        now, total, stale = time.time(), 0, []
        for member, value in self._redis.hgetall(self._members_key).items():
            text = value.decode() if isinstance(value, bytes) else str(value)
            threads, _, until = text.partition(":")
            if float(until) < now:
                stale.append(member)
            else:
                total += int(threads)
        if stale:
            self._redis.hdel(self._members_key, *stale)
        return total

    def wake(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(self._wake_key, 1)
        pipe.ltrim(self._wake_key, 0, 0)  # one pending wake-up is as good as many
        pipe.execute()

    def wait_for_work(self, timeout: float) -> None:
        self._redis.blpop([self._wake_key], timeout=max(0.01, timeout))


class LocalFleet:
    """One process is the whole fleet (the embedded demo)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leader: str | None = None
        self._lead_until = 0.0
        self._members: dict[str, int] = {}
        self._woken = threading.Event()

    def lead(self, member: str, ttl_seconds: float) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._leader in (None, member) or self._lead_until < now:
                self._leader, self._lead_until = member, now + ttl_seconds
                return True
            return False

    def resign(self, member: str) -> None:
        with self._lock:
            if self._leader == member:
                self._leader = None

    def register(self, member: str, threads: int, ttl_seconds: float) -> None:
        with self._lock:
            self._members[member] = threads

    def unregister(self, member: str) -> None:
        with self._lock:
            self._members.pop(member, None)

    def threads(self) -> int:
        with self._lock:
            return sum(self._members.values())

    def wake(self) -> None:
        self._woken.set()

    def wait_for_work(self, timeout: float) -> None:
        self._woken.wait(timeout)
        self._woken.clear()
