"""One customer's cancel, enqueued from a web request: `enqueue_cancel` against the naive way.

    python bench/enqueue_latency.py [--calls 2000] [--warmup 200]

In this one process, on the same PostgreSQL database and the same Redis:
- ours: `fpcancel.enqueue_cancel(order, note)` (lane `live`: the job is committed, then
  published), through the producer its environment gives (FPCANCEL_DATABASE_URL,
  FPCANCEL_BROKER_URL);
- naive: one INSERT into `cancel_jobs` with SQLAlchemy Core (RETURNING the id), COMMIT, then
  Celery `apply_async` of a task with the id, on a plain Celery app.
Calls alternate, the one that goes first swapping each round, after a warm-up of each; every call
is a new order. Prints p50 and p99 of each and the ratios naive / ours (goal >= 1.0: ours is no
slower).
"""

import argparse
import os
import sys
import time
from pathlib import Path

from celery import Celery
from sqlalchemy import Table, insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REDIS_URL, fresh_database, fresh_redis, percentile
from fpcancel.models.db import make_engine, utcnow
from fpcancel.models.tables import CancelJob

NOTE = "Customer asked to cancel"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls of each")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls of each first")
    args = parser.parse_args()
    fresh_redis()
    with fresh_database() as url:
        os.environ["FPCANCEL_DATABASE_URL"] = url
        os.environ["FPCANCEL_BROKER_URL"] = REDIS_URL
        import fpcancel
        from fpcancel.api import default_producer

        default_producer.cache_clear()
        enqueue_cancel = fpcancel.enqueue_cancel

        engine = make_engine(url)
        naive_app = Celery("naive", broker=REDIS_URL)
        naive_app.conf.task_ignore_result = True

        @naive_app.task(name="naive.cancel")  # type: ignore[untyped-decorator]
        def naive_cancel(job_id: int) -> None: ...

        jobs = CancelJob.__table__
        assert isinstance(jobs, Table)

        def naive(order: str) -> None:
            now = utcnow()
            with engine.begin() as c:
                job_id = c.execute(
                    insert(jobs)
                    .values(
                        order_uuid=order,
                        note=NOTE,
                        lane="live",
                        status="queued",
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(jobs.c.id)
                ).scalar_one()
            naive_cancel.apply_async(args=[job_id])

        def ours(order: str) -> None:
            enqueue_cancel(order, NOTE)

        timings: dict[str, list[float]] = {"ours": [], "naive": []}
        ways = {"ours": ours, "naive": naive}
        for n in range(args.warmup + args.calls):
            order = ("ours", "naive") if n % 2 == 0 else ("naive", "ours")
            for name in order:
                started = time.perf_counter()
                ways[name](f"ODR{1 if name == 'ours' else 2}{n:08d}")
                if n >= args.warmup:
                    timings[name].append(time.perf_counter() - started)
        default_producer().sessions.kw["bind"].dispose()
        engine.dispose()
    fresh_redis()
    p = {name: (percentile(t, 0.5), percentile(t, 0.99)) for name, t in timings.items()}
    print(f"enqueue latency: {args.calls} calls each, interleaved, one process")
    for name, label in (
        ("ours", "enqueue_cancel (lane live)"),
        ("naive", "naive INSERT+COMMIT+apply_async"),
    ):
        print(f"  {label:<32} p50 {p[name][0] * 1000:6.2f} ms   p99 {p[name][1] * 1000:6.2f} ms")
    print(
        f"  naive / ours                     p50 {p['naive'][0] / p['ours'][0]:6.2f}x    "
        f"p99 {p['naive'][1] / p['ours'][1]:6.2f}x   (goal >= 1.0)"
    )


if __name__ == "__main__":
    main()
