"""The Celery app: built by a factory from `Settings`, never at import time."""

from collections.abc import Iterable

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from fpcancel.jobstore import Dispatch
from fpcancel.settings import Settings
from fpcancel.statuses import LANES

TASK_NAME = "fpcancel.cancel"


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
        worker_send_task_events=True,  # Flower works out of the box
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def publish(app: Celery, dispatches: Iterable[Dispatch]) -> int:
    """Send one message per dispatch over one producer connection; returns how many."""
    sent = 0
    queues = app.conf.fpcancel_queues
    with app.producer_or_acquire() as producer:
        for item in dispatches:
            app.send_task(
                TASK_NAME,
                args=[item.job_id, item.token],
                queue=queues[item.lane],
                producer=producer,
                retry=True,
            )
            sent += 1
    return sent
