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

    provider_away no call gets through to the API (no       one probe call every PROBE_SECONDS
                  connection, no answer in time, proxy    until one is answered; calls in the
                  pages) for AWAY_AFTER_SECONDS, and      meantime spend no attempt
                  AWAY_AFTER_TROUBLES calls in a row

A call that reached the API and was not refused ends a fault: its doubling starts again.

SPEC.md, "Provider-wide trouble": an outage is not any order's fault. A connection that was never
made spends no attempt at all (no POST left); once the provider is taken as away, no call spends
one. An answer in the API's own JSON (a 510 included) is about the order, and counts.
"""

from dataclasses import dataclass, replace

from fpcancel.answers import Answer, CallResult, TransportError
from fpcancel.backoff import doubling_pause_seconds
from fpcancel.classify import Decision
from fpcancel.statuses import SETUP_FAULTS, PauseReason

# The provider is taken as away when this many calls in a row (fleet-wide) found nobody, and no
# call went through for this long; then one probe call goes every PROBE_SECONDS (4 a minute).
AWAY_AFTER_TROUBLES = 3
AWAY_AFTER_SECONDS = 2.0
PROBE_SECONDS = 15.0


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
    if plan.reason is PauseReason.PROVIDER_AWAY:
        return PROBE_SECONDS
    if plan.until_window_frees:
        return window_frees_in
    if plan.retry_after_seconds is not None:
        # Laravel counts Retry-After in whole seconds from a floored timer: up to a second short.
        return plan.retry_after_seconds + 1.0
    return rate_window_seconds


def provider_trouble(result: CallResult) -> bool:
    """The call found no provider: no connection, no answer (in time), or an answer that is not
    the API's (a proxy's 5xx page). An answer in the API's JSON, a 510 included, is about the
    order; a request that could not be built is ours."""
    if isinstance(result, TransportError):
        return True
    return isinstance(result, Answer) and result.body is None and result.status >= 500


def away_decision(decision: Decision) -> Decision:
    """What a call that found no provider means once the provider is taken as away: the order is
    not at fault, the job waits for the provider, and spends no attempt (a POST that may have
    left is still settled by a status check before the next)."""
    return replace(
        decision, block=PauseReason.PROVIDER_AWAY, counts=False, retry_after_seconds=None
    )


def remaining_calls(answer: Answer) -> int | None:
    """What the provider says is left of its window (`x-ratelimit-remaining`), when it says."""
    return _whole(answer.headers.get("x-ratelimit-remaining"))


def provider_limit(answer: Answer) -> int | None:
    """The provider's own count of calls per window, when it says it."""
    return _whole(answer.headers.get("x-ratelimit-limit"))


def _whole(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None
