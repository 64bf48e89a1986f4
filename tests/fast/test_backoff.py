"""Backoff as pure functions: full jitter for a job's retries, the doubling fleet pause."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpcancel.backoff import doubling_pause_seconds as pause_seconds
from fpcancel.backoff import retry_delay_seconds

# -- retry_delay_seconds ------------------------------------------------------------------------


@pytest.mark.parametrize("retry_number", range(1, 13))
def test_retry_delay_stays_within_the_full_jitter_bound(retry_number: int) -> None:
    """Retry n waits in [0, min(max, base * 2^(n-1))]: 0 at rng=0, just under the bound as rng→1."""
    bound = min(900.0, 5.0 * 2 ** (retry_number - 1))
    low = retry_delay_seconds(retry_number, 5.0, 900.0, rng=lambda: 0.0)
    high = retry_delay_seconds(retry_number, 5.0, 900.0, rng=lambda: 1 - 1e-12)
    assert low == 0
    assert bound * 0.999 < high <= bound


def test_retry_delay_bound_doubles_until_the_cap() -> None:
    """The upper bound grows 5, 10, 20, … and stops at the 900 s cap."""
    highs = [retry_delay_seconds(n, 5.0, 900.0, rng=lambda: 1.0) for n in range(1, 13)]
    assert highs == [5, 10, 20, 40, 80, 160, 320, 640, 900, 900, 900, 900]


def test_retry_delay_for_huge_retry_numbers_is_the_cap() -> None:
    """A job retried thousands of times waits at most the cap (no overflow)."""
    assert retry_delay_seconds(10_000, 5.0, 900.0, rng=lambda: 1.0) == 900


def test_a_longer_retry_after_wins() -> None:
    """The provider's `Retry-After` beats our shorter backoff."""
    assert retry_delay_seconds(1, 5.0, 900.0, retry_after_seconds=60.0, rng=lambda: 0.5) == 60


def test_a_shorter_retry_after_loses() -> None:
    """A `Retry-After` shorter than our backoff does not shorten it."""
    assert retry_delay_seconds(3, 5.0, 900.0, retry_after_seconds=1.0, rng=lambda: 0.5) == 10


def test_retry_delay_uses_the_injected_rng() -> None:
    """The jitter comes from the rng it is handed: half the bound at rng=0.5."""
    assert retry_delay_seconds(2, 0.2, 900.0, rng=lambda: 0.5) == pytest.approx(0.2)


@given(
    st.integers(1, 200),
    st.floats(0, 1000),
    st.floats(0, 10_000),
    st.floats(0, 1, exclude_max=True),
    st.none() | st.floats(0, 1e6),
)
def test_retry_delay_is_always_within_bounds(
    n: int, base: float, cap: float, r: float, retry_after: float | None
) -> None:
    """Any attempt number, base, cap, rng value and Retry-After: a delay in the documented range."""
    delay = retry_delay_seconds(n, base, cap, retry_after, rng=lambda: r)
    bound = min(cap, base * 2.0 ** (n - 1))
    assert 0 <= delay <= max(bound, retry_after or 0)
    if retry_after is not None:
        assert delay >= retry_after  # the provider's wait is never cut short
    else:
        assert delay <= bound


# -- pause_seconds ------------------------------------------------------------------------------


def test_pause_doubles_with_each_refusal_in_a_row() -> None:
    """Repeated 401s or misroutes pause the fleet 5, 10, 20, 40 s…"""
    assert [pause_seconds(n, 5.0, 900.0) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]


def test_pause_is_capped() -> None:
    """However many refusals, the pause never exceeds the cap."""
    assert pause_seconds(50, 5.0, 900.0) == 900
    assert pause_seconds(10_000, 5.0, 900.0) == 900


def test_pause_is_at_least_a_second() -> None:
    """Even with a zero backoff base the fleet does not hammer a refusing provider."""
    assert pause_seconds(1, 0.0, 900.0) >= 1
    assert pause_seconds(1, 0.2, 0.5) >= 1
