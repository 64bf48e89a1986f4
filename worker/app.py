"""The Celery app: built by a factory from `Settings`, never at import time."""

from collections.abc import Iterable

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from fpcancel.jobstore import Dispatch
from fpcancel.settings import Settings
from fpcancel.statuses import LANES

TASK_NAME = "fpcancel.cancel"  # args: job_id, token
BATCH_TASK_NAME = "fpcancel.cancel_batch"  # args: [[job_id, token], ...]


def queue_names(prefix: str = "fpcancel") -> dict[str, str]:
    """The broker queue of each lane: `fpcancel.live`, `fpcancel.bulk`."""
    return {lane: f"{prefix}.{lane}" for lane in LANES}


def make_celery(settings: Settings, queue_prefix: str = "fpcancel") -> Celery:
    queues = queue_names(queue_prefix)
    app = Celery("fpcancel", broker=settings.broker_url, include=["fpcancel.tasks"])
    app.conf.update(
        fpcancel_queues=queues,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # A message is acknowledged after its task ran, and handed back if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Short I/O tasks: each thread reserves one message, so customers' messages are not
        # stuck behind a long local backlog.
        worker_prefetch_multiplier=1,
        task_queues=[Queue(queues["live"]), Queue(queues["bulk"])],  # type: ignore[no-untyped-call]
        task_default_queue=queues["live"],
        broker_transport_options={
            # BRPOP the live queue before the bulk one, not round-robin.
            "queue_order_strategy": "priority",
            "visibility_timeout": 3600,
            "socket_connect_timeout": 3,
            # The in-memory broker (the demo) polls; Redis blocks and ignores this.
            "polling_interval": 0.05,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # A producer with the broker down gives up quickly: the job is in the table already and
        # the scheduler sends it later.
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        # Task events cost a worker ~5 % of its CPU at a high rate; a monitor turns them on
        # when it watches (Flower sends `enable_events` at start and every minute; by hand:
        # `celery -b BROKER control enable_events`).
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def publish(app: Celery, dispatches: Iterable[Dispatch], batch: int = 1) -> int:
    """Send the dispatched jobs over one producer connection, at most `batch` jobs of a lane per
    message (one job: the single-job task); returns how many jobs were sent."""
    sent = 0
    queues = app.conf.fpcancel_queues
    by_lane: dict[str, list[Dispatch]] = {}
    for item in dispatches:
        by_lane.setdefault(item.lane, []).append(item)
    with app.producer_or_acquire() as producer:
        for lane, items in by_lane.items():
            for start in range(0, len(items), max(1, batch)):
                chunk = items[start : start + max(1, batch)]
                if len(chunk) == 1:
                    name, args = TASK_NAME, [chunk[0].job_id, chunk[0].token]
                else:
                    name, args = BATCH_TASK_NAME, [[[d.job_id, d.token] for d in chunk]]
                app.send_task(name, args=args, queue=queues[lane], producer=producer, retry=True)
                sent += len(chunk)
    return sent
