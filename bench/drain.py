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

The two drains alternate `--rounds` times (3 by default): this machine's speed drifts by a
third from one minute to the next, so one pair alone can land on either side of the goal.
Prints each round's rates, its ratio fpcancel / Celery, the median ratio (goal >= 0.5x), and
each worker's CPU per job (its process's user + system time over the drain), which drifts less.
"""

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Drain:
    per_second: float
    span: float  # seconds from the first to the last job
    cpu_ms_per_job: float  # the worker process's CPU time over the drain, per job


def rate(times: list[float]) -> tuple[float, float]:
    """(jobs/s, seconds from first to last) of jobs that ended at `times`."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]), times[-1] - times[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_fpcancel(jobs: int, threads: int, timeout: float, logdir: Path) -> Drain:
    fresh_redis()
    with fresh_database() as url, SandboxProcess(logdir, rate_limit="off") as sandbox:
        env = worker_env(url, sandbox.base_url, "600000/60")
        fleet = Fleet.of_workers(1, threads, env, logdir)
        try:
            fleet.wait_ready()
            pid = fleet.procs[0].pid
            cpu_before = cpu_seconds(pid)
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
                every=0.2,
            )
            cpu = cpu_seconds(pid) - cpu_before
        finally:
            fleet.stop()
        posts = [c["time"] for c in control.calls(kind="cancel")]
    return Drain(*rate(posts), cpu * 1000 / jobs)


def drain_celery(jobs: int, threads: int, timeout: float, logdir: Path) -> Drain:
    """The same for bare Celery no-op tasks."""
    redis = fresh_redis()
    with _noop_worker.app.producer_or_acquire() as producer:
        for _ in range(jobs):
            _noop_worker.app.send_task(_noop_worker.TASK_NAME, producer=producer)
    command = [sys.executable, str(HERE / "_noop_worker.py"), str(threads)]
    fleet = Fleet([command], {**clean_env(), "FPCANCEL_BENCH_REDIS_URL": REDIS_URL}, logdir)
    pid = fleet.procs[0].pid
    try:
        # CPU from the first task on: the worker's start-up is not the drain's.
        wait_until(lambda: redis.llen(_noop_worker.DONE_KEY) >= 1, 60, "the first task", every=0.01)
        cpu_before = cpu_seconds(pid)
        wait_until(
            lambda: redis.llen(_noop_worker.DONE_KEY) >= jobs, timeout, f"{jobs} tasks", every=0.2
        )
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        fleet.stop()
    done = [float(t) for t in redis.lrange(_noop_worker.DONE_KEY, 0, -1)]
    fresh_redis()
    return Drain(*rate(done), cpu * 1000 / (jobs - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--noop-tasks", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per drain at most")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of drains, alternating")
    args = parser.parse_args()
    print(f"drain: {args.jobs} bulk jobs, one worker x {args.threads} threads, limit far away")
    print(
        f"  {'round':<6} {'fpcancel jobs/s':>16} {'CPU ms/job':>11} "
        f"{'Celery no-op/s':>15} {'CPU ms/task':>12} {'ratio':>7}"
    )
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, args.rounds + 1):
            ours = drain_fpcancel(args.jobs, args.threads, args.timeout, Path(tmp))
            bare = drain_celery(args.noop_tasks, args.threads, args.timeout, Path(tmp))
            ratios.append(ours.per_second / bare.per_second)
            cpu_ratios.append(bare.cpu_ms_per_job / ours.cpu_ms_per_job)
            print(
                f"  {n:<6} {ours.per_second:16.1f} {ours.cpu_ms_per_job:11.2f} "
                f"{bare.per_second:15.1f} {bare.cpu_ms_per_job:12.2f} {ratios[-1]:6.3f}x",
                flush=True,
            )
    print(
        f"  fpcancel / Celery, median of {args.rounds}: {statistics.median(ratios):.3f}x "
        f"(goal >= 0.5x; rounds {min(ratios):.3f}-{max(ratios):.3f}x); "
        f"by CPU per job: {statistics.median(cpu_ratios):.3f}x"
    )


if __name__ == "__main__":
    main()
