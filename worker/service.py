"""`fpcancel worker`: the Celery worker (a thread pool) and the scheduler, in one process."""

import gc
import logging
import os
import socket
import uuid
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import Engine

from fpcancel.app import queue_names
from fpcancel.errors import ServiceError
from fpcancel.feed import Scheduler
from fpcancel.logs import setup_logging
from fpcancel.runtime import Runtime, build_runtime, install
from fpcancel.settings import Settings
from fpcancel.statuses import PauseReason

log = logging.getLogger("fpcancel.worker")
# Webhook delivery threads beside the task threads (they never share one).
WEBHOOK_THREADS = 4


def worker_argv(concurrency: int, loglevel: str, name: str) -> list[str]:
    """The Celery worker's command line (what `celery worker` would be given)."""
    return [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        "--queues=" + ",".join(queue_names().values()),
        f"--loglevel={loglevel}",
        f"--hostname={name}",
        "--without-mingle",
        "--without-gossip",
    ]


def preflight_database(engine: Engine) -> None:
    """Refuse to start (exit 1) when the database is unreachable or its schema is old."""
    from sqlalchemy.exc import SQLAlchemyError

    from fpcancel.migrate import current_revision, head_revision

    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ServiceError(f"database unreachable: {reason}") from None
    if revision != head_revision():
        raise ServiceError(
            f"database schema is at {revision or 'nothing'}, not {head_revision()}: "
            "run `fpcancel db upgrade` first"
        )


def preflight(runtime: Runtime) -> None:
    """Refuse to start (exit 1) when the database or broker is unreachable or the schema is old."""
    preflight_database(runtime.engine)
    with runtime.app.connection_for_write() as connection:
        where = connection.as_uri()  # the password masked
        try:
            connection.ensure_connection(max_retries=1, timeout=3)
        except Exception as exc:
            raise ServiceError(f"broker unreachable at {where}: {exc}") from None


def run_worker(
    settings: Settings,
    *,
    concurrency: int,
    loglevel: str = "INFO",
    log_json: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    runtime: Runtime | None = None,
) -> None:
    """Serve until SIGTERM (or SIGINT): calls in flight finish, waiting jobs go back."""
    setup_logging(loglevel, as_json=log_json, redactor=settings.redactor)
    if metrics_port is not None:
        from fpcancel import metrics

        metrics.serve(metrics_port, metrics_host)
    runtime = runtime or build_runtime(
        settings, concurrency=concurrency + WEBHOOK_THREADS, with_client=True
    )
    preflight(runtime)
    install(runtime)
    member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    # A restart with a fixed token should call at once, not sit out an old pause.
    runtime.limiter.clear_pause(PauseReason.UNAUTHORIZED)
    scheduler = Scheduler(runtime, member=member, threads=concurrency)

    def on_ready(**_: Any) -> None:
        # What is loaded by now lives as long as the process: out of the collector's full
        # passes, which otherwise stop every thread for tens of milliseconds, calls on their
        # way to the provider included.
        gc.freeze()
        scheduler.start()
        if settings.webhook_url is not None:
            from fpcancel.deliverer import Deliverer

            Deliverer(settings, runtime.sessions, runtime.stop, threads=WEBHOOK_THREADS).start()
        log.info(
            "worker %s ready: %d threads, rate limit %s, provider %s, webhook %s",
            member,
            concurrency,
            settings.rate_limit,
            settings.base_url,
            settings.webhook_url or "none (events wait for `fpcancel events list`)",
        )

    def on_shutdown(**_: Any) -> None:
        log.info("worker %s stopping: no new jobs; calls in flight finish", member)
        runtime.stop.set()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutdown, weak=False)
    try:
        runtime.app.worker_main(worker_argv(concurrency, loglevel, f"fpcancel-{member}@%h"))
    finally:
        runtime.stop.set()
        runtime.fleet.unregister(member)
        runtime.fleet.resign(member)
        install(None)
        runtime.close()
