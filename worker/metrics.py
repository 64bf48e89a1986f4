"""Prometheus metrics of a worker, served by `fpcancel worker --metrics-port P`.

fpcancel_provider_calls_total{kind, outcome, http_status}  calls to Front Payment
fpcancel_provider_call_seconds{kind}       call latency (histogram)
fpcancel_jobs_finished_total{status}       jobs that reached a terminal status
fpcancel_rate_limit_wait_seconds{lane}     time a call waited for its slot
fpcancel_rate_limit_pauses_total{reason}   fleet pauses (429, refused token, wrong URL)
fpcancel_jobs{status}                      queued / retrying / running (scheduler's count)
fpcancel_scheduler_sent_total, _resent_total, _reclaimed_total
fpcancel_webhook_tries_total{result}       webhook tries: delivered, failed, probe
fpcancel_webhook_try_seconds               one try's duration (histogram)
fpcancel_webhook_delivery_latency_seconds  from a job's end to the receiver's 2xx (histogram)
"""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

CALLS = Counter(
    "fpcancel_provider_calls", "Calls to Front Payment", ["kind", "outcome", "http_status"]
)
CALL_SECONDS = Histogram(
    "fpcancel_provider_call_seconds",
    "Latency of calls to Front Payment",
    ["kind"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
FINISHED = Counter("fpcancel_jobs_finished", "Jobs that reached a terminal status", ["status"])
RATE_WAIT = Histogram(
    "fpcancel_rate_limit_wait_seconds",
    "Time a call waited for a rate-limit slot",
    ["lane"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
PAUSES = Counter("fpcancel_rate_limit_pauses", "Fleet-wide pauses of calls", ["reason"])
JOBS = Gauge("fpcancel_jobs", "Jobs by status, as the scheduler last counted", ["status"])
SENT = Counter("fpcancel_scheduler_sent", "Jobs the scheduler sent to the broker")
RESENT = Counter("fpcancel_scheduler_resent", "Jobs sent again because their message was lost")
RECLAIMED = Counter("fpcancel_scheduler_reclaimed", "Jobs taken back from a worker that died")


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `host`:`port` from a daemon thread (loopback unless told otherwise)."""
    start_http_server(port, addr=host)


WEBHOOK_TRIES = Counter(
    "fpcancel_webhook_tries", "Webhook delivery tries", ["result"]
)  # delivered, failed (counted), probe (the receiver was away)
WEBHOOK_SECONDS = Histogram(
    "fpcancel_webhook_try_seconds",
    "Duration of one webhook delivery try",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_LATENCY = Histogram(
    "fpcancel_webhook_delivery_latency_seconds",
    "From a job's end (its event) to the receiver's 2xx",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
