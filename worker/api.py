"""The Python API a shop's code calls (SPEC.md, "Python API"), re-exported as `fpcancel.*`.

Each function works on this process's settings (FPCANCEL_DATABASE_URL, FPCANCEL_BROKER_URL, read
from the environment and ./.env once) and the same code the CLI runs:

    import fpcancel

    job_id = fpcancel.enqueue_cancel("ODR123456789", "Customer asked to cancel", source="shop")
    fpcancel.enqueue_bulk([("ODR1", "Out of stock"), ("ODR2", "Out of stock")], source="stockout")
    fpcancel.get_job(job_id)   # the `jobs show --json` object, or None
    fpcancel.read_events(after=0, limit=100)   # outcome events' payloads, oldest first
"""

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from fpcancel.bulk import BulkResult, BulkRow, validate_rows
from fpcancel.errors import UnknownJobError
from fpcancel.producer import Producer
from fpcancel.settings import load_settings
from fpcancel.statuses import Lane


@lru_cache(maxsize=1)
def default_producer() -> Producer:
    """The producer for this process's environment, made on first use."""
    return Producer.from_settings(load_settings())


def enqueue_cancel(
    order_uuid: str, note: str, source: str | None = None, lane: str = Lane.LIVE.value
) -> int:
    """Enqueue one cancellation; returns the job's id (the existing job's, if the order has a
    queued, running, retrying or succeeded one). Raises `ValidationError` on a bad id, note,
    source or lane, before anything is written. A broker that cannot be reached loses nothing:
    the job is saved and a worker's feed sends it."""
    return default_producer().enqueue(order_uuid, note, source, lane).id


def enqueue_bulk(
    rows: Iterable[BulkRow | tuple[str, str]],
    source: str | None = None,
    lane: str = Lane.BULK.value,
) -> BulkResult:
    """Enqueue many cancellations: `rows` of (order_uuid, note), all or nothing. Every row is
    validated first; any bad row raises `BulkInputError` listing every bad row."""
    return default_producer().enqueue_bulk(validate_rows(rows), source, lane)


def get_job(job_id: int) -> dict[str, Any] | None:
    """The job with its calls (the `jobs show --json` object), or None when there is none."""
    from fpcancel.queries import job_with_calls

    with default_producer().sessions() as session:
        try:
            return job_with_calls(session, job_id)
        except UnknownJobError:
            return None


def read_events(after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Outcome events with an id above `after`, oldest first, at most `limit` (SPEC.md,
    "Outcome events"): the payloads the webhook receives. Keep the last id you handled and pass
    it as `after` next time."""
    from fpcancel.events import read_events as read

    with default_producer().sessions() as session:
        return read(session, after, limit)
