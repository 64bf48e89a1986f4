"""How fast one worker drains a bulk when the rate limit is far away, next to bare Celery.

    python bench/drain.py [--jobs 1000] [--threads 8] [--timeout 900]

1. fpcancel: `fpcancel sandbox --rate-limit off` (answering at once) in its own process; one
   `fpcancel worker --concurrency 8` with FPCANCEL_RATE_LIMIT=600000/60 and every other setting
   at its default; the bulk is enqueued once the worker is ready. Jobs/s = (cancel POSTs - 1) /
   (last POST's arrival - first POST's arrival), from the sandbox's log.
2. anchor, in the same run: `--noop-tasks` no-op tasks (bench/_noop_worker.py; 5,000, so that
   a drain of ~1,000/s lasts long enough to time), published to the same Redis, then drained by a
   bare Celery worker `--pool=threads --concurrency=8`. Jobs/s = (tasks - 1) / (last task's
   finish - first task's finish).

Prints both and the ratio fpcancel / Celery (goal >= 0.5x).
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _noop_worker
from bench._common import (
    REDIS_URL,
    Fleet,
    SandboxProcess,
    clean_env,
    fresh_database,
    fresh_redis,
    wait_until,
    worker_env,
)
from fpcancel.app import make_celery
from fpcancel.bulk import BulkRow
from fpcancel.models.db import make_engine, make_session_factory
from fpcancel.producer import Producer
from fpcancel.settings import Settings

HERE = Path(__file__).resolve().parent


def rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def drain_fpcancel(jobs: int, threads: int, timeout: float, logdir: Path) -> tuple[float, float]:
    """(jobs/s, seconds from first to last POST)."""
    fresh_redis()
    with fresh_database() as url, SandboxProcess(logdir, rate_limit="off") as sandbox:
        env = worker_env(url, sandbox.base_url, "600000/60")
        fleet = Fleet.of_workers(1, threads, env, logdir)
        try:
            fleet.wait_ready()
            settings = Settings(database_url=url, broker_url=REDIS_URL)
            engine = make_engine(url)
            producer = Producer(make_session_factory(engine), make_celery(settings))
            producer.enqueue_bulk(
                [BulkRow(f"ODR3{i:07d}", "Out of stock", i) for i in range(jobs)], source="bench"
            )
            engine.dispose()
            control = sandbox.control
            wait_until(
                lambda: control.stats()["by_status"].get("202", 0) >= jobs,
                timeout,
                f"{jobs} cancels",
                every=1.0,
            )
        finally:
            fleet.stop()
        posts = [c["time"] for c in control.calls(kind="cancel")]
    return rate(posts), max(posts) - min(posts)


def drain_celery(jobs: int, threads: int, timeout: float, logdir: Path) -> tuple[float, float]:
    """(tasks/s, seconds from first to last task) for bare Celery no-op tasks."""
    redis = fresh_redis()
    with _noop_worker.app.producer_or_acquire() as producer:
        for _ in range(jobs):
            _noop_worker.app.send_task(_noop_worker.TASK_NAME, producer=producer)
    command = [sys.executable, str(HERE / "_noop_worker.py"), str(threads)]
    fleet = Fleet([command], {**clean_env(), "FPCANCEL_BENCH_REDIS_URL": REDIS_URL}, logdir)
    try:
        wait_until(lambda: redis.llen(_noop_worker.DONE_KEY) >= jobs, timeout, f"{jobs} tasks")
    finally:
        fleet.stop()
    done = [float(t) for t in redis.lrange(_noop_worker.DONE_KEY, 0, -1)]
    fresh_redis()
    return rate(done), max(done) - min(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--noop-tasks", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per drain at most")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_span = drain_fpcancel(args.jobs, args.threads, args.timeout, Path(tmp))
        bare, bare_span = drain_celery(args.noop_tasks, args.threads, args.timeout, Path(tmp))
    rows = [
        ("fpcancel worker, sandbox answering at once", ours, ours_span),
        (f"bare Celery no-op task x {args.noop_tasks}, same pool", bare, bare_span),
    ]
    print(f"drain: {args.jobs} bulk jobs, one worker x {args.threads} threads, limit far away")
    for label, jobs_per_second, span in rows:
        print(f"  {label:<46} {jobs_per_second:8.1f} jobs/s  ({span:.1f} s)")
    print(f"  {'fpcancel / Celery':<46} {ours / bare:8.3f}x       (goal >= 0.5x)")


if __name__ == "__main__":
    main()
