"""A bare Celery app with one no-op task, for bench/drain.py's anchor.

    python bench/_noop_worker.py CONCURRENCY     # a worker: --pool=threads, Celery's defaults

The task does nothing but note when it ran (one RPUSH of its finish time to `noop:done` on the
same Redis), so the bench can time the drain; the broker is FPCANCEL_BENCH_REDIS_URL.
"""

import os
import sys
import time
from typing import Any

from celery import Celery
from redis import Redis

BROKER_URL = os.environ.get("FPCANCEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
DONE_KEY = "noop:done"
TASK_NAME = "bench.noop"

app = Celery("noop", broker=BROKER_URL)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
_redis = Redis.from_url(BROKER_URL)


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def noop(*_: Any) -> None:
    _redis.rpush(DONE_KEY, time.time())


def main() -> None:
    concurrency = int(sys.argv[1])
    app.worker_main(["worker", "--pool=threads", f"--concurrency={concurrency}", "--loglevel=INFO"])


if __name__ == "__main__":
    main()
