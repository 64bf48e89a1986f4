"""A worker configured the way Celery alone would do it, for bench/ratelimit.py's anchor:
Celery's per-worker `rate_limit` on the task (bench/ratelimit.py gives each worker its share of
the limit), and no fleet-wide limiter (each process limits only itself). Everything else is
fpcancel's own worker, its scheduler included.

    python bench/_anchor_worker.py CONCURRENCY CELERY_RATE_LIMIT   # e.g. 8 10/s
"""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpcancel.ratelimit import LocalLimiter
from fpcancel.runtime import build_runtime
from fpcancel.service import run_worker
from fpcancel.settings import RateLimit, load_settings


def main() -> None:
    concurrency, celery_rate = int(sys.argv[1]), sys.argv[2]
    settings = load_settings()
    runtime = build_runtime(settings, concurrency=concurrency, with_client=True)
    # This process alone: no shared budget (a limiter that never refuses).
    runtime.limiter = LocalLimiter(RateLimit(1_000_000, 1.0))
    runtime.app.conf.task_annotations = {"fpcancel.cancel": {"rate_limit": celery_rate}}
    runtime.settings = replace(settings)
    run_worker(settings, concurrency=concurrency, runtime=runtime)


if __name__ == "__main__":
    main()
