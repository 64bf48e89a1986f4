"""How the sandbox counts calls per token: Laravel's fixed window (the provider's way, the
default) or a strict sliding window; and the rate accounting benchmarks read from a call log."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

RATE_MODES: Final = ("laravel", "sliding")


def parse_rate_limit(text: str) -> tuple[int, float]:
    """Parse ``"CALLS/SECONDS"``: ``"240/60"`` -> ``(240, 60.0)``; ValueError says what's wrong."""
    calls_text, sep, seconds_text = text.strip().partition("/")
    try:
        if not sep:
            raise ValueError
        calls = int(calls_text.strip())
        seconds = float(seconds_text.strip())
    except ValueError:
        raise ValueError(
            f"rate limit must look like CALLS/SECONDS, e.g. '240/60'; got {text!r}"
        ) from None
    _check_rate_limit((calls, seconds))
    return calls, seconds


def _check_rate_limit(limit: tuple[int, float]) -> None:
    calls, seconds = limit
    if calls < 1:
        raise ValueError(f"rate limit calls must be at least 1; got {calls}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"rate limit window must be a positive number of seconds; got {seconds}")


def coerce_rate_limit(value: object) -> tuple[int, float] | None:
    """Accept ``None``, ``"20/2"`` or a ``(calls, seconds)`` pair, as Python or JSON give it."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_rate_limit(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    ):
        limit = (value[0], float(value[1]))
        _check_rate_limit(limit)
        return limit
    raise ValueError(
        f"rate limit must be 'CALLS/SECONDS', a (calls, seconds) pair or null; got {value!r}"
    )


def check_rate_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode not in RATE_MODES:
        raise ValueError(f"rate_mode must be one of {list(RATE_MODES)}; got {mode!r}")
    return mode


@dataclass(frozen=True)
class _Admission:
    """A rate-limit verdict; ``retry_after`` and ``reset_epoch`` are for refusals only."""

    admitted: bool
    retry_after: int = 0
    reset_epoch: int = 0


@dataclass
class _Window:
    """One key's Laravel window: when it opened and the calls it admitted."""

    opened_at: float
    hits: int = 0


class _LaravelWindow:
    """Laravel's ``RateLimiter``: per key, a fixed window that the first call after the previous
    one expired opens; up to N hits in it. Times are epoch seconds (floats)."""

    mode = "laravel"

    def __init__(self, limit: tuple[int, float]) -> None:
        self.calls, self.seconds = limit
        self._windows: dict[bytes, _Window] = {}

    def _open_window(self, key: bytes, now: float) -> _Window | None:
        window = self._windows.get(key)
        if window is None or now >= window.opened_at + self.seconds:
            return None  # expired: the cache has forgotten the counter and the timer
        return window

    def admit(self, key: bytes, now: float) -> _Admission:
        """``tooManyAttempts`` then ``hit``: refused calls are not counted."""
        window = self._open_window(key, now)
        if window is None:
            window = self._windows[key] = _Window(now)
        if window.hits >= self.calls:
            # availableIn(): the timer holds floor(opened + W); both sides are whole seconds.
            timer = math.floor(window.opened_at + self.seconds)
            retry_after = max(1, timer - math.floor(now))
            return _Admission(False, retry_after, math.floor(now) + retry_after)
        window.hits += 1
        return _Admission(True)

    def remaining(self, key: bytes, now: float) -> int:
        """``retriesLeft``: N minus the hits of the window open at ``now`` (N if none is)."""
        window = self._open_window(key, now)
        return max(0, self.calls - (0 if window is None else window.hits))


class _SlidingWindow:
    """Strict sliding window per key: at most N admitted calls in any W seconds."""

    mode = "sliding"

    def __init__(self, limit: tuple[int, float]) -> None:
        self.calls, self.seconds = limit
        self._admitted: dict[bytes, deque[float]] = {}

    def _window(self, key: bytes, now: float) -> deque[float]:
        window = self._admitted.setdefault(key, deque())
        horizon = now - self.seconds
        while window and window[0] <= horizon:
            window.popleft()
        return window

    def admit(self, key: bytes, now: float) -> _Admission:
        """Refused calls are not counted."""
        window = self._window(key, now)
        if len(window) >= self.calls:
            retry_after = max(1, math.ceil(window[0] + self.seconds - now))
            return _Admission(False, retry_after, int(now) + retry_after)
        window.append(now)
        return _Admission(True)

    def remaining(self, key: bytes, now: float) -> int:
        return max(0, self.calls - len(self._window(key, now)))


Limiter = _LaravelWindow | _SlidingWindow


def make_limiter(limit: tuple[int, float] | None, mode: str) -> Limiter | None:
    if limit is None:
        return None
    return _LaravelWindow(limit) if mode == "laravel" else _SlidingWindow(limit)


def admitted_arrivals(calls: Iterable[Mapping[str, Any]]) -> list[float]:
    """Arrival times (epoch seconds, sorted) of the calls the rate limit let through: authorized
    cancel and status calls that were not refused with a 429 by the limit."""
    return sorted(
        float(call["time"])
        for call in calls
        if call["authorized"] and call["kind"] != "other" and not call.get("throttled", False)
    )


def max_calls_in_window(arrivals: Sequence[float], window_seconds: float) -> int:
    """The most arrivals within any ``window_seconds`` (a half-open span ``[t, t + W)``, as a
    Laravel window is): what "never more than N calls in any W seconds" is checked against.
    ``arrivals`` must be sorted."""
    worst = first = 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] >= window_seconds:
            first += 1
        worst = max(worst, last - first + 1)
    return worst


def fixed_windows(arrivals: Sequence[float], window_seconds: float) -> list[tuple[float, int]]:
    """The provider's windows as Laravel opens them from admitted arrivals (sorted): each opens at
    the first arrival at or after the previous one's end; ``[(opened_at, calls), ...]``."""
    windows: list[tuple[float, int]] = []
    for at in arrivals:
        if windows and at < windows[-1][0] + window_seconds:
            opened, count = windows[-1]
            windows[-1] = (opened, count + 1)
        else:
            windows.append((at, 1))
    return windows
