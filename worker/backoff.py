"""How long to wait, as pure functions of a count: full-jitter backoff for a job's retries, and
the doubling pause of a fault that lasts."""

import random
from collections.abc import Callable


def retry_delay_seconds(
    retry_number: int,
    base_seconds: float,
    max_seconds: float,
    retry_after_seconds: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Full jitter: random in [0, min(max, base * 2^(n-1))] before retry n (n ≥ 1); a longer
    `Retry-After` from the provider wins."""
    exponent = min(max(retry_number, 1) - 1, 64)  # 2**64 * base is past any cap already
    ceiling = min(max_seconds, base_seconds * 2.0**exponent)
    delay = rng() * ceiling
    if retry_after_seconds is not None and retry_after_seconds > delay:
        return retry_after_seconds
    return delay


def doubling_pause_seconds(
    failures_in_a_row: int, base_seconds: float, max_seconds: float
) -> float:
    """How long the fleet stops calling after a refused token or a wrong URL: doubling, at
    least one second, at most `max_seconds`."""
    exponent = min(max(failures_in_a_row, 1) - 1, 64)
    return max(1.0, min(max_seconds, max(base_seconds, 1.0) * 2.0**exponent))
