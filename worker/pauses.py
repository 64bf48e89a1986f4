"""The fleet pause: whether every worker stops calling the provider after a call, why and for how
long, as pure functions. The limiter (`fpcancel.ratelimit`) carries a pause out fleet-wide.

    reason        when                                   how long
    rate_limited  429                                    `Retry-After` (or `X-RateLimit-Reset`),
                                                         else one rate window
                  `x-ratelimit-remaining: 0` on an       until the fleet's own window frees a slot
                  answer that went through
    unauthorized  401/403: the token is refused          doubling from the retry base while the
    misrouted     a 404 or 3xx that is not the API's     fault lasts, up to the retry maximum
    not_sent      a request that cannot be built         (one pause shared by the three)

A call that reached the API and was not refused ends a fault: its doubling starts again.
"""

from dataclasses import dataclass

from fpcancel.answers import Answer, CallResult
from fpcancel.backoff import doubling_pause_seconds
from fpcancel.classify import Decision
from fpcancel.statuses import SETUP_FAULTS, PauseReason


@dataclass(frozen=True)
class PausePlan:
    """What a call means for the fleet: a pause (and its kind), or none."""

    reason: PauseReason | None = None
    retry_after_seconds: float | None = None  # what the provider asked for
    until_window_frees: bool = False  # the provider's window is spent: wait for ours
    went_through: bool = False  # the API answered and did not refuse: setup faults are over

    @property
    def grows(self) -> bool:
        """A setup fault: the pause doubles while it lasts."""
        return self.reason in SETUP_FAULTS


def plan_pause(decision: Decision, result: CallResult) -> PausePlan:
    """The fleet's response to one call."""
    if decision.block is not None:
        return PausePlan(decision.block, retry_after_seconds=decision.retry_after_seconds)
    if not isinstance(result, Answer):
        return PausePlan()
    if result.headers.get("x-ratelimit-remaining", "").strip() == "0":
        # The provider's window is spent: wait for ours to free a slot, whoever else shares it.
        return PausePlan(PauseReason.RATE_LIMITED, until_window_frees=True, went_through=True)
    return PausePlan(went_through=True)


def pause_seconds(
    plan: PausePlan,
    *,
    failures_in_a_row: int,
    window_frees_in: float,
    rate_window_seconds: float,
    retry_base_seconds: float,
    retry_max_seconds: float,
) -> float:
    """How long the pause in `plan` lasts (0 when there is none)."""
    if plan.reason is None:
        return 0.0
    if plan.grows:
        return doubling_pause_seconds(failures_in_a_row, retry_base_seconds, retry_max_seconds)
    if plan.until_window_frees:
        return window_frees_in
    if plan.retry_after_seconds is not None:
        return plan.retry_after_seconds
    return rate_window_seconds
