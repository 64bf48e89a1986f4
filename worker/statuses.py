"""The names a user reads in the job table, from SPEC.md and nowhere else; no I/O here.

JobStatus    a job's status (`cancel_jobs.status`)
AttemptKind  what a call was (`cancel_attempts.kind`)
Lane         which line a job waits in (`cancel_jobs.lane`), customers first
ApiScope     what an HTTP API key may do (`api_keys.scope`)
"""

from enum import StrEnum


class JobStatus(StrEnum):
    """Every status a job can have (SPEC.md, "Job statuses")."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    ALREADY_PAID = "already_paid"
    NOT_FOUND = "not_found"
    INVALID_PAYLOAD = "invalid_payload"
    DEAD = "dead"
    FAILED = "failed"


class AttemptKind(StrEnum):
    CANCEL = "cancel"
    STATUS_CHECK = "status_check"


class Lane(StrEnum):
    """Customers' lane first: the order the feed and the broker serve them in."""

    LIVE = "live"
    BULK = "bulk"


TERMINAL_STATUSES = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.ALREADY_PAID,
        JobStatus.NOT_FOUND,
        JobStatus.INVALID_PAYLOAD,
        JobStatus.DEAD,
        JobStatus.FAILED,
    }
)
# An order has at most one job in these: enqueueing it again returns that job (SPEC.md, "Dedup").
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.SUCCEEDED)
# Waiting for its next call: the feed sends these when they are due.
WAITING_STATUSES = (JobStatus.QUEUED, JobStatus.RETRYING)
# What `jobs retry` sends round again.
RETRYABLE_BY_OPS = (JobStatus.DEAD, JobStatus.FAILED)
LANES = tuple(lane.value for lane in Lane)


def sql_in(column: str, statuses: tuple[JobStatus, ...] | frozenset[JobStatus]) -> str:
    """`column IN ('a', 'b')` for partial indexes and ON CONFLICT targets."""
    names = ", ".join(f"'{s.value}'" for s in sorted(statuses, key=list(JobStatus).index))
    return f"{column} IN ({names})"


ACTIVE_SQL = sql_in("status", ACTIVE_STATUSES)
WAITING_SQL = sql_in("status", WAITING_STATUSES)


class PauseReason(StrEnum):
    """Why every worker stops calling the provider for a while (the order is not at fault)."""

    RATE_LIMITED = "rate_limited"  # 429, or the provider's window is spent
    UNAUTHORIZED = "unauthorized"  # 401/403: the token is refused
    MISROUTED = "misrouted"  # a 404 or redirect that is not the API's: the URL is wrong
    NOT_SENT = "not_sent"  # a request that cannot be built: a local fault
    PROVIDER_AWAY = "provider_away"  # no connection, no answers, proxy pages: nobody is there


# Faults of the setup, not of the rate: they share one pause that doubles while they last.
SETUP_FAULTS = frozenset({PauseReason.UNAUTHORIZED, PauseReason.MISROUTED, PauseReason.NOT_SENT})


class DeliveryStatus(StrEnum):
    """Where an outcome event's webhook delivery stands (`cancel_events.delivery`)."""

    WAITING = "waiting"  # not delivered yet: due at `next_delivery_at`, or no webhook configured
    DELIVERED = "delivered"  # a 2xx came back
    FAILED = "failed"  # FPCANCEL_WEBHOOK_MAX_ATTEMPTS ran out; `events redeliver` sends it again


EVENT_FINISHED = "cancel_job.finished"


class ApiScope(StrEnum):
    """What an HTTP API key may do (SPEC.md, "HTTP service"); `ops` may do everything."""

    ENQUEUE = "enqueue"  # create cancellations
    READ = "read"  # jobs, stats, events
    OPS = "ops"  # all of the above, retry, and the dashboard


API_SCOPES = tuple(scope.value for scope in ApiScope)
